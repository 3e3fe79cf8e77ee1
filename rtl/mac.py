"""A single int8 x int8 multiply-accumulate unit with stream interfaces.

It is the harness smoke test's design under test (issue 2): small enough to run on every simulator
and to synthesize for iCE40 in seconds, yet it has the datapath shape of one PE: a registered
multiply feeding an int32 accumulator, with valid/ready back-pressure on both sides.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MacInLayout", "StreamMac"]


class MacInLayout(data.StructLayout):
    """One multiply-accumulate step: ``a * b`` is added to the running sum; ``last`` closes it."""

    def __init__(self) -> None:
        super().__init__({"a": signed(8), "b": signed(8), "last": 1})


class StreamMac(wiring.Component):
    """Accumulate ``a * b`` over a packet of beats and emit the int32 sum at its ``last`` beat.

    Two pipeline stages: ``s1_`` registers the product (it maps onto one DSP multiplier), ``s2_``
    holds the accumulator. The output beat is held until it is accepted.

    Members
    -------
    i : In(stream.Signature(MacInLayout()))
        Operand pairs. ``last`` marks the final pair of a dot product.
    o : Out(stream.Signature(signed(32)))
        One beat per packet: the int32 sum of the packet's products, wrapping like int32 hardware.
    """

    i: In(stream.Signature(MacInLayout()))
    o: Out(stream.Signature(signed(32)))

    def elaborate(self, platform) -> Module:
        m = Module()

        s1_valid = Signal()
        s1_product = Signal(signed(16))
        s1_last = Signal()
        acc = Signal(signed(32))

        # Stage 2 can take stage 1's beat unless a finished sum is still waiting on the output.
        s2_ready = ~self.o.valid | self.o.ready
        s1_ready = ~s1_valid | s2_ready
        m.d.comb += self.i.ready.eq(s1_ready)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.If(s1_ready):
            m.d.sync += [
                s1_valid.eq(self.i.valid),
                s1_product.eq(self.i.payload.a * self.i.payload.b),
                s1_last.eq(self.i.payload.last),
            ]

        with m.If(s1_valid & s2_ready):
            total = Signal(signed(32))
            m.d.comb += total.eq(acc + s1_product)
            with m.If(s1_last):
                m.d.sync += [self.o.payload.eq(total), self.o.valid.eq(1), acc.eq(0)]
            with m.Else():
                m.d.sync += acc.eq(total)

        return m


