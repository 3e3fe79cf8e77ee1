"""ULX3S with the ECP5 LFE5U-25F: the small target, since the iCE40UP5K cannot hold the core.

Today the core does not fit here either (50.8k of 24.3k LUTs, 34 of 28 multipliers at 16 MACs:
docs/RESULTS.md, section synth-ulx3s-25f); the numbers say what has to shrink.

The core is built for ``sim-small`` (16 MACs), the config the simulation tests run, so a model
checked on ``Device("sim")`` runs unchanged on this board. Device memory is 16 KiB of block RAM
(8 of the 56 DP16KD); the core's buffers take most of the rest.
"""

from jacquard.boards.configs import BoardConfig


def _platform():
    from amaranth_boards.ulx3s import ULX3S_25F_Platform
    return ULX3S_25F_Platform()


BOARD = BoardConfig(
    name="ulx3s-25f", platform=_platform, family="ecp5", hw_config="sim-small",
    clock_mhz=50.0, input_clock_mhz=25.0,
    memory_bytes=16 * 1024,
    leds=(("led", 0), ("led", 1), ("led", 7)),
    logic_cells=("TRELLIS_COMB", "TRELLIS_FF"), dsp_cells=("MULT18X18D",), bram_cells=("DP16KD",),
    programmer=(("openFPGALoader", "-b", "ulx3s"), "openfpgaloader", ".bit"),
)
