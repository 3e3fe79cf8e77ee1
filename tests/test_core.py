"""JacquardCore system tests: random single layers on Icarus, bit-exact with the reference executor.

Each case is a program built directly from descriptors with the ISA's packing helpers, placed in a
memory image with its tensors; the expected image comes from ``jacquard.sim.executor.execute``.
The cocotb bench (``tests/cocotb/cocotb_core.py``) runs it on the core with AxiRam (random
back-pressure) as memory and AxiLiteMaster as the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from jacquard.rtl.core import JacquardCore
from jacquard.sim.cocotb_run import RegisteredReset, run_cocotb
from jacquard.sim.executor import execute
from jacquard.sim.isa import (
    CONFIGS,
    HardwareConfig,
    LayerDescriptor,
    Op,
    Program,
    conv_out_size,
    fold_bias,
    pack_channel_params,
    pack_lut,
    pack_tensor,
    pack_weights,
    padded_channels,
    pool_out_size,
)
from jacquard.sim.isa_regs import register, status_error

COCOTB_DIR = Path(__file__).parent / "cocotb"
CFG = CONFIGS["sim-small"]
SMOKE_SIM = "icarus"
LAYER_SIM = "verilator"  # three-layer programs take ~10k cycles; Icarus runs ~1k cycles/s here


def _align(n: int, a: int = 64) -> int:
    return -(-n // a) * a


@dataclass
class Image:
    """A device memory image under construction: the program at 0, then allocated regions."""

    cfg: HardwareConfig
    size: int
    top: int = 0x400
    data: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.data = np.zeros(self.size, dtype=np.uint8)

    def alloc(self, payload: bytes | int) -> int:
        n = payload if isinstance(payload, int) else len(payload)
        addr = self.top
        self.top = _align(addr + max(n, 1))
        if self.top > self.size:
            raise ValueError(f"image of {self.size} bytes is full")
        if not isinstance(payload, int):
            self.data[addr:addr + n] = np.frombuffer(payload, dtype=np.uint8)
        return addr

    def place_program(self, descs: list[LayerDescriptor]) -> Program:
        prog = Program.for_config(self.cfg, descs)
        raw = prog.to_bytes()
        if len(raw) > 0x400:
            raise ValueError("program larger than its 1 KiB slot")
        self.data[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        return prog


def rand_tensor(rng, h, w, c):
    return rng.integers(-128, 128, size=(h, w, c), dtype=np.int8)


def conv_layer(img: Image, rng, x_addr: int, h: int, w: int, cin: int, *, cout: int, k=(3, 3), stride=1,
               pads=(0, 0, 0, 0), depthwise=False, fuse_maxpool=False, lut=None, clamp=(-128, 127),
               in_zp=0, out_zp=0) -> tuple[LayerDescriptor, tuple[int, int, int]]:
    """A CONV descriptor with random weights/params in ``img``; returns it and the output shape."""
    cfg = img.cfg
    kh, kw = k
    if depthwise:
        cout = cin
        wts = rng.integers(-128, 128, size=(cout, kh, kw, 1), dtype=np.int8)
    else:
        wts = rng.integers(-128, 128, size=(cout, kh, kw, cin), dtype=np.int8)
    bias = rng.integers(-2000, 2000, size=cout).astype(np.int32)
    fan = kh * kw * (1 if depthwise else cin)
    mult = (rng.uniform(0.3, 2.0, size=cout) / (64.0 * np.sqrt(fan))).astype(np.float32)
    oh = conv_out_size(h, kh, stride, pads[0], pads[2])
    ow = conv_out_size(w, kw, stride, pads[1], pads[3])
    if fuse_maxpool:
        oh, ow = oh // 2, ow // 2
    d = LayerDescriptor(op=Op.CONV, depthwise=depthwise, fuse_maxpool=fuse_maxpool, kh=kh, kw=kw,
                        stride_h=stride, stride_w=stride, pad_t=pads[0], pad_l=pads[1], pad_b=pads[2],
                        pad_r=pads[3], clamp_lo=clamp[0], clamp_hi=clamp[1], in_zp=in_zp, out_zp=out_zp,
                        in_h=h, in_w=w, in_c=cin, in_cp=padded_channels(cin, cfg), out_h=oh, out_w=ow,
                        out_c=cout, out_cp=padded_channels(cout, cfg), in_addr=x_addr)
    d.weights_addr = img.alloc(pack_weights(wts, cfg, depthwise=depthwise))
    d.params_addr = img.alloc(pack_channel_params(fold_bias(bias, wts, in_zp), mult, cfg))
    if lut is not None:
        table = rng.integers(-128, 128, size=(cout, 256) if lut == "channel" else (256,), dtype=np.int8)
        d.lut, d.lut_per_channel = True, lut == "channel"
        d.lut_addr = img.alloc(pack_lut(table, cfg))
    d.out_addr = img.alloc(oh * ow * d.out_cp)
    return d, (oh, ow, cout)


def maxpool_layer(img: Image, x_addr: int, h: int, w: int, c: int, *, k=(2, 2), stride=2, pads=(0, 0, 0, 0),
                  ceil_mode=False) -> tuple[LayerDescriptor, tuple[int, int, int]]:
    cfg = img.cfg
    oh = pool_out_size(h, k[0], stride, pads[0], pads[2], ceil_mode)
    ow = pool_out_size(w, k[1], stride, pads[1], pads[3], ceil_mode)
    d = LayerDescriptor(op=Op.MAXPOOL, kh=k[0], kw=k[1], stride_h=stride, stride_w=stride, pad_t=pads[0],
                        pad_l=pads[1], pad_b=pads[2], pad_r=pads[3], ceil_mode=ceil_mode, in_h=h, in_w=w,
                        in_c=c, in_cp=padded_channels(c, cfg), out_h=oh, out_w=ow, out_c=c,
                        out_cp=padded_channels(c, cfg), in_addr=x_addr)
    d.out_addr = img.alloc(oh * ow * d.out_cp)
    return d, (oh, ow, c)


def rand_scale(rng) -> float:
    return float(np.float32(rng.uniform(0.005, 0.2)))


def avgpool_layer(img: Image, rng, x_addr: int, h: int, w: int, c: int, *, k=(2, 2), stride=2,
                  pads=(0, 0, 0, 0), ceil_mode=False, count_include_pad=False, in_zp=0,
                  out_zp=0) -> tuple[LayerDescriptor, tuple[int, int, int]]:
    """An AVGPOOL descriptor (a whole-map window without padding is the global-average path)."""
    cfg = img.cfg
    oh = pool_out_size(h, k[0], stride, pads[0], pads[2], ceil_mode)
    ow = pool_out_size(w, k[1], stride, pads[1], pads[3], ceil_mode)
    d = LayerDescriptor(op=Op.AVGPOOL, kh=k[0], kw=k[1], stride_h=stride, stride_w=stride, pad_t=pads[0],
                        pad_l=pads[1], pad_b=pads[2], pad_r=pads[3], ceil_mode=ceil_mode,
                        count_include_pad=count_include_pad, in_zp=in_zp, out_zp=out_zp,
                        in_scale=rand_scale(rng), out_scale=rand_scale(rng), in_h=h, in_w=w, in_c=c,
                        in_cp=padded_channels(c, cfg), out_h=oh, out_w=ow, out_c=c,
                        out_cp=padded_channels(c, cfg), in_addr=x_addr)
    d.out_addr = img.alloc(oh * ow * d.out_cp)
    return d, (oh, ow, c)


def gap_layer(img: Image, rng, x_addr: int, h: int, w: int, c: int, *, in_zp=0,
              out_zp=0) -> tuple[LayerDescriptor, tuple[int, int, int]]:
    cfg = img.cfg
    sx = rand_scale(rng)
    d = LayerDescriptor(op=Op.GLOBAL_AVGPOOL, in_zp=in_zp, out_zp=out_zp, in_scale=sx,
                        out_scale=float(np.float32(sx * rng.uniform(0.2, 1.2))), in_h=h, in_w=w, in_c=c,
                        in_cp=padded_channels(c, cfg), out_h=1, out_w=1, out_c=c,
                        out_cp=padded_channels(c, cfg), in_addr=x_addr)
    d.out_addr = img.alloc(d.out_cp)
    return d, (1, 1, c)


def add_layer(img: Image, rng, x_addr: int, x2_addr: int, h: int, w: int, c: int, *, in_zp=0, in2_zp=0,
              out_zp=0, clamp=(-128, 127), lut=None) -> tuple[LayerDescriptor, tuple[int, int, int]]:
    cfg = img.cfg
    d = LayerDescriptor(op=Op.ADD, in_zp=in_zp, in2_zp=in2_zp, out_zp=out_zp, in_scale=rand_scale(rng),
                        in2_scale=rand_scale(rng), out_scale=rand_scale(rng) * 1.5, clamp_lo=clamp[0],
                        clamp_hi=clamp[1], in_h=h, in_w=w, in_c=c, in_cp=padded_channels(c, cfg), out_h=h,
                        out_w=w, out_c=c, out_cp=padded_channels(c, cfg), in_addr=x_addr, in2_addr=x2_addr)
    if lut is not None:
        table = rng.integers(-128, 128, size=(c, 256) if lut == "channel" else (256,), dtype=np.int8)
        d.lut, d.lut_per_channel = True, lut == "channel"
        d.lut_addr = img.alloc(pack_lut(table, cfg))
    d.out_addr = img.alloc(h * w * d.out_cp)
    return d, (h, w, c)


def run_case(tmp_path: Path, img: Image, runs: list[dict], *, seed: int, simulator: str = "icarus",
             pause: float = 0.3, cfg: HardwareConfig = CFG) -> dict:
    """Run ``runs`` on the core; returns the bench's result dict with ``mems`` (one image per run)."""
    case = tmp_path / "case.json"
    first = tmp_path / "image0.npy"
    np.save(first, img.data)
    runs = [dict(r) for r in runs]
    runs[0].setdefault("image", str(first))
    for r in runs:
        if isinstance(r.get("image"), np.ndarray):
            path = tmp_path / f"image{id(r)}.npy"
            np.save(path, r["image"])
            r["image"] = str(path)
    case.write_text(json.dumps({"seed": seed, "ram_size": img.size, "pause": pause, "runs": runs}))
    # RegisteredReset: Verilator then evaluates the core's next-state logic once per edge, not on
    # every eval (about 4x under cocotb); the core leaves reset one cycle later.
    run_cocotb(RegisteredReset(JacquardCore(cfg)), "cocotb_core", simulator=simulator, test_dir=COCOTB_DIR,
               name="jacquard_core", parameters={"case": str(case)})
    result = json.loads((tmp_path / "case.json.result.json").read_text())
    result["mems"] = [np.load(tmp_path / f"case.json.mem{k}.npy") for k in range(len(runs))]
    return result


