"""MNIST and CIFAR-10 for the image lectures, with explicit offline fallbacks.

Both loaders return an :class:`ImageDataset`: ``images`` is a float32 tensor of shape
``(N, C, H, W)`` scaled to ``[-1, 1]`` (pixel ``p`` in 0..255 becomes ``p / 127.5 - 1``),
``labels`` an int64 tensor of shape ``(N,)`` and ``classes`` the class names.

Where the data comes from:

* Full data is downloaded once from public mirrors (:data:`MIRRORS`), checked against its
  canonical MD5 (:data:`CHECKSUMS`) and cached in ``<root>/mnist/`` or ``<root>/cifar10/``,
  where ``root`` is the ``root`` argument, else the environment variable ``DLAI_DATA``, else
  ``$XDG_CACHE_HOME/dlai_diffusion`` (default ``~/.cache/dlai_diffusion``).
* MNIST offline: 6,000 real digits ship with the package (``subset=True``; 500 per class from
  the training set, 100 per class from the test set). CC BY-SA 3.0, see
  ``assets/MNIST_LICENSE.txt``.
* CIFAR-10 offline: none. ``synthetic=True`` builds a small, deterministic stand-in of colored
  gradients and blobs in the real CIFAR file format and says loudly that it is not CIFAR-10.

In fast mode (``DLAI_FAST=1``) the defaults pick the offline sources; in full mode they never
swap data silently: if the real data cannot be had, the error says how to get it.

Datasets: MNIST (LeCun, Bottou, Bengio and Haffner, 1998); CIFAR-10 (Krizhevsky, 2009,
"Learning multiple layers of features from tiny images").
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import fast_or

__all__ = [
    "CHECKSUMS",
    "MIRRORS",
    "ChecksumError",
    "DataUnavailableError",
    "ImageDataset",
    "SyntheticDataWarning",
    "data_root",
    "fetch",
    "infinite_batches",
    "load_cifar10",
    "load_mnist",
    "make_loader",
    "md5sum",
    "mnist_arrays",
    "read_cifar_archive",
    "read_idx",
]

ENV_VAR = "DLAI_DATA"
"""Environment variable naming the data folder (it holds ``mnist/`` and ``cifar10/``)."""

MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}
"""Base URLs tried in order for each dataset; a file's URL is the base plus its name.

Any URL ``urllib`` opens works, ``file://`` included, so a local copy can act as a mirror.
"""

CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}
"""Canonical MD5 of every file, by dataset folder and file name."""

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
MNIST_SUBSET = "mnist_subset.npz"

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

TIMEOUT_S = 30.0
_SPLITS = ("train", "test")


class DataUnavailableError(RuntimeError):
    """The data could not be found or downloaded; the message says how to provide it."""


class ChecksumError(RuntimeError):
    """A file's MD5 differs from the canonical one; the message names file and both MD5s."""


class SyntheticDataWarning(UserWarning):
    """Issued whenever synthetic images stand in for a real dataset."""


@dataclass(frozen=True, eq=False)
class ImageDataset(Dataset):
    """Images with their labels; ``dataset[i]`` is ``(image, label)`` as in torchvision.

    Attributes:
        images: float32 tensor ``(N, C, H, W)`` with values in ``[-1, 1]``.
        labels: int64 tensor ``(N,)`` indexing ``classes``.
        classes: the class names.
        source: where the images come from, in words (says "synthetic" when they are).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with both tensors on ``device`` (keep small sets on the GPU)."""
        return dataclasses.replace(
            self, images=self.images.to(device), labels=self.labels.to(device)
        )


# ----------------------------------------------------------------------------- files


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root``, else ``$DLAI_DATA``, else the user cache folder."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "dlai_diffusion"


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    dataset: str,
    filenames: Sequence[str],
    root: str | os.PathLike | None = None,
    download: bool = True,
    fallback: str = "",
) -> list[Path]:
    """Paths of ``filenames`` in ``<root>/<dataset>/``, downloaded if missing, MD5-checked.

    Missing files are downloaded from ``MIRRORS[dataset]`` in order, each written to a
    temporary file and moved into place only once its MD5 matches. ``fallback`` is a last
    suggestion appended to the error messages (an offline alternative).

    Raises:
        DataUnavailableError: a file is missing and no mirror delivered it (or ``download``
            is false); the message lists the files, the folder and the other options.
        ChecksumError: a file already in the folder has the wrong MD5.
    """
    if dataset not in CHECKSUMS:
        raise ValueError(f"dataset must be one of {sorted(CHECKSUMS)}, got {dataset!r}")
    unknown = [name for name in filenames if name not in CHECKSUMS[dataset]]
    if unknown:
        raise ValueError(f"filenames must be files of {dataset!r}, got unknown {unknown}")
    folder = data_root(root) / dataset
    paths = []
    for name in filenames:
        path = folder / name
        expected = CHECKSUMS[dataset][name]
        if not path.exists():
            if not download:
                reasons = [f"{path} does not exist and download=False."]
                raise DataUnavailableError(
                    _how_to_provide(dataset, filenames, folder, reasons, fallback)
                )
            _download_from_mirrors(dataset, name, path, expected, fallback, filenames)
        actual = md5sum(path)
        if actual != expected:
            raise ChecksumError(
                f"{path} has MD5 {actual}, expected {expected}: the file is corrupt or "
                "incomplete. Delete it and call again to download a fresh copy, or replace it "
                f"with a good copy.{_also(fallback)}"
            )
        paths.append(path)
    return paths


