"""The descriptor sequencer: fetches a program by DMA, checks each descriptor, and runs its layer.

Flow (one FSM; states named below)
-----------------------------------
``IDLE`` -> ``start``: ``PROG_LEN`` below the 16-byte header is BAD_LENGTH; else the header is read
by DMA (``HDR_*``) and its magic, version, config hash and length (``PROG_LEN == 16 + 64*count``)
are checked. Then for each descriptor ``i``:

``DESC_*``
    The 16 words are read by DMA from ``PROG_BASE + 16 + 64*i`` into a register with
    :func:`jacquard.sim.isa.descriptor_layout`.
``MUL``
    Region sizes and tap counts are computed with one shift-and-add multiplier (no DSPs;
    at most 17 cycles per product, 10 products).
``SCALES``
    ADD and the global average (GLOBAL_AVGPOOL, or an AVGPOOL whose window is the whole unpadded
    map) compute their float32 constants in :class:`~jacquard.rtl.fp32.ScaleUnit` (ADD's ``ra``,
    ``rb``, ``k``; the global average's multiplier and onnxruntime's range check on it).
``UNITS``
    The checks' wide arithmetic: :class:`~jacquard.rtl.check_units.RegionUnit` walks the six
    regions (alignment, window, overlap with the output) and
    :class:`~jacquard.rtl.check_units.ShapeUnit` the two dimensions (output size, ceil-mode
    padding), one per cycle through registered stages, leaving one verdict bit each.
``CHECK``
    The checks of ``docs/ISA.md`` run in the executor's order, one per cycle, and the first that
    fails stops the core with its ErrorCode, the descriptor index, the field (``ERROR_FIELD``) and
    the address (``ERROR_ADDR``). Nothing of the layer has been read or written yet. After the
    ISA's checks come this core's own limits (PARAM_RANGE, listed in ``docs/CORE.md``): for
    line-buffer layers ``stride_h != stride_w``, an input row wider than a line-buffer slot and a
    ceil-mode pool whose last window would need more than ``kernel - 1`` rows or columns of
    padding; subnormal scales; a windowed AVGPOOL's scales outside ``[2^-32, 2^32)``; ADD
    constants outside ``[2^-64, 2^64)``; a LUT on ADD when ``oc_par < c_par`` or a per-channel one
    of more than the LUT buffer's channels.
``GROUP_*``
    A layer runs as output-channel groups: as many oc tiles as fit one weight bank, the
    parameter buffer, the LUT buffer (per-channel LUTs) and the fused max pool's row buffer. For
    each group the datapath is (re)started and five DMA commands go out in this order: channel
    parameters, LUT, weights (into one of two banks), the whole input (row by row) and the output
    (a 3-D strided write of the group's channels of every pixel). Each group streams the whole
    input again, so any number of output channels runs (a depthwise group reads only its own
    channels of every pixel). Rows are never a limit: the line buffer is circular.

    Groups overlap (``GROUP_END`` -> ``GROUP_SIZE`` -> ``ISSUE_WEIGHTS`` -> ``GROUP_READY``): as
    soon as a group's commands are out, the next group is sized and its weight read goes out
    into the other bank (``weights_keep``), queued behind this group's input, so it arrives
    while this group computes its last rows. The next group starts once the datapath is idle
    (every output beat handed to the DMA writer) and its weights are loaded; this group's write
    still drains meanwhile (the writer serves its commands in order, and the outputs reach it in
    order). Every ``wr_done`` is collected at any time (a counter of writes in flight);
    ``LAYER_END`` waits for all of them, so the next descriptor sees the whole output.

    The other ops are one group. MAXPOOL and AVGPOOL read the input once (row by row) into the
    line buffer. GLOBAL_AVGPOOL issues its output write first, then one 2-D read per channel tile
    (``c_par`` bytes of every pixel). ADD reads its LUT (if any), issues its output write, then
    reads chunks of ``ADD_CHUNK_WORDS`` bus words of the first and the second input in turn
    (``ReadTarget.INPUT``, ``INPUT2``); the core holds one chunk of the first input in a FIFO. An
    ADD with a per-channel LUT of more channels than the LUT buffer holds runs in channel groups
    of that many channels, reading each pixel's channels of the group (one chunk per pixel).

Errors and abort (``STOP``): a refused check, a DMA error (WINDOW, MISALIGNED, BUS_ERROR, with the
command's tag = descriptor index), ``abort`` or ``soft_reset`` pulse ``dma_abort`` and hold
``flush`` (the datapath's reset) until the DMA has drained its bursts (writes in flight finish
with empty strobes). Then ``busy`` drops with ``error`` and the code set (ABORTED for an abort),
or, after a soft reset, with every status register back at reset. The core takes the next
``start`` at once.
"""

from contextlib import contextmanager

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from jacquard.sim.isa import (
    ISA_VERSION,
    MAX_KERNEL,
    MAX_STRIDE,
    NO_FIELD,
    PROGRAM_MAGIC,
    ErrorCode,
    HardwareConfig,
    Op,
    descriptor_layout,
    field_index,
)
from jacquard.sim.isa_regs import HEADER_INDEX

from .check_units import SIZE_BITS, RegionUnit, ShapeUnit, saturate
from .dma import DmaCommand
from .dma_writer import DmaDoneLayout
from .fp32 import ScaleUnit
from .line_buffer import LineBufferConfig
from .replica import replica

__all__ = ["LayerSetup", "ReadTarget", "Sequencer"]

_ADDR = 32
_TAG = 16
_WIDE = 50  # the shift-and-add multiplier (its products are saturated to SIZE_BITS)
#: ADD reads its two inputs in turn in chunks of this many bytes (the core buffers one chunk).
ADD_CHUNK_WORDS = 16


def _field_code(fld):
    """``ERROR_FIELD`` of a field name, None (no field) or a value."""
    return field_index(fld) if isinstance(fld, str) else NO_FIELD if fld is None else fld


class ReadTarget(enum.Enum, shape=3):
    """Where the words of a DMA read command go (the core's read router)."""

    DESC = 0
    PARAMS = 1
    LUT = 2
    WEIGHTS = 3
    INPUT = 4
    INPUT2 = 5  #: ADD's second input


class LayerSetup(data.StructLayout):
    """The datapath configuration of one output-channel group, valid while ``busy``.

    ``pool`` selects the MAXPOOL datapath (line buffer -> max reducer), ``avg`` AVGPOOL (line
    buffer -> AvgPool), ``gap`` a global average (input tiles -> Pool sum -> requantizer), ``add``
    ADD (two inputs -> EltwiseAdd -> LUT/pad), else CONV (line buffer -> PE array ->
    post-processor -> LUT/pad -> optional 2x2 pool). ``lanes`` is the channels per output beat
    (``oc_par`` dense, ``c_par`` depthwise and the other ops); ``ch0`` the group's first output
    channel; ``n_tiles`` its beats per pixel. ``sx``/``sy`` are the AVGPOOL scales (float32 bits),
    ``gap_*`` the global average's taps (``in_h * in_w``), bias (``-in_zp * in_h * in_w``) and
    multiplier, ``ra``/``rb``/``k`` ADD's constants (see :class:`~jacquard.rtl.fp32.ScaleUnit`).
    """

    def __init__(self) -> None:
        super().__init__({
            "pool": 1,
            "avg": 1,
            "gap": 1,
            "add": 1,
            "lb": LineBufferConfig(),
            "taps": 16,
            "n_tiles": 16,
            "depthwise": 1,
            "bank": 1,
            "zero_point": signed(8),
            "lo": signed(8),
            "hi": signed(8),
            "lut": 1,
            "lut_per_channel": 1,
            "fuse_maxpool": 1,
            "conv_w": 16,
            "lanes": 8,
            "ch0": 16,
            "out_c": 16,
            "out_cp": 16,
            "out_h": 16,
            "out_w": 16,
            "count_include_pad": 1,
            "sx": 32,
            "sy": 32,
            "gap_taps": 24,
            "gap_bias": signed(32),
            "gap_m": 32,
            "ra": 32,
            "rb": 32,
            "k": 32,
        })


