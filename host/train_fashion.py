"""Train the project's small Fashion-MNIST CNN on the CPU with NumPy and export it as a float ONNX model.

The network is ``conv3x3(8) - relu - maxpool2 - conv3x3(16) - relu - maxpool2 - flatten - fc(10)``
(``same`` padding, 10.8k parameters, 290k MACs per image), trained with Adam on softmax
cross-entropy. The implementation is plain vectorized NumPy (im2col convolutions, NHWC inside), so
training needs no extra dependency: the default, one epoch over the 60,000 training images, reaches
87.2 % test accuracy (seed 0) in 11 s of CPU time on one core of this machine class (two epochs at
batch 64: 88.4 % in 20 s).

The exported model is what a PyTorch user would hand to Jacquard: float32, NCHW, opset 13, a dynamic
batch dimension ``N`` on the input ``image`` (pixels / 255) and the output ``logits``. The fully
connected layer is ``MatMul + Add``. :func:`trained_model` caches it in
``cache_dir("models")`` under a hash of the settings and of this file, so it is trained once per
machine and never committed.

Run ``python -m jacquard.host.train_fashion [-o MODEL.onnx]`` to train (or reuse the cached model)
and print its accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .cache import cache_dir, cache_lock
from .datasets import fashion_mnist
from .material import MaterialError

__all__ = [
    "TrainConfig",
    "accuracy",
    "cache_key",
    "predict",
    "preprocess",
    "to_onnx",
    "train",
    "trained_model",
]

INPUT, OUTPUT = "image", "logits"
_EXIT_MATERIAL = 3  # the child's exit status for "Fashion-MNIST is missing"
_F32 = np.float32


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; every field is part of the cache key.

    Parameters
    ----------
    seed : int
        Seeds the weight initialization and the shuffling.
    epochs : int
        Passes over the training images.
    batch : int
        Images per Adam step.
    lr : float
        Adam's initial step size (``beta1 = 0.9``, ``beta2 = 0.999``), decayed linearly to a tenth of
        it over the run.
    channels : tuple of int
        Output channels of the two convolutions.
    train_images : int
        How many of the 60,000 training images to use (the first ones of a seeded shuffle).

    Raises
    ------
    ValueError
        If a field is out of range.
    """

    seed: int = 0
    epochs: int = 1
    batch: int = 32
    lr: float = 2e-3
    channels: tuple[int, int] = (8, 16)
    train_images: int = 60000

    def __post_init__(self):
        for name in ("epochs", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), not {self.lr!r}")
        if len(self.channels) != 2 or not all(isinstance(c, int) and c >= 1 for c in self.channels):
            raise ValueError(f"channels must be two positive integers, not {self.channels!r}")
        if not isinstance(self.train_images, int) or not self.batch <= self.train_images <= 60000:
            raise ValueError(f"train_images must be an integer in [batch, 60000], not {self.train_images!r}")


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` images to the model's float32 NCHW input ``(N, 1, 28, 28)`` in [0, 1].

    Raises
    ------
    ValueError
        If ``images`` is not uint8 of shape ``(N, 28, 28)``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"images must be uint8 of shape (N, 28, 28), not {images.dtype} {images.shape}")
    return (images[:, None].astype(_F32) / _F32(255)).astype(_F32)


# -- the network in NumPy (NHWC inside; weights kept in ONNX's layouts) ---------------------------------


def _init(cfg: TrainConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c1, c2 = cfg.channels

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(_F32)

    return {"w1": he((c1, 1, 3, 3), 9), "b1": np.zeros(c1, _F32),
            "w2": he((c2, c1, 3, 3), 9 * c1), "b2": np.zeros(c2, _F32),
            # Rows in ONNX's NCHW flatten order (c, h, w), like a framework's Linear after Flatten.
            "w3": (rng.standard_normal((c2 * 49, 10)) / np.sqrt(c2 * 49)).astype(_F32),
            "b3": np.zeros(10, _F32)}


def _im2col(x: np.ndarray) -> np.ndarray:
    """NHWC ``x`` to ``(N*H*W, 9*C)`` 3x3 ``same`` patches, columns in (kh, kw, c) order.

    Nine shifted copies of whole channel vectors: much faster than a window view's reshape, whose
    innermost axes are the 3x3 taps.
    """
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    return cols.reshape(n * h * w, 9 * c)


def _col2im(dcols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The adjoint of :func:`_im2col`: scatter-add patch gradients back to an NHWC tensor."""
    n, h, w, c = shape
    d = dcols.reshape(n, h, w, 9, c)
    dxp = np.zeros((n, h + 2, w + 2, c), _F32)
    for k in range(9):
        i, j = divmod(k, 3)
        dxp[:, i:i + h, j:j + w] += d[:, :, :, k]
    return dxp[:, 1:-1, 1:-1]


def _wmat(w: np.ndarray) -> np.ndarray:
    """OIHW weights as the ``(9*C, O)`` matrix that multiplies :func:`_im2col`'s columns."""
    return w.transpose(2, 3, 1, 0).reshape(-1, len(w))


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, h, wd, _ = x.shape
    cols = _im2col(x)
    y = cols @ _wmat(w) + b
    return y.reshape(n, h, wd, len(w)), cols


def _pool(x: np.ndarray) -> np.ndarray:
    # Three element-wise maxima of strided views: several times faster than a max over axes.
    return np.maximum(np.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                      np.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


def _pool_back(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    # Gradient to every position equal to the window's max. Ties happen only where the ReLU output
    # is 0, and the ReLU's own gradient is 0 there, so no gradient is duplicated.
    mask = x.reshape(n, h // 2, 2, w // 2, 2, c) == y[:, :, None, :, None]
    return (mask * dy[:, :, None, :, None]).reshape(x.shape)


def _forward(p: dict[str, np.ndarray], x: np.ndarray, keep: bool = False):
    x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    a1, cols1 = _conv(x, p["w1"], p["b1"])
    r1 = np.maximum(a1, 0)
    p1 = _pool(r1)
    a2, cols2 = _conv(p1, p["w2"], p["b2"])
    r2 = np.maximum(a2, 0)
    p2 = _pool(r2)
    flat = p2.transpose(0, 3, 1, 2).reshape(len(x), -1)  # NCHW flatten order, as exported
    logits = flat @ p["w3"] + p["b3"]
    if not keep:
        return logits
    return logits, (cols1, r1, p1, cols2, r2, p2, flat)


def _backward(p: dict[str, np.ndarray], cache, dlogits: np.ndarray) -> dict[str, np.ndarray]:
    cols1, r1, p1, cols2, r2, p2, flat = cache
    g = {"w3": flat.T @ dlogits, "b3": dlogits.sum(0)}
    dp2 = (dlogits @ p["w3"].T).reshape(p2.shape[0], p2.shape[3], 7, 7).transpose(0, 2, 3, 1)
    da2 = _pool_back(r2, p2, dp2) * (r2 > 0)
    da2m = da2.reshape(-1, da2.shape[-1])
    g["w2"] = (cols2.T @ da2m).reshape(3, 3, -1, len(p["w2"])).transpose(3, 2, 0, 1)
    g["b2"] = da2m.sum(0)
    dp1 = _col2im(da2m @ _wmat(p["w2"]).T, p1.shape)
    da1 = _pool_back(r1, p1, dp1) * (r1 > 0)
    da1m = da1.reshape(-1, da1.shape[-1])
    g["w1"] = (cols1.T @ da1m).reshape(3, 3, -1, len(p["w1"])).transpose(3, 2, 0, 1)
    g["b1"] = da1m.sum(0)
    return g


def predict(params: dict[str, np.ndarray], x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Float logits ``(N, 10)`` of NCHW inputs ``x`` (as :func:`preprocess` makes them)."""
    return np.concatenate([_forward(params, x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` ``(N, 10)`` against ``labels`` ``(N,)``, in [0, 1]."""
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def train(config: TrainConfig = TrainConfig(), *, images: np.ndarray | None = None,
          labels: np.ndarray | None = None,
          progress: Callable[[int, int, float], None] | None = None) -> dict[str, np.ndarray]:
    """Train the CNN and return its float32 parameters (ONNX layouts: OIHW convs, ``(784, 10)`` fc).

    Parameters
    ----------
    config : TrainConfig
    images, labels : ndarray, optional
        uint8 ``(N, 28, 28)`` images and their labels; Fashion-MNIST's training split by default.
    progress : callable, optional
        Called as ``progress(step, steps, loss)`` after each Adam step.

    Returns
    -------
    dict of str to ndarray
        ``w1, b1, w2, b2, w3, b3``.

    Raises
    ------
    MaterialError
        If Fashion-MNIST is not installed.
    """
    if images is None or labels is None:
        images, labels = fashion_mnist("train")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(images))[:config.train_images]
    x, y = preprocess(images[order]), np.asarray(labels)[order].astype(np.int64)
    params = _init(config, rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    per_epoch = len(x) // config.batch
    steps, t = config.epochs * per_epoch, 0
    b1, b2, eps = 0.9, 0.999, 1e-8
    for _ in range(config.epochs):
        perm = rng.permutation(len(x))
        for s in range(per_epoch):
            idx = perm[s * config.batch:(s + 1) * config.batch]
            logits, cache = _forward(params, x[idx], keep=True)
            z = logits - logits.max(1, keepdims=True)
            prob = np.exp(z)
            prob /= prob.sum(1, keepdims=True)
            loss = float(-np.mean(np.log(prob[np.arange(len(idx)), y[idx]] + 1e-12)))
            prob[np.arange(len(idx)), y[idx]] -= 1
            grads = _backward(params, cache, (prob / len(idx)).astype(_F32))
            lr = config.lr * (1 - 0.9 * t / steps)
            t += 1
            step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
            for k, g in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                params[k] = (params[k] - step * m[k] / (np.sqrt(v[k]) + eps)).astype(_F32)
            if progress is not None:
                progress(t, steps, loss)
    return params


# -- export and cache -----------------------------------------------------------------------------------


def to_onnx(params: dict[str, np.ndarray], *, opset: int = 13) -> onnx.ModelProto:
    """The trained network as a float32 NCHW ONNX model with a dynamic batch dimension ``N``.

    Raises
    ------
    ValueError
        If ``opset`` is below 13.
    """
    if not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset must be an integer >= 13, not {opset!r}")
    inits = [numpy_helper.from_array(np.asarray(v, _F32), k) for k, v in params.items()]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Conv", [INPUT, "w1", "b1"], ["conv1"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", **pool),
        helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], name="conv2", **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], name="pool2", **pool),
        helper.make_node("Flatten", ["pool2"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "w3"], ["fc"], name="fc"),
        helper.make_node("Add", ["fc", "b3"], [OUTPUT], name="fc_bias"),
    ]
    graph = helper.make_graph(
        nodes, "fashion_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="jacquard.host.train_fashion")
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model, full_check=True)
    return model


def cache_key(config: TrainConfig = TrainConfig()) -> str:
    """Hash of the settings and of this file's source: a changed trainer trains a new model."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def trained_model(config: TrainConfig = TrainConfig(), *, in_process: bool = False) -> tuple[Path, dict]:
    """The cached float ONNX model for ``config``, trained first if needed.

    Training runs in a child process with single-threaded BLAS unless ``in_process``: these matrices
    are small, and OpenBLAS's worker threads spin so hard on a shared 2-core machine that a
    multi-threaded run took ten times the CPU time of a single-threaded one.

    Returns
    -------
    path : Path
        ``cache_dir("models") / "fashion-cnn-<key>.onnx"``.
    info : dict
        What training measured: ``train_seconds``, ``float_test_accuracy`` (NumPy forward on the
        10,000 test images) and the settings.

    Raises
    ------
    MaterialError
        If Fashion-MNIST is not installed.
    RuntimeError
        If the training process fails otherwise.
    """
    root = cache_dir("models")
    path = root / f"fashion-cnn-{cache_key(config)}.onnx"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())
    if in_process:
        _train_and_save(config, path, meta)
    else:
        threads = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        cmd = [sys.executable, "-m", "jacquard.host.train_fashion", "--in-process",
               "--config", json.dumps(dataclasses.asdict(config))]
        proc = subprocess.run(cmd, env={**os.environ, **threads}, capture_output=True, text=True, check=False)
        if proc.returncode == _EXIT_MATERIAL:
            raise MaterialError(proc.stderr.strip().splitlines()[-1])
        if proc.returncode != 0 or not (path.exists() and meta.exists()):
            raise RuntimeError(f"training failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stderr[-3000:]}")
    return path, json.loads(meta.read_text())


