"""LineBuffer in amaranth.sim: constrained-random maps and kernels with random valid/ready gaps,
compared beat by beat with the NumPy tap stream (jacquard.sim.taps); bad configs; throughput."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.line_buffer import LineBuffer
from jacquard.sim.streams import stream_monitor
from jacquard.sim.taps import output_shape, tap_stream


@dataclass
class Case:
    height: int
    width: int
    channels: int
    kh: int
    kw: int
    stride: int
    pads: tuple[int, int, int, int]
    zero_point: int = 0
    oc_tiles: int = 1
    depthwise: bool = False

    def config(self) -> dict:
        t, left, b, r = self.pads
        return {"width": self.width, "height": self.height, "channels": self.channels, "kh": self.kh,
                "kw": self.kw, "stride": self.stride, "pad_top": t, "pad_left": left, "pad_bottom": b,
                "pad_right": r, "zero_point": self.zero_point, "oc_tiles": self.oc_tiles,
                "depthwise": int(self.depthwise)}

    def taps(self, x: np.ndarray, c_par: int):
        return tap_stream(x, self.zero_point, self.kh, self.kw, self.stride, self.pads, c_par, self.oc_tiles,
                          self.depthwise)


@dataclass
class Result:
    taps: list = field(default_factory=list)          # (bits of data, first, last)
    cycles: int = 0
    first_out: int | None = None
    last_out: int | None = None
    error: bool = False


def random_case(rng: random.Random, c_par: int, max_width: int, max_channels: int, max_kh: int = 7,
                max_beats: int = 1500) -> Case:
    """A legal config whose tap stream is at most ``max_beats`` long."""
    while True:
        kh, kw = rng.randint(1, max_kh), rng.randint(1, 7)
        stride = rng.randint(1, 4)
        pads = (rng.randint(0, kh - 1), rng.randint(0, kw - 1),
                rng.randint(0, kh - 1), rng.randint(0, kw - 1))
        width = rng.randint(1, max_width)
        ct = rng.randint(1, max(1, min(3, max_width * max_channels // c_par // width)))
        height = rng.randint(1, 9)
        oc_tiles = rng.choice([1, 1, 2, 3])
        if height + pads[0] + pads[2] < kh or width + pads[1] + pads[3] < kw:
            continue
        oh, ow = output_shape(height, width, kh, kw, stride, pads)
        if oh * ow * kh * kw * ct * oc_tiles <= max_beats and width * ct * c_par <= max_width * max_channels:
            return Case(height, width, ct * c_par, kh, kw, stride, pads, rng.randint(-128, 127), oc_tiles,
                        depthwise=rng.random() < 0.25)


def unpack(bits: int, c_par: int) -> list[int]:
    return [((bits >> (8 * k)) & 0xFF) - (((bits >> (8 * k)) & 0x80) << 1) for k in range(c_par)]


def run(dut: LineBuffer, frames: list[tuple[Case, np.ndarray]], seed: int, in_gap: float = 0.0,
        out_gap: float = 0.0, max_cycles: int = 40000) -> list[Result]:
    """Run ``frames`` through ``dut`` one after another; each needs ``start`` and its input beats."""
    c_par = dut.c_par
    rng_in, rng_out = random.Random(seed + 100), random.Random(seed + 200)
    results = [Result() for _ in frames]
    finished = []

    async def control(ctx):
        cycle = 0
        for (case, x), res in zip(frames, results, strict=True):
            ctx.set(dut.config, case.config())
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            start = cycle = cycle + 1
            if x is None:                      # a refused config: no input, no output
                await ctx.tick().repeat(20)
                res.error = bool(ctx.get(dut.error))
                assert not ctx.get(dut.busy), "busy after a refused start"
                cycle += 20
                continue
            beats = x.reshape(-1, c_par)
            expected = len(case.taps(x, c_par)[0])
            sent = 0
            while len(res.taps) < expected or sent < len(beats) or ctx.get(dut.busy):
                if sent < len(beats) and rng_in.random() >= in_gap:
                    ctx.set(dut.i.valid, 1)
                    ctx.set(dut.i.payload, [int(v) for v in beats[sent]])
                else:
                    ctx.set(dut.i.valid, 0)
                ready = rng_out.random() >= out_gap
                ctx.set(dut.o.ready, ready)
                _, _, i_valid, i_ready, o_valid, payload = await ctx.tick().sample(
                    dut.i.valid, dut.i.ready, dut.o.valid, dut.o.payload)
                cycle += 1
                if i_valid and i_ready:
                    sent += 1
                if o_valid and ready:
                    res.first_out = cycle if res.first_out is None else res.first_out
                    res.last_out = cycle
                    res.taps.append((payload.as_bits() & ((1 << 8 * c_par) - 1), int(payload.first),
                                     int(payload.last)))
                    assert len(res.taps) <= expected, f"seed={seed}: more than {expected} taps"
                assert not ctx.get(dut.error), f"seed={seed}: legal config refused: {case}"
                assert cycle < max_cycles, (f"seed={seed}: stuck after {cycle} cycles: {sent}/{len(beats)} "
                                            f"beats in, {len(res.taps)}/{expected} taps out, {case}")
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.o.ready, 0)
            res.cycles = cycle - start
            res.error = bool(ctx.get(dut.error))
        finished.append(True)

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "line_buffer.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(control)
    sim.add_testbench(monitor, background=True)
    sim.run()
    assert finished
    return results


def check(case: Case, x: np.ndarray, res: Result, c_par: int, seed: int) -> None:
    taps, first, last = case.taps(x, c_par)
    assert not res.error, f"seed={seed}: error flag set for legal {case}"
    assert len(res.taps) == len(taps), f"seed={seed}: {len(res.taps)} taps, expected {len(taps)}, {case}"
    for n, (bits, f, la) in enumerate(res.taps):
        got = (unpack(bits, c_par), f, la)
        want = ([int(v) for v in taps[n]], int(first[n]), int(last[n]))
        assert got == want, f"seed={seed}: first mismatch at tap {n}: expected {want}, got {got}; {case}"


def random_map(rng: np.random.Generator, case: Case) -> np.ndarray:
    return rng.integers(-128, 128, size=(case.height, case.width, case.channels), dtype=np.int8)


SMALL = {"c_par": 4, "max_width": 12, "max_channels": 8, "max_kh": 7}


@pytest.mark.parametrize("seed", range(6))
def test_random_configs_with_gaps(seed):
    rng = random.Random(seed)
    dut = LineBuffer(**SMALL)
    cases = [random_case(rng, 4, 12, 8) for _ in range(2)]
    nrng = np.random.default_rng(seed)
    frames = [(c, random_map(nrng, c)) for c in cases]
    results = run(dut, frames, seed, in_gap=rng.choice([0.0, 0.3, 0.6]), out_gap=rng.choice([0.0, 0.3, 0.6]))
    for (case, x), res in zip(frames, results, strict=True):
        check(case, x, res, 4, seed)


@pytest.mark.parametrize(("case", "c_par"), [
    (Case(5, 6, 8, 3, 3, 1, (1, 1, 1, 1), zero_point=-7, oc_tiles=2), 4),   # 3x3 same, two oc tiles
    (Case(6, 7, 4, 3, 3, 2, (1, 1, 1, 1), zero_point=5), 4),                # 3x3 stride 2
    (Case(4, 5, 12, 1, 1, 1, (0, 0, 0, 0)), 4),                             # 1x1, three channel tiles
    (Case(8, 9, 4, 7, 7, 2, (3, 3, 3, 3), zero_point=-128), 4),             # 7x7/2 first layer shape
    (Case(9, 10, 4, 2, 5, 3, (0, 4, 1, 0), zero_point=17), 4),              # asymmetric, stride 3
    (Case(9, 12, 4, 4, 1, 4, (3, 0, 0, 0)), 4),                             # stride 4, tall kernel
    (Case(1, 1, 8, 7, 7, 1, (6, 6, 0, 0), zero_point=3), 8),                # 1x1 map, huge padding
    (Case(3, 2, 32, 3, 3, 1, (1, 1, 1, 1)), 8),                             # narrow deep: W*C/c_par == 8
    (Case(5, 6, 12, 3, 3, 1, (1, 1, 1, 1), zero_point=-3, depthwise=True), 4),  # depthwise 3x3
    (Case(7, 7, 8, 3, 3, 2, (0, 0, 1, 1), zero_point=4, depthwise=True), 4),    # depthwise 3x3/2
])
def test_directed(case, c_par):
    dut = LineBuffer(c_par=c_par, max_width=12, max_channels=8 if c_par == 4 else 16, max_kh=7)
    x = random_map(np.random.default_rng(1), case)
    res, = run(dut, [(case, x)], seed=1, in_gap=0.25, out_gap=0.25)
    check(case, x, res, c_par, seed=1)


def test_slow_consumer_back_pressures_input():
    # The consumer takes one tap in ten; the row buffer fills and input must wait, not be dropped.
    case = Case(8, 10, 4, 3, 3, 1, (1, 1, 1, 1), zero_point=9)
    dut = LineBuffer(c_par=4, max_width=12, max_channels=4, max_kh=3)
    x = random_map(np.random.default_rng(2), case)
    res, = run(dut, [(case, x)], seed=2, out_gap=0.9, max_cycles=60000)
    check(case, x, res, 4, seed=2)


@pytest.mark.parametrize(("field_name", "value"), [
    ("kh", 8), ("kh", 0), ("kw", 8), ("kw", 0), ("stride", 0), ("stride", 5), ("width", 13), ("width", 0),
    ("height", 0), ("channels", 6), ("channels", 0), ("channels", 4 * 13), ("pad_top", 3), ("pad_bottom", 3),
    ("pad_left", 3), ("pad_right", 3), ("oc_tiles", 0),
])
def test_bad_config_is_refused(field_name, value):
    # Each bad field on top of a good 3x3 config, then the same unit must still run a good frame.
    good = Case(4, 6, 8, 3, 3, 1, (1, 1, 1, 1), zero_point=-1)
    bad = Case(**{**good.__dict__})
    if field_name.startswith("pad_"):
        idx = ["pad_top", "pad_left", "pad_bottom", "pad_right"].index(field_name)
        bad.pads = tuple(value if k == idx else p for k, p in enumerate(good.pads))
    else:
        setattr(bad, field_name, value)
    dut = LineBuffer(**SMALL)
    x = random_map(np.random.default_rng(3), good)
    refused, ok = run(dut, [(bad, None), (good, x)], seed=3)
    assert refused.error, f"{field_name}={value} was not refused"
    check(good, x, ok, 4, seed=3)


def test_window_larger_than_padded_map_is_refused():
    dut = LineBuffer(**SMALL)
    refused, = run(dut, [(Case(2, 6, 4, 5, 3, 1, (1, 1, 1, 1)), None)], seed=4)
    assert refused.error


@pytest.mark.parametrize(("kwargs", "exc"), [
    ({"c_par": 6}, ValueError), ({"c_par": 8.0}, TypeError), ({"max_kh": 8}, ValueError),
    ({"max_width": 0}, ValueError), ({"max_channels": 12}, ValueError), ({"max_channels": True}, TypeError),
])
def test_bad_parameters(kwargs, exc):
    with pytest.raises(exc, match=next(iter(kwargs))):
        LineBuffer(**kwargs)


def steady_rate(case: Case, c_par: int = 4) -> float:
    """Tap beats per cycle from the first to the last tap, with input and output never stalled."""
    dut = LineBuffer(c_par=c_par, max_width=32, max_channels=8, max_kh=7)
    x = random_map(np.random.default_rng(5), case)
    res, = run(dut, [(case, x)], seed=5)
    check(case, x, res, c_par, seed=5)
    return (len(res.taps) - 1) / (res.last_out - res.first_out)


@pytest.mark.parametrize(("case", "at_least"), [
    (Case(6, 24, 8, 3, 3, 1, (1, 1, 1, 1)), 0.97),     # 3x3 s1
    (Case(8, 24, 8, 3, 3, 2, (1, 1, 1, 1)), 0.97),     # 3x3 s2
    (Case(12, 32, 4, 7, 7, 2, (3, 3, 3, 3)), 0.97),    # 7x7 s2 first layer
    (Case(6, 24, 8, 3, 3, 1, (1, 1, 1, 1), depthwise=True), 0.97),
])
def test_throughput_one_tap_per_cycle(case, at_least):
    rate = steady_rate(case)
    print(f"{case}: {rate:.4f} taps/cycle")
    assert rate >= at_least, f"{case}: {rate:.4f} taps/cycle, expected >= {at_least}"
