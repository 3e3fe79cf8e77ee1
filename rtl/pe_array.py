"""The PE array: OC_PAR x C_PAR int8 multiply-accumulates, weight-stationary per output-channel tile.

Taps arrive as ``tap_layout(c_par)`` beats in the order of :mod:`jacquard.rtl.layouts`: for each
output position, for each oc tile, for ky, for kx, for c_tile. The weights of every oc tile of a
layer sit in an on-chip weight buffer (:class:`lib.memory.Memory`) in the same order, one
``oc_par x c_par`` block per tap, so the weight address of a tap is simply the running count of
taps modulo ``taps * n_oc_tiles``. The array reads one block per cycle, so it accepts one tap per
cycle whenever its output FIFO has room: 100% of the MACs are busy in steady state for any
layer with C_in >= C_PAR and C_out >= OC_PAR (even with 1-tap accumulations, if the output is
not stalled).

The pipeline never stalls: every stage advances on every cycle, with a valid bit (and the
``first``/``last`` flags) beside the data. Results wait in an output FIFO, and a tap is accepted
only while that FIFO has room for every result in flight (a credit count, ``room`` is a register),
so no clock enable fans out over the array: the multipliers' and block RAMs' enables are constant 1.
That, and register copies of every broadcast placed next to its consumers, is what lets the
16 x 8 array close 100 MHz on an ECP5-85F (the DSP columns spread it over the whole die)::

    s0  accept the tap; framing and weight-range checks
    s1  tap registered; weight address w_base + offset, one copy per row  -> s1_addr_<o>
    s2  the block RAMs read; tap held                                     -> s2_tap
    s3  weight block in the RAMs' output registers (RegisteredRam);
        tap copied per group of 4 rows, flags and depthwise per row        -> s3_w, s3_tap_<g>
    s4  operands in the fabric: tap copied per row, depthwise mask         -> s4_tap_<o>, s4_w
    s5  multiplier input registers                                        -> s5_a, s5_b
    s6  oc_par x c_par products (multiplier output registers)             -> s6_prod
    s7  products copied into the fabric (placed between a DSP and its adder) -> s7_prod
    st<k> adder tree per output channel, one level per stage              -> st<k>_sum
    acc int32 accumulators (``first`` restarts them)                      -> acc_<o>, acc_done_<o>
    out one SyncFIFO per row, written on acc_done, read by ``o``  -> out_fifo_<o>

The weight load is registered the same way (``w1``: write enables, an address copy per row, the
data per group of rows), so a block written by a load beat can be read by a tap accepted in the
next cycle, as before.

Register copies of the same value are ``TRELLIS_FF`` instances on ECP5 (see
:func:`~jacquard.rtl.replica.replica`):
yosys merges identical flip-flops, which would undo the replication.

On ECP5 (``platform.family == "ecp5"``) each product is a ``MULT18X18D`` instance whose input and
output registers are ``s5_a``/``s5_b`` and ``s6_prod``: yosys does not pack fabric registers into
the DSP, and without them the operands and products cross the long routes between the fabric and
the DSP row inside one cycle. Elsewhere (simulation, iCE40) the same registers are written in the
fabric, so both forms are cycle- and bit-identical.

Depthwise mode (``depthwise = 1``, groups = C): the line buffer sends, per output position and
channel tile, the KH*KW taps of that one channel tile (``taps = KH*KW``, ``n_oc_tiles = C/c_par``).
Lane ``c`` of the tap is multiplied by the diagonal weight ``block[c][c]`` (off-diagonal products
are forced to zero), and output lane ``c`` holds channel ``tile*c_par + c``; lanes ``c_par..oc_par-1``
are 0. It needs ``oc_par >= c_par`` (refused otherwise). Only ``c_par`` of the ``c_par*oc_par``
multipliers do useful work, so depthwise utilization is ``1/oc_par`` (6.25% for 8x16).
"""



from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .bram import RegisteredRam
from .dsp import registered_product
from .layouts import acc_layout, pixel_layout, tap_layout
from .replica import replica

__all__ = ["PEArray", "PEError", "weight_block_layout", "weight_row_layout"]

