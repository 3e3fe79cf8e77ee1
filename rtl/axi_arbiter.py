"""A 2:1 AXI4 arbiter: two masters share one slave, one transaction per direction at a time.

Reads and writes are arbitrated separately. A direction is granted to one master when its address
channel is valid (round robin when both are), and stays granted until that transaction ends: the
R beat with ``rlast`` for a read, the B response for a write. While granted, the owner's channels
are connected to the slave and the other master sees ``ready`` low. So bursts are never interleaved
and responses need no ID routing; a master's ID goes to the slave and the slave's ID comes back.

This is the simple arbiter a board SoC needs in front of on-chip RAM that serves one transaction at
a time anyway (:class:`jacquard.boards.soc.AxiSram`). It adds no register stage: the grant is a
register, the channel multiplexers are combinational.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AxiSignature

__all__ = ["AxiArbiter"]

_AW = ("awid", "awaddr", "awlen", "awsize", "awburst")
_W = ("wdata", "wstrb", "wlast")
_AR = ("arid", "araddr", "arlen", "arsize", "arburst")


class AxiArbiter(wiring.Component):
    """Two AXI4 masters (``s_axi0``, ``s_axi1``) onto one slave (``m_axi``).

    Parameters
    ----------
    addr_width, data_width, id_width : int
        The shared :class:`~jacquard.rtl.axi.AxiSignature` of all three ports.

    Members
    -------
    s_axi0, s_axi1 : In(AxiSignature(addr_width, data_width, id_width))
        The masters' ports. Master 0 wins a tie after reset; afterwards ties alternate.
    m_axi : Out(AxiSignature(addr_width, data_width, id_width))
        To the slave.
    read_owner, write_owner : Out(1)
        Which master holds the read and the write direction (meaningful while granted).
    read_busy, write_busy : Out(1)
        A read or write transaction is in progress.

    Raises
    ------
    ValueError
        If a width is out of range (from :class:`~jacquard.rtl.axi.AxiSignature`).
    """

    def __init__(self, addr_width: int = 32, data_width: int = 32, id_width: int = 1) -> None:
        sig = AxiSignature(addr_width, data_width, id_width)
        super().__init__({"s_axi0": In(sig), "s_axi1": In(sig), "m_axi": Out(sig),
                          "read_owner": Out(1), "write_owner": Out(1),
                          "read_busy": Out(1), "write_busy": Out(1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        s = (self.s_axi0, self.s_axi1)
        bus = self.m_axi

        # -- reads ---------------------------------------------------------------------------
        r_prio = Signal()            # who wins the next tie
        r_pick = Signal()
        m.d.comb += r_pick.eq(Mux(s[0].arvalid & s[1].arvalid, r_prio, s[1].arvalid))
        r_sel = Mux(self.read_busy, self.read_owner, r_pick)
        for name in _AR:
            m.d.comb += getattr(bus, name).eq(Mux(r_sel, getattr(s[1], name), getattr(s[0], name)))
        m.d.comb += bus.arvalid.eq(~self.read_busy & (s[0].arvalid | s[1].arvalid))
        for k in range(2):
            mine = self.read_busy & (self.read_owner == k)
            m.d.comb += [
                s[k].arready.eq(~self.read_busy & (r_pick == k) & bus.arready),
                s[k].rid.eq(bus.rid), s[k].rdata.eq(bus.rdata), s[k].rresp.eq(bus.rresp),
                s[k].rlast.eq(bus.rlast), s[k].rvalid.eq(mine & bus.rvalid),
            ]
        m.d.comb += bus.rready.eq(self.read_busy & Mux(self.read_owner, s[1].rready, s[0].rready))
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [self.read_busy.eq(1), self.read_owner.eq(r_pick), r_prio.eq(~r_pick)]
        with m.If(bus.rvalid & bus.rready & bus.rlast):
            m.d.sync += self.read_busy.eq(0)

        # -- writes: AW, then the W beats up to wlast, then B ---------------------------------
        w_prio = Signal()
        w_pick = Signal()
        w_data_done = Signal()       # the owner's wlast beat has passed
        m.d.comb += w_pick.eq(Mux(s[0].awvalid & s[1].awvalid, w_prio, s[1].awvalid))
        w_sel = Mux(self.write_busy, self.write_owner, w_pick)
        for name in _AW:
            m.d.comb += getattr(bus, name).eq(Mux(w_sel, getattr(s[1], name), getattr(s[0], name)))
        for name in _W:
            m.d.comb += getattr(bus, name).eq(Mux(self.write_owner, getattr(s[1], name),
                                                  getattr(s[0], name)))
        m.d.comb += bus.awvalid.eq(~self.write_busy & (s[0].awvalid | s[1].awvalid))
        w_open = self.write_busy & ~w_data_done
        m.d.comb += [
            bus.wvalid.eq(w_open & Mux(self.write_owner, s[1].wvalid, s[0].wvalid)),
            bus.bready.eq(self.write_busy & Mux(self.write_owner, s[1].bready, s[0].bready)),
        ]
        for k in range(2):
            mine = self.write_busy & (self.write_owner == k)
            m.d.comb += [
                s[k].awready.eq(~self.write_busy & (w_pick == k) & bus.awready),
                s[k].wready.eq(mine & ~w_data_done & bus.wready),
                s[k].bid.eq(bus.bid), s[k].bresp.eq(bus.bresp), s[k].bvalid.eq(mine & bus.bvalid),
            ]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [self.write_busy.eq(1), self.write_owner.eq(w_pick), w_prio.eq(~w_pick),
                         w_data_done.eq(0)]
        with m.If(bus.wvalid & bus.wready & bus.wlast):
            m.d.sync += w_data_done.eq(1)
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += self.write_busy.eq(0)
        return m