def _download_from_mirrors(
    dataset: str,
    name: str,
    path: Path,
    expected: str,
    fallback: str,
    filenames: Sequence[str],
) -> None:
    failures = []
    for base in MIRRORS[dataset]:
        url = base.rstrip("/") + "/" + name
        try:
            _download(url, path, expected)
            return
        except (OSError, ValueError, http.client.HTTPException, ChecksumError) as error:
            failures.append(f"{url}: {error}")
    reasons = [f"Could not download {name}; every mirror failed:", *(f"  {f}" for f in failures)]
    raise DataUnavailableError(_how_to_provide(dataset, filenames, path.parent, reasons, fallback))


def _download(url: str, path: Path, expected_md5: str) -> None:
    """Stream ``url`` to ``path`` atomically: a temporary file, renamed once its MD5 is right."""
    from tqdm.auto import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as response,
            tqdm(
                total=int(response.headers.get("Content-Length") or 0) or None,
                unit="B",
                unit_scale=True,
                desc=path.name,
                leave=False,
                disable=fast_or(False, True),
            ) as progress,
        ):
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
                progress.update(len(chunk))
        if digest.hexdigest() != expected_md5:
            raise ChecksumError(f"got MD5 {digest.hexdigest()}, expected {expected_md5}")
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _also(fallback: str) -> str:
    return f" Or {fallback}." if fallback else ""


def _how_to_provide(
    dataset: str, filenames: Sequence[str], folder: Path, reasons: list[str], fallback: str
) -> str:
    files = [f"      {name}  (MD5 {CHECKSUMS[dataset][name]})" for name in filenames]
    mirrors = [f"      {base}" for base in MIRRORS[dataset]]
    lines = [
        *reasons,
        "",
        "To get the data, do one of:",
        f"  * connect to the internet and call again with download=True (files go to {folder});",
        f"  * download these files yourself and put them, unchanged, in {folder}:",
        *files,
        "    from one of:",
        *mirrors,
        f"  * set the environment variable {ENV_VAR} (or pass root=...) to a folder whose "
        f"'{dataset}' subfolder holds these files;",
    ]
    if fallback:
        lines.append(f"  * {fallback}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- parsers

_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped or not), the format of the MNIST files.

    Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
    then each size as a big-endian uint32; the values follow, big-endian, row-major. MNIST
    images have magic number 2051 (``0x00000803``: ubyte, 3 dims), labels 2049 (1 dim).
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(shape) != ndim or len(raw) != expected:
        raise ValueError(f"{path} has {len(raw)} bytes, its IDX header {shape} implies {expected}")
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def read_cifar_archive(
    path: str | os.PathLike, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read ``split`` from a ``cifar-10-python.tar.gz``-style archive.

    The archive holds ``cifar-10-batches-py/`` with pickled dicts ``data_batch_1..5``,
    ``test_batch`` (keys ``b"data"``: uint8 ``(n, 3072)``, each row the red, then green, then
    blue 32x32 plane, row-major; ``b"labels"``: n ints) and ``batches.meta``
    (``b"label_names"``). Pickles can run code: open only archives you trust (the loaders
    check the MD5 first). Returns uint8 images ``(N, 3, 32, 32)``, int64 labels and class names.
    """
    split = _check_split(split)
    wanted = {f"{CIFAR_FOLDER}/{name}" for name in (*CIFAR_BATCHES[split], "batches.meta")}
    found = {}
    with tarfile.open(path, "r:*") as archive:
        for member in archive:  # one pass: seeking backwards in a gzip stream is slow
            if member.name in wanted:
                found[member.name] = pickle.load(archive.extractfile(member), encoding="bytes")
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(f"{path} is not a CIFAR-10 python archive: it lacks {missing}")
    classes = tuple(name.decode() for name in found[f"{CIFAR_FOLDER}/batches.meta"][b"label_names"])
    images, labels = [], []
    for name in CIFAR_BATCHES[split]:
        batch = found[f"{CIFAR_FOLDER}/{name}"]
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        targets = np.asarray(batch[b"labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or targets.shape != data.shape[:1]:
            raise ValueError(
                f"{path}: {name} must hold data (n, 3072) and n labels, "
                f"got {data.shape} and {targets.shape}"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets)
    labels = np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"{path}: labels must lie in 0..{len(classes) - 1}")
    return np.concatenate(images), labels, classes


# ----------------------------------------------------------------------------- MNIST


def mnist_arrays(
    split: str = "train", root: str | os.PathLike | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The full MNIST ``split`` as stored: uint8 images ``(N, 28, 28)`` and uint8 labels.

    Files come from :func:`fetch` (cache, else download; MD5 always checked).
    """
    split = _check_split(split)
    fallback = "use the real MNIST subset shipped with the package: load_mnist(subset=True)"
    image_file, label_file = fetch("mnist", MNIST_FILES[split], root, download, fallback)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{image_file} and {label_file} do not match: shapes {images.shape}, {labels.shape}"
        )
    return images, labels


