"""cocotb 2.x bench for StreamMac: random packets, random gaps on valid and ready, int32 golden sums."""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from jacquard.sim.cocotb_run import params


class TB:
    """Owns the clock and the drivers of the MAC's input and output streams."""

    def __init__(self, dut, seed: int):
        self.dut = dut
        self.rng = random.Random(seed)
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self):
        self.dut.rst.value = 1
        self.dut.i__valid.value = 0
        self.dut.o__ready.value = 0
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    async def send(self, beats, gap):
        dut = self.dut
        for a, b, last in beats:
            while self.rng.random() < gap:
                dut.i__valid.value = 0
                await RisingEdge(dut.clk)
            dut.i__valid.value = 1
            dut.i__payload.value = (a & 0xFF) | ((b & 0xFF) << 8) | (last << 16)
            # Values read right after the edge are those the flops sampled: the handshake outcome.
            await RisingEdge(dut.clk)
            while dut.i__ready.value != 1:
                await RisingEdge(dut.clk)
            dut.i__valid.value = 0

    async def recv(self, count, gap):
        dut = self.dut
        out = []
        while len(out) < count:
            ready = self.rng.random() >= gap
            dut.o__ready.value = int(ready)
            await RisingEdge(dut.clk)
            if ready and dut.o__valid.value == 1:
                out.append(dut.o__payload.value.to_signed())
        dut.o__ready.value = 0
        return out


@cocotb.test()
async def random_packets(dut):
    p = params()
    seed = p.get("seed", 1)
    tb = TB(dut, seed)
    await tb.reset()
    rng = random.Random(seed)
    packets = [[(rng.randint(-128, 127), rng.randint(-128, 127)) for _ in range(rng.randint(1, 16))]
               for _ in range(p.get("packets", 10))]
    beats = [(a, b, int(k == len(pk) - 1)) for pk in packets for k, (a, b) in enumerate(pk)]
    want = [sum(a * b for a, b in pk) for pk in packets]
    cocotb.start_soon(tb.send(beats, 0.3))
    got = await tb.recv(len(packets), 0.3)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"seed={seed}: packet {i}: expected {w}, got {g}"
