"""The ``.jqp`` artifact: a compiled model that runs on its own (``jacquard run MODEL.jqp``).

A ``.jqp`` file is a zip archive:

* ``manifest.json``: format name and version, ISA version, the hardware config (name, fields and
  hash) it was compiled for, the model's input and output bindings (name, ONNX shape, dtype), every
  tensor the steps exchange (shape, device permutation, quantization), the steps in execution order,
  the compile report and the memory plan.
* ``image.bin``: the constant part of device memory from address 0: packed weights, channel
  parameters, lookup tables, constant tensors and the programs (one per device step).
* ``cpu/<k>.onnx``: the CPU segments, run by onnxruntime.
* ``arrays.npz``: the arrays of the host steps' layers (e.g. the weights of a layer too large for the
  on-chip buffers, evaluated on the host with the golden ops).

Steps are :class:`DeviceStep` (a program plus the addresses of the tensors the host writes before it
starts and reads after it ends), :class:`HostStep` (one IR layer evaluated with the golden ops:
quantize/dequantize at the accelerator's edges, layout changes that move bytes) and :class:`CpuStep`
(an onnxruntime sub-model).

Folded inputs (format version 2): a device step's ``folded_inputs`` maps some of its input tensors to
the :class:`~jacquard.host.fold.TapFold` they are made from, ``{"source": NAME, "kernel": [KH, KW],
"stride": [SH, SW], "pads": [T, L, B, R]}``. The host does not write such an input from a value it
holds: it im2col's the source tensor (:func:`jacquard.host.fold.fold_taps`, zero-point padding) into
the folded tensor's ``(N, Ho, Wo, KH*KW*C)`` shape and writes that, because the program reads it with a
1x1 CONV (the compiler's ``fold_taps`` option). Reading a program checks every record against the
tensors' shapes, dtypes and zero points and refuses a mismatch. Version 1 files (no folded inputs)
are still read.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jacquard.sim.isa import CONFIGS, ISA_VERSION, HardwareConfig, Program

from . import ir
from .errors import ProgramError
from .fold import TapFold

__all__ = ["FORMAT", "FORMAT_VERSION", "CpuStep", "DeviceStep", "Executable", "HostStep", "load", "save"]

FORMAT = "jacquard-jqp"
#: Bumped on any change to the archive's layout or the manifest's meaning (2: folded inputs).
FORMAT_VERSION = 2
#: Versions this host reads (a version 1 file is a version 2 file without folded inputs).
READ_VERSIONS = (1, 2)


@dataclass
class DeviceStep:
    """One program run on the device.

    Members
    -------
    prog_addr, prog_len : int
        Where the program sits in the image, and its size in bytes.
    inputs, outputs : list of (str, int)
        Tensor name and address: the host writes ``inputs`` before the start and reads ``outputs``
        after the end.
    layers : list of str
        For each descriptor, the IR layer it computes (several descriptors may share a layer).
    folds : dict of str to TapFold
        Inputs the host writes folded (im2col'd from another tensor it holds; see
        :mod:`jacquard.host.fold`), by input name.
    """

    prog_addr: int
    prog_len: int
    inputs: list[tuple[str, int]]
    outputs: list[tuple[str, int]]
    layers: list[str]
    kind: str = "device"
    folds: dict[str, TapFold] = field(default_factory=dict)


@dataclass
class HostStep:
    """One IR layer evaluated on the host with the golden ops; ``reason`` says why not on the device."""

    layer: ir.Layer
    reason: str
    kind: str = "host"

    @property
    def inputs(self) -> list[str]:
        return list(self.layer.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self.layer.outputs)


@dataclass
class CpuStep:
    """An onnxruntime sub-model over ONNX-layout tensors."""

    model: bytes
    inputs: list[str]
    outputs: list[str]
    layers: list[str] = field(default_factory=list)
    kind: str = "cpu"


@dataclass
class Executable:
    """A compiled model: everything a device needs to run it.

    Members
    -------
    config : HardwareConfig
        The config it was compiled for; a device of another config refuses it.
    steps : list of DeviceStep, HostStep or CpuStep
        In execution order.
    image : bytes
        Device memory from address 0 up to the activation arena: weights, parameters, tables,
        constant tensors and programs.
    memory_size : int
        Bytes of device memory needed: the image plus the activation arena.
    tensors : dict of str to ir.Tensor
        Every tensor the steps read or write.
    inputs, outputs : list of str
        The model's inputs and outputs, in order.
    input_shapes, output_shapes : dict of str to tuple of int
    input_dtypes, output_dtypes : dict of str to str
    report : list of dict
        One row per layer: ``layer``, ``op``, ``where`` (accelerator, host or cpu), ``macs``,
        ``reason``, ``descriptors``.
    memory : dict
        The memory plan: ``image_bytes``, ``arena_bytes``, ``arena_naive_bytes``, ``buffers``.
    """

    config: HardwareConfig
    steps: list
    image: bytes
    memory_size: int
    tensors: dict[str, ir.Tensor]
    inputs: list[str]
    outputs: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    output_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, str]
    output_dtypes: dict[str, str]
    report: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    _programs: dict[int, Program] = field(default_factory=dict, repr=False)

    @property
    def config_hash(self) -> int:
        return self.config.config_hash()

    def program(self, step: DeviceStep) -> Program:
        """The decoded program of a device step."""
        if step.prog_addr not in self._programs:
            raw = self.image[step.prog_addr:step.prog_addr + step.prog_len]
            self._programs[step.prog_addr] = Program.from_bytes(raw, self.config)
        return self._programs[step.prog_addr]

    def device_steps(self) -> list[DeviceStep]:
        return [s for s in self.steps if isinstance(s, DeviceStep)]

    def check_folds(self) -> None:
        """Check every folded input against the tensors it is made from (see :class:`TapFold`).

        Raises
        ------
        ProgramError
            If a folded input is not an input of its step, or its shape, dtype or zero point is
            not what folding its source gives.
        """
        for step in self.device_steps():
            names = {n for n, _ in step.inputs}
            for name, fold in step.folds.items():
                if name not in names:
                    raise ProgramError(f"folded input {name!r} is not an input of its device step "
                                       f"({sorted(names)}); recompile the model with `jacquard compile`")
                fold.check(name, self.tensors)

    def save(self, path) -> None:
        """Write this executable as a ``.jqp`` file (see the module docstring)."""
        save(self, path)


# -- layer serialization (dataclass fields; arrays go to arrays.npz) --------------------------------

_LAYER_TYPES = {cls.__name__: cls for cls in (
    ir.QConv, ir.QFullyConnected, ir.QMaxPool, ir.QAvgPool, ir.QGlobalAvgPool, ir.QAdd, ir.QLut,
    ir.Layout, ir.Quantize, ir.Dequantize)}


def _encode(value, arrays: dict[str, np.ndarray], key: str):
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, ir.MaxPoolParams):
        return {"__pool__": _encode(dataclasses.asdict(value), arrays, key)}
    if isinstance(value, dict):
        return {k: _encode(v, arrays, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _decode(value, arrays):
    if isinstance(value, dict):
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__pool__" in value:
            p = _decode(value["__pool__"], arrays)
            return ir.MaxPoolParams(tuple(p["kernel"]), tuple(p["stride"]), tuple(p["pads"]), p["ceil_mode"])
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(v, arrays) for v in value)
    return value


def _layer_to_json(layer: ir.Layer, arrays: dict, key: str) -> dict:
    fields = {f.name: _encode(getattr(layer, f.name), arrays, f"{key}.{f.name}")
              for f in dataclasses.fields(layer)}
    return {"type": type(layer).__name__, "fields": fields}


def _layer_from_json(obj: dict, arrays) -> ir.Layer:
    cls = _LAYER_TYPES[obj["type"]]
    return cls(**{k: _decode(v, arrays) for k, v in obj["fields"].items()})


def _tensor_to_json(t: ir.Tensor) -> dict:
    return {"onnx_shape": list(t.onnx_shape), "dtype": t.dtype, "scale": t.scale,
            "zero_point": t.zero_point, "perm": list(t.perm)}


def save(exe: Executable, path) -> None:
    """Write ``exe`` to ``path`` as a ``.jqp`` archive."""
    arrays: dict[str, np.ndarray] = {}
    steps, cpu_models = [], []
    for i, s in enumerate(exe.steps):
        if isinstance(s, DeviceStep):
            steps.append({"kind": "device", "prog_addr": s.prog_addr, "prog_len": s.prog_len,
                          "inputs": [list(p) for p in s.inputs], "outputs": [list(p) for p in s.outputs],
                          "layers": s.layers,
                          **({"folded_inputs": {n: f.to_json() for n, f in s.folds.items()}} if s.folds
                             else {})})
        elif isinstance(s, HostStep):
            steps.append({"kind": "host", "reason": s.reason,
                          "layer": _layer_to_json(s.layer, arrays, f"s{i}")})
        else:
            steps.append({"kind": "cpu", "model": f"cpu/{len(cpu_models)}.onnx", "inputs": s.inputs,
                          "outputs": s.outputs, "layers": s.layers})
            cpu_models.append(s.model)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "isa_version": ISA_VERSION,
        "config": {"name": exe.config.name, "hash": exe.config_hash, "clock_mhz": exe.config.clock_mhz,
                   "fields": exe.config.hash_fields()},
        "memory_size": exe.memory_size,
        "inputs": [{"name": n, "shape": list(exe.input_shapes[n]), "dtype": exe.input_dtypes[n]}
                   for n in exe.inputs],
        "outputs": [{"name": n, "shape": list(exe.output_shapes[n]), "dtype": exe.output_dtypes[n]}
                    for n in exe.outputs],
        "tensors": {n: _tensor_to_json(t) for n, t in exe.tensors.items()},
        "steps": steps,
        "report": exe.report,
        "memory": exe.memory,
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
        z.writestr("image.bin", exe.image)
        z.writestr("arrays.npz", buf.getvalue())
        for k, m in enumerate(cpu_models):
            z.writestr(f"cpu/{k}.onnx", m)


def _refuse(path, why: str) -> ProgramError:
    return ProgramError(f"{path} {why}; recompile the model with `jacquard compile MODEL.onnx -o {path}`")


def load(path) -> Executable:
    """Read a ``.jqp`` file.

    Raises
    ------
    ProgramError
        If the file is not a ``.jqp`` archive, was written for another format or ISA version, or
        has a folded input that disagrees with its source (the message says to recompile).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            manifest = json.loads(z.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise _refuse(path, "is not a Jacquard program (no jacquard-jqp manifest)")
            if manifest.get("format_version") not in READ_VERSIONS:
                raise _refuse(path, f"is .jqp format version {manifest.get('format_version')}, this "
                              f"host reads versions {', '.join(map(str, READ_VERSIONS))}")
            if manifest.get("isa_version") != ISA_VERSION:
                raise _refuse(path, f"was compiled for ISA version {manifest.get('isa_version')}, this "
                              f"host speaks version {ISA_VERSION}")
            image = z.read("image.bin")
            arrays = dict(np.load(io.BytesIO(z.read("arrays.npz"))))
            cpu = {n: z.read(n) for n in z.namelist() if n.startswith("cpu/")}
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise ProgramError(f"{path} does not exist; check the path or compile the model with "
                               "`jacquard compile`") from exc
        raise _refuse(path, f"is not a valid .jqp archive ({exc})") from exc
    c = manifest["config"]
    cfg = CONFIGS.get(c["name"])
    if cfg is None or cfg.config_hash() != c["hash"]:
        fields = dict(c["fields"])
        cfg = HardwareConfig(name=c["name"], clock_mhz=c["clock_mhz"], **fields)
        if cfg.config_hash() != c["hash"]:
            raise _refuse(path, f"names config hash {c['hash']:#010x}, which its own fields do not give")
    steps = []
    for s in manifest["steps"]:
        if s["kind"] == "device":
            try:
                folds = {n: TapFold.from_json(f, n) for n, f in s.get("folded_inputs", {}).items()}
            except ProgramError as e:
                raise ProgramError(f"{path}: {e}") from e
            steps.append(DeviceStep(s["prog_addr"], s["prog_len"], [tuple(p) for p in s["inputs"]],
                                    [tuple(p) for p in s["outputs"]], s["layers"], folds=folds))
        elif s["kind"] == "host":
            steps.append(HostStep(_layer_from_json(s["layer"], arrays), s["reason"]))
        else:
            steps.append(CpuStep(cpu[s["model"]], s["inputs"], s["outputs"], s.get("layers", [])))
    tensors = {n: ir.Tensor(n, tuple(t["onnx_shape"]), t["dtype"], t["scale"], t["zero_point"],
                            tuple(t["perm"])) for n, t in manifest["tensors"].items()}
    exe = Executable(
        config=cfg, steps=steps, image=image, memory_size=manifest["memory_size"], tensors=tensors,
        inputs=[i["name"] for i in manifest["inputs"]], outputs=[o["name"] for o in manifest["outputs"]],
        input_shapes={i["name"]: tuple(i["shape"]) for i in manifest["inputs"]},
        output_shapes={o["name"]: tuple(o["shape"]) for o in manifest["outputs"]},
        input_dtypes={i["name"]: i["dtype"] for i in manifest["inputs"]},
        output_dtypes={o["name"]: o["dtype"] for o in manifest["outputs"]},
        report=manifest["report"], memory=manifest["memory"])
    try:
        exe.check_folds()
    except ProgramError as e:
        raise ProgramError(f"{path}: {e}") from e
    return exe
