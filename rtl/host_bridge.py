"""The host bridge: a framed, CRC-checked request/response protocol over a byte stream, mastering AXI.

The host (:mod:`jacquard.host.uart_link`) sends one request and waits for its response. All
multi-byte integers are little-endian except the CRC, which is sent high byte first.

Request (host to device)::

    0xA5  seq  cmd  count  addr[4]  payload[4*count if cmd == WRITE]  crc_hi  crc_lo

Response (device to host)::

    0x5A  seq  cmd  status  data[4*count if cmd is READ or PING and status has no BAD_CMD]  crc_hi  crc_lo

* ``crc`` is CRC-16/CCITT-FALSE (polynomial 0x1021, init 0xFFFF, no reflection, no final XOR;
  Python's ``binascii.crc_hqx(data, 0xFFFF)``) over every byte after the sync byte. Sent high byte
  first, the CRC over the whole frame after the sync byte is 0, which is how both ends check it.
* ``count`` is the number of 32-bit words, 1..``max_words``. Words go to consecutive addresses.
* Commands: ``PING`` (0) answers ``count`` copies of the bridge's info word
  (``PROTOCOL_VERSION | max_words << 8``) and touches nothing; ``READ`` (1); ``WRITE`` (2).
* ``status``: bit 0 ``BUS_ERROR`` (some beat got SLVERR/DECERR; the other beats were still done),
  bit 1 ``BAD_CMD`` (unknown command; nothing was done).
* Address map: bit 31 set selects the AXI4-Lite register port (``m_axil``, address ``addr - REG_BASE``);
  clear selects the AXI4 memory port (``m_axi``, address ``addr``). One single-beat transaction per
  word: a word over the UART takes ``40 * divisor`` cycles, so bursts would not make it faster, and
  single beats never cross a 4 KiB boundary.

Reliability:

* A frame whose ``count`` is 0 or too large is dropped at once; a frame with a bad CRC is dropped
  after its CRC; a frame that stops for ``timeout`` cycles between two bytes is dropped. A write's
  payload is buffered and only applied once the CRC checks, so a damaged write is never applied.
  A dropped frame gets no response: the host times out and sends it again.
* The bridge keeps the last executed request's ``seq`` and CRC with its response (status, and the
  read data in a buffer of its own). A request with the same ``seq`` and CRC is a retry whose
  response was lost: it is answered again from that cache and not executed again, so retried
  writes are idempotent. Garbage between frames is skipped while hunting for the next sync byte.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .axi import AxiBurst, AxiLiteSignature, AxiSignature

__all__ = [
    "CMD_PING",
    "CMD_READ",
    "CMD_WRITE",
    "PROTOCOL_VERSION",
    "REG_BASE",
    "REQ_SYNC",
    "RESP_SYNC",
    "STATUS_BAD_CMD",
    "STATUS_BUS_ERROR",
    "HostBridge",
    "crc16_step",
]

PROTOCOL_VERSION = 1
REQ_SYNC = 0xA5
RESP_SYNC = 0x5A
CMD_PING = 0
CMD_READ = 1
CMD_WRITE = 2
STATUS_BUS_ERROR = 1
STATUS_BAD_CMD = 2
#: Bus addresses at and above this go to the register port.
REG_BASE = 0x8000_0000


def _crc16_sw(crc: int, byte: int) -> int:
    for k in reversed(range(8)):
        fb = (crc >> 15 ^ byte >> k) & 1
        crc = (crc << 1 & 0xFFFF) ^ (0x1021 if fb else 0)
    return crc


# The CRC step is linear over GF(2): output bit i is the XOR of the state and byte bits in these masks.
_CRC_MASKS = [(sum(1 << b for b in range(16) if _crc16_sw(1 << b, 0) >> i & 1),
               sum(1 << b for b in range(8) if _crc16_sw(0, 1 << b) >> i & 1)) for i in range(16)]


def crc16_step(crc: Value, byte: Value) -> Value:
    """CRC-16/CCITT-FALSE of ``crc`` extended by ``byte`` (MSB first), as a combinational expression.

    Built as one flat XOR per output bit (from the step's GF(2) matrix), not as eight chained
    shift-and-XOR steps, whose shared subexpressions would be expanded again at every use.
    """
    crc, byte = Value.cast(crc), Value.cast(byte)
    return Cat(*((crc & cmask).xor() ^ (byte & bmask).xor() for cmask, bmask in _CRC_MASKS))


class HostBridge(wiring.Component):
    """Protocol engine of the host bridge (see the module docstring for the frame formats).

    Parameters
    ----------
    max_words : int
        Largest ``count`` of a request, a power of two in 1..128. Sets the two word buffers.
    timeout : int
        Cycles without a byte after which a partly received frame is dropped (at least 16). Keep it
        well below the host's response timeout so that a retry starts on a clean parser.

    Members
    -------
    rx : In(stream.Signature(8))
        Request bytes from the UART receiver; always accepted.
    tx : Out(stream.Signature(8))
        Response bytes to the UART transmitter.
    m_axil : Out(AxiLiteSignature(32, 32))
        Register port (addresses at and above ``REG_BASE``, offset by it).
    m_axi : Out(AxiSignature(32, 32, 1))
        Memory port (addresses below ``REG_BASE``); single beats.
    busy : Out(1)
        A request is being executed or answered.
    frames_ok, frames_retried, frames_dropped : Out(16)
        Counters of executed requests, requests answered from the cache, and dropped frames.
        ``frames_dropped`` counts every frame the bridge started and discarded: damaged or cut-off
        requests, and also false starts, where a damaged or garbage byte equal to the sync byte
        began a "frame" (the bridge cannot tell the two apart before the CRC). One lost byte can
        so cost several drops while the bridge hunts for the next real frame: on a lossy line
        it is a measure of the line's trouble, not a count of lost requests (the host's retry
        counter is that).
    dropped : Out(1)
        Pulses when a frame is dropped.

    Raises
    ------
    ValueError
        If ``max_words`` or ``timeout`` is out of range.
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    m_axil: Out(AxiLiteSignature(32, 32))
    m_axi: Out(AxiSignature(32, 32, 1))
    busy: Out(1)
    frames_ok: Out(16)
    frames_retried: Out(16)
    frames_dropped: Out(16)
    dropped: Out(1)

    def __init__(self, max_words: int = 64, timeout: int = 100_000) -> None:
        if not isinstance(max_words, int) or not 1 <= max_words <= 128 or max_words & (max_words - 1):
            raise ValueError(f"max_words must be a power of two in 1..128, not {max_words!r}")
        if not isinstance(timeout, int) or timeout < 16:
            raise ValueError(f"timeout must be an integer of at least 16 cycles, not {timeout!r}")
        self._max_words = max_words
        self._timeout = timeout
        super().__init__()

    @property
    def max_words(self) -> int:
        return self._max_words

    @property
    def timeout(self) -> int:
        return self._timeout

    @property
    def info_word(self) -> int:
        """What ``PING`` answers."""
        return PROTOCOL_VERSION | self._max_words << 8

    def elaborate(self, platform) -> Module:
        m = Module()
        nw = self._max_words
        # Write payloads land in rx_buf; read data in tx_buf, which only an executed READ writes,
        # so a retried READ is answered with the data of its first execution.
        m.submodules.rx_buf = rx_buf = memory.Memory(shape=32, depth=nw, init=[])
        m.submodules.tx_buf = tx_buf = memory.Memory(shape=32, depth=nw, init=[])
        rxb_w, rxb_r = rx_buf.write_port(), rx_buf.read_port()
        txb_w, txb_r = tx_buf.write_port(), tx_buf.read_port()

        # -- request parser --------------------------------------------------------------------
        byte = self.rx.payload
        take = Signal()
        m.d.comb += [self.rx.ready.eq(1), take.eq(self.rx.valid)]

        seq = Signal(8)
        cmd = Signal(8)
        count = Signal(range(nw + 1))
        addr = Signal(32)
        crc = Signal(16)
        rcrc = Signal(16)      # the CRC bytes as received: identifies a request for the retry cache
        idx = Signal(range(4 * nw + 4))
        word = Signal(32)
        idle = Signal(range(self._timeout + 1))

        # Retry cache and the response it describes.
        cache_valid = Signal()
        cache_seq = Signal(8)
        cache_rcrc = Signal(16)
        resp_cmd = Signal(8)
        resp_status = Signal(8)
        resp_words = Signal(range(nw + 1))   # data words in the response

        drop = Signal()
        m.d.comb += self.dropped.eq(drop)
        with m.If(drop):
            m.d.sync += self.frames_dropped.eq(self.frames_dropped + 1)

        # -- executor state ----------------------------------------------------------------------
        i = Signal(range(nw + 1))
        bus_addr = Signal(32)
        wdata = Signal(32)
        status = Signal(8)
        a_done = Signal()
        w_done = Signal()
        is_reg = bus_addr[31]

        axil, axi = self.m_axil, self.m_axi
        m.d.comb += [
            axil.awaddr.eq(bus_addr - REG_BASE), axil.araddr.eq(bus_addr - REG_BASE),
            axil.wdata.eq(wdata), axil.wstrb.eq(0xF), axil.awprot.eq(0), axil.arprot.eq(0),
            axi.awaddr.eq(bus_addr), axi.araddr.eq(bus_addr), axi.wdata.eq(wdata), axi.wstrb.eq(0xF),
            axi.awlen.eq(0), axi.arlen.eq(0), axi.awsize.eq(2), axi.arsize.eq(2),
            axi.awburst.eq(AxiBurst.INCR), axi.arburst.eq(AxiBurst.INCR),
            axi.awid.eq(0), axi.arid.eq(0), axi.wlast.eq(1),
            rxb_r.addr.eq(i), txb_w.addr.eq(i),
        ]

        # -- response state ----------------------------------------------------------------------
        tcrc = Signal(16)
        j = Signal(range(nw + 1))
        k = Signal(2)
        tword = Signal(32)
        tx_free = ~self.tx.valid | self.tx.ready
        m.d.comb += txb_r.addr.eq(j)
        with m.If(self.tx.ready):
            m.d.sync += self.tx.valid.eq(0)

        def send(value, crc_update=True):
            m.d.sync += [self.tx.payload.eq(value), self.tx.valid.eq(1)]
            if crc_update:
                m.d.sync += tcrc.eq(crc16_step(tcrc, Value.cast(value)[:8]))

        receiving = Signal()
        expired = Signal()
        m.d.comb += expired.eq(idle == self._timeout)

        def on_timeout():
            # Must directly follow a receiving state's `with m.If(take)`: a frame that stalls
            # mid-way for `timeout` cycles is dropped.
            with m.Elif(expired):
                m.d.comb += drop.eq(1)
                m.next = "HUNT"

        with m.FSM(name="bridge") as fsm:
            with m.State("HUNT"):
                with m.If(take & (byte == REQ_SYNC)):
                    m.d.sync += [crc.eq(0xFFFF), idx.eq(0)]
                    m.next = "SEQ"
            with m.State("SEQ"):
                m.d.comb += receiving.eq(1)
                with m.If(take):
                    m.d.sync += [seq.eq(byte), crc.eq(crc16_step(crc, byte))]
                    m.next = "CMD"
                on_timeout()
            with m.State("CMD"):
                m.d.comb += receiving.eq(1)
                with m.If(take):
                    m.d.sync += [cmd.eq(byte), crc.eq(crc16_step(crc, byte))]
                    m.next = "COUNT"
                on_timeout()
            with m.State("COUNT"):
                m.d.comb += receiving.eq(1)
                with m.If(take):
                    m.d.sync += [count.eq(byte), crc.eq(crc16_step(crc, byte))]
                    with m.If((byte == 0) | (byte > nw)):
                        m.d.comb += drop.eq(1)
                        m.next = "HUNT"
                    with m.Else():
                        m.next = "ADDR"
                on_timeout()
            with m.State("ADDR"):
                m.d.comb += receiving.eq(1)
                with m.If(take):
                    m.d.sync += [addr.eq(Cat(addr[8:], byte)), crc.eq(crc16_step(crc, byte)),
                                 idx.eq(idx + 1)]
                    with m.If(idx == 3):
                        m.d.sync += idx.eq(0)
                        with m.If(cmd == CMD_WRITE):
                            m.next = "PAYLOAD"
                        with m.Else():
                            m.next = "CRC_HI"
                on_timeout()
            with m.State("PAYLOAD"):
                m.d.comb += receiving.eq(1)
                with m.If(take):
                    m.d.sync += [word.eq(Cat(word[8:], byte)), crc.eq(crc16_step(crc, byte)),
                                 idx.eq(idx + 1)]
                    with m.If(idx[:2] == 3):
                        m.d.comb += [rxb_w.addr.eq(idx[2:]), rxb_w.data.eq(Cat(word[8:], byte)),
                                     rxb_w.en.eq(1)]
                        with m.If(idx[2:] == count - 1):
                            m.next = "CRC_HI"
                on_timeout()
            with m.State("CRC_HI"):
                m.d.comb += receiving.eq(1)
                with m.If(take):
                    m.d.sync += [rcrc[8:].eq(byte), crc.eq(crc16_step(crc, byte))]
                    m.next = "CRC_LO"
                on_timeout()
            with m.State("CRC_LO"):
                m.d.comb += receiving.eq(1)
                with m.If(take):
                    m.d.sync += [rcrc[:8].eq(byte), crc.eq(crc16_step(crc, byte))]
                    m.next = "CHECK"
                on_timeout()
            with m.State("CHECK"):
                with m.If(crc != 0):
                    m.d.comb += drop.eq(1)
                    m.next = "HUNT"
                with m.Elif(cache_valid & (seq == cache_seq) & (rcrc == cache_rcrc)):
                    m.d.sync += self.frames_retried.eq(self.frames_retried + 1)
                    m.next = "RESPOND"
                with m.Else():
                    m.d.sync += [self.frames_ok.eq(self.frames_ok + 1), i.eq(0), bus_addr.eq(addr),
                                 status.eq(0), cache_valid.eq(0)]
                    with m.Switch(cmd):
                        with m.Case(CMD_PING):
                            m.next = "COMMIT"
                        with m.Case(CMD_READ):
                            m.next = "READ_ADDR"
                        with m.Case(CMD_WRITE):
                            m.next = "WRITE_FETCH"
                        with m.Default():
                            m.d.sync += status.eq(STATUS_BAD_CMD)
                            m.next = "COMMIT"

            # -- execution: one single-beat transaction per word -----------------------------------
            with m.State("WRITE_FETCH"):
                m.next = "WRITE_LATCH"   # rx_buf[i] is read during this cycle
            with m.State("WRITE_LATCH"):
                m.d.sync += [wdata.eq(rxb_r.data), a_done.eq(0), w_done.eq(0)]
                m.next = "WRITE_ISSUE"
            with m.State("WRITE_ISSUE"):
                m.d.comb += [axil.awvalid.eq(is_reg & ~a_done), axil.wvalid.eq(is_reg & ~w_done),
                             axi.awvalid.eq(~is_reg & ~a_done), axi.wvalid.eq(~is_reg & ~w_done)]
                a_now = a_done | Mux(is_reg, axil.awready, axi.awready)
                w_now = w_done | Mux(is_reg, axil.wready, axi.wready)
                m.d.sync += [a_done.eq(a_now), w_done.eq(w_now)]
                with m.If(a_now & w_now):
                    m.next = "WRITE_RESP"
            with m.State("WRITE_RESP"):
                m.d.comb += [axil.bready.eq(is_reg), axi.bready.eq(~is_reg)]
                with m.If(Mux(is_reg, axil.bvalid, axi.bvalid)):
                    with m.If(Mux(is_reg, axil.bresp[1], axi.bresp[1])):
                        m.d.sync += status.eq(status | STATUS_BUS_ERROR)
                    m.d.sync += [i.eq(i + 1), bus_addr.eq(bus_addr + 4)]
                    with m.If(i == count - 1):
                        m.next = "COMMIT"
                    with m.Else():
                        m.next = "WRITE_FETCH"
            with m.State("READ_ADDR"):
                m.d.comb += [axil.arvalid.eq(is_reg), axi.arvalid.eq(~is_reg)]
                with m.If(Mux(is_reg, axil.arready, axi.arready)):
                    m.next = "READ_DATA"
            with m.State("READ_DATA"):
                m.d.comb += [axil.rready.eq(is_reg), axi.rready.eq(~is_reg)]
                with m.If(Mux(is_reg, axil.rvalid, axi.rvalid)):
                    m.d.comb += [txb_w.data.eq(Mux(is_reg, axil.rdata, axi.rdata)), txb_w.en.eq(1)]
                    with m.If(Mux(is_reg, axil.rresp[1], axi.rresp[1])):
                        m.d.sync += status.eq(status | STATUS_BUS_ERROR)
                    m.d.sync += [i.eq(i + 1), bus_addr.eq(bus_addr + 4)]
                    with m.If(i == count - 1):
                        m.next = "COMMIT"
                    with m.Else():
                        m.next = "READ_ADDR"
            with m.State("COMMIT"):
                has_data = ((cmd == CMD_READ) | (cmd == CMD_PING)) & ~status[1]
                m.d.sync += [cache_valid.eq(1), cache_seq.eq(seq), cache_rcrc.eq(rcrc),
                             resp_cmd.eq(cmd), resp_status.eq(status),
                             resp_words.eq(Mux(has_data, count, 0))]
                m.next = "RESPOND"

            # -- response: always from the cache registers ---------------------------------------
            with m.State("RESPOND"):
                with m.If(tx_free):
                    send(RESP_SYNC, crc_update=False)
                    m.d.sync += [tcrc.eq(0xFFFF), j.eq(0), k.eq(0)]
                    m.next = "R_SEQ"
            with m.State("R_SEQ"):
                with m.If(tx_free):
                    send(cache_seq)
                    m.next = "R_CMD"
            with m.State("R_CMD"):
                with m.If(tx_free):
                    send(resp_cmd)
                    m.next = "R_STATUS"
            with m.State("R_STATUS"):
                with m.If(tx_free):
                    send(resp_status)
                    with m.If(resp_words != 0):
                        m.next = "R_LOAD"
                    with m.Else():
                        m.next = "R_CRC_HI"
            with m.State("R_LOAD"):
                m.next = "R_LATCH"       # tx_buf[j] is read during this cycle
            with m.State("R_LATCH"):
                with m.If(resp_cmd == CMD_PING):
                    m.d.sync += tword.eq(self.info_word)
                with m.Else():
                    m.d.sync += tword.eq(txb_r.data)
                m.next = "R_DATA"
            with m.State("R_DATA"):
                with m.If(tx_free):
                    send(tword.word_select(k, 8))
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == 3):
                        m.d.sync += j.eq(j + 1)
                        with m.If(j == resp_words - 1):
                            m.next = "R_CRC_HI"
                        with m.Else():
                            m.next = "R_LOAD"
            with m.State("R_CRC_HI"):
                with m.If(tx_free):
                    send(tcrc[8:], crc_update=False)
                    m.next = "R_CRC_LO"
            with m.State("R_CRC_LO"):
                with m.If(tx_free):
                    send(tcrc[:8], crc_update=False)
                    m.next = "HUNT"

        m.d.comb += self.busy.eq(~receiving & ~fsm.ongoing("HUNT"))
        with m.If(~receiving | take | expired):
            m.d.sync += idle.eq(0)
        with m.Else():
            m.d.sync += idle.eq(idle + 1)
        return m
