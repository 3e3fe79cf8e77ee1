"""Issue 6 acceptance: a float model quantized on import keeps onnxruntime int8's accuracy.

The project's own NumPy CNN (:mod:`jacquard.host.train_fashion`, trained once and cached) is exported
as a float ONNX model. Calibrated on 200 training images, it is quantized two ways: (a) by Jacquard on
import (``load_model(..., calibrate=)`` -> partition -> compile -> ``Device("emu")``) and (b) by
onnxruntime's own ``quantize_static`` (int8 x int8, per-channel weights) run in onnxruntime. On the
Fashion-MNIST test images, Jacquard's logits must equal onnxruntime's int8 logits bit for bit, and its
accuracy must be within 1 point of onnxruntime's int8 accuracy. The default tier evaluates the first
``SUBSET`` test images; the slow tier all 10,000.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from jacquard.host import train_fashion as tf
from jacquard.host.compiler import compile_plan
from jacquard.host.datasets import fashion_mnist, read_idx
from jacquard.host.device import Device
from jacquard.host.importer import load_model
from jacquard.host.material import MaterialError
from jacquard.host.partition import partition

CONFIG = "ulx3s-85f"
CALIB_SEED = 6
CALIB_IMAGES = 200
SUBSET = 1000  # default tier; the emu runs about 6 ms per image on this machine class


def load_fashion() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        return {split: fashion_mnist(split) for split in ("train", "test")}
    except MaterialError as e:
        pytest.skip(str(e))


def calibration(train_images: np.ndarray) -> np.ndarray:
    """``CALIB_IMAGES`` seeded random training images as the model's float input."""
    idx = np.random.default_rng(CALIB_SEED).choice(len(train_images), CALIB_IMAGES, replace=False)
    return tf.preprocess(train_images[np.sort(idx)])


