"""The board SoC: host bridge over the USB-UART, the core, device memory, PLL and LEDs.

::

    UART pins -- UartRx/UartTx -- HostBridge --m_axi--> AxiArbiter --slice--> AxiSram (memory, 0x0000_0000)
                                            |             ^
                                            |           slice <-- JacquardCore.m_axi (DMA)
                                            \\-m_axil-> JacquardCore.s_axil (registers, 0x8000_0000)

The bridge is master 0 of the arbiter and the core's DMA master 1. Register slices
(:class:`~jacquard.rtl.axi_slice.AxiRegSlice`) on both sides of the arbiter keep the memory's
response FIFO, the arbiter's multiplexers and the core's read router out of one another's
timing paths (one cycle per channel each; bursts still stream at one beat per cycle).

:class:`PlaceholderCore` (the core's register block with no engine behind it) can stand in for the
core where only the bridge protocol is under test, because a bit-level UART simulation of the whole
core is slow. Whole models run over the bridge with ``uart=False``: the serializers are left out
and the bridge's byte streams are the ports (``tests/test_uart_device.py``).

:class:`BridgeSoc` is the part that simulates (no clocking, pins as ports); :class:`BoardTop` adds
the PLL, the clock gate or reset until it locks, and the board's pins for a platform from
:mod:`jacquard.boards.configs`.
"""


from amaranth.hdl import Cat, ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, stream, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from jacquard.rtl.axi import AxiLiteSignature
from jacquard.rtl.axi_arbiter import AxiArbiter
from jacquard.rtl.axi_slice import AxiRegSlice
from jacquard.rtl.axi_sram import AxiSram
from jacquard.rtl.core import JacquardCore
from jacquard.rtl.csr import Csr
from jacquard.rtl.host_bridge import HostBridge
from jacquard.rtl.uart import UartRx, UartTx, uart_divisor
from jacquard.sim.isa import HardwareConfig
from jacquard.sim.isa_regs import register

#: The net of the ECP5 board top's PLL-side clock. It clocks only the three flops that
#: synchronize the PLL's lock into the core clock's enable, so reports keep it apart from the
#: core clock (``jacquard.boards.synth``).
PLL_CLOCK_NET = "pll_clk"

__all__ = ["PLL_CLOCK_NET", "AxiSram", "BoardTop", "BridgeSoc", "PlaceholderCore", "ecp5_pll",
           "ecp5_pll_params", "ice40_pll_params"]


class PlaceholderCore(wiring.Component):
    """Stand-in for ``JacquardCore`` in protocol tests: its register block, no engine.

    Parameters
    ----------
    config : HardwareConfig
        The config the ID/CONFIG registers report.

    Members
    -------
    s_axil : In(AxiLiteSignature(32, 32))
        The register port (only the low 12 address bits are decoded).
    busy, error : Out(1)
        STATUS.busy and STATUS.error (always 0 here).
    """

    s_axil: In(AxiLiteSignature(32, 32))
    busy: Out(1)
    error: Out(1)

    def __init__(self, config: HardwareConfig) -> None:
        if not isinstance(config, HardwareConfig):
            raise TypeError(f"config must be a HardwareConfig, not {config!r}")
        self._config = config
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.csr = csr = Csr(self._config, addr_width=12)
        for name in ("awaddr", "araddr"):
            m.d.comb += getattr(csr.s_axil, name).eq(getattr(self.s_axil, name)[:12])
        for name, sig in AxiLiteSignature(32, 32).members.items():
            if name in ("awaddr", "araddr"):
                continue
            if sig.flow == Out:
                m.d.comb += getattr(csr.s_axil, name).eq(getattr(self.s_axil, name))
            else:
                m.d.comb += getattr(self.s_axil, name).eq(getattr(csr.s_axil, name))
        return m


class _CoreStatus(JacquardCore):
    """``JacquardCore`` with its STATUS ``busy`` and ``error`` bits readable by the SoC (for the LEDs).

    The core has no status pins, only ``irq``; the bits are taken from its register block.
    """

    def __init__(self, config: HardwareConfig) -> None:
        super().__init__(config)
        self.busy = Signal()
        self.error = Signal()

    def elaborate(self, platform) -> Module:
        m = super().elaborate(platform)
        status = register("STATUS").layout()(m.submodules.csr.status)
        m.d.comb += [self.busy.eq(status.busy), self.error.eq(status.error)]
        return m


