"""iCEBreaker (iCE40UP5K): the tiny target. 8 MACs fill the UP5K's 8 DSPs; device memory is SPRAM."""

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
