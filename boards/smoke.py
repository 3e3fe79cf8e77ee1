"""A board top that exercises a block on real fabric with nothing but a clock and an LED.

An LFSR-fed shift register drives every input of the block (stream payloads and ``valid``s, the
``ready`` of every output stream, configuration ports) and every output is XOR-reduced onto an LED,
so synthesis cannot optimise the block away and timing covers its real paths. Used to measure one
block's Fmax and resources (``nox -s synthesize -- BOARD --block NAME``).

The top works for any :class:`~amaranth.lib.wiring.Component`: it walks the block's signature.
The stimulus and the XOR reduction are registered stages of their own, so they never set Fmax.
On ECP5 the block runs from the board's PLL at the board's core clock (100 MHz on ULX3S-85F), as in
the SoC, so nextpnr places for that target.
"""

from collections.abc import Callable

from amaranth.hdl import Cat, ClockDomain, Elaboratable, Module, Signal, Value
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In

from jacquard.rtl.avg_pool import AvgPool
from jacquard.rtl.datapath import Datapath, block_sizes
from jacquard.rtl.dma_reader import DmaReader
from jacquard.rtl.dma_writer import DmaWriter
from jacquard.rtl.eltwise_add import EltwiseAdd
from jacquard.rtl.fp32 import ScaleUnit
from jacquard.rtl.host_bridge import HostBridge
from jacquard.rtl.line_buffer import LineBuffer
from jacquard.rtl.mac import StreamMac
from jacquard.rtl.maxpool2x2 import MaxPool2x2
from jacquard.rtl.pe_array import PEArray
from jacquard.rtl.pool import Pool
from jacquard.rtl.postproc import PostProcessor
from jacquard.rtl.requantizer import Requantizer
from jacquard.rtl.sequencer import Sequencer

__all__ = ["BLOCKS", "SmokeTop", "block_macs"]

def _pe_array() -> PEArray:
    s = block_sizes()
    return PEArray(s["c_par"], s["oc_par"], s["weight_depth"])


def _line_buffer() -> LineBuffer:
    s = block_sizes()
    return LineBuffer(c_par=s["c_par"], max_width=s["max_width"], max_channels=s["lb_channels"],
                      max_kh=s["max_kh"])


def _postproc() -> PostProcessor:
    s = block_sizes()
    return PostProcessor(s["oc_par"], s["n_requant"], s["pp_tiles"], lut=False)


def _maxpool2x2() -> MaxPool2x2:
    s = block_sizes()
    return MaxPool2x2(s["oc_par"], s["max_width"], s["pp_tiles"], s["pool_depth"])


def _sequencer() -> Sequencer:
    from jacquard.sim.isa import CONFIGS

    return Sequencer.for_config(CONFIGS["ulx3s-85f"])


def _dma(cls: type[DmaReader] | type[DmaWriter]) -> Callable[[], wiring.Component]:
    from jacquard.rtl.core import _MAX_BURST, _OUTSTANDING
    from jacquard.sim.isa import CONFIGS

    # As JacquardCore builds them: 32-bit addresses, a bus word of dma_align bytes, 16-bit tags.
    bits = 8 * CONFIGS["ulx3s-85f"].dma_align
    return lambda: cls(32, bits, _MAX_BURST, _OUTSTANDING, 16)


#: Blocks that can be put under the smoke top, by name (datapath ones at the ULX3S-85F size, the
#: core's other units as JacquardCore and the board SoC build them), so each can be timed alone.
BLOCKS: dict[str, Callable[[], wiring.Component]] = {
    "mac": StreamMac,
    "pe_array": _pe_array,
    "line_buffer": _line_buffer,
    "postproc": _postproc,
    "maxpool2x2": _maxpool2x2,
    "requantizer": Requantizer,
    "datapath": Datapath,
    "sequencer": _sequencer,
    "scale_unit": ScaleUnit,
    "dma_reader": _dma(DmaReader),
    "dma_writer": _dma(DmaWriter),
    "avg_pool": lambda: AvgPool(block_sizes()["c_par"]),
    "gap_sum": lambda: Pool(block_sizes()["c_par"]),
    "eltwise_add": lambda: EltwiseAdd(block_sizes()["c_par"], lanes=1),  # as JacquardCore builds it
    "host_bridge": HostBridge,
}


