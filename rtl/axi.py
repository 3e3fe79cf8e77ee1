"""AXI4 and AXI4-Lite interface signatures, from the master's side.

Members carry the AXI signal names, so that a port ``m_axi`` of a component flattens to the
Verilog ports ``m_axi__awaddr``, ``m_axi__rdata``, ... and cocotbext-axi binds to them with
``AxiBus.from_prefix(dut, "m_axi_")`` (cocotb_bus joins prefix and name with ``_``).
A slave takes the flipped signature: ``In(AxiSignature(...))``.

The ID members (``awid bid arid rid``) are present because cocotbext-axi's AXI models require
them. Jacquard's masters use one ID (0) and rely on AXI's in-order responses for a single ID.
"""

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AxiBurst", "AxiLiteSignature", "AxiResp", "AxiSignature"]


class AxiBurst:
    """``AxBURST`` encodings."""

    FIXED = 0
    INCR = 1
    WRAP = 2


class AxiResp:
    """``xRESP`` encodings. Bit 1 set means an error (SLVERR or DECERR)."""

    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _check_widths(addr_width: int, data_width: int, allowed: tuple[int, ...]) -> None:
    if not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
        raise ValueError(f"Address width must be an integer in 12..64, not {addr_width!r}")
    if data_width not in allowed:
        raise ValueError(f"Data width must be one of {allowed}, not {data_width!r}")


class AxiSignature(wiring.Signature):
    """A full AXI4 master interface (five channels, bursts, no lock/cache/qos/user signals).

    Parameters
    ----------
    addr_width : int
        Address bits (12..64).
    data_width : int
        Data bits: 32, 64, 128, 256, 512 or 1024.
    id_width : int
        Transaction ID bits (at least 1; cocotbext-axi needs the ID signals to exist).
    read, write : bool
        Which halves to include: the read channels (AR, R), the write channels (AW, W, B), or
        both. A read-only master such as :class:`~jacquard.rtl.dma_reader.DmaReader` has only
        AR and R, which cocotbext-axi's ``AxiReadBus.from_prefix`` binds to.

    Members
    -------
    awaddr, awlen, awsize, awburst, awid, awvalid : Out
        Write address channel; ``awready`` : In.
    wdata, wstrb, wlast, wvalid : Out
        Write data channel; ``wready`` : In.
    bresp, bid, bvalid : In
        Write response channel; ``bready`` : Out.
    araddr, arlen, arsize, arburst, arid, arvalid : Out
        Read address channel; ``arready`` : In.
    rdata, rresp, rlast, rid, rvalid : In
        Read data channel; ``rready`` : Out.

    Raises
    ------
    ValueError
        If a width is out of range, or neither half is selected.
    """

    def __init__(self, addr_width: int = 32, data_width: int = 64, id_width: int = 1, *,
                 read: bool = True, write: bool = True) -> None:
        _check_widths(addr_width, data_width, (32, 64, 128, 256, 512, 1024))
        if not isinstance(id_width, int) or not 1 <= id_width <= 32:
            raise ValueError(f"ID width must be an integer in 1..32, not {id_width!r}")
        if not (read or write):
            raise ValueError("An AXI signature needs its read half, its write half or both")
        self._addr_width = addr_width
        self._data_width = data_width
        self._id_width = id_width
        self._read = bool(read)
        self._write = bool(write)
        members = {}
        if write:
            members.update({
                "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3),
                "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
                "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
                "wvalid": Out(1), "wready": In(1),
                "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            })
        if read:
            members.update({
                "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3),
                "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
                "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
                "rvalid": In(1), "rready": Out(1),
            })
        super().__init__(members)

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def data_width(self) -> int:
        return self._data_width

    @property
    def id_width(self) -> int:
        return self._id_width

    @property
    def read(self) -> bool:
        return self._read

    @property
    def write(self) -> bool:
        return self._write

    def _key(self) -> tuple:
        return (self.addr_width, self.data_width, self.id_width, self.read, self.write)

    def __eq__(self, other) -> bool:
        return isinstance(other, AxiSignature) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash((AxiSignature, *self._key()))

    def __repr__(self) -> str:
        return (f"AxiSignature({self.addr_width}, {self.data_width}, {self.id_width}, "
                f"read={self.read}, write={self.write})")


class AxiLiteSignature(wiring.Signature):
    """An AXI4-Lite master interface (single beats, with ``awprot``/``arprot``).

    Parameters
    ----------
    addr_width : int
        Address bits (12..64).
    data_width : int
        Data bits: 32 or 64.

    Members
    -------
    awaddr, awprot, awvalid : Out
        Write address channel; ``awready`` : In.
    wdata, wstrb, wvalid : Out
        Write data channel; ``wready`` : In.
    bresp, bvalid : In
        Write response channel; ``bready`` : Out.
    araddr, arprot, arvalid : Out
        Read address channel; ``arready`` : In.
    rdata, rresp, rvalid : In
        Read data channel; ``rready`` : Out.

    Raises
    ------
    ValueError
        If a width is out of range.
    """

    def __init__(self, addr_width: int = 32, data_width: int = 32) -> None:
        _check_widths(addr_width, data_width, (32, 64))
        self._addr_width = addr_width
        self._data_width = data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def data_width(self) -> int:
        return self._data_width

    def __eq__(self, other) -> bool:
        return (isinstance(other, AxiLiteSignature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __hash__(self) -> int:
        return hash((AxiLiteSignature, self.addr_width, self.data_width))

    def __repr__(self) -> str:
        return f"AxiLiteSignature({self.addr_width}, {self.data_width})"
