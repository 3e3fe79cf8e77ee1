"""``Device``: open a backend by URI, load a model, run it.

>>> with Device("emu") as dev:                       # doctest: +SKIP
...     dev.load("pnet.jqp")                         # or an ONNX file, compiled for the device
...     out = dev.run({"input_1": frame})            # ONNX-layout float inputs -> outputs

URIs: ``emu`` (the reference executor, the default), ``emu:N`` (emulated core number N: each one is
a separate core with its own memory, the way a host with N boards has N devices), ``sim`` (the RTL
core in Verilator through cocotb, issue 5) and ``uart:PORT`` (a board through its UART bridge, issue
8). Every backend is a :class:`~jacquard.host.transport.Transport` behind the same
:class:`~jacquard.host.driver.Driver`; :func:`register_backend` adds one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from jacquard.sim.isa import HardwareConfig, Op

from .compiler import compile_model, get_config
from .driver import Driver, check_inputs
from .errors import DeviceError, JacquardError, ProgramError, ShapeError
from .ir import TensorEnv
from .jqp import DeviceStep, Executable
from .jqp import load as load_jqp
from .perf import ProgramEstimate, estimate_program
from .transport import EmuTransport, Transport

__all__ = ["BACKENDS", "Device", "estimate", "register_backend"]

#: Backend factories by URI scheme: ``factory(arg, **options) -> Transport``; ``arg`` is what follows
#: the colon (``""`` if none).
BACKENDS: dict[str, Callable[..., Transport]] = {}

def register_backend(scheme: str, factory: Callable[..., Transport]) -> None:
    """Make ``Device("<scheme>:...")`` open a transport with ``factory``."""
    if not scheme.isidentifier():
        raise ValueError(f"scheme must be an identifier, not {scheme!r}")
    BACKENDS[scheme] = factory


def _emu(arg: str, *, config: str | HardwareConfig = "ulx3s-85f", memory_bytes: int = 64 << 20,
         hang: bool = False) -> Transport:
    if arg and not arg.isdigit():
        raise DeviceError(f"emu device number must be a non-negative integer, as in 'emu:0', not {arg!r}")
    return EmuTransport(get_config(config), memory_bytes, hang=hang)


def _sim(arg: str, *, config: str | HardwareConfig = "sim-small", memory_bytes: int = 1 << 20,
         simulator: str = "verilator", wait_cycles: int = 2000) -> Transport:
    # The RTL core in a simulator (jacquard.host.sim_transport); small configs keep it quick.
    from .sim_transport import SimTransport

    if arg:
        raise DeviceError(f"the sim device takes no argument ('sim', not {'sim:' + arg!r}); choose the "
                          "simulator with Device('sim', simulator='icarus')")
    return SimTransport(get_config(config), memory_bytes, simulator=simulator, wait_cycles=wait_cycles)


def _uart(arg: str, *, config: str | HardwareConfig | None = None, baud: int = 115200, port=None,
          link_timeout: float = 0.5, retries: int = 5, memory_bytes: int | None = None) -> Transport:
    # A board through its UART bridge (jacquard.host.uart_link). `port` replaces the serial port with
    # any pyserial-shaped byte stream (a simulated line in tests); everything else is the same.
    from .uart_link import UartLink, UartTransport

    if not arg:
        raise DeviceError("a board URI names its serial port, as in 'uart:/dev/ttyUSB0'")
    if port is None:
        link = UartLink.open(arg, baud, timeout=link_timeout, retries=retries)
    else:
        link = UartLink(port, timeout=link_timeout, retries=retries, name=f"uart:{arg}")
    try:
        return UartTransport(link, config=None if config is None else get_config(config),
                             memory_size=memory_bytes)
    except JacquardError:
        link.close()
        raise


register_backend("emu", _emu)
register_backend("sim", _sim)
register_backend("uart", _uart)


def estimate(exe: Executable) -> ProgramEstimate:
    """The performance model's estimate of one inference of ``exe`` on its config (all device steps)."""
    descs = [d for s in exe.device_steps() for d in exe.program(s).descriptors]
    return estimate_program(descs, exe.config)


