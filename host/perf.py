"""Analytical performance model: cycles per descriptor for a hardware config.

The model describes ``JacquardCore`` (``rtl/core.py``, ``rtl/sequencer.py``, ``docs/CORE.md``) as it
is, step by step:

1. Per program, the 16-byte header is read and checked (``program_overhead``).
2. Per descriptor, the 64-byte descriptor is read, its sizes multiplied out (shift-and-add) and
   checked (``descriptor_overhead``).
3. A CONV runs in output-channel groups: as many oc tiles as fit one weight bank, the
   post-processor's parameter memory, the per-channel LUT buffer and the fused pool's row buffer
   (the sequencer's ``GROUP_SIZE`` rule, :func:`group_tiles`). MAXPOOL is one group.
4. The layer's first group, in order: setup (``group_overhead``, which also holds the layer's
   pipeline drain and its last write's response); the parameter and LUT reads
   (``buffer_cycles_per_word`` per DMA word); the weight read (``weight_start``, then
   ``weight_cycles_per_word`` per word, about ``oc_par`` times that for depthwise rows, which the
   weight gearbox repeats); then the whole input is streamed through the line buffer
   (``input_cycles_per_word`` per word). The first window waits for ``kh - 1 - pad_t`` rows and
   ``kw - pad_l`` pixels (line-buffer fill); after that the PE array computes one tap vector per
   cycle for all of the group's oc tiles (a position costs at least ``oc_par / n_requant`` cycles
   per tile, the requantizers' rate).
5. Groups overlap: right behind a group's input read, the next group's weight read goes out into
   the other weight bank (``weight_start`` plus its words). A group ends at the later of
   "fill + compute" and "the whole input and the next group's weights have arrived"; the next
   group then starts at once (``group_switch``: the pipeline drain and the restart, while the
   previous group's write still drains) with its parameter and LUT reads, and no weight read.
   A depthwise group streams only its own channels of the input.
6. Outputs are packed and written while the group computes (never the limit on the measured
   layers: ``STALL_OUTPUT`` stays 0).
7. AVGPOOL streams its input through the line buffer into ``AvgPool``, which takes
   ``max(c_par, AVG_TAP_FLOOR) + 1`` cycles per tap and then ``avg_window_tail`` cycles (its float pipeline:
   two divisions) before the next window, for each output position and channel tile.
8. GLOBAL_AVGPOOL (and a whole-map AVGPOOL without padding) first computes its multiplier in the
   sequencer's ScaleUnit (``scale_gap_cycles``), then reads the input once per channel tile (a 2-D
   read of one tile per pixel, ``gap_cycles_per_word``) and requantizes the tile's ``c_par`` sums
   one by one (``gap_tile_tail``; measured 0: it overlaps the next tile's read).
9. ADD computes ``ra``, ``rb`` and ``k`` (``scale_add_cycles``), reads both inputs in chunks in
   turn (``input_cycles_per_word`` per word of either) and adds ``add_lanes`` lanes per cycle; the
   slower of the two sets the rate.

Every constant lives in :class:`PerfConstants`; the defaults were measured on ``sim-small`` in
Verilator against AxiRam without back-pressure (``tests/test_perf_vs_rtl.py`` checks every layer
kind within 10 %).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from jacquard.sim.isa import DESCRIPTOR_BYTES, HardwareConfig, LayerDescriptor, Op, Program, conv_out_size

# AvgPool's cycles per tap are at least its deep fma's depth (rtl/fp32.py FMA_DEEP_STAGES: a
# lane's running sum comes back that many cycles after it entered). A literal here keeps the
# model free of amaranth; tests/test_perf_vs_rtl.py checks the two agree.
AVG_TAP_FLOOR = 10

__all__ = ["DEFAULT", "LayerEstimate", "PerfConstants", "ProgramEstimate", "estimate_descriptor",
           "estimate_program", "group_reads", "group_tiles", "program_overhead", "weight_word_cycles"]

PROGRAM_HEADER_BYTES = 16


@dataclass(frozen=True)
class PerfConstants:
    """Every tunable constant of the model (defaults: the RTL core, measured in Verilator).

    Members
    -------
    program_overhead : int
        Cycles to read and check the program header (once per program).
    descriptor_overhead : int
        Cycles to read a descriptor (16 words), multiply out its sizes (8 shift-and-add products)
        and run its checks, plus the layer's end.
    group_overhead : int
        Cycles of a layer's first (or only) group outside the streams: group sizing, datapath
        restart, the DMA commands, pipeline drain and the last output burst's response.
    group_switch : int
        Cycles between two groups of a layer outside the streams: the pipeline drain, the
        datapath restart and the parameter/LUT/input/output commands (the next group is sized and
        its weights read while the previous group computes; its write drains meanwhile).
    buffer_cycles_per_word : float
        Cycles per DMA word of channel parameters and LUT entries.
    weight_cycles_per_word : float
        Cycles per DMA word of dense weights (the weight gearbox passes one word per cycle).
    input_cycles_per_word : float
        Cycles per DMA word of input pixels (the pixel gearbox passes one word per cycle).
    weight_start : int
        Cycles between a group's start and its first weight word beyond the parameter/LUT reads.
    n_requant : int or None
        Requantizer lanes (outputs requantized per cycle); None: the config's
        :attr:`~jacquard.sim.isa.HardwareConfig.n_requant`, which the core builds.
    avg_window_tail : int
        AVGPOOL: cycles from a window's last tap until AvgPool takes the next window's first.
    scale_gap_cycles, scale_add_cycles : int
        The ScaleUnit's cycles for a global average's multiplier and for ADD's constants.
    gap_cycles_per_word : float
        GLOBAL_AVGPOOL: cycles per input word (reads of one channel tile per pixel).
    gap_tile_tail : int
        GLOBAL_AVGPOOL: cycles per channel tile after its last word (sum, requantize ``c_par``
        values one by one, write).
    add_lanes : int
        EltwiseAdd datapath lanes (the core's ``add_lanes``, default 1).
    add_beat_overhead : float
        ADD: cycles per pixel beat beyond ``c_par / add_lanes`` (the two inputs' chunks alternate,
        so the adder now and then waits for the second input).
    overlap_groups : bool
        True (the core): step 5's overlapped groups. False: the serial schedule the core had
        before, for comparison: every group pays ``group_overhead`` and reads its own weights
        after the previous group has drained.
    """

    program_overhead: int = 4
    descriptor_overhead: int = 140
    # Refit on 11-28 after the SoC timing cuts (registered group starts, GROUP_READY verdict and
    # idle, skids: a few cycles more per group) by ``python tests/bench/bench_perf.py --fit``,
    # a least-squares fit over the bench's 33 layers (38 and 52 before; worst error 9.3 % -> 2.4 %).
    group_overhead: int = 71
    group_switch: int = 22
    buffer_cycles_per_word: float = 1.0
    weight_cycles_per_word: float = 1.0
    input_cycles_per_word: float = 1.0
    weight_start: int = 33
    n_requant: int | None = None
    avg_window_tail: int = 86
    # The last fit moved by the cycles measured since: ScaleUnit's ADD constants 101 -> 115 and its
    # multiplier +1 (b3abfe0), EltwiseAdd's pipeline +1 stage (6f0f39e).
    scale_gap_cycles: int = 50
    scale_add_cycles: int = 114
    gap_cycles_per_word: float = 1.0
    gap_tile_tail: int = 0
    add_lanes: int = 1
    # 0.72 until the second input got a skid before its gearbox and one before EltwiseAdd
    # (11-28): the adder now seldom waits for it (tests/test_perf_vs_rtl.py's ADD layers).
    add_beat_overhead: float = 0.06
    overlap_groups: bool = True

    def requant_lanes(self, cfg: HardwareConfig) -> int:
        if self.n_requant is not None:
            return self.n_requant
        return cfg.n_requant


DEFAULT = PerfConstants()


@dataclass
class LayerEstimate:
    """Estimated cost of one descriptor.

    Members
    -------
    op : str
    cycles : int
        Total: overheads, parameter/LUT/weight loads, line-buffer fill and compute or input.
    compute_cycles : int
        PE array (or max-reducer) beats: one tap vector per cycle.
    dma_cycles : int
        Parameter, LUT and weight loads not overlapped with compute (the first group's weights,
        every group's parameters and LUT).
    requant_cycles : int
        Beats the requantizer rate adds on top of the taps (0 unless it is the limit).
    fill_cycles : int
        Line-buffer fill before each group's first window.
    macs : int
        Useful multiply-accumulates (the layer's, without channel padding).
    dma_bytes : int
        Bytes read and written (descriptor included).
    utilization : float
        ``macs / (cycles * config.macs)``.
    groups : int
        Output-channel groups (each streams the whole input).
    """

    op: str
    cycles: int
    compute_cycles: int
    dma_cycles: int
    requant_cycles: int
    fill_cycles: int
    macs: int
    dma_bytes: int
    utilization: float
    groups: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def program_overhead(cfg: HardwareConfig, k: PerfConstants = DEFAULT) -> int:
    """Cycles a program costs once, on top of its descriptors (the header read and check)."""
    return k.program_overhead


def weight_word_cycles(d: LayerDescriptor, cfg: HardwareConfig, k: PerfConstants = DEFAULT) -> float:
    """Cycles per DMA word of a CONV's weight read into the PE array's weight memory."""
    if not d.depthwise:
        return k.weight_cycles_per_word
    # The weight gearbox sends each row of n words oc_par times; the next row's first word is
    # taken as the last copy leaves, its other n - 1 words after that.
    n = max(1, cfg.c_par // cfg.dma_align)
    return (n - 1 + cfg.oc_par) / n * k.weight_cycles_per_word


def group_reads(d: LayerDescriptor, cfg: HardwareConfig, g: int, ch0: int = 0,
                k: PerfConstants = DEFAULT) -> tuple[float, float]:
    """Cycles of the reads of a CONV group of ``g`` oc tiles whose first channel is ``ch0``.

    Returns ``(parameters and LUT, weights)``; the weights' share includes ``weight_start``.
    """
    word = cfg.dma_align
    lanes = cfg.c_par if d.depthwise else cfg.oc_par
    chans = min(g * lanes, d.out_cp - ch0)
    lut = (chans * 256 if d.lut_per_channel else 256) if d.lut else 0
    c_tiles = _ceil(d.in_cp, cfg.c_par)
    w_tile_bytes = d.kh * d.kw * (cfg.c_par if d.depthwise else c_tiles * cfg.c_par * cfg.oc_par)
    return ((g * lanes * 8 + lut) / word * k.buffer_cycles_per_word,
            k.weight_start + g * w_tile_bytes / word * weight_word_cycles(d, cfg, k))


def group_tiles(d: LayerDescriptor, cfg: HardwareConfig) -> list[int]:
    """The oc tiles of each output-channel group of a CONV, as the sequencer sizes them.

    Raises
    ------
    ValueError
        If one oc tile does not fit the weight bank (the core refuses such a descriptor).
    """
    dw = d.depthwise
    n_ct = d.in_cp // cfg.c_par
    lanes = cfg.c_par if dw else cfg.oc_par
    total = _ceil(d.out_c, lanes)
    taps = d.kh * d.kw * (1 if dw else n_ct)
    bank_blocks = cfg.weight_buffer_bytes // (cfg.c_par * cfg.oc_par)
    pp_tiles = cfg.param_buffer_entries // cfg.oc_par
    lut_cap = min(cfg.param_buffer_entries, 64)
    pool_depth = max(cfg.max_width // 2, cfg.line_buffer_bytes // cfg.oc_par)
    conv_w = conv_out_size(d.in_w, d.kw, d.stride_w, d.pad_l, d.pad_r)
    if taps > bank_blocks:
        raise ValueError(f"d: one oc tile needs {taps} weight blocks, the bank holds {bank_blocks}")
    groups, tile0 = [], 0
    while tile0 < total:
        g = 0
        while (tile0 + g + 1 <= total and (g + 1) * taps <= bank_blocks and g + 1 <= pp_tiles
               and (not d.lut_per_channel or (g + 1) * lanes <= lut_cap)
               and (not d.fuse_maxpool or (g + 1) * (conv_w // 2) <= pool_depth)):
            g += 1
        while cfg.oc_par < cfg.c_par and g > 1 and (g * lanes) % cfg.c_par and tile0 + g < total:
            g -= 1
        g = max(g, 1)
        groups.append(g)
        tile0 += g
    return groups


def estimate_descriptor(d: LayerDescriptor, cfg: HardwareConfig, k: PerfConstants = DEFAULT) -> LayerEstimate:
    """The cycle estimate of one descriptor on ``cfg`` (the RTL core; see the module docstring)."""
    word = cfg.dma_align
    c_tiles = _ceil(d.in_cp, cfg.c_par)
    row_words = d.in_w * d.in_cp / word
    in_cycles = d.in_h * row_words * k.input_cycles_per_word
    out_bytes = d.out_h * d.out_w * d.out_cp
    fill_px = max(0, d.kh - 1 - d.pad_t) * d.in_w + max(1, d.kw - d.pad_l)
    fill = fill_px * (d.in_cp / word) * k.input_cycles_per_word
    macs = 0
    loads = requant = 0.0
    reads = 0
    if d.op == Op.CONV:
        oh = conv_out_size(d.in_h, d.kh, d.stride_h, d.pad_t, d.pad_b)
        ow = conv_out_size(d.in_w, d.kw, d.stride_w, d.pad_l, d.pad_r)
        positions = oh * ow
        taps = d.kh * d.kw * (1 if d.depthwise else c_tiles)
        macs = positions * d.kh * d.kw * d.out_c * (1 if d.depthwise else d.in_c)
        groups = group_tiles(d, cfg)
        lanes = cfg.c_par if d.depthwise else cfg.oc_par
        per_tile = max(taps, _ceil(cfg.oc_par, k.requant_lanes(cfg)))
        requant = positions * sum(groups) * (per_tile - taps)
        w_tile_bytes = d.kh * d.kw * (cfg.c_par if d.depthwise else c_tiles * cfg.c_par * cfg.oc_par)
        cycles = 0.0
        compute = 0
        ch0 = 0
        for i, g in enumerate(groups):
            chans = min(g * lanes, d.out_cp - ch0)
            params = g * lanes * 8
            lut = (chans * 256 if d.lut_per_channel else 256) if d.lut else 0
            wbytes = g * w_tile_bytes
            load, weight_load = group_reads(d, cfg, g, ch0, k)
            ch0 += g * lanes
            first = i == 0 or not k.overlap_groups
            if first:  # later groups' weights were read while the group before computed
                load += weight_load
            loads += load
            # A depthwise group reads (and fills the line buffer with) only its own channels.
            share = chans / d.in_cp if d.depthwise else 1.0
            reads += params + lut + wbytes + d.in_h * d.in_w * round(d.in_cp * share)
            beats = positions * g * per_tile
            compute += positions * g * taps
            last = i + 1 == len(groups) or not k.overlap_groups
            prefetch = 0.0 if last else group_reads(d, cfg, groups[i + 1], ch0, k)[1]
            cycles += ((k.group_overhead if first else k.group_switch) + load
                       + max(fill * share + beats, in_cycles * share + prefetch))
        n_groups = len(groups)
        fill_total = fill * n_groups
    else:
        whole = (d.op == Op.AVGPOOL and (d.kh, d.kw) == (d.in_h, d.in_w)
                 and not (d.pad_t | d.pad_l | d.pad_b | d.pad_r))
        operands = 2 if d.op == Op.ADD else 1
        reads = operands * d.in_h * d.in_w * d.in_cp
        fill_total = fill
        if d.op == Op.MAXPOOL:
            beats = d.out_h * d.out_w * d.kh * d.kw * c_tiles
            cycles = k.group_overhead + max(fill + beats, in_cycles)
        elif d.op == Op.GLOBAL_AVGPOOL or whole:
            beats = d.in_h * d.in_w * c_tiles
            words = d.in_h * d.in_w * d.in_cp / word
            cycles = (k.scale_gap_cycles + k.group_overhead + words * k.gap_cycles_per_word
                      + c_tiles * k.gap_tile_tail)
            fill_total = 0
        elif d.op == Op.AVGPOOL:
            windows = d.out_h * d.out_w * c_tiles
            beats = windows * d.kh * d.kw
            per_window = d.kh * d.kw * (max(cfg.c_par, AVG_TAP_FLOOR) + 1) + k.avg_window_tail
            cycles = k.group_overhead + max(fill + windows * per_window, in_cycles)
        else:  # ADD
            beats = d.in_h * d.in_w * c_tiles
            add = beats * (_ceil(cfg.c_par, k.add_lanes) + k.add_beat_overhead)
            cycles = k.scale_add_cycles + k.group_overhead + max(add, operands * in_cycles)
            if d.lut:
                cycles += (d.out_cp * 256 if d.lut_per_channel else 256) / word * k.buffer_cycles_per_word
            fill_total = 0
        compute = beats
        n_groups = 1
    cycles += k.descriptor_overhead
    dma_bytes = reads + out_bytes + DESCRIPTOR_BYTES
    cycles = round(cycles)
    return LayerEstimate(d.op.name, cycles, int(compute), round(loads), round(requant),
                         round(fill_total), int(macs), int(dma_bytes),
                         macs / (cycles * cfg.macs) if cycles else 0.0, n_groups)


@dataclass
class ProgramEstimate:
    """Estimate of a whole program (or of every device step of a model).

    Members
    -------
    layers : list of LayerEstimate
    cycles, macs, dma_bytes : int
    clock_mhz : float
    """

    layers: list[LayerEstimate]
    cycles: int
    macs: int
    dma_bytes: int
    clock_mhz: float
    peak_macs: int

    @property
    def latency_s(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def fps(self) -> float:
        return 1.0 / self.latency_s if self.cycles else float("inf")

    @property
    def utilization(self) -> float:
        return self.macs / (self.cycles * self.peak_macs) if self.cycles else 0.0

    def as_dict(self) -> dict:
        return {"cycles": self.cycles, "macs": self.macs, "dma_bytes": self.dma_bytes,
                "clock_mhz": self.clock_mhz, "latency_ms": 1e3 * self.latency_s, "fps": self.fps,
                "mac_utilization": self.utilization}


def estimate_program(program: Program | list[LayerDescriptor], cfg: HardwareConfig,
                     k: PerfConstants = DEFAULT, *, clock_mhz: float | None = None) -> ProgramEstimate:
    """Sum :func:`estimate_descriptor` over a program's descriptors (run back to back).

    The header's few cycles (:func:`program_overhead`) are left out, so that the sum matches the
    emu backend's per-descriptor counters (``host/transport.py``).
    """
    descs = program.descriptors if isinstance(program, Program) else list(program)
    layers = [estimate_descriptor(d, cfg, k) for d in descs]
    return ProgramEstimate(layers, sum(e.cycles for e in layers), sum(e.macs for e in layers),
                           sum(e.dma_bytes for e in layers), clock_mhz or cfg.clock_mhz, cfg.macs)

