"""Where images come from before they become shards: torchvision datasets and scikit-learn digits.

Each source gives, per split ("train", "test"), the labels up front (for counts per class) and one
sample at a time as uint8 HxWxC at the requested size. The torchvision classes do the reading of
their own on-disk formats; this module only checks that the files are there (so a missing file is
named with a way to get it), resizes, and for CelebA crops.

Choices, also in docs/DATA.md:
- SVHN: `train` is the 73,257-image train split; `extra` (531,131 easier images) is not included
  unless `include_extra=True` (`--svhn-extra` on the CLI), which appends it to `train`. The MBGAN
  paper says "all the training data are used"; the triplet-BiGAN setting uses train only.
- CelebA: the aligned faces (`img_align_celeba`, 178x218); the central 108x108 square (the face, as in
  the DCGAN code the MBGAN paper builds on) is resized to 64x64. train = partition 0, test = partition 2
  (the validation partition is not written). The 40 attributes are not written.
- Fashion-MNIST accepts both torchvision's layout (`<root>/FashionMNIST/raw/`) and the four IDX files
  directly in `<root>` (gzipped or not), e.g. /usr/share/datasets/fashion-mnist.
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tgan.data.index import DataError
from tgan.config import IMAGE_SIZES

# `dataset_cls` below: the torchvision class to read with. Tests pass a subclass whose only change is the
# md5 table, filled with the md5 of the small files they write; production uses the stock class.
DATASETS = ("cifar10", "svhn", "celeba", "fashion-mnist", "digits")
DEFAULT_SIZE = {"cifar10": 32, "svhn": 32, "celeba": 64, "fashion-mnist": 28, "digits": 32}
DEFAULT_SHARD_SIZE = 1000
"""Samples per shard. Every reader (rank x loader worker) needs a shard of its own: 1000 gives
CIFAR-10 50 train shards, enough for the GPU recipes' 8 ranks x 4 loader workers = 32 readers."""
CELEBA_CROP = 108


@dataclass
class SplitSource:
    """One split: `labels[i]` up front, `sample(i) -> uint8 HxWxC` on demand."""

    labels: np.ndarray
    sample: Callable[[int], np.ndarray]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    dataset: str
    image_size: int
    channels: int
    class_names: list[str]
    splits: dict[str, SplitSource]
    notes: dict = field(default_factory=dict)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWxC -> size x size x C (bicubic; PIL antialiases when shrinking). No-op at the right size."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    grey = image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if grey else image).resize((size, size), Image.BICUBIC)
    out = np.asarray(pil)
    return out[:, :, None] if grey else out


def _require(paths: list[Path], dataset: str, root: Path, how: str) -> None:
    if not root.is_dir():
        raise DataError(f"--root {root} does not exist; {dataset}: {how}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{dataset}: missing {', '.join(missing)}; {how}")


def _load(make: Callable[[], object], dataset: str, root: Path, how: str) -> object:
    """Call a torchvision constructor, turning its generic "not found or corrupted" into a named error."""
    try:
        return make()
    except RuntimeError as e:
        raise DataError(f"{dataset} under --root {root}: {e} ({how})") from e


def cifar10(root: Path, *, download: bool, image_size: int, dataset_cls=None) -> Source:
    """CIFAR-10 via torchvision.datasets.CIFAR10 (which checks each file's md5 against its own table)."""
    from torchvision.datasets import CIFAR10
    cls = dataset_cls or CIFAR10
    how = "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it " \
          "under --root, or rerun with --download"
    if not download:
        folder = root / cls.base_folder
        _require([folder / n for n, _ in cls.train_list + cls.test_list] + [folder / cls.meta["filename"]],
                 "cifar10", root, how)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        ds = _load(lambda: cls(str(root), train=train, download=download), "cifar10", root, how)
        data = ds.data  # N x 32 x 32 x 3 uint8, as torchvision unpickles it
        splits[split] = SplitSource(np.asarray(ds.targets, dtype=np.int64),
                                    lambda i, data=data: resize(data[i], image_size))
    return Source("cifar10", image_size, 3, list(ds.classes), splits)


def svhn(root: Path, *, download: bool, image_size: int, include_extra: bool = False, dataset_cls=None) -> Source:
    """SVHN (cropped digits) via torchvision.datasets.SVHN; label 10 of the .mat files is digit 0."""
    from torchvision.datasets import SVHN
    cls = dataset_cls or SVHN
    parts = {"train": ["train"] + (["extra"] if include_extra else []), "test": ["test"]}
    how = "download train_32x32.mat / test_32x32.mat (and extra_32x32.mat for --svhn-extra) from " \
          "http://ufldl.stanford.edu/housenumbers/ into --root, or rerun with --download"
    if not download:
        _require([root / cls.split_list[p][1] for ps in parts.values() for p in ps], "svhn", root, how)
    splits = {}
    for split, names in parts.items():
        loaded = [_load(lambda n=n: cls(str(root), split=n, download=download), "svhn", root, how) for n in names]
        data = np.concatenate([d.data for d in loaded])  # N x 3 x 32 x 32
        labels = np.concatenate([d.labels for d in loaded]).astype(np.int64)
        splits[split] = SplitSource(labels, lambda i, data=data: resize(data[i].transpose(1, 2, 0), image_size))
    return Source("svhn", image_size, 3, [str(d) for d in range(10)], splits,
                  notes={"svhn_extra_in_train": include_extra})


