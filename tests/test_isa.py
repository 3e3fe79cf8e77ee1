"""The ISA definition: descriptor and program encoding, refusals, checks, packing, register map, docs."""

import dataclasses
import itertools
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jacquard.sim import golden, taps
from jacquard.sim.isa import (
    CONFIGS,
    DESCRIPTOR_FIELDS,
    DESCRIPTOR_WORDS,
    HEADER_FIELDS,
    ISA_VERSION,
    NO_FIELD,
    PROGRAM_MAGIC,
    DescriptorError,
    ErrorCode,
    LayerDescriptor,
    Op,
    Program,
    ProgramError,
    check_descriptor,
    check_regions,
    descriptor_layout,
    field_index,
    fold_bias,
    header_layout,
    isa_markdown,
    pack_channel_params,
    pack_lut,
    pack_tensor,
    pack_weights,
    padded_channels,
    param_entries,
    pool_out_size,
    unpack_channel_params,
    unpack_lut,
    unpack_tensor,
    unpack_weights,
    weights_size,
)
from jacquard.sim.isa_regs import CORE_ID, REGISTERS, Access, register, status_error

ROOT = Path(__file__).resolve().parents[1]
SMALL = CONFIGS["sim-small"]


def random_field_value(f, rng: random.Random, extreme: str | None = None):
    """A random in-range value of field ``f``; ``extreme`` picks its lowest or highest value."""
    if f.kind == "op":
        ops = sorted(Op)
        return ops[0] if extreme == "lo" else ops[-1] if extreme == "hi" else rng.choice(ops)
    if f.kind == "bool":
        return extreme == "hi" if extreme else rng.random() < 0.5
    if f.kind == "f32":
        if extreme:
            return float(np.finfo(np.float32).tiny if extreme == "lo" else np.finfo(np.float32).max)
        return float(np.float32(rng.uniform(-1e6, 1e6) * 10.0 ** rng.randint(-30, 30)))
    lo, hi = f.bounds()
    return lo if extreme == "lo" else hi if extreme == "hi" else rng.randint(lo, hi)


def random_descriptor(rng: random.Random, extreme: str | None = None) -> LayerDescriptor:
    return LayerDescriptor(**{f.name: random_field_value(f, rng, extreme) for f in DESCRIPTOR_FIELDS})


# -- encoding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_descriptor_round_trip(seed):
    rng = random.Random(seed)
    cases = [random_descriptor(rng, "lo"), random_descriptor(rng, "hi")]
    cases += [random_descriptor(rng) for _ in range(300)]
    for k, d in enumerate(cases):
        words = d.encode()
        assert len(words) == DESCRIPTOR_WORDS and all(0 <= w < 1 << 32 for w in words)
        back = LayerDescriptor.decode(words)
        assert back == d, f"seed={seed} case {k}: {d} decoded as {back}"
        assert LayerDescriptor.from_bytes(d.to_bytes()) == d, f"seed={seed} case {k}"


def field_strategy(f):
    if f.kind == "op":
        return st.sampled_from(list(Op))
    if f.kind == "bool":
        return st.booleans()
    if f.kind == "f32":
        return st.floats(width=32, allow_nan=False)
    lo, hi = f.bounds()
    return st.integers(lo, hi)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({f.name: field_strategy(f) for f in DESCRIPTOR_FIELDS}))
def test_descriptor_round_trip_hypothesis(values):
    d = LayerDescriptor(**values)
    assert LayerDescriptor.decode(d.encode()) == d


def test_descriptor_layout_matches_field_table():
    layout = descriptor_layout()
    assert layout.size == 32 * DESCRIPTOR_WORDS
    members = dict(layout)
    for f in DESCRIPTOR_FIELDS:
        assert members[f.name].offset == f.bit, f.name
        assert members[f.name].width == f.width, f.name
    # Every other member is a reserved gap; together they cover all bits exactly once.
    covered = sorted((m.offset, m.offset + m.width) for m in members.values())
    assert covered[0][0] == 0 and covered[-1][1] == layout.size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert header_layout().size == 32 * len(HEADER_FIELDS)


