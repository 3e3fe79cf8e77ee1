"""An AXI4 register slice: every channel through a full-throughput skid register.

::

    s_axi --AW/W/AR--> [skid] --> m_axi
    s_axi <---B/R----- [skid] <-- m_axi

Each of the five channels gets an output register and a skid register, so on both sides of the
slice ``valid``, the payload and ``ready`` all come straight from flip-flops. A slice between two
AXI components cuts every combinational path between them (for instance an arbiter's channel
multiplexers between a slave's response FIFO and a master's read router) at the cost of one cycle
of latency per channel; a burst still moves one beat per cycle.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AxiSignature

__all__ = ["AxiRegSlice"]

# channel: (payload members, valid, ready, forward = master to slave)
_CHANNELS = {
    "aw": (("awid", "awaddr", "awlen", "awsize", "awburst"), "awvalid", "awready", True),
    "w": (("wdata", "wstrb", "wlast"), "wvalid", "wready", True),
    "b": (("bid", "bresp"), "bvalid", "bready", False),
    "ar": (("arid", "araddr", "arlen", "arsize", "arburst"), "arvalid", "arready", True),
    "r": (("rid", "rdata", "rresp", "rlast"), "rvalid", "rready", False),
}


class AxiRegSlice(wiring.Component):
    """Registers every channel of an AXI4 link (one cycle each way, one beat per cycle).

    Parameters
    ----------
    addr_width, data_width, id_width : int
        The :class:`~jacquard.rtl.axi.AxiSignature` of both ports.

    Members
    -------
    s_axi : In(AxiSignature(addr_width, data_width, id_width))
        From the master.
    m_axi : Out(AxiSignature(addr_width, data_width, id_width))
        To the slave.

    Raises
    ------
    ValueError
        If a width is out of range (from :class:`~jacquard.rtl.axi.AxiSignature`).
    """

    def __init__(self, addr_width: int = 32, data_width: int = 32, id_width: int = 1) -> None:
        sig = AxiSignature(addr_width, data_width, id_width)
        super().__init__({"s_axi": In(sig), "m_axi": Out(sig)})

    def elaborate(self, platform) -> Module:
        m = Module()
        for name, (members, valid, ready, forward) in _CHANNELS.items():
            src, dst = (self.s_axi, self.m_axi) if forward else (self.m_axi, self.s_axi)
            payload_in = Cat(*(getattr(src, n) for n in members))
            payload_out = Cat(*(getattr(dst, n) for n in members))
            out_valid = Signal(name=f"{name}_out_valid")
            out_data = Signal(len(payload_in), name=f"{name}_out_data")
            skid_valid = Signal(name=f"{name}_skid_valid")
            skid_data = Signal(len(payload_in), name=f"{name}_skid_data")
            m.d.comb += [
                getattr(src, ready).eq(~skid_valid),
                getattr(dst, valid).eq(out_valid),
                payload_out.eq(out_data),
            ]
            with m.If(getattr(dst, ready) | ~out_valid):
                # The output register takes the skid's beat first, else the source's.
                with m.If(skid_valid):
                    m.d.sync += [out_valid.eq(1), out_data.eq(skid_data), skid_valid.eq(0)]
                with m.Else():
                    m.d.sync += [out_valid.eq(getattr(src, valid)), out_data.eq(payload_in)]
            with m.Elif(getattr(src, valid) & ~skid_valid):
                # The output is stalled: the beat accepted this cycle waits in the skid register.
                m.d.sync += [skid_valid.eq(1), skid_data.eq(payload_in)]
        return m
