"""The reference executor against direct golden-op calls: random layers of every kind, a 3-layer program,
and refused programs that must leave memory untouched."""

import dataclasses

import numpy as np
import pytest

from jacquard.sim import golden
from jacquard.sim.executor import execute
from jacquard.sim.isa import (
    CONFIGS,
    DescriptorError,
    ErrorCode,
    HardwareConfig,
    LayerDescriptor,
    Op,
    Program,
    ProgramError,
    conv_out_size,
    fold_bias,
    pack_channel_params,
    pack_lut,
    pack_tensor,
    pack_weights,
    padded_channels,
    pool_out_size,
    unpack_tensor,
)

SMALL = CONFIGS["sim-small"]
ULX = CONFIGS["ulx3s-85f"]


class Image:
    """A device memory image with a bump allocator, filled with random bytes so stray reads show."""

    def __init__(self, cfg: HardwareConfig, rng: np.random.Generator, size: int = 1 << 16, base: int = 0):
        self.cfg, self.base = cfg, base
        self.mem = rng.integers(0, 256, size, dtype=np.uint8)
        self.next = base + 4 * int(rng.integers(0, 8))

    def alloc(self, size: int) -> int:
        addr = self.next
        self.next += -(-size // self.cfg.dma_align) * self.cfg.dma_align + self.cfg.dma_align
        assert self.next <= self.base + self.mem.size, "test image too small"
        return addr

    def put(self, raw: bytes) -> int:
        addr = self.alloc(len(raw))
        self.mem[addr - self.base:addr - self.base + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        return addr

    def tensor(self, x: np.ndarray, zp: int) -> int:
        return self.put(pack_tensor(x, self.cfg, zp))

    def out(self, h: int, w: int, c: int) -> int:
        return self.alloc(h * w * padded_channels(c, self.cfg))

    def get(self, addr: int, h: int, w: int, c: int) -> np.ndarray:
        raw = self.mem[addr - self.base:addr - self.base + h * w * padded_channels(c, self.cfg)]
        return unpack_tensor(raw, h, w, c, self.cfg)[None]

    def padding_of(self, addr: int, h: int, w: int, c: int) -> np.ndarray:
        cp = padded_channels(c, self.cfg)
        raw = self.mem[addr - self.base:addr - self.base + h * w * cp]
        return raw.view(np.int8).reshape(h, w, cp)[..., c:]


def i8(rng, shape) -> np.ndarray:
    return rng.integers(-128, 128, shape, dtype=np.int8)


def zp(rng) -> int:
    return int(rng.integers(-128, 128))


def scale(rng) -> float:
    return float(np.float32(rng.uniform(0.005, 0.2)))


def check(got: np.ndarray, want: np.ndarray, seed, what: str) -> None:
    assert got.shape == want.shape, f"seed={seed} {what}: shape {got.shape}, expected {want.shape}"
    bad = np.argwhere(got != want)
    if bad.size:
        i = tuple(bad[0])
        raise AssertionError(f"seed={seed} {what}: {len(bad)} mismatches, first at {i}: "
                             f"expected {want[i]}, got {got[i]}")


def run_one(img: Image, d: LayerDescriptor) -> np.ndarray:
    """Execute one descriptor; check that it wrote its output (with zero-point padding) and nothing else."""
    before = img.mem.copy()
    execute(Program.for_config(img.cfg, [d]), img.mem, img.cfg, base=img.base)
    out = slice(d.out_addr - img.base, d.out_addr - img.base + d.out_h * d.out_w * d.out_cp)
    changed = np.flatnonzero(img.mem != before)
    assert changed.size == 0 or (changed.min() >= out.start and changed.max() < out.stop), \
        f"wrote outside the output region: addresses {changed[:5] + img.base}"
    assert (img.padding_of(d.out_addr, d.out_h, d.out_w, d.out_c) == d.out_zp).all(), \
        "padded output channels must hold out_zp"
    return img.get(d.out_addr, d.out_h, d.out_w, d.out_c)


# -- conv layers ------------------------------------------------------------------------------------

def conv_layer(img: Image, rng, *, depthwise=False, fc=False, lut=None, fuse=False):
    """A random conv layer: returns (descriptor, expected output from direct golden calls)."""
    cfg = img.cfg
    if fc:
        h = w = kh = kw = 1
        sh = sw = 1
        pads = (0, 0, 0, 0)
        cin = int(rng.integers(1, 70))
    else:
        h, w = (int(v) for v in rng.integers(2, 13, 2))
        kh, kw = (int(v) for v in rng.integers(1, 6, 2))
        kh, kw = min(kh, h + 1), min(kw, w + 1)
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
        cin = int(rng.integers(1, 20))
    cout = cin if depthwise else int(rng.integers(1, 21))
    oh = conv_out_size(h, kh, sh, pads[0], pads[2])
    ow = conv_out_size(w, kw, sw, pads[1], pads[3])
    if oh < 1 or ow < 1 or (fuse and (oh < 2 or ow < 2)):
        return conv_layer(img, rng, depthwise=depthwise, fc=fc, lut=lut, fuse=fuse)
    x = i8(rng, (1, h, w, cin))
    wt = i8(rng, (cout, kh, kw, 1 if depthwise else cin))
    bias = rng.integers(-2**16, 2**16, cout).astype(np.int32)
    zx, zy = zp(rng), zp(rng)
    groups = cin if depthwise else 1
    # Scales such that the outputs spread over int8 instead of saturating.
    acc = golden.conv2d_acc(x, zx, wt, bias, stride=(sh, sw), pads=pads, groups=groups)
    sx, sw_c = scale(rng), rng.uniform(0.001, 0.01, cout).astype(np.float32)
    sy = float(np.float32(sx * float(sw_c.mean()) * (float(acc.std()) + 1) / 40))
    m = golden.requant_multiplier(sx, sw_c, sy)
    relu = rng.integers(0, 3)
    lo, hi = (-128, 127) if relu == 0 else (zy, 127) if relu == 1 else (zy, min(127, zy + 50))
    if fc:
        want = golden.fully_connected(x[:, 0, 0, :], zx, wt[:, 0, 0, :], bias, m, zy, lo, hi)
        want = want[:, None, None, :]
    else:
        want = golden.qconv2d(x, zx, wt, bias, m, zy, stride=(sh, sw), pads=pads, groups=groups, lo=lo, hi=hi)
    d = LayerDescriptor(op=Op.CONV, depthwise=depthwise, kh=kh, kw=kw, stride_h=sh, stride_w=sw,
                        pad_t=pads[0], pad_l=pads[1], pad_b=pads[2], pad_r=pads[3], clamp_lo=lo, clamp_hi=hi,
                        in_zp=zx, out_zp=zy, in_h=h, in_w=w, in_c=cin, in_cp=padded_channels(cin, cfg),
                        out_h=oh, out_w=ow, out_c=cout, out_cp=padded_channels(cout, cfg),
                        in_addr=img.tensor(x, zp(rng)),  # padded input channels hold anything
                        weights_addr=img.put(pack_weights(wt, cfg, depthwise=depthwise)),
                        params_addr=img.put(pack_channel_params(fold_bias(bias, wt, zx), m, cfg)))
    if lut is not None:
        table = i8(rng, (cout, 256) if lut == "channel" else (256,))
        d.lut, d.lut_per_channel, d.lut_addr = True, lut == "channel", img.put(pack_lut(table, cfg))
        want = golden.apply_lut(want, table)
    if fuse:
        want = golden.max_pool(want, 2, 2, (0, 0, 0, 0), False)
        d.fuse_maxpool, d.out_h, d.out_w = True, oh // 2, ow // 2
    d.out_addr = img.out(d.out_h, d.out_w, cout)
    return d, want


CONV_KINDS = {
    "dense": {}, "depthwise": {"depthwise": True}, "fc": {"fc": True}, "lut": {"lut": "tensor"},
    "lut_per_channel": {"lut": "channel"}, "fused_maxpool": {"fuse": True},
    "depthwise_lut_fused": {"depthwise": True, "lut": "channel", "fuse": True},
}


@pytest.mark.parametrize("cfg_name", ["sim-small", "ulx3s-85f"])
@pytest.mark.parametrize("kind", list(CONV_KINDS))
def test_conv_layers_match_golden(kind, cfg_name):
    cfg = CONFIGS[cfg_name]
    for case in range(12):
        seed = [sum(map(ord, kind)), sum(map(ord, cfg_name)), case]  # printed on failure
        rng = np.random.default_rng(seed)
        img = Image(cfg, rng)
        d, want = conv_layer(img, rng, **CONV_KINDS[kind])
        check(run_one(img, d), want, seed, f"{kind} {d}")


def test_icebreaker_dense_conv_and_depthwise_refusal():
    cfg = CONFIGS["icebreaker"]
    rng = np.random.default_rng(99)
    img = Image(cfg, rng)
    d, want = conv_layer(img, rng)
    check(run_one(img, d), want, 99, "icebreaker dense")
    d, _ = conv_layer(img, rng, depthwise=True)
    with pytest.raises(DescriptorError, match="descriptor 0: depthwise needs oc_par >= c_par"):
        execute(Program.for_config(cfg, [d]), img.mem, cfg)


# -- pools and add ----------------------------------------------------------------------------------

def pool_layer(img: Image, rng, op: Op):
    cfg = img.cfg
    h, w = (int(v) for v in rng.integers(1, 14, 2))
    c = int(rng.integers(1, 20))
    x = i8(rng, (1, h, w, c))
    if op == Op.GLOBAL_AVGPOOL:
        sx, sy, zx, zy = scale(rng), scale(rng), zp(rng), zp(rng)
        want = golden.global_avg_pool(x, sx, zx, sy, zy)
        d = LayerDescriptor(op=op, in_zp=zx, out_zp=zy, in_scale=sx, out_scale=sy, out_h=1, out_w=1)
    else:
        kh, kw = int(rng.integers(1, min(h, 7) + 1)), int(rng.integers(1, min(w, 7) + 1))
        sh, sw = (int(v) for v in rng.integers(1, 5, 2))
        pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
        ceil = bool(rng.integers(0, 2))
        oh = pool_out_size(h, kh, sh, pads[0], pads[2], ceil)
        ow = pool_out_size(w, kw, sw, pads[1], pads[3], ceil)
        d = LayerDescriptor(op=op, kh=kh, kw=kw, stride_h=sh, stride_w=sw, pad_t=pads[0], pad_l=pads[1],
                            pad_b=pads[2], pad_r=pads[3], ceil_mode=ceil, out_h=oh, out_w=ow)
        if op == Op.MAXPOOL:
            want = golden.max_pool(x, (kh, kw), (sh, sw), pads, ceil)
            d.out_zp = zp(rng)  # only the padded output channels use it
        else:
            sx, sy, zx, zy = scale(rng), scale(rng), zp(rng), zp(rng)
            cip = bool(rng.integers(0, 2))
            want = golden.avg_pool(x, sx, zx, sy, zy, (kh, kw), (sh, sw), pads, ceil, cip)
            d = dataclasses.replace(d, count_include_pad=cip, in_zp=zx, out_zp=zy, in_scale=sx, out_scale=sy)
    d = dataclasses.replace(d, in_h=h, in_w=w, in_c=c, in_cp=padded_channels(c, cfg), out_c=c,
                            out_cp=padded_channels(c, cfg), in_addr=img.tensor(x, zp(rng)))
    d.out_addr = img.out(d.out_h, d.out_w, c)
    return d, want


def add_layer(img: Image, rng, a_addr=None, b_addr=None, shape=None, qa=None, qb=None):
    cfg = img.cfg
    h, w, c = shape or (int(v) for v in rng.integers(1, 12, 3))
    a = i8(rng, (1, h, w, c)) if a_addr is None else img.get(a_addr, h, w, c)
    b = i8(rng, (1, h, w, c)) if b_addr is None else img.get(b_addr, h, w, c)
    (sa, za), (sb, zb) = qa or (scale(rng), zp(rng)), qb or (scale(rng), zp(rng))
    sy, zy = scale(rng), zp(rng)
    lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2)) if rng.integers(0, 2) else (-128, 127)
    want = np.clip(golden.add(a, sa, za, b, sb, zb, sy, zy), lo, hi).astype(np.int8)
    d = LayerDescriptor(op=Op.ADD, in_zp=za, in2_zp=zb, out_zp=zy, in_scale=sa, in2_scale=sb, out_scale=sy,
                        clamp_lo=lo, clamp_hi=hi, in_h=h, in_w=w, in_c=c, in_cp=padded_channels(c, cfg),
                        out_h=h, out_w=w, out_c=c, out_cp=padded_channels(c, cfg),
                        in_addr=img.tensor(a, zp(rng)) if a_addr is None else a_addr,
                        in2_addr=img.tensor(b, zp(rng)) if b_addr is None else b_addr)
    if rng.integers(0, 2):
        per_channel = bool(rng.integers(0, 2))
        table = i8(rng, (c, 256) if per_channel else (256,))
        d.lut, d.lut_per_channel, d.lut_addr = True, per_channel, img.put(pack_lut(table, cfg))
        want = golden.apply_lut(want, table)
    d.out_addr = img.out(h, w, c)
    return d, want


