"""Device, Driver and the emu transport: bad input gets the right JacquardError, and the device stays usable.

Each failure case is followed by a good run on the same device, which must still equal onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_compiler import (
    SEED,
    Builder,
    assert_same,
    classifier,
    int8_model,
    ort_outputs,
    partitioned,
    random_feeds,
)

from jacquard.host.compiler import compile_model
from jacquard.host.device import Device
from jacquard.host.errors import DeviceError, DeviceTimeout, ModelError, ProgramError, ShapeError
from jacquard.sim.isa import DESCRIPTOR_BYTES, ErrorCode


@pytest.fixture(scope="module")
def model():
    b, m = int8_model(classifier)
    return b, m, compile_model(m, "ulx3s-85f")


def _good_run(dev, b, m, seed):
    feeds = random_feeds(b, 1, seed)[0]
    assert_same(dev.run(feeds), ort_outputs(m, feeds), f"good run after a failure (seed {seed})")


@pytest.mark.parametrize("bad,words", [
    (lambda x: x[:, :, :10], "must have shape"),
    (lambda x: x.astype(np.float64), "must have dtype float32"),
    (lambda x: x[None], "must have shape"),
])
def test_wrong_input_shape_or_dtype(model, bad, words):
    b, m, exe = model
    with Device("emu") as dev:
        dev.load(exe)
        x = random_feeds(b, 1, SEED)[0]["x"]
        with pytest.raises(ShapeError, match=words) as e:
            dev.run({"x": bad(x)})
        assert "x" in str(e.value)
        with pytest.raises(ShapeError, match="missing"):
            dev.run({"y": x})
        _good_run(dev, b, m, SEED)


def test_program_for_another_config_is_refused(model):
    b, m, exe = model
    with Device("emu", config="icebreaker") as dev:
        with pytest.raises(ProgramError, match="--config icebreaker"):
            dev.load(exe)
        dev.load(compile_model(m, "icebreaker"))
        _good_run(dev, b, m, SEED + 1)


def test_timeout_aborts_and_leaves_the_device_usable(model):
    b, m, exe = model
    with Device("emu", hang=True, timeout=0.2) as dev:
        dev.load(exe)
        with pytest.raises(DeviceTimeout, match=r"did not finish within 0\.2 s"):
            dev.run(random_feeds(b, 1, SEED)[0])
        assert not dev.transport.read_reg("STATUS") & 1  # not busy: the abort took
        dev.transport.hang = False  # the fault clears, as after a glitch
        _good_run(dev, b, m, SEED + 2)


def test_core_errors_come_from_the_status_registers(model):
    b, m, exe = model
    with Device("emu") as dev:
        dev.load(exe)
        step = exe.device_steps()[0]
        # Corrupt descriptor 2's opcode in device memory: the core refuses it with BAD_OPCODE.
        at = step.prog_addr + 16 + 2 * DESCRIPTOR_BYTES
        word = int.from_bytes(dev.transport.read_mem(at, 4), "little")
        dev.transport.write_mem(at, ((word & ~0xF) | 0xF).to_bytes(4, "little"))
        with pytest.raises(DeviceError, match=f"{ErrorCode.BAD_OPCODE.name} in layer {step.layers[2]!r}"):
            dev.run(random_feeds(b, 1, SEED)[0])
        dev.load(exe)  # reloading rewrites the image
        _good_run(dev, b, m, SEED + 3)


def test_corrupt_or_non_onnx_model(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01garbage")
    with Device("emu") as dev:
        with pytest.raises(ModelError, match="not an ONNX model"):
            dev.load(str(tmp_path / "junk.onnx"))


def test_dynamic_shape_needs_a_shape():
    b, m = classifier()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    int8 = b.calibration()
    with pytest.raises(ShapeError, match="input_shapes"):
        compile_model(m.SerializeToString(), calibrate=int8)
    exe = compile_model(m.SerializeToString(), input_shapes={"x": (1, 3, 20, 20)}, calibrate=int8)
    assert exe.input_shapes["x"] == (1, 3, 20, 20)


@pytest.mark.parametrize("uri,words", [("uart:/dev/jacquard-no-such-port", "cannot open serial port"),
                                       ("pcie:0", "unknown device URI"), ("emu:x", "non-negative integer")])
def test_backends_that_cannot_open(uri, words):
    with pytest.raises(DeviceError, match=words):
        Device(uri)


def test_run_before_load():
    with Device("emu:1") as dev, pytest.raises(DeviceError, match="load"):
        dev.run({"x": np.zeros((1, 3, 20, 20), np.float32)})


def test_pipelined_batch_equals_one_by_one():
    b, m = int8_model(partitioned)
    exe = compile_model(m, "ulx3s-85f")
    frames = random_feeds(b, 6, SEED + 5)
    with Device("emu") as dev:
        dev.load(exe)
        piped = dev.run_batch(frames, pipeline=True)
        plain = dev.run_batch(frames, pipeline=False)
    assert len(piped) == len(frames)
    for i, (p, q, f) in enumerate(zip(piped, plain, frames, strict=True)):
        assert_same(p, q, f"frame {i}")
        assert_same(p, ort_outputs(m, f), f"frame {i} vs onnxruntime (seed {SEED + 5})")


def test_pipelined_batch_reports_a_bad_frame(model):
    b, m, exe = model
    frames = random_feeds(b, 3, SEED)
    frames[1] = {"x": frames[1]["x"][..., :5]}
    with Device("emu") as dev:
        dev.load(exe)
        with pytest.raises(ShapeError):
            dev.run_batch(frames)
        _good_run(dev, b, m, SEED + 6)


def test_counters_follow_the_performance_model(model):
    b, _, exe = model
    with Device("emu") as dev:
        dev.load(exe)
        dev.transport.write_reg("CTRL", 1 << 3)  # clear_counters
        dev.run(random_feeds(b, 1, SEED)[0])
        c = dev.counters()
        est = dev.estimate()
    assert c["CYCLES"] == est.cycles > 0
    assert c["DMA_READ_BYTES"] + c["DMA_WRITE_BYTES"] == est.dma_bytes


def test_single_array_input(model):
    b, m, exe = model
    x = random_feeds(b, 1, SEED + 7)[0]
    with Device("emu") as dev:
        dev.load(exe)
        assert_same(dev.run(x["x"]), ort_outputs(m, x), "single array")


def test_builder_is_valid_onnx():
    b = Builder(0, (1, 2, 4, 4))
    onnx.checker.check_model(b.model([b.conv("x", 2, 2, 1)]))