@pytest.mark.parametrize("seed", [4, 5])
def test_descriptor_layout_decodes_encoded_words(seed):
    # What the RTL sees through the Amaranth layout equals what encode() put in.
    rng = random.Random(seed)
    layout = descriptor_layout()
    for _ in range(50):
        d = random_descriptor(rng)
        words = d.encode()
        view = layout.from_bits(sum(w << (32 * i) for i, w in enumerate(words)))
        for f in DESCRIPTOR_FIELDS:
            got = view[f.name]
            want = getattr(d, f.name)
            if f.kind == "f32":
                want = int(np.float32(want).view(np.uint32))
            assert int(got) == int(want), f"seed={seed}: field {f.name}: layout {got}, encoded {want}"


@pytest.mark.parametrize("f", [f for f in DESCRIPTOR_FIELDS if f.kind in ("u", "s")], ids=lambda f: f.name)
def test_out_of_range_field_is_refused(f):
    lo, hi = f.bounds()
    for bad in (lo - 1, hi + 1):
        with pytest.raises(DescriptorError, match=f"{f.name} must be an integer in {lo}..{hi}") as e:
            LayerDescriptor(**{f.name: bad}).encode()
        assert e.value.field == f.name and e.value.code == ErrorCode.PARAM_RANGE


def test_bad_op_bool_and_float_fields_are_refused():
    with pytest.raises(DescriptorError, match="op must be an Op, not 0") as e:
        LayerDescriptor(op=0).encode()
    assert e.value.code == ErrorCode.BAD_OPCODE
    with pytest.raises(DescriptorError, match="depthwise must be a bool, not 2"):
        LayerDescriptor(depthwise=2).encode()
    with pytest.raises(DescriptorError, match="in_scale must be a float, not 'x'"):
        LayerDescriptor(in_scale="x").encode()


def test_decode_refuses_bad_opcode_and_reserved_bits():
    words = LayerDescriptor().encode()
    words[0] = (words[0] & ~0xF) | 0xF
    with pytest.raises(DescriptorError, match="op 15 is not a valid opcode") as e:
        LayerDescriptor.decode(words)
    assert e.value.code == ErrorCode.BAD_OPCODE
    words = LayerDescriptor().encode()
    words[2] |= 1 << 31
    with pytest.raises(DescriptorError, match="reserved bits 0x80000000 of word 2 must be 0"):
        LayerDescriptor.decode(words)
    with pytest.raises(DescriptorError, match="must be 16 integers"):
        LayerDescriptor.decode(words[:-1])


def test_float_fields_round_to_float32():
    d = LayerDescriptor(in_scale=0.1)
    assert d.in_scale == float(np.float32(0.1))
    assert LayerDescriptor.decode(d.encode()) == d


# -- programs ---------------------------------------------------------------------------------------

def test_program_round_trip_and_header():
    rng = random.Random(7)
    prog = Program.for_config(SMALL, [random_descriptor(rng) for _ in range(5)])
    raw = prog.to_bytes()
    assert len(raw) == prog.size() == 16 + 64 * 5
    assert int.from_bytes(raw[:4], "little") == PROGRAM_MAGIC and raw[:4] == b"JQPG"
    assert Program.from_bytes(raw, SMALL) == prog
    assert Program.from_bytes(raw) == prog


