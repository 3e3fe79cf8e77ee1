"""The AXI4-Lite control slave's register map: the one definition the RTL, the host driver and the docs use.

All registers are 32 bits wide at word-aligned offsets. 64-bit performance counters are ``_LO``/``_HI``
pairs: reading ``_LO`` latches the counter's upper half into ``_HI``, so read ``_LO`` first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from amaranth.hdl import unsigned
from amaranth.lib import data

from jacquard.sim.isa import (
    DESCRIPTOR_FIELDS,
    ISA_VERSION,
    NO_FIELD,
    DescriptorError,
    ErrorCode,
    HardwareConfig,
    IsaError,
    Op,
    ProgramError,
)

__all__ = [
    "CORE_ID",
    "PERF_COUNTERS",
    "REGISTERS",
    "Access",
    "RegField",
    "Register",
    "register",
    "registers_markdown",
    "status_error",
]

#: Value of the ID register: the bytes ``b"JQCD"`` read as a little-endian uint32.
CORE_ID = int.from_bytes(b"JQCD", "little")


class Access(enum.Enum):
    """How the host may access a register."""

    RO = "RO"    #: read only; writes are ignored
    RW = "RW"    #: read/write
    W1C = "W1C"  #: read; writing 1 to a bit clears it
    WO = "WO"    #: write only; a write acts, reads return 0


@dataclass(frozen=True)
class RegField:
    """Bits ``offset .. offset+width-1`` of a register."""

    name: str
    offset: int
    width: int
    doc: str


@dataclass(frozen=True)
class Register:
    """One 32-bit register.

    Members
    -------
    name, offset, access, doc
    fields : tuple of RegField
        Named bit fields; bits outside them read 0 and ignore writes.
    reset : int
        Reset value (for RO config registers, see :meth:`value`).
    config : callable, optional
        For RO identification/config registers: the value as a function of the :class:`HardwareConfig`.
    """

    name: str
    offset: int
    access: Access
    fields: tuple[RegField, ...]
    doc: str
    reset: int = 0
    config: Callable[[HardwareConfig], int] | None = field(default=None, compare=False)

    def value(self, cfg: HardwareConfig) -> int:
        """Reset value of this register on a core built for ``cfg``."""
        return self.config(cfg) if self.config is not None else self.reset

    def layout(self) -> data.StructLayout:
        """The register as a 32-bit Amaranth layout, reserved gaps named ``reserved_<bit>``."""
        members, pos = {}, 0
        for f in sorted(self.fields, key=lambda f: f.offset):
            if f.offset > pos:
                members[f"reserved_{pos}"] = unsigned(f.offset - pos)
            members[f.name] = unsigned(f.width)
            pos = f.offset + f.width
        if pos < 32:
            members[f"reserved_{pos}"] = unsigned(32 - pos)
        return data.StructLayout(members)

    def pack(self, **values: int) -> int:
        """The register word holding ``values`` in their fields (others 0).

        Raises
        ------
        ValueError
            If a name is not a field or a value does not fit.
        """
        by_name = {f.name: f for f in self.fields}
        word = 0
        for name, v in values.items():
            f = by_name.get(name)
            if f is None:
                raise ValueError(f"{self.name} has no field {name!r}")
            if not 0 <= v < 1 << f.width:
                raise ValueError(f"{self.name}.{name} must be in 0..{(1 << f.width) - 1}, not {v!r}")
            word |= v << f.offset
        return word

    def unpack(self, word: int) -> dict[str, int]:
        """Split a register word into its fields."""
        return {f.name: (word >> f.offset) & ((1 << f.width) - 1) for f in self.fields}


def _word(name: str, doc: str) -> tuple[RegField, ...]:
    return (RegField(name, 0, 32, doc),)


#: 64-bit performance counters (name, meaning). Each is a _LO/_HI register pair from 0x80.
PERF_COUNTERS: tuple[tuple[str, str], ...] = (
    ("CYCLES", "Clock cycles since the counters were last cleared"),
    ("BUSY_CYCLES", "Cycles with STATUS.busy set"),
    ("MAC_ACTIVE_CYCLES", "Cycles in which the PE array consumed a tap vector"),
    ("DMA_READ_BYTES", "Bytes read by the DMA (descriptors, tensors, weights, params, LUTs)"),
    ("DMA_WRITE_BYTES", "Bytes written by the DMA"),
    ("STALL_INPUT", "Busy cycles the PE array waited on input pixels"),
    ("STALL_WEIGHTS", "Busy cycles the PE array waited on weights"),
    ("STALL_OUTPUT", "Busy cycles the datapath waited on the output DMA"),
    ("STALL_REQUANT", "Busy cycles the PE array waited on the requantizers"),
)

_IRQ = (RegField("done", 0, 1, "Program finished"), RegField("error", 1, 1, "Program stopped on an error"))

REGISTERS: tuple[Register, ...] = (
    Register("ID", 0x00, Access.RO, _word("id", "CORE_ID, the bytes 'JQCD'"),
             "Identifies a Jacquard core", config=lambda c: CORE_ID),
    Register("VERSION", 0x04, Access.RO,
             (RegField("isa", 0, 16, "ISA_VERSION the core runs"),
              RegField("revision", 16, 16, "RTL revision within the ISA version")),
             "ISA version; programs of another version are refused", config=lambda c: ISA_VERSION),
    Register("CONFIG0", 0x08, Access.RO,
             (RegField("c_par", 0, 8, "Input channels per beat"),
              RegField("oc_par", 8, 8, "Output channels per tile"),
              RegField("line_buffer_rows", 16, 4, "Line buffer rows (max kernel height - 1)"),
              RegField("dma_align", 24, 8, "Required address alignment in bytes")),
             "PE array shape", config=lambda c: c.c_par | c.oc_par << 8 | c.line_buffer_rows << 16
             | c.dma_align << 24),
    Register("CONFIG1", 0x0C, Access.RO,
             (RegField("max_width", 0, 16, "Largest feature map width"),
              RegField("param_buffer_entries", 16, 16, "Channel-parameter buffer entries")),
             "Line buffer width and parameter buffer", config=lambda c: c.max_width
             | min(c.param_buffer_entries, 0xFFFF) << 16),
    Register("CONFIG_LINE_BUFFER", 0x10, Access.RO, _word("bytes", "Line buffer capacity in bytes"),
             "Line buffer size", config=lambda c: c.line_buffer_bytes),
    Register("CONFIG_WEIGHT_BUFFER", 0x14, Access.RO, _word("bytes", "One weight bank's capacity in bytes"),
             "Weight buffer size", config=lambda c: c.weight_buffer_bytes),
    Register("CONFIG_HASH", 0x18, Access.RO, _word("hash", "HardwareConfig.config_hash()"),
             "Programs with another config hash are refused", config=lambda c: c.config_hash()),
    Register("CLOCK_KHZ", 0x1C, Access.RO, _word("khz", "Nominal clock in kHz"),
             "For the host's performance estimates", config=lambda c: round(c.clock_mhz * 1000)),
    Register("CTRL", 0x20, Access.WO,
             (RegField("start", 0, 1, "Start the program at PROG_BASE (ignored while busy)"),
              RegField("abort", 1, 1, "Stop after the current AXI bursts; error ABORTED"),
              RegField("soft_reset", 2, 1, "Abort, then return every register but the window and "
                                           "PROG_* to reset"),
              RegField("clear_counters", 3, 1, "Zero all performance counters")),
             "Commands; each bit acts when written as 1"),
    Register("STATUS", 0x24, Access.RO,
             (RegField("busy", 0, 1, "A program is running"),
              RegField("done", 1, 1, "The last program ran to its end (cleared by start)"),
              RegField("error", 2, 1, "The last program stopped on an error (cleared by start)"),
              RegField("error_code", 8, 8, "ErrorCode of that error"),
              RegField("desc_index", 16, 16, "Index of the failing descriptor (0xFFFF: the header)")),
             "Run state"),
    Register("PROG_BASE", 0x28, Access.RW, _word("addr", "Address of the program header"),
             "Program address, a multiple of dma_align"),
    Register("PROG_LEN", 0x2C, Access.RW, _word("bytes", "16 + 64 * descriptors"),
             "Program length in bytes; must match the header (else BAD_LENGTH)"),
    Register("WINDOW_BASE", 0x30, Access.RW, _word("addr", "First address the DMA may touch"),
             "DMA protection window, lower bound (inclusive)"),
    Register("WINDOW_LIMIT", 0x34, Access.RW, _word("addr", "First address past the window"),
             "DMA protection window, upper bound (exclusive); reset 0 = empty window"),
    Register("IRQ_ENABLE", 0x38, Access.RW, _IRQ,
             "Interrupt enables; the irq output is the OR of IRQ_STATUS AND IRQ_ENABLE"),
    Register("IRQ_STATUS", 0x3C, Access.W1C, _IRQ, "Pending interrupts, set at the end of a program"),
    Register("CURRENT_DESC", 0x40, Access.RO, (RegField("index", 0, 16, "Descriptor index"),),
             "Descriptor being run (or the last one run)"),
    Register("ERROR_FIELD", 0x44, Access.RO,
             (RegField("field", 0, 8, "Index in DESCRIPTOR_FIELDS of the offending field; 0xFF: none"),),
             "Which field caused the error", reset=0xFF),
    Register("ERROR_ADDR", 0x48, Access.RO, _word("addr", "Offending address (WINDOW, OVERLAP, "
                                                           "MISALIGNED, BUS_ERROR)"),
             "Which address caused the error"),
    Register("CONFIG_OPS", 0x4C, Access.RO,
             tuple(RegField(op.name.lower(), int(op), 1, f"Op.{op.name} is built in") for op in Op),
             "The ops this core runs (HardwareConfig.ops); others stop with BAD_OPCODE",
             config=lambda c: c.ops_mask),
    *(Register(f"{name}_{half}", 0x80 + 8 * i + 4 * j, Access.RO,
               _word("count", f"Bits {32 * j + 31}:{32 * j}"),
               doc + (" (read _LO first: it latches _HI)" if half == "LO" else ""))
      for i, (name, doc) in enumerate(PERF_COUNTERS) for j, half in enumerate(("LO", "HI"))),
)

_BY_NAME = {r.name: r for r in REGISTERS}


def _check() -> None:
    offsets = [r.offset for r in REGISTERS]
    if len(set(offsets)) != len(offsets) or any(o % 4 for o in offsets):
        raise AssertionError("register offsets must be unique and word aligned")
    for r in REGISTERS:
        used = 0
        for f in r.fields:
            mask = ((1 << f.width) - 1) << f.offset
            if f.offset + f.width > 32 or used & mask:
                raise AssertionError(f"{r.name}.{f.name} overlaps or crosses the word")
            used |= mask
    if max(ErrorCode) >= 1 << 8:
        raise AssertionError("ErrorCode must fit STATUS.error_code")


_check()


def register(name: str) -> Register:
    """The register called ``name``.

    Raises
    ------
    KeyError
        If there is no such register.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no register {name!r}; registers are {', '.join(_BY_NAME)}") from None