# Widths of the run-time configuration ports. 16 bits cover 7x7 kernels over 8192 input channels
# at c_par=8, and 65535 oc tiles.
TAPS_BITS = 16
TILES_BITS = 16
# Rows (output channels) served by one copy of a value replicated in two register levels (the tap,
# the weight-load data): the first level has oc_par/_GROUP copies, the second one per row.
_GROUP = 4


class PEError(enum.Enum, shape=3):
    """Why the PE array stopped. Codes other than ``CONFIG`` are sticky until ``clear``."""

    NONE = 0
    #: ``taps`` or ``n_oc_tiles`` is 0, ``w_base`` is outside the buffer, or depthwise with oc_par < c_par.
    CONFIG = 1
    #: A tap's ``first``/``last`` flags disagree with ``taps`` (the beat is discarded).
    FRAMING = 2
    #: An accumulation would read weight blocks past the end of the buffer (its first tap is discarded).
    WEIGHT_RANGE = 3
    #: A weight row would be written past the end of the buffer (the beat is discarded).
    LOAD_RANGE = 4


def weight_row_layout(c_par: int) -> data.StructLayout:
    """One beat of the weight load stream: the ``c_par`` weights of one output channel of a block.

    A block is ``oc_par`` such rows, output channel 0 first (oc major). ``first`` restarts the
    write pointer at block ``wl_base``, row 0.
    """
    return data.StructLayout({"data": pixel_layout(c_par), "first": 1})


def weight_block_layout(c_par: int, oc_par: int) -> data.ArrayLayout:
    """One weight buffer word: ``block[oc][c]`` for one (oc tile, ky, kx, c_tile)."""
    return data.ArrayLayout(pixel_layout(c_par), oc_par)


