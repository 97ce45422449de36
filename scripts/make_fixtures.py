#!/usr/bin/env python3
"""Regenerates every model in fixtures/ (run by hand; needs torch, torchvision, onnx, onnxscript,
numpy; `--forward-only`, `--forms-only` and `--equalize-only` add one group to the manifest).

Real exporter output: torch.onnx.export, legacy TorchScript exporter with
training=TrainingMode.PRESERVE and do_constant_folding=False, and the dynamo exporter with
optimize=False, at several opsets, BN statistics randomized so folding is not trivial.
Hand-built graphs (onnx.helper) cover what exporters rarely emit. fixtures/manifest.json records
for each file how many BatchNormalization nodes must fold and which skip reasons must remain.
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
manifest = {}


def record(name, folds, skips=(), verify=True, check=True):
    manifest[name] = {"folds": folds, "skips": sorted(skips), "verify": verify, "check": check}


def fill_output_types(model):
    """Graph outputs get their inferred types; intermediate value_info stays absent on purpose."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for out, inf in zip(model.graph.output, inferred.graph.output):
            if not out.type.tensor_type.HasField("shape"):
                out.type.CopyFrom(inf.type)
    except Exception:
        pass


def save(model, name, folds, skips=(), verify=True, check=True):
    fill_output_types(model)
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name))
    record(name, folds, skips, verify, check)


# ---------------------------------------------------------------- torch exports
def torch_fixtures():
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    def randomize(model):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 2.0)
                m.running_var[0] = 1e-3  # tiny variance: epsilon matters
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
        return model.eval()

    def legacy(model, x, name, opset, folds, skips=()):
        path = os.path.join(OUT, name)
        torch.onnx.export(
            randomize(model), x, path, opset_version=opset, dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
            input_names=["input"], output_names=["output"],
        )
        onnx.checker.check_model(onnx.load(path))
        record(name, folds, skips)

    def dynamo(model, x, name, opset, folds, skips=()):
        path = os.path.join(OUT, name)
        program = torch.onnx.export(randomize(model), (x,), dynamo=True, optimize=False,
                                    opset_version=opset, input_names=["input"],
                                    output_names=["output"])
        program.save(path)
        m = onnx.load(path)
        onnx.checker.check_model(m)
        record(name, folds, skips)

    class Seq(nn.Sequential):
        pass

    legacy(Seq(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6), nn.ReLU()), torch.randn(1, 3, 16),
           "torch_conv1d_bn_relu_op13.onnx", 13, 1)
    legacy(Seq(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
               nn.Conv2d(8, 8, 3, groups=2), nn.BatchNorm2d(8),
               nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.BatchNorm2d(8)),
           torch.randn(1, 3, 12, 12), "torch_conv2d_grouped_depthwise_op11.onnx", 11, 3)
    legacy(Seq(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), torch.randn(1, 2, 6, 6, 6),
           "torch_conv3d_bn_op17.onnx", 17, 1)
    legacy(Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)),
           torch.randn(1, 3, 8, 8), "torch_conv_bn_bn_op13.onnx", 13, 2)
    legacy(Seq(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)),
           torch.randn(1, 4, 5, 5), "torch_convtranspose_grouped_op13.onnx", 13, 1)
    legacy(Seq(nn.ConvTranspose1d(3, 5, 4, bias=False), nn.BatchNorm1d(5)),
           torch.randn(1, 3, 7), "torch_convtranspose1d_nobias_op9.onnx", 9, 1)
    legacy(Seq(nn.Linear(10, 6), nn.BatchNorm1d(6), nn.ReLU()), torch.randn(4, 10),
           "torch_linear_bn1d_op13.onnx", 13, 1)
    legacy(Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.randn(1, 3, 8, 8),
           "torch_conv_bn_op7.onnx", 7, 1)
    # BN after ReLU: nothing to fold backward into.
    legacy(Seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), torch.randn(1, 3, 8, 8),
           "torch_relu_bn_op13.onnx", 13, 0, ["unsupported_producer"])
    dynamo(Seq(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
               nn.Conv2d(6, 6, 3, groups=3), nn.BatchNorm2d(6)),
           torch.randn(1, 3, 10, 10), "torch_dynamo_conv_bn_op18.onnx", 18, 2)
    dynamo(Seq(nn.Linear(8, 5), nn.BatchNorm1d(5)), torch.randn(3, 8),
           "torch_dynamo_linear_bn_op18.onnx", 18, 1)


