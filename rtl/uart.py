"""8N1 UART receiver and transmitter with byte streams.

Both take the bit period in clock cycles (``divisor``) at elaboration. ``divisor = round(f_clk / baud)``;
the receiver tolerates the usual few-percent clock mismatch because it samples each bit in its middle,
re-aligning on every start bit.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "uart_divisor"]

#: The receiver needs a few cycles per bit to find a bit's middle.
MIN_DIVISOR = 4


def uart_divisor(clk_hz: float, baud: int) -> int:
    """The bit period in cycles for ``baud`` at ``clk_hz``.

    Raises
    ------
    ValueError
        If the rate is not positive, or the clock is too slow for it (divisor below 4), or the
        rounding error exceeds 2 %, which an 8N1 receiver no longer tolerates reliably.
    """
    if not baud > 0:
        raise ValueError(f"Baud rate must be positive, not {baud!r}")
    if not clk_hz > 0:
        raise ValueError(f"Clock frequency must be positive, not {clk_hz!r}")
    divisor = round(clk_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"A {clk_hz / 1e6:g} MHz clock is too slow for {baud} baud "
                         f"(needs at least {MIN_DIVISOR} cycles per bit, has {clk_hz / baud:.2f})")
    error = abs(clk_hz / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(f"{baud} baud at {clk_hz / 1e6:g} MHz is off by {100 * error:.1f}% "
                         f"(divisor {divisor}); pick a baud rate closer to a divisor of the clock")
    return divisor


def _check_divisor(divisor) -> None:
    if not isinstance(divisor, int) or not MIN_DIVISOR <= divisor < 1 << 24:
        raise ValueError(f"Divisor must be an integer in {MIN_DIVISOR}..2**24-1, not {divisor!r}")


class UartRx(wiring.Component):
    """8N1 receiver: start bit, 8 data bits LSB first, one stop bit.

    The pin goes through a two-flop synchronizer. A start bit is a falling edge that is still low
    half a bit later (a shorter glitch is ignored). Each data bit is sampled in its middle. A byte
    whose stop bit is low is a framing error: it is dropped, not delivered.

    Parameters
    ----------
    divisor : int
        Bit period in clock cycles (at least 4).

    Members
    -------
    rx : In(1)
        The serial line (idle high).
    o : Out(stream.Signature(8))
        Received bytes. The receiver does not wait for ``ready``: a byte not taken before the next
        one completes is overwritten (``overrun`` pulses).
    frame_error : Out(1)
        Pulses for one cycle when a byte with a bad stop bit is dropped.
    overrun : Out(1)
        Pulses for one cycle when a byte is lost because the previous one was not taken.

    Raises
    ------
    ValueError
        If ``divisor`` is out of range.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    frame_error: Out(1)
    overrun: Out(1)

    def __init__(self, divisor: int) -> None:
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__()

    @property
    def divisor(self) -> int:
        return self._divisor

    def elaborate(self, platform) -> Module:
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self._divisor))
        bits = Signal(range(10))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self._divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(rx):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(self._divisor - 1), bits.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [timer.eq(self._divisor - 1), shreg.eq(Cat(shreg[1:], rx)),
                                 bits.eq(bits + 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(rx):
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.comb += self.overrun.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.frame_error.eq(1)
                        # Wait for the line to go idle before hunting for the next start bit.
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UartTx(wiring.Component):
    """8N1 transmitter.

    Parameters
    ----------
    divisor : int
        Bit period in clock cycles (at least 4).

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send; ``ready`` is high while the transmitter is idle.
    tx : Out(1)
        The serial line (idle high).
    busy : Out(1)
        A byte is being shifted out.

    Raises
    ------
    ValueError
        If ``divisor`` is out of range.
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, divisor: int) -> None:
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__()

    @property
    def divisor(self) -> int:
        return self._divisor

    def elaborate(self, platform) -> Module:
        m = Module()
        timer = Signal(range(self._divisor))
        # Start bit, 8 data bits, stop bit, shifted out LSB first; the register idles at all ones.
        shreg = Signal(10, init=0x3FF)
        bits = Signal(range(11))

        m.d.comb += [self.tx.eq(shreg[0]), self.busy.eq(bits != 0),
                     self.i.ready.eq(bits == 0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(0, self.i.payload, 1)), bits.eq(10),
                         timer.eq(self._divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.sync += [shreg.eq(Cat(shreg[1:], 1)), bits.eq(bits - 1),
                             timer.eq(self._divisor - 1)]
        return m
