"""The ``uart:PORT`` backend end to end: a compiled int8 model runs on the simulated board over a lossy line.

The board SoC (host bridge + arbiter + memory + the RTL JacquardCore) runs in Verilator; the host is
``Device("uart:...", port=line)``, so only the serial port is simulated, with seeded byte loss and
corruption both ways. The outputs must equal onnxruntime's and the emulator's bit for bit, and every
request must be executed exactly once (the bridge's ``frames_ok`` equals the host's request count).

Why the line is byte level: the SoC is built with ``uart=False``, which leaves out the UART
serializers and exposes the bridge's byte streams, and the bench's line is event driven (it runs
per clock only while a byte moves). A bit-level line costs 10 x divisor clocks of Python per byte,
and a model load is thousands of bytes: that bench took many minutes. The serializers are covered
bit level on their own (``test_uart.py``) and with the bridge and a lossy bit-level line
(``test_host_bridge_cocotb.py``); what this test adds is the runtime's whole ``uart`` path (probe,
device check, program load, polling, output read-back) on the real core. The model is the
conv/max-pool classifier of ``test_device_sim``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_compiler import assert_same, int8_model, ort_outputs, random_feeds
from test_device_sim import conv_pool

from jacquard.boards.soc import BridgeSoc
from jacquard.host.compiler import compile_model
from jacquard.host.device import Device
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"
MEMORY = 4096


# `faults` is per byte: a 44-byte write frame with its response is hit about 25 % of the time at
# 0.005 and 60 % at 0.02, and every hit costs the host a link timeout (1000 cycles).
@pytest.mark.parametrize("seed,faults,runs", [
    pytest.param(21, 0.005, 1),
    # A clean line must need no retry at all (a wrong handshake would hide behind the retries).
    pytest.param(22, 0.0, 1, marks=pytest.mark.slow),
    pytest.param(23, 0.02, 2, marks=pytest.mark.slow),
])
def test_model_over_lossy_uart_is_bit_exact(tmp_path, seed, faults, runs):
    b, m = int8_model(conv_pool)
    exe = compile_model(m, "sim-small", memory_bytes=MEMORY)  # the board memory bounds a tap fold
    assert exe.memory_size <= MEMORY
    program = tmp_path / "model.jqp"
    exe.save(program)
    (feeds,) = random_feeds(b, 1, seed)
    np.savez(tmp_path / "feeds.npz", **feeds)
    dut = BridgeSoc(exe.config, memory_bytes=MEMORY, timeout=200, max_words=8, heartbeat_bit=8, uart=False)
    run_cocotb(dut, "cocotb_uart_device", simulator="verilator", test_dir=COCOTB_DIR,
               parameters={"seed": seed, "drop": faults / 2, "corrupt": faults / 2, "runs": runs,
                           "timeout_cycles": 1000, "config": exe.config.name, "memory_bytes": MEMORY,
                           "program": str(program), "feeds": str(tmp_path / "feeds.npz"),
                           "outputs": str(tmp_path / "out.npz")})
    saved = dict(np.load(tmp_path / "out.npz"))
    want_ort = ort_outputs(m, feeds)
    with Device("emu", config=exe.config) as emu:
        emu.load(exe)
        want_emu = emu.run(feeds)
    for run in range(runs):
        got = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith(f"{run}/")}
        assert_same(got, want_ort, f"seed={seed} run {run}: uart vs onnxruntime")
        assert_same(got, want_emu, f"seed={seed} run {run}: uart vs emu")
