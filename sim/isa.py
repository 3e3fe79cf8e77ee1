"""The accelerator's program format (ISA): hardware configs, layer descriptors, programs, memory layout.

This module is the one definition of what a Jacquard program is. The RTL sequencer decodes
descriptors with :func:`descriptor_layout`, the host compiler builds them with
:class:`LayerDescriptor` and the packing helpers, the reference executor
(:mod:`jacquard.sim.executor`) runs them, and ``docs/ISA.md`` is generated in part from the tables
here (``python -m jacquard.sim.isa --markdown``). The AXI4-Lite register map is in
:mod:`jacquard.sim.isa_regs`.

Memory layout (all little-endian, addresses are byte addresses on the core's AXI bus):

* A feature map of shape ``(H, W, C)`` is stored NHWC (batch 1) as ``H * W * Cp`` int8 bytes,
  ``Cp = C`` rounded up to ``c_par``. Padded channels of an input are never read into a result;
  every op writes its output zero point into the padded channels of its output.
* Dense conv weights ``(Cout, KH, KW, Cin)`` are packed as: for oc_tile, for ky, for kx, for
  c_tile: one ``(oc_par, c_par)`` int8 block, oc major, c minor, zero-filled past ``Cout``/``Cin``.
  Depthwise weights ``(C, KH, KW, 1)``: for c_tile, for ky, for kx: ``c_par`` int8, channel minor.
* Channel parameters: one 8-byte entry per output channel, ``int32 bias'`` then the float32 bits of
  the requantization multiplier (:class:`jacquard.rtl.layouts.ChannelParamsLayout`), padded to a
  multiple of ``lcm(c_par, oc_par)`` entries with zeros.
* Lookup tables: 256 int8 entries indexed by ``x + 128``; one table, or one per padded output channel.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

__all__ = [
    "CONFIGS",
    "DESCRIPTOR_BYTES",
    "DESCRIPTOR_FIELDS",
    "DESCRIPTOR_WORDS",
    "HEADER_FIELDS",
    "HEADER_WORDS",
    "ISA_VERSION",
    "MAX_KERNEL",
    "MAX_STRIDE",
    "NO_FIELD",
    "PROGRAM_MAGIC",
    "DescriptorError",
    "ErrorCode",
    "Field",
    "HardwareConfig",
    "IsaError",
    "LayerDescriptor",
    "Op",
    "Program",
    "ProgramError",
    "Region",
    "check_descriptor",
    "check_regions",
    "conv_out_size",
    "descriptor_layout",
    "field_index",
    "fold_bias",
    "header_layout",
    "isa_markdown",
    "lut_size",
    "pack_channel_params",
    "pack_lut",
    "pack_tensor",
    "pack_weights",
    "padded_channels",
    "param_entries",
    "pool_out_size",
    "regions",
    "unpack_channel_params",
    "unpack_lut",
    "unpack_tensor",
    "unpack_weights",
    "validate_program",
    "weights_size",
]

#: Bumped on any change to the descriptor or header encoding or to an op's semantics.
ISA_VERSION = 1
#: First word of a program: the bytes ``b"JQPG"`` read as a little-endian uint32.
PROGRAM_MAGIC = int.from_bytes(b"JQPG", "little")
#: Kernel sizes are 1..MAX_KERNEL and strides 1..MAX_STRIDE (the line buffer's range).
MAX_KERNEL = 7
MAX_STRIDE = 4


# -- hardware configurations ------------------------------------------------------------------------

@dataclass(frozen=True)
class HardwareConfig:
    """Elaboration parameters of one accelerator build; a program is compiled for exactly one.

    Parameters
    ----------
    name : str
        Preset name (not part of :meth:`config_hash`).
    c_par : int
        Input channels per beat (PE array columns); feature maps are padded to a multiple of it.
    oc_par : int
        Output channels per tile (PE array rows). ``c_par * oc_par`` is the number of MACs.
    max_width : int
        Largest feature map width the line buffer accepts.
    line_buffer_rows : int
        Rows the line buffer keeps; the largest kernel height is ``line_buffer_rows + 1`` (at most 7).
    line_buffer_bytes : int
        Line buffer capacity: a layer needs ``(KH - 1) * W * Cp`` bytes.
    weight_buffer_bytes : int
        Capacity of one weight buffer bank: one output-channel tile's packed weights must fit.
    param_buffer_entries : int
        Channel-parameter buffer entries (8 bytes each); at least ``lcm(c_par, oc_par)``.
    clock_mhz : float
        Nominal core clock, for performance estimates (not part of :meth:`config_hash`).
    dma_align : int
        Required alignment in bytes of every address in a descriptor and of the program.
    ops : frozenset of Op
        The ops this build runs (default: all). The core elaborates only their units and refuses
        any other op with ``BAD_OPCODE``; CONV is always in. A bit mask (bit ``op`` per op, as in
        :meth:`hash_fields` and the ``CONFIG_OPS`` register) is accepted too.
    requant_lanes : int
        Requantizer lanes of the post-processor (outputs requantized per cycle); 0 (default) means
        ``oc_par`` for configs of at most 16 MACs, else ``oc_par // 4`` (see :attr:`n_requant`).
        Timing only: not part of :meth:`config_hash`.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """

    name: str
    c_par: int
    oc_par: int
    max_width: int
    line_buffer_rows: int
    line_buffer_bytes: int
    weight_buffer_bytes: int
    param_buffer_entries: int
    clock_mhz: float
    dma_align: int = 4
    ops: frozenset[Op] = field(default_factory=lambda: frozenset(Op))
    requant_lanes: int = 0

    def __post_init__(self) -> None:
        ops = self.ops
        if isinstance(ops, int) and not isinstance(ops, bool) and ops >= 0:
            # The bit mask of hash_fields() (a .jqp manifest's config fields).
            if ops & ~sum(1 << op for op in Op):
                raise ValueError(f"ops mask {ops:#x} has bits of no Op")
            ops = frozenset(op for op in Op if ops >> op & 1)
        if (not isinstance(ops, (set, frozenset)) or not all(isinstance(o, Op) for o in ops)
                or Op.CONV not in ops):
            raise ValueError(f"ops must be a set of Op containing Op.CONV, not {self.ops!r}")
        object.__setattr__(self, "ops", frozenset(ops))
        for name in ("c_par", "oc_par", "dma_align"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1) or v > 128:
                raise ValueError(f"{name} must be a power of two in 1..128, not {v!r}")
        if not isinstance(self.max_width, int) or not 1 <= self.max_width <= 0xFFFF:
            raise ValueError(f"max_width must be in 1..65535, not {self.max_width!r}")
        if not isinstance(self.line_buffer_rows, int) or not 0 <= self.line_buffer_rows <= MAX_KERNEL - 1:
            raise ValueError(f"line_buffer_rows must be in 0..{MAX_KERNEL - 1}, "
                             f"not {self.line_buffer_rows!r}")
        for name in ("line_buffer_bytes", "weight_buffer_bytes", "param_buffer_entries"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v < 1 << 32:
                raise ValueError(f"{name} must be an integer in 0..2**32-1, not {v!r}")
        if self.param_buffer_entries < self.param_align:
            raise ValueError(f"param_buffer_entries must be >= lcm(c_par, oc_par) = {self.param_align}, "
                             f"not {self.param_buffer_entries!r}")
        if not isinstance(self.requant_lanes, int) or not 0 <= self.requant_lanes <= self.oc_par:
            raise ValueError(f"requant_lanes must be in 0..oc_par ({self.oc_par}), "
                             f"not {self.requant_lanes!r}")
        if not self.clock_mhz > 0:
            raise ValueError(f"clock_mhz must be > 0, not {self.clock_mhz!r}")

    @property
    def macs(self) -> int:
        """Number of int8 multipliers in the PE array."""
        return self.c_par * self.oc_par

    @property
    def max_kernel_h(self) -> int:
        """Largest kernel height the line buffer can hold."""
        return self.line_buffer_rows + 1

    @property
    def param_align(self) -> int:
        """Channel parameters and per-channel LUT rows come in multiples of this many channels."""
        return math.lcm(self.c_par, self.oc_par)

    @property
    def n_requant(self) -> int:
        """Requantizer lanes the core builds: :attr:`requant_lanes`, or its default rule when 0."""
        if self.requant_lanes:
            return self.requant_lanes
        return self.oc_par if self.macs <= 16 else max(1, self.oc_par // 4)

    @property
    def ops_mask(self) -> int:
        """The op set as a bit mask: bit ``op`` is set for each op in :attr:`ops`."""
        return sum(1 << op for op in self.ops)

    def ops_names(self) -> str:
        """The op set as text, e.g. ``"CONV+MAXPOOL"``."""
        return "+".join(op.name for op in sorted(self.ops))

    def hash_fields(self) -> dict[str, int]:
        """The fields that decide whether a program runs on this config (all but name and clock)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("name", "clock_mhz", "ops", "requant_lanes")}
        return {**fields, "ops": self.ops_mask}

    def config_hash(self) -> int:
        """A stable 32-bit hash of :meth:`hash_fields`: the first 4 bytes of SHA-256 of their JSON."""
        text = json.dumps(self.hash_fields(), sort_keys=True, separators=(",", ":"))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# -- ops and error codes ----------------------------------------------------------------------------

