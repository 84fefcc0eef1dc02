"""Seed models for Scripts/fuzz onnx (written, not committed): a few tiny ONNX models that cover
what `samdistill inspect` reads — named and fixed dimensions, float32 and float16 initializers,
several opsets, metadata, a nested subgraph attribute.
    .venv/bin/python3 Scripts/fuzz_onnx_seeds.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 3])
w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "w")
b = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.float16), "b16")
nodes = [
    helper.make_node("MatMul", ["x", "w"], ["xw"]),
    helper.make_node("Cast", ["b16"], ["b"], to=TensorProto.FLOAT),
    helper.make_node("Add", ["xw", "b"], ["z"]),
    helper.make_node("Relu", ["z"], ["y"]),
]
m = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [w, b]),
                      opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                      producer_name="fuzz-seed", producer_version="1")
helper.set_model_props(m, {"samdistill.encoder": "tiny", "note": "seed"})
onnx.save(m, out / "tiny.onnx")

# An If node whose branches are graphs (nested GraphProto attributes).
cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
r = helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])
then_g = helper.make_graph([helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.ones(2, np.float32)))],
                           "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
else_g = helper.make_graph([helper.make_node("Constant", [], ["e"], value=numpy_helper.from_array(np.zeros(2, np.float32)))],
                           "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
m2 = helper.make_model(helper.make_graph([helper.make_node("If", ["c"], ["r"], then_branch=then_g, else_branch=else_g)],
                                         "branch", [cond], [r]), opset_imports=[helper.make_opsetid("", 17)])
onnx.save(m2, out / "if.onnx")