def test_program_refuses_other_version_config_magic_and_length():
    prog = Program.for_config(SMALL, [LayerDescriptor()])
    raw = bytearray(prog.to_bytes())
    other = CONFIGS["ulx3s-85f"]
    with pytest.raises(ProgramError, match=f"config hash {SMALL.config_hash():#010x}, expected "
                                           f"{other.config_hash():#010x}") as e:
        Program.from_bytes(raw, other)
    assert (e.value.code, e.value.expected, e.value.found) == (ErrorCode.BAD_CONFIG, other.config_hash(),
                                                               SMALL.config_hash())
    assert isinstance(e.value, ValueError)
    bad = bytearray(raw)
    bad[4:8] = (ISA_VERSION + 1).to_bytes(4, "little")
    with pytest.raises(ProgramError, match=f"ISA version {ISA_VERSION + 1}, this is version {ISA_VERSION}"):
        Program.from_bytes(bad, SMALL)
    bad = bytearray(raw)
    bad[0] ^= 1
    with pytest.raises(ProgramError, match="not a Jacquard program") as e:
        Program.from_bytes(bad)
    assert e.value.code == ErrorCode.BAD_MAGIC
    with pytest.raises(ProgramError, match="header says 1 descriptors \\(80 bytes\\) but it is 79") as e:
        Program.from_bytes(raw[:-1])
    assert e.value.code == ErrorCode.BAD_LENGTH
    bad = bytearray(raw)
    bad[16] = 0  # descriptor 0's op
    with pytest.raises(DescriptorError, match="descriptor 0: op 0 is not a valid opcode") as e:
        Program.from_bytes(bad)
    assert e.value.index == 0


def test_config_hash_is_stable_across_processes():
    code = ("from jacquard.sim.isa import CONFIGS; "
            "print([c.config_hash() for c in CONFIGS.values()])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {str([c.config_hash() for c in CONFIGS.values()]) + "\n"}
    hashes = [c.config_hash() for c in CONFIGS.values()]
    assert len(set(hashes)) == len(hashes)
    renamed = dataclasses.replace(SMALL, name="other", clock_mhz=12.5)
    assert renamed.config_hash() == SMALL.config_hash()
    assert dataclasses.replace(SMALL, oc_par=8).config_hash() != SMALL.config_hash()


@pytest.mark.parametrize("kwargs, match", [
    ({"c_par": 3}, "c_par must be a power of two in 1..128, not 3"),
    ({"oc_par": 0}, "oc_par must be a power of two"),
    ({"max_width": 0}, "max_width must be in 1..65535, not 0"),
    ({"line_buffer_rows": 7}, "line_buffer_rows must be in 0..6, not 7"),
    ({"param_buffer_entries": 2}, "param_buffer_entries must be >= lcm"),
    ({"clock_mhz": 0}, "clock_mhz must be > 0"),
])
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **kwargs)


def test_presets():
    ulx = CONFIGS["ulx3s-85f"]
    assert ulx.macs >= 128 and ulx.macs <= 156  # the ECP5-85F has 156 multipliers
    assert CONFIGS["icebreaker"].macs <= 8      # the iCE40UP5K has 8 DSPs


# -- static checks ----------------------------------------------------------------------------------

def conv_desc(cfg=SMALL, **kw) -> LayerDescriptor:
    """A valid 3x3 pad-1 conv, 8x8x5 -> 8x8x6, at aligned, disjoint addresses."""
    d = LayerDescriptor(op=Op.CONV, kh=3, kw=3, pad_t=1, pad_l=1, pad_b=1, pad_r=1, in_h=8, in_w=8, in_c=5,
                        in_cp=padded_channels(5, cfg), out_h=8, out_w=8, out_c=6,
                        out_cp=padded_channels(6, cfg), in_addr=0, weights_addr=0x1000,
                        params_addr=0x2000, lut_addr=0x3000, out_addr=0x4000)
    return dataclasses.replace(d, **kw)


def test_valid_conv_passes():
    check_descriptor(conv_desc(), SMALL)


