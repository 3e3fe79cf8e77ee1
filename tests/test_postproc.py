"""PostProcessor in amaranth.sim: random layers with random gaps on every stream, against the golden model.

Each case draws a configuration (oc_par, n_requant, n_oc_tiles, zero point, clamp, LUT), random
per-channel bias' and multipliers from real-looking scales, and random accumulators; the expected
output is ``golden.requantize(acc + bias')`` followed by ``golden.apply_lut``.
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.postproc import PostProcessor
from jacquard.sim import golden
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send


def make_layer(rng: np.random.Generator, oc_par: int, n_oc_tiles: int, positions: int, lut: bool):
    """Random layer: params, accumulators (positions x tiles beats), zy/lo/hi and an optional LUT."""
    channels = oc_par * n_oc_tiles
    sx = np.float32(rng.uniform(0.005, 0.1))
    sy = np.float32(rng.uniform(0.01, 0.5))
    sw = (rng.uniform(0.0005, 0.05, channels)).astype(np.float32)
    mult = golden.requant_multiplier(sx, sw, sy)
    # A few channels get extreme multipliers: tiny (always 0) and huge (always saturating).
    mult[rng.random(channels) < 0.05] = np.float32(1e-30)
    mult[rng.random(channels) < 0.05] = np.float32(3e30)
    bias = rng.integers(-(2**20), 2**20, channels).astype(np.int32)
    bias[rng.random(channels) < 0.05] = np.int32(2**31 - 1)  # wraps when a positive acc is added
    scale = rng.choice([2**8, 2**14, 2**20, 2**31])
    acc = rng.integers(-scale, scale, (positions, channels)).astype(np.int64).clip(-(2**31), 2**31 - 1)
    acc = acc.astype(np.int32)
    zy = int(rng.integers(-128, 128))
    lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
    if rng.random() < 0.3:
        lo, hi = zy, 127  # fused ReLU
    table = rng.integers(-128, 128, 256).astype(np.int8) if lut else None
    return dict(mult=mult, bias=bias, acc=acc, zy=zy, lo=lo, hi=hi, lut=table)


def expected(layer) -> np.ndarray:
    biased = (layer["acc"].astype(np.int64) + layer["bias"]).astype(np.int64)
    biased = ((biased + 2**31) % 2**32 - 2**31).astype(np.int32)  # int32 wrap, like the hardware
    with np.errstate(over="ignore"):  # huge multipliers overflow to inf on purpose: they saturate
        y = golden.requantize(biased, layer["mult"], layer["zy"], layer["lo"], layer["hi"])
    if layer["lut"] is not None:
        y = golden.apply_lut(y, layer["lut"])
    return y


def run_layers(dut: PostProcessor, layers, seed: int, gap: float = 0.3):
    """Run layers one after another through ``dut``; return each layer's output as (positions, C)."""
    oc_par = dut.oc_par
    counts = [layer["acc"].shape[0] * (len(layer["bias"]) // oc_par) for layer in layers]
    received = []

    async def producer(ctx):
        rng = random.Random(seed)
        for layer in layers:
            n_tiles = len(layer["bias"]) // oc_par
            # The next layer may only start once the previous one has drained.
            while ctx.get(dut.busy):
                await ctx.tick()
            ctx.set(dut.n_oc_tiles, n_tiles)
            ctx.set(dut.zero_point, layer["zy"])
            ctx.set(dut.lo, layer["lo"])
            ctx.set(dut.hi, layer["hi"])
            ctx.set(dut.lut_enable, layer["lut"] is not None)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            mult_bits = layer["mult"].view(np.uint32)
            params = [{"bias": int(b), "multiplier": int(mb)}
                      for b, mb in zip(layer["bias"], mult_bits, strict=True)]
            await stream_send(ctx, dut.params, params, rng=rng, gap=gap)
            if layer["lut"] is not None:
                await stream_send(ctx, dut.lut, [int(v) for v in layer["lut"]], rng=rng, gap=gap)
            assert ctx.get(dut.running) and not ctx.get(dut.error)
            # Beats: for each position, for each oc tile.
            beats = [[int(v) for v in layer["acc"][p, t * oc_par:(t + 1) * oc_par]]
                     for p in range(layer["acc"].shape[0]) for t in range(n_tiles)]
            await stream_send(ctx, dut.i, beats, rng=rng, gap=gap)

    async def consumer(ctx):
        beats = await stream_recv(ctx, dut.o, sum(counts), rng=random.Random(seed + 7), gap=gap)
        received.extend([int(v) for v in beat] for beat in beats)
        assert not ctx.get(dut.error)

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "postproc.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.run()
    outputs, at = [], 0
    for layer, count in zip(layers, counts, strict=True):
        out = np.array(received[at:at + count], dtype=np.int64)
        outputs.append(out.reshape(layer["acc"].shape))
        at += count
    return outputs


def check(layers, outputs, seed):
    for n, (layer, got) in enumerate(zip(layers, outputs, strict=True)):
        want = expected(layer).astype(np.int64)
        bad = np.argwhere(want != got)
        assert len(bad) == 0, (f"seed={seed} layer {n}: {len(bad)} mismatches; first at (position, channel)="
                               f"{tuple(bad[0])}: expected {want[tuple(bad[0])]}, got {got[tuple(bad[0])]}")


# (oc_par, n_requant, max_oc_tiles, lut): full rate, serialized 2:1 and 4:1, one lane, no LUT.
CONFIGS = [(4, 4, 4, True), (8, 4, 4, True), (8, 2, 3, False), (4, 1, 2, True)]


@pytest.mark.parametrize(("seed", "config"), list(enumerate(CONFIGS, start=1)),
                         ids=["oc{}-r{}-t{}-lut{}".format(*c) for c in CONFIGS])
def test_postproc_random_layers(seed, config):
    oc_par, n_requant, max_tiles, lut = config
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(2):
        n_tiles = int(rng.integers(1, max_tiles + 1))
        use_lut = lut and bool(rng.random() < 0.7)
        layers.append(make_layer(rng, oc_par, n_tiles, int(rng.integers(3, 9)), use_lut))
    dut = PostProcessor(oc_par=oc_par, n_requant=n_requant, max_oc_tiles=max_tiles, lut=lut)
    check(layers, run_layers(dut, layers, seed), seed)


def test_postproc_throughput():
    # No gaps: n_requant == oc_par takes one beat per cycle; 4:1 serialization one per 4 cycles.
    for n_requant, per_beat in [(8, 1), (2, 4)]:
        rng = np.random.default_rng(5)
        layer = make_layer(rng, 8, 2, 20, lut=False)
        dut = PostProcessor(oc_par=8, n_requant=n_requant, max_oc_tiles=2, lut=False)
        stamps = []

        async def producer(ctx, layer=layer, dut=dut):
            ctx.set(dut.n_oc_tiles, 2)
            ctx.set(dut.zero_point, layer["zy"])
            ctx.set(dut.lo, layer["lo"])
            ctx.set(dut.hi, layer["hi"])
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            params = [{"bias": int(b), "multiplier": int(mb)}
                      for b, mb in zip(layer["bias"], layer["mult"].view(np.uint32), strict=True)]
            await stream_send(ctx, dut.params, params)
            beats = [[int(v) for v in layer["acc"][p, t * 8:(t + 1) * 8]]
                     for p in range(20) for t in range(2)]
            await stream_send(ctx, dut.i, beats)

        async def consumer(ctx, dut=dut, stamps=stamps):
            ctx.set(dut.o.ready, 1)
            cycle = 0
            while len(stamps) < 40:
                _, _, valid = await ctx.tick().sample(dut.o.valid)
                cycle += 1
                if valid:
                    stamps.append(cycle)

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(producer)
        sim.add_testbench(consumer)
        sim.run()
        gaps = set(np.diff(stamps).tolist())
        assert gaps == {per_beat}, f"n_requant={n_requant}: output spacing {sorted(gaps)}, want {per_beat}"


def start_layer(ctx, dut, *, n_oc_tiles=1, zy=0, lo=-128, hi=127, lut_enable=0):
    ctx.set(dut.n_oc_tiles, n_oc_tiles)
    ctx.set(dut.zero_point, zy)
    ctx.set(dut.lo, lo)
    ctx.set(dut.hi, hi)
    ctx.set(dut.lut_enable, lut_enable)
    ctx.set(dut.start, 1)


@pytest.mark.parametrize(("case", "lut"), [
    ("zero_tiles", True), ("too_many_tiles", True), ("lo_above_hi", True), ("lut_not_built", False),
    ("inf_multiplier", True), ("nan_multiplier", True), ("start_while_busy", True),
])
def test_postproc_refuses_bad_config(case, lut):
    dut = PostProcessor(oc_par=4, n_requant=2, max_oc_tiles=3, lut=lut)
    seen = {}

    async def tb(ctx):
        config = {"zero_tiles": dict(n_oc_tiles=0), "too_many_tiles": dict(n_oc_tiles=4),
                  "lo_above_hi": dict(lo=5, hi=4), "lut_not_built": dict(lut_enable=1)}.get(case, {})
        start_layer(ctx, dut, **config)
        await ctx.tick()
        ctx.set(dut.start, 0)
        good = {"bias": 0, "multiplier": 0x3F00_0000}
        if case in ("inf_multiplier", "nan_multiplier"):
            bad = {"bias": 0, "multiplier": 0x7F80_0000 if case == "inf_multiplier" else 0xFFC0_0001}
            await stream_send(ctx, dut.params, [good, bad])
            await ctx.tick()
        if case == "start_while_busy":
            await stream_send(ctx, dut.params, [good] * 4)
            assert ctx.get(dut.running)
            ctx.set(dut.o.ready, 0)
            await stream_send(ctx, dut.i, [[1, 2, 3, 4]])
            start_layer(ctx, dut)  # the beat is still inside: refused
            await ctx.tick()
            ctx.set(dut.start, 0)
        seen["error"] = ctx.get(dut.error)
        # Refused: nothing is taken on any input until the next start.
        ctx.set(dut.params.valid, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.lut.valid, 1)
        for _ in range(3):
            await ctx.tick()
            seen.setdefault("taken", 0)
            seen["taken"] += ctx.get(dut.params.ready) + ctx.get(dut.i.ready) + ctx.get(dut.lut.ready)
        ctx.set(dut.params.valid, 0)
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.lut.valid, 0)
        # A good start clears the error once the unit has drained.
        ctx.set(dut.o.ready, 1)
        while ctx.get(dut.busy):
            await ctx.tick()
        start_layer(ctx, dut)
        await ctx.tick()
        ctx.set(dut.start, 0)
        seen["error_after_restart"] = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == {"error": 1, "taken": 0, "error_after_restart": 0}, f"{case}: {seen}"
