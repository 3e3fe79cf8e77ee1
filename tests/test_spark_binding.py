"""The ``fpga`` resource: the discovery script as Spark runs it, and task device binding in local mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jacquard.spark_ext import binding, discovery
from jacquard.spark_ext.session import discovery_script


def run_script(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JACQUARD_DEVICE")}
    env |= {"JACQUARD_PYTHON": sys.executable} | env_extra
    return subprocess.run([str(discovery_script())], env=env, capture_output=True, text=True, timeout=60)


def test_script_is_shipped_executable():
    script = discovery_script()
    assert script.name == "discover_fpga.sh" and os.access(script, os.X_OK)
    # The source file itself is executable in git, so installs that keep modes need no copy.
    mode = subprocess.run(["git", "ls-files", "-s", "spark_ext/discover_fpga.sh"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent).stdout.split()[:1]
    assert mode in ([], ["100755"]), mode


def test_script_prints_spark_json_from_env():
    proc = run_script({"JACQUARD_DEVICES": "emu:0, emu:1,uart:/dev/ttyUSB3"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"name": "fpga", "addresses": ["emu:0", "emu:1", "uart:/dev/ttyUSB3"]}


def test_script_default_is_boards_or_emu():
    proc = run_script({})
    assert proc.returncode == 0, proc.stderr
    ports = sorted(str(p) for p in Path("/dev").glob("ttyUSB*"))
    assert json.loads(proc.stdout)["addresses"] == ([f"uart:{p}" for p in ports] or ["emu"])


@pytest.mark.parametrize("env, match", [
    ({"JACQUARD_DEVICES": " , "}, "JACQUARD_DEVICES must list device URIs"),
    ({"JACQUARD_DEVICES": "emu:0,emu:0"}, "lists a device twice"),
    ({"JACQUARD_DEVICES": "emu", "JACQUARD_DEVICES_PER_WORKER": "two"}, "PER_WORKER must be an integer"),
])
def test_script_rejects_bad_env(env, match):
    proc = run_script(env)
    assert proc.returncode == 2 and match in proc.stderr and proc.stdout == "", proc


def test_workers_of_one_jvm_get_their_own_devices(tmp_path):
    """Each call from the same parent claims the next slot; with k per worker, slot s gets its k."""
    slots = [discovery.claim_slot(owner=os.getpid(), root=tmp_path) for _ in range(3)]
    assert slots == [0, 1, 2]
    assert discovery.claim_slot(owner=os.getppid(), root=tmp_path) == 0  # another JVM starts afresh
    env = {"JACQUARD_DEVICES": "emu:0,emu:1,emu:2", "JACQUARD_DEVICES_PER_WORKER": "1"}
    got = [discovery.discover(env, slot=s)["addresses"] for s in range(4)]
    assert got == [["emu:0"], ["emu:1"], ["emu:2"], ["emu:0"]]
    env["JACQUARD_DEVICES_PER_WORKER"] = "2"
    assert [discovery.discover(env, slot=s)["addresses"] for s in range(2)] == [["emu:0", "emu:1"],
                                                                               ["emu:2", "emu:0"]]
    # Two script runs under one parent (this process) get different devices.
    shared = {"JACQUARD_DEVICES": "emu:0,emu:1", "JACQUARD_DEVICES_PER_WORKER": "1"}
    firsts = {json.loads(run_script(shared).stdout)["addresses"][0] for _ in range(2)}
    assert firsts == {"emu:0", "emu:1"}


def test_session_wrapper_script_carries_its_environment():
    """Spark runs discovery with the JVM's environment, fixed when PySpark first started it; the
    session helper's wrapper script sets the devices itself."""
    group = "binding-test"  # claims are also keyed by the parent (this pytest process): fresh per run
    script = discovery_script({"JACQUARD_DEVICES": "emu:0,emu:1", "JACQUARD_DEVICES_PER_WORKER": "1",
                               "JACQUARD_DISCOVERY_GROUP": group, "JACQUARD_PYTHON": sys.executable})
    assert script != discovery_script() and os.access(script, os.X_OK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JACQUARD_")}
    outs = [subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
            for _ in range(2)]
    assert [json.loads(o.stdout)["addresses"] for o in outs] == [["emu:0"], ["emu:1"]], outs


def test_device_uri_outside_a_task(monkeypatch):
    monkeypatch.delenv("JACQUARD_DEVICE", raising=False)
    assert binding.task_device_uris() == []
    assert binding.task_device_uri() == "emu"
    assert binding.task_device_uri(default="sim") == "sim"
    monkeypatch.setenv("JACQUARD_DEVICE", "uart:/dev/ttyUSB0")
    assert binding.task_device_uri() == "uart:/dev/ttyUSB0"
    assert binding.executor_id() == "driver"
    with pytest.raises(ValueError, match="default device URI"):
        binding.task_device_uri(default=" ")


def test_local_mode_tasks_fall_back_to_the_configured_default():
    """local[N] schedules no resources: tasks use the local property, then env, then emu."""
    from jacquard.spark_ext.session import build_session

    spark = build_session("local[2]", app_name="test_spark_binding")
    try:
        sc = spark.sparkContext

        def probe(_):
            from jacquard.spark_ext.binding import executor_id, task_device_uri, task_device_uris

            yield (task_device_uris(), task_device_uri(), task_device_uri(default="sim"), executor_id())

        assert set(map(repr, sc.parallelize(range(2), 2).mapPartitions(probe).collect())) == {
            repr(([], os.environ.get("JACQUARD_DEVICE") or "emu", "sim", "driver"))}
        sc.setLocalProperty(binding.DEVICE_CONF, "emu:7")
        assert {r[1] for r in sc.parallelize(range(2), 2).mapPartitions(probe).collect()} == {"emu:7"}
    finally:
        spark.stop()
