"""Transports: how the host reaches a core's registers and memory, and the ``emu`` backend.

A :class:`Transport` offers four operations: read and write a 32-bit register (by name or offset, from
the one register map :mod:`jacquard.sim.isa_regs`), and read and write device memory bytes. The
:class:`~jacquard.host.driver.Driver` does everything else through them, so every backend runs the same
driver code. :class:`EmuTransport` is a core in software: device memory is a NumPy byte array, and
writing ``CTRL.start`` runs the program at ``PROG_BASE`` with the reference executor on a worker
thread, updating STATUS, the error registers, IRQ_STATUS and the performance counters (from the
performance model) the way the RTL does.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np

from jacquard.sim.executor import execute_layer
from jacquard.sim.isa import (
    ErrorCode,
    HardwareConfig,
    IsaError,
    Program,
    ProgramError,
    field_index,
    validate_program,
)
from jacquard.sim.isa_regs import HEADER_INDEX, PERF_COUNTERS, REGISTERS, register

__all__ = ["EmuTransport", "Transport"]

_STATUS = register("STATUS")
_CTRL = register("CTRL")


def _offset(reg: str | int) -> int:
    return register(reg).offset if isinstance(reg, str) else int(reg)


class Transport(ABC):
    """Register and memory access to one core.

    Members
    -------
    memory_size : int
        Bytes of device memory from address 0.
    """

    memory_size: int = 0

    def read_reg(self, reg: str | int) -> int:
        """Read a 32-bit register by name (``"STATUS"``) or byte offset."""
        return self._read32(_offset(reg))

    def write_reg(self, reg: str | int, value: int) -> None:
        """Write a 32-bit register by name or byte offset."""
        if not 0 <= value < 1 << 32:
            raise ValueError(f"value must be a 32-bit unsigned integer, not {value!r}")
        self._write32(_offset(reg), value)

    @abstractmethod
    def _read32(self, offset: int) -> int: ...

    @abstractmethod
    def _write32(self, offset: int, value: int) -> None: ...

    @abstractmethod
    def read_mem(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes of device memory at ``addr``."""

    @abstractmethod
    def write_mem(self, addr: int, data: bytes) -> None:
        """Write bytes to device memory at ``addr``."""

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds or until the core may have changed state (an interrupt).

        The default just sleeps a little; the driver polls STATUS after it either way.
        """
        import time

        time.sleep(min(timeout, 0.0005))

    def close(self) -> None:  # noqa: B027 (most transports hold nothing to release)
        """Release the transport."""


class EmuTransport(Transport):
    """A software core: the reference executor behind the register map.

    Parameters
    ----------
    config : HardwareConfig
        The config the emulated core is built for (its ID/CONFIG registers and the programs it takes).
    memory_size : int
        Bytes of device memory.
    hang : bool
        Fault injection: after ``CTRL.start`` the core stays busy until aborted (for timeout tests).
    """

    def __init__(self, config: HardwareConfig, memory_size: int = 64 << 20, *, hang: bool = False) -> None:
        if not isinstance(config, HardwareConfig):
            raise TypeError(f"config must be a HardwareConfig, not {type(config).__name__}")
        if not isinstance(memory_size, int) or memory_size <= 0:
            raise ValueError(f"memory_size must be a positive integer, not {memory_size!r}")
        self.config = config
        self.memory_size = memory_size
        self.memory = np.zeros(memory_size, dtype=np.uint8)
        self.hang = hang
        self._regs = {r.offset: r.value(config) for r in REGISTERS}
        self._names = {r.offset: r.name for r in REGISTERS}
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._thread: threading.Thread | None = None

    # -- registers

    def _read32(self, offset: int) -> int:
        name = self._names.get(offset)
        if name is None or name == "CTRL":
            return 0
        with self._lock:
            return self._regs[offset]

    def _write32(self, offset: int, value: int) -> None:
        name = self._names.get(offset)
        if name is None:
            return
        reg = register(name)
        if name == "CTRL":
            self._command(_CTRL.unpack(value))
        elif name == "IRQ_STATUS":
            with self._lock:
                self._regs[offset] &= ~value
        elif reg.access.value == "RW":
            with self._lock:
                self._regs[offset] = value

    def _set(self, name: str, value: int) -> None:
        self._regs[register(name).offset] = value

    def _get(self, name: str) -> int:
        return self._regs[register(name).offset]

    def _command(self, cmd: dict[str, int]) -> None:
        if cmd["abort"] or cmd["soft_reset"]:
            self._abort.set()
            self._done.wait(1.0)
            if cmd["soft_reset"]:
                with self._lock:
                    keep = {register(n).offset
                            for n in ("WINDOW_BASE", "WINDOW_LIMIT", "PROG_BASE", "PROG_LEN")}
                    for r in REGISTERS:
                        if r.offset not in keep:
                            self._regs[r.offset] = r.value(self.config)
        if cmd["clear_counters"]:
            with self._lock:
                for i in range(len(PERF_COUNTERS)):
                    self._regs[0x80 + 8 * i] = self._regs[0x84 + 8 * i] = 0
        if cmd["start"]:
            with self._lock:
                if self._get("STATUS") & 1:
                    return  # ignored while busy
                self._set("STATUS", _STATUS.pack(busy=1))
                self._abort.clear()
                self._done.clear()
            self._thread = threading.Thread(target=self._run, name="jacquard-emu", daemon=True)
            self._thread.start()

    # -- memory

    def read_mem(self, addr: int, size: int) -> bytes:
        self._check_range(addr, size)
        return self.memory[addr:addr + size].tobytes()

    def write_mem(self, addr: int, data: bytes) -> None:
        self._check_range(addr, len(data))
        self.memory[addr:addr + len(data)] = np.frombuffer(bytes(data), dtype=np.uint8)

    def _check_range(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or addr + size > self.memory_size:
            from .errors import DeviceError

            raise DeviceError(f"memory access [{addr:#x}, {addr + size:#x}) is outside the device's "
                              f"{self.memory_size} bytes; open the device with more memory")

    def wait(self, timeout: float) -> None:
        self._done.wait(timeout)

    # -- the core

    def _finish(self, code: ErrorCode, index: int = 0, fld: str | None = None,
                addr: int | None = None) -> None:
        with self._lock:
            if code == ErrorCode.NONE:
                self._set("STATUS", _STATUS.pack(done=1))
            else:
                self._set("STATUS", _STATUS.pack(error=1, error_code=int(code), desc_index=index))
                self._set("ERROR_FIELD", field_index(fld))
                self._set("ERROR_ADDR", addr or 0)
            self._set("IRQ_STATUS", self._get("IRQ_STATUS") | (1 if code == ErrorCode.NONE else 2))
        self._done.set()

    def _count(self, name: str, amount: int) -> None:
        i = [n for n, _ in PERF_COUNTERS].index(name)
        lo, hi = 0x80 + 8 * i, 0x84 + 8 * i
        total = (self._regs[hi] << 32 | self._regs[lo]) + int(amount)
        self._regs[lo], self._regs[hi] = total & 0xFFFFFFFF, (total >> 32) & 0xFFFFFFFF

    def _run(self) -> None:
        from .perf import estimate_descriptor

        cfg = self.config
        with self._lock:
            base, limit = self._get("WINDOW_BASE"), self._get("WINDOW_LIMIT")
            prog_base, prog_len = self._get("PROG_BASE"), self._get("PROG_LEN")
        if self.hang:
            self._abort.wait()
            self._finish(ErrorCode.ABORTED, 0)
            return
        index = HEADER_INDEX
        try:
            if not (base <= prog_base and prog_base + prog_len <= min(limit, self.memory_size)):
                self._finish(ErrorCode.WINDOW, HEADER_INDEX, None, prog_base)
                return
            program = Program.from_bytes(self.memory[prog_base:prog_base + prog_len].tobytes(), cfg)
            window = self.memory[base:min(limit, self.memory_size)]
            validate_program(program, cfg, base, base + window.size, prog_base)
            for index, d in enumerate(program.descriptors):
                if self._abort.is_set():
                    self._finish(ErrorCode.ABORTED, index)
                    return
                with self._lock:
                    self._set("CURRENT_DESC", index)
                execute_layer(d, window, cfg, base=base, index=index)
                est = estimate_descriptor(d, cfg)
                with self._lock:
                    self._count("CYCLES", est.cycles)
                    self._count("BUSY_CYCLES", est.cycles)
                    self._count("MAC_ACTIVE_CYCLES", est.compute_cycles)
                    self._count("DMA_READ_BYTES", est.dma_bytes - d.out_h * d.out_w * d.out_cp)
                    self._count("DMA_WRITE_BYTES", d.out_h * d.out_w * d.out_cp)
        except ProgramError as e:
            self._finish(e.code, HEADER_INDEX)
            return
        except IsaError as e:
            self._finish(e.code, e.index if getattr(e, "index", None) is not None else index,
                         getattr(e, "field", None), getattr(e, "address", None))
            return
        self._finish(ErrorCode.NONE)