def program_run(img: Image, prog: Program, **extra) -> dict:
    return {"window_base": 0, "window_limit": img.size, "prog_base": 0, "prog_len": prog.size(),
            "irq_enable": 3, **extra}


def assert_same_memory(actual: np.ndarray, expected: np.ndarray, seed: int, what: str = "") -> None:
    bad = np.flatnonzero(actual != expected)
    if bad.size:
        i = int(bad[0])
        raise AssertionError(f"seed={seed} {what}: {bad.size} bytes differ; first at {i:#x}: expected "
                             f"{int(expected[i].view(np.int8))}, got {int(actual[i].view(np.int8))}")


def expect_ok(result: dict, k: int = 0) -> None:
    st = register("STATUS").unpack(result["runs"][k]["status"])
    err = status_error(result["runs"][k]["status"], result["runs"][k]["error_field"],
                       result["runs"][k]["error_addr"])
    assert st["done"] == 1 and st["error"] == 0 and st["busy"] == 0, f"STATUS {st}: {err}"


KINDS = ("conv", "depthwise", "strided", "fc", "maxpool", "lut", "fused", "avgpool", "gap", "add")


def random_layer(rng, img: Image, kind: str | None = None, small: bool = False):
    """One random layer of ``kind`` (random if None) on a random input; returns (descriptor, kind).

    ``small`` keeps maps at most 6x6 with 8 channels, for short Icarus runs.
    """
    if kind is None:
        kind = str(rng.choice(["conv", *KINDS]))
    top = 7 if small else 11
    h, w = int(rng.integers(3, top)), int(rng.integers(3, top))
    c = int(rng.integers(1, 9 if small else 13))
    zp = int(rng.integers(-20, 21))
    x = img.alloc(pack_tensor(rand_tensor(rng, h, w, c), img.cfg, zp))
    k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    k = (min(k[0], h), min(k[1], w))
    pads = tuple(int(rng.integers(0, k[i % 2])) for i in range(4))
    out_zp = int(rng.integers(-20, 21))
    common = {"in_zp": zp, "out_zp": out_zp}
    if kind == "maxpool":
        ceil = bool(rng.integers(0, 2))
        s = int(rng.integers(1, 4))
        kk = (min(int(rng.integers(1, 4)), h), min(int(rng.integers(1, 4)), w))
        pp = tuple(int(rng.integers(0, kk[i % 2])) for i in range(4))
        if ceil and (s > kk[0] or s > kk[1]):
            ceil = False
        return maxpool_layer(img, x, h, w, c, k=kk, stride=s, pads=pp, ceil_mode=ceil)[0], kind
    if kind == "avgpool":
        s = int(rng.integers(1, 4))
        kk = (min(int(rng.integers(1, 4)), h), min(int(rng.integers(1, 4)), w))
        pp = tuple(int(rng.integers(0, kk[i % 2])) for i in range(4))
        ceil = bool(rng.integers(0, 2)) and s <= min(kk)
        if kk == (h, w) and not any(pp):
            kk = (max(1, h - 1), kk[1])  # not the global path (kind "gap" covers it)
        return avgpool_layer(img, rng, x, h, w, c, k=kk, stride=s, pads=pp, ceil_mode=ceil,
                             count_include_pad=bool(rng.integers(0, 2)), **common)[0], kind
    if kind == "gap":
        return gap_layer(img, rng, x, h, w, c, **common)[0], kind
    if kind == "add":
        zp2 = int(rng.integers(-20, 21))
        x2 = img.alloc(pack_tensor(rand_tensor(rng, h, w, c), img.cfg, zp2))
        lut = rng.choice([None, "tensor", "channel"])
        clamp = (out_zp, 127) if rng.random() < 0.5 else (-128, 127)
        return add_layer(img, rng, x, x2, h, w, c, in_zp=zp, in2_zp=zp2, out_zp=out_zp, clamp=clamp,
                         lut=lut)[0], kind
    if kind == "fc":
        c = int(rng.integers(8, 40 if small else 100))
        x = img.alloc(pack_tensor(rand_tensor(rng, 1, 1, c), img.cfg, zp))
        return conv_layer(img, rng, x, 1, 1, c, cout=int(rng.integers(1, 20)), k=(1, 1), **common)[0], kind
    clamp = (out_zp, 127) if rng.random() < 0.5 else (-128, 127)
    args = {"cout": int(rng.integers(1, 9 if small else 21)), "k": k, "pads": pads, "clamp": clamp, **common}
    if kind == "depthwise":
        args["depthwise"] = True
    elif kind == "strided":
        args["stride"] = int(rng.integers(2, 4))
    elif kind == "lut":
        args["lut"] = rng.choice(["tensor", "channel"])
    elif kind == "fused":
        args.update(k=(min(3, h), min(3, w)), pads=(1, 1, 1, 1) if min(h, w) >= 3 else (0, 0, 0, 0),
                    fuse_maxpool=True, lut=rng.choice([None, "channel"]))
    return conv_layer(img, rng, x, h, w, c, **args)[0], kind


