"""An ordinary PySpark application that runs an ONNX model with onnxruntime; it knows nothing of Jacquard.

Usage: ``python zero_code_app.py MODEL.onnx INPUT.parquet OUTPUT.parquet [driver_out.parquet]``.
The input has ``id`` and ``x`` (a flattened float tensor per row); the output has ``id`` and the
model's two outputs per row. The driver also runs the model once on its own, as apps do.
"""

import sys

import onnxruntime as ort
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

model_path, input_path, output_path = sys.argv[1:4]

spark = (SparkSession.builder.master("local[2]").appName("zero-code")
         .config("spark.ui.enabled", "false").config("spark.python.worker.reuse", "true").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")

probe = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
names = [o.name for o in probe.get_outputs()]
shape = [d for d in probe.get_inputs()[0].shape[1:]]


def make_predict_fn():
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(x):
        outputs = session.run(None, {input_name: x.astype("float32")})
        return dict(zip(names, outputs, strict=True))

    return predict


udf = predict_batch_udf(make_predict_fn,
                        return_type=StructType([StructField(n, ArrayType(FloatType())) for n in names]),
                        batch_size=8, input_tensor_shapes=[shape])
df = spark.read.parquet(input_path).repartition(2)
df.select("id", udf("x").alias("y")).select("id", "y.*").write.mode("overwrite").parquet(output_path)

if len(sys.argv) > 4:  # the driver runs the model too
    first = spark.read.parquet(input_path).orderBy("id").limit(1).toPandas()  # arrays, without numpy
    x = first["x"][0].astype("float32").reshape([1, *shape])
    outs = probe.run(None, {probe.get_inputs()[0].name: x})
    spark.createDataFrame([(int(first["id"][0]), *[o.ravel().tolist() for o in outs])],
                          ["id", *names]).write.mode("overwrite").parquet(sys.argv[4])
spark.stop()