def load_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    subset: bool | None = None,
) -> ImageDataset:
    """MNIST digits as an :class:`ImageDataset` of shape ``(N, 1, 28, 28)`` in ``[-1, 1]``.

    Args:
        split: ``"train"`` (60,000 digits) or ``"test"`` (10,000).
        root: data folder (files in ``<root>/mnist/``); default ``$DLAI_DATA`` or the cache.
        download: fetch missing files from :data:`MIRRORS`.
        subset: ``True``: the real subset shipped with the package (train 5,000 / test 1,000,
            balanced; ``root`` and ``download`` are ignored). ``False``: the full data.
            ``None``: the subset in fast mode, the full data otherwise.

    Raises:
        DataUnavailableError: the full data cannot be had; the message says what to do.
    """
    split = _check_split(split)
    if subset is not None and not isinstance(subset, bool):
        raise TypeError(f"subset must be True, False or None, got {subset!r}")
    if subset if subset is not None else fast_or(False, True):
        images, labels = _mnist_subset(split)
        source = f"MNIST {split} subset shipped with dlai_diffusion ({len(labels)} real digits)"
    else:
        images, labels = mnist_arrays(split, root, download)
        source = f"MNIST {split} ({len(labels)} digits)"
    return ImageDataset(_to_signed(images[:, None]), _to_long(labels), MNIST_CLASSES, source)


def _mnist_subset(split: str) -> tuple[np.ndarray, np.ndarray]:
    asset = resources.files("dlai_diffusion") / "assets" / MNIST_SUBSET
    try:
        payload = asset.read_bytes()
    except FileNotFoundError:
        raise DataUnavailableError(
            f"The MNIST subset {asset} is missing from the installed package; reinstall "
            "dlai_diffusion or rebuild it with scripts/make_mnist_subset.py."
        ) from None
    with np.load(io.BytesIO(payload)) as arrays:
        return arrays[f"{split}_images"], arrays[f"{split}_labels"]


# ----------------------------------------------------------------------------- CIFAR-10


def load_cifar10(
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = True,
    synthetic: bool | None = None,
) -> ImageDataset:
    """CIFAR-10 as an :class:`ImageDataset` of shape ``(N, 3, 32, 32)`` in ``[-1, 1]``.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        root: data folder (archive in ``<root>/cifar10/``); default ``$DLAI_DATA`` or the cache.
        download: fetch the 163 MB archive if missing.
        synthetic: ``True``: a small synthetic stand-in (train 1,000 / test 200) in the
            CIFAR file format, NOT real images, announced by :class:`SyntheticDataWarning`.
            ``False``: the real data. ``None``: the stand-in in fast mode, real data otherwise.

    Raises:
        DataUnavailableError: the real data cannot be had; the message says what to do.
    """
    split = _check_split(split)
    if synthetic is not None and not isinstance(synthetic, bool):
        raise TypeError(f"synthetic must be True, False or None, got {synthetic!r}")
    if synthetic if synthetic is not None else fast_or(False, True):
        warnings.warn(
            "load_cifar10 returns a SYNTHETIC stand-in (colored gradients and blobs), NOT real "
            "CIFAR-10 images; pass synthetic=False (full mode) for the real data.",
            SyntheticDataWarning,
            stacklevel=2,
        )
        with tempfile.TemporaryDirectory(prefix="dlai_synthetic_cifar_") as folder:
            archive = Path(folder) / "cifar-10-synthetic.tar.gz"
            _write_synthetic_cifar_archive(archive)
            images, labels, classes = read_cifar_archive(archive, split)
        source = f"SYNTHETIC stand-in for CIFAR-10 {split}, not real images ({len(labels)})"
    else:
        fallback = "for a synthetic stand-in (not real images) use load_cifar10(synthetic=True)"
        (archive,) = fetch("cifar10", [CIFAR_ARCHIVE], root, download, fallback)
        images, labels, classes = read_cifar_archive(archive, split)
        source = f"CIFAR-10 {split} ({len(labels)} images)"
    return ImageDataset(_to_signed(images), _to_long(labels), classes, source)