@pytest.mark.parametrize("kind", KINDS)
def test_core_layer_kinds_icarus(tmp_path, kind):
    """One small random layer of each kind on Icarus, bit-exact with the executor."""
    seed = 1000 + KINDS.index(kind)
    rng = np.random.default_rng(seed)
    img = Image(CFG, 1 << 13)
    d, _ = random_layer(rng, img, kind, small=True)
    prog = img.place_program([d])
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    result = run_case(tmp_path, img, [program_run(img, prog, timeout=200_000)], seed=seed, simulator="icarus")
    print(f"seed={seed} {kind}: {d}")
    expect_ok(result)
    assert_same_memory(result["mems"][0], expected, seed, kind)


@pytest.mark.parametrize("seed", [pytest.param(s, marks=pytest.mark.slow) if s >= 2 else s for s in range(6)])
def test_core_new_ops_icarus(tmp_path, seed):
    """AVGPOOL, GLOBAL_AVGPOOL (and a whole-map AVGPOOL: the same path) and ADD, random, one program."""
    rng = np.random.default_rng(50 + seed)
    img = Image(CFG, 1 << 14)
    descs = [random_layer(rng, img, kind, small=True)[0] for kind in ("avgpool", "gap", "add", "avgpool")]
    h, w, c = int(rng.integers(2, 6)), int(rng.integers(2, 6)), int(rng.integers(1, 9))
    x = img.alloc(pack_tensor(rand_tensor(rng, h, w, c), CFG, 5))
    descs.append(avgpool_layer(img, rng, x, h, w, c, k=(h, w), stride=1, in_zp=5, out_zp=-3)[0])
    prog = img.place_program(descs)
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    print(f"seed={50 + seed} layers={descs}")
    result = run_case(tmp_path, img, [program_run(img, prog, timeout=400_000)], seed=seed, simulator="icarus")
    expect_ok(result)
    assert_same_memory(result["mems"][0], expected, 50 + seed, "new ops")


