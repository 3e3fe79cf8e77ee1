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
