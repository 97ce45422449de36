"""Real exporter output: torch.onnx.export (the legacy TorchScript exporter with
training=TrainingMode.PRESERVE and do_constant_folding=False, and the dynamo exporter with
optimize=False) at several opsets, and BatchNorm exported as arithmetic (FrozenBatchNorm2d)."""
import os

import onnx

from fixtures_common import OUT, export_legacy, randomize_batch_norms, record


# ---------------------------------------------------------------- torch exports
def torch_fixtures():
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    def randomize(model):
        return randomize_batch_norms(model, tiny_first_variance=True)

    def legacy(model, x, name, opset, folds, skips=()):
        export_legacy(randomize(model), x, name, opset, folds, skips)

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
