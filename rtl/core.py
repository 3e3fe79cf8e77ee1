"""JacquardCore: the accelerator top level (AXI4-Lite registers, AXI4 master DMA, sequencer, datapath).

Structure::

    s_axil -> Csr -> Sequencer --rd_cmd--> DmaReader --words--> read router --+-> descriptors
                         |                                                  +-> params  -> PostProcessor
                         |                                                  +-> LUT     -> LutPad
                         |                                                  +-> weights -> PEArray.wl
                         |                                                  +-> pixels  -> FIFO -> LineBuffer,
                         |                                                  |             Pool or EltwiseAdd.a
                         |                                                  +-> pixels2 -> EltwiseAdd.b
                         +--wr_cmd--> DmaWriter <-- words <- Packer <- [MaxPool2x2] <- LutPad <- PostProcessor
                                                                     <- LutPad <- EltwiseAdd (ADD)
                                                                     <- MaxReduce (MAXPOOL)
                                                                     <- AvgPool (AVGPOOL)
                                                                     <- Requantizer <- Pool (GLOBAL_AVGPOOL)
    LineBuffer -> PEArray -> PostProcessor (CONV)      LineBuffer -> MaxReduce (MAXPOOL)
    LineBuffer -> AvgPool (AVGPOOL)                     pixels by channel tile -> Pool (SUM) (GLOBAL_AVGPOOL)

AVGPOOL runs the line buffer in its depthwise order with the input zero point as padding into
:class:`~jacquard.rtl.avg_pool.AvgPool` (float32-exact, ``max(c_par, FMA_DEEP_STAGES) + 1`` cycles
per tap and about 90 cycles per window). GLOBAL_AVGPOOL (and a whole-map AVGPOOL without padding,
which onnxruntime computes as one) reads the input one channel tile at a time (a 2-D read of
``c_par`` bytes per pixel), sums each tile with :class:`~jacquard.rtl.pool.Pool` and requantizes the
``c_par`` sums one by one with ``bias = -in_zp * H * W`` and the multiplier the sequencer's
:class:`~jacquard.rtl.fp32.ScaleUnit` computed. ADD reads its two inputs in chunks of
``ADD_CHUNK_WORDS`` bus words in turn; the first input's chunk waits in a FIFO for the second's, and
:class:`~jacquard.rtl.eltwise_add.EltwiseAdd` (``add_lanes`` datapath lanes) adds them, then the
LUT/pad unit applies the optional table.

The read router keeps one entry per read command in flight (its :class:`ReadTarget`) and sends
each word to that command's consumer, so commands for different consumers can be queued back to
back. The DMA data width is ``8 * dma_align`` bits (32 for every preset), so every descriptor
address and tensor row is a whole number of bus words.

The MAC taps are gated until the group's weights are all in their bank, so the PE array never
reads a weight block before it is written. The next group's weights are prefetched into the other
bank while a group computes (the sequencer's ``weights_keep``): the core remembers which bank each
load went to and which bank holds a finished load.

Performance counters (64 bit, see the register map): ``STALL_INPUT`` counts busy cycles of a
CONV group in which the PE array had no tap while its weights were loaded, ``STALL_WEIGHTS`` the
cycles of a started group before its weights were loaded (the input waits behind them),
``STALL_OUTPUT`` the cycles a tap waited because the writer (through the packer) held the
post-processor, and ``STALL_REQUANT`` the cycles a tap waited on the PE array's output while the
writer side was ready (the requantizers were busy).
"""

import math

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, Value, signed
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from jacquard.sim.isa import CONFIGS, HardwareConfig, Op
from jacquard.sim.isa_regs import PERF_COUNTERS, register

from .avg_pool import AvgPool
from .axi import AxiLiteSignature, AxiSignature
from .csr import Csr
from .dma_reader import DmaReader
from .dma_writer import DmaWriter
from .eltwise_add import EltwiseAdd
from .layouts import out_layout, pixel_layout, tap_layout
from .line_buffer import LineBuffer
from .maxpool2x2 import MaxPool2x2
from .pe_array import PEArray
from .pool import Pool, PoolMode
from .postproc import PostProcessor
from .replica import replica
from .requantizer import Requantizer
from .sequencer import ADD_CHUNK_WORDS, LayerSetup, ReadTarget, Sequencer

__all__ = ["JacquardCore", "export_verilog", "port_table"]

_MAX_BURST = 16
_OUTSTANDING = 4


class _MaxReduce(wiring.Component):
    """Max over each accumulation of a tap stream (``first`` .. ``last``): the MAXPOOL datapath."""

    def __init__(self, c_par: int) -> None:
        self._c_par = c_par
        super().__init__({"i": In(stream.Signature(tap_layout(c_par))),
                          "o": Out(stream.Signature(pixel_layout(c_par)))})

    def elaborate(self, platform) -> Module:
        m = Module()
        acc = Signal(pixel_layout(self._c_par))
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            tap = self.i.payload
            new = Signal(pixel_layout(self._c_par))
            for j in range(self._c_par):
                m.d.comb += new[j].eq(Mux(tap.first | (tap.data[j] > acc[j]), tap.data[j], acc[j]))
            m.d.sync += acc.eq(new)
            with m.If(tap.last):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(new)]
        return m


