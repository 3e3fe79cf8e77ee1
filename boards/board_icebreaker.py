"""iCEBreaker (iCE40UP5K): the tiny target. 8 MACs fill the UP5K's 8 DSPs; device memory is SPRAM.

The core does not fit the UP5K's 5280 logic cells, even cut to the ``icebreaker`` config's op set
(CONV with fused pool and LUT, MAXPOOL) and one requantizer lane: yosys maps such a 4x2 core
alone (sim-small's buffers) to 18.6k LUT4 and 3.4k carry cells (ECP5; the sequencer 5.1k + 1.7k,
the register block 3.8k, each DMA burster 2.1k + 0.2k, the line buffer 1.4k + 0.3k), more than
three UP5Ks before the SoC. docs/RESULTS.md, section synth-icebreaker, has the placer's figures;
the ULX3S-25F is the small target (``board_ulx3s_25f``).
"""

from jacquard.boards.configs import BoardConfig


def _platform():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return ICEBreakerPlatform()


BOARD = BoardConfig(
    name="icebreaker", platform=_platform, family="ice40", hw_config="icebreaker",
    clock_mhz=24.0, input_clock_mhz=12.0,
    # Two SB_SPRAM256KA side by side give 16 Ki 32-bit words; the other two stay for the core.
    memory_bytes=64 * 1024,
    # The board has two user LEDs: green is the heartbeat, red the error; busy has none.
    leds=(("led_g", 0), None, ("led_r", 0)),
    logic_cells=("ICESTORM_LC",), dsp_cells=("ICESTORM_DSP",), bram_cells=("ICESTORM_RAM",),
    build_overrides={"synth_opts": "-dsp"},
    programmer=(("iceprog",), "fpga-icestorm", ".bin"),
)
