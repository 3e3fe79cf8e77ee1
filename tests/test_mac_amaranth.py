"""StreamMac in amaranth.sim: random packets with random valid/ready gaps, against NumPy int32 sums."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.mac import StreamMac
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send


def expected_sums(packets: list[list[tuple[int, int]]]) -> list[int]:
    return [int(np.sum([a * b for a, b in p], dtype=np.int64).astype(np.int32)) for p in packets]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_mac_random(seed):
    rng = random.Random(seed)
    packets = [[(rng.randint(-128, 127), rng.randint(-128, 127)) for _ in range(rng.randint(1, 20))]
               for _ in range(12)]
    beats = [{"a": a, "b": b, "last": int(k == len(p) - 1)} for p in packets for k, (a, b) in enumerate(p)]
    dut = StreamMac()
    got: list[int] = []

    async def producer(ctx):
        await stream_send(ctx, dut.i, beats, rng=random.Random(seed + 100), gap=0.3)

    async def consumer(ctx):
        got.extend(await stream_recv(ctx, dut.o, len(packets), rng=random.Random(seed + 200), gap=0.3))

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "mac.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.run()
    want = expected_sums(packets)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"seed={seed}: packet {i}: expected {w}, got {g}"


def test_stream_mac_wraps_like_int32():
    # 2^17 products of (-128 * -128) = 2^31 overflow int32 exactly once.
    assert expected_sums([[(-128, -128)] * (1 << 17)]) == [-(1 << 31)]