def test_core_add_lut_channel_groups_icarus(tmp_path):
    """An ADD whose per-channel LUT (70 channels) exceeds the LUT buffer (64): two channel groups."""
    seed = 77
    rng = np.random.default_rng(seed)
    img = Image(CFG, 1 << 15)
    x = img.alloc(pack_tensor(rand_tensor(rng, 2, 3, 70), CFG, 4))
    x2 = img.alloc(pack_tensor(rand_tensor(rng, 2, 3, 70), CFG, -6))
    d, _ = add_layer(img, rng, x, x2, 2, 3, 70, in_zp=4, in2_zp=-6, out_zp=1, clamp=(1, 127), lut="channel")
    prog = img.place_program([d])
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    result = run_case(tmp_path, img, [program_run(img, prog, timeout=200_000)], seed=seed, simulator="icarus")
    expect_ok(result)
    assert_same_memory(result["mems"][0], expected, seed, "ADD with LUT groups")


@pytest.mark.parametrize("seed", [pytest.param(s, marks=pytest.mark.slow) if s >= 2 else s for s in range(8)])
def test_core_random_layers(tmp_path, seed):
    """A program of three random layers of random kinds (Verilator), bit-exact with the executor."""
    rng = np.random.default_rng(seed)
    img = Image(CFG, 1 << 16)
    descs = [random_layer(rng, img)[0] for _ in range(3)]
    prog = img.place_program(descs)
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    result = run_case(tmp_path, img, [program_run(img, prog)], seed=seed, simulator=LAYER_SIM)
    expect_ok(result)
    print(f"seed={seed} layers={[(d.op.name, d.kh, d.kw, d.in_c, d.out_c) for d in descs]}")
    assert_same_memory(result["mems"][0], expected, seed)
    run = result["runs"][0]
    assert run["irq"] == 1 and run["irq_status"] == 1 and run["irq_after_clear"] == 0


def test_core_smoke_conv(tmp_path):
    """One small 1x1 conv: the shortest path through fetch, check, DMA, datapath and write-back."""
    seed = 100
    rng = np.random.default_rng(seed)
    img = Image(CFG, 1 << 14)
    x = img.alloc(pack_tensor(rand_tensor(rng, 3, 3, 4), CFG, 0))
    d, _ = conv_layer(img, rng, x, 3, 3, 4, cout=4, k=(1, 1))
    prog = img.place_program([d])
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    result = run_case(tmp_path, img, [program_run(img, prog, timeout=20000)], seed=seed, simulator=SMOKE_SIM)
    expect_ok(result)
    assert_same_memory(result["mems"][0], expected, seed)
    # Identification and config registers hold what the register map defines for this config.
    for name, value in result["ids"].items():
        r = register(name)
        want = r.value(CFG) if r.config is not None else r.reset
        assert value == want, f"{name} = {value:#x}, expected {want:#x}"
    c = result["runs"][0]["counters"]
    assert c["MAC_ACTIVE_CYCLES"] == 9 and c["DMA_WRITE_BYTES"] == 9 * d.out_cp, c
    assert c["BUSY_CYCLES"] <= c["CYCLES"], c
