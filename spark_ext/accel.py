"""One ONNX model on a Jacquard device, compiled per input shape, with per-process offload statistics.

This is the engine under :func:`jacquard.spark_ext.predict.predict_udf`, the zero-code-change
:class:`jacquard.spark_ext.offload.AcceleratedSession` and the MTCNN detector:

>>> model = AcceleratedModel(open("pnet_int8.onnx", "rb").read(), "emu")   # doctest: +SKIP
>>> outputs = model.run({"input_1": frames})      # onnxruntime's feeds -> {output name: array}

* A model is imported, partitioned and compiled once per distinct input shape (a static-shape
  program per shape; most streams have one or two: the batch size and the last, shorter batch).
  Compiled executables are cached per process under the model's SHA-256, so every UDF, session or
  detector of the same model in a Python worker shares them, and on disk
  (``cache_dir("compiled")``), so another Python worker, a restarted one or the next run loads a
  shape's program instead of compiling it again. Spark hands a task whichever idle Python worker
  comes first, and a streaming task holds two (the source's reader and the UDF), so without the
  disk cache each worker pays the whole compile of every shape once. The disk key covers the
  model, the shapes, the hardware config, the calibration rows and the source of the compiler
  (``jacquard.host``, ``jacquard.sim``), so an edited compiler never reuses an old program.
  ``JACQUARD_COMPILE_CACHE=0`` turns the disk cache off.
* A model whose batch dimension is fixed at 1 gets batched feeds row by row through the device's
  pipelined :meth:`~jacquard.host.device.Device.run_batch`.
* int8 models (QOperator or QDQ) run as they are, bit-exact with onnxruntime. A float model is
  quantized on import, calibrated on the first ``calibration_rows`` rows it is given (those run on
  the CPU with onnxruntime meanwhile), so its results equal the CPU run up to quantization.
* When the device cannot be opened, the model runs on onnxruntime on the CPU and that is logged once
  per process.

Statistics
----------
Every process keeps one :class:`OffloadStats` (inferences, rows, MACs on the device, device busy
seconds, devices used, ops kept on the CPU). When ``JACQUARD_STATS_DIR`` is set, it is written after
each run to ``<dir>/<host>-<pid>.json`` (atomically), so a Spark app's driver and all its Python
workers leave one file each; :func:`aggregate_stats` sums them (``jacquard submit`` prints it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "COMPILE_CACHE_ENV",
    "STATS_ENV",
    "AcceleratedModel",
    "OffloadStats",
    "aggregate_stats",
    "model_bytes",
    "process_stats",
    "shared_model",
]

log = logging.getLogger(__name__)

STATS_ENV = "JACQUARD_STATS_DIR"
COMPILE_CACHE_ENV = "JACQUARD_COMPILE_CACHE"
# Guards against recursion: jacquard's own onnxruntime sessions (CPU segments, calibration, the
# fallback) must be the real ones even when the zero-code hook has replaced InferenceSession.
_internal = threading.local()


def in_jacquard() -> bool:
    """True while jacquard itself is building onnxruntime sessions on this thread."""
    return getattr(_internal, "depth", 0) > 0


class _Internal:
    def __enter__(self):
        _internal.depth = getattr(_internal, "depth", 0) + 1

    def __exit__(self, *exc):
        _internal.depth -= 1


def model_bytes(model) -> bytes:
    """The serialized ONNX model from a path, bytes or an ``onnx.ModelProto``.

    Raises
    ------
    TypeError
        If ``model`` is none of those.
    """
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        return Path(model).read_bytes()
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    raise TypeError(f"model must be an ONNX file path, bytes or onnx.ModelProto, not {type(model).__name__}")


# -- statistics -------------------------------------------------------------------------------------

@dataclass
class OffloadStats:
    """What one process offloaded.

    Members
    -------
    inferences : int
        Model runs (one per ``run`` call).
    rows : int
        Rows (batch entries) run.
    device_inferences : int
        Runs that went to a device (the rest ran on the CPU fallback or while calibrating).
    macs_device, macs_total : int
        MACs run on the accelerator, and in the whole model, summed over runs.
    device_seconds : float
        Wall-clock time the device runs took (device busy time as seen by the host).
    estimated_fpga_seconds : float
        The performance model's FPGA latency of those runs (device steps only), at the config's clock.
    devices : set of str
        Device URIs used.
    cpu_ops : set of str
        ONNX ops of the compiled models kept on the CPU (onnxruntime) or the host.
    models : set of str
        Short hashes of the models run.
    fallbacks : int
        Runs made on onnxruntime because no device was available.
    """

    inferences: int = 0
    rows: int = 0
    device_inferences: int = 0
    macs_device: int = 0
    macs_total: int = 0
    device_seconds: float = 0.0
    estimated_fpga_seconds: float = 0.0
    devices: set[str] = field(default_factory=set)
    cpu_ops: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    fallbacks: int = 0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("devices", "cpu_ops", "models"):
            d[k] = sorted(d[k])
        return d

    def write(self, directory: str | os.PathLike) -> Path:
        """Write this process's stats as ``<directory>/<host>-<pid>.json`` (replacing it atomically)."""
        path = Path(directory) / f"{socket.gethostname()}-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"pid": os.getpid(), **self.as_dict()}))
        os.replace(tmp, path)
        return path


