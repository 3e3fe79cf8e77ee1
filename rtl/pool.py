"""Standalone pooling: lane-wise max or int32 sum over each window of the line buffer's tap stream.

The line buffer is reused as the window generator. In its depthwise order it sends, for each
output position and channel tile, the KH*KW taps of that tile (``first`` ... ``last``); this unit
reduces each such packet lane by lane:

* ``MAX``: ``max`` over the window, int8 out (``o``), for ONNX MaxPool (``golden.max_pool``). The
  line buffer's padding value must be set to -128, which never wins, as in ONNX.
* ``SUM``: the int32 sum over the window (``o_sum``), for QLinearGlobalAveragePool: MLAS
  computes ``clamp(rint(f32(sum(x) - zx*H*W) * M) + zy)`` with ``M = f32(sx / f32(sy * f32(H*W)))``
  (``golden.global_avg_pool``), which is exactly the post-processor's requantization with
  ``bias' = -zx*H*W``. The "window" is then the whole map of one channel tile: any packet length
  up to ``2^24`` taps, so the DMA may feed it directly (the line buffer's kernels stop at 7x7).

Windowed QLinearAveragePool is not done here: onnxruntime sums *float32* dequantized values in
order and divides twice in float32, which needs a float datapath (:class:`~jacquard.rtl.avg_pool.AvgPool`,
which the core uses for AVGPOOL); ``AVG`` mode is refused with ``error``. The core runs
GLOBAL_AVGPOOL through this unit's ``SUM`` mode.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import acc_layout, pixel_layout, tap_layout
from .params import check_int

__all__ = ["Pool", "PoolError", "PoolMode"]

TAPS_BITS = 25  # packets of up to 2^24 taps: an int8 sum of that many fits int32


class PoolMode(enum.Enum, shape=2):
    """What the unit computes over each window."""

    MAX = 0
    SUM = 1
    #: Windowed average (QLinearAveragePool): refused, see the module docstring.
    AVG = 2


class PoolError(enum.Enum, shape=2):
    """Why the pool unit stopped. ``FRAMING`` is sticky until ``clear``."""

    NONE = 0
    #: ``taps`` is 0 or above 2^24, or ``mode`` is not MAX or SUM.
    CONFIG = 1
    #: A tap's ``first``/``last`` flags disagree with ``taps`` (the beat is discarded).
    FRAMING = 2


class Pool(wiring.Component):
    """Lane-wise max (int8) or sum (int32) over packets of ``taps`` tap beats.

    Parameters
    ----------
    c_par : int
        Channels per beat (1..64).

    Members
    -------
    i : In(stream.Signature(tap_layout(c_par)))
        Window taps; each window is one packet from ``first`` to ``last``.
    o : Out(stream.Signature(pixel_layout(c_par)))
        ``MAX`` mode: one int8 beat per window.
    o_sum : Out(stream.Signature(acc_layout(c_par)))
        ``SUM`` mode: one int32 beat per window.
    mode : In(PoolMode)
        The reduction. Configuration ports are static while a layer runs.
    taps : In(25)
        Taps per window: KH*KW, or H*W for a global pool (1..2^24). ``first``/``last`` are checked
        against it.
    clear : In(1)
        Restarts the tap counter and clears a sticky error (between layers only).
    error : Out(1)
        Set while the configuration is invalid or after a framing error; nothing is accepted then.
    error_code : Out(PoolError)
        The cause of ``error``.

    Raises
    ------
    TypeError
        If ``c_par`` is not an int.
    ValueError
        If ``c_par`` is out of range.
    """

    def __init__(self, c_par: int = 8) -> None:
        self._c_par = check_int("c_par", c_par, 1, 64)
        super().__init__({
            "i": In(stream.Signature(tap_layout(c_par))),
            "o": Out(stream.Signature(pixel_layout(c_par))),
            "o_sum": Out(stream.Signature(acc_layout(c_par))),
            "mode": In(PoolMode),
            "taps": In(TAPS_BITS),
            "clear": In(1),
            "error": Out(1),
            "error_code": Out(PoolError),
        })

    @property
    def c_par(self) -> int:
        return self._c_par

    def elaborate(self, platform) -> Module:
        m = Module()
        c_par = self._c_par
        is_max = self.mode == PoolMode.MAX

        cfg_ok = Signal()
        # 1 <= taps <= 2^24 as zero tests, not a compare's carry chain (it gates i.ready).
        m.d.comb += cfg_ok.eq((self.taps != 0) & (~self.taps[24] | (self.taps[:24] == 0))
                              & ((self.mode == PoolMode.MAX) | (self.mode == PoolMode.SUM)))
        framing = Signal()  # sticky
        m.d.comb += self.error.eq(framing | ~cfg_ok)
        with m.If(framing):
            m.d.comb += self.error_code.eq(PoolError.FRAMING)
        with m.Elif(~cfg_ok):
            m.d.comb += self.error_code.eq(PoolError.CONFIG)

        # s0: the tap, checked against the window's framing and registered; s1: the running
        # reduction, `done` marking a finished window; s2: the output register of the mode, with
        # a skid register in front so that a finished window moves on registers only. The
        # accumulator's clock enable and selects then come from registers: the framing check,
        # the 32-bit add, the consumer's ready and the enable's fan-out in one cycle were
        # gap_sum's critical path (10.2 ns).
        # acc, mx, sk and s0 hold data read only under their flags: no resets (a reset made the
        # core's flush a net into every one of their flops).
        acc = Signal(acc_layout(c_par), reset_less=True)
        done = Signal()
        sk_valid = Signal()
        sk = Signal(acc_layout(c_par), reset_less=True)
        move = Signal()  # the finished window leaves the accumulator
        s0_valid = Signal()
        s0_go = Signal()  # s0's tap enters the reduction
        s0 = Signal.like(self.i.payload, reset_less=True)
        m.d.comb += [
            move.eq(done & ~sk_valid),
            s0_go.eq(s0_valid & (~done | ~sk_valid)),
            self.i.ready.eq((~s0_valid | s0_go) & cfg_ok & ~framing),
        ]

        # Where the current tap is in its window, without a carry chain: `at_first` is a flag and
        # `left` counts the window's taps left, the current one included, once past its first
        # tap. (Comparing a tap index with `taps - 1` put a subtract and a compare in series with
        # the framing check.)
        at_first = Signal(init=1)
        left = Signal(TAPS_BITS)
        tap = self.i.payload
        at_last = Mux(at_first, self.taps == 1, left == 1)
        with m.If(s0_go):
            m.d.sync += s0_valid.eq(0)
        with m.If(self.clear):
            m.d.sync += [at_first.eq(1), framing.eq(0)]
        with m.Elif(self.i.valid & self.i.ready):
            with m.If((tap.first != at_first) | (tap.last != at_last)):
                m.d.sync += framing.eq(1)
            with m.Else():
                m.d.sync += [at_first.eq(at_last), left.eq(Mux(at_first, self.taps, left) - 1),
                             s0_valid.eq(1), s0.eq(tap)]

        with m.If(move):
            m.d.sync += done.eq(0)
        # Both reductions run on every tap, each in its own register, and the output takes the
        # mode's: a mode-selected update merged the sum's carry chain and the max compare into
        # the accumulator's clock enable (10.0 ns).
        mx = Signal(pixel_layout(c_par), reset_less=True)  # the running max: int8
        with m.If(s0_go):
            m.d.sync += done.eq(s0.last)
            for c in range(c_par):
                x = s0.data[c]
                m.d.sync += acc[c].eq(Mux(s0.first, x, acc[c] + x))
                with m.If(s0.first | (x > mx[c])):
                    m.d.sync += mx[c].eq(x)

        # s2: the mode's output register takes the skid's window, else the accumulator's; the
        # skid takes the accumulator's while the output is held. The result stays until taken.
        out_free = Mux(is_max, ~self.o.valid | self.o.ready, ~self.o_sum.valid | self.o_sum.ready)
        # In MAX mode the accumulator's lanes carry the running max (sign-extended).
        window = Signal(acc_layout(c_par))
        for c in range(c_par):
            m.d.comb += window[c].eq(Mux(is_max, mx[c], acc[c]))
        result = Signal(acc_layout(c_par))
        m.d.comb += result.eq(Mux(sk_valid, sk, window))
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.o_sum.ready):
            m.d.sync += self.o_sum.valid.eq(0)
        with m.If(out_free):
            with m.If(sk_valid | move):
                m.d.sync += sk_valid.eq(0)
                with m.If(is_max):
                    m.d.sync += self.o.valid.eq(1)
                    for c in range(c_par):
                        m.d.sync += self.o.payload[c].eq(result[c])
                with m.Else():
                    m.d.sync += [self.o_sum.valid.eq(1), self.o_sum.payload.eq(result)]
        with m.Elif(move):
            m.d.sync += [sk_valid.eq(1), sk.eq(window)]
        return m