class Op(enum.IntEnum, shape=4):
    """Layer operation. Code 0 is invalid, so that zeroed memory is never a valid descriptor."""

    CONV = 1            #: conv2d (groups 1, or depthwise); FC is a 1x1 conv on a 1x1xC map
    MAXPOOL = 2         #: max pool (ONNX MaxPool, int8)
    AVGPOOL = 3         #: average pool (ONNX QLinearAveragePool)
    GLOBAL_AVGPOOL = 4  #: global average pool (QLinearGlobalAveragePool), output 1x1xC
    ADD = 5             #: element-wise add of two tensors of one shape (QLinearAdd)


class ErrorCode(enum.IntEnum, shape=8):
    """Why a program stopped: ``STATUS.error_code`` and :attr:`IsaError.code`."""

    NONE = 0         #: no error
    BAD_MAGIC = 1    #: program header magic is not PROGRAM_MAGIC
    BAD_VERSION = 2  #: program built for another ISA version
    BAD_CONFIG = 3   #: program built for another hardware config (config hash differs)
    BAD_LENGTH = 4   #: PROG_LEN (or the byte string) disagrees with the header's descriptor count
    BAD_OPCODE = 5   #: descriptor op is not an Op
    PARAM_RANGE = 6  #: a descriptor field is out of range for the op or the hardware config
    SHAPE = 7        #: output shape is inconsistent with the input shape and the op's parameters
    MISALIGNED = 8   #: an address is not a multiple of dma_align
    WINDOW = 9       #: a tensor region falls outside the DMA window (the executor's memory)
    OVERLAP = 10     #: the output region overlaps an input, weights, params, LUT or the program
    ABORTED = 11     #: the host wrote CTRL.abort
    BUS_ERROR = 12   #: an AXI read or write returned SLVERR or DECERR


class IsaError(ValueError):
    """A program or descriptor is refused; ``code`` is the :class:`ErrorCode` the core would report."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class ProgramError(IsaError):
    """A program header is refused (magic, version, config hash or length); ``expected`` vs ``found``."""

    def __init__(self, message: str, code: ErrorCode, expected: int, found: int) -> None:
        super().__init__(message, code)
        self.expected = expected
        self.found = found


class DescriptorError(IsaError):
    """A descriptor is refused.

    Members
    -------
    code : ErrorCode
    index : int or None
        Descriptor index in its program (None when checked on its own).
    field : str or None
        Name of the offending field (a :data:`DESCRIPTOR_FIELDS` name).
    address : int or None
        Offending address, for WINDOW, OVERLAP and MISALIGNED errors.
    """

    def __init__(self, message: str, code: ErrorCode, *, index: int | None = None,
                 field: str | None = None, address: int | None = None) -> None:
        where = f"descriptor {index}: " if index is not None else "descriptor: "
        super().__init__(where + message, code)
        self.index = index
        self.field = field
        self.address = address


#: Named presets. ULX3S-85F is the reference (16x8 = 128 MACs); iCEBreaker is the tiny one.
CONFIGS: dict[str, HardwareConfig] = {
    c.name: c for c in (
        # line_buffer_bytes: the line buffer keeps one row slot of this size per kernel row (8), so
        # 8 KiB is 0.5 Mibit of the 85F's 3.7 Mibit of block RAM (32 KiB did not fit: 297/208 EBR).
        HardwareConfig("ulx3s-85f", c_par=8, oc_par=16, max_width=512, line_buffer_rows=6,
                       line_buffer_bytes=8192, weight_buffer_bytes=65536, param_buffer_entries=512,
                       clock_mhz=100.0),
        # 4x2 = 8 MACs fill the iCE40UP5K's 8 DSPs; buffers live in its SPRAM. Only the ops of a
        # plain CNN (conv with fused pool and LUT, max pool) and one requantizer lane: the others'
        # units do not fit (docs/RESULTS.md, synth-icebreaker).
        HardwareConfig("icebreaker", c_par=4, oc_par=2, max_width=128, line_buffer_rows=6,
                       line_buffer_bytes=8192, weight_buffer_bytes=8192, param_buffer_entries=64,
                       clock_mhz=24.0, ops=frozenset({Op.CONV, Op.MAXPOOL}), requant_lanes=1),
        # The small board target (LFE5U-25F): the icebreaker's 4x2 array, op set and one requantizer
        # lane, sim-small's buffers, kernels up to 3x3 (two line buffer rows; larger kernels run on
        # the CPU). Each cut is measured in docs/RESULTS.md, synth-ulx3s-25f.
        HardwareConfig("ulx3s-25f", c_par=4, oc_par=2, max_width=64, line_buffer_rows=2,
                       line_buffer_bytes=4096, weight_buffer_bytes=4096, param_buffer_entries=64,
                       clock_mhz=25.0, ops=frozenset({Op.CONV, Op.MAXPOOL}), requant_lanes=1),
        # Small enough that RTL simulations of whole layers stay short, large enough to tile.
        HardwareConfig("sim-small", c_par=4, oc_par=4, max_width=64, line_buffer_rows=6,
                       line_buffer_bytes=4096, weight_buffer_bytes=4096, param_buffer_entries=64,
                       clock_mhz=100.0),
    )
}


# -- field tables -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One bit field of a descriptor or header: bits ``offset .. offset+width-1`` of word ``word``.

    ``kind`` is ``"u"`` (unsigned), ``"s"`` (two's complement), ``"bool"``, ``"f32"`` (IEEE-754 bits
    of a float32) or ``"op"`` (an :class:`Op` code).
    """

    name: str
    word: int
    offset: int
    width: int
    kind: str
    doc: str

    @property
    def bit(self) -> int:
        """Bit position in the whole record (word 0 bit 0 is bit 0)."""
        return self.word * 32 + self.offset

    @property
    def signed(self) -> bool:
        return self.kind == "s"

    def shape(self):
        """The Amaranth shape of the field in :func:`descriptor_layout`."""
        if self.kind == "op":
            return Op
        return signed(self.width) if self.kind == "s" else unsigned(self.width)

    def bounds(self) -> tuple[int, int]:
        """Inclusive integer range of the encoded value."""
        if self.kind == "s":
            return -(1 << (self.width - 1)), (1 << (self.width - 1)) - 1
        return 0, (1 << self.width) - 1


