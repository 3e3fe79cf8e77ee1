"""ULX3S with the ECP5 LFE5U-85F: the reference target (128 MACs); device memory is block RAM."""

from jacquard.boards.configs import BoardConfig


def _platform():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


BOARD = BoardConfig(
    name="ulx3s-85f", platform=_platform, family="ecp5", hw_config="ulx3s-85f",
    clock_mhz=100.0, input_clock_mhz=25.0,
    # 128 KiB = 64 of the 208 DP16KD; the rest is left for the core's buffers.
    memory_bytes=128 * 1024,
    leds=(("led", 0), ("led", 1), ("led", 7)),
    logic_cells=("TRELLIS_COMB", "TRELLIS_FF"), dsp_cells=("MULT18X18D",), bram_cells=("DP16KD",),
    programmer=(("openFPGALoader", "-b", "ulx3s"), "openfpgaloader", ".bit"),
    # nextpnr's analytic `static` placer: with HeAP the datapath chain's 140 DSPs and 104 EBRs
    # left router2 stuck at about 5k overused wires; with `static` it routes in 47 iterations.
    placer="static",
)
