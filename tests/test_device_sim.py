"""The ``sim`` backend: the RTL JacquardCore in Verilator through cocotb, driven by the host's own Driver.

Models compiled for ``sim-small`` and run through ``Device("sim")``; their outputs must equal the
``emu`` backend's and onnxruntime's bit for bit (issue 6's acceptance, small inputs):

* a model with residual adds (``model_zoo.residual``: ADD with a fused ReLU, ADD) - default tier;
* MTCNN R-Net (int8, onnxruntime-quantized) on a real ``skimage.data`` astronaut crop - default tier;
* a classifier with average pooling and a global average (``model_zoo.classifier``), a model with
  depthwise convolutions (``model_zoo.depthwise``), MTCNN P-Net and O-Net, and a small conv/pool
  CNN - slow tier.

The first Verilator build of the core takes minutes (it is cached per design); a model then runs
in seconds to a minute.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_compiler import _crops, assert_same, int8_model, mtcnn_imported, ort_outputs, random_feeds

from jacquard.host.compiler import compile_model, compile_plan
from jacquard.host.device import Device
from jacquard.host.errors import DeviceError
from jacquard.host.jqp import DeviceStep
from jacquard.host.partition import partition
from jacquard.sim import model_zoo
from jacquard.sim.isa import Op

SEED = 5


def conv_pool():
    """A 12x12x3 classifier built from CONV with fused pools and MAXPOOL."""
    b = model_zoo.Builder(11, (1, 3, 12, 12))
    y = b.conv("x", 3, 8, 3, pad=1)
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.conv(y, 8, 8, 3, pad=1)
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    return b, b.model([b.conv(y, 8, 10, 3, relu=False)])


def device_ops(exe) -> set[Op]:
    return {d.op for s in exe.steps if isinstance(s, DeviceStep) for d in exe.program(s).descriptors}


def run_on_sim(exe, model, feeds_list, where: str) -> dict:
    """Every sample on ``sim`` equals onnxruntime and ``emu``; returns the sim's counters."""
    with Device("emu", config=exe.config) as emu:
        emu.load(exe)
        want_emu = [emu.run(f) for f in feeds_list]
    with Device("sim", timeout=900) as dev:
        dev.load(exe)
        for i, f in enumerate(feeds_list):
            got = dev.run(f)
            assert_same(got, ort_outputs(model, f), f"{where} sample {i}: sim vs onnxruntime")
            assert_same(got, want_emu[i], f"{where} sample {i}: sim vs emu")
        return dev.counters()


def _zoo(build, ops: set[Op], n: int = 1):
    b, m = int8_model(build)
    exe = compile_model(m, "sim-small")
    assert ops <= device_ops(exe), (ops, device_ops(exe))
    assert all(r["where"] != "cpu" for r in exe.report if r["macs"] > 0), exe.report
    counters = run_on_sim(exe, m, random_feeds(b, n, SEED), f"{build.__name__} (seed {SEED})")
    assert counters["BUSY_CYCLES"] > 0 and counters["CYCLES"] >= counters["BUSY_CYCLES"], counters


def test_residual_adds_on_sim():
    _zoo(model_zoo.residual, {Op.ADD, Op.CONV})


@pytest.mark.slow
def test_classifier_with_average_pools_on_sim():
    _zoo(model_zoo.classifier, {Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.ADD, Op.CONV}, n=2)


@pytest.mark.slow
def test_depthwise_on_sim():
    _zoo(model_zoo.depthwise, {Op.CONV}, n=2)


@pytest.mark.slow
def test_small_conv_pool_model_on_sim():
    _zoo(conv_pool, {Op.CONV}, n=2)


# Layers too big for sim-small's buffers, which the partitioner keeps on the CPU (with that reason):
# O-Net's 1152-input dense layer needs 4608 bytes of weights per output-channel tile (buffer: 4096).
HOST_ON_SIM_SMALL = {"pnet": set(), "rnet": set(), "onet": {"dense_3_quant"}}


def _mtcnn(net: str):
    imported, name = mtcnn_imported(net)
    exe = compile_plan(partition(imported), "sim-small")
    on_host = {r["layer"]: r.get("reason", "") for r in exe.report
               if r["macs"] > 0 and r["where"] != "accelerator"}
    assert set(on_host) == HOST_ON_SIM_SMALL[net], exe.report
    assert all("weight buffer" in why for why in on_host.values()), on_host
    h, w = {"pnet": (64, 64), "rnet": (24, 24), "onet": (48, 48)}[net]
    x = _crops((h, w), 1, SEED + 200)  # a real astronaut crop, MTCNN's normalization
    run_on_sim(exe, imported.model, [{name: x.astype(np.float32)}], f"MTCNN {net} {h}x{w}")


def test_mtcnn_rnet_on_sim():
    _mtcnn("rnet")


@pytest.mark.slow
@pytest.mark.parametrize("net", ["pnet", "onet"])
def test_mtcnn_on_sim_slow(net):
    _mtcnn(net)


def test_sim_uri_takes_no_argument():
    with pytest.raises(DeviceError, match="takes no argument"):
        Device("sim:3")


def test_sim_memory_size_is_checked():
    with pytest.raises(ValueError, match="memory_size"):
        Device("sim", memory_bytes=1000)