def ort_quantize(float_path, calib: np.ndarray) -> onnx.ModelProto:
    """onnxruntime's own static quantization of the float model: int8 x int8, per-channel, QOperator."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{tf.INPUT: calib}])  # one batch of all samples (the input's N is dynamic)

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "int8.onnx")
        quantize_static(str(float_path), out, Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        return onnx.load(out)


def ort_logits(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([tf.OUTPUT], {tf.INPUT: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def evaluate(n_test: int) -> dict:
    """Train (or load) the model, quantize it both ways, and run both on the first ``n_test`` test images.

    Returns the logits and accuracies of the float model, onnxruntime int8 and Jacquard int8 (emu),
    the emu's throughput and the performance model's estimate.
    """
    data = load_fashion()
    float_path, info = tf.trained_model()
    calib = calibration(data["train"][0])
    test_x, test_y = data["test"]
    x, y = tf.preprocess(test_x[:n_test]), test_y[:n_test]

    imported = load_model(float_path, {tf.INPUT: (1, 1, 28, 28)}, calibrate=calib)
    exe = compile_plan(partition(imported), CONFIG)
    with Device("emu", config=CONFIG) as dev:
        dev.load(exe)
        t0 = time.perf_counter()
        outs = dev.run_batch([x[i:i + 1] for i in range(len(x))])
        emu_seconds = time.perf_counter() - t0
        estimate = dev.estimate()
    jq = np.concatenate([o[tf.OUTPUT] for o in outs])

    int8 = ort_quantize(float_path, calib)
    ort_int8 = ort_logits(int8, x)
    float_logits = ort_logits(float_path, x)
    acc = {name: tf.accuracy(v, y) for name, v in
           (("float", float_logits), ("ort_int8", ort_int8), ("jacquard_int8", jq))}
    return {"n": len(x), "logits": {"float": float_logits, "ort_int8": ort_int8, "jacquard_int8": jq},
            "accuracy": acc, "emu_fps": len(x) / emu_seconds, "estimate": estimate, "report": exe.report,
            "train": info, "model": float_path}


def check(result: dict) -> None:
    acc, lg = result["accuracy"], result["logits"]
    print(f"\nFashion-MNIST, first {result['n']} test images: float {100 * acc['float']:.2f} %, "
          f"onnxruntime int8 {100 * acc['ort_int8']:.2f} %, "
          f"Jacquard int8 {100 * acc['jacquard_int8']:.2f} %, emu {result['emu_fps']:.0f} fps "
          f"(calibration seed {CALIB_SEED})")
    # Every convolution and the dense layer run on the accelerator.
    assert all(r["where"] == "accelerator" for r in result["report"] if r["macs"] > 0), result["report"]
    want, got = lg["ort_int8"], lg["jacquard_int8"]
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    bad = np.argwhere(got != want)
    assert bad.size == 0, (f"{len(bad)} logits differ from onnxruntime int8; first at (image, class) "
                           f"{tuple(bad[0])}: expected {want[tuple(bad[0])]}, got {got[tuple(bad[0])]}")
    assert abs(acc["jacquard_int8"] - acc["ort_int8"]) <= 0.01, acc
    # The trainer and the quantization are sane: a good classifier that int8 barely hurts.
    assert acc["float"] >= 0.85, acc
    assert acc["ort_int8"] >= acc["float"] - 0.02, acc


def test_quantize_on_import_matches_onnxruntime_int8_on_a_subset():
    check(evaluate(SUBSET))


@pytest.mark.slow
def test_quantize_on_import_matches_onnxruntime_int8_on_the_full_test_set():
    check(evaluate(10000))


# -- the pieces ----------------------------------------------------------------------------------------


def test_fashion_mnist_splits():
    data = load_fashion()
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = data[split]
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8, (split, images.shape, images.dtype)
        assert labels.shape == (n,) and np.array_equal(np.bincount(labels), np.full(10, n // 10)), split
        assert 0 < images.mean() < 255


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(MaterialError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="'valid'"):
        fashion_mnist("valid")


def test_read_idx_roundtrip_and_corrupt_files(tmp_path):
    a = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    raw = bytes([0, 0, 0x0C, 3]) + np.array(a.shape, ">u4").tobytes() + a.tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    got = read_idx(tmp_path / "a.gz")
    assert np.array_equal(got, a) and got.dtype == np.dtype("int32")
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(MaterialError, match="data bytes"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x1f\x00" + raw[2:])
    with pytest.raises(MaterialError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(raw)
    with pytest.raises(MaterialError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_backward_matches_finite_differences(monkeypatch):
    monkeypatch.setattr(tf, "_F32", np.float64)  # float64 so central differences are exact enough
    seed = 11
    rng = np.random.default_rng(seed)
    params = {k: v.astype(np.float64) + rng.normal(0, 0.05, v.shape)
              for k, v in tf._init(tf.TrainConfig(channels=(3, 4)), rng).items()}
    x, y = rng.random((3, 1, 28, 28)), np.array([1, 4, 7])

    def loss_and_grad(p):
        logits, cache = tf._forward(p, x, keep=True)
        z = np.exp(logits - logits.max(1, keepdims=True))
        prob = z / z.sum(1, keepdims=True)
        loss = -np.mean(np.log(prob[np.arange(3), y]))
        prob[np.arange(3), y] -= 1
        return loss, tf._backward(p, cache, prob / 3)

    _, grads = loss_and_grad(params)
    for name, g in grads.items():
        assert g.shape == params[name].shape, name
        for _ in range(5):
            i = tuple(int(rng.integers(0, s)) for s in g.shape)
            old, eps = params[name][i], 1e-6
            params[name][i] = old + eps
            up, _ = loss_and_grad(params)
            params[name][i] = old - eps
            down, _ = loss_and_grad(params)
            params[name][i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - g[i]) <= 1e-6 + 1e-4 * abs(numeric), (seed, name, i, numeric, g[i])


def test_exported_onnx_computes_the_numpy_network():
    rng = np.random.default_rng(5)
    params = tf._init(tf.TrainConfig(), rng)
    params = {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in params.items()}
    model = tf.to_onnx(params)
    assert model.opset_import[0].version >= 13
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == \
        ["N", 1, 28, 28]
    x = tf.preprocess(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    want, got = tf.predict(params, x), ort_logits(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bad_parameters():
    with pytest.raises(ValueError, match="epochs"):
        tf.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="channels"):
        tf.TrainConfig(channels=(8,))
    with pytest.raises(ValueError, match="train_images"):
        tf.TrainConfig(train_images=10)
    with pytest.raises(ValueError, match="uint8"):
        tf.preprocess(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match="opset"):
        tf.to_onnx(tf._init(tf.TrainConfig(), np.random.default_rng(0)), opset=11)
