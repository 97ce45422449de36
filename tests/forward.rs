//! Forward folds (BN into the Conv or Gemm that consumes it), the padding rule, and
//! `--decompose-standalone`, on torch exports; every result checked against the original by
//! tract, and the padding rule shown to matter: the naive full fold into a padded Conv fails.

mod common;

use std::path::{Path, PathBuf};

use bnfold::report::Direction;
use bnfold::tensor::decode;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::FORWARD_KINDS;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn ops(model: &Model, op: &str) -> usize {
    bnfold::op_counts(model.proto.graph.as_ref().unwrap())
        .get(op)
        .copied()
        .unwrap_or(0)
}

fn folded(name: &str, options: &FoldOptions) -> (Model, Model, bnfold::Report) {
    let original = Model::load(fixture(name)).unwrap();
    let mut fused = original.clone();
    let report = fold(&mut fused, options).unwrap();
    (original, fused, report)
}

fn passes(original: &Model, fused: &Model) -> bool {
    let v = verify(original, fused, &[], &VerifyOptions::default()).unwrap();
    v.status == Status::Passed
}

#[test]
fn relu_bn_conv_without_padding_folds_forward_completely() {
    let (original, fused, report) = folded(
        "torch_relu_bn_conv_nopad_op13.onnx",
        &FoldOptions::default(),
    );
    assert_eq!(report.folds.len(), 1);
    assert_eq!(report.folds[0].direction, Direction::Forward);
    assert_eq!(report.folds[0].shift_kept_as, None);
    assert_eq!(
        (ops(&fused, "BatchNormalization"), ops(&fused, "Add")),
        (0, 0)
    );
    assert!(passes(&original, &fused));
}

#[test]
fn relu_bn_conv_with_padding_folds_the_scale_and_keeps_the_shift_as_one_add() {
    let (original, fused, report) =
        folded("torch_relu_bn_conv_pad_op13.onnx", &FoldOptions::default());
    assert_eq!(report.folds[0].direction, Direction::Forward);
    assert!(report.folds[0].shift_kept_as.is_some());
    assert_eq!(
        (ops(&fused, "BatchNormalization"), ops(&fused, "Add")),
        (0, 1)
    );
    assert!(passes(&original, &fused));
}

