# amaranth: UnusedElaboratable=no
"""PEArray in amaranth.sim: tap streams from sim/taps.py against golden.conv2d_acc, throughput, errors."""
# (first line: the bad-parameter tests build PEArrays whose __init__ raises; amaranth warns "unused")

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.pe_array import PEArray, PEError
from jacquard.sim import golden
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send
from jacquard.sim.taps import pack_weights, tap_stream


def conv_case(rng: np.random.Generator, c_par: int, oc_par: int, depthwise: bool = False,
              big: bool = False) -> dict:
    """A random conv layer as the PE array sees it: tap beats, weight rows, config and expected accs.

    The expected values come from ``golden.conv2d_acc`` with a random bias, minus the host's folded
    bias ``bias - zx * sum(w)``: the PE array computes ``sum(x * w)`` with padding taps at ``zx``.
    ``big`` makes larger maps, kernels and channel counts (for the slow Verilator runs).
    """
    kmax, extra, tiles = (6, 12, 5) if big else (4, 3, 3)
    kh, kw = int(rng.integers(1, kmax)), int(rng.integers(1, kmax))
    stride = int(rng.integers(1, 3))
    pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
    h, w = int(rng.integers(kh, kh + extra)), int(rng.integers(kw, kw + extra))
    cin = c_par * int(rng.integers(1, tiles))
    zx = int(rng.integers(-128, 128))
    x = rng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
    if depthwise:
        cout, groups = cin, cin
        wts = rng.integers(-128, 128, size=(cout, kh, kw, 1), dtype=np.int8)
    else:
        cout, groups = int(rng.integers(1, 2 * oc_par + 1)), 1
        wts = rng.integers(-128, 128, size=(cout, kh, kw, cin), dtype=np.int8)
    bias = rng.integers(-(1 << 20), 1 << 20, size=cout, dtype=np.int32)
    want = golden.conv2d_acc(x, zx, wts, bias, stride=(stride, stride), pads=pads, groups=groups)
    folded = bias.astype(np.int64) - zx * wts.astype(np.int64).sum(axis=(1, 2, 3))
    oh, ow = want.shape[1:3]
    if depthwise:
        n_tiles = cin // c_par
        # Per position, per channel tile, the KH*KW taps of that tile only (the line buffer's
        # window is sent once; the PE array's n_oc_tiles counts channel tiles).
        taps, _, _ = tap_stream(x, zx, kh, kw, stride, pads, c_par, 1, depthwise=True)
        per_acc = kh * kw
        # Diagonal blocks; the off-diagonal weights are random garbage the array must ignore.
        blocks = rng.integers(-128, 128, size=(n_tiles, kh, kw, oc_par, c_par), dtype=np.int8)
        for t in range(n_tiles):
            for c in range(c_par):
                blocks[t, :, :, c, c] = wts[t * c_par + c, :, :, 0]
        rows = blocks.reshape(-1, c_par)
        acc = np.zeros((oh * ow, n_tiles, oc_par), dtype=np.int64)
        acc[:, :, :c_par] = (want.astype(np.int64) - folded).reshape(oh * ow, n_tiles, c_par)
    else:
        n_tiles = -(-cout // oc_par)
        taps, _, _ = tap_stream(x, zx, kh, kw, stride, pads, c_par, n_tiles)
        per_acc = kh * kw * cin // c_par
        rows = pack_weights(wts, oc_par, c_par).reshape(-1, c_par)
        acc = np.zeros((oh * ow, n_tiles * oc_par), dtype=np.int64)
        acc[:, :cout] = (want.astype(np.int64) - folded).reshape(oh * ow, cout)
    k = np.arange(taps.shape[0]) % per_acc
    return {"taps": taps, "first": k == 0, "last": k == per_acc - 1, "rows": rows,
            "cfg": {"taps": per_acc, "n_oc_tiles": n_tiles, "depthwise": int(depthwise)},
            "want": acc.reshape(-1, oc_par).astype(np.int32),
            "desc": f"{h}x{w}x{cin}->{cout} k={kh}x{kw} s={stride} pads={pads} zx={zx} dw={depthwise}"}


def tap_beats(case: dict) -> list[dict]:
    return [{"data": [int(v) for v in t], "first": int(f), "last": int(la)}
            for t, f, la in zip(case["taps"], case["first"], case["last"], strict=True)]


def row_beats(rows: np.ndarray) -> list[dict]:
    return [{"data": [int(v) for v in r], "first": int(j == 0)} for j, r in enumerate(rows)]


def run_case(dut: PEArray, case: dict, seed: int, gap: float, w_base: int = 0) -> dict:
    """Load the weights, stream the taps with random gaps, collect outputs and per-cycle activity."""
    got: list[list[int]] = []
    accepted: list[int] = []
    active: list[int] = []
    n_out = len(case["want"])

    async def producer(ctx):
        ctx.set(dut.wl_base, w_base)
        ctx.set(dut.w_base, w_base)
        for name, value in case["cfg"].items():
            ctx.set(getattr(dut, name), value)
        await stream_send(ctx, dut.wl, row_beats(case["rows"]), rng=random.Random(seed + 1), gap=gap)
        await stream_send(ctx, dut.i, tap_beats(case), rng=random.Random(seed + 2), gap=gap)

    async def consumer(ctx):
        got.extend(await stream_recv(ctx, dut.o, n_out, rng=random.Random(seed + 3), gap=gap))

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "pe.o")

    async def counter(ctx):
        cycle = 0
        async for _, _, valid, ready, mac in ctx.tick().sample(dut.i.valid, dut.i.ready, dut.mac_active):
            if valid and ready:
                accepted.append(cycle)
            if mac:
                active.append(cycle)
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(counter, background=True)
    sim.run()
    out = np.array([[int(v) for v in beat] for beat in got], dtype=np.int64).reshape(-1, dut.oc_par)
    return {"got": out.astype(np.int32), "accepted": accepted, "active": active}


