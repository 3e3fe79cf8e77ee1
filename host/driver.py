"""The driver: loads and runs an :class:`~jacquard.host.jqp.Executable` purely through a Transport.

The same code drives every backend (``emu``, ``sim``, a board): it identifies the core from its ID,
VERSION and CONFIG_HASH registers, writes the image into device memory, sets the DMA window, and for
each device step writes the input tensors, starts the program, polls STATUS until done, an error or
the timeout, and reads the outputs. An input the program reads folded (:mod:`jacquard.host.fold`) is
im2col'd here from the tensor it is made of, the same way for every backend (:func:`input_bytes`).
Errors come from the status registers (:func:`jacquard.sim.isa_regs.status_error`); a timeout aborts
the program so the device stays usable. Host steps run the golden ops, CPU steps onnxruntime.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from jacquard.sim.isa import CONFIGS, ISA_VERSION, ErrorCode
from jacquard.sim.isa_regs import CORE_ID, PERF_COUNTERS, register, status_error

from . import ir
from .compiler import pack_rows, unpack_rows
from .errors import DeviceError, DeviceTimeout, ProgramError, ShapeError
from .jqp import CpuStep, DeviceStep, Executable, HostStep
from .transport import Transport

__all__ = ["Driver", "check_inputs", "input_bytes"]

_STATUS = register("STATUS")
_CTRL = register("CTRL")


def check_inputs(exe: Executable, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``inputs`` as arrays, if each model input is there with its ONNX shape and dtype.

    Raises
    ------
    ShapeError
        Naming the input, what it must be and how to fix it.
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict of input name to array, not {type(inputs).__name__}")
    out = {}
    for name in exe.inputs:
        if name not in inputs:
            raise ShapeError(f"input {name!r} is missing; the model's inputs are {exe.inputs} "
                             "(pass a dict keyed by those names)")
        value = np.asarray(inputs[name])
        want, shape = np.dtype(exe.input_dtypes[name]), exe.input_shapes[name]
        if value.dtype != want:
            raise ShapeError(f"input {name!r} must have dtype {want}, not {value.dtype}; convert it "
                             f"with .astype(np.{want.name})")
        if value.shape != tuple(shape):
            raise ShapeError(f"input {name!r} must have shape {tuple(shape)}, not {value.shape}; resize "
                             f"the input, or compile the model again for this shape "
                             f"(input_shapes={{{name!r}: {value.shape}}})")
        out[name] = value
    extra = set(inputs) - set(exe.inputs)
    if extra:
        raise ShapeError(f"inputs {sorted(extra)} are not inputs of the model; its inputs are {exe.inputs}")
    return out


class Driver:
    """Runs executables on one core through ``transport``.

    Parameters
    ----------
    transport : Transport
    timeout : float
        Seconds a program may run before it is aborted and :class:`DeviceTimeout` raised.

    Raises
    ------
    DeviceError
        If the transport does not reach a Jacquard core of this ISA version.
    """

    def __init__(self, transport: Transport, timeout: float = 10.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self.transport = transport
        self.timeout = timeout
        self.exe: Executable | None = None
        self._sessions: dict[int, object] = {}
        ident = transport.read_reg("ID")
        if ident != CORE_ID:
            raise DeviceError(f"no Jacquard core answers (ID register reads {ident:#010x}, expected "
                              f"{CORE_ID:#010x}); check the device URI and that the bitstream is loaded")
        version = register("VERSION").unpack(transport.read_reg("VERSION"))["isa"]
        if version != ISA_VERSION:
            raise DeviceError(f"the core runs ISA version {version}, this host speaks version {ISA_VERSION}; "
                              "update the bitstream or the host")
        self.config_hash = transport.read_reg("CONFIG_HASH")
        self.clock_mhz = transport.read_reg("CLOCK_KHZ") / 1000

    @property
    def config_name(self) -> str:
        """The preset name of the core's config, or its hash if it is no preset."""
        for name, cfg in CONFIGS.items():
            if cfg.config_hash() == self.config_hash:
                return name
        return f"{self.config_hash:#010x}"

    def load(self, exe: Executable) -> None:
        """Write ``exe``'s image into device memory and set the DMA window.

        Raises
        ------
        ProgramError
            If ``exe`` was compiled for another config than the core's, or a folded input disagrees
            with its source.
        DeviceError
            If the device memory is too small.
        """
        if exe.config_hash != self.config_hash:
            raise ProgramError(f"the program was compiled for config {exe.config.name} (hash "
                               f"{exe.config_hash:#010x}) but the device is {self.config_name}; compile "
                               f"it again with `jacquard compile MODEL.onnx --config {self.config_name}`")
        exe.check_folds()
        if exe.memory_size > self.transport.memory_size:
            raise DeviceError(f"the program needs {exe.memory_size} bytes of device memory, the device has "
                              f"{self.transport.memory_size}; use a board or emu with more memory")
        self.exe = None
        self.transport.write_mem(0, exe.image)
        self.transport.write_reg("WINDOW_BASE", 0)
        self.transport.write_reg("WINDOW_LIMIT", exe.memory_size)
        self._sessions = {}
        self.exe = exe

    def counters(self) -> dict[str, int]:
        """The performance counters (read ``_LO`` first: it latches ``_HI``)."""
        out = {}
        for name, _ in PERF_COUNTERS:
            lo = self.transport.read_reg(f"{name}_LO")
            out[name] = self.transport.read_reg(f"{name}_HI") << 32 | lo
        return out

    def _session(self, i: int, step: CpuStep):
        if i not in self._sessions:
            import onnxruntime as ort

            self._sessions[i] = ort.InferenceSession(step.model, providers=["CPUExecutionProvider"])
        return self._sessions[i]

    def run_program(self, step: DeviceStep) -> None:
        """Start one device step's program and wait for it.

        Raises
        ------
        DeviceTimeout
            If it runs longer than the timeout (it is aborted first, so the device stays usable).
        DeviceError
            If the core stops with an error; the message holds the status registers' decoding.
        """
        t = self.transport
        t.write_reg("IRQ_STATUS", 0x3)
        t.write_reg("PROG_BASE", step.prog_addr)
        t.write_reg("PROG_LEN", step.prog_len)
        t.write_reg("CTRL", _CTRL.pack(start=1))
        deadline = time.monotonic() + self.timeout
        while True:
            status = _STATUS.unpack(t.read_reg("STATUS"))
            if not status["busy"]:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                t.write_reg("CTRL", _CTRL.pack(abort=1))
                if _STATUS.unpack(t.read_reg("STATUS"))["busy"]:
                    t.write_reg("CTRL", _CTRL.pack(soft_reset=1))
                raise DeviceTimeout(f"the device did not finish within {self.timeout:g} s (descriptor "
                                    f"{t.read_reg('CURRENT_DESC')} of {len(step.layers)}); it was aborted "
                                    "and can run again; raise the timeout for large models or check the "
                                    "device")
            t.wait(min(left, 0.05))
        if status["error"]:
            err = status_error(t.read_reg("STATUS"), t.read_reg("ERROR_FIELD"), t.read_reg("ERROR_ADDR"))
            layer = ""
            if err is not None and getattr(err, "index", None) is not None and err.index < len(step.layers):
                layer = f" in layer {step.layers[err.index]!r}"
            code = ErrorCode(status["error_code"]) if status["error_code"] in ErrorCode._value2member_map_ \
                else status["error_code"]
            raise DeviceError(f"the device stopped with {getattr(code, 'name', code)}{layer}: {err}; "
                              "the program does not fit this device: recompile it for the device's config")

    def run(self, inputs: Mapping[str, np.ndarray], *, checked: bool = False) -> dict[str, np.ndarray]:
        """Run the loaded executable on ONNX-layout inputs; outputs as onnxruntime returns them.

        Raises
        ------
        DeviceError
            If nothing is loaded, or the device fails.
        ShapeError
            On a missing input or one of the wrong shape or dtype.
        """
        exe = self.exe
        if exe is None:
            raise DeviceError("no program is loaded; call load() first")
        feeds = dict(inputs) if checked else check_inputs(exe, inputs)
        return self.run_steps(exe.steps, ir.TensorEnv(exe.tensors, feeds), final=True)

    def run_steps(self, steps, env: ir.TensorEnv, *, final: bool = False, start: int = 0):
        """Run ``steps`` (a slice of the executable's, starting at index ``start``) on ``env``."""
        exe = self.exe
        tensors, cfg, t = exe.tensors, exe.config, self.transport
        for i, step in enumerate(steps, start):
            if isinstance(step, CpuStep):
                values = self._session(i, step).run(step.outputs, {n: env.onnx(n) for n in step.inputs})
                for name, value in zip(step.outputs, values, strict=True):
                    env.set_onnx(name, value)
            elif isinstance(step, HostStep):
                layer = step.layer
                names = [*layer.inputs, *layer.outputs]
                graph = ir.Graph({n: tensors[n] for n in names}, [layer], list(layer.inputs),
                                 list(layer.outputs))
                for name, value in ir.evaluate(graph, {n: env.device(n) for n in layer.inputs}).items():
                    env.set_device(name, value)
            else:
                for name, addr in step.inputs:
                    t.write_mem(addr, input_bytes(step, name, env, tensors, cfg))
                self.run_program(step)
                for name, addr in step.outputs:
                    raw = t.read_mem(addr, _bytes(tensors[name], cfg))
                    env.set_device(name, unpack_rows(raw, tensors[name], cfg))
        if final:
            return {name: env.onnx(name) for name in exe.outputs}
        return env


def input_bytes(step: DeviceStep, name: str, env: ir.TensorEnv, tensors: dict[str, ir.Tensor],
                cfg) -> bytes:
    """The device-memory bytes of input ``name`` of ``step``: folded from its source if the step says so."""
    fold = step.folds.get(name)
    if fold is None:
        return pack_rows(env.device(name), tensors[name], cfg)
    src = tensors[fold.source]
    return pack_rows(fold.apply(env.device(fold.source), int(src.zero_point)), tensors[name], cfg)


def _bytes(t: ir.Tensor, cfg) -> int:
    from .compiler import tensor_bytes

    return tensor_bytes(t, cfg)
