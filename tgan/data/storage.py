"""Where shards live: a local directory or a URL prefix (`s3://`, `gs://`, `http(s)://`), through fsspec.

fsspec picks the file system from the scheme (s3fs for `s3://`, gcsfs for `gs://` when installed,
its HTTP client for `http(s)://`, the local disk otherwise), and each takes credentials and endpoint
from the standard environment: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or an instance role),
`AWS_ENDPOINT_URL` for S3 API servers such as MinIO or Ceph (honoured by botocore >= 1.31, which
s3fs uses), `GOOGLE_APPLICATION_CREDENTIALS` for gcsfs. webdataset's own opener (`wds.gopen`) is
not used: it has no `s3://` handler and shells out to `curl` / `gsutil` for the others.

Every failure is an OSError (FileNotFoundError when absent) whose message names the location.
"""
from __future__ import annotations

from pathlib import Path

import fsspec


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def join(base: str | Path, name: str) -> str:
    """`base/name` for a directory path or a URL prefix."""
    return f"{str(base).rstrip('/')}/{name}" if is_url(base) else str(Path(base) / name)


def _fs(location: str | Path):
    try:
        return fsspec.core.url_to_fs(str(location))
    except ImportError as e:  # e.g. gs:// without gcsfs: fsspec says which package to install
        raise OSError(f"{location}: {e}") from e


def read_bytes(location: str | Path) -> bytes:
    """The whole object or file; OSError naming `location` when it cannot be read."""
    fs, path = _fs(location)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{location} not found") from e
    except OSError as e:
        raise OSError(f"{location}: {e}") from e


def exists(location: str | Path) -> bool:
    fs, path = _fs(location)
    return fs.exists(path)


def missing(directory: str | Path, names: list[str]) -> list[str]:
    """Those of `names` that are not in `directory`: one listing (object stores, local disk), or one
    HEAD request per name over HTTP, which has no listing."""
    fs, path = _fs(directory)
    if "http" in fs.protocol:
        return [n for n in names if not fs.exists(join(directory, n))]
    try:
        present = {p.rstrip("/").rpartition("/")[2] for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        present = set()
    return [n for n in names if n not in present]


def remove(location: str | Path) -> None:
    """Delete a file or object if it is there."""
    fs, path = _fs(location)
    if fs.exists(path):
        fs.rm_file(path)


def upload_tree(local_dir: Path, url: str, names: list[str]) -> None:
    """Copy `local_dir/<name>` to `url/<name>` for each name, in the order given (so a caller can
    upload the file that marks the set complete last). An object store writes each object whole."""
    fs, path = _fs(url)
    for name in names:
        fs.put_file(str(local_dir / name), f"{path.rstrip('/')}/{name}")
