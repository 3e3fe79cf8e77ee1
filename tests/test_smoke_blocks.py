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