def _f(name, word, offset, width, kind, doc):
    return Field(name, word, offset, width, kind, doc)


DESCRIPTOR_WORDS = 16
DESCRIPTOR_BYTES = DESCRIPTOR_WORDS * 4

#: The descriptor encoding. Bits not covered by a field are reserved and must be 0.
DESCRIPTOR_FIELDS: tuple[Field, ...] = (
    _f("op", 0, 0, 4, "op", "Operation (see the op table); 0 is invalid"),
    _f("depthwise", 0, 4, 1, "bool", "CONV: groups = C (depthwise); otherwise groups = 1"),
    _f("lut", 0, 5, 1, "bool", "CONV, ADD: apply the lookup table at lut_addr after the clamp"),
    _f("lut_per_channel", 0, 6, 1, "bool", "One table per output channel (needs lut)"),
    _f("fuse_maxpool", 0, 7, 1, "bool", "CONV: 2x2 stride-2 max pool (floor, no padding) after LUT"),
    _f("ceil_mode", 0, 8, 1, "bool", "MAXPOOL, AVGPOOL: ONNX ceil_mode for the output size"),
    _f("count_include_pad", 0, 9, 1, "bool", "AVGPOOL: padding counts in the divisor"),
    _f("kh", 0, 12, 4, "u", "Kernel height, 1..7 (CONV, MAXPOOL, AVGPOOL)"),
    _f("kw", 0, 16, 4, "u", "Kernel width, 1..7"),
    _f("stride_h", 0, 20, 3, "u", "Vertical stride, 1..4"),
    _f("stride_w", 0, 24, 3, "u", "Horizontal stride, 1..4"),
    _f("pad_t", 1, 0, 4, "u", "Rows of padding on top, 0..kh-1"),
    _f("pad_l", 1, 4, 4, "u", "Columns of padding on the left, 0..kw-1"),
    _f("pad_b", 1, 8, 4, "u", "Rows of padding at the bottom, 0..kh-1"),
    _f("pad_r", 1, 12, 4, "u", "Columns of padding on the right, 0..kw-1"),
    _f("clamp_lo", 1, 16, 8, "s", "CONV, ADD: lower clamp bound (out_zp fuses ReLU)"),
    _f("clamp_hi", 1, 24, 8, "s", "CONV, ADD: upper clamp bound, >= clamp_lo"),
    _f("in_zp", 2, 0, 8, "s", "Input zero point (CONV: the padding value; folded into the bias)"),
    _f("in2_zp", 2, 8, 8, "s", "ADD: second input's zero point"),
    _f("out_zp", 2, 16, 8, "s", "Output zero point; also written into padded output channels"),
    _f("in_h", 3, 0, 16, "u", "Input height"),
    _f("in_w", 3, 16, 16, "u", "Input width"),
    _f("in_c", 4, 0, 16, "u", "Input channels"),
    _f("in_cp", 4, 16, 16, "u", "Input channels padded: in_c rounded up to c_par"),
    _f("out_h", 5, 0, 16, "u", "Output height (after a fused max pool)"),
    _f("out_w", 5, 16, 16, "u", "Output width"),
    _f("out_c", 6, 0, 16, "u", "Output channels"),
    _f("out_cp", 6, 16, 16, "u", "Output channels padded: out_c rounded up to c_par"),
    _f("in_addr", 7, 0, 32, "u", "Input tensor (H, W, Cp) int8"),
    _f("in2_addr", 8, 0, 32, "u", "ADD: second input tensor, the shape of the first"),
    _f("out_addr", 9, 0, 32, "u", "Output tensor (out_h, out_w, out_cp) int8"),
    _f("weights_addr", 10, 0, 32, "u", "CONV: packed weights"),
    _f("params_addr", 11, 0, 32, "u", "CONV: channel parameters (bias', multiplier) per output channel"),
    _f("lut_addr", 12, 0, 32, "u", "Lookup table(s), 256 bytes each (with lut)"),
    _f("in_scale", 13, 0, 32, "f32", "AVGPOOL, GLOBAL_AVGPOOL, ADD: input scale (float32 bits)"),
    _f("in2_scale", 14, 0, 32, "f32", "ADD: second input's scale (float32 bits)"),
    _f("out_scale", 15, 0, 32, "f32", "AVGPOOL, GLOBAL_AVGPOOL, ADD: output scale (float32 bits)"),
)

HEADER_WORDS = 4
#: The program header, followed by ``count`` descriptors of DESCRIPTOR_WORDS words each.
HEADER_FIELDS: tuple[Field, ...] = (
    _f("magic", 0, 0, 32, "u", "PROGRAM_MAGIC, the bytes 'JQPG'"),
    _f("version", 1, 0, 32, "u", "ISA_VERSION the program was built for"),
    _f("config_hash", 2, 0, 32, "u", "HardwareConfig.config_hash() the program was built for"),
    _f("count", 3, 0, 32, "u", "Number of descriptors that follow"),
)

_FIELD_BY_NAME = {f.name: f for f in DESCRIPTOR_FIELDS}
#: ``ERROR_FIELD`` value when an error has no field.
NO_FIELD = 0xFF


def field_index(name: str | None) -> int:
    """Index of field ``name`` in :data:`DESCRIPTOR_FIELDS` (as in ``ERROR_FIELD``), or NO_FIELD."""
    for i, f in enumerate(DESCRIPTOR_FIELDS):
        if f.name == name:
            return i
    return NO_FIELD


def _check_table(fields: Sequence[Field], words: int) -> None:
    used = [0] * words
    for f in fields:
        mask = ((1 << f.width) - 1) << f.offset
        if f.offset + f.width > 32 or used[f.word] & mask:
            raise AssertionError(f"field {f.name} overlaps or crosses its word")
        used[f.word] |= mask


_check_table(DESCRIPTOR_FIELDS, DESCRIPTOR_WORDS)
_check_table(HEADER_FIELDS, HEADER_WORDS)


def _layout(fields: Sequence[Field], words: int) -> data.StructLayout:
    members = {}
    pos = 0
    for f in sorted(fields, key=lambda f: f.bit):
        if f.bit > pos:
            members[f"reserved_{pos}"] = unsigned(f.bit - pos)
        members[f.name] = f.shape()
        pos = f.bit + f.width
    if pos < words * 32:
        members[f"reserved_{pos}"] = unsigned(words * 32 - pos)
    return data.StructLayout(members)