class _LutPad(wiring.Component):
    """Per-tensor or per-channel LUT, then the output zero point in the padded channels.

    One 32-bit memory per lane holds that lane's tables (``tile * 64 + x // 4``). Beats are for
    pixel, for tile; lane ``j`` of tile ``t`` is channel ``ch0 + t * lanes + j``.
    """

    def __init__(self, oc_par: int, lut_tiles: int) -> None:
        self._oc_par = oc_par
        self._lut_tiles = lut_tiles
        super().__init__({
            "i": In(stream.Signature(out_layout(oc_par))),
            "o": Out(stream.Signature(out_layout(oc_par))),
            "load": In(stream.Signature(32)),
            "setup": In(LayerSetup()),
            "start": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n, depth = self._oc_par, self._lut_tiles * 64
        s = self.setup

        # -- loading: rows of 256 bytes, one per channel of the group (or one shared table) ----
        word = Signal(6)
        row = Signal(16)
        mems = []
        for j in range(n):
            mem = memory.Memory(shape=32, depth=depth, init=[])
            m.submodules[f"lut{j}"] = mem
            mems.append((mem.write_port(), mem.read_port()))
        lanes_mask = s.lanes - 1
        r_lane = Signal(8)
        r_tile = Signal(16)
        m.d.comb += [r_lane.eq(row & lanes_mask), r_tile.eq(row >> _log2_of(s.lanes, 128))]
        m.d.comb += self.load.ready.eq(1)
        for j, (wp, _) in enumerate(mems):
            m.d.comb += [wp.addr.eq(Cat(word, r_tile)), wp.data.eq(self.load.payload),
                         wp.en.eq(self.load.valid & (~s.lut_per_channel | (r_lane == j)))]
        with m.If(self.load.valid):
            m.d.sync += word.eq(word + 1)
            with m.If(word == 63):
                m.d.sync += row.eq(row + 1)
        with m.If(self.start):
            m.d.sync += [word.eq(0), row.eq(0)]

        # -- lookup: two stages under one enable -----------------------------------------------
        # s1: the memories read (their output is unregistered: about 5.8 ns clock to out on a
        # DP16KD); s2: each lane's whole word registered beside its memory, the byte picked after.
        # The pick, the pad and the LUT muxes in one stage ran from the 16 memories, spread over
        # the block RAM columns, into the output skid (14.2 ns on the 85F); a registered pick
        # still put a net of 6.6 ns between its two LUT levels (14.9 ns).
        en = Signal()
        s1_valid = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en),
                     self.busy.eq(s1_valid | self.o.valid)]
        tile = Signal(16)
        ch = Signal(17)
        s1_x = Signal(out_layout(n), reset_less=True)
        s1_pad = Signal(n, reset_less=True)
        s2_x = Signal(out_layout(n), reset_less=True)
        s2_pad = Signal(n, reset_less=True)
        s2_word = Signal(data.ArrayLayout(32, n), reset_less=True)
        take = self.i.valid & self.i.ready
        for j, (_, rp) in enumerate(mems):
            x = self.i.payload[j].as_unsigned() ^ 0x80
            m.d.comb += [rp.addr.eq(Cat(x[2:], Mux(s.lut_per_channel, tile, 0))), rp.en.eq(en)]
        with m.If(en):
            m.d.sync += [s1_valid.eq(take), s1_x.eq(self.i.payload),
                         s1_pad.eq(Cat(*[ch + j >= s.out_c for j in range(n)])),
                         self.o.valid.eq(s1_valid), s2_x.eq(s1_x), s2_pad.eq(s1_pad)]
            m.d.sync += [s2_word[j].eq(rp.data) for j, (_, rp) in enumerate(mems)]
        with m.If(take):
            m.d.sync += [tile.eq(tile + 1), ch.eq(ch + s.lanes)]
            with m.If(tile == s.n_tiles - 1):
                m.d.sync += [tile.eq(0), ch.eq(s.ch0)]
        with m.If(self.start):
            m.d.sync += [tile.eq(0), ch.eq(s.ch0)]
        for j in range(n):
            looked = s2_word[j].word_select((s2_x[j].as_unsigned() ^ 0x80)[:2], 8)
            m.d.comb += self.o.payload[j].eq(Mux(s2_pad[j], s.zero_point, Mux(s.lut, looked, s2_x[j])))
        return m


def _log2_of(value, limit):
    """log2 of a power of two ``value`` <= ``limit`` (a small mux)."""
    result = 0
    for k in range(exact_log2(limit) + 1):
        result = Mux(value == 1 << k, k, result)
    return result


class _Packer(wiring.Component):
    """Output beats (``lanes`` channels of which the group's first ``out_cp - ch`` exist) to bus words.

    ``gran`` is the byte granularity of every beat's length (``gcd(c_par, oc_par)`` capped at the
    word size; a beat is always whole channel tiles): with whole words the buffer shifts by words,
    a much smaller multiplexer than a byte shifter.

    Timing: the per-tile lengths and pad masks are registers, computed when the tile before is
    taken, and ``i.ready`` is a function of registers only (it does not count the word leaving in
    the same cycle). It was the head of the core's longest path: ``out_cp - ch`` -> length ->
    ready -> every ready upstream (18 levels). Streams still pass at one word per cycle: a beat
    of ``n`` words fits again once ``n`` words have left. ``setup`` is read from the ``start``
    cycle on, and the first beat is taken two cycles after ``start`` at the earliest.
    """

    def __init__(self, width: int, word_bytes: int, gran: int = 1) -> None:
        if gran < 1 or word_bytes % gran or width % gran:
            self._MustUse__silence = True  # refused, never elaborated
            raise ValueError(f"gran must divide word_bytes ({word_bytes}) and width ({width}), not {gran!r}")
        self._width = width
        self._wb = word_bytes
        self._gran = gran
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(8), width))),
            "o": Out(stream.Signature(8 * word_bytes)),
            "setup": In(LayerSetup()),
            "start": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        wb, width, g = self._wb, self._width, self._gran
        ubits = 8 * g                 # one unit: g bytes
        beat_units, word_units = width // g, wb // g
        cap = beat_units + word_units
        s = self.setup
        buf = Signal(ubits * cap)
        cnt = Signal(range(cap + 1))  # units in buf

        # -- per tile, one beat ahead: length, which bytes exist, which lanes are padding ----------
        t_left = Signal(16)           # tiles of this pixel after the current one
        t_zero = Signal()             # t_left == 0, kept with it
        units = Signal(range(beat_units + 1))
        keep = Signal(width)          # byte j exists (j < min(left, lanes))
        pad = Signal(width)           # lane j is past out_c

        def load_tile(n_left, n_real):
            return [units.eq(Mux(n_left < s.lanes, n_left, s.lanes) >> exact_log2(g)),
                    keep.eq(Cat(*[(n_left > j) & (s.lanes > j) for j in range(width)])),
                    pad.eq(Cat(*[n_real <= j for j in range(width)])),
                    left_nx.eq(n_left - s.lanes), real_nx.eq(n_real - s.lanes)]

        # The next tile's left and real come from registers: the first tile's (setup.ch0 holds
        # still through a group, so ``start`` loads them a cycle late, before the first beat is
        # taken) or the current tile's less ``lanes``, kept beside it. Subtracted in front
        # of the masks' compares, they made a 10.2 ns path of the SoC netlist's logic depth.
        first_left = Signal(signed(18))
        first_real = Signal(signed(18))
        # n_left and n_real of the current tile (out_cp - ch: bytes of the group that exist from
        # this tile on; out_c - ch: lanes before the output zero point) less lanes.
        left_nx = Signal(signed(18))
        real_nx = Signal(signed(18))
        start_q = Signal()
        m.d.sync += [first_left.eq(s.out_cp - s.ch0), first_real.eq(s.out_c - s.ch0), start_q.eq(self.start)]

        emit = Signal()
        leave = Signal()
        m.d.comb += [
            emit.eq(cnt >= word_units),
            leave.eq(emit & self.o.ready),
            self.o.payload.eq(buf[:8 * wb]),
            self.o.valid.eq(emit),
            self.busy.eq(cnt != 0),
            # (not while start_q loads the first tile)
            self.i.ready.eq((cnt + units <= cap) & ~start_q),
        ]
        after = Signal(range(cap + 1))
        m.d.comb += after.eq(Mux(leave, cnt - word_units, cnt))
        shifted = Mux(leave, buf >> (8 * wb), buf)
        beat = Signal(8 * width)
        for j in range(width):
            byte = Mux(pad[j], s.zero_point, self.i.payload[j])
            m.d.comb += beat[8 * j:8 * j + 8].eq(Mux(keep[j], byte, 0))
        placed = Signal(len(buf))
        with m.Switch(after):
            for k in range(cap):
                with m.Case(k):
                    m.d.comb += placed.eq(beat << (k * ubits))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [buf.eq(shifted | placed), cnt.eq(after + units)]
            with m.If(t_zero):
                m.d.sync += [t_left.eq(s.n_tiles - 1), t_zero.eq(s.n_tiles == 1),
                             *load_tile(first_left, first_real)]
            with m.Else():
                m.d.sync += [t_left.eq(t_left - 1), t_zero.eq(t_left == 1), *load_tile(left_nx, real_nx)]
        with m.Else():
            m.d.sync += [buf.eq(shifted), cnt.eq(after)]
        with m.If(start_q):
            m.d.sync += [t_left.eq(s.n_tiles - 1), t_zero.eq(s.n_tiles == 1),
                         *load_tile(first_left, first_real)]
        return m


