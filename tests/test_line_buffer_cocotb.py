"""LineBuffer under cocotb: random maps on Icarus (short) and Verilator (a few; many and larger: slow)."""

import random
from pathlib import Path

import numpy as np
import pytest
from test_line_buffer import Case, random_case, random_map

from jacquard.rtl.line_buffer import LineBuffer, LineBufferConfig
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"


def packed(case: Case) -> int:
    return LineBufferConfig().const(case.config()).as_bits()


def run(tmp_path, simulator: str, seed: int, case: Case, gap: float, *, c_par: int, max_width: int,
        max_channels: int, max_kh: int = 7, bad: Case | None = None) -> float:
    """Run ``case`` (after refusing ``bad``, if given); return taps per cycle, first to last tap."""
    x = random_map(np.random.default_rng(seed), case)
    taps, first, last = case.taps(x, c_par)
    path = tmp_path / "case.npz"
    np.savez(path, x=x, taps=taps, first=first, last=last)
    rate_file = tmp_path / "rate.txt"
    parameters = {"seed": seed, "c_par": c_par, "gap": gap, "case": str(path), "config": packed(case),
                  "desc": repr(case), "rate_file": str(rate_file)}
    if bad is not None:
        parameters.update(bad_config=packed(bad), bad_desc=repr(bad))
    dut = LineBuffer(c_par=c_par, max_width=max_width, max_channels=max_channels, max_kh=max_kh)
    run_cocotb(dut, "cocotb_line_buffer", simulator=simulator, test_dir=COCOTB_DIR,
               name=f"lb_{c_par}_{max_width}_{max_channels}_{max_kh}", parameters=parameters)
    return float(rate_file.read_text())


SMALL = {"c_par": 4, "max_width": 12, "max_channels": 8}


@pytest.mark.parametrize("seed", [11, 12])
def test_line_buffer_icarus(tmp_path, seed):
    rng = random.Random(seed)
    run(tmp_path, "icarus", seed, random_case(rng, 4, 12, 8, max_beats=600), 0.3, **SMALL)


def test_line_buffer_icarus_refuses_bad_config(tmp_path):
    good = Case(4, 5, 8, 3, 3, 1, (1, 1, 1, 1), zero_point=-9)
    run(tmp_path, "icarus", 13, good, 0.2, bad=Case(4, 5, 8, 3, 3, 0, (1, 1, 1, 1)), **SMALL)


@pytest.mark.parametrize(("seed", "gap", "case"), [
    (21, 0.3, Case(10, 12, 8, 3, 3, 1, (1, 1, 1, 1), zero_point=3, oc_tiles=2)),
    (22, 0.5, Case(11, 12, 4, 7, 7, 2, (3, 3, 3, 3), zero_point=-128)),
    (23, 0.0, Case(9, 11, 8, 3, 3, 2, (0, 0, 1, 1), zero_point=7, depthwise=True)),
])
def test_line_buffer_verilator(tmp_path, seed, gap, case):
    run(tmp_path, "verilator", seed, case, gap, **SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 116))
def test_line_buffer_verilator_many(tmp_path, seed):
    rng = random.Random(seed)
    case = random_case(rng, 8, 40, 32, max_beats=60000)
    run(tmp_path, "verilator", seed, case, [0.0, 0.3, 0.6][seed % 3], c_par=8, max_width=40, max_channels=32)


# Steady-state feed for the PE array at the reference c_par=8 on realistic maps, input and output
# never stalled: taps per cycle from the first tap to the last.
THROUGHPUT = {
    "3x3 s1 56x56x32": (Case(56, 56, 32, 3, 3, 1, (1, 1, 1, 1)), 0.99),
    "3x3 s2 56x56x32": (Case(56, 56, 32, 3, 3, 2, (1, 1, 1, 1)), 0.99),
    "1x1 s1 56x56x32": (Case(56, 56, 32, 1, 1, 1, (0, 0, 0, 0)), 0.99),
    "1x1 s1 56x56x32, 2 oc tiles": (Case(56, 56, 32, 1, 1, 1, (0, 0, 0, 0), oc_tiles=2), 0.99),
    "7x7 s2 112x112x8 (first layer)": (Case(112, 112, 8, 7, 7, 2, (3, 3, 3, 3)), 0.97),
    "dw 3x3 s1 56x56x32": (Case(56, 56, 32, 3, 3, 1, (1, 1, 1, 1), depthwise=True), 0.99),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", THROUGHPUT)
def test_line_buffer_throughput(tmp_path, name):
    case, at_least = THROUGHPUT[name]
    rate = run(tmp_path, "verilator", 7, case, 0.0, c_par=8, max_width=128, max_channels=32)
    print(f"{name}: {rate:.4f} taps/cycle")
    assert rate >= at_least, f"{name}: {rate:.4f} taps/cycle, expected >= {at_least}"