def descriptor_layout() -> data.StructLayout:
    """The descriptor as an Amaranth layout of ``DESCRIPTOR_WORDS * 32`` bits (word 0 in the LSBs).

    Reserved gaps are members named ``reserved_<bit>``. Fields of kind ``"op"`` have the :class:`Op`
    enum shape; ``"s"`` fields are signed; ``"f32"`` fields are their 32 raw bits.
    """
    return _layout(DESCRIPTOR_FIELDS, DESCRIPTOR_WORDS)


def header_layout() -> data.StructLayout:
    """The program header as an Amaranth layout of ``HEADER_WORDS * 32`` bits."""
    return _layout(HEADER_FIELDS, HEADER_WORDS)


def _f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _bits_f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


# -- descriptors ------------------------------------------------------------------------------------

@dataclass
class LayerDescriptor:
    """Everything the core needs to run one layer; encodes to DESCRIPTOR_WORDS 32-bit words.

    Members are the :data:`DESCRIPTOR_FIELDS` (see ``docs/ISA.md`` for each one's meaning). Fields an
    op does not use are ignored by the core and the executor (flags that an op does not support are
    refused). Float fields hold float32 values: a Python float is rounded to float32 on construction,
    the same rounding the golden model applies to a scale.
    """

    op: Op = Op.CONV
    depthwise: bool = False
    lut: bool = False
    lut_per_channel: bool = False
    fuse_maxpool: bool = False
    ceil_mode: bool = False
    count_include_pad: bool = False
    kh: int = 1
    kw: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_t: int = 0
    pad_l: int = 0
    pad_b: int = 0
    pad_r: int = 0
    clamp_lo: int = -128
    clamp_hi: int = 127
    in_zp: int = 0
    in2_zp: int = 0
    out_zp: int = 0
    in_h: int = 1
    in_w: int = 1
    in_c: int = 1
    in_cp: int = 1
    out_h: int = 1
    out_w: int = 1
    out_c: int = 1
    out_cp: int = 1
    in_addr: int = 0
    in2_addr: int = 0
    out_addr: int = 0
    weights_addr: int = 0
    params_addr: int = 0
    lut_addr: int = 0
    in_scale: float = 1.0
    in2_scale: float = 1.0
    out_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in DESCRIPTOR_FIELDS:
            if f.kind == "f32":
                v = getattr(self, f.name)
                if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                    setattr(self, f.name, float(np.float32(v)))
        if isinstance(self.op, int) and not isinstance(self.op, Op) and self.op in Op._value2member_map_:
            self.op = Op(self.op)

    def encode(self) -> list[int]:
        """Return the DESCRIPTOR_WORDS little-endian 32-bit words of this descriptor.

        Raises
        ------
        DescriptorError
            If a field's value does not fit its encoding (BAD_OPCODE for ``op``, else PARAM_RANGE),
            naming the field and the value.
        """
        words = [0] * DESCRIPTOR_WORDS
        for f in DESCRIPTOR_FIELDS:
            words[f.word] |= _encode_field(f, getattr(self, f.name)) << f.offset
        return words

    @classmethod
    def decode(cls, words: Sequence[int]) -> LayerDescriptor:
        """Decode DESCRIPTOR_WORDS words (the inverse of :meth:`encode`).

        Raises
        ------
        DescriptorError
            If there are not DESCRIPTOR_WORDS words of 32 bits, a reserved bit is set (PARAM_RANGE),
            or ``op`` is not an :class:`Op` (BAD_OPCODE).
        """
        words = list(words)
        if len(words) != DESCRIPTOR_WORDS or not all(isinstance(w, int) and 0 <= w < 1 << 32 for w in words):
            raise DescriptorError(f"words must be {DESCRIPTOR_WORDS} integers in 0..2**32-1, not {words!r}",
                                  ErrorCode.PARAM_RANGE)
        used = [0] * DESCRIPTOR_WORDS
        values = {}
        for f in DESCRIPTOR_FIELDS:
            raw = (words[f.word] >> f.offset) & ((1 << f.width) - 1)
            used[f.word] |= ((1 << f.width) - 1) << f.offset
            values[f.name] = _decode_field(f, raw)
        for i, (w, u) in enumerate(zip(words, used, strict=True)):
            if w & ~u:
                raise DescriptorError(f"reserved bits {w & ~u:#010x} of word {i} must be 0",
                                      ErrorCode.PARAM_RANGE, field=f"reserved word {i}")
        return cls(**values)

    def to_bytes(self) -> bytes:
        """The encoded descriptor as DESCRIPTOR_BYTES little-endian bytes."""
        return struct.pack(f"<{DESCRIPTOR_WORDS}I", *self.encode())

    @classmethod
    def from_bytes(cls, raw: bytes) -> LayerDescriptor:
        """Decode DESCRIPTOR_BYTES little-endian bytes."""
        if len(raw) != DESCRIPTOR_BYTES:
            raise DescriptorError(f"a descriptor is {DESCRIPTOR_BYTES} bytes, not {len(raw)}",
                                  ErrorCode.BAD_LENGTH)
        return cls.decode(struct.unpack(f"<{DESCRIPTOR_WORDS}I", raw))


def _encode_field(f: Field, value) -> int:
    if f.kind == "op":
        if isinstance(value, bool) or not isinstance(value, int) or value not in Op._value2member_map_:
            raise DescriptorError(f"op must be an Op, not {value!r}", ErrorCode.BAD_OPCODE, field="op")
        return int(value)
    if f.kind == "f32":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise DescriptorError(f"{f.name} must be a float, not {value!r}", ErrorCode.PARAM_RANGE,
                                  field=f.name)
        return _f32_bits(float(value))
    if f.kind == "bool":
        if value not in (0, 1):
            raise DescriptorError(f"{f.name} must be a bool, not {value!r}", ErrorCode.PARAM_RANGE,
                                  field=f.name)
        return int(value)
    lo, hi = f.bounds()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise DescriptorError(f"{f.name} must be an integer in {lo}..{hi} ({f.width}-bit "
                              f"{'signed' if f.signed else 'unsigned'} field), not {value!r}",
                              ErrorCode.PARAM_RANGE, field=f.name)
    return int(value) & ((1 << f.width) - 1)


def _decode_field(f: Field, raw: int):
    if f.kind == "op":
        if raw not in Op._value2member_map_:
            raise DescriptorError(f"op {raw} is not a valid opcode", ErrorCode.BAD_OPCODE, field="op")
        return Op(raw)
    if f.kind == "f32":
        return _bits_f32(raw)
    if f.kind == "bool":
        return bool(raw)
    if f.signed and raw >> (f.width - 1):
        return raw - (1 << f.width)
    return raw


# -- programs ---------------------------------------------------------------------------------------