@pytest.mark.parametrize("cfg_name", ["sim-small", "ulx3s-85f"])
@pytest.mark.parametrize("op", [Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.ADD], ids=lambda o: o.name)
def test_pool_and_add_layers_match_golden(op, cfg_name):
    cfg = CONFIGS[cfg_name]
    for case in range(15):
        seed = [int(op), sum(map(ord, cfg_name)), case]  # printed on failure
        rng = np.random.default_rng(seed)
        img = Image(cfg, rng)
        d, want = add_layer(img, rng) if op == Op.ADD else pool_layer(img, rng, op)
        check(run_one(img, d), want, seed, f"{op.name} {d}")


# -- a whole program --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [31, 32, 33])
def test_three_layer_program(seed):
    """conv 3x3 + ReLU -> depthwise 3x3 + LUT -> residual add of both, chained in one image."""
    rng = np.random.default_rng(seed)
    img = Image(SMALL, rng, base=0x8000_0000)
    d1, y1 = conv_layer(img, rng)
    while d1.out_h < 1 or d1.out_c < 2:
        d1, y1 = conv_layer(img, rng)
    h, w, c = d1.out_h, d1.out_w, d1.out_c
    # Layer 2 reads layer 1's output in place.
    wt = i8(rng, (c, 3, 3, 1))
    bias = rng.integers(-2**12, 2**12, c).astype(np.int32)
    m = golden.requant_multiplier(0.05, rng.uniform(0.001, 0.01, c).astype(np.float32), 0.08)
    table = i8(rng, (256,))
    zy2 = zp(rng)
    y2 = golden.apply_lut(golden.qconv2d(y1, d1.out_zp, wt, bias, m, zy2, pads=(1, 1, 1, 1), groups=c), table)
    d2 = LayerDescriptor(op=Op.CONV, depthwise=True, kh=3, kw=3, pad_t=1, pad_l=1, pad_b=1, pad_r=1,
                         in_zp=d1.out_zp, out_zp=zy2, in_h=h, in_w=w, in_c=c, in_cp=d1.out_cp, out_h=h,
                         out_w=w, out_c=c, out_cp=d1.out_cp, in_addr=d1.out_addr,
                         weights_addr=img.put(pack_weights(wt, SMALL, depthwise=True)),
                         params_addr=img.put(pack_channel_params(fold_bias(bias, wt, d1.out_zp), m, SMALL)),
                         lut=True, lut_addr=img.put(pack_lut(table, SMALL)), out_addr=img.out(h, w, c))
    sa, sb, sy, zy3 = 0.05, 0.07, 0.1, zp(rng)
    y3 = golden.add(y1, sa, d1.out_zp, y2, sb, zy2, sy, zy3)
    d3 = LayerDescriptor(op=Op.ADD, in_zp=d1.out_zp, in2_zp=zy2, out_zp=zy3, in_scale=sa, in2_scale=sb,
                         out_scale=sy, in_h=h, in_w=w, in_c=c, in_cp=d1.out_cp, out_h=h, out_w=w, out_c=c,
                         out_cp=d1.out_cp, in_addr=d1.out_addr, in2_addr=d2.out_addr,
                         out_addr=img.out(h, w, c))
    prog = Program.for_config(SMALL, [d1, d2, d3])
    raw = prog.to_bytes()
    prog_addr = img.put(raw)
    execute(Program.from_bytes(raw, SMALL), img.mem, SMALL, base=img.base, prog_addr=prog_addr)
    for k, (d, want) in enumerate(((d1, y1), (d2, y2), (d3, y3)), 1):
        check(img.get(d.out_addr, h, w, c), want, seed, f"layer {k}")


