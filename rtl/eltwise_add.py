"""Element-wise add of two int8 tensors (QLinearAdd), bit-exact with ``golden.add`` in integer logic.

onnxruntime (and ``golden.add``) computes, in float32 with two fused multiply-adds::

    t = fma(b, rb, k)              rb = f32(b_scale / y_scale), k = the host's constant term
    s = fma(a, ra, t)              ra = f32(a_scale / y_scale)
    y = sat8(cvtps2dq(s))          round half to even; |s| >= 2^31 gives INT32_MIN, so -128

An FMA rounds once, so each one is computed here exactly and then rounded to 24 bits (RNE). Why
the integer datapath (:class:`_Fma`) is exact:

1. ``n * M`` (``n`` int8, ``M`` a 24-bit significand) is an exact 32-bit integer, normalized so its
   leading one is bit 31. ``C`` is normalized the same way. Call the one with the larger exponent
   ``L`` and the other ``S``, ``d`` the exponent difference.
2. ``W = L * 2^31 +- S * 2^(31-d)`` is exact for ``d <= 31``. For ``d > 31``, ``S * 2^(31-d) < 2^31``
   lies entirely below bit 31 while the 24 kept bits and the guard bit of ``W`` lie at bit 37 or
   above (``W >= 2^62 - 2^31``); replacing it by ``+-1`` leaves every bit from 31 up and the
   "sticky" (nonzero below) the same, hence the same rounding.
3. ``|W| < 2^64`` is normalized (leading-zero count) and rounded to 24 bits with guard and sticky:
   IEEE round-to-nearest-even of the exact sum.
4. Subnormals never occur: ``ra``, ``rb`` and a nonzero ``k`` are required to lie in
   ``[2^-64, 2^64)`` (else ``error``), so every product and nonzero sum is a multiple of at least
   ``2^-110`` and below ``2^73``: always a normal float32. Real models have ratios near 1.
5. The final ``cvtps2dq`` + saturating pack is a fixed-point round (as in the requantizer): ``|s|``
   in ``[2^31, ...)`` gives -128, ``[256, 2^31)`` saturates by sign, below 0.5 gives 0.

The unit then clamps to ``[lo, hi]`` (a fused ReLU). ``lanes`` datapath lanes serve the ``c_par``
lanes of a beat (one beat per ``c_par // lanes`` cycles), each lane two :func:`_fma` datapaths
(LUT logic only: the int8 x 24-bit products are shift-adds, so no DSP is spent here).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .fp32 import FMA_DEEP_STAGES, _decode, _fma, _Pipe
from .layouts import pixel_layout
from .params import check_int

__all__ = ["EltwiseAdd"]

class EltwiseAdd(wiring.Component):
    """QLinearAdd of two int8 streams, ``c_par`` lanes per beat, bit-exact with ``golden.add``.

    Parameters
    ----------
    c_par : int
        Lanes per beat (1..64).
    lanes : int, optional
        Datapath lanes (default ``c_par``; must divide it). With fewer lanes a beat goes through in
        ``c_par // lanes`` cycles: each lane costs two :func:`~jacquard.rtl.fp32._fma` datapaths
        (about 2.7k LUT4), so a core that adds rarely uses one or two.

    Members
    -------
    a, b : In(stream.Signature(pixel_layout(c_par)))
        The two inputs, beat for beat (same shape and order). A beat is taken when both are valid.
    o : Out(stream.Signature(pixel_layout(c_par)))
        ``clamp(golden.add(a, b), lo, hi)``, one beat per input pair, in order.
    ra, rb : In(32)
        float32 bits of ``f32(a_scale / y_scale)`` and ``f32(b_scale / y_scale)``.
    k : In(32)
        float32 bits of ``f32(y_zp) - fma(ra, a_zp, f32(rb * b_zp))`` (as ``golden.add`` builds it).
    lo, hi : In(signed(8))
        Output clamp; -128 and 127 for a plain QLinearAdd. Configuration ports are static while
        beats are in flight.
    error : Out(1)
        ``ra`` or ``rb`` is not a normal float in ``[2^-64, 2^64)``, ``k`` is neither zero nor in
        that range, or ``lo > hi`` (registered: it follows a configuration change a cycle later,
        so the configuration is set at least a cycle before the first beat). No beat is accepted
        while it is set.

    Raises
    ------
    TypeError
        If ``c_par`` is not an int.
    ValueError
        If ``c_par`` or ``lanes`` is out of range, or ``lanes`` does not divide ``c_par``.
    """

    def __init__(self, c_par: int = 8, *, lanes: int | None = None) -> None:
        self._c_par = check_int("c_par", c_par, 1, 64)
        self._lanes = check_int("lanes", c_par if lanes is None else lanes, 1, c_par)
        if c_par % self._lanes:
            raise ValueError(f"lanes must divide c_par ({c_par}), not {self._lanes}")
        super().__init__({
            "a": In(stream.Signature(pixel_layout(c_par))),
            "b": In(stream.Signature(pixel_layout(c_par))),
            "o": Out(stream.Signature(pixel_layout(c_par))),
            "ra": In(32),
            "rb": In(32),
            "k": In(32),
            "lo": In(signed(8), init=-128),
            "hi": In(signed(8), init=127),
            "error": Out(1),
        })

    @property
    def c_par(self) -> int:
        return self._c_par

    @property
    def lanes(self) -> int:
        return self._lanes

    #: Register stages from an accepted pair to the output queue's input.
    pipe_stages = 2 * FMA_DEEP_STAGES + 6
    #: Cycles from an accepted pair to its output (never stalled) when ``lanes == c_par``: the
    #: pipeline, then the output queue's one. With fewer lanes the beat is held a cycle first and
    #: each further slice adds one: ``latency + c_par // lanes`` in all.
    latency = pipe_stages + 1

    def elaborate(self, platform) -> Module:
        m = Module()
        n_slices = self._c_par // self._lanes
        ra, ra_ok, _ = _decode(m, self.ra, "ra")
        rb, rb_ok, _ = _decode(m, self.rb, "rb")
        k, k_ok, k_zero = _decode(m, self.k, "k")
        # Registered: the decode and range compares were in front of a.ready/b.ready, and from
        # there of the core's read router. It follows a configuration change a cycle later (the
        # configuration is set before the group's first beat).
        m.d.sync += self.error.eq(~ra_ok | ~rb_ok | ~(k_ok | k_zero) | (self.lo > self.hi))

        # The pipeline never stalls: a pair is taken only while the output queue has room for
        # every beat in flight (a credit count), so no stage needs an enable. The stall signal's
        # fan-out to every pipeline register was the unit's critical path (17.0 ns with 8 lanes,
        # 9.2 ns of it routing).
        p = _Pipe(m, Const(1))
        # Beats in flight at full rate: those in the pipeline and the queue, and two to spare (the
        # count is updated a cycle after a beat is taken or sent).
        depth = -(-(self.latency + n_slices) // n_slices) + 2
        m.submodules.out_queue = queue = fifo.SyncFIFOBuffered(width=8 * self._c_par, depth=depth)
        pending = Signal(range(depth + 1))  # beats taken and not yet sent on `o`
        room = Signal()
        m.d.comb += room.eq(pending != depth)
        slot_bits = max(1, (n_slices - 1).bit_length())
        in_valid = Signal()
        in_slot = Signal(slot_bits)
        in_a = Signal(pixel_layout(self._lanes))
        in_b = Signal(pixel_layout(self._lanes))
        take = Signal()
        if n_slices == 1:
            m.d.comb += [
                take.eq(self.a.valid & self.b.valid & room & ~self.error),
                self.a.ready.eq(self.b.valid & room & ~self.error),
                self.b.ready.eq(self.a.valid & room & ~self.error),
                in_valid.eq(take), in_a.eq(self.a.payload), in_b.eq(self.b.payload),
            ]
        else:
            # A beat is held and sent through the datapath ``lanes`` lanes per cycle.
            held = Signal()
            slot = Signal(slot_bits)
            hold_a = Signal(pixel_layout(self._c_par))
            hold_b = Signal(pixel_layout(self._c_par))
            last_out = held & (slot == n_slices - 1)
            free = (~held | last_out) & room & ~self.error
            m.d.comb += [
                take.eq(self.a.valid & self.b.valid & free),
                self.a.ready.eq(self.b.valid & free),
                self.b.ready.eq(self.a.valid & free),
                in_valid.eq(held),
                in_slot.eq(slot),
                in_a.eq(hold_a.as_value().word_select(slot, 8 * self._lanes)),
                in_b.eq(hold_b.as_value().word_select(slot, 8 * self._lanes)),
            ]
            with m.If(held):
                m.d.sync += slot.eq(slot + 1)
            with m.If(last_out):
                m.d.sync += held.eq(0)
            with m.If(take):
                m.d.sync += [held.eq(1), slot.eq(0), hold_a.eq(self.a.payload), hold_b.eq(self.b.payload)]
        sent = self.o.valid & self.o.ready
        m.d.sync += pending.eq(pending + take - sent)
        # The operands are registered before the multiply (the slice select, |n| and the product
        # tree in one stage were 13 levels); valid and slot follow in the chain below.
        in_a = p.reg("i0_a", pixel_layout(self._lanes), in_a)
        in_b = p.reg("i0_b", pixel_layout(self._lanes), in_b)
        valid, tag = in_valid, in_slot
        for s in range(self.pipe_stages - 1):
            valid = p.tag(f"v{s}", 1, valid)
            tag = p.tag(f"slot{s}", slot_bits, tag)
        last = valid & (tag == n_slices - 1)
        result = Signal(pixel_layout(self._lanes))

        for lane in range(self._lanes):
            # Deep FMAs (|n| and the product's halves registered): the 7-stage product was the
            # unit's critical path once the pipeline ran free (18.4 ns with 8 lanes, 13.3 ns with 1).
            t = _fma(p, in_b[lane], rb, k, f"l{lane}_t", deep=True)
            a_late = in_a[lane]
            for s in range(FMA_DEEP_STAGES):
                a_late = p.reg(f"l{lane}_a{s}", signed(8), a_late)
            s_ = _fma(p, a_late, ra, t, f"l{lane}_s", deep=True)

            # r0: range of the exponent of s's leading bit; r1: fixed point with 24 fraction bits.
            elead = s_.elsb + 23
            r0_big = p.reg(f"l{lane}_r0_big", 1, ~s_.zero & (elead >= 31))
            r0_sat = p.reg(f"l{lane}_r0_sat", 1, ~s_.zero & (elead >= 8))
            r0_flush = p.reg(f"l{lane}_r0_flush", 1, s_.zero | (elead <= -2))
            shift = Signal(range(9), name=f"l{lane}_r0_shift_next")
            with m.If((elead >= -1) & (elead <= 7)):
                m.d.comb += shift.eq(elead + 1)
            r0_shift = p.reg(f"l{lane}_r0_shift", range(9), shift)
            r0_mant = p.reg(f"l{lane}_r0_mant", 24, s_.mant)
            r0_sign = p.reg(f"l{lane}_r0_sign", 1, s_.sign)
            fixed = Signal(32, name=f"l{lane}_r1_fixed")
            m.d.comb += fixed.eq(r0_mant << r0_shift)
            r1_whole = p.reg(f"l{lane}_r1_whole", 9, fixed[24:])
            r1_guard = p.reg(f"l{lane}_r1_guard", 1, fixed[23])
            r1_sticky = p.reg(f"l{lane}_r1_sticky", 1, fixed[:23].any())
            r1_big = p.reg(f"l{lane}_r1_big", 1, r0_big)
            r1_sat = p.reg(f"l{lane}_r1_sat", 1, r0_sat)
            r1_flush = p.reg(f"l{lane}_r1_flush", 1, r0_flush)
            r1_sign = p.reg(f"l{lane}_r1_sign", 1, r0_sign)

            # r2: round half to even (11 bits, not yet saturated to int8); r3: saturate like
            # cvtps2dq + packs and clamp to [lo, hi] (split: in one stage, with the output's
            # multiplexer behind, 14 levels).
            mag = Signal(10, name=f"l{lane}_r2_mag")
            m.d.comb += mag.eq(r1_whole + (r1_guard & (r1_sticky | r1_whole[0])))
            val = Signal(signed(11), name=f"l{lane}_r2_val_next")
            with m.If(r1_big):
                m.d.comb += val.eq(-128)
            with m.Elif(r1_sat):
                m.d.comb += val.eq(Mux(r1_sign, -128, 127))
            with m.Elif(r1_flush):
                m.d.comb += val.eq(0)
            with m.Else():
                m.d.comb += val.eq(Mux(r1_sign, -mag, mag))
            r2_val = p.reg(f"l{lane}_r2_val", signed(11), val)
            # r3: the clamp's compares registered, so that only its select lies between them and
            # the output's collect register (the saturation's compare chain, then the clamp's,
            # then the select into collect were a 10.3 ns path). As -128 <= lo and hi <= 127,
            # clamp(sat8(v), lo, hi) is clamp(v, lo, hi), with lo's priority kept for lo > hi.
            r3_lt = p.reg(f"l{lane}_r3_lt", 1, r2_val < self.lo)
            r3_gt = p.reg(f"l{lane}_r3_gt", 1, r2_val > self.hi)
            r3_val = p.reg(f"l{lane}_r3_val", signed(8), r2_val)
            m.d.comb += result[lane].eq(Mux(r3_lt, self.lo, Mux(r3_gt, self.hi, r3_val)))
        # Collect the slices of a beat; the last one completes it into the output queue.
        collect = Signal(pixel_layout(self._c_par))
        beat = Signal(pixel_layout(self._c_par))
        if n_slices == 1:
            m.d.comb += beat.eq(result)
        else:
            with m.If(valid):
                m.d.sync += collect.as_value().word_select(tag, 8 * self._lanes).eq(result)
            m.d.comb += beat.eq(Cat(collect.as_value()[:8 * (self._c_par - self._lanes)], result))
        m.d.comb += [
            queue.w_en.eq(last), queue.w_data.eq(beat),
            self.o.valid.eq(queue.r_rdy), self.o.payload.eq(queue.r_data), queue.r_en.eq(self.o.ready),
        ]
        return m
