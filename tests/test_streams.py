"""The stream protocol monitor itself: it must catch a source that breaks the valid/ready rules."""

import pytest
from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from jacquard.sim.streams import ProtocolError, stream_monitor


class _BadSource(wiring.Component):
    """Raises valid for one cycle and drops it (or changes payload) whether or not it was taken."""

    o: Out(stream.Signature(8))
    mode: In(1)

    def elaborate(self, platform):
        m = Module()
        count = Signal(4)
        m.d.sync += count.eq(count + 1)
        m.d.comb += self.o.valid.eq(count >= 2)
        # mode 0: valid drops at count 0 (wrap); mode 1: payload follows the counter while stalled.
        m.d.comb += self.o.payload.eq(Mux(self.mode, count, 7))
        with m.If(~self.mode & (count == 5)):
            m.d.comb += self.o.valid.eq(0)
        return m


@pytest.mark.parametrize("mode, message", [(0, "valid dropped"), (1, "payload changed")])
def test_monitor_catches(mode, message):
    dut = _BadSource()

    async def tb(ctx):
        ctx.set(dut.mode, mode)
        await stream_monitor(ctx, dut.o, "bad.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    with pytest.raises(ProtocolError, match=message):
        sim.run_until(1e-6)