@pytest.mark.parametrize("kw, code, field", [
    ({"kh": 8}, ErrorCode.PARAM_RANGE, "kh"),
    ({"kw": 0}, ErrorCode.PARAM_RANGE, "kw"),
    ({"stride_h": 0}, ErrorCode.PARAM_RANGE, "stride_h"),
    ({"stride_w": 5}, ErrorCode.PARAM_RANGE, "stride_w"),
    ({"pad_r": 3}, ErrorCode.PARAM_RANGE, "pad_r"),
    ({"in_cp": 5}, ErrorCode.PARAM_RANGE, "in_cp"),
    ({"out_cp": 12}, ErrorCode.PARAM_RANGE, "out_cp"),
    ({"in_h": 0}, ErrorCode.PARAM_RANGE, "in_h"),
    ({"out_h": 7}, ErrorCode.SHAPE, "out_h"),
    ({"out_w": 4}, ErrorCode.SHAPE, "out_w"),
    ({"clamp_lo": 5, "clamp_hi": 4}, ErrorCode.PARAM_RANGE, "clamp_lo"),
    ({"lut_per_channel": True}, ErrorCode.PARAM_RANGE, "lut_per_channel"),
    ({"ceil_mode": True}, ErrorCode.PARAM_RANGE, "ceil_mode"),
    ({"count_include_pad": True}, ErrorCode.PARAM_RANGE, "count_include_pad"),
    ({"depthwise": True}, ErrorCode.SHAPE, "out_c"),
    ({"in_w": 65, "out_w": 65}, ErrorCode.PARAM_RANGE, "in_w"),
    ({"in_c": 300, "in_cp": 300}, ErrorCode.PARAM_RANGE, "in_w"),           # line buffer overflow
    ({"kh": 1, "kw": 1, "pad_t": 0, "pad_l": 0, "pad_b": 0, "pad_r": 0,
      "in_c": 1100, "in_cp": 1100}, ErrorCode.PARAM_RANGE, "in_c"),        # weight tile overflow
    ({"weights_addr": 0x1002}, ErrorCode.MISALIGNED, "weights_addr"),
    ({"op": 9}, ErrorCode.BAD_OPCODE, "op"),
    ({"pad_t": 16}, ErrorCode.PARAM_RANGE, "pad_t"),
])
def test_bad_descriptor_is_refused(kw, code, field):
    with pytest.raises(DescriptorError) as e:
        check_descriptor(conv_desc(**kw), SMALL, index=3)
    assert (e.value.code, e.value.field, e.value.index) == (code, field, 3), str(e.value)
    assert str(e.value).startswith("descriptor 3: ")


def test_flags_unsupported_by_op_are_refused():
    pool = LayerDescriptor(op=Op.MAXPOOL, kh=2, kw=2, stride_h=2, stride_w=2, in_h=4, in_w=4, in_c=4,
                           in_cp=4, out_h=2, out_w=2, out_c=4, out_cp=4, out_addr=0x100)
    check_descriptor(pool, SMALL)
    for flag in ("lut", "fuse_maxpool", "depthwise"):
        with pytest.raises(DescriptorError, match=f"{flag} is not supported by MAXPOOL"):
            check_descriptor(dataclasses.replace(pool, **{flag: True}), SMALL)
    add = dataclasses.replace(pool, op=Op.ADD, out_h=4, out_w=4, in2_addr=0x40, out_addr=0x100)
    check_descriptor(add, SMALL)
    with pytest.raises(DescriptorError, match=re.escape("in2_scale must be finite and > 0, not 0.0")):
        check_descriptor(dataclasses.replace(add, in2_scale=0.0), SMALL)
    gap = dataclasses.replace(pool, op=Op.GLOBAL_AVGPOOL, out_h=1, out_w=1)
    check_descriptor(gap, SMALL)
    with pytest.raises(DescriptorError, match="outside \\[2\\*\\*-32, 256\\)"):
        check_descriptor(dataclasses.replace(gap, in_scale=1e3, out_scale=1e-3), SMALL)


def test_depthwise_needs_oc_par_at_least_c_par():
    ice = CONFIGS["icebreaker"]
    d = conv_desc(ice, depthwise=True, in_c=4, in_cp=4, out_c=4, out_cp=4)
    with pytest.raises(DescriptorError, match="depthwise needs oc_par >= c_par"):
        check_descriptor(d, ice)
    check_descriptor(conv_desc(depthwise=True, in_c=4, in_cp=4, out_c=4, out_cp=4), SMALL)


@pytest.mark.parametrize("n, k, s, p0, p1", [(5, 2, 2, 0, 0), (6, 3, 2, 1, 1), (7, 3, 3, 0, 2),
                                             (4, 4, 4, 3, 3), (9, 5, 2, 2, 0), (3, 3, 1, 0, 0),
                                             (10, 7, 4, 6, 6)])