# ---------------------------------------------------------------- BatchNorm as arithmetic
def affine_fixtures():
    """FrozenBatchNorm2d (torchvision's detection backbones) exports as Conv → Mul → Add: with
    constant folding the scale and shift are [1, C, 1, 1] initializers, without it they are
    computed from the four buffers in the graph. Statistics are measured on each layer's real
    input (a batch of random images through the network), then perturbed."""
    import torch
    import torch.nn as nn
    from torchvision.models.resnet import BasicBlock, conv1x1
    from torchvision.ops import FeaturePyramidNetwork
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)

    class TinyFrozenResNet(nn.Module):
        def __init__(self, fpn=False):
            super().__init__()
            norm = FrozenBatchNorm2d
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                                      norm(8), nn.ReLU())
            self.layer1 = BasicBlock(8, 8, norm_layer=norm)
            down = nn.Sequential(conv1x1(8, 16, stride=2), norm(16))
            self.layer2 = BasicBlock(8, 16, stride=2, downsample=down, norm_layer=norm)
            self.fpn = FeaturePyramidNetwork([8, 16], 8) if fpn else None
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            c1 = self.layer1(self.stem(x))
            c2 = self.layer2(c1)
            if self.fpn is not None:
                features = self.fpn({"c1": c1, "c2": c2})
                return features["c1"], features["c2"]
            return self.head(c2.mean(dim=(2, 3)))

    def calibrate(model):
        """Running statistics from the real input of each FrozenBN, perturbed by ±20 %."""
        frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        for m in frozen:
            c = m.weight.numel()
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
        for m in frozen:
            seen = {}
            hook = m.register_forward_pre_hook(lambda mod, inp: seen.update(x=inp[0]))
            with torch.no_grad():
                model(torch.randn(8, 3, 32, 32))
            hook.remove()
            x = seen["x"]
            mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
            m.running_mean.copy_(mean * torch.empty_like(mean).uniform_(0.8, 1.2))
            m.running_var.copy_(var * torch.empty_like(var).uniform_(0.8, 1.2) + 1e-3)
        return model.eval()

    def export(model, name, folds, constant_folding=True, dynamo=False, opset=13):
        path = os.path.join(OUT, name)
        x = torch.randn(1, 3, 32, 32)
        if dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                        input_names=["input"])
            program.save(path)
        else:
            torch.onnx.export(model, x, path, opset_version=opset, dynamo=False,
                              do_constant_folding=constant_folding, input_names=["input"])
        onnx.checker.check_model(onnx.load(path))
        record(name, folds)

    resnet = calibrate(TinyFrozenResNet())
    export(resnet, "torch_frozen_bn_resnet_op13.onnx", 6)
    export(resnet, "torch_frozen_bn_resnet_unfolded_op13.onnx", 6, constant_folding=False)
    export(resnet, "torch_dynamo_frozen_bn_resnet_op18.onnx", 6, dynamo=True, opset=18)
    export(calibrate(TinyFrozenResNet(fpn=True)), "torch_frozen_bn_fpn_backbone_op13.onnx", 6)

    def measured(model):
        """BN statistics measured on each BN's real input, then perturbed by ±20 %."""
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        seen = {}
        hooks = [m.register_forward_pre_hook(lambda mod, inp: seen.update({mod: inp[0]}))
                 for m in bns]
        with torch.no_grad():
            model(torch.randn(8, 3, 32, 32))
        for h in hooks:
            h.remove()
        for m, x in seen.items():
            mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))
            m.running_mean.copy_(mean * torch.empty_like(mean).uniform_(0.8, 1.2))
            m.running_var.copy_(var * torch.empty_like(var).uniform_(0.8, 1.2) + 1e-3)
        return model.eval()

    # timm's MixNet-S at a quarter of its width: mixed kernels (split → Convs → Concat → BN).
    # The legacy exporter folds each Conv → BN itself; the 34 BNs after a Concat stay, each
    # folding into the Concat's Convs (one fold record per Conv: 82).
    from timm.models.efficientnet import _gen_mixnet_s

    mixnet = _gen_mixnet_s("mixnet_s", channel_multiplier=0.25, pretrained=False,
                           num_classes=10).eval()
    mixnet = measured(mixnet)
    path = os.path.join(OUT, "timm_mixnet_s_quarter_op13.onnx")
    torch.onnx.export(mixnet, torch.randn(1, 3, 32, 32), path, opset_version=13, dynamo=False,
                      input_names=["input"])
    onnx.checker.check_model(onnx.load(path))
    concat_bns = [n for n in onnx.load(path).graph.node if n.op_type == "BatchNormalization"]
    producers = {o: n for n in onnx.load(path).graph.node for o in n.output}
    parts = sum(len(producers[bn.input[0]].input) for bn in concat_bns)
    record("timm_mixnet_s_quarter_op13.onnx", parts)

    # RepVGG and MobileOne blocks in their training form (timm's own blocks, small widths):
    # Add(BN(x), BN(Conv3x3(x)), BN(Conv1x1(x))). With constant folding the exporter folds each
    # Conv's BN; the identity BN stays (a mergeable_branch, for --merge-branches); without it,
    # bnfold folds the branch BNs itself.
    from timm.models.byobnet import MobileOneBlock, RepVggBlock

    class TinyRepVgg(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(RepVggBlock(3, 8, stride=2), RepVggBlock(8, 8),
                                        RepVggBlock(8, 16, stride=2), RepVggBlock(16, 16))
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.blocks(x).mean(dim=(2, 3)))

    class TinyMobileOne(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(
                MobileOneBlock(3, 8, stride=2, num_conv_branches=2),
                MobileOneBlock(8, 8, group_size=1, num_conv_branches=4),
                MobileOneBlock(8, 8, kernel_size=1, num_conv_branches=4),
                MobileOneBlock(8, 8, stride=2, group_size=1, num_conv_branches=2),
                MobileOneBlock(8, 16, kernel_size=1, num_conv_branches=2))
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            return self.head(self.blocks(x).mean(dim=(2, 3)))

    for label, model in (("repvgg", TinyRepVgg()), ("mobileone", TinyMobileOne())):
        model = measured(model)
        for folding in (True, False):
            name = f"timm_{label}_blocks{'' if folding else '_unfolded'}_op13.onnx"
            path = os.path.join(OUT, name)
            torch.onnx.export(model, torch.randn(1, 3, 32, 32), path, opset_version=13,
                              dynamo=False, do_constant_folding=folding,
                              training=torch.onnx.TrainingMode.EVAL, input_names=["input"])
            graph = onnx.load(path).graph
            onnx.checker.check_model(onnx.load(path))
            producers = {o: n for n in graph.node for o in n.output}
            bns = [n for n in graph.node if n.op_type == "BatchNormalization"]
            on_conv = [b for b in bns if producers.get(b.input[0]) is not None
                       and producers[b.input[0]].op_type == "Conv"]
            # MobileOne exports `+ 0` for a missing identity branch: after a lone Conv, a bias
            # Add that folds.
            uses = {}
            for n in graph.node:
                for i in n.input:
                    uses[i] = uses.get(i, 0) + 1
            bias_adds = [
                n for n in graph.node if n.op_type == "Add" and any(
                    producers.get(i) is not None and producers[i].op_type == "Constant"
                    for i in n.input) and any(
                    producers.get(i) is not None and producers[i].op_type == "Conv"
                    and uses[i] == 1 for i in n.input)]
            record(name, len(on_conv) + len(bias_adds),
                   ["mergeable_branch"] * (len(bns) - len(on_conv)))


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
    onnx.save_model(m, os.path.join(ext_dir, "conv_bn_external.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="conv_bn_external.data",
                    size_threshold=0)
    record("external/conv_bn_external.onnx", 1)


# ---------------------------------------------------------------- forward folds (torch exports)
def forward_fixtures():
    """BN where no backward fold applies: after a ReLU, on the graph input, before Flatten + Linear."""
    import torch
    import torch.nn as nn

    torch.manual_seed(1)

    def randomize(model):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.weight.data[::2] *= -1  # negative scales: a ReLU before the BN does not commute
                m.bias.data.uniform_(-0.5, 0.5)
        return model.eval()

    def legacy(model, x, name, folds, skips=(), opset=13):
        path = os.path.join(OUT, name)
        torch.onnx.export(
            randomize(model), x, path, opset_version=opset, dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
            input_names=["input"], output_names=["output"],
        )
        onnx.checker.check_model(onnx.load(path))
        record(name, folds, skips)

    class PreActBlock(nn.Module):
        """He et al. 2016 pre-activation: BN -> ReLU -> Conv, twice, plus the identity."""

        def __init__(self, c):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1, bias=False)

        def forward(self, x):
            out = self.conv1(torch.relu(self.bn1(x)))
            return x + self.conv2(torch.relu(self.bn2(out)))

    S = nn.Sequential
    # bn1 reads the graph input (shared with the residual Add) and feeds a ReLU: stays; bn2 folds
    # backward into conv1.
    legacy(PreActBlock(4), torch.randn(1, 4, 8, 8), "torch_preact_block_op13.onnx", 1, ["producer_output_shared"])
    legacy(S(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3)),
           torch.randn(1, 3, 10, 10), "torch_relu_bn_conv_nopad_op13.onnx", 1)
    legacy(S(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3, padding=1)),
           torch.randn(1, 3, 10, 10), "torch_relu_bn_conv_pad_op13.onnx", 1)
    legacy(S(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, groups=2, stride=2)),
           torch.randn(1, 3, 11, 11), "torch_relu_bn_conv_grouped_op13.onnx", 1)
    legacy(S(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)),
           torch.randn(2, 3, 8, 8), "torch_head_bn_flatten_linear_op13.onnx", 1)
    legacy(S(nn.BatchNorm1d(7), nn.Linear(7, 3)), torch.randn(4, 7), "torch_bn1d_input_linear_op13.onnx", 1)
    legacy(S(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1)), torch.randn(1, 3, 6, 6),
           "torch_bn_input_conv_pad_op13.onnx", 1)

    # The scale folds into the ConvTranspose, the shift stays as an Add (border coverage varies).
    legacy(S(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 6, 3, stride=2)),
           torch.randn(1, 3, 7, 7), "torch_relu_bn_convtranspose_op13.onnx", 1)
    # Linear without bias exports as MatMul (of a Transpose of the parameter): becomes a Gemm.
    legacy(S(nn.BatchNorm1d(7), nn.Linear(7, 3, bias=False)), torch.randn(4, 7),
           "torch_bn1d_matmul_op13.onnx", 1)

    class ViewHead(nn.Module):
        """The older idiom: x.view(x.size(0), -1) exports as Shape/Gather/Concat -> Reshape."""

        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            y = self.bn(torch.relu(self.conv(x)))
            return self.fc(y.view(y.size(0), -1))

    legacy(ViewHead(), torch.randn(2, 3, 8, 8), "torch_head_bn_view_linear_op13.onnx", 1)

    # Hand-built: Reshape to [C, -1] puts channels in rows, not features: must not fold forward.
    frng = np.random.default_rng(11)
    c = 4
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in [
        ("g", frng.uniform(0.5, 1.5, c)), ("b", frng.uniform(-0.5, 0.5, c)),
        ("m", frng.uniform(-1, 1, c)), ("v", frng.uniform(0.2, 2, c)),
        ("shape", np.array([c, -1], np.int64)), ("w", frng.standard_normal((36, 3)))]]
    inits[-2] = numpy_helper.from_array(np.array([c, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], name="bn"),
         helper.make_node("Reshape", ["n", "shape"], ["r"], name="reshape"),
         helper.make_node("Gemm", ["r", "w"], ["y"], name="gemm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [c, 3])], inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
         "bn_reshape_channels_as_rows.onnx", 0, ["no_producer"])

    class AddBn(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x, y):
            return self.bn(x + y)

    path = os.path.join(OUT, "torch_add_bn_standalone_op13.onnx")
    torch.onnx.export(randomize(AddBn()), (torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)), path,
                      opset_version=13, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=False, input_names=["x", "y"], output_names=["output"])
    record("torch_add_bn_standalone_op13.onnx", 0, ["unsupported_producer"])


