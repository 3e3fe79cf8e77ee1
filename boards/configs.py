"""Per-board configuration: one ``boards/board_<name>.py`` file per board, found automatically.

A board file defines ``BOARD = BoardConfig(...)``: the amaranth-boards platform, the FPGA family,
the accelerator config (a name in :data:`jacquard.sim.isa.CONFIGS`: array size and buffers), the
core clock, the device memory and the UART. Adding a board is adding one such file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["BOARDS", "BoardConfig", "board"]

#: Families the SoC top knows how to clock and give memory to.
FAMILIES = ("ecp5", "ice40")
#: nextpnr's placers: ``heap`` (nextpnr's default, analytic then annealing), ``static`` (an
#: electrostatic analytic placer that spreads dense DSP/EBR regions better), ``sa`` (annealing only).
PLACERS = ("heap", "static", "sa")


@dataclass(frozen=True)
class BoardConfig:
    """One board.

    Parameters
    ----------
    name : str
        The board's name on the command line (``nox -s synthesize -- NAME``).
    platform : callable
        Returns the amaranth-boards platform.
    family : str
        ``"ecp5"`` or ``"ice40"``: selects the PLL primitive and the memory kind.
    hw_config : str
        The accelerator config, a key of :data:`jacquard.sim.isa.CONFIGS`.
    clock_mhz : float
        Core clock made by the PLL from the board clock.
    input_clock_mhz : float
        The board oscillator.
    memory_bytes : int
        On-chip device memory (BRAM on ECP5, SPRAM on iCE40).
    baud : int
        UART baud rate of the host bridge.
    leds : tuple of (str, int) or None
        ``(resource, index)`` of the heartbeat, busy and error LEDs, in that order; None for a
        status the board has no LED for.
    logic_cells, dsp_cells, bram_cells : tuple of str
        nextpnr cell types counted as logic, DSP and block RAM in the report.
    build_overrides : dict
        Extra arguments to ``platform.build`` (e.g. yosys options).
    placer : str
        nextpnr's placer for this board's builds, one of :data:`PLACERS`
        (``nox -s synthesize -- BOARD --placer ...`` overrides it).
    programmer : tuple
        (command, Debian package, bitstream suffix) used by ``flash``.

    Raises
    ------
    ValueError
        If the family or a size is out of range.
    """

    name: str
    platform: Callable[[], object]
    family: str
    hw_config: str
    clock_mhz: float
    input_clock_mhz: float
    memory_bytes: int
    baud: int = 115200
    leds: tuple[tuple[str, int] | None, ...] = (("led", 0), ("led", 1), ("led", 2))
    logic_cells: tuple[str, ...] = ()
    dsp_cells: tuple[str, ...] = ()
    bram_cells: tuple[str, ...] = ()
    build_overrides: dict[str, str] = field(default_factory=dict)
    programmer: tuple = ()
    placer: str = "heap"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, not {self.family!r}")
        if not isinstance(self.memory_bytes, int) or self.memory_bytes < 1024 or self.memory_bytes % 1024:
            raise ValueError(f"memory_bytes must be a positive multiple of 1024, not {self.memory_bytes!r}")
        if self.placer not in PLACERS:
            raise ValueError(f"placer must be one of {PLACERS}, not {self.placer!r}")
        if len(self.leds) != 3:
            raise ValueError(f"leds must name 3 LEDs (heartbeat, busy, error), not {self.leds!r}")

    def hardware_config(self):
        """The :class:`~jacquard.sim.isa.HardwareConfig` this board's core is built for."""
        from jacquard.sim.isa import CONFIGS
        return CONFIGS[self.hw_config]


def _discover() -> dict[str, BoardConfig]:
    import jacquard.boards as pkg

    boards = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("board_"):
            cfg = importlib.import_module(f"jacquard.boards.{info.name}").BOARD
            boards[cfg.name] = cfg
    return dict(sorted(boards.items()))


#: Every board, by name.
BOARDS: dict[str, BoardConfig] = _discover()


def board(name: str) -> BoardConfig:
    """The board called ``name``.

    Raises
    ------
    ValueError
        If there is no such board; the message lists the known ones.
    """
    if name not in BOARDS:
        raise ValueError(f"Board must be one of {sorted(BOARDS)}, not {name!r}")
    return BOARDS[name]
