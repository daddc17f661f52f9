"""Where shards live: a local directory or a URL prefix (`s3://`, `gs://`, `http(s)://`), through fsspec.

fsspec picks the file system from the scheme (s3fs for `s3://`, gcsfs for `gs://` when installed,
its HTTP client for `http(s)://`, the local disk otherwise), and each takes credentials and endpoint
from the standard environment: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or an instance role),
`AWS_ENDPOINT_URL` for S3 API servers such as MinIO or Ceph (honoured by botocore >= 1.31, which
s3fs uses), `GOOGLE_APPLICATION_CREDENTIALS` for gcsfs. webdataset's own opener (`wds.gopen`) is
not used: it has no `s3://` handler and shells out to `curl` / `gsutil` for the others.

Every failure is an OSError (FileNotFoundError when absent) whose message names the location; a
store that cannot be reached, a bucket that does not exist or access refused is a StorageError, one
line naming the location and the endpoint (botocore's and aiohttp's own errors would otherwise
surface as long tracebacks). botocore tries a refused connection 5 times (about 6 s) before it
gives up; AWS_MAX_ATTEMPTS=1 makes it fail at once.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import fsspec


class StorageError(OSError):
    """The store behind a location cannot be used: unreachable, no such bucket, access refused."""


def endpoint(location: str | Path) -> str:
    """The server a URL is read from, for messages: the S3 API endpoint (AWS_ENDPOINT_URL, else AWS's
    own), the host of an http(s) URL, the scheme of any other store."""
    scheme = urlsplit(str(location)).scheme
    if scheme == "s3":
        custom = os.environ.get("AWS_ENDPOINT_URL", "").strip()
        return f"{custom} (AWS_ENDPOINT_URL)" if custom else "AWS S3 (no AWS_ENDPOINT_URL set)"
    if scheme in ("http", "https"):
        return f"{scheme}://{urlsplit(str(location)).netloc}"
    return f"the {scheme}:// store"


def _no_bucket(e: FileNotFoundError) -> bool:
    return "bucket does not exist" in str(e)  # s3fs's words for NoSuchBucket; a missing object names its key


def _unreachable(e: BaseException) -> bool:
    """A connection that failed or timed out, as botocore (s3fs) or aiohttp (http, gcsfs) report it."""
    import aiohttp
    import botocore.exceptions

    return isinstance(e, (botocore.exceptions.ConnectionError, aiohttp.ClientConnectionError, TimeoutError))


@contextlib.contextmanager
def _errors(location: str | Path):
    """Turns what a URL's store says about itself (not about one object) into a one-line StorageError."""
    if not is_url(location):
        yield
        return
    try:
        yield
    except FileNotFoundError as e:
        if not _no_bucket(e):
            raise
        bucket = urlsplit(str(location)).netloc
        raise StorageError(f"{location}: bucket {bucket!r} does not exist at {endpoint(location)}: create it "
                           "or correct the URL") from None
    except PermissionError as e:
        raise StorageError(f"{location}: access denied by {endpoint(location)} ({e}); check the credentials "
                           "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for s3://)") from None
    except Exception as e:
        if not _unreachable(e):
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"{location}: cannot reach {endpoint(location)} ({type(e).__name__}: {reason}); "
                           "is the server up and the endpoint right?") from None


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
        with _errors(location):
            return fs.cat_file(path)
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{location} not found") from e
    except OSError as e:
        raise OSError(f"{location}: {e}") from e


def exists(location: str | Path) -> bool:
    """Whether the file or object is there; StorageError when the store cannot say."""
    fs, path = _fs(location)
    with _errors(location):
        try:
            if "http" in fs.protocol:  # fsspec's HTTP exists() takes a refused connection for "absent"
                fs.cat_file(path, start=0, end=1)
                return True
            fs.info(path)  # fs.exists() takes a missing bucket for "absent"
            return True
        except FileNotFoundError as e:
            if _no_bucket(e):
                raise
            return False


def read_only(location: str | Path) -> bool:
    """An http(s) URL: fsspec reads it, nothing writes it."""
    return urlsplit(str(location)).scheme in ("http", "https")


def check_writable(url: str) -> None:
    """StorageError unless files can be written under the URL prefix `url` (nothing for a local path):
    its store answers and, for an object store, its bucket exists. Called before the minutes of
    preparing shards, not after."""
    if not is_url(url):
        return
    if read_only(url):
        raise StorageError(f"{url}: http(s) is read-only; write to a directory or an object store (s3://, gs://)")
    fs, path = _fs(url)
    bucket = path.split("/")[0]
    with _errors(url):
        fs.ls(bucket, detail=False)


def missing(directory: str | Path, names: list[str]) -> list[str]:
    """Those of `names` that are not in `directory`: one listing (object stores, local disk), or one
    1-byte GET per name over HTTP, which has no listing."""
    fs, path = _fs(directory)
    if "http" in fs.protocol:
        return [n for n in names if not exists(join(directory, n))]
    with _errors(directory):
        try:
            present = {p.rstrip("/").rpartition("/")[2] for p in fs.ls(path, detail=False)}
        except FileNotFoundError as e:
            if _no_bucket(e):
                raise
            present = set()
    return [n for n in names if n not in present]


def remove(location: str | Path) -> None:
    """Delete a file or object if it is there."""
    fs, path = _fs(location)
    with _errors(location):
        if fs.exists(path):
            fs.rm_file(path)


def upload_tree(local_dir: Path, url: str, names: list[str]) -> None:
    """Copy `local_dir/<name>` to `url/<name>` for each name, in the order given (so a caller can
    upload the file that marks the set complete last). An object store writes each object whole."""
    fs, path = _fs(url)
    with _errors(url):
        for name in names:
            fs.put_file(str(local_dir / name), f"{path.rstrip('/')}/{name}")
