"""ScaleUnit (the core's per-layer float32 constants of ADD and GLOBAL_AVGPOOL) against NumPy float32."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.fp32 import EXP_MAX, EXP_MIN, ScaleUnit
from jacquard.sim.golden_numerics import _fma_f32

F32 = np.float32


def bits(x) -> int:
    return int(np.array(x, dtype=F32).view(np.uint32))


def in_range(x, lo, hi) -> bool:
    return x != 0 and lo <= int(np.floor(np.log2(abs(np.float64(x))))) <= hi


def run_unit(cases):
    """``cases``: dicts of the unit's inputs; returns one dict of outputs per case."""
    dut = ScaleUnit()
    out = []

    async def tb(ctx):
        for c in cases:
            for name, v in c.items():
                ctx.set(getattr(dut, name), v)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            n = 0
            while ctx.get(dut.busy):
                await ctx.tick()
                n += 1
                assert n < 200, "ScaleUnit never finished"
            out.append({name: ctx.get(getattr(dut, name)) for name in ("ra", "rb", "k", "multiplier", "m_ok",
                                                                          "add_ok")} | {"cycles": n})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return out


def scale(rng, lo=-12.0, hi=4.0):
    return F32(2.0) ** F32(rng.uniform(lo, hi)) * F32(rng.uniform(1, 2))


@pytest.mark.parametrize("seed", [1, 2])
def test_scale_unit_add_constants(seed):
    rng = np.random.default_rng(seed)
    cases, want = [], []
    for i in range(12):
        sa, sb, sy = scale(rng), scale(rng), scale(rng)
        if i == 0:
            sa = sb = sy  # ra = rb = 1 exactly
        za, zb, zy = (int(v) for v in rng.integers(-128, 128, 3))
        if i == 1:
            za = zb = zy = 0  # k = 0
        ra, rb = F32(sa / sy), F32(sb / sy)
        k = F32(zy) - _fma_f32(np.array(ra), np.array(F32(za)), np.array(F32(rb * F32(zb))))
        cases.append({"add": 1, "sx": bits(sa), "s2": bits(sb), "sy": bits(sy), "zx": za, "z2": zb, "zy": zy})
        ok = in_range(ra, EXP_MIN, EXP_MAX) and in_range(rb, EXP_MIN, EXP_MAX) and (
            k == 0 or in_range(k, EXP_MIN, EXP_MAX))
        want.append((bits(ra), bits(rb), bits(k), ok))
    for i, (got, (ra, rb, k, ok)) in enumerate(zip(run_unit(cases), want, strict=True)):
        assert (got["ra"], got["rb"], got["k"], got["add_ok"]) == (ra, rb, k, ok), (
            f"seed={seed} case {i} {cases[i]}: expected ra/rb/k/ok {ra:#x}/{rb:#x}/{k:#x}/{ok}, got "
            f"{got['ra']:#x}/{got['rb']:#x}/{got['k']:#x}/{got['add_ok']}")


@pytest.mark.parametrize("seed", [3, 4])
def test_scale_unit_global_average_multiplier(seed):
    rng = np.random.default_rng(seed)
    cases, want = [], []
    for i in range(12):
        sx, sy = scale(rng, -20, 20), scale(rng, -20, 20)
        hw = int(rng.integers(1, 1 << int(rng.integers(1, 25))))
        if i == 0:
            hw = (1 << 24) - 1
        if i == 1:
            sx, sy = F32(2.0**120), F32(2.0**-10)  # M far above 256
        with np.errstate(all="ignore"):
            m = sx / (sy * F32(hw))
        cases.append({"add": 0, "sx": bits(sx), "sy": bits(sy), "hw": hw})
        want.append((bits(m), bool(F32(2.0**-32) <= m < F32(256))))
    for i, (got, (m, ok)) in enumerate(zip(run_unit(cases), want, strict=True)):
        assert got["m_ok"] == ok, f"seed={seed} case {i} {cases[i]}: m_ok {got['m_ok']}, expected {ok}"
        if ok:
            assert got["multiplier"] == m, (f"seed={seed} case {i} {cases[i]}: expected M {m:#x}, "
                                            f"got {got['multiplier']:#x}")
