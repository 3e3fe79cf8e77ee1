"""Host side of the UART bridge protocol (:mod:`jacquard.rtl.host_bridge` documents the frames).

:class:`UartLink` turns register and memory accesses into request frames, checks each response's
sync byte, sequence number, command and CRC, and retries a request whose response is missing or
damaged. The bridge answers a retry of a request it already executed from its response cache, so
a retried write is never applied twice. After ``retries`` failed tries it raises
:class:`~jacquard.host.errors.DeviceTimeout`.

The link talks to any byte stream with pyserial's shape: ``write(bytes)``, ``read(n) -> bytes``
(returning fewer bytes when its ``timeout`` expires) and a writable ``timeout`` attribute in
seconds; ``reset_input_buffer()`` is used when present. :meth:`UartLink.open` opens a real serial
port with pyserial; tests plug in a simulated line.

:class:`UartTransport` is the host runtime's ``uart:PORT`` backend. The link provides the transport
operations: ``read_reg``/``write_reg`` (32-bit registers at byte offsets of
:data:`jacquard.sim.isa_regs.REGISTERS`) and ``read_mem``/``write_mem`` (device memory bytes).
"""

from __future__ import annotations

import binascii
import random
import struct
from typing import Protocol

from jacquard.host.errors import DeviceError, DeviceTimeout
from jacquard.host.transport import Transport

# The protocol's constants are defined once, next to the RTL that implements them.
from jacquard.rtl.host_bridge import (
    CMD_PING,
    CMD_READ,
    CMD_WRITE,
    PROTOCOL_VERSION,
    REG_BASE,
    REQ_SYNC,
    RESP_SYNC,
    STATUS_BAD_CMD,
    STATUS_BUS_ERROR,
)

__all__ = [
    "CMD_PING",
    "CMD_READ",
    "CMD_WRITE",
    "REG_BASE",
    "ByteStream",
    "UartLink",
    "UartTransport",
    "crc16",
    "request_frame",
    "verify_device",
]

#: Default baud rate of the board tops.
DEFAULT_BAUD = 115200


