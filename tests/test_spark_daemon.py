"""jacquard.spark_ext.daemon: Spark's Python workers fork from a daemon that already imported
Jacquard's modules, and the preload starts no thread (forking would be unsafe otherwise); sessions
get the lean JVM options."""

from __future__ import annotations

import json
import subprocess
import sys

from jacquard.spark_ext.daemon import PRELOAD


def test_preload_imports_everything_and_starts_no_thread():
    code = ("import json, sys, threading\n"
            "from jacquard.spark_ext.daemon import preload\n"
            "done = preload()\n"
            "print(json.dumps({'done': done, 'threads': threading.active_count(),\n"
            "                  'heavy': [m for m in ('pandas', 'pyarrow') if m in sys.modules]}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["done"] == list(PRELOAD), out.stderr
    assert got["threads"] == 1 and got["heavy"] == [], got


def test_spark_workers_start_with_the_preloaded_modules():
    from jacquard.spark_ext.session import LEAN_JVM_OPTIONS, build_session

    spark = build_session("local[1]", app_name="test-daemon")
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.python.daemon.module") == "jacquard.spark_ext.daemon"
    # Spark puts its own module options first.
    assert conf.get("spark.driver.extraJavaOptions").endswith(LEAN_JVM_OPTIONS)
    assert conf.get("spark.executor.extraJavaOptions").endswith(LEAN_JVM_OPTIONS)
    wanted = ["onnxruntime", "jacquard.host.compiler", "jacquard.spark_ext.mtcnn"]

    def probe(batches):
        import sys as worker_sys

        import pandas as pd

        # Checked before this function imports anything of its own.
        loaded = [m in worker_sys.modules for m in wanted]
        for _ in batches:
            yield pd.DataFrame({"loaded": [all(loaded)]})

    rows = spark.range(2, numPartitions=1).mapInPandas(probe, "loaded boolean").collect()
    assert rows and all(r.loaded for r in rows), rows
