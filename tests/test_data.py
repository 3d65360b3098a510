"""Data loaders: the real file formats, checksums, caching, offline errors and fallbacks.

Everything runs offline: small files are written in the real MNIST (IDX) and CIFAR-10
(pickled batches in a tar.gz) formats and served from ``file://`` mirrors.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dlai_diffusion import data

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    header = struct.pack(">IIII", 2051, n, rows, cols)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    header = struct.pack(">II", 2049, len(labels))
    path.write_bytes(gzip.compress(header + labels.astype(np.uint8).tobytes()))


def write_cifar_archive(path: Path, batches: dict[str, tuple[np.ndarray, list[int]]]) -> None:
    """A tar.gz laid out like cifar-10-python.tar.gz; ``batches`` maps name -> (rows, labels)."""
    members = {"batches.meta": {b"label_names": [f"class{c}".encode() for c in range(10)]}}
    for name, (rows, labels) in batches.items():
        members[name] = {b"data": rows, b"labels": labels, b"batch_label": name.encode()}
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    """A local mirror with a tiny MNIST (train 30, test 20), its MD5s registered."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    content = {}
    for split, n in (("train", 30), ("test", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        image_file, label_file = data.MNIST_FILES[split]
        write_idx_images(mirror / image_file, images)
        write_idx_labels(mirror / label_file, labels)
        content[split] = (images, labels)
    checksums = {name: md5(mirror / name) for name in data.CHECKSUMS["mnist"]}
    monkeypatch.setitem(data.CHECKSUMS, "mnist", checksums)
    monkeypatch.setitem(data.MIRRORS, "mnist", [mirror.as_uri() + "/"])
    monkeypatch.delenv("DLAI_DATA", raising=False)
    return mirror, content


@pytest.fixture
def count_downloads(monkeypatch):
    """Count every URL opened through urllib."""
    opened = []
    real_urlopen = urllib.request.urlopen

    def counting_urlopen(url, *args, **kwargs):
        opened.append(url)
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counting_urlopen)
    return opened


# ----------------------------------------------------------------------------- parsers


def test_read_idx_parses_gzipped_images_and_labels(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 251
    write_idx_images(tmp_path / "images.gz", images)
    write_idx_labels(tmp_path / "labels.gz", np.array([7, 0, 9]))
    parsed = data.read_idx(tmp_path / "images.gz")
    assert parsed.dtype == np.uint8 and parsed.shape == (3, 28, 28)
    np.testing.assert_array_equal(parsed, images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels.gz"), [7, 0, 9])


def test_read_idx_reads_big_endian_values_uncompressed(tmp_path):
    values = np.array([[1, -2, 300], [70000, 0, -1]], dtype=">i4")
    (tmp_path / "ints.idx").write_bytes(
        b"\x00\x00\x0c\x02" + struct.pack(">II", 2, 3) + values.tobytes()
    )
    parsed = data.read_idx(tmp_path / "ints.idx")
    np.testing.assert_array_equal(parsed, [[1, -2, 300], [70000, 0, -1]])
    assert parsed.dtype == np.int32 and parsed.dtype.isnative


def test_read_idx_rejects_wrong_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">II", 2049, 5) + b"\x01\x02")
    with pytest.raises(ValueError, match="header"):
        data.read_idx(tmp_path / "short")


def test_read_cifar_archive_keeps_the_rgb_plane_layout(tmp_path):
    rows = np.stack([(np.arange(3072) + k) % 256 for k in range(4)]).astype(np.uint8)
    batches = {
        f"data_batch_{i}": (rows[:2] if i == 1 else rows[:0], [3, 8] if i == 1 else [])
        for i in range(1, 6)
    }
    batches["test_batch"] = (rows[2:], [1, 2])
    write_cifar_archive(tmp_path / "c.tar.gz", batches)
    images, labels, classes = data.read_cifar_archive(tmp_path / "c.tar.gz", "train")
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    channel, row, col = 1, 5, 7  # green plane, pixel (5, 7): position 1024 + 5 * 32 + 7
    assert images[1, channel, row, col] == (1024 + row * 32 + col + 1) % 256
    np.testing.assert_array_equal(images.reshape(2, -1), rows[:2])
    np.testing.assert_array_equal(labels, [3, 8])
    assert labels.dtype == np.int64 and classes[3] == "class3" and len(classes) == 10
    test_images, test_labels, _ = data.read_cifar_archive(tmp_path / "c.tar.gz", "test")
    np.testing.assert_array_equal(test_images.reshape(2, -1), rows[2:])
    np.testing.assert_array_equal(test_labels, [1, 2])


def test_read_cifar_archive_rejects_a_foreign_archive(tmp_path):
    write_cifar_archive(tmp_path / "c.tar.gz", {"test_batch": (np.zeros((1, 3072), np.uint8), [0])})
    with pytest.raises(ValueError, match="data_batch_1"):
        data.read_cifar_archive(tmp_path / "c.tar.gz", "train")


# ----------------------------------------------------------------------------- download


def test_download_verifies_caches_and_scales(tmp_path, mnist_mirror, count_downloads):
    _, content = mnist_mirror
    cache = tmp_path / "cache"
    train = data.load_mnist("train", root=cache, subset=False)
    assert len(count_downloads) == 2  # images and labels
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(data.MNIST_FILES["train"])
    images, labels = content["train"]
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.float32
    expected = torch.from_numpy(images[:, None].astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(train.images, expected, rtol=0, atol=1e-6)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == labels.tolist()
    assert train[4][1].item() == 4 and train[4][0].shape == (1, 28, 28)

    again = data.load_mnist("train", root=cache, subset=False)
    assert len(count_downloads) == 2, "a cached, verified file is not downloaded again"
    assert torch.equal(again.images, train.images)


def test_mirrors_are_tried_in_order(tmp_path, mnist_mirror, monkeypatch, count_downloads):
    mirror, _ = mnist_mirror
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in data.MNIST_FILES["test"]:
        (corrupt / name).write_bytes(b"garbage")
    missing = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setitem(data.MIRRORS, "mnist", [missing, corrupt.as_uri(), mirror.as_uri()])
    test = data.load_mnist("test", root=tmp_path / "cache", subset=False)
    assert len(test) == 20 and len(count_downloads) == 6  # 3 mirrors for each of 2 files
    leftovers = [p.name for p in (tmp_path / "cache" / "mnist").iterdir()]
    assert sorted(leftovers) == sorted(data.MNIST_FILES["test"]), "no partial files remain"


def test_offline_raises_a_clear_error(tmp_path, mnist_mirror, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cache = tmp_path / "cache"
    with pytest.raises(data.DataUnavailableError) as caught:
        data.load_mnist("train", root=cache, subset=False)
    message = str(caught.value)
    for needed in ("no network", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert needed in message
    assert str(cache / "mnist") in message and "DLAI_DATA" in message and "subset=True" in message
    assert not (cache / "mnist").exists() or not any((cache / "mnist").iterdir())


def test_download_false_does_not_touch_the_network(tmp_path, mnist_mirror, count_downloads):
    with pytest.raises(data.DataUnavailableError, match="download=False"):
        data.load_mnist("test", root=tmp_path, download=False, subset=False)
    assert count_downloads == []


def test_corrupted_file_fails_its_checksum(tmp_path, mnist_mirror):
    cache = tmp_path / "cache"
    data.load_mnist("test", root=cache, subset=False)
    damaged = cache / "mnist" / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-3])
    expected = data.CHECKSUMS["mnist"][damaged.name]
    with pytest.raises(data.ChecksumError) as caught:
        data.load_mnist("test", root=cache, subset=False)
    message = str(caught.value)
    assert str(damaged) in message and expected in message and md5(damaged) in message
    assert "Delete it" in message


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DLAI_DATA", raising=False)
    assert data.data_root() == tmp_path / "xdg" / "dlai_diffusion"
    monkeypatch.setenv("DLAI_DATA", str(tmp_path / "env"))
    assert data.data_root() == tmp_path / "env"
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"


def test_canonical_checksums_match_the_shipped_md5sums():
    if not (SHARED_MNIST / "MD5SUMS").exists():
        pytest.skip("the full MNIST files are not on this machine")
    listed = dict(
        line.split()[::-1] for line in (SHARED_MNIST / "MD5SUMS").read_text().splitlines()
    )
    assert listed == data.CHECKSUMS["mnist"]


# ----------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("split, per_class", [("train", 500), ("test", 100)])
def test_shipped_subset_is_balanced_real_mnist(split, per_class):
    subset = data.load_mnist(split, subset=True)
    assert subset.images.shape == (10 * per_class, 1, 28, 28)
    assert subset.images.dtype == torch.float32 and subset.labels.dtype == torch.int64
    assert subset.images.min() == -1 and subset.images.max() == 1
    assert torch.bincount(subset.labels, minlength=10).tolist() == [per_class] * 10
    pixels = (subset.images + 1) * 127.5
    assert (pixels - pixels.round()).abs().max() < 1e-4, "values are rescaled 8-bit pixels"
    ink = (subset.images > 0).float().mean()
    assert 0.1 < ink < 0.25, "about a sixth of MNIST pixels are ink"
    assert subset.classes == tuple("0123456789") and "subset" in subset.source


def test_shipped_subset_matches_the_full_files():
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("the full MNIST files are not on this machine")
    images, labels = data.mnist_arrays("test", root=SHARED_MNIST.parent, download=False)
    with np.load(Path(data.__file__).parent / "assets" / data.MNIST_SUBSET) as subset:
        index = subset["test_indices"]
        np.testing.assert_array_equal(subset["test_images"], images[index])
        np.testing.assert_array_equal(subset["test_labels"], labels[index])


def test_fast_mode_default_uses_the_subset_and_full_mode_raises(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "mnist", [(tmp_path / "nowhere").as_uri() + "/"])
    monkeypatch.setenv("DLAI_FAST", "1")
    assert len(data.load_mnist("test", root=tmp_path)) == 1000
    monkeypatch.setenv("DLAI_FAST", "0")
    with pytest.raises(data.DataUnavailableError, match=r"subset=True"):
        data.load_mnist("test", root=tmp_path)


def test_synthetic_cifar_is_announced_and_in_cifar_format(monkeypatch):
    parsed = []
    real_reader = data.read_cifar_archive
    monkeypatch.setattr(data, "read_cifar_archive", lambda *a: parsed.append(a) or real_reader(*a))
    with pytest.warns(data.SyntheticDataWarning, match="NOT real CIFAR-10"):
        train = data.load_cifar10("train", synthetic=True)
    assert parsed and str(parsed[0][0]).endswith(".tar.gz"), "goes through the CIFAR parser"
    assert train.images.shape == (1000, 3, 32, 32) and train.images.dtype == torch.float32
    assert (
        -1 <= train.images.min() and train.images.max() <= 1 and train.labels.dtype == torch.int64
    )
    assert torch.bincount(train.labels, minlength=10).tolist() == [100] * 10
    assert "SYNTHETIC" in train.source
    # structured, not noise: classes differ in their mean color far beyond the noise level
    means = torch.stack([train.images[train.labels == c].mean((0, 2, 3)) for c in range(10)])
    assert torch.cdist(means, means).add(torch.eye(10)).min() > 0.05
    with pytest.warns(data.SyntheticDataWarning):
        test = data.load_cifar10("test", synthetic=True)
        again = data.load_cifar10("test", synthetic=True)
    assert test.images.shape == (200, 3, 32, 32) and torch.equal(test.images, again.images)


def test_cifar_default_follows_fast_mode(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "cifar10", [(tmp_path / "nowhere").as_uri() + "/"])
    monkeypatch.setenv("DLAI_FAST", "1")
    with pytest.warns(data.SyntheticDataWarning):
        assert len(data.load_cifar10("test", root=tmp_path)) == 200
    monkeypatch.setenv("DLAI_FAST", "0")
    with pytest.raises(
        data.DataUnavailableError, match=r"cifar-10-python.tar.gz[\s\S]*synthetic=True"
    ):
        data.load_cifar10("test", root=tmp_path)


def test_real_cifar_archive_is_fetched_and_parsed(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rows = np.random.default_rng(1).integers(0, 256, size=(6, 3072), dtype=np.uint8)
    batches = {f"data_batch_{i}": (rows[i - 1 : i], [i]) for i in range(1, 6)}
    batches["test_batch"] = (rows[5:], [0])
    write_cifar_archive(mirror / "cifar-10-python.tar.gz", batches)
    monkeypatch.setitem(
        data.CHECKSUMS,
        "cifar10",
        {"cifar-10-python.tar.gz": md5(mirror / "cifar-10-python.tar.gz")},
    )
    monkeypatch.setitem(data.MIRRORS, "cifar10", [mirror.as_uri()])
    train = data.load_cifar10("train", root=tmp_path / "cache", synthetic=False)
    assert train.labels.tolist() == [1, 2, 3, 4, 5] and train.images.shape == (5, 3, 32, 32)
    expected = torch.from_numpy(rows[:5].reshape(5, 3, 32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(train.images, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: data.load_mnist("val", subset=True), ValueError),
        (lambda: data.load_mnist(subset="yes"), TypeError),
        (lambda: data.load_cifar10(synthetic=1), TypeError),
        (lambda: data.make_loader(data.load_mnist("test", subset=True), 0), ValueError),
    ],
)
def test_bad_arguments_are_named(call, error):
    with pytest.raises(error, match="split|subset|synthetic|batch_size"):
        call()


# ----------------------------------------------------------------------------- batches


def test_make_loader_batches_are_reproducible():
    dataset = data.load_mnist("test", subset=True)
    loader = data.make_loader(dataset, 64, generator=torch.Generator().manual_seed(0))
    first = next(iter(loader))
    loader = data.make_loader(dataset, 64, generator=torch.Generator().manual_seed(0))
    images, labels = next(iter(loader))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert torch.equal(images, first[0]) and torch.equal(labels, first[1])
    assert len(loader) == 1000 // 64


def test_infinite_batches_cover_each_pass_once_and_keep_going():
    dataset = data.ImageDataset(
        torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10), tuple("abcdefghij"), "toy"
    )
    batches = data.infinite_batches(
        dataset, 3, generator=torch.Generator().manual_seed(0), with_labels=True
    )
    first_pass = [next(batches) for _ in range(3)]  # 3 full batches, the 10th item dropped
    seen = torch.cat([labels for _, labels in first_pass])
    assert len(set(seen.tolist())) == 9
    for images, labels in first_pass:
        assert torch.equal(images.view(-1), labels.float())
    assert all(next(batches)[0].shape == (3, 1, 1, 1) for _ in range(10))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.infinite_batches(dataset, 11))
