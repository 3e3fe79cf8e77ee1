"""Zero code change: an app that imports only pyspark and onnxruntime, run under ``jacquard submit``.

The app (``tests/apps/zero_code_app.py``) runs MTCNN's R-Net (int8 x int8) with onnxruntime inside
``predict_batch_udf`` and once in the driver, under ``jacquard submit``. The offload is real (the
summary shows device inferences and MACs in the driver and the Python workers) and the results are
bit-exact with the CPU run: what the app computes without the hook, onnxruntime on the CPU on the
same rows (computed here in-process to save a second Spark start).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from jacquard.spark_ext.accel import aggregate_stats

APP = Path(__file__).parent / "apps" / "zero_code_app.py"
SEED = 5


@pytest.fixture(scope="module")
def rnet():
    from jacquard.spark_ext.mtcnn import int8_models

    return int8_models()["rnet"]


def _env():
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.pop("JACQUARD_STATS_DIR", None)
    return env


def _read(path):
    return pd.read_parquet(path).sort_values("id").reset_index(drop=True)


def _assert_equal(got, want, where):
    assert list(got["id"]) == list(want["id"]), where
    for name in ("dense_2", "softmax_1"):
        g, w = np.stack(got[name]), np.stack(want[name])
        bad = np.argwhere(g != w)
        assert bad.size == 0, (f"{where} {name} (seed {SEED}): first mismatch at {tuple(bad[0])}: "
                               f"expected {w[tuple(bad[0])]}, got {g[tuple(bad[0])]}")


def test_unmodified_app_is_offloaded_and_bit_exact(rnet, tmp_path):
    rng = np.random.default_rng(SEED)
    data = tmp_path / "in.parquet"
    pd.DataFrame({"id": np.arange(24), "x": [rng.uniform(-1, 1, 24 * 24 * 3).astype(np.float32)
                                               for _ in range(24)]}).to_parquet(data)
    stats = tmp_path / "stats"
    acc = subprocess.run([sys.executable, "-m", "jacquard.host.cli", "submit", "--json", "--stats-dir",
                          str(stats), str(APP), str(rnet), str(data), str(tmp_path / "acc"),
                          str(tmp_path / "acc-driver")], env=_env(), capture_output=True, text=True,
                         timeout=600, check=False)
    assert acc.returncode == 0, acc.stderr[-3000:]
    summary = json.loads(acc.stdout[acc.stdout.index("{\n"):])
    assert summary == {**aggregate_stats(stats), "app": str(APP), "exit_status": 0}
    # The device did the work: every inference, in the driver and in the Python workers.
    assert summary["inferences"] >= 4 and summary["device_inferences"] == summary["inferences"], summary
    assert summary["rows"] == 24 + 1 and summary["fallbacks"] == 0, summary
    assert summary["devices"] == ["emu"] and summary["processes_on_device"] >= 2, summary
    assert summary["macs_device"] == summary["macs_total"] > 0, summary
    assert "QLinearSoftmax" in summary["cpu_ops"], summary
    frame = pd.read_parquet(data).sort_values("id").reset_index(drop=True)
    sess = ort.InferenceSession(str(rnet), providers=["CPUExecutionProvider"])
    cpu = [sess.run(None, {"input_2": x.reshape(1, 24, 24, 3)}) for x in frame["x"]]
    want = pd.DataFrame({"id": frame["id"], "dense_2": [o[0].ravel() for o in cpu],
                         "softmax_1": [o[1].ravel() for o in cpu]})
    _assert_equal(_read(tmp_path / "acc"), want, "workers")
    _assert_equal(_read(tmp_path / "acc-driver"), want.iloc[:1], "driver")


def test_submit_refuses_a_missing_app(tmp_path):
    from jacquard.host.cli import main

    assert main(["submit", str(tmp_path / "nope.py")]) == 2


def test_one_spark_conf_offloads_the_workers(rnet, tmp_path):
    """The documented alternative: spark.python.daemon.module=jacquard.spark_ext.offload, no submit."""
    rng = np.random.default_rng(SEED + 1)
    data = tmp_path / "in.parquet"
    pd.DataFrame({"id": np.arange(8), "x": [rng.uniform(-1, 1, 24 * 24 * 3).astype(np.float32)
                                              for _ in range(8)]}).to_parquet(data)
    stats = tmp_path / "stats"
    env = dict(_env(), PYSPARK_SUBMIT_ARGS=(
        "--conf spark.python.daemon.module=jacquard.spark_ext.offload "
        f"--conf spark.executorEnv.JACQUARD_STATS_DIR={stats} pyspark-shell"))
    proc = subprocess.run([sys.executable, str(APP), str(rnet), str(data), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = aggregate_stats(stats)
    assert summary["rows"] == 8 and summary["device_inferences"] == summary["inferences"] > 0, summary
    got = _read(tmp_path / "out")
    sess = ort.InferenceSession(str(rnet), providers=["CPUExecutionProvider"])
    cpu = [sess.run(None, {"input_2": x.reshape(1, 24, 24, 3)}) for x in pd.read_parquet(data)["x"]]
    _assert_equal(got, pd.DataFrame({"id": np.arange(8), "dense_2": [o[0].ravel() for o in cpu],
                                     "softmax_1": [o[1].ravel() for o in cpu]}), "one conf")