class ByteStream(Protocol):
    """What the link needs of a serial port (pyserial's ``Serial`` has it)."""

    timeout: float | None

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int) -> bytes: ...


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (polynomial 0x1021, init 0xFFFF), as the bridge computes it."""
    return binascii.crc_hqx(bytes(data), 0xFFFF)


def request_frame(seq: int, cmd: int, addr: int, count: int, payload: bytes = b"") -> bytes:
    """Encode one request frame."""
    body = struct.pack("<BBBI", seq & 0xFF, cmd, count, addr & 0xFFFF_FFFF) + payload
    return bytes([REQ_SYNC]) + body + crc16(body).to_bytes(2, "big")


class _BadResponse(Exception):
    """A response that is missing, damaged or not the one awaited; the request is retried."""


class UartLink:
    """Register and memory access to a board through the UART bridge.

    Parameters
    ----------
    port : ByteStream
        The byte stream (an open ``serial.Serial`` or a simulated line).
    timeout : float
        Seconds to wait for a response before retrying (the port's ``timeout`` is set to it).
    retries : int
        Tries per request before :class:`DeviceTimeout`.
    name : str
        How errors name the device (e.g. ``"uart:/dev/ttyUSB0"``).
    seed : int, optional
        Seeds the first sequence number (random otherwise, so that a stale retry cache in the
        bridge from an earlier session is not mistaken for this session's request).

    Raises
    ------
    ValueError
        If ``timeout`` or ``retries`` is out of range.
    """

    def __init__(self, port: ByteStream, *, timeout: float = 0.5, retries: int = 5,
                 name: str = "uart", seed: int | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if not isinstance(retries, int) or retries < 1:
            raise ValueError(f"retries must be an integer >= 1, not {retries!r}")
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.name = name
        self.port.timeout = timeout
        self._seq = random.Random(seed).randrange(256)
        self._max_words: int | None = None
        #: Requests sent, and those that needed more than one try (for diagnostics and tests).
        self.requests = 0
        self.retried = 0

    @classmethod
    def open(cls, device: str, baud: int = DEFAULT_BAUD, **kwargs) -> UartLink:
        """Open a serial port with pyserial (``device`` such as ``/dev/ttyUSB0``).

        Raises
        ------
        DeviceError
            If pyserial is missing or the port cannot be opened.
        """
        try:
            import serial
        except ImportError as exc:
            raise DeviceError("the uart backend needs pyserial: pip install pyserial") from exc
        try:
            port = serial.Serial(device, baud, timeout=kwargs.get("timeout", 0.5))
        except (serial.SerialException, OSError) as exc:  # a missing or busy port
            raise DeviceError(f"cannot open serial port {device!r}: {exc}. Is the board plugged in "
                              f"and is {device} its USB-UART (ls /dev/ttyUSB* /dev/ttyACM*)?") from exc
        return cls(port, name=f"uart:{device}", **kwargs)

    def close(self) -> None:
        close = getattr(self.port, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> UartLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- protocol ----------------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        data = self.port.read(n)
        if len(data) != n:
            raise _BadResponse(f"timed out after {len(data)} of {n} bytes")
        return data

    def _await_response(self, seq: int, cmd: int, words: int) -> tuple[int, bytes]:
        # Skip noise and stale responses (an earlier request's, seen after a retry) until ours.
        budget = 4 * (8 + 4 * max(words, 1)) + 64
        while True:
            head = self.port.read(1)
            if not head:
                raise _BadResponse("no response")
            budget -= 1
            if budget < 0:
                raise _BadResponse("no sync byte in the bytes received")
            if head[0] != RESP_SYNC:
                continue
            rest = self._read_exact(3)
            rseq, rcmd, status = rest
            if rseq != seq:
                continue   # a response to an older request: keep looking
            nbytes = 4 * words if rcmd in (CMD_READ, CMD_PING) and not status & STATUS_BAD_CMD else 0
            tail = self._read_exact(nbytes + 2)
            if crc16(rest + tail) != 0:
                raise _BadResponse("bad CRC")
            if rcmd != cmd:
                raise _BadResponse(f"response to command {rcmd}, not {cmd}")
            return status, tail[:nbytes]

    def _transact(self, cmd: int, addr: int, count: int, payload: bytes = b"") -> bytes:
        self._seq = (self._seq + 1) & 0xFF
        self.requests += 1
        frame = request_frame(self._seq, cmd, addr, count, payload)
        words = count if cmd in (CMD_READ, CMD_PING) else 0
        reasons = []
        for attempt in range(self.retries):
            if attempt:
                self.retried += 1
                reset = getattr(self.port, "reset_input_buffer", None)
                if reset is not None:
                    reset()
            self.port.write(frame)
            try:
                status, data = self._await_response(self._seq, cmd, words)
            except _BadResponse as exc:
                reasons.append(str(exc))
                continue
            if status & STATUS_BAD_CMD:
                raise DeviceError(f"{self.name}: the bridge does not know command {cmd}; is the "
                                  f"bitstream from this version of Jacquard?")
            if status & STATUS_BUS_ERROR:
                raise DeviceError(f"{self.name}: bus error at {addr:#010x} ({count} words): the "
                                  f"address is not mapped on the device")
            return data
        raise DeviceTimeout(
            f"{self.name}: no valid response after {self.retries} tries of {self.timeout:g} s "
            f"({'; '.join(dict.fromkeys(reasons))}). Check that the board is plugged in, that it runs "
            f"the Jacquard bitstream (nox -s flash -- BOARD) and that the baud rate matches")

    def ping(self) -> tuple[int, int]:
        """Check the link; returns the bridge's (protocol version, max words per request).

        Raises
        ------
        DeviceTimeout
            If the bridge does not answer.
        DeviceError
            If it speaks another protocol version.
        """
        (info,) = struct.unpack("<I", self._transact(CMD_PING, 0, 1))
        version, max_words = info & 0xFF, (info >> 8) & 0xFF
        if version != PROTOCOL_VERSION:
            raise DeviceError(f"{self.name}: the bridge speaks protocol version {version}, this host "
                              f"speaks {PROTOCOL_VERSION}; rebuild the bitstream or update the host")
        self._max_words = max_words
        return version, max_words

    @property
    def max_words(self) -> int:
        if self._max_words is None:
            self.ping()
        return self._max_words

    def read_words(self, addr: int, count: int) -> list[int]:
        """Read ``count`` 32-bit words at bus address ``addr`` (word aligned)."""
        _check_aligned(addr)
        out: list[int] = []
        while len(out) < count:
            n = min(count - len(out), self.max_words)
            data = self._transact(CMD_READ, addr + 4 * len(out), n)
            out.extend(struct.unpack(f"<{n}I", data))
        return out

    def write_words(self, addr: int, words: list[int]) -> None:
        """Write 32-bit words to consecutive bus addresses from ``addr`` (word aligned)."""
        _check_aligned(addr)
        done = 0
        while done < len(words):
            n = min(len(words) - done, self.max_words)
            payload = struct.pack(f"<{n}I", *(w & 0xFFFF_FFFF for w in words[done:done + n]))
            self._transact(CMD_WRITE, addr + 4 * done, n, payload)
            done += n

    # -- transport operations --------------------------------------------------------------

    def read_reg(self, offset: int) -> int:
        """Read the 32-bit register at byte ``offset`` of the core's register map."""
        return self.read_words(REG_BASE + offset, 1)[0]

    def write_reg(self, offset: int, value: int) -> None:
        """Write the 32-bit register at byte ``offset``."""
        self.write_words(REG_BASE + offset, [value])

    def read_mem(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes of device memory from byte address ``addr``."""
        _check_mem(addr, size)
        start, end = addr & ~3, (addr + size + 3) & ~3
        raw = struct.pack(f"<{(end - start) // 4}I", *self.read_words(start, (end - start) // 4))
        return raw[addr - start:addr - start + size]

    def write_mem(self, addr: int, data: bytes) -> None:
        """Write ``data`` to device memory at byte address ``addr``.

        The protocol moves whole words: a partial word at either end is read, merged and written
        back, which is safe while the core is not writing the same word.
        """
        data = bytes(data)
        _check_mem(addr, len(data))
        if not data:
            return
        start, end = addr & ~3, (addr + len(data) + 3) & ~3
        if start != addr or end != addr + len(data):
            buf = bytearray(self.read_mem(start, end - start))
            buf[addr - start:addr - start + len(data)] = data
            data = bytes(buf)
        self.write_words(start, list(struct.unpack(f"<{len(data) // 4}I", data)))


def _check_aligned(addr: int) -> None:
    if not isinstance(addr, int) or addr % 4 or not 0 <= addr < 1 << 32:
        raise ValueError(f"Address must be a word-aligned 32-bit address, not {addr!r}")


def _check_mem(addr: int, size: int) -> None:
    if not isinstance(addr, int) or not isinstance(size, int) or addr < 0 or size < 0 \
            or addr + size > REG_BASE:
        raise ValueError(f"Memory range must lie in 0..{REG_BASE:#x}, not addr={addr!r} size={size!r}")


def verify_device(transport, config, name: str = "device") -> None:
    """Check that the device behind ``transport`` is a Jacquard core built for ``config``.

    Reads the ID, VERSION, CONFIG_OPS and CONFIG_HASH registers (:mod:`jacquard.sim.isa_regs`).

    Parameters
    ----------
    transport
        Anything with ``read_reg(offset) -> int``.
    config : HardwareConfig
        The config the program was compiled for.

    Raises
    ------
    DeviceError
        If the ID is not Jacquard's, the ISA version differs, the op set differs (the message names
        both op sets), or the config hash differs; the message says what was found and what to do.
    """
    from jacquard.sim.isa import CONFIGS, ISA_VERSION, Op
    from jacquard.sim.isa_regs import CORE_ID, register

    found = transport.read_reg(register("ID").offset)
    if found != CORE_ID:
        raise DeviceError(f"{name} is not a Jacquard core: its ID register reads {found:#010x}, expected "
                          f"{CORE_ID:#010x} ('JQCD'). Is the board programmed with the Jacquard bitstream?")
    isa = register("VERSION").unpack(transport.read_reg(register("VERSION").offset))["isa"]
    if isa != ISA_VERSION:
        raise DeviceError(f"{name} runs ISA version {isa}, this host compiles for version {ISA_VERSION}; "
                          f"rebuild and flash the bitstream from this version")
    chash = transport.read_reg(register("CONFIG_HASH").offset)
    ops = transport.read_reg(register("CONFIG_OPS").offset)
    if chash != config.config_hash() or ops != config.ops_mask:
        known = [c.name for c in CONFIGS.values() if c.config_hash() == chash]
        what = f"config {known[0]!r}" if known else "an unknown config"
        found_ops = "+".join(op.name for op in Op if ops >> op & 1) or "none"
        raise DeviceError(f"{name} is built for {what} (hash {chash:#010x}, ops {found_ops}), but the "
                          f"program targets {config.name!r} (hash {config.config_hash():#010x}, ops "
                          f"{config.ops_names()}); recompile with --config "
                          f"{known[0] if known else 'MATCHING_CONFIG'} or flash the {config.name} bitstream")


class UartTransport(Transport):
    """The ``uart:PORT`` backend: a :class:`UartLink` as the host runtime's Transport.

    Device memory size is found by probing: the board's memory answers a bus error past its end
    (:class:`jacquard.rtl.axi_sram.AxiSram`), so the largest power-of-two size that reads cleanly is
    it (board memories are powers of two).

    Parameters
    ----------
    link : UartLink
        An open link.
    config : HardwareConfig, optional
        When given, the device must be a core built for it (:func:`verify_device`), checked now.
    memory_size : int, optional
        Skip the probe and use this size.

    Raises
    ------
    DeviceError
        If the device is not a Jacquard core, or not one of ``config``.
    DeviceTimeout
        If the board does not answer.
    """

    def __init__(self, link: UartLink, *, config=None, memory_size: int | None = None) -> None:
        self.link = link
        self.config = config
        link.ping()
        if config is not None:
            verify_device(link, config, name=link.name)
        self.memory_size = memory_size if memory_size is not None else self._probe_size()

    def _probe_size(self) -> int:
        size = 4096
        while size < REG_BASE:
            try:
                self.link.read_words(2 * size - 4, 1)
            except DeviceError as exc:
                if isinstance(exc, DeviceTimeout) or "bus error" not in str(exc):
                    raise
                return size
            size *= 2
        return size

    def _read32(self, offset: int) -> int:
        return self.link.read_reg(offset)

    def _write32(self, offset: int, value: int) -> None:
        self.link.write_reg(offset, value)

    def read_mem(self, addr: int, size: int) -> bytes:
        self._check(addr, size)
        return self.link.read_mem(addr, size)

    def write_mem(self, addr: int, data: bytes) -> None:
        self._check(addr, len(data))
        self.link.write_mem(addr, data)

    def _check(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or addr + size > self.memory_size:
            raise DeviceError(f"{self.link.name}: memory access [{addr:#x}, {addr + size:#x}) is outside the "
                              f"board's {self.memory_size} bytes")

    def wait(self, timeout: float) -> None:
        # A STATUS read over the UART takes about 2 ms at 115200 baud: that is the polling pace.
        pass

    def close(self) -> None:
        self.link.close()