# -- refusals ---------------------------------------------------------------------------------------

def refused(img: Image, prog: Program, **kw) -> pytest.ExceptionInfo:
    before = img.mem.copy()
    with pytest.raises(ValueError) as e:
        execute(prog, img.mem, img.cfg, base=img.base, **kw)
    assert np.array_equal(img.mem, before), "a refused program must not write anything"
    return e


def test_out_of_memory_and_overlap_are_refused_with_nothing_written():
    rng = np.random.default_rng(41)
    img = Image(SMALL, rng, size=1 << 14, base=0x1000)
    d0, _ = conv_layer(img, rng)
    d1, _ = pool_layer(img, rng, Op.MAXPOOL)
    limit = img.base + img.mem.size
    cases = [
        (dataclasses.replace(d1, in_addr=limit - 4), ErrorCode.WINDOW, "in_addr", limit - 4),
        (dataclasses.replace(d1, out_addr=0x800), ErrorCode.WINDOW, "out_addr", 0x800),
        (dataclasses.replace(d0, out_addr=d0.weights_addr), ErrorCode.OVERLAP, "out_addr", d0.weights_addr),
        (dataclasses.replace(d0, out_addr=d0.in_addr + 4), ErrorCode.OVERLAP, "out_addr", d0.in_addr + 4),
        (dataclasses.replace(d0, out_addr=d0.params_addr), ErrorCode.OVERLAP, "out_addr", d0.params_addr),
        (dataclasses.replace(d0, kh=9), ErrorCode.PARAM_RANGE, "kh", None),
        (dataclasses.replace(d1, op=9), ErrorCode.BAD_OPCODE, "op", None),
    ]
    for bad, code, field, addr in cases:
        # The bad descriptor is last: the valid layers before it must not run either.
        e = refused(img, Program.for_config(SMALL, [d0, d1, bad]))
        assert isinstance(e.value, DescriptorError), e.value
        assert (e.value.index, e.value.code, e.value.field, e.value.address) == (2, code, field, addr), \
            str(e.value)
        assert str(e.value).startswith("descriptor 2: ")
        if addr is not None:
            assert f"{addr:#x}" in str(e.value)