def registers_markdown() -> list[str]:
    """Markdown lines of the register map table (for ``docs/ISA.md``)."""
    lines = ["### Register map (AXI4-Lite, 32-bit)", "",
             "| Offset | Register | Access | Reset | Fields | Meaning |", "|---|---|---|---|---|---|"]
    for r in REGISTERS:
        fields = "<br>".join(
            f"`{f.offset + f.width - 1}:{f.offset}` {f.name}: {f.doc}" if f.width > 1
            else f"`{f.offset}` {f.name}: {f.doc}" for f in r.fields)
        reset = "config" if r.config is not None else f"`{r.reset:#x}`"
        lines.append(f"| `{r.offset:#04x}` | {r.name} | {r.access.value} | {reset} | {fields} | {r.doc} |")
    return lines


#: ``STATUS.desc_index`` of an error in the program header rather than a descriptor.
HEADER_INDEX = 0xFFFF
_HEADER_CODES = (ErrorCode.BAD_MAGIC, ErrorCode.BAD_VERSION, ErrorCode.BAD_CONFIG, ErrorCode.BAD_LENGTH)


def status_error(status: int, error_field: int = NO_FIELD, error_addr: int = 0) -> IsaError | None:
    """The exception the executor would raise for the error a core reports, or None if there is none.

    Lets the ``sim`` and board backends raise the same :class:`DescriptorError` (same ``code``,
    ``index``, ``field`` and ``address``) or :class:`ProgramError` as the ``emu`` backend.

    Parameters
    ----------
    status, error_field, error_addr : int
        The STATUS, ERROR_FIELD and ERROR_ADDR register words.
    """
    st = register("STATUS").unpack(status)
    if not st["error"]:
        return None
    try:
        code = ErrorCode(st["error_code"])
    except ValueError:
        return IsaError(f"core reported unknown error code {st['error_code']}", ErrorCode.NONE)
    if st["desc_index"] == HEADER_INDEX or code in _HEADER_CODES:
        return ProgramError(f"core refused the program header: {code.name}", code, 0, 0)
    name = DESCRIPTOR_FIELDS[error_field].name if error_field < len(DESCRIPTOR_FIELDS) else None
    address = error_addr if code in (ErrorCode.WINDOW, ErrorCode.OVERLAP, ErrorCode.MISALIGNED,
                                     ErrorCode.BUS_ERROR) else None
    where = f" ({name}" + (f" at {address:#x}" if address is not None else "") + ")" if name else ""
    return DescriptorError(f"core stopped with {code.name}{where}", code, index=st["desc_index"],
                           field=name, address=address)
