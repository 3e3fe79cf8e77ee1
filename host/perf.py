"""Analytical performance model: cycles per descriptor for a hardware config.

The model follows the datapath of ``docs/ARCHITECTURE.md``: the DMA streams the input of a layer
through the line buffer once per output-channel tile (weights are stationary per tile), the PE array
consumes one tap vector of ``c_par`` channels per cycle for all ``oc_par`` outputs of the tile, the
post-processor requantizes ``n_requant`` outputs per cycle, and DMA overlaps compute. Every constant
lives in :class:`PerfConstants`, so that the model can be fitted to the RTL's performance counters
(issue 5) in one place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from jacquard.sim.isa import DESCRIPTOR_BYTES, HardwareConfig, LayerDescriptor, Op, Program, regions

__all__ = ["DEFAULT", "LayerEstimate", "PerfConstants", "ProgramEstimate", "estimate_descriptor",
           "estimate_program"]


@dataclass(frozen=True)
class PerfConstants:
    """Every tunable constant of the model.

    Members
    -------
    dma_bytes_per_cycle : float
        Sustained AXI4 read or write bandwidth (a 32-bit bus: 4 bytes per beat).
    dma_latency : int
        Cycles from a burst request to its first beat.
    descriptor_overhead : int
        Cycles to fetch and decode a descriptor and configure the datapath.
    tile_overhead : int
        Cycles between output-channel tiles (weight bank swap, pipeline drain).
    n_requant : int
        Requantizer lanes: outputs requantized per cycle.
    pipeline_depth : int
        Cycles from a tap vector entering the PE array to its output leaving the post-processor.
    overlap : float
        Fraction of DMA time hidden under compute (1.0: fully overlapped, 0.0: serialized).
    """

    dma_bytes_per_cycle: float = 4.0
    dma_latency: int = 8
    descriptor_overhead: int = 40
    tile_overhead: int = 16
    n_requant: int = 4
    pipeline_depth: int = 24
    overlap: float = 1.0


DEFAULT = PerfConstants()


@dataclass
class LayerEstimate:
    """Estimated cost of one descriptor.

    Members
    -------
    op : str
    cycles : int
        Total, including fill, overheads and non-overlapped DMA.
    compute_cycles, dma_cycles, requant_cycles, fill_cycles : int
        The parts (compute: PE array or pooling/add datapath beats).
    macs : int
        Useful multiply-accumulates (the layer's, without channel padding).
    dma_bytes : int
        Bytes read and written.
    utilization : float
        ``macs / (cycles * config.macs)``.
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

    def as_dict(self) -> dict:
        return asdict(self)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def estimate_descriptor(d: LayerDescriptor, cfg: HardwareConfig, k: PerfConstants = DEFAULT) -> LayerEstimate:
    """The cycle estimate of one descriptor on ``cfg``."""
    c_tiles = _ceil(d.in_c, cfg.c_par)
    in_bytes = d.in_h * d.in_w * d.in_cp
    out_bytes = d.out_h * d.out_w * d.out_cp
    fill = 0
    requant = 0
    macs = 0
    if d.op == Op.CONV:
        pool = 2 if d.fuse_maxpool else 1
        positions = d.out_h * pool * d.out_w * pool
        taps = d.kh * d.kw
        if d.depthwise:
            oc_tiles = c_tiles
            compute = positions * taps * c_tiles
            macs = positions * taps * d.out_c
        else:
            oc_tiles = _ceil(d.out_c, cfg.oc_par)
            compute = positions * taps * c_tiles * oc_tiles
            macs = positions * taps * d.in_c * d.out_c
        # Each tile refills the line buffer's kh - 1 rows before its first window.
        fill = oc_tiles * (max(0, d.kh - 1 - d.pad_t) * d.in_w * c_tiles + k.pipeline_depth)
        requant = positions * oc_tiles * _ceil(cfg.oc_par, k.n_requant)
        compute += oc_tiles * k.tile_overhead
        reads = in_bytes * (1 if d.depthwise else oc_tiles)
        reads += sum(r.size for r in regions(d, cfg)
                     if r.field in ("weights_addr", "params_addr", "lut_addr"))
    elif d.op in (Op.MAXPOOL, Op.AVGPOOL):
        compute = d.out_h * d.out_w * d.kh * d.kw * c_tiles
        fill = max(0, d.kh - 1 - d.pad_t) * d.in_w * c_tiles + k.pipeline_depth
        reads = in_bytes
    elif d.op == Op.GLOBAL_AVGPOOL:
        compute = d.in_h * d.in_w * c_tiles
        requant = c_tiles
        reads = in_bytes
    else:  # ADD: two operands, one beat of c_par lanes per cycle
        compute = d.in_h * d.in_w * c_tiles
        reads = 2 * in_bytes
    dma_bytes = reads + out_bytes + DESCRIPTOR_BYTES
    dma = int(dma_bytes / k.dma_bytes_per_cycle) + k.dma_latency
    busy = max(compute, requant)
    hidden = min(dma, busy) * k.overlap
    cycles = int(k.descriptor_overhead + fill + busy + dma - hidden)
    return LayerEstimate(d.op.name, cycles, int(compute), dma, int(requant), int(fill), int(macs),
                         int(dma_bytes),
                         macs / (cycles * cfg.macs) if cycles else 0.0)


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
    """Sum :func:`estimate_descriptor` over a program's descriptors (descriptors run back to back)."""
    descs = program.descriptors if isinstance(program, Program) else list(program)
    layers = [estimate_descriptor(d, cfg, k) for d in descs]
    return ProgramEstimate(layers, sum(e.cycles for e in layers), sum(e.macs for e in layers),
                           sum(e.dma_bytes for e in layers), clock_mhz or cfg.clock_mhz, cfg.macs)