def test_program_overwrite_and_wrong_config_are_refused():
    rng = np.random.default_rng(42)
    img = Image(SMALL, rng)
    d, _ = pool_layer(img, rng, Op.MAXPOOL)
    prog = Program.for_config(SMALL, [d])
    e = refused(img, prog, prog_addr=d.out_addr - 8)
    assert e.value.code == ErrorCode.OVERLAP and "overlaps program region" in str(e.value)
    e = refused(img, Program.for_config(ULX, [d]))
    assert isinstance(e.value, ProgramError) and e.value.code == ErrorCode.BAD_CONFIG
    e = refused(img, dataclasses.replace(prog, version=2))
    assert e.value.code == ErrorCode.BAD_VERSION and "ISA version 2" in str(e.value)


def test_bad_data_in_memory_is_reported_with_the_index():
    # A multiplier of 0.0 in the params is data the golden op refuses: the layer writes nothing.
    rng = np.random.default_rng(43)
    img = Image(SMALL, rng)
    d, _ = conv_layer(img, rng)
    img.mem[d.params_addr + 4:d.params_addr + 8] = 0
    e = refused(img, Program.for_config(SMALL, [d]))
    assert e.value.index == 0 and "multiplier must be finite and > 0" in str(e.value)


def test_memory_argument_types():
    rng = np.random.default_rng(44)
    img = Image(SMALL, rng)
    d, want = pool_layer(img, rng, Op.MAXPOOL)
    buf = bytearray(img.mem.tobytes())
    execute(Program.for_config(SMALL, [d]), buf, SMALL)
    got = unpack_tensor(bytes(buf[d.out_addr:d.out_addr + d.out_h * d.out_w * d.out_cp]), d.out_h, d.out_w,
                        d.out_c, SMALL)
    check(got[None], want, 44, "bytearray image")
    with pytest.raises(TypeError, match="memory must be a bytearray or a 1-D uint8 ndarray, not bytes"):
        execute(Program.for_config(SMALL, [d]), bytes(buf), SMALL)
    with pytest.raises(TypeError, match="of dtype int8"):
        execute(Program.for_config(SMALL, [d]), img.mem.view(np.int8), SMALL)
