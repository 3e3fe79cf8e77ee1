"""A simple dual-port RAM whose read data is registered: on ECP5, the block RAM's own output register.

An ECP5 DP16KD's clock-to-output is about 5.8 ns without its output register, more than half of
a 10 ns cycle, and yosys never uses that register (its DP16KD mapping is ``REGMODE = NOREG``):
when the RAMs of a large memory spread over the chip, the route to the first fabric register
alone misses 100 MHz. :class:`RegisteredRam` instantiates DP16KDs with ``REGMODE_B = "OUTREG"``
on ECP5; elsewhere (simulation, iCE40) it is a ``lib.memory.Memory`` read port followed by a
fabric register, cycle- and bit-identical.

With ``lane_addr=True`` every lane has its own read and write address (``r_addr[k]``,
``w_addr[k]``), so a user can drive each lane's RAMs from a register copy placed next to them
instead of one address net that spans every RAM of a wide memory.

Timing: ``r_addr`` is sampled at an edge where ``r_en`` is high; the word is on ``r_data`` after
the next edge where ``r_oe`` is high (the second edge if ``r_oe`` stays high). A read of an address written in
the same cycle returns undefined data on ECP5 (old data in simulation); the users never do that.
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RegisteredRam"]

# DP16KD data width per depth (the smallest width whose depth holds ``depth`` words), and the
# low address bits the mode leaves unused (byte enables or zeros).
_MODES = ((1024, 18, 4), (2048, 9, 3), (4096, 4, 2), (8192, 2, 1), (16384, 1, 0))


class RegisteredRam(wiring.Component):
    """``depth`` words of ``lanes * lane_width`` bits, one write port (per-lane enables), one read port.

    Parameters
    ----------
    lane_width : int
        Bits per lane (1..4096).
    depth : int
        Words (1..2**20). Up to 16384 (one DP16KD column deep, so no output mux is needed) the
        ECP5 form uses the RAMs' output registers; deeper memories fall back to the generic form.
    lanes : int
        Independently write-enabled lanes (1..256).
    lane_addr : bool
        One read and one write address per lane (``w_addr``/``r_addr`` become arrays of ``lanes``
        addresses); False (the default): one address for all lanes.

    Members
    -------
    w_addr : In(range(depth)), or In(data.ArrayLayout(range(depth), lanes)) with ``lane_addr``
    w_data : In(lanes * lane_width)
    w_en : In(lanes)
        Lane ``k`` of ``w_data`` is written to ``w_addr`` at the edge where ``w_en[k]`` is high.
    r_addr : In(range(depth)), or In(data.ArrayLayout(range(depth), lanes)) with ``lane_addr``
    r_en : In(1)
        ``r_addr`` is read at the edge where ``r_en`` is high.
    r_oe : In(1, init=1)
        The output register loads at edges where ``r_oe`` is high (it holds otherwise).
    r_data : Out(lanes * lane_width)
        The word read, after the first edge with ``r_oe`` high that follows its read's edge.

    Raises
    ------
    TypeError
        If a parameter is not an int.
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, lane_width: int, depth: int, lanes: int = 1, lane_addr: bool = False) -> None:
        for name, value, hi in (("lane_width", lane_width, 4096), ("depth", depth, 1 << 20),
                                ("lanes", lanes, 256)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
            if not 1 <= value <= hi:
                raise ValueError(f"{name} must be 1..{hi}, not {value!r}")
        if not isinstance(lane_addr, bool):
            raise TypeError(f"lane_addr must be a bool, not {lane_addr!r}")
        self._lane_width, self._depth, self._lanes = lane_width, depth, lanes
        self._lane_addr = lane_addr
        addr = data.ArrayLayout(range(depth), lanes) if lane_addr else range(depth)
        super().__init__({
            "w_addr": In(addr), "w_data": In(lanes * lane_width), "w_en": In(lanes),
            "r_addr": In(addr), "r_en": In(1), "r_oe": In(1, init=1),
            "r_data": Out(lanes * lane_width),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        if getattr(platform, "family", None) == "ecp5" and self._depth <= _MODES[-1][0]:
            self._ecp5(m)
            return m
        if self._lane_addr:
            # One memory per lane, each with its lane's addresses: cycle-identical to the ECP5 form.
            lw = self._lane_width
            for lane in range(self._lanes):
                mem = memory.Memory(shape=lw, depth=self._depth, init=[])
                m.submodules[f"mem_{lane}"] = mem
                wr, rd = mem.write_port(), mem.read_port()
                bits = slice(lane * lw, (lane + 1) * lw)
                m.d.comb += [wr.addr.eq(self.w_addr[lane]), wr.data.eq(self.w_data[bits]),
                             wr.en.eq(self.w_en[lane]), rd.addr.eq(self.r_addr[lane]), rd.en.eq(self.r_en)]
                with m.If(self.r_oe):
                    m.d.sync += self.r_data[bits].eq(rd.data)
            return m
        m.submodules.mem = mem = memory.Memory(shape=self._lanes * self._lane_width, depth=self._depth,
                                               init=[])
        wr = mem.write_port(granularity=self._lane_width)
        rd = mem.read_port()
        m.d.comb += [wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en),
                     rd.addr.eq(self.r_addr), rd.en.eq(self.r_en)]
        with m.If(self.r_oe):
            m.d.sync += self.r_data.eq(rd.data)
        return m

    def _ecp5(self, m: Module) -> None:
        _, width, shift = next(mode for mode in _MODES if mode[0] >= self._depth)
        lw = self._lane_width
        for lane in range(self._lanes):
            for k, lo in enumerate(range(0, lw, width)):
                n = min(width, lw - lo)
                base = lane * lw + lo
                ports = {}
                sides = (("A", self.w_addr), ("B", self.r_addr))
                if self._lane_addr:
                    sides = (("A", self.w_addr[lane]), ("B", self.r_addr[lane]))
                for side, addr in sides:
                    full = Signal(14, name=f"ram_{lane}_{k}_ad{side.lower()}")
                    # 18-bit mode: the two low address bits are the byte enables (both on).
                    m.d.comb += full.eq((addr << shift) | (0b11 if width == 18 else 0))
                    ports.update({f"i_AD{side}{b}": full[b] for b in range(14)})
                dia = Signal(18, name=f"ram_{lane}_{k}_dia")
                dob = Signal(18, name=f"ram_{lane}_{k}_dob")
                m.d.comb += [dia.eq(self.w_data[base:base + n]), self.r_data[base:base + n].eq(dob[:n])]
                ports.update({f"i_DIA{b}": dia[b] for b in range(18)})
                ports.update({f"i_DIB{b}": Const(0, 1) for b in range(18)})
                ports.update({f"o_DOB{b}": dob[b] for b in range(18)})
                m.submodules[f"ram_{lane}_{k}"] = Instance(
                    "DP16KD",
                    p_DATA_WIDTH_A=width, p_DATA_WIDTH_B=width, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                    p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000",
                    p_CSDECODE_B="0b000", p_CLKAMUX="CLKA", p_CLKBMUX="CLKB", p_WRITEMODE_A="NORMAL",
                    p_WRITEMODE_B="NORMAL", p_GSR="AUTO",
                    i_CLKA=ClockSignal("sync"), i_CEA=1, i_OCEA=1, i_RSTA=0, i_WEA=self.w_en[lane],
                    i_CSA0=0, i_CSA1=0, i_CSA2=0,
                    i_CLKB=ClockSignal("sync"), i_CEB=self.r_en, i_OCEB=self.r_oe, i_RSTB=0, i_WEB=0,
                    i_CSB0=0, i_CSB1=0, i_CSB2=0,
                    **ports)