class _Gearbox(wiring.Component):
    """Bus words to beats of ``n`` words, each beat sent ``repeat`` times (depthwise weight rows).

    Full rate: in the cycle a beat leaves for the last time the first word of the next one is
    already taken, so a stream of words passes at one word per cycle (the input pixels and the
    weights of every layer go through one of these).
    """

    def __init__(self, word_bits: int, n: int, max_repeat: int) -> None:
        self._wbits, self._n = word_bits, n
        super().__init__({
            "i": In(stream.Signature(word_bits)),
            "o": Out(stream.Signature(word_bits * n)),
            "repeat": In(range(max_repeat + 1)),
            "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n, wbits = self._n, self._wbits
        buf = Signal(wbits * n)
        cnt = Signal(range(n + 1))
        reps = Signal(range(256))
        full = cnt == n
        leaves = Signal()  # the beat goes out for the last time this cycle
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(buf),
                     leaves.eq(full & self.o.ready & (reps + 1 >= self.repeat)),
                     self.i.ready.eq(~full | leaves), self.busy.eq(cnt != 0)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += reps.eq(reps + 1)
            with m.If(leaves):
                m.d.sync += [cnt.eq(0), reps.eq(0)]
        with m.If(self.i.valid & self.i.ready):
            # The buffer shifts in from the top, so after a beat left the stale words fall out.
            m.d.sync += [buf.eq(Cat(buf[wbits:], self.i.payload) if n > 1 else self.i.payload),
                         cnt.eq(Mux(leaves, 1, cnt + 1))]
        return m


class _Skid(wiring.Component):
    """A full-rate register stage whose ``i.ready`` comes from a register: an output register plus a
    skid register that takes the beat accepted while the output is stalled.

    It cuts a stream's payload and its ready chain in one cycle of latency.
    """

    def __init__(self, shape) -> None:
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape)),
                          "busy": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        skid_valid = Signal()
        skid = Signal.like(self.i.payload, reset_less=True)
        m.d.comb += [self.i.ready.eq(~skid_valid), self.busy.eq(self.o.valid | skid_valid)]
        with m.If(~self.o.valid | self.o.ready):
            with m.If(skid_valid):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(skid), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += skid_valid.eq(1)
        # The skid register loads whenever it is empty (it is read only while full), so its
        # enable is that flag alone: taken with the input's valid, the read router's decode
        # fanned out into the enables of every skid's register (13.7 ns on the 85F).
        with m.If(~skid_valid):
            m.d.sync += skid.eq(self.i.payload)
        return m


class _Crossing(wiring.Component):
    """A stream carried across the chip as plain data: the source is read against credits for a
    queue beside the sink, and its words pass a free-running register on the way.

    ``i.ready`` is a register (a credit left), and no enable or ready runs from the sink back
    to the source's output registers. ``depth`` credits cover the round trip (read, register,
    queue write, take, credit back: 5 cycles) at full rate.
    """

    def __init__(self, shape, depth: int = 8) -> None:
        self._depth = depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape)),
                          "busy": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        width = len(self.i.payload.as_value())
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=width, depth=self._depth)
        credits = Signal(range(self._depth + 1), init=self._depth)
        credit_ok = Signal(init=1)
        read, v1, took = Signal(), Signal(), Signal()
        d1 = Signal(width, reset_less=True)
        m.d.comb += [read.eq(self.i.valid & credit_ok), self.i.ready.eq(credit_ok)]
        m.d.sync += [v1.eq(read), d1.eq(self.i.payload), took.eq(self.o.valid & self.o.ready)]
        after = Signal.like(credits)
        m.d.comb += after.eq(credits - read + took)
        m.d.sync += [credits.eq(after), credit_ok.eq(after != 0)]
        m.d.comb += [queue.w_en.eq(v1), queue.w_data.eq(d1),
                     self.o.valid.eq(queue.r_rdy), self.o.payload.eq(queue.r_data),
                     queue.r_en.eq(self.o.ready),
                     self.busy.eq(v1 | (queue.level != 0))]
        return m


def _stand_in(unit: wiring.Component, name: str):
    """Ports like ``unit``'s, for a unit the config does not build (its outputs stay at reset)."""
    unit._MustUse__silence = True  # built only for its signature, never elaborated
    return unit.signature.create(path=(name,))