class PEArray(wiring.Component):
    """OC_PAR x C_PAR int8 MAC array with an on-chip weight buffer and int32 accumulators.

    Parameters
    ----------
    c_par : int
        Input channels per tap beat (1..64).
    oc_par : int
        Output channels per accumulator beat (1..64).
    weight_depth : int
        Weight buffer size in ``oc_par x c_par`` blocks (1..65536). A layer (or the part of it the
        sequencer runs at once) needs ``taps * n_oc_tiles`` blocks.

    Members
    -------
    i : In(stream.Signature(tap_layout(c_par)))
        Window taps. ``first``/``last`` must match ``taps``; they are checked, not trusted.
    o : Out(stream.Signature(acc_layout(oc_par)))
        One beat of int32 sums (wrapping like int32 hardware) per (output position, oc tile).
    wl : In(stream.Signature(weight_row_layout(c_par)))
        Weight load stream, one block row per beat, blocks in tap order (oc_tile, ky, kx, c_tile).
        It may run while the array computes on other blocks; writing a block that is being read
        gives the read the old or new weights, not a mix that matters to anyone.
    wl_base : In(range(weight_depth))
        Block where a load starting with a ``first`` beat goes.
    taps : In(16)
        Taps per accumulation: ``KH*KW*C_in/c_par``, or ``KH*KW`` in depthwise mode.
    n_oc_tiles : In(16)
        Output-channel tiles per output position: ``ceil(C_out/oc_par)``, or ``C/c_par`` in depthwise mode.
    depthwise : In(1)
        Depthwise mode (see module docstring).
    w_base : In(range(weight_depth))
        Block holding the first tap of oc tile 0. The configuration ports must be stable while taps
        of a layer are in flight, and for one cycle before its first tap (bounds derived from
        them are registered).
    clear : In(1)
        Restarts the tap and load counters and clears a sticky error. Assert it between layers
        only (the pipeline is not flushed).
    error : Out(1)
        Set while the configuration is invalid (taps are then not accepted; the check is
        registered, so it follows a configuration change one cycle later) or after a sticky
        error; the array accepts nothing until the cause is fixed and ``clear`` pulsed.
    error_code : Out(PEError)
        The cause of ``error``.
    mac_active : Out(1)
        High in each cycle the multipliers compute a useful tap (for the MAC-active perf counter).
    busy : Out(1)
        High while an accumulation whose last tap was accepted has not left on ``o`` yet.

    Raises
    ------
    TypeError
        If a parameter is not an int.
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, c_par: int = 8, oc_par: int = 16, weight_depth: int = 512) -> None:
        for name, value, hi in (("c_par", c_par, 64), ("oc_par", oc_par, 64),
                                ("weight_depth", weight_depth, 65536)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
            if not 1 <= value <= hi:
                raise ValueError(f"{name} must be 1..{hi}, not {value!r}")
        self._c_par = c_par
        self._oc_par = oc_par
        self._weight_depth = weight_depth
        # Room for every result in flight at full rate with 1-tap accumulations (round trip
        # from acceptance to the output and back to ``room``, which keeps a margin of 2), at
        # least 16 deep: one LUT-RAM per 4 bits.
        self._fifo_depth = max(16, 1 << ceil_log2(self.latency + 5))
        super().__init__({
            "i": In(stream.Signature(tap_layout(c_par))),
            "o": Out(stream.Signature(acc_layout(oc_par))),
            "wl": In(stream.Signature(weight_row_layout(c_par))),
            "wl_base": In(range(weight_depth)),
            "taps": In(TAPS_BITS),
            "n_oc_tiles": In(TILES_BITS),
            "depthwise": In(1),
            "w_base": In(range(weight_depth)),
            "clear": In(1),
            "error": Out(1),
            "error_code": Out(PEError),
            "mac_active": Out(1),
            "busy": Out(1),
        })

    @property
    def c_par(self) -> int:
        return self._c_par

    @property
    def oc_par(self) -> int:
        return self._oc_par

    @property
    def weight_depth(self) -> int:
        return self._weight_depth

    @property
    def latency(self) -> int:
        """Clock edges from a ``last`` tap's acceptance to its result on ``o`` (output never stalled)."""
        return 8 + self._tree_stages()

    def _tree_levels(self) -> list[int]:
        """Adder levels per tree register stage: 1 each (``ceil_log2(c_par)`` in all).

        The multipliers' outputs and the tree's rows spread over the die with the DSP columns:
        two levels per stage (17-bit carry chains plus the routes between them) missed 100 MHz.
        """
        return [1] * ceil_log2(self._c_par)

    def _tree_stages(self) -> int:
        return len(self._tree_levels())

    @staticmethod
    def _multiplier(m: Module, platform, a, b, name: str) -> Signal:
        """``a * b`` (int8 x int8) with registered operands and a registered product, copied.

        Three clock edges from ``a``/``b`` to the returned product. On ECP5 the first two
        registers are the ones inside a ``MULT18X18D``; elsewhere they are fabric registers with
        the same timing. The third (``s7_prod``) is a fabric register: the eight DSPs of one
        adder tree can sit far apart in the DSP rows, and a DSP output routed straight into its
        adder was the PE array's critical path (8.3 of 9.5 ns routing, 60 columns); the copy
        lets the placer put a register halfway.
        """
        prod = registered_product(m, platform, Value.cast(a).as_signed(), Value.cast(b).as_signed(),
                                  f"dsp_{name}")
        copy = Signal(signed(16), name=f"s7_prod_{name}", reset_less=True)
        m.d.sync += copy.eq(prod)
        return copy

    def elaborate(self, platform) -> Module:
        m = Module()
        c_par, oc_par, depth = self._c_par, self._oc_par, self._weight_depth
        addr_bits = max(1, ceil_log2(depth))
        wide = max(addr_bits, TAPS_BITS, TILES_BITS) + 2  # for bound checks without wrap-around
        groups = range(0, oc_par, _GROUP)  # first row of each group of rows sharing a replica

        # Read data registered in the block RAMs (see RegisteredRam): their clock-to-output
        # is most of a cycle, and the weight bus fans out to every multiplier. Every row (RAM
        # lane) has its own address so each row's RAMs read a register copy placed next to them.
        m.submodules.weights = ram = RegisteredRam(8 * c_par, depth, lanes=oc_par, lane_addr=True)
        m.d.comb += [ram.r_en.eq(1), ram.r_oe.eq(1)]

        # --- errors -----------------------------------------------------------------------
        cfg_ok = Signal()  # registered: see "configuration" below
        m.d.sync += cfg_ok.eq((self.taps != 0) & (self.n_oc_tiles != 0) & (self.w_base < depth)
                              & (~self.depthwise | (oc_par >= c_par)))
        sticky = Signal(PEError)
        raise_err = Signal(PEError)  # set by whichever check fails this cycle
        with m.If(self.clear):
            m.d.sync += sticky.eq(PEError.NONE)
        with m.Elif((sticky == PEError.NONE) & (raise_err != PEError.NONE)):
            m.d.sync += sticky.eq(raise_err)
        halted = sticky != PEError.NONE
        m.d.comb += self.error.eq(halted | ~cfg_ok)
        with m.If(halted):
            m.d.comb += self.error_code.eq(sticky)
        with m.Elif(~cfg_ok):
            m.d.comb += self.error_code.eq(PEError.CONFIG)

        # --- weight load: a registered write (w1), address copies per row, data per group ------
        wl_block = Signal(addr_bits + 1)  # one extra bit so running past the end is visible
        wl_row = Signal(range(oc_par))
        cur_block = Signal(addr_bits + 1)
        cur_row = Signal(range(oc_par))
        w_en = Signal(oc_par)
        m.d.comb += [
            cur_block.eq(Mux(self.wl.payload.first, self.wl_base, wl_block)),
            cur_row.eq(Mux(self.wl.payload.first, 0, wl_row)),
            self.wl.ready.eq(~halted),
        ]
        with m.If(self.clear):
            m.d.sync += [wl_block.eq(self.wl_base), wl_row.eq(0)]
        with m.Elif(self.wl.valid & self.wl.ready):
            with m.If(cur_block >= depth):
                m.d.comb += raise_err.eq(PEError.LOAD_RANGE)
            with m.Else():
                m.d.comb += w_en.eq(1 << cur_row)
                last_row = cur_row == oc_par - 1
                m.d.sync += [wl_row.eq(Mux(last_row, 0, cur_row + 1)),
                             wl_block.eq(cur_block + last_row)]
        w1_en = Signal(oc_par)
        m.d.sync += w1_en.eq(w_en)
        m.d.comb += ram.w_en.eq(w1_en)
        w1_data = {g: replica(m, platform, self.wl.payload.data.as_value(), f"w1_data_{g}") for g in groups}
        for r in range(oc_par):
            w1_addr = replica(m, platform, cur_block[:addr_bits], f"w1_addr_{r}")
            m.d.comb += [ram.w_addr[r].eq(w1_addr),
                         ram.w_data[r * 8 * c_par:(r + 1) * 8 * c_par].eq(w1_data[r - r % _GROUP])]

        # --- s0: accept a tap, check it -----------------------------------------------------
        # The pipeline never stalls: every stage advances on every cycle, and results wait in
        # the output FIFO. A tap is accepted only while the FIFO has room for every result in
        # flight (``room``, a register), so no clock enable fans out over the array.
        inflight = Signal(range(self._fifo_depth + 1))  # results accepted and not yet sent
        room = Signal(init=1)
        m.d.comb += self.i.ready.eq(room & cfg_ok & ~halted)
        # Configuration: ``cfg_ok`` and the values derived from the configuration ports are
        # registered so that their adders stay off the acceptance path; the configuration must
        # be stable for a cycle before a layer's first tap (it is set with ``clear``, and taps
        # follow the line buffer's fill).
        taps_m1 = Signal(TAPS_BITS)
        tiles_m1 = Signal(TILES_BITS)
        one_tap = Signal()
        two_taps = Signal()
        max_offset = Signal(signed(wide + 1))  # the last offset where an accumulation fits
        m.d.sync += [taps_m1.eq(self.taps - 1), tiles_m1.eq(self.n_oc_tiles - 1),
                     one_tap.eq(self.taps == 1), two_taps.eq(self.taps == 2),
                     max_offset.eq(depth - self.w_base - self.taps)]
        # Where the next tap falls, kept in flags so that the checks are a LUT level or two:
        at_first = Signal(init=1)  # it starts an accumulation
        remain = Signal(TAPS_BITS)  # taps still to come in this accumulation, it included
        remain_last = Signal()  # remain == 1 (meaningful when not at_first)
        tile = Signal(TILES_BITS)
        offset = Signal(wide)  # blocks past w_base of the next tap
        off_zero = Signal(init=1)  # offset == 0
        slack = Signal(signed(wide + 1))  # max_offset - offset (meaningful when not off_zero)
        tap = self.i.payload
        at_last = Mux(at_first, one_tap, remain_last)
        framing_ok = (tap.first == at_first) & (tap.last == at_last)
        # Checked once per accumulation (offset <= max_offset), so an accumulation never reads
        # outside the buffer.
        fits = ~at_first | Mux(off_zero, max_offset >= 0, slack >= 0)
        s0_good = Signal()
        with m.If(self.clear):
            m.d.sync += [at_first.eq(1), tile.eq(0), offset.eq(0), off_zero.eq(1)]
        with m.Elif(self.i.valid & self.i.ready):
            with m.If(~framing_ok):
                m.d.comb += raise_err.eq(PEError.FRAMING)
            with m.Elif(~fits):
                m.d.comb += raise_err.eq(PEError.WEIGHT_RANGE)
            with m.Else():
                m.d.comb += s0_good.eq(1)
            # The position flags advance on every accepted tap, checked or not: a failed check
            # halts the array until ``clear``, which restarts them, so what they hold after one
            # is never used. Their ~60 flops' enable is then the handshake alone (registers); it
            # took the framing compare of the line buffer's output before (12.5 ns in the chain).
            last_tile = tile == tiles_m1
            wrap = at_last & last_tile
            m.d.sync += [at_first.eq(at_last),
                         remain.eq(Mux(at_first, taps_m1, remain - 1)),
                         remain_last.eq(Mux(at_first, two_taps, remain == 2)),
                         offset.eq(Mux(wrap, 0, offset + 1)), off_zero.eq(wrap),
                         slack.eq(Mux(off_zero, max_offset, slack) - 1)]
            with m.If(at_last):
                m.d.sync += tile.eq(Mux(last_tile, 0, tile + 1))
        # ``room`` is computed from ``inflight`` a cycle before it is used, so it keeps a margin
        # of 2 (inflight grows by at most 1 a cycle): the acceptance logic stays off its path.
        # A result taken is counted a cycle late (``sent``, registered): the consumer's ready
        # comes from across the chip (the post-processor's, 16.3 ns into this count on the 85F),
        # and a late decrement only overstates what is in flight, so ``room`` stays safe.
        sent = Signal()
        m.d.sync += [sent.eq(self.o.valid & self.o.ready),
                     inflight.eq(inflight + (s0_good & tap.last) - sent),
                     room.eq(inflight < self._fifo_depth - 2)]
        m.d.comb += self.busy.eq(inflight != 0)

        # --- s1: tap and weight address registered (one address copy per row) ----------------
        # The data registers of s1..s7, the adder trees and the accumulators have no reset: they
        # are read only under the valid bits of ``*_ctl``, and a reset into each of them made the
        # core's flush a net into ~6,500 flops' resets across the DSP rows (85F SoC).
        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        s1_tap = Signal(8 * c_par, reset_less=True)
        m.d.sync += [s1_valid.eq(s0_good), s1_first.eq(tap.first), s1_last.eq(tap.last),
                     s1_tap.eq(tap.data.as_value())]
        r_addr = (self.w_base + offset)[:addr_bits]
        for r in range(oc_par):
            m.d.comb += ram.r_addr[r].eq(replica(m, platform, r_addr, f"s1_addr_{r}"))
        # --- s2: the RAMs read ---------------------------------------------------------------
        s2_valid, s2_first, s2_last = Signal(), Signal(), Signal()
        s2_tap = Signal(8 * c_par, reset_less=True)
        m.d.sync += [s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last), s2_tap.eq(s1_tap)]
        m.d.comb += self.mac_active.eq(s2_valid)  # one cycle per useful tap
        # --- s3: weight block in the RAMs' output registers; tap copied per group, flags per row
        s3_w = Signal(weight_block_layout(c_par, oc_par))
        m.d.comb += s3_w.eq(ram.r_data)
        s2_ctl = Cat(s2_valid, s2_first, s2_last)
        s3_ctl = [replica(m, platform, s2_ctl, f"s3_ctl_{o}") for o in range(oc_par)]
        s3_tap = {g: replica(m, platform, s2_tap, f"s3_tap_{g}") for g in groups}
        # The depthwise flag (configuration, stable during a layer) reaches each row through a
        # register of its own rather than one net over the whole array.
        dw = [replica(m, platform, self.depthwise, f"dw_{o}") for o in range(oc_par)]
        # --- s4: multiplier operands in the fabric (tap copied per row, depthwise mask applied)
        s4_ctl = [Signal(3, name=f"s4_ctl_{o}") for o in range(oc_par)]
        s4_tap = [data.View(pixel_layout(c_par), replica(m, platform, s3_tap[o - o % _GROUP], f"s4_tap_{o}"))
                  for o in range(oc_par)]
        s4_w = Signal(weight_block_layout(c_par, oc_par), reset_less=True)
        for o in range(oc_par):
            m.d.sync += s4_ctl[o].eq(s3_ctl[o])
            for c in range(c_par):
                w = s3_w[o][c]
                if o != c:
                    w = Mux(dw[o], 0, w)  # depthwise keeps the diagonal only
                m.d.sync += s4_w[o][c].eq(w)
        # --- s5: multiplier input registers; s6: products (multiplier output registers); s7 ------
        s7_prod = [[self._multiplier(m, platform, s4_tap[o][c], s4_w[o][c], f"{o}_{c}")
                    for c in range(c_par)] for o in range(oc_par)]
        ctl = s4_ctl
        for stage in ("s5", "s6", "s7"):
            nxt = [Signal(3, name=f"{stage}_ctl_{o}") for o in range(oc_par)]
            m.d.sync += [n.eq(c) for n, c in zip(nxt, ctl, strict=True)]
            ctl = nxt

        # --- adder trees: 1 level in the first stage, then 2 per register stage ---------------
        sums = [list(row) for row in s7_prod]
        for k, n_levels in enumerate(self._tree_levels()):
            nxt = [Signal(3, name=f"st{k}_ctl_{o}") for o in range(oc_par)]
            m.d.sync += [n.eq(c) for n, c in zip(nxt, ctl, strict=True)]
            nxt_sums = []
            for o in range(oc_par):
                terms = sums[o]
                for _ in range(n_levels):
                    terms = [terms[j] + terms[j + 1] if j + 1 < len(terms) else terms[j]
                             for j in range(0, len(terms), 2)]
                regs = [Signal(signed(16 + ceil_log2(c_par)), name=f"st{k}_sum_{o}_{j}", reset_less=True)
                        for j in range(len(terms))]
                m.d.sync += [r.eq(t) for r, t in zip(regs, terms, strict=True)]
                nxt_sums.append(regs)
            sums, ctl = nxt_sums, nxt

        # --- accumulators and the output FIFO, one per row -------------------------------------
        for o in range(oc_par):
            valid, first, last = ctl[o][0], ctl[o][1], ctl[o][2]
            acc = Signal(signed(32), name=f"acc_{o}", reset_less=True)
            acc_done = Signal(name=f"acc_done_{o}")  # acc holds a finished sum
            m.d.sync += acc_done.eq(valid & last)
            with m.If(valid):
                m.d.sync += acc.eq(Mux(first, 0, acc) + sums[o][0])
            # Unbuffered: the FIFO's memory is LUT RAM read asynchronously, so ``o``'s payload has
            # no register whose enable is the consumer's ready. A buffered FIFO's output register
            # sat by the consumer, and its enable's net from the read enable crossed the DSP rows
            # (9.4 ns of a 14.8 ns path, 592 endpoints on the 85F).
            m.submodules[f"out_fifo_{o}"] = fifo = SyncFIFO(width=32, depth=self._fifo_depth)
            # Every row's FIFO sees the same writes and reads, so they stay in step.
            m.d.comb += [fifo.w_en.eq(acc_done), fifo.w_data.eq(acc), fifo.r_en.eq(self.o.ready),
                         self.o.payload[o].eq(fifo.r_data)]
            if o == 0:
                m.d.comb += self.o.valid.eq(fifo.r_rdy)

        return m
