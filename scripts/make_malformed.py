#!/usr/bin/env python3
"""Writes tests/malformed/: bad and hostile inputs, one case per file (or per folder when the
case needs external data files), and tests/malformed/expected.json: for each case the text its
one-line error must contain. Every case must end in exit code 2, that error, and no output file.
Run by hand (needs onnx and numpy); the files are committed."""
import json
import os
import random
import shutil

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "malformed")
expected = {}


def conv_bn(weight=None, extra_nodes=(), extra_inits=(), ir=8, opset=13, bn_inputs=None, **bn_attrs):
    w = weight if weight is not None else numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    inits = [w] + [numpy_helper.from_array(np.full(2, v, np.float32), n)
                   for n, v in [("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", bn_inputs or ["c", "g", "b", "m", "v"], ["y"],
                              name="bn", **bn_attrs)]
    graph = helper.make_graph(list(nodes) + list(extra_nodes), "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                              inits + list(extra_inits))
    return helper.make_model(graph, ir_version=ir, opset_imports=[helper.make_opsetid("", opset)])


def write(name, data, expect):
    path = os.path.join(ROOT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.SerializeToString())
    expected[name] = expect


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    return varint(num << 3 | wire) + payload


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    good = conv_bn().SerializeToString()

    # ------------------------------------------------------------ bytes that are not a model
    write("empty.onnx", b"", "model has no graph")
    # A file cut short names where it ends: the node or initializer, else the graph or header.
    where = {0.1: "node 'conv'", 0.3: "the main graph", 0.5: "the main graph", 0.7: "initializer 'v'",
             0.9: "the main graph", 0.99: "the opset imports"}
    for frac in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cut = int(len(good) * frac)
        write(f"truncated_{int(frac * 100):02d}.onnx", good[:cut],
              f"cut short, the file ends at byte {cut} inside {where[frac]}")
    write("lfs_pointer.onnx", b"version https://git-lfs.github.com/spec/v1\n"
          b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 46737\n",
          "Git LFS pointer")
    rng = random.Random(7)
    for k in range(4):
        write(f"random_{k}.onnx", bytes(rng.randrange(256) for _ in range(64 + 97 * k)),
              "not a valid ONNX model")
    write("text.onnx", b"this is a text file, not a model\n", "not a valid ONNX model")
    write("png_header.onnx", b"\x89PNG\r\n\x1a\n" + bytes(32), "not a valid ONNX model")
    write("zip_header.onnx", b"PK\x03\x04" + bytes(40), "not a valid ONNX model")
    write("graph_as_varint.onnx", field(1, 0, varint(8)) + field(7, 0, varint(5)), "not a valid ONNX model")
    write("ir_version_as_bytes.onnx", field(1, 2, varint(3) + b"abc"), "not a valid ONNX model")
    write("huge_length_prefix.onnx", field(7, 2, varint(1 << 62)) + b"\x00" * 16, "not a valid ONNX model")
    write("length_past_end.onnx", field(7, 2, varint(1000)) + b"\x00" * 10,
          "cut short, the file ends at byte 13 inside the main graph")
    write("bad_utf8_name.onnx", field(7, 2, varint(4) + field(2, 2, varint(2) + b"\xff\xfe")),
          "not a valid ONNX model")
    nested = b""
    for _ in range(200):  # If node with a then_branch graph, 200 deep: past prost's recursion limit
        attr = field(1, 2, varint(len(b"then_branch")) + b"then_branch") + field(6, 2, varint(len(nested)) + nested) \
            + field(20, 0, varint(5))
        node = field(4, 2, varint(2) + b"If") + field(5, 2, varint(len(attr)) + attr)
        nested = field(1, 2, varint(len(node)) + node)
    write("deeply_nested_subgraphs.onnx", field(1, 0, varint(8)) + field(7, 2, varint(len(nested)) + nested),
          "not a valid ONNX model")

    # ------------------------------------------------------------ model-level problems
    m = conv_bn()
    m.ClearField("graph")
    write("no_graph.onnx", m, "model has no graph")
    m = conv_bn()
    m.ir_version = 99
    write("ir_version_too_new.onnx", m, "newer than")

    # ------------------------------------------------------------ tensors
    def with_weight(t, name, expect):
        write(name, conv_bn(weight=t), expect)

    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    t.dims[:] = [1 << 40, 1 << 40]
    with_weight(t, "dims_overflow.onnx", "too large")
    t = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, 1.0])
    t.dims[:] = [1 << 20, 1 << 20, 1 << 10]
    with_weight(t, "dims_terabytes.onnx", "too large")
    t = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, 1.0])
    t.dims[:] = [1 << 16, 1 << 16, 1 << 2]
    with_weight(t, "dims_sixty_four_gib_no_data.onnx", "float_data has 2 values")
    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    t.dims[:] = [2, -1, 1, 1]
    with_weight(t, "negative_dim.onnx", "negative dim")
    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    t.raw_data = t.raw_data[:5]
    with_weight(t, "raw_data_short.onnx", "raw_data has 5 bytes")
    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    t.raw_data = t.raw_data * 3
    with_weight(t, "raw_data_long.onnx", "raw_data has 24 bytes")
    t = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, 2.0])
    t.float_data.append(3.0)
    with_weight(t, "float_data_count.onnx", "float_data has 3 values")
    t = helper.make_tensor("w", TensorProto.DOUBLE, [2, 1, 1, 1], [1.0, 2.0])
    del t.double_data[1]
    with_weight(t, "double_data_count.onnx", "double_data has 1 values")
    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    t.data_type = 99
    with_weight(t, "unknown_dtype_99.onnx", "unsupported data type 99")
    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    t.data_type = 0
    with_weight(t, "undefined_dtype.onnx", "unsupported data type 0")
    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    t.data_type = -3
    with_weight(t, "negative_dtype.onnx", "unsupported data type -3")
    t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float16), "w")
    t.int32_data[:] = [1]
    t.ClearField("raw_data")
    with_weight(t, "f16_int32_data_count.onnx", "int32_data has 1 values")
    t = numpy_helper.from_array(np.ones((2,), np.float32), "v")
    t.raw_data = b""
    write("bn_variance_no_data.onnx", _replace_init(conv_bn(), t), "float_data has 0 values")

    # ------------------------------------------------------------ graph structure
    write("missing_initializer.onnx", conv_bn(bn_inputs=["c", "g", "b", "m", "nowhere"]), "'nowhere', which nothing defines")
    m = conv_bn()
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(2, np.float32), "g"))
    write("duplicate_initializer.onnx", m, "'g' is defined twice")
    m = conv_bn(extra_nodes=[helper.make_node("Relu", ["x"], ["c"], name="relu")])
    write("duplicate_node_output.onnx", m, "'c' is defined twice")
    m = conv_bn(extra_nodes=[helper.make_node("Relu", ["x"], ["g"], name="shadow")])
    write("node_output_shadows_initializer.onnx", m, "'g' is defined twice")
    m = conv_bn()
    del m.graph.node[0]
    m.graph.node.extend([helper.make_node("Add", ["x", "d"], ["c"], name="a"),
                         helper.make_node("Relu", ["c"], ["d"], name="r")])
    write("cycle.onnx", m, "node 'a' (Add) is on a cycle")
    m = conv_bn()
    m.graph.node[0].input[0] = "c"
    write("self_loop.onnx", m, "node 'conv' (Conv) is on a cycle")
    m = conv_bn()
    m.graph.output[0].name = "ghost"
    write("undefined_graph_output.onnx", m, "graph output 'ghost' is not defined")
    then_g = helper.make_graph([helper.make_node("Relu", ["undefined_outer"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    m = conv_bn(extra_nodes=[helper.make_node("If", ["cond"], ["z"], name="if", then_branch=then_g,
                                              else_branch=then_g)],
                extra_inits=[numpy_helper.from_array(np.array(True), "cond")])
    write("subgraph_reads_undefined.onnx", m, "'undefined_outer', which nothing defines")

    # ------------------------------------------------------------ nodes and attributes
    write("bn_too_few_inputs.onnx", conv_bn(bn_inputs=["c", "g"]), "node 'bn' (BatchNormalization)")
    m = conv_bn()
    m.graph.node[1].attribute.append(helper.make_attribute("epsilon", "tiny"))
    write("epsilon_wrong_type.onnx", m, "epsilon")
    m = conv_bn()
    m.graph.node[0].attribute.append(helper.make_attribute("group", 1 << 40))
    write("conv_group_huge.onnx", m, "group")
    m = conv_bn()
    m.graph.node[0].attribute.append(helper.make_attribute("group", 0))
    write("conv_group_zero.onnx", m, "group")
    m = conv_bn()
    m.graph.node[0].attribute.append(helper.make_attribute("kernel_shape", list(range(1, 200001))))
    write("huge_attribute.onnx", m, "node 'conv' (Conv)")
    w1 = numpy_helper.from_array(np.ones((2,), np.float32), "w")
    write("conv_weight_rank1.onnx", conv_bn(weight=w1), "node 'conv' (Conv)")
    m = conv_bn()
    m.graph.node.insert(0, helper.make_node("Constant", [], ["k"], name="empty_constant"))
    write("constant_without_value.onnx", m, "node 'empty_constant' (Constant)")
    m = conv_bn()
    m.graph.node[1].input[4] = "k"
    m.graph.node.insert(0, helper.make_node("Constant", [], ["k"], name="empty_constant"))
    write("bn_param_from_empty_constant.onnx", m, "node 'empty_constant' (Constant)")

    # ------------------------------------------------------------ external data
    def external(folder, location, offset=0, length=None, data_bytes=8, make_data=True, link=None):
        t = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in [("location", location), ("offset", str(offset))] + ([("length", str(length))] if length is not None else []):
            e = t.external_data.add()
            e.key, e.value = k, v
        os.makedirs(os.path.join(ROOT, folder), exist_ok=True)
        if make_data:
            with open(os.path.join(ROOT, folder, "w.bin"), "wb") as f:
                f.write(np.ones(data_bytes // 4, np.float32).tobytes())
        if link:
            os.symlink(link[1], os.path.join(ROOT, folder, link[0]))
        return conv_bn(weight=t)

    write("external_absolute/model.onnx", external("external_absolute", "/etc/passwd"), "it is absolute")
    write("external_dotdot/model.onnx", external("external_dotdot", "../external_dotdot/w.bin"), "contains '..'")
    write("external_symlink/model.onnx",
          external("external_symlink", "escape/w.bin", link=("escape", "../external_absolute")),
          "resolves outside the model's folder")
    write("external_past_end/model.onnx", external("external_past_end", "w.bin", offset=4), "past the end")
    write("external_short_file/model.onnx", external("external_short_file", "w.bin", data_bytes=4), "past the end")
    write("external_offset_huge/model.onnx", external("external_offset_huge", "w.bin", offset=(1 << 64) - 1),
          "past the end")
    write("external_offset_negative/model.onnx", external("external_offset_negative", "w.bin", offset=-8),
          "not a byte count")
    write("external_length_mismatch/model.onnx", external("external_length_mismatch", "w.bin", length=4),
          "length 4 does not match")
    write("external_no_length_trailing_bytes/model.onnx",
          external("external_no_length_trailing_bytes", "w.bin", data_bytes=16),
          "no 'length', so its data runs from offset 0 to the end")
    write("external_missing_file/model.onnx", external("external_missing_file", "gone.bin", make_data=False),
          "gone.bin")
    write("external_empty_location/model.onnx", external("external_empty_location", ""), "empty location")
    write("external_directory/model.onnx", external("external_directory", "."), "not a regular file")
    m = external("external_no_location", "w.bin")
    del m.graph.initializer[0].external_data[0]
    write("external_no_location/model.onnx", m, "no 'location' entry")

    with open(os.path.join(ROOT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(expected)} malformed cases written to {ROOT}")


def _replace_init(model, tensor):
    for i, t in enumerate(model.graph.initializer):
        if t.name == tensor.name:
            model.graph.initializer[i].CopyFrom(tensor)
    return model


if __name__ == "__main__":
    main()
