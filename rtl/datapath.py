"""The datapath chain line buffer -> PE array -> post-processing as one component.

JacquardCore wires the same three units (plus pooling and packing) between its DMA engines; this
component is the chain alone, for synthesis of the datapath (``nox -s synthesize -- ulx3s-85f
--block datapath``) and for the chain's cocotb bench and MAC-utilization benchmark.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .line_buffer import LineBuffer
from .pe_array import PEArray
from .postproc import PostProcessor

__all__ = ["Datapath", "block_sizes"]


def block_sizes(config: str = "ulx3s-85f") -> dict[str, int]:
    """The datapath units' elaboration parameters for a hardware config, as JacquardCore sizes them."""
    from jacquard.sim.isa import CONFIGS

    cfg = CONFIGS[config]
    c_par, oc_par = cfg.c_par, cfg.oc_par
    macs = c_par * oc_par
    return {
        "c_par": c_par, "oc_par": oc_par, "max_width": cfg.max_width, "max_kh": cfg.line_buffer_rows + 1,
        "lb_channels": max(c_par, -(-cfg.line_buffer_bytes // cfg.max_width // c_par) * c_par),
        "weight_depth": 2 * (cfg.weight_buffer_bytes // macs),
        "n_requant": cfg.n_requant,
        "pp_tiles": cfg.param_buffer_entries // oc_par,
        "pool_depth": max(cfg.max_width // 2, cfg.line_buffer_bytes // oc_par),
        "macs": macs,
    }


class Datapath(wiring.Component):
    """Line buffer -> PE array -> post-processing, the chain at the heart of the core, for synthesis.

    Every port of the three units that is not part of the chain is a port of this component,
    named ``<unit>_<port>`` (``lb_``, ``pe_``, ``pp_``).

    Parameters
    ----------
    config : str
        A key of :data:`jacquard.sim.isa.CONFIGS`.

    Raises
    ------
    KeyError
        If ``config`` is unknown.
    """

    _CHAIN = frozenset({("lb", "o"), ("pe", "i"), ("pe", "o"), ("pp", "i")})

    def __init__(self, config: str = "ulx3s-85f") -> None:
        s = block_sizes(config)
        self.units = {
            "lb": LineBuffer(c_par=s["c_par"], max_width=s["max_width"], max_channels=s["lb_channels"],
                             max_kh=s["max_kh"]),
            "pe": PEArray(s["c_par"], s["oc_par"], s["weight_depth"]),
            "pp": PostProcessor(s["oc_par"], s["n_requant"], s["pp_tiles"], lut=False),
        }
        members = {}
        for unit, block in self.units.items():
            for name, member in block.signature.members.items():
                if (unit, name) not in self._CHAIN:
                    members[f"{unit}_{name}"] = member
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        lb, pe, pp = self.units["lb"], self.units["pe"], self.units["pp"]
        m.submodules.line_buffer, m.submodules.pe_array, m.submodules.postproc = lb, pe, pp
        wiring.connect(m, lb.o, pe.i)
        wiring.connect(m, pe.o, pp.i)
        for unit, block in self.units.items():
            for name, member in block.signature.members.items():
                if (unit, name) in self._CHAIN:
                    continue
                ours, theirs = getattr(self, f"{unit}_{name}"), getattr(block, name)
                if member.is_signature:
                    wiring.connect(m, wiring.flipped(ours), theirs)
                elif member.flow == In:
                    m.d.comb += theirs.eq(ours)
                else:
                    m.d.comb += ours.eq(theirs)
        return m