class JacquardCore(wiring.Component):
    """The Jacquard accelerator core for one :class:`HardwareConfig`.

    Parameters
    ----------
    config : HardwareConfig or str
        The build's parameters, or the name of a preset in :data:`jacquard.sim.isa.CONFIGS`.
    n_requant : int, optional
        Requantizer lanes (default: the config's :attr:`~jacquard.sim.isa.HardwareConfig.n_requant`).
    add_lanes : int, optional
        EltwiseAdd datapath lanes, a divisor of ``c_par`` (default 1: ADD is rare and each lane is
        about 2.7k LUT4; an ADD then takes ``c_par`` cycles per pixel beat).

    Members
    -------
    s_axil : In(AxiLiteSignature(12, 32))
        Host register port (AXI4-Lite slave; map in ``docs/ISA.md``).
    m_axi : Out(AxiSignature(32, 8 * dma_align, 1))
        Device memory port (AXI4 master, INCR bursts of at most 16 beats, one ID).
    irq : Out(1)
        ``IRQ_STATUS & IRQ_ENABLE`` is not zero (level).

    Raises
    ------
    TypeError
        If ``config`` is neither a HardwareConfig nor a preset name.
    ValueError
        If ``config`` names no preset, or ``c_par`` is not a multiple of ``dma_align`` (pixels must
        be whole bus words), or ``add_lanes`` does not divide ``c_par``.
    """

    def __init__(self, config: HardwareConfig | str, *, n_requant: int | None = None,
                 add_lanes: int = 1) -> None:
        try:
            config = self._check_config(config)
            if not isinstance(add_lanes, int) or add_lanes < 1 or config.c_par % add_lanes:
                raise ValueError(f"add_lanes must be a positive divisor of c_par ({config.c_par}), "
                                 f"not {add_lanes!r}")
        except (TypeError, ValueError):
            # A refused component is never elaborated; do not let amaranth warn about that too.
            self._MustUse__silence = True
            raise
        if n_requant is None:
            n_requant = config.n_requant
        self._cfg = config
        self._n_requant = n_requant
        self._add_lanes = add_lanes
        self._word_bytes = config.dma_align
        super().__init__({
            "s_axil": In(AxiLiteSignature(12, 32)),
            "m_axi": Out(AxiSignature(32, 8 * config.dma_align, 1)),
            "irq": Out(1),
        })

    @staticmethod
    def _check_config(config) -> HardwareConfig:
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"config must be one of {', '.join(CONFIGS)}, not {config!r}")
            config = CONFIGS[config]
        if not isinstance(config, HardwareConfig):
            raise TypeError(f"config must be a HardwareConfig or a preset name, not {config!r}")
        if config.c_par % config.dma_align or config.dma_align not in (4, 8, 16):
            raise ValueError(f"c_par ({config.c_par}) must be a multiple of dma_align ({config.dma_align}), "
                             f"which must be 4, 8 or 16")
        return config

    @property
    def config(self) -> HardwareConfig:
        return self._cfg

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        c_par, oc_par, wb = cfg.c_par, cfg.oc_par, self._word_bytes
        wbits = 8 * wb
        lb_channels = max(c_par, -(-cfg.line_buffer_bytes // cfg.max_width // c_par) * c_par)
        pp_tiles = cfg.param_buffer_entries // oc_par
        lut_channels = min(cfg.param_buffer_entries, 64)
        lut_tiles = -(-lut_channels // min(c_par, oc_par))
        pool_depth = max(cfg.max_width // 2, cfg.line_buffer_bytes // oc_par)
        bank_blocks = cfg.weight_buffer_bytes // (c_par * oc_par)
        width = max(c_par, oc_par)

        m.submodules.csr = csr = Csr(cfg)
        wiring.connect(m, wiring.flipped(self.s_axil), csr.s_axil)
        seq = Sequencer.for_config(cfg)
        m.submodules.sequencer = seq
        reader = DmaReader(32, wbits, _MAX_BURST, _OUTSTANDING, 16)
        writer = DmaWriter(32, wbits, _MAX_BURST, _OUTSTANDING, 16)
        m.submodules.reader, m.submodules.writer = reader, writer

        flush = seq.flush
        lb = LineBuffer(c_par=c_par, max_width=cfg.max_width, max_channels=lb_channels,
                        max_kh=cfg.max_kernel_h)
        pe = PEArray(c_par, oc_par, 2 * bank_blocks)
        pp = PostProcessor(oc_par, self._n_requant, pp_tiles, lut=False)
        lutpad = _LutPad(oc_par, lut_tiles)
        # Register stages on both sides of the LUT/pad unit: the ready chain from the packer ran
        # through the 2x2 pool, the LUT/pad unit and the post-processor into the PE array's output
        # FIFOs (13 levels), and the LUT memory's output through the pad and the packer's shift
        # into its buffer (11 levels). One cycle each per group, none per beat.
        lut_in, lut_out = _Skid(out_layout(oc_par)), _Skid(out_layout(oc_par))
        mp = MaxPool2x2(oc_par, max(2, cfg.max_width), pp_tiles, pool_depth)
        mr = _MaxReduce(c_par)
        # Every beat is whole channel tiles (of c_par, oc_par or the LUT group), so its length is a
        # multiple of this many bytes, and the packer shifts by that unit.
        packer = _Packer(width, wb, math.gcd(c_par, oc_par, wb, lut_channels))
        route = fifo.SyncFIFOBuffered(width=3, depth=8)
        pin = _Skid(data.ArrayLayout(signed(8), width))
        rskid = _Skid(reader.o.payload.shape())
        pgear = _Gearbox(wbits, c_par // wb, 1)
        pskid = _Skid(pgear.o.payload.shape())
        # The PE array's results reach the post-processor across the chip through credits: its
        # 16 output FIFOs' read enable came from the post-processor's ready (or a skid's), and
        # the FIFOs' output registers were pulled beside their consumer, so the enable's net
        # crossed the DSP rows twice (15.6-16.6 ns, 700+ endpoints on the 85F).
        pe_link = _Crossing(pe.o.payload.shape())
        # One more skid in front of each pixel consumer, so the pixel skid's output enable takes
        # registered readies only (below).
        lb_in, gsum_in, eadd_in = (_Skid(pgear.o.payload.shape()) for _ in range(3))
        wgear = _Gearbox(wbits, c_par // wb, oc_par)
        # Weight words reach the gearbox through a skid, so the read router's ready is a register
        # there: the gearbox's ready (the PE array's weight-load ready, its repeat count compare)
        # ran through the router into the route FIFO and the reader (10 levels in the 85F SoC).
        wskid = _Skid(wbits)
        # Likewise a skid in front of every read target whose ready is logic (input FIFO, second
        # input's gearbox, the parameter pairing), so the router's ready is a mux of registers:
        # from the route FIFO through the targets' readies into the read skid and the weight
        # skid ran 15-16 ns on the 85F. The descriptor and LUT targets are always ready.
        in_skid, in2_skid, par_skid = _Skid(wbits), _Skid(wbits), _Skid(wbits)
        avg = AvgPool(c_par)
        gsum = Pool(c_par)
        grq = Requantizer()
        eadd = EltwiseAdd(c_par, lanes=self._add_lanes)
        afifo = fifo.SyncFIFOBuffered(width=wbits, depth=ADD_CHUNK_WORDS)
        bgear = _Gearbox(wbits, c_par // wb, 1)
        # ADD's second input reaches EltwiseAdd through a skid, as the first does (its take into
        # the gearbox's count: 14.6 ns on the 85F).
        eadd_b_in = _Skid(bgear.o.payload.shape())
        # The units of the ops the config leaves out are not built: the sequencer refuses those ops
        # (BAD_OPCODE), so their stand-in ports stay idle and synthesis removes what they feed.
        gap = bool(cfg.ops & {Op.AVGPOOL, Op.GLOBAL_AVGPOOL})  # a whole-map AVGPOOL runs as one
        units = {"line_buffer": lb, "pe_array": pe, "postproc": pp, "lut_in": lut_in, "lutpad": lutpad,
                 "lut_out": lut_out, "maxpool": mp,
                 "maxreduce": mr, "packer": packer, "packer_in": pin, "route": route, "pixel_gear": pgear,
                 "pixel_skid": pskid, "weight_skid": wskid, "read_skid": rskid, "line_buffer_in": lb_in,
                 "gap_sum_in": gsum_in, "eltwise_add_in": eadd_in, "pe_link": pe_link,
                 "weight_gear": wgear, "avgpool": avg, "gap_sum": gsum, "gap_requant": grq,
                 "eltwise_add": eadd, "input_fifo": afifo, "pixel2_gear": bgear,
                 "input_skid": in_skid, "input2_skid": in2_skid, "params_skid": par_skid,
                 "eltwise_add_b_in": eadd_b_in}
        needed = {"maxreduce": Op.MAXPOOL in cfg.ops, "avgpool": Op.AVGPOOL in cfg.ops, "gap_sum": gap,
                  "gap_requant": gap, "eltwise_add": Op.ADD in cfg.ops, "pixel2_gear": Op.ADD in cfg.ops,
                  "gap_sum_in": gap, "eltwise_add_in": Op.ADD in cfg.ops, "input2_skid": Op.ADD in cfg.ops,
                  "eltwise_add_b_in": Op.ADD in cfg.ops}
        # Each unit's reset is its own kept register of ``flush``: the flush is the sequencer's
        # STOP decode, and as one net into the resets of every unit across the chip it started
        # the 85F SoC's worst paths (22.4 ns: two chip-wide nets of 8-9 ns each; 25k of the 30k
        # endpoints over 10 ns). Units reset a cycle late, for as many cycles as STOP lasts (at
        # least one); the next start reads its program before any unit is used.
        # The PE array resets on every group start as well (the datapath is idle then, its
        # pipeline drained and no weight load in progress), from the one register that is also
        # its ``clear``: its flops' resets were the flush copy OR the clear copy, one LUT whose
        # net crossed the DSP rows (14.6 ns on the 85F).
        pe_clear = replica(m, platform, seq.group_start | flush, "clear_pe_array")
        for name, unit in units.items():
            if needed.get(name, True):
                rst = pe_clear if unit is pe else replica(m, platform, flush, f"flush_{name}")
                m.submodules[name] = ResetInserter(rst)(unit)
        mr, avg, gsum, grq, eadd, bgear, gsum_in, eadd_in, in2_skid, eadd_b_in = (
            unit if needed[name] else _stand_in(unit, name)
            for name, unit in (("maxreduce", mr), ("avgpool", avg), ("gap_sum", gsum), ("gap_requant", grq),
                               ("eltwise_add", eadd), ("pixel2_gear", bgear), ("gap_sum_in", gsum_in),
                               ("eltwise_add_in", eadd_in), ("input2_skid", in2_skid),
                               ("eltwise_add_b_in", eadd_b_in)))

        # -- registers <-> sequencer ------------------------------------------------------------
        ctrl = register("CTRL").layout()(csr.ctrl)
        status = Signal(register("STATUS").layout())
        m.d.comb += [
            seq.start.eq(ctrl.start), seq.abort.eq(ctrl.abort), seq.soft_reset.eq(ctrl.soft_reset),
            seq.prog_base.eq(csr.prog_base), seq.prog_len.eq(csr.prog_len),
            seq.window_base.eq(csr.window_base), seq.window_limit.eq(csr.window_limit),
            # Registered: from the DMA's busy through STOP's decode into the registers' resets it
            # ran 15.7 ns on the 85F. The status clears a cycle later, as the counters' clear does.
            csr.soft_reset.eq(replica(m, platform, seq.clear_status, "csr_soft_reset")),
            status.busy.eq(seq.busy), status.done.eq(seq.done), status.error.eq(seq.error),
            status.error_code.eq(seq.error_code), status.desc_index.eq(seq.desc_index),
            csr.status.eq(status),
            csr.current_desc.eq(seq.current_desc),
            csr.error_field.eq(seq.error_field),
            csr.error_addr.eq(seq.error_addr),
            csr.irq_status_set.eq(Cat(seq.irq_done, seq.irq_error)),
            self.irq.eq((csr.irq_status & csr.irq_enable) != 0),
        ]

        # -- DMA ------------------------------------------------------------------------------
        for dma in (reader, writer):
            m.d.comb += [dma.window_base.eq(csr.window_base), dma.window_limit.eq(csr.window_limit),
                         dma.abort.eq(seq.dma_abort), dma.clear.eq(seq.dma_clear)]
        for name in ("araddr", "arlen", "arsize", "arburst", "arid", "arvalid", "rready"):
            m.d.comb += getattr(self.m_axi, name).eq(getattr(reader.m_axi, name))
        for name in ("arready", "rid", "rdata", "rresp", "rlast", "rvalid"):
            m.d.comb += getattr(reader.m_axi, name).eq(getattr(self.m_axi, name))
        for name in ("awaddr", "awlen", "awsize", "awburst", "awid", "awvalid", "wdata", "wstrb", "wlast",
                     "wvalid", "bready"):
            m.d.comb += getattr(self.m_axi, name).eq(getattr(writer.m_axi, name))
        for name in ("awready", "wready", "bid", "bresp", "bvalid"):
            m.d.comb += getattr(writer.m_axi, name).eq(getattr(self.m_axi, name))
        wiring.connect(m, seq.wr_cmd, writer.cmd)
        wiring.connect(m, writer.done, seq.wr_done)
        m.d.comb += [
            seq.dma_error.eq(reader.error | writer.error),
            seq.dma_error_code.eq(Mux(reader.error, reader.error_code, writer.error_code)),
            seq.dma_error_tag.eq(Mux(reader.error, reader.error_tag, writer.error_tag)),
            seq.dma_busy.eq(reader.busy | rskid.busy | writer.busy),
        ]

        # -- read router: one target per command in flight ---------------------------------------
        m.d.comb += [
            reader.cmd.payload.eq(seq.rd_cmd.payload),
            reader.cmd.valid.eq(seq.rd_cmd.valid & route.w_rdy),
            seq.rd_cmd.ready.eq(reader.cmd.ready & route.w_rdy),
            route.w_data.eq(seq.rd_target),
            route.w_en.eq(seq.rd_cmd.valid & seq.rd_cmd.ready),
        ]
        target = Signal(ReadTarget)
        m.d.comb += target.eq(route.r_data)
        # The words reach the router through a skid, so the reader's ready is a register: the
        # consumers' readies (the read router, EltwiseAdd's take) ran into the reader's output
        # and skid registers (17.6 ns on the 85F).
        wiring.connect(m, reader.o, rskid.i)
        words = rskid.o
        consumers = {
            ReadTarget.DESC: seq.desc_word,
            ReadTarget.LUT: lutpad.load,
            ReadTarget.WEIGHTS: wskid.i,
            ReadTarget.INPUT: in_skid.i,
            ReadTarget.INPUT2: in2_skid.i,
            ReadTarget.PARAMS: par_skid.i,
        }
        m.d.comb += [afifo.w_data.eq(in_skid.o.payload), afifo.w_en.eq(in_skid.o.valid),
                     in_skid.o.ready.eq(afifo.w_rdy)]
        wiring.connect(m, in2_skid.o, bgear.i)
        word_ready = Signal()
        for tgt, sink in consumers.items():
            hit = route.r_rdy & (target == tgt)
            m.d.comb += [sink.payload.eq(words.payload.data), sink.valid.eq(words.valid & hit)]
            with m.If(hit):
                m.d.comb += word_ready.eq(sink.ready)
        # Parameters: two words per channel; depthwise tiles get oc_par - c_par zero entries.
        p_lo = Signal(32)
        p_half = Signal()
        p_lane = Signal(8)
        p_gap = Signal()
        s = seq.setup
        pw = par_skid.o
        with m.If(p_gap):
            m.d.comb += [pp.params.valid.eq(1), pp.params.payload.eq(0)]
            with m.If(pp.params.ready):
                m.d.sync += p_lane.eq(p_lane + 1)
                with m.If(p_lane == oc_par - 1):
                    m.d.sync += [p_lane.eq(0), p_gap.eq(0)]
        with m.Else():
            m.d.comb += [pp.params.payload.eq(Cat(p_lo, pw.payload)),
                         pp.params.valid.eq(pw.valid & p_half),
                         pw.ready.eq(~p_half | pp.params.ready)]
            with m.If(pw.valid & ~p_half):
                m.d.sync += [p_lo.eq(pw.payload), p_half.eq(1)]
            with m.If(pp.params.valid & pp.params.ready):
                m.d.sync += [p_half.eq(0), p_lane.eq(p_lane + 1)]
                with m.If(s.depthwise & (p_lane == c_par - 1) & (c_par < oc_par)):
                    m.d.sync += p_gap.eq(1)
                with m.Elif(p_lane == oc_par - 1):
                    m.d.sync += p_lane.eq(0)
        with m.If(flush | seq.group_start):
            m.d.sync += [p_half.eq(0), p_lane.eq(0), p_gap.eq(0)]
        m.d.comb += [
            words.ready.eq(route.r_rdy & word_ready),
            route.r_en.eq(words.valid & words.ready & words.payload.last),
        ]

        # -- weights into the PE array ---------------------------------------------------------
        w_first = Signal()
        w_loaded = Signal()
        w_pending = Signal()   # a weight read was issued and has not all arrived
        w_armed = Signal()     # ... and w_loaded has not been raised for it yet
        # A prefetch is issued while the previous group computes and the sequencer moves on, so the
        # bank of the load in progress is latched, and each bank says whether it holds a whole load.
        w_bank = Signal()
        w_ok = Signal(2)
        wiring.connect(m, wskid.o, wgear.i)
        m.d.comb += [wgear.repeat.eq(Mux(s.depthwise, oc_par, 1)),
                     pe.wl.payload.data.eq(wgear.o.payload), pe.wl.payload.first.eq(w_first),
                     pe.wl.valid.eq(wgear.o.valid), wgear.o.ready.eq(pe.wl.ready),
                     pe.wl_base.eq(Mux(w_bank, bank_blocks, 0))]
        with m.If(pe.wl.valid & pe.wl.ready):
            m.d.sync += w_first.eq(0)
        with m.If(seq.weights_first):
            m.d.sync += [w_first.eq(1), w_pending.eq(1), w_loaded.eq(0), w_armed.eq(1),
                         w_bank.eq(seq.weights_bank), w_ok.bit_select(seq.weights_bank, 1).eq(0)]
        weight_words_done = (route.r_rdy & (target == ReadTarget.WEIGHTS) & words.valid & words.ready
                             & words.payload.last)
        with m.If(weight_words_done):
            m.d.sync += w_pending.eq(0)
        # The last word is in the skid or the gearbox; loaded once the gearbox has sent its last row.
        with m.If(~w_pending & ~w_first & ~wskid.busy & ~wgear.busy & ~weight_words_done & w_armed):
            m.d.sync += [w_loaded.eq(1), w_armed.eq(0), w_ok.bit_select(w_bank, 1).eq(1)]
        # A group whose weights were prefetched keeps them (no load is in progress then).
        with m.If(flush | (seq.group_start & ~seq.weights_keep)):
            m.d.sync += [w_loaded.eq(0), w_pending.eq(0), w_armed.eq(0), w_ok.eq(0)]
        m.d.comb += seq.weights_loaded.eq(w_loaded)
        bank_ok = Signal()  # the running group's bank holds its weights
        m.d.comb += bank_ok.eq(w_ok.bit_select(s.bank, 1))

        # -- datapath configuration ----------------------------------------------------------
        # A group starts its units a cycle after GROUP_START, each unit from its own kept register
        # of it: the state decode as one net into every unit's configuration loads crossed the
        # chip (16-20 ns paths into the line buffer's, the PE array's and the counters' flops on
        # the 85F). The setup is registered before GROUP_START, and a group's first DMA word
        # comes several cycles after its first read is issued, which is after GROUP_START.
        def go_for(unit: str):
            return replica(m, platform, seq.group_start, f"go_{unit}")

        go = go_for("glue")
        conv = ~s.pool & ~s.avg & ~s.gap & ~s.add
        m.d.comb += [
            lb.config.eq(s.lb), lb.start.eq(go_for("line_buffer") & (conv | s.pool | s.avg)),
            pe.taps.eq(s.taps), pe.n_oc_tiles.eq(s.n_tiles), pe.depthwise.eq(s.depthwise),
            pe.w_base.eq(Mux(s.bank, bank_blocks, 0)),
            pe.clear.eq(pe_clear),
            pp.start.eq(go_for("postproc") & conv), pp.n_oc_tiles.eq(s.n_tiles),
            pp.zero_point.eq(s.zero_point), pp.lo.eq(s.lo), pp.hi.eq(s.hi), pp.lut_enable.eq(0),
            lutpad.setup.eq(s), lutpad.start.eq(go_for("lutpad")),
            mp.start.eq(go_for("maxpool") & s.fuse_maxpool), mp.width.eq(s.conv_w),
            mp.n_oc_tiles.eq(s.n_tiles),
            packer.setup.eq(s), packer.start.eq(go_for("packer")),
        ]

        # -- streams --------------------------------------------------------------------------
        wiring.connect(m, afifo.r_stream, pgear.i)
        # The gearbox's pixels reach their consumer through a skid, so its ready is a register:
        # the consumers' readies (global sum, EltwiseAdd, line buffer, placed apart) ran through
        # the multiplexer into the gearbox's count and the input FIFO (23.1 ns on the 85F).
        wiring.connect(m, pgear.o, pskid.i)
        wiring.connect(m, bgear.o, eadd_b_in.i)
        wiring.connect(m, eadd_b_in.o, eadd.b)
        # Pixels: line buffer (CONV, MAXPOOL, AVGPOOL), the global sum, or ADD's first input.
        # The global sum's framing flags (g_cnt == 0, g_cnt == gap_taps - 1) are registers kept with
        # the count: compared each beat, they ran into the Pool's framing check and its accumulator
        # enables (10.4 ns, the deepest path of the SoC netlist's logic).
        g_cnt = Signal(24)
        g_first, g_last = Signal(), Signal()
        g_taps_m2 = Signal(24)  # gap_taps - 2 (the setup holds still through a layer)
        g_single = Signal()     # gap_taps == 1
        m.d.sync += [g_taps_m2.eq(s.gap_taps - 2), g_single.eq(s.gap_taps == 1)]
        # The pixel skid picks its consumer's skid by the layer kind, from copies of the setup's
        # kind bits kept beside it, so its output enable is a mux of registers there: the
        # consumers' readies, and the setup from the sequencer, took two long nets into it
        # (18.3 ns on the 85F, one net of 9.4 ns from the line buffer). The copies lag the setup
        # by a cycle; the setup changes only while the datapath is idle, before a group's reads.
        pix_gap, pix_add = replica(m, platform, Cat(s.gap, s.add), "pixel_kind")
        pix_consumers = [(pix_gap, gsum_in), (pix_add & ~pix_gap, eadd_in), (~pix_gap & ~pix_add, lb_in)]
        for sel, sk in pix_consumers:
            m.d.comb += [sk.i.payload.eq(pskid.o.payload), sk.i.valid.eq(pskid.o.valid & sel)]
        m.d.comb += pskid.o.ready.eq(Cat(sel & sk.i.ready for sel, sk in pix_consumers).any())
        wiring.connect(m, lb_in.o, lb.i)
        wiring.connect(m, eadd_in.o, eadd.a)
        m.d.comb += [gsum.i.payload.data.eq(gsum_in.o.payload), gsum.i.payload.first.eq(g_first),
                     gsum.i.payload.last.eq(g_last), gsum.i.valid.eq(gsum_in.o.valid),
                     gsum_in.o.ready.eq(gsum.i.ready)]
        with m.If(gsum.i.valid & gsum.i.ready):
            m.d.sync += [g_cnt.eq(Mux(g_last, 0, g_cnt + 1)), g_first.eq(g_last),
                         g_last.eq(Mux(g_last, g_single, g_cnt == g_taps_m2))]
        with m.If(go):
            m.d.sync += [g_cnt.eq(0), g_first.eq(1), g_last.eq(g_single)]
        # The line buffer's taps go to the PE array, MaxReduce or AvgPool by copies of the layer
        # kind and bank kept beside the router, as the pixels do (above): from the setup in the
        # sequencer through the router into the PE array's acceptance and the line buffer's
        # output FIFO ran 15.1 ns on the 85F. The copies are current a cycle after the setup,
        # which the group's go waits for anyway.
        t_conv, t_pool, t_avg, t_bank = replica(m, platform, Cat(conv, s.pool, s.avg, s.bank), "tap_kind")
        gate = w_ok.bit_select(t_bank, 1) | t_pool | t_avg
        m.d.comb += [
            pe.i.payload.eq(lb.o.payload), mr.i.payload.eq(lb.o.payload), avg.i.payload.eq(lb.o.payload),
            pe.i.valid.eq(lb.o.valid & gate & t_conv), mr.i.valid.eq(lb.o.valid & t_pool),
            avg.i.valid.eq(lb.o.valid & t_avg),
            lb.o.ready.eq(Mux(t_pool, mr.i.ready, Mux(t_avg, avg.i.ready, pe.i.ready & gate))),
        ]
        # AVGPOOL: the window geometry is the line buffer's.
        m.d.comb += [
            avg.sx.eq(s.sx), avg.sy.eq(s.sy), avg.zx.eq(s.lb.zero_point), avg.zy.eq(s.zero_point),
            avg.in_h.eq(s.lb.height), avg.in_w.eq(s.lb.width), avg.out_h.eq(s.out_h), avg.out_w.eq(s.out_w),
            avg.kh.eq(s.lb.kh), avg.kw.eq(s.lb.kw), avg.stride.eq(s.lb.stride), avg.pad_t.eq(s.lb.pad_top),
            avg.pad_l.eq(s.lb.pad_left), avg.pad_b.eq(s.lb.pad_bottom), avg.pad_r.eq(s.lb.pad_right),
            avg.n_tiles.eq(s.n_tiles), avg.count_include_pad.eq(s.count_include_pad),
            avg.clear.eq(go_for("avgpool")),
        ]
        # GLOBAL_AVGPOOL: c_par sums per tile, requantized one by one, collected into one beat.
        m.d.comb += [gsum.mode.eq(PoolMode.SUM), gsum.taps.eq(s.gap_taps), gsum.clear.eq(go_for("gap_sum")),
                     grq.zero_point.eq(s.zero_point), grq.lo.eq(-128), grq.hi.eq(127)]
        g_sums = Signal(gsum.o_sum.payload.shape())
        g_full = Signal()
        g_in = Signal(range(c_par))
        m.d.comb += [
            gsum.o_sum.ready.eq(~g_full),
            grq.i.valid.eq(g_full),
            grq.i.payload.acc.eq(g_sums[g_in] + s.gap_bias),
            grq.i.payload.multiplier.eq(s.gap_m),
        ]
        with m.If(gsum.o_sum.valid & gsum.o_sum.ready):
            m.d.sync += [g_sums.eq(gsum.o_sum.payload), g_full.eq(1), g_in.eq(0)]
        with m.If(grq.i.valid & grq.i.ready):
            m.d.sync += g_in.eq(g_in + 1)
            with m.If(g_in == c_par - 1):
                m.d.sync += g_full.eq(0)
        g_beat = Signal(data.ArrayLayout(signed(8), c_par))
        g_out = Signal(range(c_par))
        g_beat_valid = Signal()
        m.d.comb += grq.o.ready.eq(~g_beat_valid)
        with m.If(grq.o.valid & grq.o.ready):
            m.d.sync += [g_beat[g_out].eq(grq.o.payload), g_out.eq(g_out + 1)]
            with m.If(g_out == c_par - 1):
                m.d.sync += [g_beat_valid.eq(1), g_out.eq(0)]
        # ADD: the sum through the LUT/pad unit (its lanes are oc_par wide), or straight to the packer.
        add_via_lut = c_par <= oc_par
        m.d.comb += [eadd.ra.eq(s.ra), eadd.rb.eq(s.rb), eadd.k.eq(s.k), eadd.lo.eq(s.lo), eadd.hi.eq(s.hi)]
        wiring.connect(m, pe.o, pe_link.i)
        wiring.connect(m, pe_link.o, pp.i)
        # The output side picks its sources by copies of the layer kind kept beside it (as the
        # pixels and the taps do): from the setup into MaxPool2x2's and the LUT stage's enables
        # ran 14.9 ns on the 85F.
        o_pool, o_avg, o_gap, o_add, o_fuse = replica(
            m, platform, Cat(s.pool, s.avg, s.gap, s.add, s.fuse_maxpool), "out_kind")
        with m.If(o_add):
            if add_via_lut:
                m.d.comb += [lut_in.i.payload.eq(eadd.o.payload.as_value()), lut_in.i.valid.eq(eadd.o.valid),
                             eadd.o.ready.eq(lut_in.i.ready)]
        with m.Else():
            m.d.comb += [lut_in.i.payload.eq(pp.o.payload), lut_in.i.valid.eq(pp.o.valid),
                         pp.o.ready.eq(lut_in.i.ready)]
        wiring.connect(m, lut_in.o, lutpad.i)
        wiring.connect(m, lutpad.o, lut_out.i)
        # LutPad -> (MaxPool2x2) -> packer, or MaxReduce / AvgPool / the global average -> packer,
        # through a skid (``pin``) whose ready is a register: the packer's ready ran back through
        # the source multiplexer into MaxReduce and the line buffer's output FIFO (18.0 ns, 85F).
        m.d.comb += [mp.i.payload.eq(lut_out.o.payload), mp.i.valid.eq(lut_out.o.valid & o_fuse)]
        # Every source sees the skid's ready, whichever the layer uses (only that one has a valid
        # beat): taken through the source multiplexer, it ran from the setup into MaxPool2x2's
        # block RAM enables (16.4 ns on the 85F).
        m.d.comb += [mr.o.ready.eq(pin.i.ready), avg.o.ready.eq(pin.i.ready), mp.o.ready.eq(pin.i.ready)]
        if not add_via_lut:  # else EltwiseAdd feeds the LUT (above)
            m.d.comb += eadd.o.ready.eq(pin.i.ready)
        with m.If(o_pool):
            m.d.comb += [pin.i.payload.eq(mr.o.payload.as_value()), pin.i.valid.eq(mr.o.valid)]
        with m.Elif(o_avg):
            m.d.comb += [pin.i.payload.eq(avg.o.payload.as_value()), pin.i.valid.eq(avg.o.valid)]
        with m.Elif(o_gap):
            m.d.comb += [pin.i.payload.eq(g_beat.as_value()), pin.i.valid.eq(g_beat_valid)]
            with m.If(g_beat_valid & pin.i.ready):
                m.d.sync += g_beat_valid.eq(0)
        with m.Elif(o_add & Const(not add_via_lut)):
            m.d.comb += [pin.i.payload.eq(eadd.o.payload.as_value()), pin.i.valid.eq(eadd.o.valid)]
        with m.Elif(o_fuse):
            m.d.comb += [pin.i.payload.eq(mp.o.payload.as_value()), pin.i.valid.eq(mp.o.valid),
                         lut_out.o.ready.eq(mp.i.ready)]
        with m.Else():
            m.d.comb += [pin.i.payload.eq(lut_out.o.payload.as_value()),
                         pin.i.valid.eq(lut_out.o.valid), lut_out.o.ready.eq(pin.i.ready)]
        wiring.connect(m, pin.o, packer.i)
        wiring.connect(m, packer.o, writer.i)
        # Icarus leaves the line buffer's ``busy`` (a case on its FSM state) at X until that state
        # first changes, so the line buffer counts as idle until it has been started once.
        lb_started = Signal()
        with m.If(lb.start):
            m.d.sync += lb_started.eq(1)
        # The next group starts as soon as the datapath is idle, while the previous group's write
        # drains, so idle covers the accumulations inside the PE array's pipeline too (before,
        # the write's done implied it). The sequencer sees it registered, taken with the reader
        # idle so that no word can enter the datapath in the cycle it lags: gathered from every
        # unit across the 85F, it ran into the sequencer's setup loads (17.9 ns). It is only
        # waited on in GROUP_READY and LAYER_END, many cycles after a group's start.
        idle = Signal()
        idle_q = Signal()
        m.d.sync += idle_q.eq(idle & ~reader.busy & ~rskid.busy)
        m.d.comb += seq.datapath_idle.eq(idle_q)
        m.d.comb += idle.eq(~(lb_started & lb.busy) & ~pe.busy & ~pp.busy & ~mp.busy
                            & ~packer.busy & ~pin.busy
                            & ~mr.o.valid & ~lut_in.busy & ~lutpad.busy & ~lut_out.busy
                            & ~pgear.o.valid & ~pskid.busy & ~lb_in.busy & ~gsum_in.busy
                            & ~eadd_in.busy & ~pe_link.busy & ~avg.o.valid
                            & ~g_full & ~g_beat_valid & ~eadd.o.valid & ~bgear.o.valid
                            & ~afifo.r_rdy & ~in_skid.busy & ~in2_skid.busy & ~par_skid.busy
                            & ~eadd_b_in.busy)

        # -- performance counters -------------------------------------------------------------
        counters = {name.lower(): Signal(64, name=f"ctr_{name.lower()}") for name, _ in PERF_COUNTERS}
        conv_run = seq.busy & conv & lb_started & lb.busy
        tap_wait = lb.o.valid & ~pe.i.ready & gate & t_conv
        out_block = packer.i.valid & ~packer.i.ready
        incs = {
            "cycles": 1,
            "busy_cycles": seq.busy,
            "mac_active_cycles": pe.mac_active,
            "dma_read_bytes": reader.bytes_read,
            "dma_write_bytes": writer.bytes_written,
            "stall_input": conv_run & bank_ok & ~lb.o.valid,
            "stall_weights": conv_run & ~bank_ok,
            "stall_output": tap_wait & out_block,
            "stall_requant": tap_wait & ~out_block,
        }
        # The clear and the increments are registered, the clear once per counter (a kept copy):
        # from the sequencer's state and its inputs to the 64 flops' reset of every counter it was
        # the 25F SoC's critical path (5.6 ns of fan-out routing), and the stall conditions
        # (setup, line buffer, PE array, packer) ran across the 85F into the 64-bit adds. Each
        # counter is then exactly its unregistered self one cycle later; a register read takes
        # more than a cycle, so a read after ``done`` still sees the whole run.
        clear = ctrl.clear_counters | seq.clear_status
        for name, ctr in counters.items():
            clear_q = replica(m, platform, clear, f"ctr_{name}_clear")
            inc = Value.cast(incs[name])
            inc_q = Signal(inc.shape(), name=f"ctr_{name}_inc")
            m.d.sync += [inc_q.eq(inc), ctr.eq(Mux(clear_q, 0, ctr + inc_q))]
            m.d.comb += getattr(csr, name).eq(ctr)
        return m


def port_table(core: JacquardCore) -> list[str]:
    """Markdown lines of the Verilog port list of ``core``, generated from its signature.

    Amaranth flattens ``s_axil.awaddr`` to the Verilog port ``s_axil__awaddr``; ``clk`` and ``rst``
    (synchronous, active high) are added by the ``sync`` domain.
    """
    # The core is only inspected here, never elaborated: do not let amaranth warn about that.
    core._MustUse__silence = True
    lines = ["| Port | Direction | Width | Interface |", "|---|---|---|---|",
             "| `clk` | input | 1 | clock (`sync` domain) |",
             "| `rst` | input | 1 | synchronous reset, active high |"]
    docs = {"s_axil": "AXI4-Lite slave (registers)", "m_axi": "AXI4 master (device memory)",
            "irq": "interrupt, level, active high"}
    for path, member, _ in core.signature.flatten(core):
        name = "__".join(str(p) for p in path)
        out = member.flow == Out
        width = len(getattr(core, path[0]) if len(path) == 1 else getattr(getattr(core, path[0]), path[1]))
        lines.append(f"| `{name}` | {'output' if out else 'input'} | {width} | {docs[path[0]]} |")
    return lines


def export_verilog(config: HardwareConfig | str, name: str = "jacquard_core") -> str:
    """Plain Verilog of a :class:`JacquardCore` for ``config`` (a top module called ``name``)."""
    from amaranth.back import verilog

    core = JacquardCore(config)
    return verilog.convert(core, name=name, emit_src=False)