def block_macs(name: str) -> int:
    """Multipliers a block's smoke top computes with (for the report's MACs and peak GOPS).

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`BLOCKS`.
    """
    if name not in BLOCKS:
        raise ValueError(f"Block must be one of {sorted(BLOCKS)}, not {name!r}")
    if name in ("pe_array", "datapath"):
        return block_sizes()["macs"]
    return 1 if name == "mac" else 0


def _ports(block: wiring.Component) -> tuple[list[Value], list[Value]]:
    """The block's input and output port values, flattened through stream and struct members."""
    inputs, outputs = [], []
    for _path, member, value in block.signature.flatten(block):
        (inputs if member.flow == In else outputs).append(Value.cast(value))
    return inputs, outputs


def _xor_tree(m: Module, bits: Value, fan_in: int = 16) -> Value:
    """XOR-reduce ``bits`` through register stages of ``fan_in``-bit XORs (2 LUT levels each)."""
    level = 0
    while len(bits) > 1:
        groups = [bits[j:j + fan_in] for j in range(0, len(bits), fan_in)]
        regs = Signal(len(groups), name=f"xor_l{level}")
        m.d.sync += regs.eq(Cat(g.xor() for g in groups))
        bits, level = regs, level + 1
    return bits


class SmokeTop(Elaboratable):
    """LFSR -> shift register -> block -> pipelined XOR reduction -> LED.

    Parameters
    ----------
    block : str
        A name in :data:`BLOCKS`.
    board : str or None
        A name in :data:`jacquard.boards.configs.BOARDS`; on an ECP5 board the block is clocked
        from the PLL at the board's core clock. None: the board whose platform builds the top.

    Raises
    ------
    ValueError
        If ``block`` is not a known block.
    """

    def __init__(self, block: str = "mac", board: str | None = None) -> None:
        if block not in BLOCKS:
            raise ValueError(f"Block must be one of {sorted(BLOCKS)}, not {block!r}")
        self.block = block
        self.board = board
        #: The stimulus generator, a 32-bit maximal-length Galois LFSR.
        self.lfsr = Signal(32, init=1)

    def _clock(self, m: Module, platform) -> None:
        from jacquard.boards.configs import BOARDS
        from jacquard.boards.configs import board as board_config
        from jacquard.boards.soc import ecp5_pll, ecp5_pll_params

        if self.board is not None:
            cfg = board_config(self.board)
        else:  # the board whose platform this is
            matches = [b for b in BOARDS.values() if type(b.platform()) is type(platform)]
            if not matches:
                return  # the platform's default clock
            cfg = matches[0]
        if cfg.family != "ecp5":
            return  # the platform's default clock
        m.domains.sync = cd_sync = ClockDomain("sync")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request(platform.default_clk, dir="-"))
        p = ecp5_pll_params(cfg.input_clock_mhz, cfg.clock_mhz)
        m.submodules.pll = ecp5_pll(cfg.input_clock_mhz, p, clk_buf.i, cd_sync.clk)
        platform.add_clock_constraint(cd_sync.clk, p["f_out"] * 1e6)

    def elaborate(self, platform) -> Module:
        m = Module()
        if platform is not None:
            self._clock(m, platform)
        m.submodules.dut = dut = BLOCKS[self.block]()
        inputs, outputs = _ports(dut)

        # A 32-bit maximal-length Galois LFSR (taps 32, 22, 2, 1) shifts 32 fresh bits per cycle
        # into a register as wide as all inputs: every input bit is its own flop, so yosys cannot
        # merge inputs or find constants.
        lfsr = self.lfsr
        # Shift right; the bit shifted out feeds back through the taps (bit 31 among them). A
        # rotate here instead cancelled bit 31 against its tap and held it at 0: 10 of every 32
        # stimulus bits were constants, and yosys simplified the blocks they fed.
        m.d.sync += lfsr.eq(Cat(lfsr[1:], 0) ^ (lfsr[0].replicate(32) & 0x80200003))
        in_bits = sum(len(v) for v in inputs)
        stim = Signal(max(in_bits, 33))
        m.d.sync += stim.eq(Cat(lfsr, stim[:-32]))
        pos = 0
        for v in inputs:
            m.d.comb += v.eq(stim[pos:pos + len(v)])
            pos += len(v)

        led = _xor_tree(m, Cat(*outputs))
        if platform is not None:
            m.submodules.led = led_buf = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.d.comb += led_buf.o.eq(led)
        return m
