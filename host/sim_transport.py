"""The ``sim`` backend: the RTL ``JacquardCore`` in Verilator through cocotb, behind a Transport.

:class:`SimTransport` builds the core's Verilog (cached per design by
:func:`jacquard.sim.cocotb_run.run_cocotb`), starts the simulator on a background thread and talks
to the cocotb test it runs (:mod:`jacquard.host.sim_server`) over a local socket. Each register
access becomes an AXI4-Lite transaction of cocotbext-axi's ``AxiLiteMaster`` on the core's
``s_axil`` port; device memory is cocotbext-axi's ``AxiRam`` on the core's ``m_axi`` port, which the
host reads and writes directly (as a board's host would through its bridge, minus the UART).
Simulated time advances only while the host waits in an operation: :meth:`SimTransport.wait`
runs the clock for ``wait_cycles`` cycles, so the Driver's STATUS polling paces the simulation.

So the ``sim`` backend runs exactly the Driver code a board runs, through the same register and
memory operations.
"""

from __future__ import annotations

import secrets
import threading
from multiprocessing.connection import Listener

from jacquard.sim.isa import HardwareConfig

from .errors import DeviceError, DeviceTimeout
from .transport import Transport

__all__ = ["SimTransport"]


class SimTransport(Transport):
    """A Jacquard core simulated in Verilator (or Icarus) through cocotb.

    Parameters
    ----------
    config : HardwareConfig
        The core's build config.
    memory_size : int
        Bytes of simulated device memory (``AxiRam``).
    simulator : str
        ``"verilator"`` (default) or ``"icarus"``.
    wait_cycles : int
        Clock cycles one :meth:`wait` runs.
    start_timeout : float
        Seconds to wait for the simulator to start (the first Verilator build of a config takes
        minutes; later runs reuse it).

    Raises
    ------
    DeviceError
        If the simulator does not start or stops.
    """

    def __init__(self, config: HardwareConfig, memory_size: int = 1 << 20, *, simulator: str = "verilator",
                 wait_cycles: int = 2000, start_timeout: float = 900.0) -> None:
        if not isinstance(config, HardwareConfig):
            raise TypeError(f"config must be a HardwareConfig, not {type(config).__name__}")
        if not isinstance(memory_size, int) or memory_size <= 0 or memory_size % 4096:
            raise ValueError(f"memory_size must be a positive multiple of 4096, not {memory_size!r}")
        if not isinstance(wait_cycles, int) or wait_cycles < 1:
            raise ValueError(f"wait_cycles must be a positive integer, not {wait_cycles!r}")
        self.config = config
        self.memory_size = memory_size
        self.wait_cycles = wait_cycles
        self.cycles = 0
        self._error: BaseException | None = None
        key = secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=key)
        params = {"port": self._listener.address[1], "authkey": key.hex(), "ram_size": memory_size}
        self._thread = threading.Thread(target=self._simulate, args=(simulator, params), daemon=True,
                                         name="jacquard-sim")
        self._thread.start()
        self._conn = None
        self._accept(start_timeout)

    def _simulate(self, simulator: str, params: dict) -> None:
        from jacquard.rtl.core import JacquardCore
        from jacquard.sim.cocotb_run import RegisteredReset, run_cocotb

        from .cache import cache_dir

        try:
            # test_dir only goes on the simulator's sys.path; the server is imported by package name.
            # RegisteredReset: about 4x faster in Verilator (see jacquard.sim.cocotb_run).
            run_cocotb(RegisteredReset(JacquardCore(self.config)), "jacquard.host.sim_server",
                       simulator=simulator, test_dir=cache_dir("sim-backend"), parameters=params)
        except BaseException as exc:  # any failure of the simulator ends the device
            self._error = exc

    def _accept(self, timeout: float) -> None:
        # Listener.accept has no timeout: poll the socket so that a failed build is reported.
        sock = self._listener._listener._socket
        sock.settimeout(1.0)
        waited = 0.0
        while self._conn is None:
            try:
                self._conn = self._listener.accept()
            except TimeoutError:
                waited += 1.0
                if self._error is not None or not self._thread.is_alive():
                    raise DeviceError(f"the simulator stopped before it connected ({self._error}); see "
                                      "its log above") from self._error
                if waited > timeout:
                    raise DeviceTimeout(f"the simulator did not start within {timeout:g} s") from None

    def _call(self, *op):
        if self._conn is None:
            raise DeviceError("the sim device is closed; open a new Device('sim')")
        try:
            self._conn.send(op)
            kind, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise DeviceError(f"the simulator stopped ({self._error or exc}); see its log above") from exc
        if kind == "error":
            raise DeviceError(f"the simulation failed: {value}")
        return value

    def _read32(self, offset: int) -> int:
        return self._call("read_reg", offset)

    def _write32(self, offset: int, value: int) -> None:
        self._call("write_reg", offset, value)

    def read_mem(self, addr: int, size: int) -> bytes:
        self._check(addr, size)
        return self._call("read_mem", addr, size)

    def write_mem(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        self._call("write_mem", addr, bytes(data))

    def _check(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or addr + size > self.memory_size:
            raise DeviceError(f"memory access [{addr:#x}, {addr + size:#x}) is outside the simulated "
                              f"device's {self.memory_size} bytes; open it with a larger memory_bytes")

    def wait(self, timeout: float) -> None:
        self.cycles = self._call("run", self.wait_cycles)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(("close",))
                self._conn.recv()
            except (EOFError, OSError):  # the simulator has already gone
                pass
            self._conn.close()
            self._conn = None
            self._thread.join(timeout=60)
        self._listener.close()
