"""predict_udf on local-cluster[2,1,1024] with the fpga resource from the discovery script.

Usage: ``python predict_cluster_app.py MODEL.onnx OUT.json``; run in its own process so that the
driver JVM starts with ``JACQUARD_DEVICES`` (the discovery script runs inside it). Writes, per
Python worker pid, the fpga addresses Spark gave its tasks, and the predictions.
"""

import json
import os
import sys

import numpy as np
from pyspark.sql.types import ArrayType, FloatType

from jacquard.spark_ext.predict import predict_udf
from jacquard.spark_ext.session import build_session

model, out = sys.argv[1:3]
spark = build_session("local-cluster[2,1,1024]", app_name="predict-cluster", devices="emu:0,emu:1",
                      conf={"spark.executorEnv.JACQUARD_STATS_DIR": os.environ["JACQUARD_STATS_DIR"]})
rng = np.random.default_rng(7)
rows = [(i, rng.uniform(-1, 1, 24 * 24 * 3).astype(np.float32).tolist()) for i in range(16)]
df = spark.createDataFrame(rows, "id long, x array<float>").repartition(4)


def resources(batches):
    import pandas as pd
    from pyspark import TaskContext

    from jacquard.spark_ext.binding import task_device_uri

    ctx = TaskContext.get()
    for b in batches:
        yield pd.DataFrame({"id": b["id"], "pid": os.getpid(), "uri": task_device_uri(),
                            "addresses": ",".join(ctx.resources()["fpga"].addresses)})


udf = predict_udf(model, return_type=ArrayType(FloatType()), batch_size=4, input_tensor_shapes=[[24, 24, 3]])
pred = df.select("id", udf("x").alias("y"))
where = df.mapInPandas(resources, "id long, pid long, uri string, addresses string").collect()
result = {"pred": {r.id: r.y for r in pred.collect()},
          "tasks": [r.asDict() for r in where],
          "executors": spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1}
with open(out, "w") as f:
    json.dump(result, f)
spark.stop()
