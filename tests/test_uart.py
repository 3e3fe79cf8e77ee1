"""UartRx and UartTx in amaranth.sim: loopback with random bytes and gaps, glitches, framing errors."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from jacquard.rtl.uart import UartRx, UartTx, _check_divisor, uart_divisor
from jacquard.sim.streams import stream_get, stream_put


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_loopback(divisor):
    seed = divisor
    rng = random.Random(seed)
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = [rng.randrange(256) for _ in range(24)]
    got = []

    async def send(ctx):
        for b in data:
            for _ in range(rng.choice([0, 0, 3, 40])):
                await ctx.tick()
            await stream_put(ctx, tx.i, b)

    async def recv(ctx):
        for _ in data:
            got.append(await stream_get(ctx, rx.o))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(recv)
    sim.run()
    assert got == data, f"seed={seed}: first mismatch at " \
        f"{next(i for i, (a, b) in enumerate(zip(got, data, strict=True)) if a != b)}"


def _line_bits(byte, divisor, stop=1):
    return [lv for bit in [0, *((byte >> k) & 1 for k in range(8)), stop] for lv in [bit] * divisor]


def test_glitch_is_not_a_start_bit_and_bad_stop_bit_is_dropped():
    divisor = 8
    dut = UartRx(divisor)
    levels = [1] * 10 + [0] * 2 + [1] * 20          # a 2-cycle glitch
    levels += _line_bits(0x3C, divisor, stop=0)      # framing error: dropped
    levels += [1] * 30 + _line_bits(0xA7, divisor) + [1] * 20
    got, errors = [], []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for lv in levels:
            ctx.set(dut.rx, lv)
            _, _, valid, payload, ferr = await ctx.tick().sample(dut.o.valid, dut.o.payload, dut.frame_error)
            if valid:
                got.append(payload)
            errors.append(ferr)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == [0xA7]
    assert sum(errors) == 1


def test_divisor_checks():
    assert uart_divisor(24e6, 115200) == 208
    assert uart_divisor(100e6, 115200) == 868
    with pytest.raises(ValueError, match="too slow"):
        uart_divisor(12e6, 4_000_000)
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(12e6, 1_000_000 * 12 // 5 + 200_000)
    with pytest.raises(ValueError, match="Divisor must be"):
        _check_divisor(3)  # what both constructors call first
