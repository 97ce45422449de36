"""Real exports for forward folds (BN after a ReLU, on the graph input, before Flatten +
Linear) and for the pairs --equalize balances."""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fixtures_common import OUT, export_legacy, randomize_batch_norms, record, save


# ---------------------------------------------------------------- forward folds (torch exports)
def forward_fixtures():
    """BN where no backward fold applies: after a ReLU, on the graph input, before Flatten + Linear."""
    import torch
    import torch.nn as nn

    torch.manual_seed(1)

    def randomize(model):
        return randomize_batch_norms(model, negative_even_gains=True)

    def legacy(model, x, name, folds, skips=(), opset=13):
        export_legacy(randomize(model), x, name, opset, folds, skips)

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
        return randomize_batch_norms(model, gains=(0.1, 4.0))  # unbalanced channel gains

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