_STATS = OffloadStats()
_STATS_LOCK = threading.Lock()


def process_stats() -> OffloadStats:
    """This process's :class:`OffloadStats`."""
    return _STATS


def _reset_after_fork() -> None:
    # Spark's daemon forks its Python workers: each child counts (and writes) its own work.
    global _STATS, _STATS_LOCK
    _STATS = OffloadStats()
    _STATS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _flush_stats() -> None:
    directory = os.environ.get(STATS_ENV)
    if directory:
        try:
            _STATS.write(directory)
        except OSError as exc:  # statistics must never fail the user's inference
            log.warning("jacquard: cannot write offload stats to %s: %s", directory, exc)


def aggregate_stats(directory: str | os.PathLike) -> dict:
    """Sum the per-process stats files in ``directory``.

    Returns
    -------
    dict
        The :class:`OffloadStats` fields summed (sets united), plus ``processes`` (files read) and
        ``processes_on_device`` (processes that ran at least one inference on a device).
    """
    total = OffloadStats()
    processes = on_device = 0
    for path in sorted(Path(directory).glob("*.json")):
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # a process died while writing: its .tmp is skipped
            continue
        processes += 1
        on_device += d.get("device_inferences", 0) > 0
        for k in ("inferences", "rows", "device_inferences", "macs_device", "macs_total", "fallbacks"):
            setattr(total, k, getattr(total, k) + int(d.get(k, 0)))
        total.device_seconds += float(d.get("device_seconds", 0.0))
        total.estimated_fpga_seconds += float(d.get("estimated_fpga_seconds", 0.0))
        for k in ("devices", "cpu_ops", "models"):
            getattr(total, k).update(d.get(k, []))
    return {**total.as_dict(), "processes": processes, "processes_on_device": on_device}


# -- the model --------------------------------------------------------------------------------------

@dataclass
class _Compiled:
    exe: object
    device: object
    macs_device: int
    macs_total: int
    estimated_seconds: float


_FALLBACK_LOGGED: set[str] = set()


