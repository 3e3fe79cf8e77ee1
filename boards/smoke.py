"""A board top that exercises a block on real fabric with nothing but a clock and an LED.

An LFSR drives the block's inputs and its outputs are XOR-reduced onto an LED, so synthesis
cannot optimise the block away and timing covers its real paths. Used to measure one block's
Fmax and resources (``nox -s synthesize -- BOARD --block NAME``).
"""

from amaranth.hdl import Cat, Elaboratable, Module, Signal, Value
from amaranth.lib import io

from jacquard.rtl.mac import StreamMac

__all__ = ["BLOCKS", "SmokeTop"]

# Blocks that can be put under the smoke top, by name.
BLOCKS = {"mac": StreamMac}


class SmokeTop(Elaboratable):
    """LFSR -> block -> XOR-reduce -> LED.

    Parameters
    ----------
    block : str
        A name in :data:`BLOCKS`.

    Raises
    ------
    ValueError
        If ``block`` is not a known block.
    """

    def __init__(self, block: str = "mac") -> None:
        if block not in BLOCKS:
            raise ValueError(f"Block must be one of {sorted(BLOCKS)}, not {block!r}")
        self.block = block

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.dut = dut = BLOCKS[self.block]()

        in_bits = len(Value.cast(dut.i.payload)) + 2
        # A 32-bit maximal-length Galois LFSR (taps 32, 22, 2, 1) is long enough for any block input.
        lfsr = Signal(32, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0]) ^ (lfsr[0].replicate(32) & 0x80200003))
        stim = Signal(in_bits)
        m.d.comb += stim.eq(lfsr.replicate((in_bits + 31) // 32)[:in_bits])
        m.d.comb += [
            dut.i.payload.eq(stim[2:]),
            dut.i.valid.eq(stim[0]),
            dut.o.ready.eq(stim[1]),
        ]
        led = Signal()
        m.d.sync += led.eq(Value.cast(dut.o.payload).xor() ^ dut.o.valid ^ dut.i.ready)
        if platform is not None:
            m.submodules.led = led_buf = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.d.comb += led_buf.o.eq(led)
        return m