def test_pool_out_size_agrees_with_golden(n, k, s, p0, p1):
    for ceil in (False, True):
        assert pool_out_size(n, k, s, p0, p1, ceil) == golden.pool_output_size(n, k, s, p0, p1, ceil)
        x = np.zeros((1, n, 1, 1), dtype=np.int8)
        y = golden.max_pool(x, (k, 1), (s, 1), (p0, 0, p1, 0), ceil)
        assert y.shape[1] == pool_out_size(n, k, s, p0, p1, ceil)


def test_check_regions_window_and_overlap():
    d = conv_desc()
    check_regions(d, SMALL, 0, 0x4000 + 8 * 8 * 8)
    with pytest.raises(DescriptorError, match=r"out_addr region \[0x4000, 0x4200\) falls outside memory "
                                              r"\[0x0, 0x41ff\)") as e:
        check_regions(d, SMALL, 0, 0x41FF, index=2)
    assert (e.value.code, e.value.field, e.value.address, e.value.index) == (ErrorCode.WINDOW, "out_addr",
                                                                              0x4000, 2)
    with pytest.raises(DescriptorError, match="in_addr region") as e:
        check_regions(d, SMALL, 0x10, 0x10000)
    assert e.value.field == "in_addr"
    for name in ("in_addr", "weights_addr", "params_addr"):
        with pytest.raises(DescriptorError, match=f"overlaps {name} region") as e:
            check_regions(dataclasses.replace(d, out_addr=getattr(d, name) + 4), SMALL, 0, 0x10000)
        assert e.value.code == ErrorCode.OVERLAP and e.value.field == "out_addr"
    # The LUT is a region only when the descriptor uses it.
    check_regions(dataclasses.replace(d, lut_addr=0x4000), SMALL, 0, 0x10000)
    with pytest.raises(DescriptorError, match="overlaps lut_addr region"):
        check_regions(dataclasses.replace(d, lut=True, lut_addr=0x4000), SMALL, 0, 0x10000)


# -- packing ----------------------------------------------------------------------------------------