class AcceleratedModel:
    """An ONNX model run on a Jacquard device, compiled per input shape; see the module docstring.

    Parameters
    ----------
    model : bytes, str, os.PathLike or onnx.ModelProto
    device : str
        Device URI (``emu``, ``emu:N``, ``uart:PORT``, ...).
    config : str, optional
        Hardware config for ``emu`` devices (default ``ulx3s-85f``).
    calibration_rows : int
        For a float model: rows collected from the first runs to calibrate its quantization.
    max_shapes : int
        Compiled shapes kept per model (least recently used ones are dropped).

    Members
    -------
    digest : str
        SHA-256 of the model bytes.
    inputs, outputs : list of str
        The model's input and output names, in order.
    kind : str
        ``"int8"`` or ``"float"``.
    on_device : bool
        False once the device failed to open (the model then runs on onnxruntime).

    Raises
    ------
    ValueError
        If ``device`` is empty or ``calibration_rows`` / ``max_shapes`` is not positive.
    jacquard.host.errors.ModelError
        If the bytes are not an ONNX model.
    """

    def __init__(self, model, device: str, *, config: str = "ulx3s-85f", calibration_rows: int = 32,
                 max_shapes: int = 8) -> None:
        import onnx

        from jacquard.host.errors import ModelError

        if not isinstance(device, str) or not device:
            raise ValueError(f"device must be a device URI such as 'emu', not {device!r}")
        for name, value in (("calibration_rows", calibration_rows), ("max_shapes", max_shapes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.model = model_bytes(model)
        self.digest = hashlib.sha256(self.model).hexdigest()
        self.device_uri = device
        self.config = config
        self.calibration_rows = calibration_rows
        self.max_shapes = max_shapes
        try:
            proto = onnx.load_model_from_string(self.model)
        except Exception as exc:  # onnx raises DecodeError/RuntimeError variants for garbage bytes
            raise ModelError(f"the model is not an ONNX file ({exc}); export it again") from exc
        inits = {i.name for i in proto.graph.initializer}
        graph_inputs = [i for i in proto.graph.input if i.name not in inits]
        self.inputs = [i.name for i in graph_inputs]
        self.outputs = [o.name for o in proto.graph.output]
        self._batch_dims = {i.name: self._batch_dim(i) for i in graph_inputs}
        ops = {n.op_type for n in proto.graph.node}
        int8 = ops & {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QuantizeLinear"}
        self.kind = "int8" if int8 else "float"
        self.on_device = True
        self._compiled: OrderedDict[tuple, _Compiled] = OrderedDict()
        self._calibration: list[np.ndarray] = []
        self._calibrated: np.ndarray | None = None
        self._cpu = None
        self._lock = threading.Lock()

    @staticmethod
    def _batch_dim(value_info) -> int | None:
        dims = value_info.type.tensor_type.shape.dim
        if not dims:
            return None
        return dims[0].dim_value if dims[0].HasField("dim_value") else None

    # -- running ------------------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference (or one batch) as onnxruntime would: feeds by input name.

        Returns
        -------
        dict of str to ndarray
            Outputs by name, in the model's output order.

        Raises
        ------
        jacquard.host.errors.ShapeError
            On a missing input or one of the wrong dtype.
        """
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        rows = int(next(iter(feeds.values())).shape[0]) if feeds and next(iter(feeds.values())).ndim else 1
        with self._lock:
            compiled = self._target(feeds)
            if compiled is None:
                out = self._run_cpu(feeds)
                on_device = False
            else:
                out, seconds = self._run_device(compiled, feeds)
                on_device = True
        with _STATS_LOCK:
            s = _STATS
            s.inferences += 1
            s.rows += rows
            s.models.add(self.digest[:12])
            if on_device:
                s.device_inferences += 1
                s.devices.add(self.device_uri)
                s.device_seconds += seconds
                repeats = self._repeats(compiled, feeds)
                s.macs_device += compiled.macs_device * repeats
                s.macs_total += compiled.macs_total * repeats
                s.estimated_fpga_seconds += compiled.estimated_seconds * repeats
                s.cpu_ops.update(r["op"] for r in compiled.exe.report if r["where"] != "accelerator")
            elif not self.on_device:
                s.fallbacks += 1
        _flush_stats()
        return out

    def _repeats(self, compiled: _Compiled, feeds) -> int:
        name = self.inputs[0]
        have, compiled_rows = feeds[name].shape[0], compiled.exe.input_shapes[name][0]
        return max(1, have // max(1, compiled_rows))

    def _split_rows(self, feeds) -> bool:
        """True when the model's batch is fixed at 1 and the feeds carry several rows."""
        return all(self._batch_dims.get(n) == 1 for n in self.inputs) and \
            all(v.ndim and v.shape[0] > 1 for v in feeds.values())

    def _target(self, feeds) -> _Compiled | None:
        """The compiled executable for these feeds' shapes, or None to run them on the CPU."""
        from jacquard.host.errors import DeviceError

        if not self.on_device:
            return None
        if self.kind == "float" and self._calibrated is None:
            if len(self.inputs) != 1:
                self._fall_back("a float model with several inputs cannot be calibrated automatically; "
                                "quantize it to int8 first")
                return None
            self._calibration.append(np.asarray(feeds[self.inputs[0]]))
            if sum(len(c) for c in self._calibration) < self.calibration_rows:
                return None
            self._calibrated = np.concatenate(self._calibration).astype(np.float32)
            self._calibration = []
        shapes = {n: tuple(v.shape) for n, v in feeds.items()}
        if self._split_rows(feeds):
            shapes = {n: (1, *s[1:]) for n, s in shapes.items()}
        key = tuple(sorted(shapes.items()))
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        try:
            compiled = self._compile(shapes)
        except DeviceError as exc:
            self._fall_back(str(exc))
            return None
        self._compiled[key] = compiled
        while len(self._compiled) > self.max_shapes:
            _, old = self._compiled.popitem(last=False)
            old.device.close()
        return compiled

    def _compile(self, shapes) -> _Compiled:
        from jacquard.host.compiler import compile_plan, get_config
        from jacquard.host.device import Device, estimate
        from jacquard.host.importer import load_model
        from jacquard.host.partition import Limits, partition

        cfg = get_config(self.config)
        calib = None
        if self._calibrated is not None:
            batch = shapes[self.inputs[0]][0]
            calib = self._calibrated[: max(batch, len(self._calibrated) // batch * batch)]
        key = _program_key(self.digest, shapes, cfg, calib)
        exe = _load_program(key)
        if exe is None:
            with _Internal():
                imported = load_model(self.model, shapes, calibrate=calib)
                exe = compile_plan(partition(imported, Limits(max_kernel=min(7, cfg.max_kernel_h))), cfg)
            _store_program(key, exe)
        # Each executable gets its own device handle: an emu core is just its memory, so this keeps
        # every program (and its CPU segments' onnxruntime sessions) loaded instead of reloading on
        # every switch between shapes or models.
        options = {"config": cfg, "memory_bytes": max(1 << 20, exe.memory_size)} \
            if self.device_uri.partition(":")[0] == "emu" else {}
        device = Device(self.device_uri, timeout=60.0, **options)
        with _Internal():
            device.load(exe)
        macs_total = sum(r["macs"] for r in exe.report)
        macs_device = sum(r["macs"] for r in exe.report if r["where"] == "accelerator")
        log.info("jacquard: compiled model %s for %s on %s", self.digest[:12], shapes, self.device_uri)
        return _Compiled(exe, device, macs_device, macs_total, estimate(exe).latency_s)

    def _run_device(self, compiled: _Compiled, feeds) -> tuple[dict[str, np.ndarray], float]:
        dev = compiled.device
        t0 = time.perf_counter()
        with _Internal():
            if dev.exe is not compiled.exe:  # a shared board: load this program again
                dev.load(compiled.exe)
            if self._split_rows(feeds):
                n = next(iter(feeds.values())).shape[0]
                frames = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)]
                outs = dev.run_batch(frames)
                out = {k: np.concatenate([o[k] for o in outs]) for k in self.outputs}
            else:
                out = dev.run(feeds)
        seconds = time.perf_counter() - t0
        return {k: out[k] for k in self.outputs}, seconds

    def _fall_back(self, reason: str) -> None:
        self.on_device = False
        key = f"{self.device_uri}: {reason}"
        if key not in _FALLBACK_LOGGED:
            _FALLBACK_LOGGED.add(key)
            log.warning("jacquard: no device for model %s (%s); running it on onnxruntime on the CPU",
                        self.digest[:12], key)

    def _run_cpu(self, feeds) -> dict[str, np.ndarray]:
        if self._cpu is None:
            import onnxruntime as ort

            with _Internal():
                self._cpu = ort.InferenceSession(self.model, providers=["CPUExecutionProvider"])
        with _Internal():
            if self._split_rows(feeds):  # the model takes one row at a time, like the device path
                n = next(iter(feeds.values())).shape[0]
                rows = [self._cpu.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
                values = [np.concatenate(parts) for parts in zip(*rows, strict=True)]
            else:
                values = self._cpu.run(None, dict(feeds))
        return dict(zip(self.outputs, values, strict=True))

    def close(self) -> None:
        """Close the device handles."""
        for c in self._compiled.values():
            c.device.close()
        self._compiled.clear()


# -- compiled programs on disk ----------------------------------------------------------------------

_CODE_VERSION: str | None = None


def _code_version() -> str:
    """SHA-256 of the compiler's source (the ``jacquard.host`` and ``jacquard.sim`` packages), once."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        import jacquard.host
        import jacquard.sim

        h = hashlib.sha256()
        for pkg in (jacquard.host, jacquard.sim):
            root = Path(pkg.__file__).parent
            for path in sorted(root.rglob("*.py")):
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        _CODE_VERSION = h.hexdigest()
    return _CODE_VERSION


def _program_key(digest: str, shapes: Mapping[str, tuple], cfg, calib: np.ndarray | None) -> str | None:
    """The disk cache's key of one compile, or None when the disk cache is off."""
    if os.environ.get(COMPILE_CACHE_ENV, "1") == "0":
        return None
    h = hashlib.sha256()
    h.update(json.dumps([digest, sorted((k, list(v)) for k, v in shapes.items()), repr(cfg),
                         _code_version()]).encode())
    if calib is not None:
        h.update(np.ascontiguousarray(calib).tobytes())
    return h.hexdigest()


def _program_path(key: str) -> Path:
    from jacquard.host.cache import cache_dir

    return cache_dir("compiled") / f"{key}.pkl"


def _load_program(key: str | None):
    """The cached executable for ``key``, or None (no entry, cache off, or an unreadable entry)."""
    if key is None:
        return None
    path = _program_path(key)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a truncated or stale entry: compile again and overwrite it
        log.warning("jacquard: ignoring unreadable compiled program %s (%s)", path, exc)
        return None


def _store_program(key: str | None, exe) -> None:
    if key is None:
        return
    path = _program_path(key)
    # Written under a private name and renamed: workers compiling the same shape never see half a file.
    part = path.with_suffix(f".part{os.getpid()}-{threading.get_ident()}")
    try:
        part.write_bytes(pickle.dumps(exe, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(part, path)
    except OSError as exc:  # a full or read-only cache only costs the next process a compile
        log.warning("jacquard: cannot cache the compiled program in %s (%s)", path, exc)
        part.unlink(missing_ok=True)


_MODELS: dict[tuple[str, str, str], AcceleratedModel] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(model, device: str, *, config: str = "ulx3s-85f") -> AcceleratedModel:
    """This process's :class:`AcceleratedModel` for ``model`` on ``device``, created once.

    Keyed by the model's SHA-256, the device URI and the config: a Python worker compiles a model
    once however many UDFs, sessions or tasks use it.
    """
    data = model_bytes(model)
    key = (hashlib.sha256(data).hexdigest(), device, config)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = AcceleratedModel(data, device, config=config)
        return _MODELS[key]
