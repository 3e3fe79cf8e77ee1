"""ULX3S with the ECP5 LFE5U-25F: the small target, since the iCE40UP5K cannot hold the core.

The core is built for the ``ulx3s-25f`` config: the iCEBreaker's 4x2 array and op set (CONV with
its fused 2x2 max pool and LUT, MAXPOOL; ADD and the average pools run on the CPU), one
requantizer lane, kernels up to 3x3, sim-small's buffers. The full op set at sim-small's 16 MACs
took 50.8k of the 24.3k LUTs; docs/RESULTS.md, section synth-ulx3s-25f, has this build's figures.
Device memory is 16 KiB of block RAM (8 of the 56 DP16KD).
"""

from jacquard.boards.configs import BoardConfig


def _platform():
    from amaranth_boards.ulx3s import ULX3S_25F_Platform
    return ULX3S_25F_Platform()


BOARD = BoardConfig(
    name="ulx3s-25f", platform=_platform, family="ecp5", hw_config="ulx3s-25f",
    # The SoC routes at about 72 MHz (docs/RESULTS.md, synth-ulx3s-25f); the core clock stays at the
    # board's 25 MHz, which keeps the build inside `make test`'s time (a faster target makes
    # the router work longer). Raising it is a one-line change once that is measured.
    clock_mhz=25.0, input_clock_mhz=25.0,
    memory_bytes=16 * 1024,
    leds=(("led", 0), ("led", 1), ("led", 7)),
    logic_cells=("TRELLIS_COMB", "TRELLIS_FF"), dsp_cells=("MULT18X18D",), bram_cells=("DP16KD",),
    programmer=(("openFPGALoader", "-b", "ulx3s"), "openfpgaloader", ".bit"),
)