def loop_pack_dense(w: np.ndarray, oc_par: int, c_par: int) -> bytes:
    """The packing order written as the hardware walks it: oc_tile, ky, kx, c_tile, oc, c."""
    cout, kh, kw, cin = w.shape
    out = bytearray()
    for ot in range(-(-cout // oc_par)):
        for ky in range(kh):
            for kx in range(kw):
                for ct in range(-(-cin // c_par)):
                    for o in range(ot * oc_par, (ot + 1) * oc_par):
                        for c in range(ct * c_par, (ct + 1) * c_par):
                            v = int(w[o, ky, kx, c]) if o < cout and c < cin else 0
                            out.append(v & 0xFF)
    return bytes(out)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("seed", [11, 12])
def test_pack_weights_order_and_round_trip(name, seed):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed)
    cout, kh, kw, cin = (int(v) for v in rng.integers(1, [21, 4, 4, 19]))
    w = rng.integers(-128, 128, (cout, kh, kw, cin), dtype=np.int8)
    packed = pack_weights(w, cfg)
    assert len(packed) == weights_size(cfg, cout, kh, kw, cin)
    assert packed == loop_pack_dense(w, cfg.oc_par, cfg.c_par), f"seed={seed}"
    # The PE array's reference of its weight buffer order (sim/taps.py) agrees.
    assert packed == taps.pack_weights(w, cfg.oc_par, cfg.c_par).tobytes(), f"seed={seed}"
    np.testing.assert_array_equal(unpack_weights(packed, cfg, cout, kh, kw, cin), w)
    # Depthwise: for c_tile, for ky, for kx, c_par channels.
    wd = rng.integers(-128, 128, (cout, kh, kw, 1), dtype=np.int8)
    packed = pack_weights(wd, cfg, depthwise=True)
    nct = -(-cout // cfg.c_par)
    for c in range(cout):
        for ky in range(kh):
            for kx in range(kw):
                pos = ((c // cfg.c_par * kh + ky) * kw + kx) * cfg.c_par + c % cfg.c_par
                assert np.int8(packed[pos] - 256 if packed[pos] > 127 else packed[pos]) == wd[c, ky, kx, 0]
    assert len(packed) == nct * kh * kw * cfg.c_par == weights_size(cfg, cout, kh, kw, 1, depthwise=True)
    np.testing.assert_array_equal(unpack_weights(packed, cfg, cout, kh, kw, 1, depthwise=True), wd)


def test_pack_weights_refuses_bad_input():
    with pytest.raises(ValueError, match="w must be a 4-D int8 ndarray"):
        pack_weights(np.zeros((2, 3, 3, 4), dtype=np.int16), SMALL)
    with pytest.raises(ValueError, match="depthwise weights must have shape"):
        pack_weights(np.zeros((2, 3, 3, 4), dtype=np.int8), SMALL, depthwise=True)
    with pytest.raises(ValueError, match="buf must be 64 bytes of packed weights, not 63"):
        unpack_weights(bytes(63), SMALL, 4, 2, 2, 4)


def test_channel_params_layout_and_round_trip():
    rng = np.random.default_rng(3)
    for cout in (1, 4, 7, 16):
        bias = rng.integers(-2**31, 2**31, cout, dtype=np.int64).astype(np.int32)
        m = rng.uniform(1e-6, 10, cout).astype(np.float32)
        raw = pack_channel_params(bias, m, SMALL)
        assert len(raw) == 8 * param_entries(cout, SMALL)
        assert param_entries(cout, SMALL) % SMALL.param_align == 0
        entries = np.frombuffer(raw, dtype="<u4").reshape(-1, 2)
        # Entry layout of rtl.layouts.ChannelParamsLayout: bias in bits 31:0, multiplier bits in 63:32.
        np.testing.assert_array_equal(entries[:cout, 0].view(np.int32), bias)
        np.testing.assert_array_equal(entries[:cout, 1].view(np.float32), m)
        assert not entries[cout:].any()
        b2, m2 = unpack_channel_params(raw, SMALL, cout)
        np.testing.assert_array_equal(b2, bias)
        np.testing.assert_array_equal(m2, m)
    with pytest.raises(ValueError, match="multiplier must be float32"):
        pack_channel_params(np.zeros(3, np.int32), np.zeros(3, np.float64), SMALL)


def test_tensor_and_lut_round_trip():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (3, 5, 6), dtype=np.int8)
    raw = pack_tensor(x, SMALL, zero_point=-7)
    arr = np.frombuffer(raw, dtype=np.int8).reshape(3, 5, 8)
    np.testing.assert_array_equal(arr[..., :6], x)
    assert (arr[..., 6:] == -7).all()
    np.testing.assert_array_equal(unpack_tensor(raw, 3, 5, 6, SMALL), x)
    lut = rng.integers(-128, 128, (5, 256), dtype=np.int8)
    raw = pack_lut(lut, SMALL)
    assert len(raw) == 256 * 8
    np.testing.assert_array_equal(unpack_lut(raw, SMALL, 5), lut)
    np.testing.assert_array_equal(unpack_lut(pack_lut(lut[0], SMALL), SMALL, None), lut[0])


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_fold_bias_is_exact(seed):
    # bias' + sum(w * x) over zx-padded taps equals golden's bias + sum(w * (x - zx)).
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (1, 6, 7, 5), dtype=np.int8)
    w = rng.integers(-128, 128, (4, 3, 3, 5), dtype=np.int8)
    bias = rng.integers(-2**20, 2**20, 4).astype(np.int32)
    zx = int(rng.integers(-128, 128))
    want = golden.conv2d_acc(x, zx, w, bias, pads=(1, 1, 1, 1))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=zx)
    got = golden.conv2d_acc(xp, 0, w, fold_bias(bias, w, zx))
    assert np.array_equal(got, want), f"seed={seed}: first mismatch {np.argwhere(got != want)[:1]}"
    with pytest.raises(ValueError, match=re.escape("x_zero_point must be an integer in -128..127, not 200")):
        fold_bias(bias, w, 200)


# -- register map -----------------------------------------------------------------------------------

def test_register_map():
    offsets = [r.offset for r in REGISTERS]
    assert len(set(offsets)) == len(offsets) and all(o % 4 == 0 for o in offsets)
    names = {r.name for r in REGISTERS}
    for need in ("ID", "VERSION", "CONFIG_HASH", "CTRL", "STATUS", "PROG_BASE", "PROG_LEN", "WINDOW_BASE",
                 "WINDOW_LIMIT", "IRQ_ENABLE", "IRQ_STATUS", "CYCLES_LO", "BUSY_CYCLES_HI",
                 "MAC_ACTIVE_CYCLES_LO", "DMA_READ_BYTES_LO", "DMA_WRITE_BYTES_LO", "STALL_INPUT_LO",
                 "STALL_WEIGHTS_LO", "STALL_OUTPUT_LO", "STALL_REQUANT_LO"):
        assert need in names
    assert register("IRQ_STATUS").access == Access.W1C and register("CTRL").access == Access.WO
    for r in REGISTERS:
        assert r.layout().size == 32
    with pytest.raises(KeyError, match="no register 'NOPE'"):
        register("NOPE")
    # ERROR_FIELD holds an index into DESCRIPTOR_FIELDS, with 0xFF for none.
    assert len(DESCRIPTOR_FIELDS) < 0xFF


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_registers_describe_the_config(name):
    cfg = CONFIGS[name]
    assert register("ID").value(cfg) == CORE_ID == int.from_bytes(b"JQCD", "little")
    assert register("VERSION").unpack(register("VERSION").value(cfg))["isa"] == ISA_VERSION
    c0 = register("CONFIG0").unpack(register("CONFIG0").value(cfg))
    assert (c0["c_par"], c0["oc_par"], c0["line_buffer_rows"], c0["dma_align"]) == \
        (cfg.c_par, cfg.oc_par, cfg.line_buffer_rows, cfg.dma_align)
    assert register("CONFIG1").unpack(register("CONFIG1").value(cfg))["max_width"] == cfg.max_width
    assert register("CONFIG_HASH").value(cfg) == cfg.config_hash()
    status = register("STATUS")
    word = status.pack(error=1, error_code=int(ErrorCode.WINDOW), desc_index=5)
    assert status.unpack(word) == {"busy": 0, "done": 0, "error": 1, "error_code": 9, "desc_index": 5}
    with pytest.raises(ValueError, match=re.escape("STATUS.error_code must be in 0..255, not 256")):
        status.pack(error_code=256)


# -- docs -------------------------------------------------------------------------------------------

def test_docs_contain_current_generated_tables():
    text = (ROOT / "docs" / "ISA.md").read_text(encoding="utf-8")
    assert isa_markdown() in text, ("docs/ISA.md is out of date: run "
                                    "`.venv/bin/python -m jacquard.sim.isa --update docs/ISA.md`")


def test_markdown_cli():
    out = subprocess.run([sys.executable, "-m", "jacquard.sim.isa", "--markdown"], capture_output=True,
                         text=True, check=True).stdout
    assert out == isa_markdown()
    for f in DESCRIPTOR_FIELDS:
        assert f"`{f.name}`" in out
    for r in REGISTERS:
        assert f"| {r.name} |" in out


def test_status_error_mirrors_executor_errors():
    status = register("STATUS")
    assert status_error(status.pack(done=1)) is None
    e = status_error(status.pack(error=1, error_code=int(ErrorCode.WINDOW), desc_index=2),
                     field_index("out_addr"), 0x1234)
    assert isinstance(e, DescriptorError)
    assert (e.code, e.index, e.field, e.address) == (ErrorCode.WINDOW, 2, "out_addr", 0x1234)
    assert str(e) == "descriptor 2: core stopped with WINDOW (out_addr at 0x1234)"
    e = status_error(status.pack(error=1, error_code=int(ErrorCode.BAD_CONFIG), desc_index=0xFFFF))
    assert isinstance(e, ProgramError) and e.code == ErrorCode.BAD_CONFIG
    e = status_error(status.pack(error=1, error_code=int(ErrorCode.ABORTED), desc_index=1))
    assert (e.code, e.index, e.field) == (ErrorCode.ABORTED, 1, None)
    assert field_index("op") == 0 and field_index(None) == NO_FIELD