@dataclass
class Program:
    """A header plus descriptors, as the core fetches it from PROG_BASE.

    Parameters
    ----------
    descriptors : list of LayerDescriptor
    config_hash : int
        ``HardwareConfig.config_hash()`` of the config it was compiled for.
    version : int
        ISA version; only ISA_VERSION is accepted by :meth:`from_bytes`.
    """

    descriptors: list[LayerDescriptor] = field(default_factory=list)
    config_hash: int = 0
    version: int = ISA_VERSION

    @classmethod
    def for_config(cls, cfg: HardwareConfig, descriptors: Sequence[LayerDescriptor]) -> Program:
        """A program of ``descriptors`` for ``cfg``."""
        return cls(list(descriptors), cfg.config_hash())

    def size(self) -> int:
        """Size in bytes of :meth:`to_bytes` (what PROG_LEN must hold)."""
        return 4 * HEADER_WORDS + DESCRIPTOR_BYTES * len(self.descriptors)

    def to_bytes(self) -> bytes:
        """Serialize: header words then each descriptor's words, all little-endian uint32."""
        head = struct.pack("<4I", PROGRAM_MAGIC, self.version, self.config_hash, len(self.descriptors))
        return head + b"".join(d.to_bytes() for d in self.descriptors)

    @classmethod
    def from_bytes(cls, raw: bytes, cfg: HardwareConfig | None = None) -> Program:
        """Parse a serialized program, refusing another ISA version or (given ``cfg``) another config.

        Raises
        ------
        ProgramError
            On a wrong magic, version, config hash or length; the message names expected and found.
        DescriptorError
            If a descriptor does not decode (with its index).
        """
        raw = bytes(raw)
        if len(raw) < 4 * HEADER_WORDS:
            raise ProgramError(f"program is {len(raw)} bytes, shorter than its "
                               f"{4 * HEADER_WORDS}-byte header",
                               ErrorCode.BAD_LENGTH, 4 * HEADER_WORDS, len(raw))
        magic, version, chash, count = struct.unpack_from("<4I", raw)
        if magic != PROGRAM_MAGIC:
            raise ProgramError(f"not a Jacquard program: magic {magic:#010x}, expected {PROGRAM_MAGIC:#010x}",
                               ErrorCode.BAD_MAGIC, PROGRAM_MAGIC, magic)
        if version != ISA_VERSION:
            raise ProgramError(f"program is for ISA version {version}, this is version {ISA_VERSION}; "
                               "recompile it", ErrorCode.BAD_VERSION, ISA_VERSION, version)
        if cfg is not None and chash != cfg.config_hash():
            raise ProgramError(f"program is for config hash {chash:#010x}, expected "
                               f"{cfg.config_hash():#010x} ({cfg.name}); recompile it for this config",
                               ErrorCode.BAD_CONFIG, cfg.config_hash(), chash)
        want = 4 * HEADER_WORDS + DESCRIPTOR_BYTES * count
        if len(raw) != want:
            raise ProgramError(f"program header says {count} descriptors ({want} bytes) but it is "
                               f"{len(raw)} bytes", ErrorCode.BAD_LENGTH, want, len(raw))
        descs = []
        for i in range(count):
            start = 4 * HEADER_WORDS + i * DESCRIPTOR_BYTES
            try:
                descs.append(LayerDescriptor.from_bytes(raw[start:start + DESCRIPTOR_BYTES]))
            except DescriptorError as e:
                raise DescriptorError(str(e).removeprefix("descriptor: "), e.code, index=i,
                                      field=e.field) from None
        return cls(descs, chash, version)


# -- shapes and checks ------------------------------------------------------------------------------

