"""The torchvision loaders on small files written in each dataset's exact on-disk format, and real Fashion-MNIST.

CIFAR-10, SVHN and CelebA: torchvision checks every file's md5 against a table in the dataset class.
The files here are our own, so the tests use a subclass whose only change is that table (filled with
the md5 of the files just written): torchvision's own reading and integrity code runs unchanged.
The production path uses the stock classes, and a test below shows that their check rejects these
files with an error naming --root.
"""
from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.datasets import SVHN, CelebA, CIFAR10

from tgan.data import sources
from tgan.data.codec import read_shard
from tgan.data.index import DataError
from tgan.data.prepare import write_shards
from tgan.data.streams import load_split

FMNIST_REAL = Path("/usr/share/datasets/fashion-mnist")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_cifar(root: Path, per_batch: int = 4) -> tuple[type, dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)  # R, G, B planes of 32x32, row-major
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        arrays[name] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)

    class LocalCIFAR10(CIFAR10):
        train_list = [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
        test_list = [["test_batch", md5(folder / "test_batch")]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}

    return LocalCIFAR10, arrays


def test_cifar10_python_batches(tmp_path):
    cls, arrays = write_cifar(tmp_path / "root")
    src = sources.cifar10(tmp_path / "root", download=False, image_size=32, dataset_cls=cls)
    index = write_shards(src, tmp_path / "out", shard_size=7, progress=False)
    assert index.class_names[0] == "airplane" and index.channels == 3 and index.image_size == 32
    x, y = load_split(tmp_path / "out", "train")
    expected = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(as_uint8(x), expected)
    assert y.tolist() == sum((arrays[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    x, y = load_split(tmp_path / "out", "test")
    np.testing.assert_array_equal(as_uint8(x), arrays["test_batch"][0])


def test_stock_torchvision_class_rejects_files_failing_its_md5_with_a_named_error(tmp_path):
    write_cifar(tmp_path / "root")
    with pytest.raises(DataError, match=r"cifar10 under --root .*root: Dataset not found or corrupted"):
        sources.cifar10(tmp_path / "root", download=False, image_size=32)


def test_missing_files_are_named_with_how_to_get_them(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_1.*cs.toronto.edu.*--download"):
        sources.make_source("cifar10", tmp_path / "empty")
    with pytest.raises(DataError, match=r"celeba/img_align_celeba.*list_attr_celeba.txt.*--download"):
        sources.make_source("celeba", tmp_path / "empty")
    with pytest.raises(DataError, match=r"--root .*nope does not exist"):
        sources.make_source("fashion-mnist", tmp_path / "nope")
    write_idx(tmp_path / "fm", n_train=3, n_test=2, skip="t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\(.gz\) not found .*zalandoresearch"):
        sources.make_source("fashion-mnist", tmp_path / "fm")
    with pytest.raises(DataError, match=r"--image-size 30 is not one of"):
        sources.make_source("digits", None, image_size=30)


def test_svhn_mat_files_with_and_without_extra(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "root"
    root.mkdir()
    data = {}
    for split, n in (("train", 5), ("test", 3), ("extra", 4)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # H x W x C x N as in the .mat files
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, where 10 stands for digit 0
        y[0, 0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        data[split] = (x.transpose(3, 0, 1, 2), y[:, 0] % 10)

    class LocalSVHN(SVHN):
        split_list = {s: ["", f"{s}_32x32.mat", md5(root / f"{s}_32x32.mat")] for s in ("train", "test", "extra")}

    for extra in (False, True):
        out = tmp_path / f"out{extra}"
        src = sources.svhn(root, download=False, image_size=32, include_extra=extra, dataset_cls=LocalSVHN)
        index = write_shards(src, out, shard_size=4, progress=False)
        assert index.notes == {"svhn_extra_in_train": extra}
        x, y = load_split(out, "train")
        parts = ["train", "extra"] if extra else ["train"]
        np.testing.assert_array_equal(as_uint8(x), np.concatenate([data[p][0] for p in parts]))
        assert y.tolist() == np.concatenate([data[p][1] for p in parts]).tolist() and y[0] == 0
        x, y = load_split(out, "test")
        np.testing.assert_array_equal(as_uint8(x), data["test"][0])


ATTRS = [f"Attr_{i}" for i in range(40)]


def write_celeba(root: Path) -> tuple[type, list[str], np.ndarray]:
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(2)
    names = [f"{i:06d}.jpg" for i in range(1, 8)]
    partition = [0, 0, 0, 0, 1, 2, 2]
    attrs = rng.choice([-1, 1], (len(names), 40))
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(folder / "img_align_celeba" / name)
    rows = lambda values: "\n".join(f"{n} " + " ".join(map(str, v)) for n, v in zip(names, values))  # noqa: E731
    (folder / "list_attr_celeba.txt").write_text(f"{len(names)}\n" + " ".join(ATTRS) + " \n" + rows(attrs) + "\n")
    (folder / "list_eval_partition.txt").write_text(rows([[p] for p in partition]) + "\n")
    (folder / "identity_CelebA.txt").write_text(rows([[i + 100] for i in range(len(names))]) + "\n")
    (folder / "list_bbox_celeba.txt").write_text(f"{len(names)}\nimage_id x_1 y_1 width height\n"
                                                 + rows([[10, 20, 100, 120]] * len(names)) + "\n")
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
        "rightmouth_x rightmouth_y\n" + rows([[69, 109, 106, 113, 77, 142, 73, 152, 108, 154]] * len(names)) + "\n")

    class LocalCelebA(CelebA):
        file_list = [("", "", "img_align_celeba.zip")] + [
            ("", md5(folder / f), f) for f in ("list_attr_celeba.txt", "identity_CelebA.txt", "list_bbox_celeba.txt",
                                               "list_landmarks_align_celeba.txt", "list_eval_partition.txt")]

    return LocalCelebA, names, attrs


def test_celeba_aligned_faces_are_centre_cropped_to_64_without_attributes(tmp_path):
    cls, names, _ = write_celeba(tmp_path / "root")
    src = sources.celeba(tmp_path / "root", download=False, image_size=64, dataset_cls=cls)
    index = write_shards(src, tmp_path / "out", shard_size=3, progress=False)
    assert (index.image_size, index.channels, index.num_classes) == (64, 3, 0)
    assert index.split("train").count == 4 and index.split("test").count == 2  # partition 1 (valid) not written
    x, y = load_split(tmp_path / "out", "test")
    assert y.tolist() == [-1, -1]
    for got, name in zip(as_uint8(x), names[5:]):
        face = Image.open(tmp_path / "root/celeba/img_align_celeba" / name).convert("RGB")
        face = face.crop((35, 55, 35 + 108, 55 + 108)).resize((64, 64), Image.BICUBIC)  # (178-108)/2, (218-108)/2
        np.testing.assert_array_equal(got, np.asarray(face))
    def fail(path, n, reason):
        raise AssertionError(f"{path}: {n} unreadable ({reason})")

    members = [set(s) for sh in index.split("train").shards for s in read_shard(tmp_path / "out" / sh.name, sh.count, fail)]
    assert len(members) == 4 and all("attr.npy" not in m for m in members)  # nothing reads attributes: none written


def write_idx(root: Path, n_train: int, n_test: int, skip: str = "") -> dict:
    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        files = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + labels.tobytes()}
        for name, payload in files.items():
            if name != skip:
                (root / f"{name}.gz").write_bytes(gzip.compress(payload))
        out[prefix] = (images, labels)
    return out


def test_fashion_mnist_from_bare_gzipped_idx_files_at_28_and_32(tmp_path):
    data = write_idx(tmp_path / "fm", n_train=9, n_test=4)
    src = sources.make_source("fashion-mnist", tmp_path / "fm")
    index = write_shards(src, tmp_path / "out28", shard_size=5, progress=False)
    assert (index.image_size, index.channels, index.class_names[0]) == (28, 1, "T-shirt/top")
    x, y = load_split(tmp_path / "out28", "train")
    np.testing.assert_array_equal(as_uint8(x)[..., 0], data["train"][0])
    assert y.tolist() == data["train"][1].tolist()
    write_shards(sources.make_source("fashion-mnist", tmp_path / "fm", image_size=32), tmp_path / "out32",
                 shard_size=5, progress=False)
    x, _ = load_split(tmp_path / "out32", "test")
    expected = [np.asarray(Image.fromarray(im).resize((32, 32), Image.BICUBIC)) for im in data["t10k"][0]]
    np.testing.assert_array_equal(as_uint8(x)[..., 0], np.stack(expected))


@pytest.mark.skipif(not FMNIST_REAL.is_dir(), reason="real Fashion-MNIST not installed")
def test_real_fashion_mnist_converts_with_its_counts_per_class(tmp_path):
    # ~10 s on a quiet 2-core machine (70,000 PNG encodes); README's one command does the same
    index = write_shards(sources.make_source("fashion-mnist", FMNIST_REAL), tmp_path, shard_size=10000,
                         progress=False)
    assert index.split("train").counts_per_class == [6000] * 10 and index.split("train").count == 60000
    assert index.split("test").counts_per_class == [1000] * 10 and index.split("test").count == 10000
    assert len(index.split("train").shards) == 6
    with gzip.open(FMNIST_REAL / "t10k-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(16 + 3 * 784)[16:], np.uint8).reshape(3, 28, 28)
    x, _ = load_split(tmp_path, "test", limit=3)
    np.testing.assert_array_equal(as_uint8(x)[..., 0], first)
