"""The ``sim`` backend: the RTL JacquardCore in Verilator through cocotb, driven by the host's own Driver.

A small int8 CNN (conv, max pool, conv, max pool, conv classifier head: the ops the RTL core runs) is
compiled for ``sim-small`` and run through ``Device("sim")``; its outputs must equal the ``emu``
backend's and onnxruntime's bit for bit. The first Verilator build of the core takes minutes (it
is cached per design), so the test is in the slow tier.
"""

from __future__ import annotations

import pytest
from test_compiler import Builder, assert_same, int8_model, ort_outputs, random_feeds

from jacquard.host.compiler import compile_model
from jacquard.host.device import Device
from jacquard.host.errors import DeviceError
from jacquard.host.jqp import DeviceStep

SEED = 5


def conv_pool():
    """A 12x12x3 classifier built only from the ops the RTL core runs (CONV with fused pools, MAXPOOL)."""
    b = Builder(11, (1, 3, 12, 12))
    y = b.conv("x", 3, 8, 3, pad=1)
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.conv(y, 8, 8, 3, pad=1)
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    return b, b.model([b.conv(y, 8, 10, 3, relu=False)])


def compiled(config: str = "sim-small"):
    b, m = int8_model(conv_pool)
    exe = compile_model(m, config)
    layers = sum(len(s.layers) for s in exe.steps if isinstance(s, DeviceStep))
    assert layers == 3, f"every conv must run on the device, got {exe.steps}"
    return b, m, exe


@pytest.mark.slow
def test_small_model_on_sim_equals_emu_and_onnxruntime():
    b, m, exe = compiled()
    feeds = random_feeds(b, 2, SEED)
    with Device("emu", config=exe.config) as emu:
        emu.load(exe)
        want_emu = [emu.run(f) for f in feeds]
    with Device("sim", timeout=600) as dev:
        dev.load(exe)
        for i, f in enumerate(feeds):
            got = dev.run(f)
            assert_same(got, ort_outputs(m, f), f"seed={SEED} sample {i} sim vs onnxruntime")
            assert_same(got, want_emu[i], f"seed={SEED} sample {i} sim vs emu")
        counters = dev.counters()
    assert counters["MAC_ACTIVE_CYCLES"] > 0 and counters["CYCLES"] >= counters["MAC_ACTIVE_CYCLES"], counters


def test_sim_uri_takes_no_argument():
    with pytest.raises(DeviceError, match="takes no argument"):
        Device("sim:3")


def test_sim_memory_size_is_checked():
    with pytest.raises(ValueError, match="memory_size"):
        Device("sim", memory_bytes=1000)
