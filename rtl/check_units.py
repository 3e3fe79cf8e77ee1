"""The wide arithmetic of the sequencer's descriptor checks, one region or dimension at a time.

The ISA's region checks (MISALIGNED, WINDOW, OVERLAP for six regions) and the shape checks (output
size, ceil-mode padding, for height and width) were each computed in parallel, every check with
its own adders and comparators: more than half of the sequencer's logic, 3.5k of the ULX3S-25F
SoC's 19.8k LUTs. Here one pipelined unit walks the regions and one walks the two dimensions,
during the sequencer's ``UNITS`` state, and leaves each verdict in a flag register; the checks
then read the flags in the executor's order. Every stage is registered, so no path holds more
than one carry chain and a comparison (the checks' long paths limited the SoC's clock).

Sizes are saturated at :data:`SIZE_MAX`: a region that large ends beyond any 32-bit window, so
every verdict stays exact with 34-bit arithmetic instead of the products' full 50 bits.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed

__all__ = ["SIZE_BITS", "SIZE_MAX", "RegionUnit", "ShapeUnit", "saturate"]

#: Bits of a saturated size (products of descriptor fields, region sizes).
SIZE_BITS = 34
#: A size at or above this is "larger than any window" (2**34 - 1).
SIZE_MAX = (1 << SIZE_BITS) - 1


def saturate(value: Value) -> Value:
    """``value`` clamped to :data:`SIZE_MAX`, as a :data:`SIZE_BITS`-bit value."""
    if len(value) <= SIZE_BITS:
        return value
    return Mux(value[SIZE_BITS:].any(), SIZE_MAX, value[:SIZE_BITS])


def _or_of(values) -> Value:
    """The bitwise OR of ``values`` (an AND-OR multiplexer when each is masked by a one-hot bit)."""
    out = None
    for v in values:
        out = v if out is None else out | v
    return out


def _mul3(x, s):
    """``x * s`` for a 3-bit ``s``: shift-and-add, no DSP."""
    return Mux(s[0], x, 0) + Mux(s[1], x << 1, 0) + Mux(s[2], x << 2, 0)


class RegionUnit:
    """MISALIGNED, WINDOW and OVERLAP verdicts of each region, one region per cycle (4 stages).

    Parameters
    ----------
    m : Module
    regions : list of (used, addr, size)
        Values stable while the unit runs; the last region is the output.
    step : Signal
        The sequencer's unit step: region ``step`` enters the pipeline while ``step < len(regions)``.
    run : Value
        High in the state that runs the unit.
    align_bits : int
        Low address bits that must be zero (0: no alignment).
    window_base, window_limit, out_addr, out_size : Value
        The window, and the output region the others must not overlap.

    Attributes
    ----------
    misaligned, outside, overlaps : Signal
        One verdict bit per region (``overlaps``: the region overlaps the output; never set for
        the output itself). Valid :attr:`latency` cycles after the last region entered.
    """

    latency = 4

    def __init__(self, m: Module, regions, step, run, *, align_bits, window_base, window_limit, out_addr,
                 out_size) -> None:
        n = len(regions)
        self.misaligned, self.outside, self.overlaps = Signal(n), Signal(n), Signal(n)
        addr_bits = max(len(a) for _, a, _ in regions)
        # The output's end, once per layer (its operands are stable while the unit runs).
        out_end = Signal(SIZE_BITS + 1)
        m.d.sync += out_end.eq(out_addr + out_size)

        # The region select, decoded into a registered one-hot first: decoding ``step`` in front
        # of the 67-bit multiplexer fanned out over all of it (10.3 ns, the sequencer's longest path
        # on the 85F once its state machine was cut).
        s0_v, s0_i, s0_hot = Signal(), Signal(range(n)), Signal(n)
        m.d.sync += [s0_v.eq(run & (step < n)), s0_i.eq(step), s0_hot.eq(Cat(*(step == k for k in range(n))))]
        s1_v, s1_i = Signal(), Signal(range(n))
        s1_used, s1_addr, s1_size = Signal(), Signal(addr_bits), Signal(SIZE_BITS)

        def pick(field):
            return _or_of(Value.cast(r[field]) & s0_hot[k].replicate(len(Value.cast(r[field])))
                          for k, r in enumerate(regions))
        m.d.sync += [s1_v.eq(s0_v), s1_i.eq(s0_i), s1_used.eq(pick(0)), s1_addr.eq(pick(1)),
                     s1_size.eq(pick(2))]

        s2_v, s2_i, s2_used, s2_addr = Signal(), Signal(range(n)), Signal(), Signal(addr_bits)
        s2_end, s2_nonempty, s2_mis = Signal(SIZE_BITS + 1), Signal(), Signal()
        m.d.sync += [s2_v.eq(s1_v), s2_i.eq(s1_i), s2_used.eq(s1_used), s2_addr.eq(s1_addr),
                     s2_end.eq(s1_addr + s1_size), s2_nonempty.eq(s1_size != 0),
                     s2_mis.eq((s1_addr[:align_bits] != 0) if align_bits else 0)]

        outside = (s2_addr < window_base) | (s2_end > window_limit)
        overlaps = s2_nonempty & (out_size != 0) & (out_addr < s2_end) & (s2_addr < out_end)
        for k in range(n):
            with m.If(s2_v & (s2_i == k)):
                m.d.sync += [self.misaligned[k].eq(s2_used & s2_mis), self.outside[k].eq(s2_used & outside),
                             self.overlaps[k].eq(s2_used & overlaps if k < n - 1 else 0)]


class ShapeUnit:
    """Output-size verdicts and the line buffer's bottom/right padding, per dimension (4 stages).

    The output size along one dimension follows from the input size ``n``, kernel ``k``, stride
    ``s`` and padding ``p0``/``p1`` as onnxruntime computes it, floor or ceil mode, and a conv
    with a fused 2x2/s2 pool gives ``out`` pooled positions (the conv's own size is ``2*out`` or
    ``2*out + 1``). A ceil-mode pool's last window may hang over the end: the line buffer then runs
    with ``qs + k - n - p0`` rows/columns of bottom/right padding (``qs = (out - 1) * s``).

    Parameters
    ----------
    m : Module
    dims : list of (n, k, s, p0, p1, out)
        Height then width; values stable while the unit runs.
    step, run : Value
        As for :class:`RegionUnit` (dimension ``step`` enters while ``step < len(dims)``).
    fused, ceil : Value
        A conv with a fused 2x2 pool; a ceil-mode pool.

    Attributes
    ----------
    ok : Signal
        Per dimension: the output size is the one the input gives.
    pad_end : list of Signal
        Per dimension: the padding after the last row/column the line buffer runs with.
    conv_extra : list of Signal
        Per dimension: a fused-pool conv has ``2*out + 1`` positions (one more fits the input).
    """

    latency = 4

    def __init__(self, m: Module, dims, step, run, *, fused, ceil) -> None:
        nd = len(dims)
        self.ok = Signal(nd)
        self.pad_end = [Signal(signed(20), name=f"pad_end{j}") for j in range(nd)]
        self.conv_extra = [Signal(name=f"conv_extra{j}") for j in range(nd)]
        w = [max(len(dim[i]) for dim in dims) for i in range(6)]

        # stage 1: the dimension's operands
        s1_v, s1_j = Signal(), Signal(range(nd))
        n1, k1, s1, p01, p11, o1 = (Signal(w[i], name=f"sh1_{x}") for i, x in enumerate("nksabo"))
        m.d.sync += [s1_v.eq(run & (step < nd)), s1_j.eq(step)]
        for j, dim in enumerate(dims):
            with m.If(step == j):
                m.d.sync += [reg.eq(v) for reg, v in zip((n1, k1, s1, p01, p11, o1), dim, strict=True)]

        # stage 2: span = n + p0 + p1 - k, the output counts to multiply by the stride
        s2_v, s2_j = Signal(), Signal(range(nd))
        span, np0 = Signal(signed(20)), Signal(signed(20))
        q, lo, hi, two_out = Signal(signed(19)), Signal(signed(19)), Signal(signed(19)), Signal(signed(19))
        k2, s2, p12, o2 = Signal(w[1]), Signal(w[2]), Signal(w[4]), Signal(w[5])
        m.d.sync += [s2_v.eq(s1_v), s2_j.eq(s1_j), span.eq(n1 + p01 + p11 - k1), np0.eq(n1 + p01),
                     q.eq(o1 - 1), lo.eq(Mux(fused, 2 * o1 - 1, o1 - 1)), hi.eq(Mux(fused, 2 * o1 + 1, o1)),
                     two_out.eq(2 * o1), k2.eq(k1), s2.eq(s1), p12.eq(p11), o2.eq(o1)]

        # stage 3: the products by the stride (shift-and-add)
        s3_v, s3_j = Signal(), Signal(range(nd))
        lo_s, hi_s, qs, q1s, two_s = (Signal(signed(22), name=f"sh3_{x}")
                                      for x in ("lo", "hi", "q", "q1", "two"))
        span3, np03, s3 = Signal(signed(20)), Signal(signed(20)), Signal(w[2])
        k3, p13 = Signal(w[1]), Signal(w[4])
        m.d.sync += [s3_v.eq(s2_v), s3_j.eq(s2_j), lo_s.eq(_mul3(lo, s2)), hi_s.eq(_mul3(hi, s2)),
                     qs.eq(_mul3(q, s2)), q1s.eq(_mul3(o2, s2)), two_s.eq(_mul3(two_out, s2)),
                     span3.eq(span), np03.eq(np0), s3.eq(s2), k3.eq(k2), p13.eq(p12)]

        # stage 4: the verdicts
        floor_ok = (span3 >= 0) & (lo_s <= span3) & (span3 < hi_s)
        ceil_ok = (span3 >= 0) & (((qs - s3 < span3) & (span3 <= qs) & (qs < np03))
                                  | ((qs < span3) & (span3 <= q1s) & (q1s >= np03)))
        for j in range(nd):
            with m.If(s3_v & (s3_j == j)):
                m.d.sync += [self.ok[j].eq(Mux(ceil, ceil_ok, floor_ok)),
                             self.pad_end[j].eq(Mux(ceil, qs + k3 - np03, p13)),
                             self.conv_extra[j].eq(two_s <= span3)]
