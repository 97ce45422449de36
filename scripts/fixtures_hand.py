"""Hand-built graphs (onnx.helper) for what exporters rarely emit, from one seeded generator:
the same bytes on every run."""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fixtures_common import OUT, fill_output_types, record, save


# ---------------------------------------------------------------- hand-built graphs
rng = np.random.default_rng(7)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def bn_params(prefix, c, dtype=np.float32, var_low=0.2):
    return [
        init(f"{prefix}.gamma", rng.uniform(0.5, 1.5, c).astype(dtype)),
        init(f"{prefix}.beta", rng.uniform(-0.5, 0.5, c).astype(dtype)),
        init(f"{prefix}.mean", rng.uniform(-1, 1, c).astype(dtype)),
        init(f"{prefix}.var", rng.uniform(var_low, 2, c).astype(dtype)),
    ]


def bn_node(prefix, x, y, **attrs):
    return helper.make_node("BatchNormalization",
                            [x] + [f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var")],
                            [y], name=prefix, **attrs)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inits, inputs, outputs, opset=13, ir=8, value_info=(), name="g"):
    g = helper.make_graph(nodes, name, inputs, outputs, inits, value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def conv_bn(dtype=np.float32, elem=TensorProto.FLOAT, c=4, name="conv", with_bias=True):
    w = init("w", rng.normal(0, 0.5, (c, 3, 3, 3)).astype(dtype))
    inits = [w] + bn_params("bn", c, dtype)
    inputs = ["x", "w"]
    if with_bias:
        inits.append(init("b", rng.normal(0, 0.1, c).astype(dtype)))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["y0"], name=name), bn_node("bn", "y0", "y")]
    return nodes, inits