class BridgeSoc(wiring.Component):
    """UART + host bridge + core + arbiter + device memory + LED logic, in the ``sync`` domain.

    Parameters
    ----------
    config : HardwareConfig
        The core's config.
    memory_bytes : int
        Device memory size.
    divisor : int
        UART bit period in cycles.
    timeout : int
        The bridge's inter-byte timeout in cycles.
    max_words : int
        The bridge's largest request.
    heartbeat_bit : int
        Counter bit that blinks the heartbeat LED (about ``log2(f_clk)`` for 1 Hz).
    spram : bool
        Device memory in iCE40 SPRAM.
    core : bool
        Build the real :class:`~jacquard.rtl.core.JacquardCore` (default); False puts the
        register-only :class:`PlaceholderCore` in its place, for protocol tests.
    uart : bool
        Put the UART serializers between the pins and the bridge (default). False leaves them out
        and exposes the bridge's byte streams instead (``rx_byte``/``tx_byte``): for simulations
        that run whole models over the bridge protocol, where a bit-level line costs 10 x
        ``divisor`` cycles per byte. The UART itself is tested bit-level elsewhere.

    Members
    -------
    rx : In(1)
        UART line from the host (idle high); only with ``uart=True``.
    tx : Out(1)
        UART line to the host; only with ``uart=True``.
    rx_byte : In(stream.Signature(8))
        Bytes from the host into the bridge; only with ``uart=False``.
    tx_byte : Out(stream.Signature(8))
        Bytes from the bridge to the host; only with ``uart=False``.
    led_heartbeat, led_busy, led_error : Out(1)
        Blinks while the clock runs; lit while the bridge or core is busy; lit for a while after a
        dropped frame or while the core reports an error.
    frames_ok, frames_retried, frames_dropped : Out(16)
        The bridge's frame counters.

    Raises
    ------
    TypeError
        If ``config`` is not a HardwareConfig.
    ValueError
        If ``heartbeat_bit`` is out of range, or the core's bus is not 32 bits wide.
    """

    def __init__(self, config: HardwareConfig, *, memory_bytes: int = 64 * 1024, divisor: int = 16,
                 timeout: int = 100_000, max_words: int = 64, heartbeat_bit: int = 24,
                 spram: bool = False, core: bool = True, uart: bool = True) -> None:
        if not isinstance(config, HardwareConfig):
            raise TypeError(f"config must be a HardwareConfig, not {config!r}")
        if not isinstance(heartbeat_bit, int) or not 4 <= heartbeat_bit <= 31:
            raise ValueError(f"heartbeat_bit must be in 4..31, not {heartbeat_bit!r}")
        if core and config.dma_align != 4:
            raise ValueError(f"The SoC's memory bus is 32 bits; config {config.name!r} has dma_align "
                             f"{config.dma_align}, not 4")
        self.config = config
        self.heartbeat_bit = heartbeat_bit
        self.uart_rx = UartRx(divisor) if uart else None
        self.uart_tx = UartTx(divisor) if uart else None
        self.bridge = HostBridge(max_words=max_words, timeout=timeout)
        self.sram = AxiSram(memory_bytes, spram=spram)
        self.core = _CoreStatus(config) if core else PlaceholderCore(config)
        self.arbiter = AxiArbiter(32, 32, 1) if core else None
        self.dma_slice = AxiRegSlice(32, 32, 1) if core else None
        self.mem_slice = AxiRegSlice(32, 32, 1) if core else None
        if uart:
            line = {"rx": In(1, init=1), "tx": Out(1, init=1)}
        else:
            line = {"rx_byte": In(stream.Signature(8)), "tx_byte": Out(stream.Signature(8))}
        super().__init__({
            **line,
            "led_heartbeat": Out(1), "led_busy": Out(1), "led_error": Out(1),
            "frames_ok": Out(16), "frames_retried": Out(16), "frames_dropped": Out(16),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        m.submodules.sram = self.sram
        m.submodules.core = core = self.core
        if self.uart_rx is not None:
            m.submodules.uart_rx = self.uart_rx
            m.submodules.uart_tx = self.uart_tx
            m.d.comb += [self.uart_rx.rx.eq(self.rx), self.tx.eq(self.uart_tx.tx)]
            wiring.connect(m, self.uart_rx.o, bridge.rx)
            wiring.connect(m, bridge.tx, self.uart_tx.i)
        else:
            wiring.connect(m, wiring.flipped(self.rx_byte), bridge.rx)
            wiring.connect(m, bridge.tx, wiring.flipped(self.tx_byte))
        if self.arbiter is not None:
            m.submodules.arbiter = arb = self.arbiter
            m.submodules.dma_slice = dma_slice = self.dma_slice
            m.submodules.mem_slice = mem_slice = self.mem_slice
            wiring.connect(m, bridge.m_axi, arb.s_axi0)
            wiring.connect(m, core.m_axi, dma_slice.s_axi)
            wiring.connect(m, dma_slice.m_axi, arb.s_axi1)
            wiring.connect(m, arb.m_axi, mem_slice.s_axi)
            wiring.connect(m, mem_slice.m_axi, self.sram.s_axi)
        else:
            wiring.connect(m, bridge.m_axi, self.sram.s_axi)
        # The core decodes 12 address bits; the bridge has already taken REG_BASE off.
        for name, sig in AxiLiteSignature(32, 32).members.items():
            ours, theirs = getattr(bridge.m_axil, name), getattr(core.s_axil, name)
            if name in ("awaddr", "araddr"):
                m.d.comb += theirs.eq(ours[:len(theirs)])
            elif sig.flow == Out:
                m.d.comb += theirs.eq(ours)
            else:
                m.d.comb += ours.eq(theirs)
        m.d.comb += [self.frames_ok.eq(bridge.frames_ok), self.frames_retried.eq(bridge.frames_retried),
                     self.frames_dropped.eq(bridge.frames_dropped)]

        counter = Signal(self.heartbeat_bit + 1)
        m.d.sync += counter.eq(counter + 1)
        # Pulses are stretched so that a person sees them: about 1/16 s for busy, 1/2 s for errors.
        # The status bits are registered first: the LEDs need no single-cycle path from the core.
        busy, error = Signal(), Signal()
        m.d.sync += [busy.eq(bridge.busy | core.busy), error.eq(bridge.dropped | core.error)]
        busy_hold = Signal(self.heartbeat_bit - 3)
        err_hold = Signal(self.heartbeat_bit)
        with m.If(busy):
            m.d.sync += busy_hold.eq((1 << len(busy_hold)) - 1)
        with m.Elif(busy_hold != 0):
            m.d.sync += busy_hold.eq(busy_hold - 1)
        with m.If(error):
            m.d.sync += err_hold.eq((1 << len(err_hold)) - 1)
        with m.Elif(err_hold != 0):
            m.d.sync += err_hold.eq(err_hold - 1)
        m.d.comb += [self.led_heartbeat.eq(counter[-1]), self.led_busy.eq(busy_hold != 0),
                     self.led_error.eq(err_hold != 0)]
        return m


def ecp5_pll_params(f_in: float, f_out: float) -> dict[str, int]:
    """EHXPLLL dividers for ``f_out`` MHz from ``f_in`` MHz (VCO 400..800 MHz, exact or closest).

    Raises
    ------
    ValueError
        If no setting is within 1 % of ``f_out``.
    """
    best = None
    for clki in range(1, 129):
        pfd = f_in / clki
        if not 3.125 <= pfd <= 400:
            continue
        for clkfb in range(1, 81):
            fout = pfd * clkfb
            for clkop in range(1, 129):
                if not 400 <= fout * clkop <= 800:
                    continue
                err = abs(fout - f_out)
                if best is None or err < best[0]:
                    best = (err, {"CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                                  "CLKOP_CPHASE": (clkop - 1) // 2, "f_out": fout})
    if best is None or best[0] > 0.01 * f_out:
        raise ValueError(f"An ECP5 PLL cannot make {f_out} MHz from {f_in} MHz")
    return best[1]


def ecp5_pll(f_in: float, p: dict[str, int], clk_in, clk_out, locked=None) -> Instance:
    """The EHXPLLL instance for :func:`ecp5_pll_params` ``p``: ``clk_in`` (MHz ``f_in``) to ``clk_out``.

    Feedback is from CLKOP itself, so ``clk_out`` must be the clock of the domain it drives.
    ``locked`` (optional) receives the PLL's lock output.
    """
    lock = {} if locked is None else {"o_LOCK": locked}
    return Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=str(f_in), a_FREQUENCY_PIN_CLKOP=f"{p['f_out']:g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
        p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_DIV=p["CLKOP_DIV"], p_CLKOP_CPHASE=p["CLKOP_CPHASE"],
        p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=p["CLKFB_DIV"],
        i_RST=0, i_STDBY=0, i_CLKI=clk_in, i_CLKFB=clk_out, i_PHASESEL0=0, i_PHASESEL1=0,
        i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
        o_CLKOP=clk_out, **lock)


def ice40_pll_params(f_in: float, f_out: float) -> dict[str, int]:
    """SB_PLL40 (SIMPLE feedback) settings for ``f_out`` MHz from ``f_in`` MHz, as icepll computes them.

    Raises
    ------
    ValueError
        If no setting is within 1 % of ``f_out``.
    """
    best = None
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10 <= pfd <= 133:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 <= vco <= 1066:
                continue
            for divq in range(1, 7):
                fout = vco / (1 << divq)
                err = abs(fout - f_out)
                if best is None or err < best[0]:
                    rng = next(i for i, lim in enumerate((17, 26, 44, 66, 101), 1) if pfd < lim) \
                        if pfd < 101 else 6
                    best = (err, {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": rng,
                                  "f_out": fout})
    if best is None or best[0] > 0.01 * f_out:
        raise ValueError(f"An iCE40 PLL cannot make {f_out} MHz from {f_in} MHz")
    return best[1]


class BoardTop(Elaboratable):
    """A board's top: PLL -> ``sync``, :class:`BridgeSoc` on the board's pins.

    Until the PLL locks, ECP5 boards hold the clock (a DCCA's enable) and iCE40 boards the reset.

    Parameters
    ----------
    board : str
        A name in :data:`jacquard.boards.configs.BOARDS`.

    Raises
    ------
    ValueError
        If the board is unknown.
    """

    def __init__(self, board: str) -> None:
        from jacquard.boards.configs import board as board_config

        self.board = board_config(board)
        cfg = self.board
        if cfg.family == "ecp5":
            self.pll = ecp5_pll_params(cfg.input_clock_mhz, cfg.clock_mhz)
        else:
            self.pll = ice40_pll_params(cfg.input_clock_mhz, cfg.clock_mhz)
        f_hz = self.pll["f_out"] * 1e6
        self.soc = BridgeSoc(cfg.hardware_config(), memory_bytes=cfg.memory_bytes,
                             divisor=uart_divisor(f_hz, cfg.baud), timeout=int(f_hz * 0.02),
                             heartbeat_bit=max(4, int(f_hz).bit_length() - 1),
                             spram=cfg.family == "ice40")

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.board
        ecp5 = cfg.family == "ecp5"
        # ECP5: no reset net. The core clock is the PLL's through a global buffer (DCCA) whose
        # enable rises, and stays up, once the PLL has locked; until then the design sees no
        # clock edge, so every flop starts from the initial value the bitstream configures,
        # which is what a reset would give. A reset net into every flop's reset was the 85F
        # SoC's worst path once the core's flush was registered (21 ns from the synchronizer,
        # 9 ns of it one chip-wide net). The core's own stop (flush) resets its units as before.
        m.domains.sync = cd_sync = ClockDomain("sync", reset_less=ecp5)
        locked = Signal()
        clk_port = platform.request(platform.default_clk, dir="-")
        if ecp5:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_port)
            p = self.pll
            m.domains.pll = cd_pll = ClockDomain("pll", reset_less=True, local=True)
            assert cd_pll.clk.name == PLL_CLOCK_NET
            m.submodules.pll = ecp5_pll(cfg.input_clock_mhz, p, clk_buf.i, cd_pll.clk, locked)
            lock_sync = Signal(2)
            running = Signal()
            m.d.pll += [lock_sync.eq(Cat(locked, lock_sync[0])), running.eq(running | lock_sync[1])]
            m.submodules.clk_gate = Instance("DCCA", i_CLKI=cd_pll.clk, i_CE=running, o_CLKO=cd_sync.clk)
        else:
            p = self.pll
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
                p_FILTER_RANGE=p["FILTER_RANGE"],
                i_PACKAGEPIN=clk_port.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=cd_sync.clk, o_LOCK=locked)
        platform.add_clock_constraint(cd_sync.clk, self.pll["f_out"] * 1e6)
        if not ecp5:
            m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

        m.submodules.soc = soc = self.soc
        # Every subsignal raw ("-"): the ULX3S's uart also has rts/dtr, and a subsignal left out
        # would get Amaranth's deprecated implicit buffer.
        uart = platform.request("uart", 0, dir={io.name: "-" for io in platform.lookup("uart", 0).ios})
        m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [soc.rx.eq(rx_buf.i), tx_buf.o.eq(soc.tx)]
        for pin, led in zip(cfg.leds, (soc.led_heartbeat, soc.led_busy, soc.led_error), strict=True):
            if pin is None:
                continue
            res, idx = pin
            buf = io.Buffer("o", platform.request(res, idx, dir="-"))
            m.submodules[f"led_{res}_{idx}"] = buf
            m.d.comb += buf.o.eq(led)
        return m