def celeba(root: Path, *, download: bool, image_size: int, dataset_cls=None) -> Source:
    """CelebA aligned faces via torchvision.datasets.CelebA: centre 108x108 crop, resized. No classes;
    the 40 attributes are not kept (no model or evaluation reads them)."""
    from torchvision.datasets import CelebA
    cls = dataset_cls or CelebA
    how = "put img_align_celeba/ and the list_*.txt / identity_CelebA.txt files from " \
          "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html in --root/celeba/, or rerun with --download (needs gdown)"
    if not download:
        folder = root / cls.base_folder
        _require([folder / "img_align_celeba"] + [folder / f for _, _, f in cls.file_list if f.endswith(".txt")],
                 "celeba", root, how)
    splits = {}
    for split in ("train", "test"):
        ds = _load(lambda: cls(str(root), split=split, target_type=[], download=download), "celeba", root, how)

        def sample(i: int, ds=ds) -> np.ndarray:
            img, _ = ds[i]
            w, h = img.size
            left, top = (w - CELEBA_CROP) // 2, (h - CELEBA_CROP) // 2
            face = img.convert("RGB").crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
            return resize(np.asarray(face), image_size)

        splits[split] = SplitSource(np.full(len(ds), -1, dtype=np.int64), sample)
    return Source("celeba", image_size, 3, [], splits, notes={"celeba_crop": CELEBA_CROP, "celeba_test_partition": 2})


FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")


def _fashion_layout(root: Path, workdir: Path) -> Path:
    """A root with `FashionMNIST/raw/<four IDX files>` as torchvision reads it, built in `workdir` when
    `root` holds the files directly (gzipped ones are decompressed, plain ones linked)."""
    if all((root / "FashionMNIST" / "raw" / n).is_file() for n in FMNIST_FILES):
        return root
    raw = workdir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FMNIST_FILES:
        for folder in (root, root / "FashionMNIST" / "raw"):
            if (folder / name).is_file():
                (raw / name).symlink_to((folder / name).resolve())
                break
            if (folder / f"{name}.gz").is_file():
                with gzip.open(folder / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                break
    return workdir


def fashion_mnist(root: Path, *, download: bool, image_size: int, workdir: Path) -> Source:
    """Fashion-MNIST via torchvision.datasets.FashionMNIST, from its layout or from bare (.gz) IDX files.

    torchvision reads the whole files into memory here, so `workdir` may be deleted once this returns."""
    from torchvision.datasets import FashionMNIST
    how = "put the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist in --root " \
          "(e.g. --root /usr/share/datasets/fashion-mnist), or rerun with --download"
    if download:
        tv_root = root
    else:
        if not root.is_dir():
            raise DataError(f"--root {root} does not exist; fashion-mnist: {how}")
        found = {n for n in FMNIST_FILES for f in (root, root / "FashionMNIST" / "raw")
                 if (f / n).is_file() or (f / f"{n}.gz").is_file()}
        missing = [n for n in FMNIST_FILES if n not in found]
        if missing:
            raise DataError(f"fashion-mnist: {', '.join(m + '(.gz)' for m in missing)} not found in {root} or "
                            f"{root / 'FashionMNIST' / 'raw'}; {how}")
        tv_root = _fashion_layout(root, workdir)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        ds = _load(lambda: FashionMNIST(str(tv_root), train=train, download=download), "fashion-mnist", root, how)
        data = ds.data.numpy()  # N x 28 x 28 uint8
        splits[split] = SplitSource(ds.targets.numpy().astype(np.int64),
                                    lambda i, data=data: resize(data[i][:, :, None], image_size))
    return Source("fashion-mnist", image_size, 1, list(ds.classes), splits)


def array_source(dataset: str, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], class_names: list[str],
                 *, image_size: int, notes: dict | None = None) -> Source:
    """A source from in-memory uint8 N x H x W x C arrays per split (digits; also handy for small custom sets)."""
    splits = {split: SplitSource(np.asarray(labels[split], dtype=np.int64),
                                 lambda i, imgs=imgs: resize(imgs[i], image_size))
              for split, imgs in images.items()}
    channels = next(iter(images.values())).shape[3]
    return Source(dataset, image_size, channels, class_names, splits, notes=notes or {})


def digits(*, image_size: int) -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download): 0..16 grey levels scaled to 0..255,
    resized; a stratified 80/20 train/test split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.2, stratify=bunch.target,
                                           random_state=0)
    idx = {"train": np.sort(idx_train), "test": np.sort(idx_test)}
    return array_source("digits", {k: images[v] for k, v in idx.items()}, {k: bunch.target[v] for k, v in idx.items()},
                        [str(d) for d in range(10)], image_size=image_size,
                        notes={"digits_split": "stratified 80/20, random_state=0"})


def make_source(name: str, root: str | Path | None, *, download: bool = False, image_size: int | None = None,
                svhn_extra: bool = False) -> Source:
    """The source for `name` (one of DATASETS), reading the files under `root`."""
    if name not in DATASETS:
        raise DataError(f"--dataset {name!r} is not one of {', '.join(DATASETS)}")
    size = image_size or DEFAULT_SIZE[name]
    if size not in IMAGE_SIZES:
        raise DataError(f"--image-size {size} is not one of {', '.join(map(str, IMAGE_SIZES))}")
    if name == "digits":
        return digits(image_size=size)
    if root is None:
        raise DataError(f"--root is required for --dataset {name} (the directory holding its files)")
    root = Path(root)
    if svhn_extra and name != "svhn":
        raise DataError(f"--svhn-extra applies to --dataset svhn only, not {name}")
    if name == "cifar10":
        return cifar10(root, download=download, image_size=size)
    if name == "svhn":
        return svhn(root, download=download, image_size=size, include_extra=svhn_extra)
    if name == "celeba":
        return celeba(root, download=download, image_size=size)
    with tempfile.TemporaryDirectory(prefix="tgan-fmnist-") as workdir:
        return fashion_mnist(root, download=download, image_size=size, workdir=Path(workdir))
