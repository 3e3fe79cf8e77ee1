"""cocotb 2.x bench for PostProcessor: random layers, random gaps on every stream, vs the golden model.

Each layer: configuration ports and ``start``; ``n_oc_tiles * oc_par`` channel parameters; an
optional 256-entry LUT; then ``positions * n_oc_tiles`` accumulator beats. Outputs are checked
against ``golden.requantize(acc + bias')`` and ``golden.apply_lut``.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from jacquard.sim import golden
from jacquard.sim.cocotb_run import params


def make_layer(rng: np.random.Generator, oc_par: int, n_tiles: int, positions: int, lut: bool) -> dict:
    channels = oc_par * n_tiles
    sx, sy = np.float32(rng.uniform(0.005, 0.1)), np.float32(rng.uniform(0.01, 0.5))
    mult = golden.requant_multiplier(sx, rng.uniform(0.0005, 0.05, channels).astype(np.float32), sy)
    mult[rng.random(channels) < 0.05] = np.float32(1e-30)
    mult[rng.random(channels) < 0.05] = np.float32(3e30)
    bias = rng.integers(-(2**20), 2**20, channels).astype(np.int32)
    scale = int(rng.choice([2**8, 2**14, 2**20, 2**31]))
    acc = rng.integers(-scale, scale, (positions, channels)).clip(-(2**31), 2**31 - 1).astype(np.int32)
    zy = int(rng.integers(-128, 128))
    lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2))
    if rng.random() < 0.3:
        lo, hi = zy, 127
    table = rng.integers(-128, 128, 256).astype(np.int8) if lut else None
    biased = ((acc.astype(np.int64) + bias + 2**31) % 2**32 - 2**31).astype(np.int32)
    with np.errstate(over="ignore"):  # the huge multipliers overflow to inf and saturate
        want = golden.requantize(biased, mult, zy, lo, hi)
    if table is not None:
        want = golden.apply_lut(want, table)
    return dict(mult=mult, bias=bias, acc=acc, zy=zy, lo=lo, hi=hi, lut=table, want=want.astype(np.int64))


class TB:
    """Owns the clock, the configuration ports and the drivers of the four streams."""

    def __init__(self, dut, seed: int, gap: float):
        self.dut = dut
        self.rng = random.Random(seed)
        self.gap = gap
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        for name in ("i", "params", "lut"):
            getattr(dut, f"{name}__valid").value = 0
        dut.o__ready.value = 0
        dut.start.value = 0
        for _ in range(2):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def send(self, name: str, words):
        valid, payload, ready = (getattr(self.dut, f"{name}__{s}") for s in ("valid", "payload", "ready"))
        for word in words:
            while self.rng.random() < self.gap:
                valid.value = 0
                await RisingEdge(self.dut.clk)
            valid.value = 1
            payload.value = word
            await RisingEdge(self.dut.clk)
            while ready.value != 1:
                await RisingEdge(self.dut.clk)
        valid.value = 0

    async def recv(self, count: int, oc_par: int):
        dut, out = self.dut, []
        while len(out) < count:
            ready = self.rng.random() >= self.gap
            dut.o__ready.value = int(ready)
            await RisingEdge(dut.clk)
            if ready and dut.o__valid.value == 1:
                word = int(dut.o__payload.value)
                lanes = [(word >> (8 * j)) & 0xFF for j in range(oc_par)]
                out.append([v - 256 if v & 0x80 else v for v in lanes])
        dut.o__ready.value = 0
        return out

    async def run_layer(self, layer: dict, oc_par: int):
        dut = self.dut
        n_tiles = len(layer["bias"]) // oc_par
        while dut.busy.value == 1:
            await RisingEdge(dut.clk)
        dut.n_oc_tiles.value = n_tiles
        dut.zero_point.value = layer["zy"] & 0xFF
        dut.lo.value = layer["lo"] & 0xFF
        dut.hi.value = layer["hi"] & 0xFF
        dut.lut_enable.value = int(layer["lut"] is not None)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        mbits = layer["mult"].view(np.uint32)
        words = [(int(b) & 0xFFFF_FFFF) | (int(m) << 32) for b, m in zip(layer["bias"], mbits, strict=True)]
        await self.send("params", words)
        if layer["lut"] is not None:
            await self.send("lut", [int(v) & 0xFF for v in layer["lut"]])
        positions = layer["acc"].shape[0]
        beats = []
        for p in range(positions):
            for t in range(n_tiles):
                lanes = layer["acc"][p, t * oc_par:(t + 1) * oc_par]
                beats.append(sum((int(v) & 0xFFFF_FFFF) << (32 * j) for j, v in enumerate(lanes)))
        sender = cocotb.start_soon(self.send("i", beats))
        got = await self.recv(len(beats), oc_par)
        await sender
        return np.array(got, dtype=np.int64).reshape(positions, n_tiles * oc_par)


@cocotb.test(skip=params().get("top") == "maxpool")
async def random_layers(dut):
    p = params()
    seed, oc_par, max_tiles = p["seed"], p["oc_par"], p["max_oc_tiles"]
    rng = np.random.default_rng(seed)
    tb = TB(dut, seed, p.get("gap", 0.3))
    await tb.reset()
    for n in range(p.get("layers", 2)):
        layer = make_layer(rng, oc_par, int(rng.integers(1, max_tiles + 1)), p.get("positions", 6),
                           p["lut"] and bool(rng.random() < 0.7))
        got = await tb.run_layer(layer, oc_par)
        want = layer["want"]
        bad = np.argwhere(got != want)
        assert len(bad) == 0, (f"seed={seed} layer {n}: {len(bad)} mismatches; first at (position, channel)="
                               f"{tuple(bad[0])}: expected {want[tuple(bad[0])]}, got {got[tuple(bad[0])]}")
        assert dut.error.value == 0


@cocotb.test(skip=params().get("top") != "maxpool")
async def maxpool_maps(dut):
    """MaxPool2x2 as the top: random maps (for y, for x, for oc tile), vs ``golden.max_pool(2, 2)``."""
    p = params()
    seed, oc_par, max_tiles = p["seed"], p["oc_par"], p["max_oc_tiles"]
    rng = np.random.default_rng(seed)
    tb = TB(dut, seed, p.get("gap", 0.3))
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.start.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for n in range(p.get("maps", 3)):
        h, w = int(rng.integers(2, p["max_height"] + 1)), int(rng.integers(2, p["max_width"] + 1))
        tiles = int(rng.integers(1, max_tiles + 1))
        fmap = rng.integers(-128, 128, (h, w, tiles * oc_par)).astype(np.int8)
        want = golden.max_pool(fmap[None], 2, 2)[0].astype(np.int64)
        while dut.busy.value == 1:
            await RisingEdge(dut.clk)
        dut.width.value = w
        dut.n_oc_tiles.value = tiles
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        lanes = fmap.reshape(h * w * tiles, oc_par)  # for y, for x, for tile: NHWC order already
        beats = [sum((int(v) & 0xFF) << (8 * j) for j, v in enumerate(beat)) for beat in lanes]
        sender = cocotb.start_soon(tb.send("i", beats))
        got = np.array(await tb.recv(want.size // oc_par, oc_par), dtype=np.int64).reshape(want.shape)
        # An odd last row or column is dropped after the last output: let the sender finish it.
        await sender
        bad = np.argwhere(got != want)
        assert len(bad) == 0, (f"seed={seed} map {n} shape {fmap.shape}: {len(bad)} mismatches; first at "
                               f"(oy, ox, c)={tuple(bad[0])}: expected {want[tuple(bad[0])]}, "
                               f"got {got[tuple(bad[0])]}")
        assert dut.error.value == 0