def padded_channels(c: int, cfg: HardwareConfig) -> int:
    """``c`` rounded up to a multiple of ``cfg.c_par``: the channel pitch of a tensor in memory."""
    return -(-c // cfg.c_par) * cfg.c_par


def conv_out_size(n: int, k: int, s: int, p0: int, p1: int) -> int:
    """Output length of a convolution (ONNX, floor): ``(n + p0 + p1 - k) // s + 1``, or 0 if none fits."""
    span = n + p0 + p1 - k
    return span // s + 1 if span >= 0 else 0


def pool_out_size(n: int, k: int, s: int, p0: int, p1: int, ceil_mode: bool) -> int:
    """Output length of an ONNX pool; with ``ceil_mode`` the last window must start inside input or p0."""
    span = n + p0 + p1 - k
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= n + p0:
        out -= 1
    return out


_LINE_BUFFER_OPS = (Op.CONV, Op.MAXPOOL, Op.AVGPOOL)


def check_descriptor(d: LayerDescriptor, cfg: HardwareConfig, index: int | None = None) -> None:
    """Check a descriptor against the ISA and ``cfg`` without looking at memory (the core does the same).

    Raises
    ------
    DescriptorError
        Naming the field and value: BAD_OPCODE, PARAM_RANGE (a field out of range, a flag the op does
        not support, a layer too large for the buffers), SHAPE (output shape inconsistent), or
        MISALIGNED (an address the op uses is not a multiple of ``cfg.dma_align``).
    """
    def fail(msg, code=ErrorCode.PARAM_RANGE, fld=None, addr=None):
        raise DescriptorError(msg, code, index=index, field=fld, address=addr)

    try:
        d.encode()
    except DescriptorError as e:
        fail(str(e).removeprefix("descriptor: "), e.code, e.field)
    op = d.op
    if op not in cfg.ops:  # the core of this config has no unit for it
        fail(f"op {op.name} is not in config {cfg.name}'s ops ({cfg.ops_names()})", ErrorCode.BAD_OPCODE,
             "op")
    for name in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c"):
        if getattr(d, name) < 1:
            fail(f"{name} must be >= 1, not {getattr(d, name)}", fld=name)
    for name, c in (("in_cp", d.in_c), ("out_cp", d.out_c)):
        if getattr(d, name) != padded_channels(c, cfg):
            fail(f"{name} must be {padded_channels(c, cfg)} ({name[:-1]} rounded up to c_par={cfg.c_par}), "
                 f"not {getattr(d, name)}", fld=name)
    if d.lut_per_channel and not d.lut:
        fail("lut_per_channel needs lut", fld="lut_per_channel")
    if d.lut and op not in (Op.CONV, Op.ADD):
        fail(f"lut is not supported by {op.name}", fld="lut")
    if d.lut and op == Op.ADD and cfg.oc_par < cfg.c_par:  # c_par sums through oc_par LUT lanes
        fail(f"lut on ADD needs oc_par >= c_par, not {cfg.oc_par} < {cfg.c_par}", fld="lut")
    if d.fuse_maxpool and op != Op.CONV:
        fail(f"fuse_maxpool is not supported by {op.name}", fld="fuse_maxpool")
    if d.depthwise and op != Op.CONV:
        fail(f"depthwise is not supported by {op.name}", fld="depthwise")
    if d.ceil_mode and op not in (Op.MAXPOOL, Op.AVGPOOL):
        fail(f"ceil_mode is not supported by {op.name}", fld="ceil_mode")
    if d.count_include_pad and op != Op.AVGPOOL:
        fail(f"count_include_pad is not supported by {op.name}", fld="count_include_pad")
    if op in (Op.CONV, Op.ADD) and d.clamp_lo > d.clamp_hi:
        fail(f"clamp_lo {d.clamp_lo} must be <= clamp_hi {d.clamp_hi}", fld="clamp_lo")

    if op in _LINE_BUFFER_OPS:
        if not 1 <= d.kh <= min(MAX_KERNEL, cfg.max_kernel_h):
            fail(f"kh must be in 1..{min(MAX_KERNEL, cfg.max_kernel_h)}, not {d.kh}", fld="kh")
        if not 1 <= d.kw <= MAX_KERNEL:
            fail(f"kw must be in 1..{MAX_KERNEL}, not {d.kw}", fld="kw")
        for name in ("stride_h", "stride_w"):
            if not 1 <= getattr(d, name) <= MAX_STRIDE:
                fail(f"{name} must be in 1..{MAX_STRIDE}, not {getattr(d, name)}", fld=name)
        for name, k in (("pad_t", d.kh), ("pad_b", d.kh), ("pad_l", d.kw), ("pad_r", d.kw)):
            if getattr(d, name) > k - 1:
                fail(f"{name} must be in 0..{k - 1} (kernel - 1), not {getattr(d, name)}", fld=name)
        if d.in_w > cfg.max_width:
            fail(f"in_w {d.in_w} exceeds max_width {cfg.max_width}", fld="in_w")
        need = (d.kh - 1) * d.in_w * d.in_cp
        if need > cfg.line_buffer_bytes:
            fail(f"line buffer needs (kh-1)*in_w*in_cp = {need} bytes, more than {cfg.line_buffer_bytes}",
                 fld="in_w")

    if op == Op.CONV:
        oh = conv_out_size(d.in_h, d.kh, d.stride_h, d.pad_t, d.pad_b)
        ow = conv_out_size(d.in_w, d.kw, d.stride_w, d.pad_l, d.pad_r)
        if d.fuse_maxpool:
            oh, ow = oh // 2, ow // 2
        if d.depthwise and d.out_c != d.in_c:
            fail(f"depthwise needs out_c == in_c ({d.in_c}), not {d.out_c}", ErrorCode.SHAPE, "out_c")
        if d.depthwise and cfg.oc_par < cfg.c_par:
            fail(f"depthwise needs oc_par >= c_par, and {cfg.name} has oc_par={cfg.oc_par} < "
                 f"c_par={cfg.c_par}", fld="depthwise")
        # The weight buffer holds oc_par x c_par blocks, one per tap of an oc tile; a depthwise tap
        # also takes a whole block (the PE array uses its diagonal).
        taps = d.kh * d.kw * (1 if d.depthwise else -(-d.in_c // cfg.c_par))
        tile = taps * cfg.oc_par * cfg.c_par
        if tile > cfg.weight_buffer_bytes:
            fail(f"one output-channel tile of weights is {tile} bytes, more than the weight buffer's "
                 f"{cfg.weight_buffer_bytes}", fld="in_c")
    elif op in (Op.MAXPOOL, Op.AVGPOOL):
        oh = pool_out_size(d.in_h, d.kh, d.stride_h, d.pad_t, d.pad_b, d.ceil_mode)
        ow = pool_out_size(d.in_w, d.kw, d.stride_w, d.pad_l, d.pad_r, d.ceil_mode)
    elif op == Op.GLOBAL_AVGPOOL:
        oh = ow = 1
    else:  # ADD
        oh, ow = d.in_h, d.in_w
    if op != Op.CONV and d.out_c != d.in_c:
        fail(f"out_c must equal in_c ({d.in_c}) for {op.name}, not {d.out_c}", ErrorCode.SHAPE, "out_c")
    if (d.out_h, d.out_w) != (oh, ow) or oh < 1 or ow < 1:
        fail(f"output is {oh}x{ow} for this input and kernel, but out_h x out_w is {d.out_h}x{d.out_w}",
             ErrorCode.SHAPE, "out_h" if d.out_h != oh else "out_w")

    for name in _scale_fields(op):
        v = getattr(d, name)
        if not (math.isfinite(v) and v > 0):
            fail(f"{name} must be finite and > 0, not {v!r}", fld=name)
    global_pool = op == Op.GLOBAL_AVGPOOL or (
        op == Op.AVGPOOL and (d.kh, d.kw) == (d.in_h, d.in_w) and not (d.pad_t | d.pad_l | d.pad_b | d.pad_r))
    if global_pool:
        # onnxruntime's global average pool requantizes with M = x_scale / (y_scale * H * W) in
        # float32 and refuses M outside [2**-32, 256) or images of 2**24 pixels or more.
        image = d.in_h * d.in_w
        with np.errstate(all="ignore"):  # an overflow to inf or 0 is refused just below
            m = np.float32(d.in_scale) / (np.float32(d.out_scale) * np.float32(image))
        if image >= 1 << 24 or not np.float32(2.0**-32) <= m < np.float32(256):
            fail(f"in_scale / (out_scale * in_h * in_w) = {m!r} is outside [2**-32, 256)", fld="in_scale")
    for r in regions(d, cfg):
        if r.addr % cfg.dma_align:
            fail(f"{r.field} {r.addr:#x} is not a multiple of dma_align={cfg.dma_align}",
                 ErrorCode.MISALIGNED, r.field, r.addr)


def _scale_fields(op: Op) -> tuple[str, ...]:
    if op in (Op.AVGPOOL, Op.GLOBAL_AVGPOOL):
        return ("in_scale", "out_scale")
    if op == Op.ADD:
        return ("in_scale", "in2_scale", "out_scale")
    return ()


def param_entries(cout: int, cfg: HardwareConfig) -> int:
    """Number of channel-parameter entries for ``cout`` channels: rounded up to ``lcm(c_par, oc_par)``."""
    return -(-cout // cfg.param_align) * cfg.param_align


def weights_size(cfg: HardwareConfig, cout: int, kh: int, kw: int, cin: int, *,
                 depthwise: bool = False) -> int:
    """Bytes of packed weights for a conv of ``cout`` outputs over ``cin`` inputs (depthwise: cin = cout)."""
    if depthwise:
        return -(-cout // cfg.c_par) * kh * kw * cfg.c_par
    return -(-cout // cfg.oc_par) * kh * kw * -(-cin // cfg.c_par) * cfg.oc_par * cfg.c_par


def lut_size(d: LayerDescriptor) -> int:
    """Bytes of the lookup table(s): 256, or 256 per padded output channel."""
    return 256 * (d.out_cp if d.lut_per_channel else 1)


@dataclass(frozen=True)
class Region:
    """A byte range ``[addr, addr + size)`` a descriptor reads or (``output``) writes."""

    field: str
    addr: int
    size: int
    output: bool = False

    @property
    def end(self) -> int:
        return self.addr + self.size

    def overlaps(self, other: Region) -> bool:
        return self.addr < other.end and other.addr < self.end


def regions(d: LayerDescriptor, cfg: HardwareConfig) -> list[Region]:
    """Memory regions the op uses, inputs first, output last (by address field name)."""
    out = [Region("in_addr", d.in_addr, d.in_h * d.in_w * d.in_cp)]
    if d.op == Op.ADD:
        out.append(Region("in2_addr", d.in2_addr, d.in_h * d.in_w * d.in_cp))
    if d.op == Op.CONV:
        out.append(Region("weights_addr", d.weights_addr,
                          weights_size(cfg, d.out_c, d.kh, d.kw, d.in_c, depthwise=d.depthwise)))
        out.append(Region("params_addr", d.params_addr, 8 * param_entries(d.out_c, cfg)))
    if d.lut:
        out.append(Region("lut_addr", d.lut_addr, lut_size(d)))
    out.append(Region("out_addr", d.out_addr, d.out_h * d.out_w * d.out_cp, output=True))
    return out


def check_regions(d: LayerDescriptor, cfg: HardwareConfig, base: int, limit: int, *,
                  index: int | None = None, reserved: Sequence[Region] = ()) -> None:
    """Check that every region lies in the window ``[base, limit)`` and the output overlaps nothing.

    ``reserved`` are further regions the output must not overwrite (the program itself).

    Raises
    ------
    DescriptorError
        WINDOW or OVERLAP, naming the descriptor index, the address field and the address.
    """
    rs = regions(d, cfg)
    for r in rs:
        if r.addr < base or r.end > limit:
            raise DescriptorError(f"{r.field} region [{r.addr:#x}, {r.end:#x}) falls outside memory "
                                  f"[{base:#x}, {limit:#x})", ErrorCode.WINDOW, index=index,
                                  field=r.field, address=r.addr)
    o = rs[-1]
    for r in [*rs[:-1], *reserved]:
        if o.size and r.size and o.overlaps(r):
            raise DescriptorError(f"out_addr region [{o.addr:#x}, {o.end:#x}) overlaps {r.field} region "
                                  f"[{r.addr:#x}, {r.end:#x})", ErrorCode.OVERLAP, index=index,
                                  field="out_addr", address=o.addr)


def validate_program(program: Program, cfg: HardwareConfig, base: int, limit: int,
                     prog_addr: int | None = None) -> None:
    """Check a whole program against ``cfg`` and the memory window ``[base, limit)``.

    Parameters
    ----------
    prog_addr : int, optional
        Where the program sits in memory; no output may overwrite it.

    Raises
    ------
    ProgramError
        If the program's version or config hash is not this ISA's and ``cfg``'s.
    DescriptorError
        For the first bad descriptor, with its index.
    """
    if program.version != ISA_VERSION:
        raise ProgramError(f"program is for ISA version {program.version}, this is version {ISA_VERSION}",
                           ErrorCode.BAD_VERSION, ISA_VERSION, program.version)
    if program.config_hash != cfg.config_hash():
        raise ProgramError(f"program is for config hash {program.config_hash:#010x}, expected "
                           f"{cfg.config_hash():#010x} ({cfg.name})", ErrorCode.BAD_CONFIG,
                           cfg.config_hash(), program.config_hash)
    reserved = [] if prog_addr is None else [Region("program", prog_addr, program.size())]
    for i, d in enumerate(program.descriptors):
        check_descriptor(d, cfg, index=i)
        check_regions(d, cfg, base, limit, index=i, reserved=reserved)


# -- packing ----------------------------------------------------------------------------------------

def _int8(name: str, x, ndim: int) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.int8 or x.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D int8 ndarray, not "
                         f"{type(x).__name__ if not isinstance(x, np.ndarray) else (x.dtype, x.shape)}")
    return x


def pack_tensor(x: np.ndarray, cfg: HardwareConfig, zero_point: int) -> bytes:
    """Lay out an ``(H, W, C)`` or ``(1, H, W, C)`` int8 tensor NHWC, channels padded with ``zero_point``."""
    if isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    _int8("x", x, 3)
    h, w, c = x.shape
    out = np.full((h, w, padded_channels(c, cfg)), zero_point, dtype=np.int8)
    out[..., :c] = x
    return out.tobytes()


def unpack_tensor(buf, h: int, w: int, c: int, cfg: HardwareConfig) -> np.ndarray:
    """Read an ``(H, W, C)`` int8 tensor from its padded NHWC bytes (padded channels dropped)."""
    cp = padded_channels(c, cfg)
    arr = np.frombuffer(bytes(buf), dtype=np.int8)
    if arr.size != h * w * cp:
        raise ValueError(f"buf must be {h * w * cp} bytes for ({h}, {w}, {c}) at c_par={cfg.c_par}, "
                         f"not {arr.size}")
    return arr.reshape(h, w, cp)[..., :c].copy()


def pack_weights(w: np.ndarray, cfg: HardwareConfig, *, depthwise: bool = False) -> bytes:
    """Pack OHWI int8 weights in the PE array's order (see the module docstring).

    Parameters
    ----------
    w : ndarray
        int8 ``(Cout, KH, KW, Cin)``; depthwise ``(C, KH, KW, 1)``.
    depthwise : bool
        Pack as a depthwise conv (groups = C).

    Raises
    ------
    ValueError
        On a wrong dtype or shape.
    """
    _int8("w", w, 4)
    cout, kh, kw, cin = w.shape
    if depthwise:
        if cin != 1:
            raise ValueError(f"depthwise weights must have shape (C, KH, KW, 1), not {w.shape}")
        nct = -(-cout // cfg.c_par)
        buf = np.zeros((nct * cfg.c_par, kh, kw), dtype=np.int8)
        buf[:cout] = w[..., 0]
        return buf.reshape(nct, cfg.c_par, kh, kw).transpose(0, 2, 3, 1).tobytes()
    not_, nct = -(-cout // cfg.oc_par), -(-cin // cfg.c_par)
    buf = np.zeros((not_ * cfg.oc_par, kh, kw, nct * cfg.c_par), dtype=np.int8)
    buf[:cout, :, :, :cin] = w
    blocks = buf.reshape(not_, cfg.oc_par, kh, kw, nct, cfg.c_par)
    return blocks.transpose(0, 2, 3, 4, 1, 5).tobytes()


def unpack_weights(buf, cfg: HardwareConfig, cout: int, kh: int, kw: int, cin: int, *,
                   depthwise: bool = False) -> np.ndarray:
    """Inverse of :func:`pack_weights`: OHWI int8 weights (depthwise: ``(C, KH, KW, 1)``, cin ignored)."""
    arr = np.frombuffer(bytes(buf), dtype=np.int8)
    size = weights_size(cfg, cout, kh, kw, cin, depthwise=depthwise)
    if arr.size != size:
        raise ValueError(f"buf must be {size} bytes of packed weights, not {arr.size}")
    if depthwise:
        nct = -(-cout // cfg.c_par)
        w = arr.reshape(nct, kh, kw, cfg.c_par).transpose(0, 3, 1, 2).reshape(nct * cfg.c_par, kh, kw)
        return w[:cout, :, :, None].copy()
    not_, nct = -(-cout // cfg.oc_par), -(-cin // cfg.c_par)
    w = arr.reshape(not_, kh, kw, nct, cfg.oc_par, cfg.c_par).transpose(0, 4, 1, 2, 3, 5)
    return w.reshape(not_ * cfg.oc_par, kh, kw, nct * cfg.c_par)[:cout, :, :, :cin].copy()


def fold_bias(bias: np.ndarray, w: np.ndarray, x_zero_point: int) -> np.ndarray:
    """Fold the input zero point into the bias: ``bias' = bias - zx * sum(w over taps and inputs)``.

    The hardware accumulates ``bias' + sum(w * x)`` with padding taps holding ``zx``, which equals
    ``bias + sum(w * (x - zx))`` exactly. The result wraps to int32 like the accumulator, so it is exact
    whenever the true accumulator fits int32.

    Raises
    ------
    ValueError
        If ``bias`` is not int32 ``(Cout,)`` or ``w`` is not int8 OHWI, or ``x_zero_point`` is not int8.
    """
    _int8("w", w, 4)
    if not isinstance(bias, np.ndarray) or bias.dtype != np.int32 or bias.shape != (w.shape[0],):
        raise ValueError(f"bias must be an int32 ndarray of shape ({w.shape[0]},), not {bias!r}")
    if isinstance(x_zero_point, bool) or not isinstance(x_zero_point, (int, np.integer)) \
            or not -128 <= x_zero_point <= 127:
        raise ValueError(f"x_zero_point must be an integer in -128..127, not {x_zero_point!r}")
    total = w.astype(np.int64).sum(axis=(1, 2, 3))
    folded = bias.astype(np.int64) - int(x_zero_point) * total
    return folded.astype(np.uint64).astype(np.uint32).view(np.int32)


def pack_channel_params(bias_folded: np.ndarray, multiplier: np.ndarray, cfg: HardwareConfig) -> bytes:
    """Pack per-channel ``(bias', multiplier)`` as 8-byte entries, zero-padded to :func:`param_entries`.

    Parameters
    ----------
    bias_folded : ndarray
        int32 ``(Cout,)``, the bias with the input zero point folded in (:func:`fold_bias`).
    multiplier : ndarray
        float32 ``(Cout,)`` requantization multipliers (``golden.requant_multiplier``).

    Raises
    ------
    ValueError
        On a wrong dtype or shape.
    """
    if not isinstance(bias_folded, np.ndarray) or bias_folded.dtype != np.int32 or bias_folded.ndim != 1:
        raise ValueError(f"bias_folded must be a 1-D int32 ndarray, not {bias_folded!r}")
    m = np.asarray(multiplier)
    if m.dtype != np.float32 or m.shape != bias_folded.shape:
        raise ValueError(f"multiplier must be float32 of shape {bias_folded.shape}, not {m.dtype} {m.shape}")
    n = param_entries(bias_folded.shape[0], cfg)
    out = np.zeros((n, 2), dtype="<u4")
    out[:len(m), 0] = bias_folded.view(np.uint32)
    out[:len(m), 1] = m.view(np.uint32)
    return out.tobytes()


def unpack_channel_params(buf, cfg: HardwareConfig, cout: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_channel_params`: ``(bias' int32 (Cout,), multiplier float32 (Cout,))``."""
    arr = np.frombuffer(bytes(buf), dtype="<u4")
    n = param_entries(cout, cfg)
    if arr.size != 2 * n:
        raise ValueError(f"buf must be {8 * n} bytes of channel params for {cout} channels, "
                         f"not {4 * arr.size}")
    arr = arr.reshape(n, 2)[:cout].astype(np.uint32)
    return arr[:, 0].view(np.int32).copy(), arr[:, 1].view(np.float32).copy()


def pack_lut(lut: np.ndarray, cfg: HardwareConfig) -> bytes:
    """Lay out a ``(256,)`` table, or ``(C, 256)`` tables padded with zero rows to ``padded_channels(C)``."""
    if not isinstance(lut, np.ndarray) or lut.dtype != np.int8 or lut.shape[-1:] != (256,) or lut.ndim > 2:
        raise ValueError(f"lut must be int8 of shape (256,) or (C, 256), not {lut!r}")
    if lut.ndim == 1:
        return lut.tobytes()
    out = np.zeros((padded_channels(lut.shape[0], cfg), 256), dtype=np.int8)
    out[:lut.shape[0]] = lut
    return out.tobytes()


def unpack_lut(buf, cfg: HardwareConfig, channels: int | None) -> np.ndarray:
    """Inverse of :func:`pack_lut`: ``(256,)`` if ``channels`` is None, else ``(channels, 256)``."""
    arr = np.frombuffer(bytes(buf), dtype=np.int8)
    rows = 1 if channels is None else padded_channels(channels, cfg)
    if arr.size != 256 * rows:
        raise ValueError(f"buf must be {256 * rows} bytes of lookup tables, not {arr.size}")
    return arr.copy() if channels is None else arr.reshape(rows, 256)[:channels].copy()


# -- documentation ----------------------------------------------------------------------------------

def _field_table(fields: Sequence[Field]) -> list[str]:
    kinds = {"u": "u{w}", "s": "s{w}", "bool": "bool", "f32": "f32", "op": "Op"}
    lines = ["| Word | Bits | Field | Type | Meaning |", "|---|---|---|---|---|"]
    for f in fields:
        bits = f"{f.offset + f.width - 1}:{f.offset}" if f.width > 1 else f"{f.offset}"
        lines.append(f"| {f.word} | {bits} | `{f.name}` | {kinds[f.kind].format(w=f.width)} | {f.doc} |")
    return lines


def _enum_table(cls, title: str) -> list[str]:
    import inspect
    src = inspect.getsource(cls)
    docs = {}
    for line in src.splitlines():
        name, _, rest = line.strip().partition("=")
        if "#:" in rest:
            docs[name.strip()] = rest.split("#:", 1)[1].strip()
    lines = [f"| Code | {title} | Meaning |", "|---|---|---|"]
    for m in cls:
        lines.append(f"| {int(m)} | `{m.name}` | {docs.get(m.name, '')} |")
    return lines


def isa_markdown() -> str:
    """The generated part of ``docs/ISA.md``: versions, field tables, ops, error codes, configs, registers."""
    from jacquard.sim.isa_regs import registers_markdown

    out = [f"ISA version **{ISA_VERSION}**, program magic `{PROGRAM_MAGIC:#010x}` (bytes `JQPG`), "
           f"descriptor size {DESCRIPTOR_WORDS} words ({DESCRIPTOR_BYTES} bytes).", "",
           "### Program header", "", *_field_table(HEADER_FIELDS), "",
           "### Layer descriptor", "", *_field_table(DESCRIPTOR_FIELDS), "",
           "### Ops", "", *_enum_table(Op, "Op"), "",
           "### Error codes", "", *_enum_table(ErrorCode, "ErrorCode"), "",
           "### Hardware configs", "",
           "| Name | c_par | oc_par | MACs | max_width | line_buffer_rows | line_buffer_bytes | "
           "weight_buffer_bytes | param_buffer_entries | dma_align | clock MHz | ops | config_hash |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in CONFIGS.values():
        out.append(f"| `{c.name}` | {c.c_par} | {c.oc_par} | {c.macs} | {c.max_width} | "
                   f"{c.line_buffer_rows} | {c.line_buffer_bytes} | {c.weight_buffer_bytes} | "
                   f"{c.param_buffer_entries} | {c.dma_align} | {c.clock_mhz:g} | "
                   f"{'all' if c.ops == frozenset(Op) else c.ops_names()} | `{c.config_hash():#010x}` |")
    out += ["", *registers_markdown()]
    return "\n".join(out) + "\n"


BEGIN_MARK = "<!-- BEGIN GENERATED: python -m jacquard.sim.isa --markdown -->"
END_MARK = "<!-- END GENERATED -->"


def update_doc(path: str) -> bool:
    """Replace the generated section of ``path`` (between the markers) by :func:`isa_markdown`.

    Returns True if the file changed.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, sep, rest = text.partition(BEGIN_MARK)
    _, sep2, tail = rest.partition(END_MARK)
    if not sep or not sep2:
        raise ValueError(f"{path} has no '{BEGIN_MARK}' ... '{END_MARK}' section")
    new = f"{head}{BEGIN_MARK}\n{isa_markdown()}{END_MARK}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jacquard.sim.isa", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the generated ISA tables")
    parser.add_argument("--update", metavar="ISA_MD", help="rewrite the generated section of this file")
    args = parser.parse_args(argv)
    if args.update:
        print(f"{args.update}: {'updated' if update_doc(args.update) else 'up to date'}")
    if args.markdown or not args.update:
        sys.stdout.write(isa_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
