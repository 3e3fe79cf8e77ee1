"""Importer: bad input gets the right JacquardError with a message naming the fix; layouts are free."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_partition import classifier

from jacquard.host import ir
from jacquard.host.errors import JacquardError, ModelError, ShapeError
from jacquard.host.importer import load_model, quantize_float_model
from jacquard.host.partition import partition, run_reference


@pytest.fixture(scope="module")
def int8_model():
    b, m = classifier()
    return quantize_float_model(m, b.calibration())


def _dynamic_model():
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])
    g = helper.make_graph(
        [node],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H2", "W2"])],
        [w],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_errors_are_jacquard_errors():
    assert issubclass(ModelError, JacquardError) and issubclass(ShapeError, JacquardError)


def test_truncated_file_is_a_model_error(int8_model, tmp_path):
    data = int8_model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=r"export|complete"):
        load_model(path)


@pytest.mark.parametrize("data", [b"GIF89a not a model at all", bytes(range(256)) * 4, b""])
def test_non_onnx_bytes_are_a_model_error(data):
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(data)


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="check the path"):
        load_model(tmp_path / "nope.onnx")


def test_dynamic_shape_without_input_shapes():
    with pytest.raises(ShapeError, match=r"input_shapes=\{'x'"):
        load_model(_dynamic_model(), calibrate=np.zeros((1, 3, 8, 8), np.float32))


def test_dynamic_shape_with_input_shapes_imports():
    calib = np.random.default_rng(5).normal(size=(4, 3, 8, 8)).astype(np.float32)
    imported = load_model(_dynamic_model(), {"x": (1, 3, 8, 8)}, calibrate=calib)
    assert imported.input_shapes == {"x": (1, 3, 8, 8)}
    assert imported.output_shapes == {"y": (1, 4, 6, 6)}


def test_bad_input_shapes_name_the_problem():
    with pytest.raises(ShapeError, match="not inputs of the model"):
        load_model(_dynamic_model(), {"image": (1, 3, 8, 8)})
    with pytest.raises(ShapeError, match="one positive size per axis"):
        load_model(_dynamic_model(), {"x": (1, 3, 8)})


def test_float_model_without_calibration():
    _, m = classifier()
    with pytest.raises(ModelError, match="calibrate="):
        load_model(m)


def test_wrong_input_shape_and_dtype(int8_model):
    plan = partition(load_model(int8_model))
    good = np.zeros((1, 3, 20, 20), np.float32)
    run_reference(plan, {"x": good})
    with pytest.raises(ShapeError, match=r"must have shape \(1, 3, 20, 20\)"):
        run_reference(plan, {"x": np.zeros((1, 3, 21, 20), np.float32)})
    with pytest.raises(ShapeError, match=r"astype\(np.float32\)"):
        run_reference(plan, {"x": good.astype(np.float64)})
    with pytest.raises(ShapeError, match="missing"):
        run_reference(plan, {"image": good})
    run_reference(plan, {"x": good})  # still usable after the failures


def test_transposes_of_nhwc_inputs_are_free():
    """P-Net style: an NHWC float input transposed to NCHW for the convolutions costs no data movement."""
    rng = np.random.default_rng(11)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1]),
    ]
    g = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 9, 9, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 7, 4])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    imported = load_model(m, calibrate=rng.normal(size=(4, 9, 9, 3)).astype(np.float32))
    layouts = [layer for layer in imported.graph.layers if isinstance(layer, ir.Layout)]
    assert layouts and all(layer.free for layer in layouts), [(x.name, x.op, x.free) for x in layouts]
    conv = next(layer for layer in imported.graph.layers if isinstance(layer, ir.QConv))
    assert imported.graph.tensors[conv.inputs[0]].perm == ir.NCHW_TO_NHWC