def assert_same(got: np.ndarray, want: np.ndarray, seed: int, desc: str) -> None:
    assert got.shape == want.shape, f"seed={seed} {desc}: got {got.shape} beats, want {want.shape}"
    bad = np.argwhere(got != want)
    if bad.size:
        i, o = bad[0]
        raise AssertionError(f"seed={seed} {desc}: first mismatch at beat {i} lane {o}: "
                             f"expected {want[i, o]}, got {got[i, o]} ({len(bad)} lanes differ)")


@pytest.mark.parametrize(("seed", "c_par", "oc_par"), [
    (1, 4, 4), (2, 2, 4), (3, 4, 2), (4, 1, 3), (5, 8, 4), (6, 3, 5),
])
def test_pe_array_conv_random(seed, c_par, oc_par):
    case = conv_case(np.random.default_rng(seed), c_par, oc_par)
    dut = PEArray(c_par, oc_par, weight_depth=len(case["rows"]) // oc_par + 3)
    res = run_case(dut, case, seed, gap=0.3, w_base=seed % 4)
    assert_same(res["got"], case["want"], seed, case["desc"])


@pytest.mark.parametrize(("seed", "c_par", "oc_par"), [(11, 4, 4), (12, 2, 4), (13, 4, 8), (14, 1, 2)])
def test_pe_array_depthwise_random(seed, c_par, oc_par):
    case = conv_case(np.random.default_rng(seed), c_par, oc_par, depthwise=True)
    dut = PEArray(c_par, oc_par, weight_depth=len(case["rows"]) // oc_par)
    res = run_case(dut, case, seed, gap=0.3)
    assert_same(res["got"], case["want"], seed, case["desc"])


def test_pe_array_full_rate():
    # A 3x3 layer with C_in = 3*c_par and 2 oc tiles, no gaps: after the first tap, one tap is
    # accepted on every cycle until the last one, and the multipliers are busy on exactly those cycles.
    rng = np.random.default_rng(21)
    x = rng.integers(-128, 128, size=(1, 4, 4, 12), dtype=np.int8)
    wts = rng.integers(-128, 128, size=(8, 3, 3, 12), dtype=np.int8)
    taps, first, last = tap_stream(x, 3, 3, 3, 1, (1, 1, 1, 1), 4, 2)
    zero = np.zeros(8, dtype=np.int32)
    acc = golden.conv2d_acc(x, 3, wts, zero, pads=(1, 1, 1, 1)).astype(np.int64)
    acc += 3 * wts.astype(np.int64).sum(axis=(1, 2, 3))
    case = {"taps": taps, "first": first, "last": last, "rows": pack_weights(wts, 4, 4).reshape(-1, 4),
            "cfg": {"taps": 27, "n_oc_tiles": 2, "depthwise": 0},
            "want": acc.reshape(-1, 4).astype(np.int32)}
    dut = PEArray(4, 4, weight_depth=64)
    res = run_case(dut, case, 21, gap=0.0)
    assert_same(res["got"], case["want"], 21, "full rate")
    acc_cycles = res["accepted"]
    n = len(taps)
    assert len(acc_cycles) == n
    assert acc_cycles[-1] - acc_cycles[0] == n - 1, "a gap in tap acceptance at full rate"
    assert len(res["active"]) == n and res["active"][0] == acc_cycles[0] + 2, "mac_active miscounts"


def _one_by_one_case(seed: int, h: int, w: int, par: int, oc_tiles: int) -> dict:
    """A 1x1 layer with C_in = c_par = oc_par = ``par``: every tap finishes an accumulation."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(1, h, w, par), dtype=np.int8)
    wts = rng.integers(-128, 128, size=(par * oc_tiles, 1, 1, par), dtype=np.int8)
    taps, first, last = tap_stream(x, 0, 1, 1, 1, (0, 0, 0, 0), par, oc_tiles)
    want = golden.conv2d_acc(x, 0, wts, np.zeros(par * oc_tiles, dtype=np.int32))
    return {"taps": taps, "first": first, "last": last, "rows": pack_weights(wts, par, par).reshape(-1, par),
            "cfg": {"taps": 1, "n_oc_tiles": oc_tiles, "depthwise": 0}, "want": want.reshape(-1, par)}


def test_pe_array_full_rate_under_output_stalls():
    # Output ready toggles every other cycle with 1-tap accumulations: the output FIFOs' credit
    # absorbs the stalls and no output beat is lost, duplicated or reordered.
    case = _one_by_one_case(22, 3, 5, 2, 3)
    res = run_case(PEArray(2, 2, weight_depth=3), case, 22, gap=0.5)
    assert_same(res["got"], case["want"], 22, "1x1 under stalls")


def test_pe_array_full_rate_one_tap():
    # 1x1 layer with C_in = c_par: every tap finishes an accumulation. With the output always
    # ready, the output FIFO's credit never runs out, so a tap is accepted on every cycle.
    case = _one_by_one_case(23, 4, 6, 4, 2)
    res = run_case(PEArray(4, 4, weight_depth=2), case, 23, gap=0.0)
    assert_same(res["got"], case["want"], 23, "1x1 full rate")
    acc_cycles = res["accepted"]
    assert acc_cycles[-1] - acc_cycles[0] == len(case["taps"]) - 1, "a gap in tap acceptance with 1-tap sums"


async def _settle_error(ctx, dut):
    await ctx.tick()
    return ctx.get(dut.error), PEError(ctx.get(dut.error_code)), ctx.get(dut.i.ready)


@pytest.mark.parametrize(("cfg", "why"), [
    ({"taps": 0, "n_oc_tiles": 1, "depthwise": 0, "w_base": 0}, "taps=0"),
    ({"taps": 4, "n_oc_tiles": 0, "depthwise": 0, "w_base": 0}, "n_oc_tiles=0"),
    ({"taps": 4, "n_oc_tiles": 1, "depthwise": 0, "w_base": 9}, "w_base past the buffer"),
])
def test_pe_array_refuses_bad_config(cfg, why):
    dut = PEArray(2, 2, weight_depth=9)

    async def tb(ctx):
        for name, value in cfg.items():
            ctx.set(getattr(dut, name), value)
        ctx.set(dut.i.valid, 1)
        for _ in range(3):
            error, code, ready = await _settle_error(ctx, dut)
            assert (error, code, ready) == (1, PEError.CONFIG, 0), why

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_pe_array_refuses_depthwise_when_oc_par_lt_c_par():
    dut = PEArray(4, 2, weight_depth=8)

    async def tb(ctx):
        ctx.set(dut.taps, 9)
        ctx.set(dut.n_oc_tiles, 1)
        ctx.set(dut.depthwise, 1)
        assert await _settle_error(ctx, dut) == (1, PEError.CONFIG, 0)
        ctx.set(dut.depthwise, 0)
        assert await _settle_error(ctx, dut) == (0, PEError.NONE, 1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_pe_array_sticky_errors_and_clear():
    # Framing: a `last` on tap 1 of 3. Weight range: 3 taps x 2 tiles from block 2 of 6 leave tile 1
    # outside the buffer, so its first tap is refused. Load range: rows past the last block.
    dut = PEArray(2, 2, weight_depth=6)

    async def send(ctx, first, last):
        ctx.set(dut.i.payload, {"data": [1, 1], "first": first, "last": last})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)

    async def tb(ctx):
        ctx.set(dut.taps, 3)
        ctx.set(dut.n_oc_tiles, 2)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()  # the configuration is registered: stable a cycle before the first tap
        await send(ctx, 1, 0)
        assert ctx.get(dut.error) == 0
        await send(ctx, 0, 1)
        assert await _settle_error(ctx, dut) == (1, PEError.FRAMING, 0)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.w_base, 2)
        assert await _settle_error(ctx, dut) == (0, PEError.NONE, 1)
        for f, la in ((1, 0), (0, 0), (0, 1)):
            await send(ctx, f, la)
        assert ctx.get(dut.error) == 0
        await send(ctx, 1, 0)
        assert await _settle_error(ctx, dut) == (1, PEError.WEIGHT_RANGE, 0)
        # Exactly one result (tile 0) came out; tile 1 produced nothing.
        n_out = 0
        for _ in range(12):
            n_out += ctx.get(dut.o.valid)
            await ctx.tick()
        assert n_out == 1
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.wl_base, 5)
        ctx.set(dut.wl.valid, 1)
        ctx.set(dut.wl.payload, {"data": [0, 0], "first": 1})
        await ctx.tick()
        ctx.set(dut.wl.payload, {"data": [0, 0], "first": 0})
        for _ in range(2):
            await ctx.tick()
        ctx.set(dut.wl.valid, 0)
        assert await _settle_error(ctx, dut) == (1, PEError.LOAD_RANGE, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize(("args", "exc"), [
    ((0, 4, 8), ValueError), ((4, 65, 8), ValueError), ((4, 4, 0), ValueError),
    ((4, 4, 1 << 17), ValueError), ((4.0, 4, 8), TypeError), ((4, True, 8), TypeError),
])
def test_pe_array_bad_parameters(args, exc):
    with pytest.raises(exc):
        PEArray(*args)


@pytest.mark.parametrize("c_par", [1, 2, 4, 8])
def test_pe_array_latency(c_par):
    # The documented latency is what the pipeline does: s1 .. s6, the adder-tree stages, the
    # accumulators, the output FIFO's write and its output register.
    dut = PEArray(c_par, 2, 4)
    seen = []

    async def tb(ctx):
        ctx.set(dut.taps, 1)
        ctx.set(dut.n_oc_tiles, 1)
        ctx.set(dut.o.ready, 1)
        await ctx.tick()  # the configuration is registered: stable a cycle before the first tap
        ctx.set(dut.i.payload, {"data": [1] * c_par, "first": 1, "last": 1})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        edges = 0
        while not ctx.get(dut.o.valid):
            await ctx.tick()
            edges += 1
        seen.append(edges)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == [dut.latency]
