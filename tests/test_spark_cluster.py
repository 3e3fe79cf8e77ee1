"""Distributed: the video stream on ``local-cluster[2,1,1024]`` with one ``fpga`` device per executor.

Two executor JVMs, each with its own Python workers; the ``fpga`` resource comes from the shipped
discovery script with ``JACQUARD_DEVICES=emu:0,emu:1``. Every task records the device Spark gave
it and the executor it ran on; each executor must have used exactly the one device it was given,
and the two executors different ones. In the same run one Python worker is killed mid-stream
(Spark retries its task), and the test checks exactly-once output and the metrics listener
(rates from Spark's progress, end-to-end latency from the ingest timestamp).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest

from jacquard.spark_ext import media, video_source
from jacquard.spark_ext.metrics import FrameMetricsListener

FILES = {"a.avi": 14, "b.avi": 9, "c.mkv": 12, "d.avi": 7}


@pytest.fixture(scope="module")
def cluster():
    from jacquard.spark_ext.session import build_session

    spark = build_session("local-cluster[2,1,1024]", app_name="test_spark_cluster", devices="emu:0,emu:1")
    video_source.register(spark)
    yield spark
    spark.stop()


def test_each_executor_uses_its_own_device(cluster, tmp_path):
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    root = tmp_path / "in"
    root.mkdir()
    for seed, (name, frames) in enumerate(FILES.items()):
        codec = "mjpeg" if name.endswith("mkv") else "mpeg4"
        media.write_video(root / name, frames, 32, 24, seed=seed, codec=codec)

    placement = StructType([StructField("device", StringType()), StructField("executor", StringType()),
                            StructField("pid", StringType())])

    marker, victim = tmp_path / "killed-once", str(root / "b.avi")

    @F.udf(placement)
    def where(file, index):
        from jacquard.spark_ext.binding import executor_id, task_device_uri

        if file == victim and index == 4 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(17)  # a Python worker dies mid-stream; Spark retries the task
        return (task_device_uri(), executor_id(), str(os.getpid()))

    metrics = FrameMetricsListener()
    cluster.streams.addListener(metrics)
    out = tmp_path / "out"

    def sink(df, batch_id):
        df.persist()  # used twice: without this the source would decode the batch again
        df.write.mode("append").parquet(str(out))
        metrics.observe_batch(df, batch_id)
        df.unpersist()

    frames = (cluster.readStream.format("jacquard.video").option("path", str(root))
              .option("maxFramesPerTrigger", 21).option("framesPerPartition", 3).load())
    q = (frames.withColumn("where", where("file", "frame_index")).drop("data")
         .writeStream.foreachBatch(sink).option("checkpointLocation", str(tmp_path / "ckpt")).start())
    try:
        q.processAllAvailable()
    finally:
        q.stop()
        cluster.streams.removeListener(metrics)

    assert marker.exists()  # the worker was killed, and the query recovered by itself
    rows = cluster.read.parquet(str(out)).select("file", "frame_index", "where.*").collect()
    counts = Counter((os.path.basename(r.file), r.frame_index) for r in rows)
    want = {(name, i) for name, n in FILES.items() for i in range(n)}
    assert set(counts) == want and max(counts.values()) == 1, sorted(set(counts) ^ want)[:5]

    devices_by_executor, pids_by_executor = defaultdict(set), defaultdict(set)
    for r in rows:
        devices_by_executor[r.executor].add(r.device)
        pids_by_executor[r.executor].add(r.pid)
    print("devices by executor:", dict(devices_by_executor), "python pids:", dict(pids_by_executor))
    assert set(devices_by_executor) == {"0", "1"}, devices_by_executor  # both executors did work
    assert all(len(d) == 1 for d in devices_by_executor.values()), devices_by_executor
    assert set().union(*devices_by_executor.values()) == {"emu:0", "emu:1"}, devices_by_executor
    assert not pids_by_executor["0"] & pids_by_executor["1"]  # separate Python workers per executor

    summary = metrics.summary(str(q.id))
    print("metrics:", summary)
    assert summary["frames"] == sum(FILES.values()) and summary["batches"] == 2
    assert summary["processed_rows_per_s"] > 0 and summary["skipped_files"] == 0
    assert 0 < summary["latency_p50_s"] <= summary["latency_p95_s"] < 600
