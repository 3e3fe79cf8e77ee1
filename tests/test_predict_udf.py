"""predict_udf: equal to the host runtime on a DataFrame; device binding through the discovery script.

The model is MTCNN's R-Net quantized int8 x int8 (the real network, dynamic batch); inputs are
seeded random 24x24 crops. Local mode runs in this process; the local-cluster run (two executor
JVMs, the ``fpga`` resource from ``discover_fpga.sh``) runs in its own process so its driver JVM
starts with ``JACQUARD_DEVICES``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from jacquard.host.device import Device
from jacquard.spark_ext.accel import aggregate_stats

SEED = 11
APPS = Path(__file__).parent / "apps"


@pytest.fixture(scope="module")
def rnet():
    from jacquard.spark_ext.mtcnn import int8_models

    return int8_models()["rnet"]


@pytest.fixture(scope="module")
def spark():
    from jacquard.spark_ext.session import build_session

    return build_session("local[2]", app_name="test-predict-udf")


def _rows(n, seed=SEED):
    rng = np.random.default_rng(seed)
    return [(i, rng.uniform(-1, 1, 24 * 24 * 3).astype(np.float32)) for i in range(n)]


def _host_runtime(model, x):
    """Each row through the host runtime (Device on emu), batch 1."""
    with Device("emu") as dev:
        dev.load(str(model), input_shapes={"input_2": (1, 24, 24, 3)})
        return [dev.run(x[i:i + 1].reshape(1, 24, 24, 3)) for i in range(len(x))]


def _first_mismatch(got, want):
    bad = np.argwhere(got != want)
    return None if bad.size == 0 else (tuple(bad[0]), want[tuple(bad[0])], got[tuple(bad[0])])


def test_predict_udf_equals_host_runtime(spark, rnet):
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

    from jacquard.spark_ext.predict import predict_udf

    rows = _rows(19)  # not a multiple of the batch size: the last batch is shorter
    df = spark.createDataFrame([(i, x.tolist()) for i, x in rows], "id long, x array<float>").repartition(2)
    struct = StructType([StructField("dense_2", ArrayType(FloatType())),
                         StructField("softmax_1", ArrayType(FloatType()))])
    udf = predict_udf(str(rnet), return_type=struct, batch_size=8, input_tensor_shapes=[[24, 24, 3]],
                      device="emu")
    got = {r.id: r for r in df.select("id", udf("x").alias("y")).select("id", "y.*").collect()}
    x = np.stack([x for _, x in rows])
    want = _host_runtime(rnet, x)
    sess = ort.InferenceSession(str(rnet), providers=["CPUExecutionProvider"])
    for i in range(len(rows)):
        for name in ("dense_2", "softmax_1"):
            g = np.asarray(getattr(got[i], name), np.float32)
            w = want[i][name].ravel()
            assert (m := _first_mismatch(g, w)) is None, f"row {i} {name} (seed {SEED}): {m}"
        ref = sess.run(None, {"input_2": x[i:i + 1].reshape(1, 24, 24, 3)})
        assert np.array_equal(want[i]["dense_2"], ref[0]) and np.array_equal(want[i]["softmax_1"], ref[1])


def test_predict_udf_array_return_type_and_bad_arguments(spark, rnet):
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

    from jacquard.spark_ext.predict import predict_udf

    rows = _rows(5, SEED + 1)
    df = spark.createDataFrame([(i, x.tolist()) for i, x in rows], "id long, x array<float>")
    udf = predict_udf(rnet, return_type=ArrayType(FloatType()), batch_size=4,
                      input_tensor_shapes=[[24, 24, 3]])
    got = {r.id: np.asarray(r.y, np.float32) for r in df.select("id", udf("x").alias("y")).collect()}
    want = _host_runtime(rnet, np.stack([x for _, x in rows]))
    for i in range(len(rows)):
        assert (m := _first_mismatch(got[i], want[i]["dense_2"].ravel())) is None, (i, m)
    with pytest.raises(ValueError, match="batch_size"):
        predict_udf(rnet, return_type=ArrayType(FloatType()), batch_size=0)
    with pytest.raises(ValueError, match="not model outputs"):
        predict_udf(rnet, return_type=StructType([StructField("nope", FloatType())]), batch_size=4)
    with pytest.raises(TypeError, match="model"):
        predict_udf(12, return_type=ArrayType(FloatType()), batch_size=4)


def test_predict_udf_falls_back_to_onnxruntime_without_a_device(spark, rnet):
    from pyspark.sql.types import ArrayType, FloatType

    from jacquard.spark_ext.predict import predict_udf

    rows = _rows(3, SEED + 2)
    df = spark.createDataFrame([(i, x.tolist()) for i, x in rows], "id long, x array<float>")
    udf = predict_udf(rnet, return_type=ArrayType(FloatType()), batch_size=4,
                      input_tensor_shapes=[[24, 24, 3]], device="uart:/dev/jacquard-missing")
    got = {r.id: np.asarray(r.y, np.float32) for r in df.select("id", udf("x").alias("y")).collect()}
    sess = ort.InferenceSession(str(rnet), providers=["CPUExecutionProvider"])
    for i, x in rows:
        assert np.array_equal(got[i], sess.run(None, {"input_2": x.reshape(1, 24, 24, 3)})[0].ravel())


def test_device_binding_through_the_discovery_script_on_local_cluster(rnet, tmp_path):
    stats = tmp_path / "stats"
    out = tmp_path / "out.json"
    env = dict(os.environ, JACQUARD_STATS_DIR=str(stats), PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, str(APPS / "predict_cluster_app.py"), str(rnet), str(out)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["executors"] == 2
    # Each task opened the device Spark assigned it, and the two executors got different ones.
    tasks = result["tasks"]
    assert all(t["uri"] == t["addresses"].split(",")[0] for t in tasks), tasks
    assert {t["uri"] for t in tasks} == {"emu:0", "emu:1"}, tasks
    # Each worker process ran predict_udf on its executor's device, and on nothing else.
    files = [json.loads(p.read_text()) for p in stats.glob("*.json")]
    used = [f["devices"] for f in files if f["device_inferences"]]
    assert used and all(len(d) == 1 for d in used), files
    assert {d[0] for d in used} == {"emu:0", "emu:1"}, files
    by_pid = {t["pid"]: t["uri"] for t in tasks}
    for f in files:
        if f["pid"] in by_pid and f["device_inferences"]:
            assert f["devices"] == [by_pid[f["pid"]]], (f, by_pid)
    assert aggregate_stats(stats)["fallbacks"] == 0
    # Predictions equal the host runtime's.
    rng = np.random.default_rng(7)
    x = np.stack([rng.uniform(-1, 1, 24 * 24 * 3).astype(np.float32) for _ in range(16)])
    want = _host_runtime(rnet, x)
    for i in range(16):
        got = np.asarray(result["pred"][str(i)], np.float32)
        assert (m := _first_mismatch(got, want[i]["dense_2"].ravel())) is None, (i, m)


def test_float_model_is_calibrated_on_its_first_rows_then_offloaded():
    """A float model runs on the CPU (exactly onnxruntime's float results) until calibrated, then on
    the device, where it equals the host runtime importing the model with the same calibration rows."""
    from test_compiler import classifier

    from jacquard.spark_ext.accel import AcceleratedModel, process_stats

    _, model = classifier()
    rng = np.random.default_rng(SEED + 3)
    batches = [rng.normal(0, 1, (4, 3, 20, 20)).astype(np.float32) for _ in range(4)]
    accel = AcceleratedModel(model, "emu", calibration_rows=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = accel.outputs[0]
    before = process_stats().device_inferences
    first = accel.run({"x": batches[0]})[name]
    assert np.array_equal(first, np.concatenate([sess.run(None, {"x": x[None]})[0] for x in batches[0]]))
    assert process_stats().device_inferences == before
    got = [accel.run({"x": x})[name] for x in batches[1:]]
    assert process_stats().device_inferences == before + 3
    with Device("emu") as dev:
        dev.load(model, calibrate=np.concatenate(batches[:2]))
        for k, batch in enumerate(batches[1:]):
            want = np.concatenate([dev.run(x[None])[name] for x in batch])
            assert (m := _first_mismatch(got[k], want)) is None, (k, m)
            ref = np.concatenate([sess.run(None, {"x": x[None]})[0] for x in batch])
            assert (got[k].argmax(1) == ref.argmax(1)).mean() >= 0.75  # int8 keeps the float ranking
