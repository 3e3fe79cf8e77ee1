"""``predict_udf``: PySpark's ``predict_batch_udf`` for an ONNX model run on the task's accelerator.

>>> from pyspark.sql.types import ArrayType, FloatType                      # doctest: +SKIP
>>> classify = predict_udf("model_int8.onnx", return_type=ArrayType(FloatType()), batch_size=16,
...                        input_tensor_shapes=[[28, 28, 1]])
>>> df.withColumn("scores", classify("pixels"))

It is :func:`pyspark.ml.functions.predict_batch_udf` with a ready-made ``make_predict_fn``: the
same argument names, the same input conversion (scalar columns to 1-D arrays, flattened tensor
columns reshaped by ``input_tensor_shapes``; one column per model input) and the same return-type
rules (a scalar type takes a 1-D result; an ``ArrayType`` takes ``(rows, ...)`` outputs, flattened
per row; a ``StructType`` takes one field per model output, by output name).

In each Python worker the model is compiled once, in a cache keyed by its SHA-256
(:func:`jacquard.spark_ext.accel.shared_model`), and runs on the device Spark bound to the task
(:func:`jacquard.spark_ext.binding.task_device_uri`: the ``fpga`` resource, else
``spark.jacquard.device`` / ``JACQUARD_DEVICE`` / ``emu``). When no device can be opened it runs on
onnxruntime on the CPU and logs that once per worker. Inputs are cast to the model's input dtype.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jacquard.spark_ext.accel import model_bytes, shared_model

__all__ = ["make_predict_fn", "predict_udf"]

_ONNX_TO_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16,
                  11: np.float64}


def _input_dtypes(data: bytes) -> dict[str, np.dtype]:
    import onnx

    proto = onnx.load_model_from_string(data)
    inits = {i.name for i in proto.graph.initializer}
    return {i.name: np.dtype(_ONNX_TO_NUMPY.get(i.type.tensor_type.elem_type, np.float32))
            for i in proto.graph.input if i.name not in inits}


def make_predict_fn(model, *, device: str | None = None, return_type: Any = None,
                    config: str = "ulx3s-85f") -> Callable[[], Callable[..., Any]]:
    """A ``make_predict_fn`` for :func:`pyspark.ml.functions.predict_batch_udf` running ``model``.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The ONNX model; read on the driver and shipped to the workers as bytes.
    device : str, optional
        Device URI; default: the task's (see the module docstring).
    return_type : pyspark.sql.types.DataType, optional
        Shapes the result: a ``StructType`` gets a dict of outputs by name, an ``ArrayType`` the
        first output as ``(rows, -1)``, a scalar type the first output as ``(rows,)``.
    config : str
        Hardware config for ``emu`` devices.

    Returns
    -------
    callable
        ``make_predict_fn()`` returning ``predict(*arrays)`` with one parameter per model input.
    """
    data = model_bytes(model)
    dtypes = _input_dtypes(data)
    names = list(dtypes)
    kind = _result_kind(return_type)
    fields = [f.name for f in return_type.fields] if kind == "struct" else []

    def make() -> Callable[..., Any]:
        from jacquard.spark_ext.binding import task_device_uri

        accel = shared_model(data, device or task_device_uri(), config=config)

        def predict(*arrays: np.ndarray) -> Any:
            feeds = {n: np.ascontiguousarray(a, dtype=dtypes[n]) for n, a in zip(names, arrays, strict=True)}
            out = accel.run(feeds)
            rows = len(arrays[0])
            if kind == "struct":
                return {k: out[k].reshape(rows, -1) if out[k].ndim > 2 else out[k] for k in fields}
            first = out[accel.outputs[0]]
            return first.reshape(rows, -1) if kind == "array" else first.reshape(rows)

        # predict_batch_udf counts the predict function's parameters to map columns to inputs.
        predict.__signature__ = inspect.Signature(
            [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(names))])
        return predict

    return make


def _result_kind(return_type: Any) -> str:
    from pyspark.sql.types import ArrayType, StructType

    if isinstance(return_type, StructType):
        return "struct"
    if isinstance(return_type, ArrayType):
        return "array"
    return "scalar"


def predict_udf(model, *, return_type: Any, batch_size: int,
                input_tensor_shapes: list[list[int] | None] | Mapping[int, list[int]] | None = None,
                device: str | None = None) -> Any:
    """A pandas UDF running ``model`` on the accelerator; arguments as ``predict_batch_udf``'s.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The ONNX model (int8 runs bit-exact with onnxruntime; a float model is quantized on import,
        calibrated on its first rows).
    return_type : pyspark.sql.types.DataType
        As for ``predict_batch_udf``; a ``StructType``'s field names are the model's output names.
    batch_size : int
        Rows per model run.
    input_tensor_shapes : list or dict, optional
        Per input column, the shape of one row's tensor (without the batch dimension).
    device : str, optional
        Device URI for every task; default: the task's ``fpga`` resource, else the configured one.

    Returns
    -------
    pyspark UserDefinedFunction

    Raises
    ------
    ValueError
        If ``batch_size`` is not a positive integer, or a ``StructType`` names no model output.
    TypeError
        If ``model`` is not a path, bytes or ModelProto.
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import StructType

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
    data = model_bytes(model)
    if isinstance(return_type, StructType):
        import onnx

        outputs = [o.name for o in onnx.load_model_from_string(data).graph.output]
        unknown = [f.name for f in return_type.fields if f.name not in outputs]
        if unknown:
            raise ValueError(f"return_type fields {unknown} are not model outputs; the outputs are {outputs}")
    return predict_batch_udf(make_predict_fn(data, device=device, return_type=return_type),
                             return_type=return_type, batch_size=batch_size,
                             input_tensor_shapes=input_tensor_shapes)
