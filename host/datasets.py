"""Labelled data sets installed from package registries by name (never fetched at run time).

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``, which installs the four gzip
IDX files of the original distribution in ``/usr/share/datasets/fashion-mnist/``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .material import MaterialError

__all__ = ["FASHION_MNIST", "FASHION_MNIST_CLASSES", "fashion_mnist", "read_idx"]

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# IDX type codes (the third byte of the magic number) to big-endian NumPy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Parameters
    ----------
    path : str or os.PathLike
        The file; a ``.gz`` suffix means gzip.

    Returns
    -------
    ndarray
        The array in native byte order, shaped as the header says.

    Raises
    ------
    MaterialError
        If the file cannot be read, or its header or length is not that of an IDX file.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # a truncated download or a missing file
        raise MaterialError(f"cannot read the IDX file {str(path)!r} ({e}); reinstall its package") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise MaterialError(f"{str(path)!r} is not an IDX file (magic {raw[:4].hex()}); "
                            "reinstall its package")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    offset = 4 + 4 * ndim
    if len(raw) != offset + int(np.prod(shape)) * dtype.itemsize:
        raise MaterialError(f"{str(path)!r} holds {len(raw) - offset} data bytes, not the "
                            f"{int(np.prod(shape)) * dtype.itemsize} its header {shape} says; "
                            "reinstall its package")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist(split: str = "train", *, root: str | os.PathLike = FASHION_MNIST
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST, from the Debian package ``dataset-fashion-mnist``.

    Parameters
    ----------
    split : str
        ``"train"`` (60,000 images) or ``"test"`` (10,000).
    root : str or os.PathLike
        The folder holding the four ``*-ubyte.gz`` files.

    Returns
    -------
    images : ndarray
        uint8 ``(N, 28, 28)``, 0 is the background.
    labels : ndarray
        uint8 ``(N,)``, class indices into :data:`FASHION_MNIST_CLASSES`.

    Raises
    ------
    ValueError
        If ``split`` is neither ``"train"`` nor ``"test"``.
    MaterialError
        If the files are missing (``apt-get install dataset-fashion-mnist``) or corrupt.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root)
    paths = [root / name for name in _FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MaterialError(f"Fashion-MNIST is not installed ({', '.join(missing)} missing from {root}): "
                            "run `sudo apt-get install dataset-fashion-mnist`")
    images, labels = (read_idx(p) for p in paths)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise MaterialError(f"{root} does not hold Fashion-MNIST's {split} split: images {images.dtype} "
                            f"{images.shape}, labels {labels.shape}; reinstall dataset-fashion-mnist")
    return images, labels
