# amaranth: UnusedElaboratable=no
"""boards/smoke.py: every registered block elaborates under the smoke top (big ones: slow)."""
# (first line: the refused block name raises in SmokeTop.__init__)

import pytest
from amaranth.back import rtlil

from jacquard.boards.smoke import BLOCKS, SmokeTop

SLOW = {"pe_array", "postproc", "datapath", "eltwise_add"}  # 15 s or more each to elaborate


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(BLOCKS)])
def test_smoke_top_elaborates(name):
    text = rtlil.convert(SmokeTop(name), ports=[])
    assert "cell \\dut" in text or "dut" in text
    assert "xor_l0" in text  # the outputs are reduced onto the LED


def test_smoke_top_refuses_unknown_block():
    with pytest.raises(ValueError, match="Block must be one of"):
        SmokeTop("nope")


def test_smoke_stimulus_drives_every_bit():
    """The LFSR that feeds every block input takes both values on every bit and does not repeat
    early (a rotate that cancelled bit 31 against its tap once held 10 of 32 stimulus bits at 0)."""
    from amaranth.sim import Simulator

    top = SmokeTop("mac")
    sim = Simulator(top)
    sim.add_clock(1e-8)
    seen = []

    async def bench(ctx):
        for _ in range(3000):
            seen.append(ctx.get(top.lfsr))
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    ones = zeros = 0
    for v in seen:
        ones |= v
        zeros |= ~v & 0xFFFF_FFFF
    assert ones == zeros == 0xFFFF_FFFF, f"stuck bits: {~(ones & zeros) & 0xFFFF_FFFF:#010x}"
    assert len(set(seen)) == len(seen), "the LFSR repeats within 3000 cycles"