SYNTHETIC_SIZES = {"train": 1000, "test": 200}
SYNTHETIC_SEED = 0


def _synthetic_cifar_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images ``(n, 32, 32, 3)`` and balanced labels; class sets colors and layout.

    Class ``c`` has a background gradient between two colors along direction ``2 pi c / 10``
    and a Gaussian blob of a third color; positions, sizes and colors are jittered per image.
    """
    labels = rng.permutation(np.arange(n) % 10)
    c = labels[:, None].astype(np.float64)

    def palette(t):  # a smooth color wheel: cosine per RGB channel, phases a third apart
        return 0.5 + 0.45 * np.cos(2 * np.pi * (t + np.array([0.0, 1 / 3, 2 / 3])))

    dark, light, blob = palette(c / 10) * 0.4, palette(c / 10 + 0.3), palette(0.55 - c * 0.37)
    jitter = 0.08 * rng.standard_normal((3, n, 3))
    dark, light, blob = dark + jitter[0], light + jitter[1], blob + jitter[2]
    angle = 2 * np.pi * labels / 10 + 0.3 * rng.standard_normal(n)
    center = rng.uniform(-7, 7, size=(n, 2))
    width = rng.uniform(3, 7, size=n)
    v, u = np.meshgrid(*2 * [np.arange(32, dtype=np.float32) - 15.5], indexing="ij")
    along = np.cos(angle)[:, None, None] * u + np.sin(angle)[:, None, None] * v
    mix = (0.5 + along / (31 * np.sqrt(2)))[..., None].astype(np.float32)  # 0..1 corner to corner
    distance2 = (u - center[:, 0, None, None]) ** 2 + (v - center[:, 1, None, None]) ** 2
    weight = np.exp(-distance2 / (2 * width[:, None, None] ** 2))[..., None].astype(np.float32)
    background = dark[:, None, None] * (1 - mix) + light[:, None, None] * mix
    image = background * (1 - weight) + blob[:, None, None] * weight
    image += 0.02 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.round(255 * np.clip(image, 0, 1)).astype(np.uint8), labels


def _write_synthetic_cifar_archive(path: Path) -> None:
    """Write the synthetic stand-in exactly in the layout of ``cifar-10-python.tar.gz``."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    members = {
        "batches.meta": {
            b"label_names": [f"synthetic-{c}".encode() for c in range(10)],
            b"num_cases_per_batch": SYNTHETIC_SIZES["train"] // 5,
            b"num_vis": 3 * 32 * 32,
        }
    }
    for split in _SPLITS:
        images, labels = _synthetic_cifar_images(SYNTHETIC_SIZES[split], rng)
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R, G, B planes
        names = CIFAR_BATCHES[split]
        for name, part_rows, part_labels in zip(
            names, np.array_split(rows, len(names)), np.array_split(labels, len(names)), strict=True
        ):
            members[name] = {
                b"batch_label": f"synthetic {name}".encode(),
                b"labels": part_labels.tolist(),
                b"data": part_rows,
            }
    with tarfile.open(path, "w:gz", compresslevel=0) as archive:  # gzip framing, no work
        for name, content in members.items():
            payload = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{CIFAR_FOLDER}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


# ----------------------------------------------------------------------------- batches


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of ``(images, labels)`` batches; ``generator`` fixes the shuffling."""
    _check_batch_size(batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
    )


def infinite_batches(
    dataset: ImageDataset,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    with_labels: bool = False,
) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless image batches for step-based training: reshuffle each pass, full batches only.

    Indexes the tensors directly (no ``DataLoader``), which is fast for in-memory data.
    Yields ``images`` of shape ``(batch_size, C, H, W)`` on ``device`` (default: where the
    dataset is), or ``(images, labels)`` when ``with_labels``.
    """
    if not hasattr(dataset, "images") or not hasattr(dataset, "labels"):
        raise TypeError(f"dataset must be an ImageDataset, got {type(dataset).__name__}")
    _check_batch_size(batch_size)
    n = len(dataset.images)
    if batch_size > n:
        raise ValueError(f"batch_size must be at most the dataset size {n}, got {batch_size}")
    device = dataset.images.device if device is None else torch.device(device)
    while True:
        draw_on = generator.device if generator is not None else "cpu"
        order = torch.randperm(n, generator=generator, device=draw_on).to(dataset.images.device)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            images = dataset.images[index].to(device, non_blocking=True)
            if with_labels:
                yield images, dataset.labels[index].to(device, non_blocking=True)
            else:
                yield images


# ----------------------------------------------------------------------------- helpers


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _to_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (``p / 127.5 - 1``)."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


def _to_long(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))
