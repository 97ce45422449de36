//! `--merge-branches`: RepVGG and MobileOne blocks in their training form (timm's own blocks)
//! become one Conv each, proven locally (each merge a divergence run against the original's
//! exact f64 values); what does not merge stays, silently; the identity branch's BN names the
//! flag when it is off.

mod common;

use bnfold::external::ExternalStore;
use bnfold::proto::ModelProto;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::build::Graph;
use common::fixture;

fn merging() -> FoldOptions {
    FoldOptions {
        merge_branches: true,
        ..FoldOptions::default()
    }
}

fn count(model: &Model, op: &str) -> usize {
    bnfold::op_counts(model.proto.graph.as_ref().unwrap())
        .get(op)
        .copied()
        .unwrap_or(0)
}

/// The original, and the fused model reloaded from its bytes, with the report.
fn merged(original: &Model) -> (Model, bnfold::Report) {
    let mut fused = original.clone();
    let report = fold(&mut fused, &merging()).unwrap();
    (
        Model::from_bytes(fused.to_bytes().unwrap()).unwrap(),
        report,
    )
}

#[test]
fn every_repvgg_and_mobileone_block_becomes_one_conv_proven_locally() {
    for (name, blocks) in [
        ("timm_repvgg_blocks_op13.onnx", 4),
        ("timm_repvgg_blocks_unfolded_op13.onnx", 4),
        ("timm_mobileone_blocks_op13.onnx", 5),
        ("timm_mobileone_blocks_unfolded_op13.onnx", 5),
    ] {
        let original = Model::load(fixture(name)).unwrap();
        let (fused, report) = merged(&original);
        assert_eq!(report.merges.len(), blocks, "{name}");
        assert_eq!(count(&fused, "Conv"), blocks, "{name}");
        assert_eq!(count(&fused, "BatchNormalization"), 0, "{name}");
        assert_eq!(count(&fused, "Add"), 0, "{name}");
        assert!(report.skips.is_empty(), "{name}: {:?}", report.skips);
        let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
        assert_eq!(v.status, Status::Passed, "{name}: {v:?}");
        assert!(v.proven_locally, "{name}: {v:?}");
        assert_eq!(v.divergences.len(), blocks, "{name}");
        assert!(v.divergences.iter().all(|d| d.status == Status::Passed));
        for m in &report.merges {
            assert!(m.max_abs_after > 0.0 && m.max_abs_before > 0.0, "{m:?}");
        }
    }
}

#[test]
fn a_merged_weight_off_by_a_thousandth_is_caught() {
    let original = Model::load(fixture("timm_repvgg_blocks_op13.onnx")).unwrap();
    let (fused, report) = merged(&original);
    let name = &report.merges[1].weight;
    let tampered = common::edited(&fused, name, |data, _, _| {
        let k = data.len() / 2;
        data[k] *= 1.001;
    });
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_ne!(v.status, Status::Passed, "{v:?}");
    assert!(
        v.divergences.iter().any(|d| d.status == Status::Failed),
        "{v:?}"
    );
}

#[test]
fn without_the_flag_the_identity_bn_names_it() {
    let original = Model::load(fixture("timm_repvgg_blocks_op13.onnx")).unwrap();
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    assert!(report.merges.is_empty());
    assert_eq!(report.skips.len(), 2);
    for s in &report.skips {
        assert_eq!(s.reason.code(), "mergeable_branch");
        assert!(s.message.contains("--merge-branches"), "{}", s.message);
    }
}

/// `x [1, 4, 5, 5]` through a Relu into `r`, then a padded 3×3 Conv `a` and a 1×1 Conv `b` of
/// `group` on `r`, added into `ab`.
fn two_branches(group: i64, pads_b: [i64; 4]) -> Graph {
    let per = 4 / group as usize;
    let wa: Vec<f32> = (0..4 * per * 9)
        .map(|i| ((i * 5) % 13) as f32 / 10.0 - 0.6)
        .collect();
    let wb: Vec<f32> = (0..4 * per).map(|i| 0.25 + i as f32 * 0.125).collect();
    Graph::new(13)
        .input("x", &[1, 4, 5, 5])
        .init("wa", &[4, per as i64, 3, 3], &wa)
        .init("ba", &[4], &[0.5, -0.5, 1.0, 0.0])
        .init("wb", &[4, per as i64, 1, 1], &wb)
        .node("Relu", &["x"], &["r"])
        .node_with("Conv", &["r", "wa", "ba"], &["a"], &[("group", group)])
        .ints("pads", &[1, 1, 1, 1])
        .node_with("Conv", &["r", "wb"], &["b"], &[("group", group)])
        .ints("pads", &pads_b)
        .node("Add", &["a", "b"], &["ab"])
}

/// Merges `model` and proves the result: tract on both models, and the merge run alone against
/// the original's own nodes in f64.
fn merge_and_verify(model: ModelProto) -> (bnfold::Report, Model) {
    let original = Model::from_proto(model, ExternalStore::none()).unwrap();
    let (fused, report) = merged(&original);
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally, "{v:?}");
    (report, fused)
}

#[test]
fn grouped_branches_with_an_identity_and_a_bn_merge_exactly() {
    for group in [1, 2, 4] {
        let model = two_branches(group, [0, 0, 0, 0])
            .bn_params("bn", 4)
            .bn("bn", "r", "n")
            .node("Add", &["ab", "n"], &["abn"])
            .node("Add", &["abn", "r"], &["y"])
            .node("Relu", &["y"], &["out"])
            .output("out")
            .model();
        let (report, fused) = merge_and_verify(model);
        assert_eq!(report.merges.len(), 1, "group {group}");
        let m = &report.merges[0];
        assert_eq!(m.branches, ["a", "b", "n", "r"], "group {group}");
        assert_eq!(count(&fused, "Conv"), 1);
        assert_eq!(
            count(&fused, "Add") + count(&fused, "BatchNormalization"),
            0
        );
        let graph = fused.proto.graph.as_ref().unwrap();
        assert_eq!(graph.node[1].output, ["y"]);
    }
}

#[test]
fn branches_that_do_not_align_or_read_other_tensors_stay_silently() {
    // The 1×1 Conv padded by 1 does not centre under the 3×3 one's padding.
    let misaligned = two_branches(1, [1, 1, 1, 1])
        .node("Relu", &["ab"], &["out"])
        .output("out")
        .model();
    // A residual Add: a Conv of x plus x's producer's other output.
    let residual = Graph::new(13)
        .input("x", &[1, 4, 5, 5])
        .init("w", &[4, 4, 1, 1], &[0.5; 16])
        .node("Relu", &["x"], &["r"])
        .node("Conv", &["r", "w"], &["c"])
        .node("Add", &["c", "x"], &["y"])
        .output("y")
        .model();
    for model in [misaligned, residual] {
        let mut m = Model::from_proto(model, ExternalStore::none()).unwrap();
        let report = fold(&mut m, &merging()).unwrap();
        assert!(report.merges.is_empty(), "{:?}", report.merges);
        assert!(report.skips.is_empty(), "{:?}", report.skips);
    }
}