# ---------------------------------------------------------------- pairs --equalize balances
def equalize_fixtures():
    """Real exports whose layers pair for cross-layer equalization beyond Conv → Conv: an MLP
    (Gemm → Relu → Gemm) and a decoder (Conv → Relu → ConvTranspose → Relu → Conv), each
    between two nonlinearities so every pair's region is bounded inside the graph."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    def randomize(model):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 2.0)
                m.weight.data.uniform_(0.1, 4.0)  # unbalanced channel gains
                m.bias.data.uniform_(-0.5, 0.5)
        return model.eval()

    cases = [
        (nn.Sequential(nn.Tanh(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(),
                       nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4),
                       nn.Sigmoid()),
         torch.randn(4, 12), "torch_mlp_bn_relu_op13.onnx", 2),
        (nn.Sequential(nn.Tanh(), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                       nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1), nn.BatchNorm2d(6),
                       nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.Sigmoid()),
         torch.randn(1, 3, 8, 8), "torch_decoder_convtranspose_bn_op13.onnx", 2),
    ]
    for model, x, name, folds in cases:
        export_pair_fixture(randomize(model), x, name, folds, folding=False)


def export_pair_fixture(model, x, name, folds, folding):
    """`model` exported at opset 13 as an equalization fixture, checked and recorded."""
    import torch
    path = os.path.join(OUT, name)
    torch.onnx.export(model, x, path, opset_version=13, dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=folding,
                      input_names=["input"], output_names=["output"])
    onnx.checker.check_model(onnx.load(path))
    record(name, folds)


def equalize_more_fixtures():
    """Real exports with the pair kinds added after the first equalization fixtures: a
    transformer-style MLP on a 3-D input, whose Linear layers torch exports as MatMul then a bias
    Add, and a decoder with a grouped ConvTranspose. Channel gains are made unbalanced so that
    equalization has something to do; each pair sits between two nonlinearities."""
    import torch
    import torch.nn as nn

    torch.manual_seed(1)

    def unbalance(model):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.data *= torch.empty(m.out_features, 1).uniform_(0.05, 5.0)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 2.0)
                m.weight.data.uniform_(0.1, 4.0)
                m.bias.data.uniform_(-0.5, 0.5)
        return model.eval()

    cases = [
        (nn.Sequential(nn.Tanh(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                       nn.Linear(8, 4), nn.Sigmoid()),
         torch.randn(2, 5, 12), "torch_mlp3d_matmul_relu_op13.onnx", 0, True),
        (nn.Sequential(nn.Tanh(), nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                       nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2),
                       nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                       nn.Sigmoid()),
         torch.randn(1, 4, 8, 8), "torch_decoder_grouped_convtranspose_bn_op13.onnx", 2, False),
    ]
    # The MLP as users export it (constant folding on: the weights' Transpose is folded away).
    for model, x, name, folds, folding in cases:
        export_pair_fixture(unbalance(model), x, name, folds, folding)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    # One group added to the manifest without touching the other fixtures.
    for flag, group in (("--forward-only", forward_fixtures), ("--forms-only", affine_fixtures),
                        ("--equalize-only", equalize_fixtures),
                        ("--equalize-more-only", equalize_more_fixtures)):
        if flag in sys.argv:
            with open(os.path.join(OUT, "manifest.json")) as f:
                manifest.update(json.load(f))
            group()
            with open(os.path.join(OUT, "manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.write("\n")
            sys.exit(0)
    if "--no-torch" not in sys.argv:
        torch_fixtures()
        forward_fixtures()
        affine_fixtures()
        equalize_fixtures()
        equalize_more_fixtures()
    hand_fixtures()
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(manifest)} fixtures")