class Device:
    """A Jacquard device opened from a URI; a context manager.

    Parameters
    ----------
    uri : str
        ``emu``, ``emu:N``, ``sim`` or ``uart:PORT``.
    timeout : float
        Seconds one program may run before it is aborted (:class:`DeviceTimeout`).
    **options
        Backend options: for ``emu``, ``config`` (preset name, default ``ulx3s-85f``),
        ``memory_bytes`` and ``hang`` (fault injection); for ``sim``, ``config`` (default
        ``sim-small``), ``memory_bytes``, ``simulator`` and ``wait_cycles``; for ``uart:PORT``,
        ``config`` (the device must be built for it), ``baud``, ``link_timeout``, ``retries``,
        ``memory_bytes`` (probed when not given) and ``port`` (an open pyserial-like stream).

    Raises
    ------
    DeviceError
        If the URI names no backend or the backend cannot be opened.

    Members
    -------
    timings : list of float
        Wall-clock seconds of each :meth:`run` (measured on the host).
    """

    def __init__(self, uri: str = "emu", *, timeout: float = 10.0, **options) -> None:
        if not isinstance(uri, str):
            raise TypeError(f"uri must be a string such as 'emu' or 'uart:/dev/ttyUSB0', not {uri!r}")
        scheme, _, arg = uri.partition(":")
        if scheme not in BACKENDS:
            raise DeviceError(f"unknown device URI {uri!r}; use one of {', '.join(f'{s}' for s in BACKENDS)} "
                              "(e.g. 'emu', 'emu:1', 'sim', 'uart:/dev/ttyUSB0')")
        self.uri = uri
        self.transport = BACKENDS[scheme](arg, **options)
        self.driver = Driver(self.transport, timeout)
        self.exe: Executable | None = None
        self.timings: list[float] = []

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    @property
    def config_name(self) -> str:
        return self.driver.config_name

    def load(self, program, *, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
             calibrate: np.ndarray | None = None) -> Executable:
        """Load an :class:`Executable`, a ``.jqp`` file, or an ONNX model (compiled for this device).

        Raises
        ------
        ProgramError
            If the program is for another config or version.
        ModelError, ShapeError
            If an ONNX model cannot be imported.
        """
        if isinstance(program, (str, Path)) and Path(program).suffix == ".jqp":
            program = load_jqp(program)
        if not isinstance(program, Executable):
            cfg = getattr(self.transport, "config", None) or get_config(self.config_name)
            # The device's own memory bounds the compiler's tap folding (a fold that would not fit
            # is left out).
            program = compile_model(program, cfg, input_shapes=input_shapes, calibrate=calibrate,
                                    memory_bytes=self.transport.memory_size or None)
        self._check_ops(program)
        self.driver.load(program)
        self.exe = program
        return program

    def _check_ops(self, exe: Executable) -> None:
        # The op set is in the config hash too; this names the ops, which a hash mismatch cannot.
        ops = self.transport.read_reg("CONFIG_OPS")
        if ops != exe.config.ops_mask:
            found = "+".join(op.name for op in Op if ops >> op & 1) or "none"
            raise ProgramError(f"the program was compiled for config {exe.config.name} with the ops "
                               f"{exe.config.ops_names()}, but the device ({self.config_name}) runs the ops "
                               f"{found}; compile it again with `jacquard compile MODEL.onnx --config "
                               f"{self.config_name}`")

    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Run one inference: ONNX-layout inputs (as onnxruntime takes them) to outputs by name.

        A single array is taken as the value of a model's only input. A failed run leaves the device
        usable.

        Raises
        ------
        ShapeError
            On a missing input or one of the wrong shape or dtype.
        DeviceError, DeviceTimeout
            If the device fails or does not finish in time.
        """
        feeds = self._feeds(inputs)
        t0 = time.perf_counter()
        out = self.driver.run(feeds)
        self.timings.append(time.perf_counter() - t0)
        return out

    def _feeds(self, inputs) -> dict[str, np.ndarray]:
        if self.exe is None:
            raise DeviceError("no program is loaded; call load() first")
        if isinstance(inputs, np.ndarray):
            if len(self.exe.inputs) != 1:
                raise ShapeError(f"the model has inputs {self.exe.inputs}; pass a dict (an .npz) "
                                 "keyed by them")
            inputs = {self.exe.inputs[0]: inputs}
        return check_inputs(self.exe, inputs)

    def run_batch(self, frames: Iterable, *, pipeline: bool = True,
                  depth: int = 2) -> list[dict[str, np.ndarray]]:
        """Run many inferences in order; with ``pipeline`` the host work of frame n+1 overlaps frame n.

        The host work before the first device step (input checks, layout, quantization, leading CPU
        segments) runs on a feeder thread, at most ``depth`` frames ahead, while the calling thread
        drives the device and the rest of the steps.

        Parameters
        ----------
        frames : iterable of dict or ndarray
            The inputs of each inference, as :meth:`run` takes them.

        Returns
        -------
        list of dict
            Each frame's outputs.
        """
        if self.exe is None:
            raise DeviceError("no program is loaded; call load() first")
        if not pipeline:
            return [self.run(f) for f in frames]
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive integer, not {depth!r}")
        steps = self.exe.steps
        first = next((i for i, s in enumerate(steps) if isinstance(s, DeviceStep)), len(steps))
        q: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def feed():
            try:
                for f in frames:
                    env = TensorEnv(self.exe.tensors, self._feeds(f))
                    env = self.driver.run_steps(steps[:first], env)
                    while not stop.is_set():
                        try:
                            q.put(("ok", env), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except (JacquardError, ValueError, TypeError) as e:  # hand the failure to the caller
                q.put(("error", e))
                return
            q.put(("end", None))

        worker = threading.Thread(target=feed, name="jacquard-feed", daemon=True)
        worker.start()
        results = []
        try:
            while True:
                kind, item = q.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise item
                t0 = time.perf_counter()
                env = self.driver.run_steps(steps[first:], item, final=True, start=first)
                self.timings.append(time.perf_counter() - t0)
                results.append(env)
        finally:
            stop.set()
            worker.join(timeout=5)
        return results

    def estimate(self) -> ProgramEstimate:
        """The performance model's latency/fps estimate of the loaded program at the config's clock."""
        if self.exe is None:
            raise DeviceError("no program is loaded; call load() first")
        return estimate(self.exe)

    def counters(self) -> dict[str, int]:
        """The device's performance counters."""
        return self.driver.counters()