class Sequencer(wiring.Component):
    """Program fetch, descriptor checks and layer control (see the module docstring).

    Parameters
    ----------
    config : HardwareConfig
    lb_row_bytes : int
        Bytes of one line-buffer row slot (``in_w * in_cp`` must fit).
    lut_channels : int
        Per-channel LUTs the LUT buffer holds (a multiple of ``c_par`` and ``oc_par``).
    pool_depth : int
        Row-buffer entries of the fused 2x2 max pool (``(conv_w // 2) * n_tiles`` must fit).
    pp_tiles : int
        oc tiles the post-processor's parameter memory holds.

    Members
    -------
    start, abort, soft_reset : In(1)
        ``CTRL`` pulses.
    prog_base, prog_len, window_base, window_limit : In(32)
        From the registers.
    busy, done, error : Out(1)
        ``STATUS``; ``done``/``error`` are cleared by ``start``.
    error_code : Out(ErrorCode)
    desc_index, current_desc : Out(16)
    error_field : Out(8)
    error_addr : Out(32)
    irq_done, irq_error : Out(1)
        One-cycle pulses at the end of a program.
    clear_status : Out(1)
        Pulses after a soft reset has drained (the core returns the registers to reset).
    rd_cmd : Out(stream.Signature(DmaCommand(32, 16)))
        Read commands; ``rd_target`` says where their words go.
    rd_target : Out(ReadTarget)
    desc_word : In(stream.Signature(32))
        Words of header and descriptor reads.
    wr_cmd : Out(stream.Signature(DmaCommand(32, 16)))
    wr_done : In(stream.Signature(DmaDoneLayout(16)))
    dma_error : In(1)
    dma_error_code : In(ErrorCode)
    dma_error_tag : In(16)
    dma_busy : In(1)
    dma_abort, dma_clear : Out(1)
    flush : Out(1)
        Reset of the datapath and the read router.
    setup : Out(LayerSetup())
    group_start : Out(1)
        Pulse: restart the datapath units with ``setup``.
    weights_first : Out(1)
        Pulse: the next weight row starts bank ``weights_bank`` (one cycle before the weight read).
    weights_bank : Out(1)
        Bank of the weight read being issued (sampled with ``weights_first``).
    weights_keep : Out(1)
        With ``group_start``: the group's weights were prefetched into ``setup.bank`` (keep them).
    datapath_idle : In(1)
        Line buffer, PE array, post-processing and output packer hold nothing.
    weights_loaded : In(1)
        High once the last word of the most recent weight read has gone into the PE array.
    """

    def __init__(self, config: HardwareConfig, *, lb_row_bytes: int, lut_channels: int, pool_depth: int,
                 pp_tiles: int) -> None:
        if not isinstance(config, HardwareConfig):
            raise TypeError(f"config must be a HardwareConfig, not {config!r}")
        for name, v in (("lb_row_bytes", lb_row_bytes), ("lut_channels", lut_channels),
                        ("pool_depth", pool_depth), ("pp_tiles", pp_tiles)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        self._cfg = config
        self._lb_row_bytes = lb_row_bytes
        self._lut_channels = lut_channels
        self._pool_depth = pool_depth
        self._pp_tiles = pp_tiles
        super().__init__({
            "start": In(1), "abort": In(1), "soft_reset": In(1),
            "prog_base": In(_ADDR), "prog_len": In(32), "window_base": In(_ADDR), "window_limit": In(_ADDR),
            "busy": Out(1), "done": Out(1), "error": Out(1), "error_code": Out(ErrorCode),
            "desc_index": Out(16), "current_desc": Out(16), "error_field": Out(8, init=NO_FIELD),
            "error_addr": Out(32), "irq_done": Out(1), "irq_error": Out(1), "clear_status": Out(1),
            "rd_cmd": Out(stream.Signature(DmaCommand(_ADDR, _TAG))),
            "rd_target": Out(ReadTarget),
            "desc_word": In(stream.Signature(32)),
            "wr_cmd": Out(stream.Signature(DmaCommand(_ADDR, _TAG))),
            "wr_done": In(stream.Signature(DmaDoneLayout(_TAG))),
            "dma_error": In(1), "dma_error_code": In(ErrorCode), "dma_error_tag": In(_TAG),
            "dma_busy": In(1), "dma_abort": Out(1), "dma_clear": Out(1), "flush": Out(1),
            "setup": Out(LayerSetup()), "group_start": Out(1), "weights_first": Out(1),
            "weights_bank": Out(1), "weights_keep": Out(1), "datapath_idle": In(1),
            "weights_loaded": In(1),
        })

    @classmethod
    def for_config(cls, config: HardwareConfig) -> "Sequencer":
        """The sequencer of :class:`~jacquard.rtl.core.JacquardCore` for ``config``, with its limits."""
        lb_channels = max(config.c_par, -(-config.line_buffer_bytes // config.max_width // config.c_par)
                          * config.c_par)
        return cls(config, lb_row_bytes=config.max_width * lb_channels,
                   lut_channels=min(config.param_buffer_entries, 64),
                   pool_depth=max(config.max_width // 2, config.line_buffer_bytes // config.oc_par),
                   pp_tiles=config.param_buffer_entries // config.oc_par)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._cfg
        c_par, oc_par = cfg.c_par, cfg.oc_par
        ct_shift = exact_log2(c_par)
        blk_shift = exact_log2(c_par * oc_par)
        bank_blocks = cfg.weight_buffer_bytes // (c_par * oc_par)
        param_shift = exact_log2(cfg.param_align)
        kh_max = min(MAX_KERNEL, cfg.max_kernel_h)
        add_chunk = ADD_CHUNK_WORDS * cfg.dma_align

        d = Signal(descriptor_layout())

        # The op's decode, registered: it selects operands all over the state machine, and the
        # descriptor is stable for dozens of cycles (MUL) before the first of them is used.
        op_flags = {o: Signal(name=f"is_{o.name.lower()}") for o in sorted(cfg.ops)}
        m.d.sync += [flag.eq(d.op == o) for o, flag in op_flags.items()]

        def is_op(o):
            return self._is_op(op_flags, o)
        hdr = Signal(4 * 32)
        words_left = Signal(5)
        index = Signal(16)
        count = Signal(32)
        last_done = Signal()  # index == count, registered where index or count moves
        desc_addr = Signal(_ADDR)

        # -- products (MUL) -----------------------------------------------------------------
        p_row = Signal(SIZE_BITS)       # in_w * in_cp
        p_in = Signal(SIZE_BITS)        # in_h * in_w * in_cp
        p_lb = Signal(SIZE_BITS)        # (kh - 1) * in_w * in_cp
        p_orow = Signal(SIZE_BITS)      # out_w * out_cp
        p_out = Signal(SIZE_BITS)       # out_h * out_w * out_cp
        p_khkw = Signal(SIZE_BITS)
        p_taps = Signal(SIZE_BITS)      # blocks per oc tile
        p_w = Signal(SIZE_BITS)         # weight bytes of the layer
        p_hw = Signal(SIZE_BITS)        # in_h * in_w
        p_zhw = Signal(SIZE_BITS)       # |in_zp| * in_h * in_w
        mul_a = Signal(_WIDE)
        mul_b = Signal(16)
        mul_acc = Signal(_WIDE)

        dw = d.depthwise
        n_ct = d.in_cp >> ct_shift
        # Registered, like every value the group logic derives from the descriptor alone: the
        # descriptor is stable from its last word on, and MUL runs for dozens of cycles before
        # anything reads these (the group sizing's adds and compares in series with them set the
        # sequencer's Fmax, 53 MHz alone on the 85F).
        n_tiles_total = Signal(17)
        m.d.sync += n_tiles_total.eq(Mux(dw, (d.out_c + c_par - 1) >> ct_shift,
                                         (d.out_c + oc_par - 1) >> exact_log2(oc_par)))
        w_tile_bytes = Signal(SIZE_BITS)  # weight bytes in memory per oc tile
        m.d.comb += w_tile_bytes.eq(saturate(Mux(dw, p_khkw << ct_shift, p_taps << blk_shift)))

        mul_steps = [
            (p_row, d.in_cp, d.in_w),
            (p_in, p_row, d.in_h),
            (p_lb, p_row, d.kh - 1),
            (p_orow, d.out_cp, d.out_w),
            (p_out, p_orow, d.out_h),
            (p_khkw, d.kh, d.kw),
            (p_taps, p_khkw, Mux(dw, 1, n_ct)),
            (p_w, w_tile_bytes, n_tiles_total),
            (p_hw, d.in_h, d.in_w),
            (p_zhw, p_hw, Mux(d.in_zp < 0, -d.in_zp, d.in_zp)),
        ]
        mul_step = Signal(range(len(mul_steps) + 1))
        mul_busy = Signal()

        # -- region table (for MISALIGNED, WINDOW and OVERLAP) --------------------------------
        is_conv, is_add = is_op(Op.CONV), is_op(Op.ADD)
        params_bytes = ((d.out_c + cfg.param_align - 1) >> param_shift) << (param_shift + 3)
        lut_bytes = Mux(d.lut_per_channel, d.out_cp << 8, 256)
        regions = [  # (field, used, addr, size)
            ("in_addr", Const(1), d.in_addr, p_in),
            ("in2_addr", is_add, d.in2_addr, p_in),
            ("weights_addr", is_conv, d.weights_addr, p_w),
            ("params_addr", is_conv, d.params_addr, params_bytes),
            ("lut_addr", d.lut, d.lut_addr, lut_bytes),
            ("out_addr", Const(1), d.out_addr, p_out),
        ]

        lb_op = is_op(Op.CONV) | is_op(Op.MAXPOOL) | is_op(Op.AVGPOOL)
        # A whole-map AVGPOOL without padding is a global average (onnxruntime's path, the ISA's).
        whole = Signal()
        m.d.sync += whole.eq((d.kh == d.in_h) & (d.kw == d.in_w) & (d.pad_t == 0) & (d.pad_l == 0)
                             & (d.pad_b == 0) & (d.pad_r == 0))
        is_gap = is_op(Op.GLOBAL_AVGPOOL) | (is_op(Op.AVGPOOL) & whole)
        is_avg = is_op(Op.AVGPOOL) & ~whole
        lb_path = is_op(Op.CONV) | is_op(Op.MAXPOOL) | is_avg  # ops that run through the line buffer

        if cfg.ops & {Op.ADD, Op.AVGPOOL, Op.GLOBAL_AVGPOOL}:
            m.submodules.scale = su = ScaleUnit()
        else:  # no op needs the float32 constants: idle stand-in ports, no ScaleUnit logic
            su = wiring.Signature({n: a for n, a in ScaleUnit.__annotations__.items()
                                   if isinstance(a, wiring.Member)}).create()
        m.d.comb += [su.add.eq(is_add), su.sx.eq(d.in_scale), su.s2.eq(d.in2_scale), su.sy.eq(d.out_scale),
                     su.zx.eq(d.in_zp), su.z2.eq(d.in2_zp), su.zy.eq(d.out_zp), su.hw.eq(p_hw)]
        pool_ceil = d.ceil_mode & (is_op(Op.MAXPOOL) | is_op(Op.AVGPOOL))
        # The checks' wide arithmetic, one region / dimension at a time (UNITS, before CHECK).
        u_step = Signal(range(max(len(regions) + RegionUnit.latency, 2 + ShapeUnit.latency) + 1))
        u_run = Signal()
        ru = RegionUnit(m, [(used, addr, size) for _, used, addr, size in regions], u_step, u_run,
                        align_bits=exact_log2(cfg.dma_align), window_base=self.window_base,
                        window_limit=self.window_limit, out_addr=d.out_addr, out_size=p_out)
        shu = ShapeUnit(m, [(d.in_h, d.kh, d.stride_h, d.pad_t, d.pad_b, d.out_h),
                            (d.in_w, d.kw, d.stride_w, d.pad_l, d.pad_r, d.out_w)],
                        u_step, u_run, fused=is_conv & d.fuse_maxpool, ceil=pool_ceil)
        u_last = max(len(regions) + RegionUnit.latency, 2 + ShapeUnit.latency)
        oh_ok = Mux(lb_op, shu.ok[0], Mux(is_op(Op.GLOBAL_AVGPOOL), d.out_h == 1, d.out_h == d.in_h))
        ow_ok = Mux(lb_op, shu.ok[1], Mux(is_op(Op.GLOBAL_AVGPOOL), d.out_w == 1, d.out_w == d.in_w))
        # Bottom/right padding the line buffer runs with: a ceil-mode pool pads its last window.
        pad_b_eff, pad_r_eff = shu.pad_end
        prog_end = Signal(_ADDR + 1)
        out_end = Signal(SIZE_BITS + 1)
        m.d.sync += [prog_end.eq(self.prog_base + self.prog_len), out_end.eq(d.out_addr + p_out)]

        def scale_bad(bits):
            return bits[31] | (bits[23:31] == 0xFF) | (bits[:31] == 0)

        def exp_outside(bits, lo, hi):
            return (bits[23:31] < 127 + lo) | (bits[23:31] > 127 + hi)

        reserved = Cat(*(d[name] for name in descriptor_layout().members if name.startswith("reserved_")))

        def pad_c(c):
            return (c + c_par - 1) >> ct_shift << ct_shift

        P, S = ErrorCode.PARAM_RANGE, ErrorCode.SHAPE
        checks = [  # (fails, code, field, ERROR_ADDR: 0 or the name of the address field)
            # An op outside the config's op set is as unknown as an invalid code.
            (~Cat(*op_flags.values()).any(), ErrorCode.BAD_OPCODE, "op", 0),
            (reserved != 0, P, None, 0),
            *[(d[n] == 0, P, n, 0) for n in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c")],
            (d.in_cp != pad_c(d.in_c), P, "in_cp", 0),
            (d.out_cp != pad_c(d.out_c), P, "out_cp", 0),
            (d.lut_per_channel & ~d.lut, P, "lut_per_channel", 0),
            (d.lut & ~(is_conv | is_add), P, "lut", 0),
            (d.fuse_maxpool & ~is_conv, P, "fuse_maxpool", 0),
            (d.depthwise & ~is_conv, P, "depthwise", 0),
            (d.ceil_mode & ~(is_op(Op.MAXPOOL) | is_op(Op.AVGPOOL)), P, "ceil_mode", 0),
            (d.count_include_pad & (~is_op(Op.AVGPOOL)), P, "count_include_pad", 0),
            ((is_conv | is_add) & (d.clamp_lo > d.clamp_hi), P, "clamp_lo", 0),
            (lb_op & ((d.kh < 1) | (d.kh > kh_max)), P, "kh", 0),
            (lb_op & ((d.kw < 1) | (d.kw > MAX_KERNEL)), P, "kw", 0),
            (lb_op & ((d.stride_h < 1) | (d.stride_h > MAX_STRIDE)), P, "stride_h", 0),
            (lb_op & ((d.stride_w < 1) | (d.stride_w > MAX_STRIDE)), P, "stride_w", 0),
            (lb_op & (d.pad_t >= d.kh), P, "pad_t", 0),
            (lb_op & (d.pad_b >= d.kh), P, "pad_b", 0),
            (lb_op & (d.pad_l >= d.kw), P, "pad_l", 0),
            (lb_op & (d.pad_r >= d.kw), P, "pad_r", 0),
            (lb_op & (d.in_w > cfg.max_width), P, "in_w", 0),
            (lb_op & (p_lb > cfg.line_buffer_bytes), P, "in_w", 0),
            (is_conv & dw & (d.out_c != d.in_c), S, "out_c", 0),
            (is_conv & dw & (oc_par < c_par), P, "depthwise", 0),
            (is_conv & ((p_taps << blk_shift) > cfg.weight_buffer_bytes), P, "in_c", 0),
            (~is_conv & (d.out_c != d.in_c), S, "out_c", 0),
            (~oh_ok, S, "out_h", 0),
            (~ow_ok, S, "out_w", 0),
            *[((is_op(Op.AVGPOOL) | is_op(Op.GLOBAL_AVGPOOL) | is_add) & scale_bad(d[n]), P, n, 0)
              for n in ("in_scale",)],
            (is_add & scale_bad(d.in2_scale), P, "in2_scale", 0),
            ((is_op(Op.AVGPOOL) | is_op(Op.GLOBAL_AVGPOOL) | is_add) & scale_bad(d.out_scale), P,
             "out_scale", 0),
            # The global average's multiplier in_scale / (out_scale * H * W), as onnxruntime refuses it.
            (is_gap & ((p_hw >= 1 << 24) | ~su.m_ok), P, "in_scale", 0),
            *[(ru.misaligned[k], ErrorCode.MISALIGNED, name, name)
              for k, (name, _, _, _) in enumerate(regions)],
            *[(ru.outside[k], ErrorCode.WINDOW, name, name) for k, (name, _, _, _) in enumerate(regions)],
            *[(ru.overlaps[k], ErrorCode.OVERLAP, "out_addr", "out_addr") for k in range(len(regions) - 1)],
            ((d.out_addr < prog_end) & (self.prog_base < out_end), ErrorCode.OVERLAP, "out_addr", "out_addr"),
            # This core's own limits.
            (lb_path & (d.stride_h != d.stride_w), P, "stride_w", 0),
            (lb_path & (p_row > self._lb_row_bytes), P, "in_w", 0),
            (lb_path & ((pad_b_eff >= d.kh) | (pad_r_eff >= d.kw)), P, "ceil_mode", 0),
            # Subnormal scales; AvgPool's scales in [2^-32, 2^32); EltwiseAdd's constants' range.
            ((is_gap | is_avg | is_add) & (d.in_scale[23:31] == 0), P, "in_scale", 0),
            (is_add & (d.in2_scale[23:31] == 0), P, "in2_scale", 0),
            ((is_gap | is_avg | is_add) & (d.out_scale[23:31] == 0), P, "out_scale", 0),
            (is_avg & exp_outside(d.in_scale, -32, 31), P, "in_scale", 0),
            (is_avg & exp_outside(d.out_scale, -32, 31), P, "out_scale", 0),
            (is_add & ~su.add_ok, P, "in_scale", 0),
            # ADD's LUT goes through the LUT/pad unit: lanes = c_par must fit its oc_par lanes.
            (is_add & d.lut & Const(cfg.oc_par < cfg.c_par), P, "lut", 0),
        ]
        check_step = Signal(range(len(checks) + 3))
        # Every check's verdict is registered: each is a wide compare (an address plus a size
        # against the window, 50-bit carry chains) and their multiplexer by check_step feeds the
        # state machine, which was the SoC's longest path. The operands (the descriptor, the
        # products, the ScaleUnit's outputs, the registers) are stable at least two cycles
        # before CHECK reads the first verdict: MUL's last step and SCALES come in between.
        check_bad = Signal(len(checks))
        m.d.sync += check_bad.eq(Cat(*(bad for bad, _, _, _ in checks)))
        # What a failing check reports comes from tables indexed by the step (one multiplexer per
        # status register instead of one per check).
        check_code = Array(Const(code, ErrorCode) for _, code, _, _ in checks)
        check_field = Array(Const(_field_code(fld), 8) for _, _, fld, _ in checks)
        addr_names = sorted({a for _, _, _, a in checks if isinstance(a, str)})
        check_addr = Array([Const(0, _ADDR), *(d[a] for a in addr_names)])
        check_addr_sel = Array(Const(addr_names.index(a) + 1 if isinstance(a, str) else 0,
                                     range(len(addr_names) + 1)) for _, _, _, a in checks)
        # CHECK acts two cycles after it selects: the verdict of step k and what it would report
        # go through two register stages (the tables by step, then the address by the table's
        # entry) while steps k + 1 and k + 2 are selected, so neither the step's multiplexers nor
        # the tables run into the state machine and the status registers in one cycle.
        a_hit, a_end, a_code, a_field = Signal(), Signal(), Signal(ErrorCode), Signal(8)
        a_sel = Signal(range(len(addr_names) + 1))
        m.d.sync += [a_hit.eq((check_step < len(checks)) & check_bad.bit_select(check_step, 1)),
                     a_end.eq(check_step == len(checks)),
                     a_code.eq(check_code[check_step]), a_field.eq(check_field[check_step]),
                     a_sel.eq(check_addr_sel[check_step])]
        chk_hit, chk_end = Signal(), Signal()
        chk_code, chk_field, chk_addr = Signal(ErrorCode), Signal(8), Signal(_ADDR)
        m.d.sync += [chk_hit.eq(a_hit), chk_end.eq(a_end), chk_code.eq(a_code), chk_field.eq(a_field),
                     chk_addr.eq(check_addr[a_sel])]
        # chk_* are a step's once CHECK has run for two cycles.
        chk_run, chk_live = Signal(), Signal()

        # -- status -------------------------------------------------------------------------
        stop_soft = Signal()
        m.d.comb += self.current_desc.eq(index)

        def clear_status():
            """A soft reset's status clear (STOP after a soft reset, or a soft reset while idle)."""
            m.d.sync += [self.done.eq(0), self.error.eq(0), self.error_code.eq(0),
                         self.error_field.eq(NO_FIELD), self.error_addr.eq(0), self.desc_index.eq(0),
                         index.eq(0)]
            m.d.comb += self.clear_status.eq(1)

        def fail(code, fld, addr, idx=None):
            return [self.error_code.eq(code), self.error_field.eq(_field_code(fld)),
                    self.error_addr.eq(addr), self.desc_index.eq(index if idx is None else idx)]

        # -- group state --------------------------------------------------------------------
        tile0 = Signal(17)
        g_tiles = Signal(17)
        # A group fits one weight bank (CHECK refused a tile that does not): narrow counters.
        g_wbytes = Signal(range(cfg.weight_buffer_bytes + 1))
        w_ptr = Signal(_ADDR)
        bank = Signal()
        # The group being sized had its weights prefetched (every CONV group after the layer's first).
        pre = Signal()
        # Write commands whose wr_done has not come back: groups overlap the previous group's write.
        wr_out = Signal(range(16))
        setup = self.setup
        ch0 = Signal(17)
        m.d.comb += ch0.eq(Mux(dw, tile0 << ct_shift, tile0 << exact_log2(oc_par)))
        # Channels in the group that exist in memory. Registered: GROUP_SIZE's last cycle leaves
        # tile0 and g_tiles as they are, so it holds the group's value from the next state on.
        g_ch = Signal(17)
        g_lanes_all = Signal(20)
        m.d.comb += g_lanes_all.eq(Mux(dw, g_tiles << ct_shift, g_tiles << exact_log2(oc_par)))
        m.d.sync += g_ch.eq(Mux(d.out_cp - ch0 < g_lanes_all, d.out_cp - ch0, g_lanes_all))
        lut_cap = self._lut_channels
        # ADD: offset of the next chunk in each input (bytes read so far, plus the channel group's
        # first channel), kept as a register so a read's address is one adder.
        add_off = Signal(SIZE_BITS)
        # ADD: p_in - bytes read so far: computing it, the step and chunk + step >= p_in in
        # the cycle that issues the read put four 50-bit carry chains in series.
        add_rest = Signal(SIZE_BITS)
        second = Signal()       # ADD: the next read is the second input's chunk
        gtile = Signal(16)      # global average: channel tiles read so far
        # gtile + 1 == n_ct, registered: gtile moves only when a read is picked, and a picked read
        # holds cmd_free low for the next cycle.
        gap_last = Signal()
        m.d.sync += gap_last.eq(gtile + 1 == n_ct)
        # ADD with a per-channel LUT larger than the LUT buffer runs in channel groups of lut_cap.
        add_ch0 = Signal(16)
        # Registered: add_ch0 moves only in GROUP_END, and add_gch is first used in GROUP_READY.
        add_gch = Signal(17)
        m.d.sync += add_gch.eq(Mux(d.lut_per_channel & (d.out_cp - add_ch0 > lut_cap), lut_cap,
                                   d.out_cp - add_ch0))
        # ADD's read sizes, registered from add_rest: ADD_INPUT acts at most every other cycle (a
        # read it issues holds cmd_free low for a cycle), so they are current whenever it acts.
        # ``add_last``: this pair of reads is the last, ``step >= add_rest``.
        add_grouped = Signal()  # a channel group narrower than the tensor: one pixel per read
        add_size, add_step, add_last, add_more = Signal(SIZE_BITS), Signal(SIZE_BITS), Signal(), Signal()
        add_part = Mux(add_rest < add_chunk, add_rest, add_chunk)
        m.d.sync += [add_grouped.eq(add_gch != d.in_cp),
                     add_size.eq(Mux(add_grouped, add_gch, add_part)),
                     add_step.eq(Mux(add_grouped, d.in_cp, add_part)),
                     add_last.eq(Mux(add_grouped, d.in_cp >= add_rest, add_rest <= add_chunk)),
                     # GROUP_END comes long after add_ch0 and add_gch last moved.
                     add_more.eq(add_ch0 + add_gch < d.out_cp)]
        nxt = g_tiles + 1
        # What is left of each budget, counted down as the group grows, so that every test of
        # can_grow is one compare of registers (sums against limits took 18.8 ns on the 85F).
        tiles_left = Signal(17)                                # n_tiles_total - tile0 - g_tiles
        blocks_room = Signal(range(bank_blocks + 1))           # bank_blocks - g_tiles * taps
        pool_room = Signal(range(self._pool_depth + 1))        # pool_depth - g_tiles * (conv_w // 2)
        can_grow = Signal()
        m.d.comb += can_grow.eq(
            is_conv & (tiles_left != 0)
            # CHECK refused a CONV with p_taps > bank_blocks: its low bits are all of it.
            & (p_taps[:len(blocks_room)] <= blocks_room)
            & (g_tiles < self._pp_tiles)
            # (g_tiles + 1) * lanes <= lut_cap
            & (~d.lut_per_channel
               | Mux(dw, g_tiles < lut_cap >> ct_shift, g_tiles < lut_cap >> exact_log2(oc_par)))
            & (~d.fuse_maxpool | ((setup.conv_w >> 1) <= pool_room)))
        # DMA words are dma_align bytes: a group that does not end the layer must end on a
        # multiple of c_par channels (matters only when oc_par < c_par).
        misfit = Signal()
        if oc_par < c_par:
            m.d.comb += misfit.eq((g_lanes_all[:ct_shift] != 0) & (tiles_left != 0))

        # Every read's and write's address (a descriptor base plus the group's or the chunk's
        # offset), registered in the states before the one that issues it: ch0 and add_ch0 move in
        # GROUP_END, gtile and add_off when a read is issued, and an issued read holds cmd_free low
        # for the next cycle, so each is current whenever its state acts.
        lut_ch0 = Mux(is_add, add_ch0, ch0)
        a_params, a_lut, a_in_ch, a_gap, a_add1, a_add2, a_out = (
            Signal(_ADDR, name=f"a_{n}") for n in ("params", "lut", "in_ch", "gap", "add1", "add2", "out"))
        m.d.sync += [a_params.eq(d.params_addr + (ch0 << 3)),
                     a_lut.eq(Mux(d.lut_per_channel, d.lut_addr + (lut_ch0 << 8), d.lut_addr)),
                     a_in_ch.eq(d.in_addr + ch0), a_gap.eq(d.in_addr + (gtile << ct_shift)),
                     a_add1.eq(d.in_addr + add_off), a_add2.eq(d.in2_addr + add_off),
                     a_out.eq(d.out_addr + lut_ch0)]

        gs_act = Signal()  # GROUP_SIZE acts in this cycle on grow/misfit_q
        misfit_q = Signal()
        m.d.sync += misfit_q.eq(misfit)
        # The room budgets are used only inside GROUP_SIZE, so they refill in every cycle outside
        # it (``sizing`` is GROUP_SIZE's decode registered: its first cycle, which never grows,
        # refills too) and shrink on ``grow``, the act cycle's can_grow registered. Written under
        # three states' conditions, their flops' enables came from the state decode through three
        # LUT levels and a 2.4 ns fan-out (11.3 ns, the sequencer's critical path alone).
        sizing, grow = Signal(), Signal()

        rd, wr = self.rd_cmd, self.wr_cmd
        m.d.comb += [rd.payload.tag.eq(index), wr.payload.tag.eq(index), self.weights_bank.eq(bank),
                     self.weights_keep.eq(pre)]
        with m.If(rd.valid & rd.ready):
            m.d.sync += rd.valid.eq(0)
        with m.If(wr.valid & wr.ready):
            m.d.sync += wr.valid.eq(0)
        # wr_done is always taken: the writer holds its B channel while a done waits, and the
        # datapath may be waiting on the writer (STOP clears the count: the writer drops its dones).
        m.d.comb += self.wr_done.ready.eq(1)
        m.d.sync += wr_out.eq(wr_out + (wr.valid & wr.ready) - self.wr_done.valid)

        # The reads, by name: (target, addr, inner_bytes[, count1, stride1[, count2, stride2]]).
        reads = {
            "header": (ReadTarget.DESC, self.prog_base, 16),
            "desc": (ReadTarget.DESC, desc_addr, 64),
            "params": (ReadTarget.PARAMS, a_params, g_lanes_all << 3),
            "lut": (ReadTarget.LUT, a_lut, Mux(d.lut_per_channel, Mux(is_add, add_gch, g_ch) << 8, 256)),
            "weights": (ReadTarget.WEIGHTS, w_ptr, g_wbytes),
            # A depthwise group computes only its own channels: it reads their slice of every
            # pixel (3-D, like the output), and the line buffer runs that many.
            "input_slice": (ReadTarget.INPUT, a_in_ch, g_ch, d.in_w, d.in_cp, d.in_h, p_row),
            "input": (ReadTarget.INPUT, d.in_addr, p_row, d.in_h, p_row),
            # One 2-D read per channel tile: its c_par bytes of every pixel, row by row.
            "gap_tile": (ReadTarget.INPUT, a_gap, c_par, d.in_w, d.in_cp, d.in_h, p_row),
            "add_chunk": (ReadTarget.INPUT, a_add1, add_size),
            "add_chunk2": (ReadTarget.INPUT2, a_add2, add_size),
        }
        # A state only picks a read; the command is loaded the next cycle from the pick, a
        # register. The payload's ~150 flops then take their enable and their multiplexer's
        # select from registers, not from the state machine's next-state logic (13.9 ns on the
        # 85F). What a read is made of holds for that cycle: the values it uses move only when a
        # read is picked (gtile, add_off, add_rest), and a_*/add_size, registered, lag them by one.
        # Each payload field loads from its own kept copy of the pick: from one register the
        # enable and select fan-out took 6.5 ns of routing (11.3 ns, the sequencer's critical
        # path alone). A state picks a read in ``rd_req_d``/``rd_pick_d`` (comb); rd_req and the
        # copies are their registers (a pick is read only with its request).
        rd_req, rd_req_d = Signal(), Signal()
        rd_pick_d = Signal(range(len(reads)))
        m.d.sync += rd_req.eq(rd_req_d)

        def read(name):
            return [rd_req_d.eq(1), rd_pick_d.eq(list(reads).index(name))]

        with m.If(rd_req):
            m.d.sync += rd.valid.eq(1)
        fields = {name: [] for name in ("addr", "inner_bytes", "count1", "stride1", "count2", "stride2",
                                        "target")}
        for target, addr, inner, *rest in reads.values():
            for name, value in zip(fields, (addr, inner, *(*rest, 1, 0, 1, 0)[:4], target), strict=True):
                fields[name].append(value)
        for name, values in fields.items():
            dst = self.rd_target if name == "target" else getattr(rd.payload, name)
            req = replica(m, platform, rd_req_d, f"rd_req_{name}")
            pick = replica(m, platform, rd_pick_d, f"rd_pick_{name}")
            with m.If(req):
                with m.Switch(pick):
                    for k, value in enumerate(values):
                        with m.Case(k):
                            m.d.sync += dst.eq(value)

        cmd_free = ~rd.valid & ~rd_req
        m.d.comb += self.desc_word.ready.eq(1)
        with m.If(self.desc_word.valid):
            m.d.sync += [hdr.eq(Cat(hdr[32:], self.desc_word.payload)),
                         d.eq(Cat(d.as_value()[32:], self.desc_word.payload)),
                         words_left.eq(words_left - 1)]

        def preempt():
            # Host commands and DMA errors pre-empt every state but IDLE and STOP.
            with m.If(self.soft_reset):
                m.d.sync += stop_soft.eq(1)
                m.d.comb += self.dma_abort.eq(1)
                m.next = "STOP"
            with m.Elif(self.abort | self.dma_error):
                m.d.sync += pre_fail.eq(1)
                m.d.comb += self.dma_abort.eq(1)
                m.next = "STOP"

        @contextmanager
        def state(name):
            with m.State(name):
                yield
                if name not in ("IDLE", "STOP"):
                    preempt()

        m.d.sync += [chk_run.eq(0), chk_live.eq(0)]  # but in CHECK
        gr_ok = Signal()  # GROUP_READY's verdict, registered
        m.d.sync += gr_ok.eq(0)  # but in GROUP_READY
        # An abort's or a DMA error's status is captured in every cycle (no enable) and copied into
        # the status registers in STOP's first cycle (pre_fail): written straight from those
        # inputs, the ~70 status flops' enable ran from them through 6.5 ns of routing (11.9 ns,
        # the sequencer's critical path alone). Before the state machine, so STOP's own writes win.
        pre_fail = Signal()
        pre_code = Signal(ErrorCode)
        pre_addr = Signal(len(self.error_addr))
        pre_idx = Signal(len(self.desc_index))
        m.d.sync += pre_fail.eq(0)
        with m.If(self.abort):
            m.d.sync += [pre_code.eq(ErrorCode.ABORTED), pre_addr.eq(0), pre_idx.eq(index)]
        with m.Else():
            m.d.sync += [pre_code.eq(self.dma_error_code), pre_idx.eq(self.dma_error_tag),
                         pre_addr.eq(Mux(self.dma_error_tag == HEADER_INDEX, self.prog_base, desc_addr))]
        with m.If(pre_fail):
            m.d.sync += fail(pre_code, None, pre_addr, pre_idx)
        # The ScaleUnit starts from a register, in SCALES' first cycle: started by MUL's last
        # cycle, the multiplier's state ran into the unit's state machine (10.9 ns alone).
        su_go = Signal()
        m.d.sync += su_go.eq(0)
        m.d.comb += su.start.eq(su_go)
        with m.FSM(name="seq") as seq_fsm:
            with state("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.done.eq(0), self.error.eq(0), self.error_code.eq(0),
                                 self.error_field.eq(NO_FIELD), self.error_addr.eq(0), self.desc_index.eq(0),
                                 index.eq(HEADER_INDEX), self.busy.eq(1)]
                    m.d.comb += self.dma_clear.eq(1)
                    with m.If(self.prog_len < 16):
                        m.d.sync += fail(ErrorCode.BAD_LENGTH, None, 0, HEADER_INDEX)
                        m.next = "STOP"
                    with m.Else():
                        m.next = "HDR_FETCH"
            with state("HDR_FETCH"):
                m.d.comb += read("header")
                m.d.sync += words_left.eq(4)
                m.next = "HDR_WAIT"
            with state("HDR_WAIT"):
                with m.If(words_left == 0):
                    m.next = "HDR_CHECK"
            with state("HDR_CHECK"):
                magic, version, chash, cnt = hdr[0:32], hdr[32:64], hdr[64:96], hdr[96:128]
                m.d.sync += [count.eq(cnt), index.eq(0), desc_addr.eq(self.prog_base + 16),
                             last_done.eq(cnt == 0)]
                with m.If(magic != PROGRAM_MAGIC):
                    m.d.sync += fail(ErrorCode.BAD_MAGIC, None, 0)
                    m.next = "STOP"
                with m.Elif(version != ISA_VERSION):
                    m.d.sync += fail(ErrorCode.BAD_VERSION, None, 0)
                    m.next = "STOP"
                with m.Elif(chash != cfg.config_hash()):
                    m.d.sync += fail(ErrorCode.BAD_CONFIG, None, 0)
                    m.next = "STOP"
                with m.Elif(self.prog_len != 16 + (cnt.as_unsigned() << 6)):
                    m.d.sync += fail(ErrorCode.BAD_LENGTH, None, 0)
                    m.next = "STOP"
                with m.Else():
                    m.next = "NEXT_DESC"
            with state("NEXT_DESC"):
                with m.If(last_done):
                    m.d.sync += [self.done.eq(1), self.busy.eq(0), index.eq(Mux(count == 0, 0, count - 1))]
                    m.d.comb += self.irq_done.eq(1)
                    m.next = "IDLE"
                with m.Elif(cmd_free):
                    m.d.comb += read("desc")
                    m.d.sync += words_left.eq(16)
                    m.next = "DESC_WAIT"
            with state("DESC_WAIT"):
                with m.If(words_left == 0):
                    m.d.sync += [mul_step.eq(0), mul_busy.eq(0)]
                    m.next = "MUL"
            with state("MUL"):
                with m.If(~mul_busy):
                    with m.Switch(mul_step):
                        for k, (_, a, b) in enumerate(mul_steps):
                            with m.Case(k):
                                m.d.sync += [mul_a.eq(a), mul_b.eq(b), mul_acc.eq(0), mul_busy.eq(1)]
                        with m.Default():
                            m.d.sync += [check_step.eq(0), u_step.eq(0)]
                            m.d.sync += su_go.eq(is_add | is_gap)
                            m.next = "SCALES"
                with m.Elif(mul_b != 0):
                    m.d.sync += [mul_a.eq(mul_a << 1), mul_b.eq(mul_b >> 1),
                                 mul_acc.eq(Mux(mul_b[0], mul_acc + mul_a, mul_acc))]
                with m.Else():
                    with m.Switch(mul_step):
                        for k, (dst, _, _) in enumerate(mul_steps):
                            with m.Case(k):
                                m.d.sync += dst.eq(saturate(mul_acc))
                    m.d.sync += [mul_step.eq(mul_step + 1), mul_busy.eq(0)]
            with state("SCALES"):
                # ADD's and the global average's float32 constants (a few dozen cycles).
                with m.If(~su.busy & ~su.start):
                    m.next = "UNITS"
            with state("UNITS"):
                # The region and shape units' verdicts (a few cycles).
                m.d.comb += u_run.eq(1)
                m.d.sync += u_step.eq(u_step + 1)
                with m.If(u_step == u_last):
                    m.next = "CHECK"
            with state("CHECK"):
                # chk_* are step check_step - 2's (nothing yet in the first two cycles).
                m.d.sync += [chk_run.eq(1), chk_live.eq(chk_run)]
                with m.If(chk_live & chk_hit):
                    m.d.sync += fail(chk_code, chk_field, chk_addr)
                    m.next = "STOP"
                with m.Elif(chk_live & chk_end):
                    m.d.sync += [tile0.eq(0), tiles_left.eq(n_tiles_total), g_tiles.eq(0), g_wbytes.eq(0),
                                 w_ptr.eq(d.weights_addr), bank.eq(0), add_ch0.eq(0), pre.eq(0)]
                    m.d.sync += gs_act.eq(0)
                    m.next = "GROUP_SIZE"
                m.d.sync += check_step.eq(check_step + 1)
            with state("GROUP_SIZE"):
                # Grow the group one oc tile every other cycle while it fits every buffer: a cycle
                # to register can_grow and misfit (compares of the budgets), a cycle to act on them,
                # so that the budgets' compares do not run into the state machine's enables.
                m.d.sync += gs_act.eq(~gs_act)
                with m.If(gs_act):
                    with m.If(grow):
                        m.d.sync += [g_tiles.eq(nxt), tiles_left.eq(tiles_left - 1),
                                     g_wbytes.eq(g_wbytes + w_tile_bytes)]
                    with m.Elif(misfit_q):
                        m.d.sync += [g_tiles.eq(g_tiles - 1), tiles_left.eq(tiles_left + 1),
                                     g_wbytes.eq(g_wbytes - w_tile_bytes)]
                    with m.Elif(pre):
                        # The previous group still computes: prefetch this group's weights now.
                        m.next = "ISSUE_WEIGHTS"
                    with m.Else():
                        m.next = "GROUP_READY"
            with state("GROUP_READY"):
                # A prefetched group starts once the previous group's outputs have all gone to the
                # writer (its write may still drain) and its own weights are in their bank; any
                # other group once the layer's DMA and every write before it are done.
                # The verdict is registered (gr_ok) and acted on a cycle later: every term only
                # turns true while the state waits (the datapath drains, writes finish, weights
                # land, nothing is issued), and from the DMA's and the datapath's status through
                # this decision into the setup's loads was a 19.2 ns path on the 85F.
                ready = Mux(pre, self.weights_loaded, ~self.dma_busy & (wr_out == 0))
                m.d.sync += gr_ok.eq(self.datapath_idle & ready & cmd_free & ~wr.valid)
                with m.If(gr_ok):
                    m.d.sync += [setup.n_tiles.eq(Mux(is_op(Op.CONV), g_tiles,
                                                      Mux(is_add, add_gch >> ct_shift, n_ct))),
                                 setup.lb.oc_tiles.eq(Mux(is_conv & ~dw, g_tiles, 1)),
                                 setup.lb.channels.eq(Mux(is_conv & dw, g_ch, d.in_cp)),
                                 setup.ch0.eq(Mux(is_add, add_ch0, ch0)), setup.bank.eq(bank)]
                    m.next = "GROUP_START"
            with state("GROUP_START"):
                m.d.comb += self.group_start.eq(1)
                m.d.sync += [add_off.eq(Mux(add_grouped, add_ch0, 0)), add_rest.eq(p_in), gtile.eq(0),
                             second.eq(0)]
                with m.If(is_op(Op.CONV)):
                    m.next = "ISSUE_PARAMS"
                with m.Elif(is_add):
                    m.next = "ISSUE_LUT"
                with m.Elif(is_gap):
                    # Many reads follow: the write goes first so the output can always drain.
                    m.next = "ISSUE_OUTPUT"
                with m.Else():
                    m.next = "ISSUE_INPUT"
            with state("ISSUE_PARAMS"):
                with m.If(cmd_free):
                    m.d.comb += read("params")
                    # Depthwise groups read c_par entries per tile (the router pads to oc_par).
                    m.next = "ISSUE_LUT"
            with state("ISSUE_LUT"):
                with m.If(~d.lut):
                    m.next = "ISSUE_WEIGHTS"
                    with m.If(pre):  # the weights are in their bank already
                        m.next = "ISSUE_INPUT"
                    with m.If(is_add):
                        m.next = "ISSUE_OUTPUT"
                with m.Elif(cmd_free):
                    m.d.comb += read("lut")
                    m.next = "ISSUE_WEIGHTS"
                    with m.If(pre):
                        m.next = "ISSUE_INPUT"
                    with m.If(is_add):
                        m.next = "ISSUE_OUTPUT"
            with state("ISSUE_WEIGHTS"):
                # A prefetch waits until the previous load is in the PE array: one load at a time
                # (the core marks a load's first row and tracks its bank).
                with m.If(cmd_free & (~pre | self.weights_loaded)):
                    m.d.comb += self.weights_first.eq(1)
                    m.d.comb += read("weights")
                    m.next = "ISSUE_INPUT"
                    with m.If(pre):
                        m.next = "GROUP_READY"
            with state("ISSUE_INPUT"):
                with m.If(cmd_free):
                    with m.If(is_conv & dw & (g_ch != d.in_cp)):
                        m.d.comb += read("input_slice")
                    with m.Else():
                        m.d.comb += read("input")
                    m.next = "ISSUE_OUTPUT"
            with state("ISSUE_OUTPUT"):
                with m.If(~wr.valid):
                    m.d.sync += [wr.valid.eq(1), wr.payload.addr.eq(a_out),
                                 wr.payload.inner_bytes.eq(Mux(is_op(Op.CONV), g_ch,
                                                               Mux(is_add, add_gch, d.out_cp))),
                                 wr.payload.count1.eq(d.out_w), wr.payload.stride1.eq(d.out_cp),
                                 wr.payload.count2.eq(d.out_h), wr.payload.stride2.eq(p_orow)]
                    m.next = "GROUP_END"
                    with m.If(is_gap):
                        m.next = "GAP_INPUT"
                    with m.If(is_add):
                        m.next = "ADD_INPUT"
            with state("GAP_INPUT"):
                with m.If(cmd_free):
                    m.d.comb += read("gap_tile")
                    m.d.sync += gtile.eq(gtile + 1)
                    with m.If(gap_last):
                        m.next = "GROUP_END"
            with state("ADD_INPUT"):
                # Chunks of both inputs in turn; the core buffers one chunk of the first input.
                # A channel group narrower than the tensor reads its channels of one pixel at a time.
                with m.If(cmd_free):
                    with m.If(~second):
                        m.d.comb += read("add_chunk")
                        m.d.sync += second.eq(1)
                    with m.Else():
                        m.d.comb += read("add_chunk2")
                        m.d.sync += [second.eq(0), add_off.eq(add_off + add_step),
                                     add_rest.eq(add_rest - add_step)]
                        with m.If(add_last):  # chunk + step >= p_in
                            m.next = "GROUP_END"
            with state("GROUP_END"):
                # Every command of the group is out; the group computes and writes on its own.
                # (tile0 moves up by g_tiles and g_tiles to 0: tiles_left stays.)
                with m.If(is_op(Op.CONV) & (tiles_left != 0)):
                    m.d.sync += [tile0.eq(tile0 + g_tiles), g_tiles.eq(0),
                                 w_ptr.eq(w_ptr + g_wbytes), g_wbytes.eq(0), bank.eq(~bank), pre.eq(1)]
                    m.d.sync += gs_act.eq(0)
                    m.next = "GROUP_SIZE"
                with m.Elif(is_add & add_more):
                    m.d.sync += add_ch0.eq(add_ch0 + add_gch)
                    m.d.sync += gs_act.eq(0)
                    m.next = "GROUP_SIZE"
                with m.Else():
                    m.next = "LAYER_END"
            with state("LAYER_END"):
                # The next descriptor may read this layer's output: wait for every write's done.
                with m.If(self.datapath_idle & ~self.dma_busy & (wr_out == 0) & ~wr.valid & cmd_free):
                    m.d.sync += [index.eq(index + 1), desc_addr.eq(desc_addr + 64),
                                 last_done.eq(index + 1 == count)]
                    m.next = "NEXT_DESC"
            with state("STOP"):
                m.d.comb += self.flush.eq(1)
                m.d.sync += [rd.valid.eq(0), rd_req.eq(0)]
                m.d.sync += wr.valid.eq(0)
                m.d.sync += wr_out.eq(0)  # the aborted writer withdraws the dones not yet taken
                with m.If(~self.dma_busy):
                    m.d.sync += [self.busy.eq(0), self.error.eq(~stop_soft), stop_soft.eq(0)]
                    with m.If(stop_soft):
                        clear_status()
                    with m.Else():
                        m.d.comb += self.irq_error.eq(1)
                    m.next = "IDLE"

        # The layer's setup loads in every cycle from CHECK's second to the one after it (chk_run),
        # from registers that hold still through CHECK, so its last load is the checked layer's.
        # Loaded on CHECK's verdict, its ~400 flops' enable came from the state decode through
        # three LUT levels and a 4.6 ns fan-out (13.7 ns, the sequencer's critical path alone).
        # Nothing reads the setup meanwhile: LAYER_END let the previous layer drain, and a layer
        # that fails its checks stops the program.
        with m.If(chk_run):
            m.d.sync += [setup.taps.eq(p_taps),
                         setup.avg.eq(is_avg), setup.gap.eq(is_gap), setup.add.eq(is_add),
                         setup.gap_taps.eq(p_hw), setup.gap_m.eq(su.multiplier),
                         setup.gap_bias.eq(Mux(d.in_zp < 0, p_zhw, -p_zhw)),
                         setup.ra.eq(su.ra), setup.rb.eq(su.rb), setup.k.eq(su.k)]
            m.d.sync += self._layer_setup(d, setup, pad_b_eff, pad_r_eff, shu.conv_extra[1], is_op, whole)

        in_sizing = seq_fsm.ongoing("GROUP_SIZE")
        # (A preempt out of GROUP_SIZE may leave `grow` set in STOP's first cycle: the rooms it
        # shrinks are refilled before the next GROUP_SIZE.)
        m.d.sync += [sizing.eq(in_sizing), grow.eq(in_sizing & ~gs_act & can_grow)]
        with m.If(grow):
            m.d.sync += [blocks_room.eq(blocks_room - p_taps[:len(blocks_room)]),
                         pool_room.eq(pool_room - (setup.conv_w >> 1))]
        with m.Elif(~sizing):
            m.d.sync += [blocks_room.eq(bank_blocks), pool_room.eq(self._pool_depth)]

        # A soft reset while idle just clears the status.
        with m.If(~self.busy & self.soft_reset):
            clear_status()
        return m

    def _is_op(self, op_flags, o):
        """The op is ``o`` (``op_flags``: a flag per op of the config); constant 0 for an op
        outside the config's op set. The first check refuses those ops (BAD_OPCODE), so no later
        logic needs to tell them apart: the logic of the ops a small config leaves out (ADD, the
        averages) is not built."""
        return op_flags[o] if o in self._cfg.ops else Const(0)

    def _layer_setup(self, d, setup, pad_b_eff, pad_r_eff, conv_w_extra, is_op, whole):
        cfg = self._cfg
        pool = is_op(Op.MAXPOOL)
        # The conv's width before a fused 2x2 pool: 2*out_w, or 2*out_w + 1 when one more fits.
        conv_w = 2 * d.out_w + conv_w_extra
        return [
            setup.pool.eq(pool),
            setup.lb.width.eq(d.in_w), setup.lb.height.eq(d.in_h), setup.lb.channels.eq(d.in_cp),
            setup.lb.kh.eq(d.kh), setup.lb.kw.eq(d.kw), setup.lb.stride.eq(d.stride_h),
            setup.lb.pad_top.eq(d.pad_t), setup.lb.pad_left.eq(d.pad_l),
            setup.lb.pad_bottom.eq(pad_b_eff), setup.lb.pad_right.eq(pad_r_eff),
            setup.lb.zero_point.eq(Mux(pool, -128, d.in_zp)),
            setup.lb.depthwise.eq(d.depthwise | (~is_op(Op.CONV))),
            setup.depthwise.eq(d.depthwise),
            setup.zero_point.eq(d.out_zp), setup.lo.eq(d.clamp_lo), setup.hi.eq(d.clamp_hi),
            setup.lut.eq(d.lut), setup.lut_per_channel.eq(d.lut_per_channel),
            setup.fuse_maxpool.eq(d.fuse_maxpool & is_op(Op.CONV)),
            setup.conv_w.eq(conv_w),
            setup.lanes.eq(Mux(d.depthwise | (~is_op(Op.CONV)), cfg.c_par, cfg.oc_par)),
            setup.out_c.eq(d.out_c), setup.out_cp.eq(d.out_cp),
            setup.out_h.eq(d.out_h), setup.out_w.eq(d.out_w),
            setup.count_include_pad.eq(d.count_include_pad & ~whole),
            setup.sx.eq(d.in_scale), setup.sy.eq(d.out_scale),
        ]
