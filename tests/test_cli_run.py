"""`jacquard compile`, `run` and `bench` in-process: files in, files out, equal to onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from test_compiler import SEED, assert_same, classifier, int8_model, ort_outputs, partitioned, random_feeds

from jacquard.host.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    b, m = int8_model(classifier)
    onnx.save(m, d / "cls.onnx")
    feeds = random_feeds(b, 1, SEED)[0]
    np.save(d / "x.npy", feeds["x"])
    b2, m2 = int8_model(partitioned)
    onnx.save(m2, d / "two.onnx")
    np.save(d / "x2.npy", random_feeds(b2, 1, SEED)[0]["x"])
    fb, fm = classifier()
    onnx.save(fm, d / "float.onnx")
    np.save(d / "calib.npy", fb.calibration(8))
    return d, m, m2


def test_compile_report_json(files, capsys):
    d, _, _ = files
    assert main(["compile", str(d / "cls.onnx"), "-o", str(d / "cls.jqp"), "--report", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"] == "ulx3s-85f" and (d / "cls.jqp").exists()
    assert {r["where"] for r in out["layers"]} == {"accelerator", "host"}
    assert sum(r["macs"] for r in out["layers"]) > 0
    assert out["memory"]["arena_bytes"] <= out["memory"]["arena_naive_bytes"]
    assert out["estimate"]["fps"] > 0


def test_compile_report_table(files, capsys):
    d, _, _ = files
    args = ["compile", str(d / "two.onnx"), "-o", str(d / "two.jqp"), "--report", "--config", "sim-small"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "accelerator MACs" in text and "cpu" in text and "sim-small" in text


@pytest.mark.parametrize("source", ["cls.onnx", "cls.jqp"])
def test_run_single_output_npy(files, source, capsys):
    d, m, _ = files
    if source.endswith(".jqp"):
        assert main(["compile", str(d / "cls.onnx"), "-o", str(d / "cls.jqp")]) == 0
    assert main(["run", str(d / source), str(d / "x.npy"), "-o", str(d / "y.npy"), "--json"]) == 0
    capsys.readouterr()
    want = ort_outputs(m, {"x": np.load(d / "x.npy")})
    (name,) = want
    assert_same({name: np.load(d / "y.npy")}, want, f"jacquard run {source}")


def test_run_several_outputs_npz(files, capsys):
    d, _, m2 = files
    assert main(["run", str(d / "two.onnx"), str(d / "x2.npy"), "-o", str(d / "out.npy")]) == 0
    assert "out.npz" in capsys.readouterr().out
    got = dict(np.load(d / "out.npz"))
    assert_same(got, ort_outputs(m2, {"x": np.load(d / "x2.npy")}), "jacquard run, two outputs")


def test_run_on_the_sim_backend(files, capsys):
    """`jacquard run --backend sim`: the RTL core in Verilator runs the accelerator part of a model whose
    other part (Softmax, Resize) stays on the CPU; the outputs equal onnxruntime's bit for bit."""
    d, _, m2 = files
    args = ["run", str(d / "two.onnx"), str(d / "x2.npy"), "-o", str(d / "sim.npy"), "--backend", "sim",
            "--config", "sim-small", "--timeout", "900"]
    assert main(args) == 0
    assert "sim.npz" in capsys.readouterr().out
    got = dict(np.load(d / "sim.npz"))
    assert_same(got, ort_outputs(m2, {"x": np.load(d / "x2.npy")}), "jacquard run --backend sim")


def test_run_float_model_with_calibration(files, capsys):
    d, _, _ = files
    args = ["run", str(d / "float.onnx"), str(d / "x.npy"), "-o", str(d / "yf.npy")]
    assert main(args) == 1
    assert "calibrate" in capsys.readouterr().err
    assert main([*args, "--calibrate", str(d / "calib.npy")]) == 0
    assert np.load(d / "yf.npy").shape == (1, 10)


@pytest.mark.parametrize("case,words", [
    ("junk", "not an ONNX model"), ("shape", "must have shape"), ("backend", "cannot open serial port"),
    ("config", "--config"),
])
def test_bad_input_exits_1_with_the_fix(files, capsys, case, words):
    d, _, _ = files
    (d / "junk.onnx").write_bytes(b"garbage")
    main(["compile", str(d / "cls.onnx"), "-o", str(d / "cls.jqp")])
    capsys.readouterr()
    args = {"junk": ["run", str(d / "junk.onnx"), str(d / "x.npy"), "-o", str(d / "o.npy")],
            "shape": ["run", str(d / "cls.jqp"), str(d / "x2.npy"), "-o", str(d / "o.npy")],
            "backend": ["run", str(d / "cls.jqp"), str(d / "x.npy"), "-o", str(d / "o.npy"),
                        "--backend", "uart:/dev/jacquard-no-such-port"],
            "config": ["run", str(d / "cls.jqp"), str(d / "x.npy"), "-o", str(d / "o.npy")]}[case]
    if case == "config":
        # A .jqp for icebreaker run on ulx3s-85f hardware (emu told its config explicitly).
        main(["compile", str(d / "cls.onnx"), "-o", str(d / "ice.jqp"), "--config", "icebreaker"])
        capsys.readouterr()
        from jacquard.host.device import Device
        from jacquard.host.errors import ProgramError
        from jacquard.host.jqp import load

        with Device("emu", config="ulx3s-85f") as dev, pytest.raises(ProgramError, match=words):
            dev.load(load(d / "ice.jqp"))
        return
    assert main(args) == 1
    assert words in capsys.readouterr().err.replace("\n", "")


def test_bench_json(files, capsys):
    d, _, _ = files
    assert main(["bench", str(d / "cls.onnx"), "--frames", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["frames"] == 6 and out["fps"] > 0
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_p95"]
    assert out["fpga_estimate"]["fps"] > 0 and 0 < out["fpga_estimate"]["mac_utilization"] < 1