def hand_fixtures():
    f32 = TensorProto.FLOAT
    X = vi("x", f32, [1, 3, 8, 8])
    Y = vi("y", f32, None)

    nodes, inits = conv_bn()
    save(model(nodes, inits, [X], [Y]), "conv_bn.onnx", 1)

    # dtypes: the fold rounds once into each tensor's own dtype.
    for dtype, elem, name in [(np.float16, TensorProto.FLOAT16, "conv_bn_f16.onnx"),
                              (np.float64, TensorProto.DOUBLE, "conv_bn_f64.onnx")]:
        nodes, inits = conv_bn(dtype, elem)
        save(model(nodes, inits, [vi("x", elem, [1, 3, 8, 8])], [vi("y", elem, None)]), name, 1)

    # bf16 weights: tract cannot run bf16, so this one is checked against the BN formula only.
    nodes, inits = conv_bn()
    bf = []
    for t in inits:
        a = numpy_helper.to_array(t).astype(np.float32)
        bits = (a.view(np.uint32) >> 16).astype(np.uint16)
        tp = helper.make_tensor(t.name, TensorProto.BFLOAT16, a.shape, bits.tobytes(), raw=True)
        bf.append(tp)
    save(model(nodes, bf, [vi("x", TensorProto.BFLOAT16, [1, 3, 8, 8])],
               [vi("y", TensorProto.BFLOAT16, None)]), "conv_bn_bf16.onnx", 1, verify=False)

    # fp16 overflow: a huge gamma on a tiny variance pushes the weight past 65504.
    nodes, inits = conv_bn(np.float16, TensorProto.FLOAT16)
    inits = [t if t.name != "bn.gamma" else init("bn.gamma", np.full(4, 60000, np.float16))
             for t in inits]
    inits = [t if t.name != "bn.var" else init("bn.var", np.full(4, 0.01, np.float16))
             for t in inits]
    save(model(nodes, inits, [vi("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
               [vi("y", TensorProto.FLOAT16, None)]), "conv_bn_f16_overflow.onnx", 0,
         ["folded_value_out_of_range"])

    # var + eps <= 0
    nodes, inits = conv_bn()
    inits = [t if t.name != "bn.var" else init("bn.var", np.array([1, -1, 1, 1], np.float32))
             for t in inits]
    save(model(nodes, inits, [X], [Y]), "conv_bn_negative_var.onnx", 0, ["non_positive_variance"])

    # Identity and Add of a per-channel constant between Conv and BN (paddle2onnx).
    nodes, inits = conv_bn(with_bias=False)
    nodes = [nodes[0],
             helper.make_node("Identity", ["y0"], ["y1"], name="ident"),
             helper.make_node("Add", ["y1", "addc"], ["y2"], name="add_bias"),
             bn_node("bn", "y2", "y")]
    inits.append(init("addc", rng.normal(0, 0.3, (4, 1, 1)).astype(np.float32)))
    save(model(nodes, inits, [X], [Y]), "conv_identity_add_bn.onnx", 1)

    # Add of a constant that is not per channel ([W] broadcast on the last axis).
    nodes, inits = conv_bn(with_bias=False)
    nodes = [nodes[0], helper.make_node("Add", ["y0", "addc"], ["y2"], name="add_w"),
             bn_node("bn", "y2", "y")]
    inits.append(init("addc", rng.normal(0, 0.3, (6,)).astype(np.float32)))
    save(model(nodes, inits, [X], [Y]), "conv_add_not_per_channel.onnx", 0,
         ["constant_not_per_channel"])

    # Conv -> BN -> Relu, Conv output also read elsewhere (shared) and a graph output.
    nodes, inits = conv_bn()
    nodes.append(helper.make_node("Relu", ["y0"], ["r"], name="relu_side"))
    save(model(nodes, inits, [X], [Y, vi("r", f32, None)]), "conv_output_shared.onnx", 0,
         ["producer_output_shared"])
    nodes, inits = conv_bn()
    save(model(nodes, inits, [X], [Y, vi("y0", f32, None)]), "conv_output_is_graph_output.onnx",
         0, ["producer_output_is_graph_output"])

    # training_mode=1 (opset 14+); spatial=0 (opset 8); is_test=0 (opset 6)
    nodes, inits = conv_bn()
    nodes[1] = bn_node("bn", "y0", "y", training_mode=1)
    save(model(nodes, inits, [X], [Y], opset=15), "bn_training_mode.onnx", 0, ["training_mode"],
         verify=False, check=False)
    nodes, inits = conv_bn()
    nodes[1] = bn_node("bn", "y0", "y", spatial=0)
    save(model(nodes, inits, [X], [Y], opset=8, ir=3), "bn_spatial0_op8.onnx", 0, ["not_spatial"],
         verify=False, check=False)
    nodes, inits = conv_bn()
    nodes[1] = bn_node("bn", "y0", "y", is_test=0)
    save(model(nodes, inits, [X], [Y], opset=6, ir=3), "bn_is_test0_op6.onnx", 0,
         ["training_mode"], verify=False, check=False)
    nodes, inits = conv_bn()
    nodes[1] = bn_node("bn", "y0", "y", is_test=1)
    save(model(nodes, inits, [X] + [vi(t.name, t.data_type, list(t.dims)) for t in inits], [Y],
               opset=6, ir=3), "bn_is_test1_op6_ir3.onnx", 1, verify=False, check=False)
    # Running-statistics outputs in use.
    nodes, inits = conv_bn()
    nodes[1] = helper.make_node("BatchNormalization", nodes[1].input, ["y", "rm", "rv"],
                                name="bn", training_mode=1)
    save(model(nodes, inits, [X], [Y, vi("rm", f32, None)], opset=15), "bn_extra_outputs.onnx",
         0, ["training_mode"], verify=False, check=False)

    # Parameters: a graph input (runtime); an initializer also listed as input in IR >= 4.
    nodes, inits = conv_bn()
    inits = [t for t in inits if t.name != "bn.mean"]
    save(model(nodes, inits, [X, vi("bn.mean", f32, [4])], [Y]), "bn_param_runtime.onnx", 0,
         ["param_not_constant"], verify=False)  # tract needs constant BN parameters
    nodes, inits = conv_bn()
    save(model(nodes, inits, [X, vi("bn.var", f32, [4])], [Y]), "bn_param_overridable.onnx", 0,
         ["param_overridable"])
    # IR 3: initializers listed as inputs are constants by the spec.
    nodes, inits = conv_bn()
    save(model(nodes, inits, [X] + [vi(t.name, t.data_type, list(t.dims)) for t in inits], [Y],
               opset=8, ir=3), "conv_bn_ir3.onnx", 1)
    # Parameters as Constant nodes.
    nodes, inits = conv_bn()
    consts = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
              for t in inits if t.name.startswith("bn.")]
    inits = [t for t in inits if not t.name.startswith("bn.")]
    save(model(consts + nodes, inits, [X], [Y]), "conv_bn_constant_nodes.onnx", 1)

    # A quantized weight behind DequantizeLinear.
    nodes, inits = conv_bn(with_bias=False)
    wq = np.clip(np.round(numpy_helper.to_array(inits[0]) / 0.01), -127, 127).astype(np.int8)
    inits = [init("wq", wq), init("wscale", np.float32(0.01)), init("wzp", np.int8(0))] + inits[1:]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "wscale", "wzp"], ["w"], name="dq")] + nodes
    save(model(nodes, inits, [X], [Y]), "conv_bn_dequantized_weight.onnx", 0, ["quantized_weight"])

    # Shape mismatch: BN over 5 channels after a 4-channel Conv (invalid to run).
    nodes, inits = conv_bn()
    inits = [t for t in inits if not t.name.startswith("bn.")] + bn_params("bn", 5)
    save(model(nodes, inits, [X], [Y]), "bn_shape_mismatch.onnx", 0, ["shape_mismatch"],
         verify=False, check=False)

    # A weight shared by two Convs: the folded one gets a new tensor.
    nodes, inits = conv_bn()
    nodes.append(helper.make_node("Conv", ["x", "w"], ["z"], name="conv_twin"))
    save(model(nodes, inits, [X], [Y, vi("z", f32, None)]), "conv_shared_weight.onnx", 1)

    # ConvTranspose group=2 hand-built with bias.
    w = init("w", rng.normal(0, 0.5, (4, 3, 2, 2)).astype(np.float32))
    inits = [w, init("b", rng.normal(0, 0.1, 6).astype(np.float32))] + bn_params("bn", 6)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y0"], name="convt", group=2,
                              strides=[2, 2]), bn_node("bn", "y0", "y")]
    save(model(nodes, inits, [vi("x", f32, [1, 4, 5, 5])], [Y]), "convtranspose_group2.onnx", 1)

    # Gemm variants: transB, alpha, beta, every C shape.
    A = vi("a", f32, [3, 5])
    for trans_b in (0, 1):
        for c_shape in (None, (), (6,), (1, 6), (3, 6), (3, 1)):
            b = rng.normal(0, 0.5, (6, 5) if trans_b else (5, 6)).astype(np.float32)
            inits = [init("B", b)] + bn_params("bn", 6)
            ins = ["a", "B"]
            if c_shape is not None:
                inits.append(init("C", rng.normal(0, 0.5, c_shape).astype(np.float32)))
                ins.append("C")
            nodes = [helper.make_node("Gemm", ins, ["y0"], name="gemm", transB=trans_b,
                                      alpha=0.7, beta=1.3), bn_node("bn", "y0", "y")]
            tag = "none" if c_shape is None else "x".join(map(str, c_shape)) or "scalar"
            save(model(nodes, inits, [A], [Y]), f"gemm_transb{trans_b}_c_{tag}.onnx", 1)

    # MatMul: rank 2 folds (into Gemm), a Transpose of a constant is seen through, rank 3 skips.
    inits = [init("W", rng.normal(0, 0.5, (5, 6)).astype(np.float32))] + bn_params("bn", 6)
    nodes = [helper.make_node("MatMul", ["a", "W"], ["y0"], name="mm"), bn_node("bn", "y0", "y")]
    save(model(nodes, inits, [A], [Y]), "matmul_bn.onnx", 1)
    inits = [init("Wt", rng.normal(0, 0.5, (6, 5)).astype(np.float32))] + bn_params("bn", 6)
    nodes = [helper.make_node("Transpose", ["Wt"], ["W"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["a", "W"], ["y0"], name="mm"), bn_node("bn", "y0", "y")]
    save(model(nodes, inits, [A], [Y]), "matmul_transposed_weight_bn.onnx", 1)
    inits = [init("W", rng.normal(0, 0.5, (5, 5)).astype(np.float32))] + bn_params("bn", 4)
    nodes = [helper.make_node("MatMul", ["a", "W"], ["y0"], name="mm"), bn_node("bn", "y0", "y")]
    save(model(nodes, inits, [vi("a", f32, [2, 4, 5])], [Y]), "matmul_rank3_bn.onnx", 0,
         ["mat_mul_rank"])
    inits = [init("W", rng.normal(0, 0.5, (5, 6)).astype(np.float32))] + bn_params("bn", 6)
    nodes = [helper.make_node("Relu", ["a"], ["ar"], name="relu"),
             helper.make_node("MatMul", ["ar", "W"], ["y0"], name="mm"), bn_node("bn", "y0", "y")]
    save(model(nodes, inits, [vi("a", f32, ["batch", 5])], [Y]), "matmul_rank_inferred_bn.onnx", 1)

    # BN inside an If branch.
    nodes, inits = conv_bn()
    then_g = helper.make_graph(nodes, "then", [], [vi("y", f32, None)], inits)
    else_nodes, else_inits = conv_bn()
    for t in else_inits:
        t.name = "else_" + t.name
    for n in else_nodes:
        n.name = "else_" + n.name
        n.input[:] = [i if i == "x" else "else_" + i for i in n.input]
        n.output[:] = ["else_" + o for o in n.output]
    else_g = helper.make_graph(else_nodes, "else", [], [vi("else_y", f32, None)], else_inits)
    cond = init("cond", np.array(True))
    top = [helper.make_node("If", ["cond"], ["out"], name="if", then_branch=then_g,
                            else_branch=else_g)]
    m = model(top, [cond], [vi("x", f32, [1, 3, 8, 8])], [vi("out", f32, None)])
    save(m, "if_conv_bn.onnx", 2, check=False)

    # A model with no BN at all.
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    save(model(nodes, [], [X], [Y]), "no_bn.onnx", 0)

    # A LayerNormalization, listed as never foldable.
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "o"], ["y"], name="ln", axis=-1)]
    save(model(nodes, [init("s", np.ones(8, np.float32)), init("o", np.zeros(8, np.float32))],
               [X], [Y], opset=17), "layernorm.onnx", 0)

    # External data: weights in a separate file beside the model.
    nodes, inits = conv_bn(c=8)
    m = model(nodes, inits, [X], [Y])
    fill_output_types(m)
    ext_dir = os.path.join(OUT, "external")
    os.makedirs(ext_dir, exist_ok=True)
    # onnx appends to a data file that exists: the old one goes first, or the weights would
    # land after the previous run's.
    data = os.path.join(ext_dir, "conv_bn_external.data")
    if os.path.exists(data):
        os.remove(data)
    onnx.save_model(m, os.path.join(ext_dir, "conv_bn_external.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="conv_bn_external.data",
                    size_threshold=0)
    record("external/conv_bn_external.onnx", 1)