/// The full forward fold (`W' = W·a`, `b' = b + Σ W·c`) written out here, applied to the padded
/// Conv as a peer tool would: tract catches the border error, so the padding rule matters.
#[test]
fn the_naive_full_fold_into_a_padded_conv_is_caught_by_verification() {
    let original = Model::load(fixture("torch_relu_bn_conv_pad_op13.onnx")).unwrap();
    let mut naive = original.clone();
    let g = naive.proto.graph.as_mut().unwrap();
    let get = |g: &bnfold::proto::GraphProto, n: &str| {
        decode(
            g.initializer.iter().find(|t| t.name() == n).unwrap(),
            &Default::default(),
        )
        .unwrap()
    };
    let bn_at = g
        .node
        .iter()
        .position(|n| n.op_type() == "BatchNormalization")
        .unwrap();
    let bn = g.node[bn_at].clone();
    let conv_at = g
        .node
        .iter()
        .position(|n| n.op_type() == "Conv" && n.input[0] == bn.output[0])
        .unwrap();
    let conv = g.node[conv_at].clone();
    let (gamma, beta, mean, var) = (
        get(g, &bn.input[1]),
        get(g, &bn.input[2]),
        get(g, &bn.input[3]),
        get(g, &bn.input[4]),
    );
    let eps = bn
        .attribute
        .iter()
        .find(|a| a.name() == "epsilon")
        .and_then(|a| a.f)
        .unwrap_or(1e-5) as f64;
    let (mut w, mut b) = (get(g, &conv.input[1]), get(g, &conv.input[2]));
    let channels = gamma.len();
    let taps = w.len() / (w.dims[0] * channels);
    let original_w = w.data.clone();
    for o in 0..w.dims[0] {
        for i in 0..channels {
            let a = gamma.data[i] / (var.data[i] + eps).sqrt();
            let c = beta.data[i] - mean.data[i] * a;
            for t in 0..taps {
                let k = (o * channels + i) * taps + t;
                w.data[k] = original_w[k] * a;
                b.data[o] += original_w[k] * c;
            }
        }
    }
    for (name, t) in [(conv.input[1].clone(), w), (conv.input[2].clone(), b)] {
        let slot = g.initializer.iter_mut().find(|x| x.name() == name).unwrap();
        *slot = t.to_proto(&name);
    }
    g.node[conv_at].input[0] = bn.input[0].clone();
    g.node.remove(bn_at);
    let v = verify(&original, &naive, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(
        v.status,
        Status::Failed,
        "the naive fold differs at the borders"
    );
    // Caught where it is: the fold's own region, run alone, names the Conv.
    let conv_name = bnfold::graph::node_label(&conv);
    let region = v.regions.iter().find(|r| r.node == conv_name).unwrap();
    assert_eq!(region.status, Status::Failed, "{region:?}");
    assert!(
        v.reason
            .unwrap()
            .contains(&format!("region of {conv_name} ")),
        "{:?}",
        v.regions
    );
}

#[test]
fn every_forward_fold_passes_its_region_run_alone() {
    for name in FORWARD_KINDS
        .into_iter()
        .chain(["torch_bn_input_conv_pad_op13.onnx"])
    {
        let (original, fused, report) = folded(name, &FoldOptions::default());
        assert_eq!(report.folds[0].direction, Direction::Forward, "{name}");
        let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
        assert_eq!(v.status, Status::Passed, "{name}: {v:?}");
        assert_eq!(
            v.regions.len(),
            report.folds.len(),
            "{name}: {:?}",
            v.regions
        );
        assert!(
            v.regions.iter().all(|r| r.status == Status::Passed),
            "{name}: {:?}",
            v.regions
        );
    }
}

#[test]
fn grouped_consumer_maps_channels_per_group() {
    let (original, fused, report) = folded(
        "torch_relu_bn_conv_grouped_op13.onnx",
        &FoldOptions::default(),
    );
    assert_eq!(report.folds.len(), 1);
    assert_eq!(ops(&fused, "BatchNormalization"), 0);
    assert!(passes(&original, &fused));
}

#[test]
fn classifier_head_and_bn_on_the_input_fold_into_gemm() {
    for name in [
        "torch_head_bn_flatten_linear_op13.onnx",
        "torch_bn1d_input_linear_op13.onnx",
    ] {
        let (original, fused, report) = folded(name, &FoldOptions::default());
        assert_eq!(report.folds.len(), 1, "{name}");
        assert_eq!(report.folds[0].kind, bnfold::FoldKind::Gemm, "{name}");
        assert_eq!(ops(&fused, "BatchNormalization"), 0, "{name}");
        assert!(passes(&original, &fused), "{name}");
    }
}

#[test]
fn backward_is_preferred_and_a_bn_before_a_relu_stays_with_both_reasons() {
    let (original, fused, report) = folded("torch_preact_block_op13.onnx", &FoldOptions::default());
    assert_eq!(report.folds.len(), 1);
    assert_eq!(report.folds[0].direction, Direction::Backward);
    let skip = &report.skips[0];
    assert_eq!(skip.reason.code(), "producer_output_shared");
    assert_eq!(
        skip.forward.as_ref().map(|f| f.code()).as_deref(),
        Some("consumer_not_foldable")
    );
    assert!(passes(&original, &fused));
}

#[test]
fn decompose_standalone_rewrites_a_bn_after_add_into_mul_and_add() {
    let (original, kept, report) =
        folded("torch_add_bn_standalone_op13.onnx", &FoldOptions::default());
    assert_eq!(
        (
            ops(&kept, "BatchNormalization"),
            report.decompositions.len()
        ),
        (1, 0)
    );
    let options = FoldOptions {
        decompose_standalone: true,
        ..FoldOptions::default()
    };
    let (_, fused, report) = folded("torch_add_bn_standalone_op13.onnx", &options);
    assert_eq!(report.decompositions.len(), 1);
    assert!(report.skips.is_empty());
    assert_eq!(
        (
            ops(&fused, "BatchNormalization"),
            ops(&fused, "Mul"),
            ops(&fused, "Add")
        ),
        (0, 1, 2)
    );
    assert!(passes(&original, &fused));
}

#[test]
fn decompose_standalone_reaches_every_bn_of_a_deep_chain() {
    // 40 Relu -> BN blocks, no value_info: each BN's rank is inferred back through every block
    // before it (three nodes each once decomposed), far beyond any fixed depth. Every BN is
    // decomposed, and the result runs as the original does.
    let mut graph = common::build::Graph::new(13).input("x0", &[1, 3, 4, 4]);
    for i in 0..40 {
        let (x, r, y) = (format!("x{i}"), format!("r{i}"), format!("x{}", i + 1));
        graph = graph
            .node("Relu", &[&x], &[&r])
            .bn_params(&format!("bn{i}"), 3)
            .bn(&format!("bn{i}"), &r, &y);
    }
    let model = graph.output("x40").model();
    let original = Model::from_proto(model, bnfold::external::ExternalStore::none()).unwrap();
    let mut fused = original.clone();
    let options = FoldOptions {
        decompose_standalone: true,
        ..FoldOptions::default()
    };
    let report = fold(&mut fused, &options).unwrap();
    assert_eq!(report.decompositions.len(), 40);
    assert_eq!(
        (ops(&fused, "BatchNormalization"), ops(&fused, "Mul")),
        (0, 40)
    );
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    assert!(passes(&original, &fused));
}

#[test]
fn convtranspose_takes_the_scale_and_matmul_becomes_gemm() {
    let (original, fused, report) = folded(
        "torch_relu_bn_convtranspose_op13.onnx",
        &FoldOptions::default(),
    );
    assert_eq!(report.folds[0].kind, bnfold::FoldKind::ConvTranspose);
    assert!(report.folds[0].shift_kept_as.is_some());
    assert_eq!(
        (ops(&fused, "BatchNormalization"), ops(&fused, "Add")),
        (0, 1)
    );
    assert!(passes(&original, &fused));

    let (original, fused, report) = folded("torch_bn1d_matmul_op13.onnx", &FoldOptions::default());
    assert_eq!(report.folds[0].kind, bnfold::FoldKind::MatMul);
    assert_eq!(
        (
            ops(&fused, "BatchNormalization"),
            ops(&fused, "MatMul"),
            ops(&fused, "Gemm")
        ),
        (0, 0, 1)
    );
    assert!(passes(&original, &fused));
}
