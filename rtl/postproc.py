"""Post-processing: bias, exact requantization, zero point, clamp and an optional activation LUT.

Per accumulator beat (one output position, one output-channel tile of ``oc_par`` channels) it
computes, for each channel ``c`` of the tile,
``y = lut[clamp(round_half_even(f32(acc + bias'_c) * M_c) + zy, lo, hi) + 128]`` (the LUT step only
when enabled), bit-exact with :func:`jacquard.sim.golden.requantize` and ``apply_lut``.

Throughput: ``n_requant`` requantizer lanes serve the ``oc_par`` channels of a beat in
``oc_par / n_requant`` cycles, so the unit takes one beat every ``oc_par / n_requant`` cycles. The
PE array delivers one beat per accumulation, i.e. every ``KH * KW * c_tiles`` cycles, so the unit
never limits a layer whose accumulation is at least ``oc_par / n_requant`` taps long. A 1x1 layer
with ``C_in == c_par`` (one tap per accumulation) needs ``n_requant == oc_par``.

Where it bottlenecks (reference config c_par = 8, oc_par = 16; each lane costs 3 MULT18X18D):

==========  =====  ==================  ===============================================================
n_requant   DSPs   cycles per beat     PE array slowed down when taps per accumulation T < cycles
==========  =====  ==================  ===============================================================
16          48     1                   never
8           24     2                   1x1 with C_in <= 8 (T = 1): PE at 50 %
4           12     4                   1x1 with C_in <= 24 (T <= 3): PE at T/4; 3x3 (T >= 9) never
==========  =====  ==================  ===============================================================

3x3 layers (including a first layer with C_in = 3, and depthwise 3x3: T = 9) never wait for the
post-processor. Loading a layer's parameters takes ``n_oc_tiles * oc_par`` cycles (plus 256 for
the LUT); it is not overlapped with the previous layer (single-buffered parameter memory).

Control: the per-layer configuration is sampled on ``start`` (only while ``busy`` is low). The unit
then takes ``n_oc_tiles * oc_par`` channel parameters on ``params`` (channel order), then, if
``lut_enable``, the 256 LUT entries on ``lut`` (entry ``x + 128`` for input ``x``), then accumulator
beats until the next ``start``. Beats are taken by an oc-tile counter that wraps at ``n_oc_tiles``:
beat ``k`` of a layer uses the parameters of tile ``k mod n_oc_tiles``.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from jacquard.rtl.layouts import ChannelParamsLayout, acc_layout, out_layout
from jacquard.rtl.requantizer import RequantPipe

__all__ = ["PostProcessor"]

# Loader/run states.
IDLE, LOAD_PARAMS, LOAD_LUT, RUN, ERROR = range(5)


class PostProcessor(wiring.Component):
    """Bias, requantization, clamp and LUT over ``oc_par``-channel accumulator beats.

    Parameters
    ----------
    oc_par : int
        Channels per beat (the PE array's output parallelism).
    n_requant : int
        Requantizer lanes; must divide ``oc_par``. Each lane is one :class:`RequantPipe`
        (three MULT18X18D on ECP5). The unit takes a beat every ``oc_par // n_requant`` cycles.
    max_oc_tiles : int
        Depth of the parameter memory in oc tiles (``max_oc_tiles * oc_par`` output channels).
    lut : bool
        Build the activation LUT (256 x int8, one read port per lane).

    Members
    -------
    i : In(stream.Signature(acc_layout(oc_par)))
        int32 accumulators, one beat per (output position, oc tile), oc tile minor.
    o : Out(stream.Signature(out_layout(oc_par)))
        int8 outputs, one beat per input beat, in order.
    params : In(stream.Signature(ChannelParamsLayout()))
        Channel parameters (bias' and float32 multiplier bits), one channel per beat, taken after
        ``start``. A multiplier that is inf or NaN sets ``error``.
    lut : In(stream.Signature(signed(8)))
        The 256 LUT entries, taken after the parameters when ``lut_enable`` is set.
    start : In(1)
        Pulse: sample the configuration below and begin loading a layer.
    n_oc_tiles : In(range(max_oc_tiles + 1))
        Output-channel tiles of the layer, 1..``max_oc_tiles``.
    zero_point, lo, hi : In(signed(8))
        Output zero point and clamp bounds (``lo <= hi``; ``lo = zero_point`` fuses ReLU).
    lut_enable : In(1)
        Apply the LUT after the clamp (refused with ``error`` when built with ``lut=False``).
    busy : Out(1)
        A beat is in flight inside the unit or waiting on ``o``.
    running : Out(1)
        Parameters (and LUT) are loaded; accumulator beats are being taken.
    error : Out(1)
        The layer was refused: ``n_oc_tiles`` out of range, ``lo > hi``, LUT requested but not
        built, ``start`` while busy, or a non-finite multiplier. Nothing more is taken until the
        next ``start``.

    Raises
    ------
    ValueError
        If ``oc_par`` or ``max_oc_tiles`` is not positive, or ``n_requant`` does not divide ``oc_par``.
    """

    def __init__(self, oc_par: int = 16, n_requant: int = 16, max_oc_tiles: int = 64, lut: bool = True):
        if not isinstance(oc_par, int) or oc_par < 1:
            raise ValueError(f"oc_par must be a positive integer, not {oc_par!r}")
        if not isinstance(n_requant, int) or n_requant < 1 or oc_par % n_requant:
            raise ValueError(f"n_requant must be a positive divisor of oc_par={oc_par}, not {n_requant!r}")
        if not isinstance(max_oc_tiles, int) or max_oc_tiles < 1:
            raise ValueError(f"max_oc_tiles must be a positive integer, not {max_oc_tiles!r}")
        self._oc_par = oc_par
        self._n_requant = n_requant
        self._max_oc_tiles = max_oc_tiles
        self._lut = bool(lut)
        super().__init__({
            "i": In(stream.Signature(acc_layout(oc_par))),
            "o": Out(stream.Signature(out_layout(oc_par))),
            "params": In(stream.Signature(ChannelParamsLayout())),
            "lut": In(stream.Signature(signed(8))),
            "start": In(1),
            "n_oc_tiles": In(range(max_oc_tiles + 1)),
            "zero_point": In(signed(8)),
            "lo": In(signed(8)),
            "hi": In(signed(8)),
            "lut_enable": In(1),
            "busy": Out(1),
            "running": Out(1),
            "error": Out(1),
        })

    @property
    def oc_par(self) -> int:
        return self._oc_par

    @property
    def n_requant(self) -> int:
        return self._n_requant

    @property
    def cycles_per_beat(self) -> int:
        """Steady-state cycles per accumulator beat: ``oc_par // n_requant``."""
        return self._oc_par // self._n_requant

    @property
    def latency(self) -> int:
        """Cycles from a beat's first group issued to the beat written into the output FIFO."""
        return 3 + RequantPipe.LATENCY + 2 + self.cycles_per_beat

    @property
    def out_fifo_depth(self) -> int:
        """Output FIFO depth: every beat in flight at full rate plus the margin of ``room``.

        One LUT-RAM is 16 entries deep and the FIFO's output register holds one more.
        """
        need = -(-(self.latency + 3) // self.cycles_per_beat) + 3
        return 16 * -(-(need - 1) // 16) + 1

    def elaborate(self, platform) -> Module:
        m = Module()
        n_r, groups = self._n_requant, self.cycles_per_beat
        n_rows = self._max_oc_tiles * groups

        # -- configuration, sampled on start ---------------------------------------------------
        zero_point = Signal(signed(8))
        lo = Signal(signed(8))
        hi = Signal(signed(8))
        lut_enable = Signal()
        last_row = Signal(range(n_rows))

        # -- parameter memory: one row holds the params of the n_r channels of one issue group ----
        params_mem = memory.Memory(shape=data.ArrayLayout(ChannelParamsLayout(), n_r), depth=n_rows, init=[])
        m.submodules.params_mem = params_mem
        p_wr = params_mem.write_port()
        p_rd = params_mem.read_port()
        lut_rd = []
        if self._lut:
            m.submodules.lut_mem = lut_mem = memory.Memory(shape=signed(8), depth=256, init=[])
            lut_wr = lut_mem.write_port()
            lut_rd = [lut_mem.read_port() for _ in range(n_r)]

        # -- pipeline bookkeeping ----------------------------------------------------------------
        # The pipeline never stalls: every stage advances on every cycle and finished beats wait
        # in the output FIFO. A group is issued only while that FIFO has room for every beat in
        # flight (``room``, a register), so neither ``o.ready`` nor an enable fans out over the
        # thousands of pipeline flops, and ``i.ready`` depends on registers only.
        m.submodules.out_fifo = out_fifo = SyncFIFOBuffered(width=8 * self._oc_par, depth=self.out_fifo_depth)
        inflight = Signal(range(self.out_fifo_depth + 1))  # beats issued and not yet sent
        room = Signal(init=1)
        f_group = Signal(range(groups))
        # Valid and "last group of the beat" flags, one bit per stage: x (param read issued),
        # p (param memory output registered: a DP16KD's clock-to-out is about 5.6 ns), b (bias),
        # requantizer s1..s14, l (LUT read issued), q (LUT output registered).
        depth = 3 + RequantPipe.LATENCY + 2
        s14_index = 2 + RequantPipe.LATENCY
        v_valid = Signal(depth)
        v_last = Signal(depth)

        state = Signal(range(5))
        load_params, load_lut, run, err = (state == LOAD_PARAMS), (state == LOAD_LUT), (state == RUN), \
            (state == ERROR)

        m.d.comb += [
            self.busy.eq((f_group != 0) | (inflight != 0)),
            self.running.eq(run),
            self.error.eq(err),
        ]

        # -- loading ---------------------------------------------------------------------------
        row = Signal(range(n_rows))
        lane = Signal(range(n_r))
        p_buf = Signal(data.ArrayLayout(ChannelParamsLayout(), n_r), reset_less=True)
        width = ChannelParamsLayout().size
        shifted = Signal.like(p_buf)
        # New channels enter at the top lane, so after n_r beats lane 0 holds the first one.
        m.d.comb += shifted.eq(Cat(p_buf.as_value()[width:], self.params.payload.as_value()))
        m.d.comb += [
            self.params.ready.eq(load_params),
            p_wr.addr.eq(row),
            p_wr.data.eq(shifted),
        ]
        lut_addr = Signal(8)
        m.d.comb += self.lut.ready.eq(load_lut)
        if self._lut:
            m.d.comb += [lut_wr.addr.eq(lut_addr), lut_wr.data.eq(self.lut.payload),
                         lut_wr.en.eq(self.lut.valid & load_lut)]

        with m.If(self.params.valid & load_params):
            m.d.sync += [p_buf.eq(shifted), lane.eq(lane + 1)]
            with m.If(lane == n_r - 1):
                m.d.comb += p_wr.en.eq(1)
                m.d.sync += [lane.eq(0), row.eq(row + 1)]
                with m.If(row == last_row):
                    m.d.sync += [row.eq(0), state.eq(Mux(lut_enable, LOAD_LUT, RUN))]
            with m.If(self.params.payload.multiplier[23:31] == 0xFF):
                m.d.sync += state.eq(ERROR)
        with m.If(self.lut.valid & load_lut):
            m.d.sync += lut_addr.eq(lut_addr + 1)
            with m.If(lut_addr == 255):
                m.d.sync += state.eq(RUN)

        with m.If(self.start):
            m.d.sync += [
                zero_point.eq(self.zero_point), lo.eq(self.lo), hi.eq(self.hi),
                lut_enable.eq(self.lut_enable),
                last_row.eq(self.n_oc_tiles * groups - 1),
                row.eq(0), lane.eq(0), lut_addr.eq(0),
            ]
            bad = ((self.n_oc_tiles == 0) | (self.n_oc_tiles > self._max_oc_tiles) |
                   (self.lo > self.hi) | self.busy)
            if not self._lut:
                bad |= self.lut_enable
            m.d.sync += state.eq(Mux(bad, ERROR, LOAD_PARAMS))

        # -- issue: one group of n_r channels a cycle, straight from the input beat --------------
        # The beat waits on ``i`` (valid, payload stable) while its groups are issued, and is
        # taken with the last one: no copy of the oc_par x int32 beat, and ``i.ready`` depends on
        # registers only.
        issue = Signal()
        m.d.comb += [
            issue.eq(run & room & self.i.valid),
            self.i.ready.eq(run & room & (f_group == groups - 1)),
        ]
        with m.If(issue):
            m.d.sync += f_group.eq(Mux(f_group == groups - 1, 0, f_group + 1))
        with m.If(self.start):
            m.d.sync += f_group.eq(0)

        # The oc-tile (row) counter of the run; it shares `row` with the loader, which is done.
        m.d.comb += [p_rd.addr.eq(row), p_rd.en.eq(1)]
        with m.If(issue):  # only while running
            m.d.sync += row.eq(Mux(row == last_row, 0, row + 1))

        groups_acc = [Signal(data.ArrayLayout(signed(32), n_r), name=f"f_group{k}") for k in range(groups)]
        for k, g in enumerate(groups_acc):
            m.d.comb += g.eq(Cat(self.i.payload[k * n_r + j] for j in range(n_r)))
        # The data registers (x_acc .. group_y, a_buf, p_buf) have no reset: they are read only
        # under v_valid/lane, and resets into them made the core's flush a net into ~3,700
        # flops' resets (85F SoC).
        x_acc = Signal(data.ArrayLayout(signed(32), n_r), reset_less=True)
        m.d.sync += [
            x_acc.eq(_select(f_group, groups_acc)),
            v_valid.eq(Cat(issue, v_valid[:-1])),
            v_last.eq(Cat(f_group == groups - 1, v_last[:-1])),
        ]

        # p: registered memory output; b: bias add (int32, wrapping like the accumulators).
        p_acc = Signal.like(x_acc)  # reset_less, like x_acc
        p_params = Signal(data.ArrayLayout(ChannelParamsLayout(), n_r), reset_less=True)
        b_acc = Signal(data.ArrayLayout(signed(32), n_r), reset_less=True)
        b_mult = Signal(data.ArrayLayout(32, n_r), reset_less=True)
        m.d.sync += [p_acc.eq(x_acc), p_params.eq(p_rd.data)]
        for j in range(n_r):
            m.d.sync += [
                b_acc[j].eq(p_acc[j] + p_params[j].bias),
                b_mult[j].eq(p_params[j].multiplier),
            ]

        # s1..s14: requantizer lanes in lock step; then l: the LUT (one read port per lane), q.
        l_y = Signal(data.ArrayLayout(signed(8), n_r), reset_less=True)
        group_y = Signal(data.ArrayLayout(signed(8), n_r), reset_less=True)
        invalid = Signal()
        for j in range(n_r):
            pipe = RequantPipe()
            m.submodules[f"requant{j}"] = pipe
            m.d.comb += [
                pipe.en.eq(1), pipe.i_acc.eq(b_acc[j]), pipe.i_multiplier.eq(b_mult[j]),
                pipe.zero_point.eq(zero_point), pipe.lo.eq(lo), pipe.hi.eq(hi),
            ]
            with m.If(pipe.o_invalid & v_valid[s14_index]):
                m.d.comb += invalid.eq(1)
            m.d.sync += l_y[j].eq(pipe.o_y)
            if self._lut:
                rp = lut_rd[j]
                m.d.comb += [rp.addr.eq(pipe.o_y.as_unsigned() ^ 0x80), rp.en.eq(1)]
                m.d.sync += group_y[j].eq(Mux(lut_enable, rp.data, l_y[j]))
            else:
                m.d.sync += group_y[j].eq(l_y[j])
        # Defense in depth: the loader already refuses such multipliers.
        with m.If(invalid):
            m.d.sync += state.eq(ERROR)

        # -- assembly: groups shift in at the top; the last one completes the output beat --------
        q_valid, q_last = v_valid[-1], v_last[-1]
        beat = group_y.as_value()
        if groups > 1:
            a_buf = Signal(8 * n_r * (groups - 1), reset_less=True)
            with m.If(q_valid & ~q_last):
                m.d.sync += a_buf.eq(Cat(a_buf[8 * n_r:], group_y))
            beat = Cat(a_buf, group_y)
        m.d.comb += [out_fifo.w_en.eq(q_valid & q_last), out_fifo.w_data.eq(beat),
                     self.o.valid.eq(out_fifo.r_rdy), self.o.payload.eq(out_fifo.r_data),
                     out_fifo.r_en.eq(self.o.ready)]
        # ``room`` is computed from ``inflight`` a cycle before it is used, so it keeps a margin
        # of 2 (inflight grows by at most 1 a cycle). A beat taken is counted a cycle late
        # (``sent``): the consumer's ready stays off this count, and a late decrement only
        # overstates what is in flight.
        issued = issue & (f_group == groups - 1)
        sent = Signal()
        m.d.sync += [sent.eq(self.o.valid & self.o.ready),
                     inflight.eq(inflight + issued - sent),
                     room.eq(inflight < self.out_fifo_depth - 2)]
        return m


def _select(index, options):
    """A mux tree picking ``options[index]``."""
    result = options[0].as_value()
    for k, option in enumerate(options[1:], start=1):
        result = Mux(index == k, option.as_value(), result)
    return result