def _train_and_save(config: TrainConfig, path: Path, meta: Path) -> None:
    # Locked here, in the process that trains: processes asking at the same time train it once.
    with cache_lock(path):
        if not (path.exists() and meta.exists()):
            _train_and_write(config, path, meta)


def _train_and_write(config: TrainConfig, path: Path, meta: Path) -> None:
    t0 = time.perf_counter()
    params = train(config)
    seconds = time.perf_counter() - t0
    test_x, test_y = fashion_mnist("test")
    info = {"train_seconds": round(seconds, 2), "train_cpu_seconds": round(time.process_time(), 2),
            "float_test_accuracy": accuracy(predict(params, preprocess(test_x)), test_y),
            "config": dataclasses.asdict(config)}
    # Written to temporary names and renamed, so a concurrent reader never sees half a file.
    for target, data in ((path, to_onnx(params).SerializeToString()), (meta, json.dumps(info).encode())):
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jacquard.host.train_fashion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", help="also copy the float ONNX model here")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--config", help="all TrainConfig fields as JSON (overrides --seed/--epochs)")
    parser.add_argument("--in-process", action="store_true", help="train in this process (BLAS threads "
                        "as the environment sets them)")
    args = parser.parse_args(argv)
    if args.config:
        fields = json.loads(args.config)
        config = TrainConfig(**{**fields, "channels": tuple(fields.get("channels", TrainConfig.channels))})
    else:
        config = TrainConfig(seed=args.seed, epochs=args.epochs)
    try:
        path, info = trained_model(config, in_process=args.in_process)
    except MaterialError as e:
        print(e, file=sys.stderr)
        return _EXIT_MATERIAL
    if args.output:
        Path(args.output).write_bytes(path.read_bytes())
    print(f"{path}: float test accuracy {100 * info['float_test_accuracy']:.2f} %, "
          f"trained in {info['train_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
