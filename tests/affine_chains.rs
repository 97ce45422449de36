//! BatchNorm in its arithmetic forms: `Mul`, `Add`, `Sub`, `Div` of a per-channel constant after
//! a layer (FrozenBatchNorm2d, Keras through tf2onnx, a Paddle bias `Add`), alone, chained and
//! mixed with BN. Each fold is checked against the formula computed here and proven by
//! `verify` (tract on both models, and the certificate); each skip names its reason.

mod common;

use bnfold::external::ExternalStore;
use bnfold::{fold, FoldOptions, Model};
use common::build::Graph;
use common::chains::{conv_tensors, fold_and_verify, op_types, skips};

/// `x [1, 2, 3, 3]` through `Conv(w [2, 2, 1, 1], b [2])` into `c`.
fn conv() -> Graph {
    Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .init("w", &[2, 2, 1, 1], &[1.0, 0.5, -0.25, 2.0])
        .init("b", &[2], &[0.125, -1.0])
        .node("Conv", &["x", "w", "b"], &["c"])
}

const W: [f64; 4] = [1.0, 0.5, -0.25, 2.0];
const B: [f64; 2] = [0.125, -1.0];

/// `W'[o, …] = a[o]·W[o, …]`, `B'[o] = a[o]·B[o] + d[o]`, each rounded once to f32.
fn expected(a: [f64; 2], d: [f64; 2]) -> (Vec<f64>, Vec<f64>) {
    let f32_of = |v: f64| v as f32 as f64;
    let weight = (0..4).map(|i| f32_of(a[i / 2] * W[i])).collect();
    let bias = (0..2).map(|o| f32_of(a[o] * B[o] + d[o])).collect();
    (weight, bias)
}

#[test]
fn frozen_batch_norm_as_mul_then_add_folds_into_the_conv() {
    let model = conv()
        .init("scale", &[1, 2, 1, 1], &[3.0, -0.5])
        .init("shift", &[1, 2, 1, 1], &[0.25, 4.0])
        .node("Mul", &["c", "scale"], &["m"])
        .node("Add", &["m", "shift"], &["y"])
        .output("y")
        .model();
    let (report, fused) = fold_and_verify(model);
    assert_eq!(report.folds.len(), 1, "{:?}", report.folds);
    let record = &report.folds[0];
    assert_eq!(
        (record.batch_norm.as_str(), record.output.as_str()),
        ("y", "y")
    );
    assert_eq!(record.passthrough, ["m"]);
    assert_eq!(op_types(&fused), ["Conv"]);
    assert_eq!(conv_tensors(&fused), expected([3.0, -0.5], [0.25, 4.0]));
}

#[test]
fn every_affine_form_of_sub_div_and_either_side_folds_by_its_formula() {
    // (op, inputs, a, d): y = a·conv + d, for the constant k = c per channel.
    type Case<'a> = (&'a str, [&'a str; 2], [f64; 2], [f64; 2]);
    let c = [4.0, -2.0];
    let cases: [Case; 6] = [
        ("Mul", ["k", "c"], [4.0, -2.0], [0.0, 0.0]),
        ("Add", ["k", "c"], [1.0, 1.0], c),
        ("Sub", ["c", "k"], [1.0, 1.0], [-4.0, 2.0]),
        ("Sub", ["k", "c"], [-1.0, -1.0], c),
        ("Div", ["c", "k"], [0.25, -0.5], [0.0, 0.0]),
        ("Mul", ["c", "k"], [4.0, -2.0], [0.0, 0.0]),
    ];
    for (op, inputs, a, d) in cases {
        let model = conv()
            .init("k", &[2, 1, 1], &[4.0, -2.0])
            .node(op, &inputs, &["y"])
            .output("y")
            .model();
        let (report, fused) = fold_and_verify(model);
        assert_eq!(report.folds.len(), 1, "{op} {inputs:?}");
        assert_eq!(op_types(&fused), ["Conv"], "{op} {inputs:?}");
        assert_eq!(conv_tensors(&fused), expected(a, d), "{op} {inputs:?}");
    }
}

#[test]
fn a_scalar_and_a_computed_constant_are_per_channel_too() {
    // Paddle's bias `Add(Reshape(const))`, after a scalar `Mul`.
    let model = conv()
        .init("half", &[], &[0.5])
        .init("bias_flat", &[2], &[1.0, 2.0])
        .tensor(bnfold::proto::TensorProto {
            name: Some("shape".into()),
            dims: vec![4],
            data_type: Some(bnfold::proto::tensor_proto::DataType::Int64 as i32),
            int64_data: vec![1, 2, 1, 1],
            ..Default::default()
        })
        .node("Reshape", &["bias_flat", "shape"], &["bias4"])
        .node("Mul", &["c", "half"], &["m"])
        .node("Add", &["m", "bias4"], &["y"])
        .output("y")
        .model();
    let (report, fused) = fold_and_verify(model);
    assert_eq!(report.folds.len(), 1);
    assert_eq!(op_types(&fused), ["Conv"]);
    assert_eq!(conv_tensors(&fused), expected([0.5, 0.5], [1.0, 2.0]));
}

#[test]
fn a_chain_mixed_with_batch_norm_folds_at_once() {
    // Conv → BN → Mul → Add: one fold, the BN and the Mul passed through.
    let model = conv()
        .bn_params("bn", 2)
        .init("k", &[1, 2, 1, 1], &[2.0, 3.0])
        .init("d", &[1, 2, 1, 1], &[-1.0, 1.0])
        .bn("bn", "c", "n")
        .node("Mul", &["n", "k"], &["m"])
        .node("Add", &["m", "d"], &["y"])
        .output("y")
        .model();
    let (report, fused) = fold_and_verify(model);
    assert_eq!(report.folds.len(), 1, "{:?}", report.folds);
    assert_eq!(report.folds[0].passthrough, ["m", "n"]);
    assert_eq!(op_types(&fused), ["Conv"]);
    // BN: scale γ/√(1+1e-5) with γ = 1, 2; shift 0.5 − 0.25·scale.
    let s: Vec<f64> = [1.0, 2.0]
        .iter()
        .map(|g| g / (1.0f64 + 1e-5).sqrt())
        .collect();
    let a = [2.0 * s[0], 3.0 * s[1]];
    let d = [
        2.0 * (0.5 - 0.25 * s[0]) - 1.0,
        3.0 * (0.5 - 0.25 * s[1]) + 1.0,
    ];
    let (weight, bias) = conv_tensors(&fused);
    let (want_weight, want_bias) = expected(a, d);
    assert_eq!(weight, want_weight);
    for (got, want) in bias.iter().zip(&want_bias) {
        // The shift composes in another order than written here: within an ulp of f32.
        assert!((got - want).abs() <= want.abs() * 1.2e-7, "{got} vs {want}");
    }
}

#[test]
fn a_lone_bias_add_folds_into_gemm_and_turns_a_matmul_into_gemm() {
    for layer in ["Gemm", "MatMul"] {
        let model = Graph::new(13)
            .input("x", &[4, 3])
            .init("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .init("bias", &[2], &[0.5, -0.5])
            .node(layer, &["x", "w"], &["p"])
            .node("Add", &["p", "bias"], &["y"])
            .output("y")
            .model();
        let (report, fused) = fold_and_verify(model);
        assert_eq!(report.folds.len(), 1, "{layer}");
        assert_eq!(op_types(&fused), ["Gemm"], "{layer}");
        // The weight is untouched: a bias-only chain scales nothing.
        let gemm = &fused.proto.graph.as_ref().unwrap().node[0];
        assert_eq!(gemm.input[1], "w", "{layer}");
        let c = fused.initializer_value(&gemm.input[2]).unwrap().unwrap();
        assert_eq!(c.data, [0.5, -0.5], "{layer}");
    }
}

#[test]
fn a_constant_over_other_axes_than_channels_is_skipped_naming_its_shape() {
    // [2] on a rank-4 product lies along the width, not the channels.
    let model = conv()
        .init("k", &[2], &[2.0, 3.0])
        .node("Mul", &["c", "k"], &["y"])
        .output("y")
        .model();
    let got = skips(model);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "y");
    assert_eq!(got[0].1, "constant_not_per_channel");
    assert!(got[0].2.contains("'k' of shape [2]"), "{}", got[0].2);
}

#[test]
fn ops_that_are_no_affine_step_stay_and_are_not_listed() {
    // `c / x`, a Mul of two computed tensors, a Conv output used twice, a rank-3 MatMul's bias:
    // ordinary arithmetic, no near miss, so no skip record either.
    let divided = conv()
        .init("k", &[1, 2, 1, 1], &[2.0, 3.0])
        .node("Div", &["k", "c"], &["y"])
        .output("y")
        .model();
    let squared = conv().node("Mul", &["c", "c"], &["y"]).output("y").model();
    let shared = conv()
        .init("k", &[1, 2, 1, 1], &[2.0, 3.0])
        .node("Mul", &["c", "k"], &["y"])
        .output("y")
        .output("c")
        .model();
    let rank3 = Graph::new(13)
        .input("x", &[2, 4, 3])
        .init("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .init("bias", &[2], &[0.5, -0.5])
        .node("MatMul", &["x", "w"], &["p"])
        .node("Add", &["p", "bias"], &["y"])
        .output("y")
        .model();
    for model in [divided, squared, shared, rank3] {
        assert_eq!(skips(model), []);
    }
}

#[test]
fn a_bad_constant_inside_a_chain_is_reported_once_by_the_chain_end() {
    // Conv → Add([2] along the width) → Mul(per channel): the Mul's record names the Add's
    // constant; the Add, which feeds it, has none of its own.
    let model = conv()
        .init("bad", &[2], &[1.0, 2.0])
        .init("k", &[1, 2, 1, 1], &[2.0, 3.0])
        .node("Add", &["c", "bad"], &["a"])
        .node("Mul", &["a", "k"], &["y"])
        .output("y")
        .model();
    let got = skips(model);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str()),
        ("y", "constant_not_per_channel")
    );
    assert!(got[0].2.contains("'bad'"), "{}", got[0].2);
}

#[test]
fn a_matmul_that_keeps_its_bias_as_an_add_is_not_refolded() {
    // Opset 6 has no Gemm with a broadcast C: a MatMul's bias stays an Add, and folding that Add
    // again would only trade it for another (a fold that loops).
    let model = Graph::new(6)
        .input("x", &[4, 3])
        .init("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .init("bias", &[2], &[0.5, -0.5])
        .node("MatMul", &["x", "w"], &["p"])
        .node("Add", &["p", "bias"], &["y"])
        .output("y")
        .model();
    assert_eq!(skips(model), []);
    let with_bn = Graph::new(6)
        .input("x", &[4, 3])
        .init("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .bn_params("bn", 2)
        .node("MatMul", &["x", "w"], &["p"])
        .node_with(
            "BatchNormalization",
            &["p", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            &["y"],
            &[("is_test", 1)],
        )
        .output("y")
        .model();
    let mut model = Model::from_proto(with_bn, ExternalStore::none()).unwrap();
    let first = fold(&mut model, &FoldOptions::default()).unwrap();
    assert_eq!(first.folds.len(), 1);
    assert_eq!(op_types(&model), ["MatMul", "Add"]);
    let again = fold(&mut model, &FoldOptions::default()).unwrap();
    assert!(
        again.folds.is_empty() && again.skips.is_empty(),
        "{again:?}"
    );
}

#[test]
fn a_weight_computed_by_ops_the_evaluator_lacks_folds_through_tract() {
    // Weight standardization: W = W₀ − ReduceMean(W₀) per output channel, then Conv → BN; and
    // the BN's scale computed as Pow(g, 2).
    let w0 = [1.0f32, 3.0, -2.0, 6.0];
    let model = Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .init("w0", &[2, 2, 1, 1], &w0)
        .init("g", &[2], &[1.5, -0.5])
        .init("two", &[], &[2.0])
        .bn_params("bn", 2)
        .node_with("ReduceMean", &["w0"], &["mean"], &[("keepdims", 1)])
        .ints("axes", &[1, 2, 3])
        .node("Sub", &["w0", "mean"], &["w"])
        .node("Pow", &["g", "two"], &["gamma"])
        .node("Conv", &["x", "w"], &["c"])
        .node(
            "BatchNormalization",
            &["c", "gamma", "bn.bias", "bn.mean", "bn.var"],
            &["y"],
        )
        .output("y")
        .model();
    let (report, fused) = fold_and_verify(model);
    assert_eq!(report.folds.len(), 1, "{:?}", report.skips);
    assert_eq!(op_types(&fused), ["Conv"]);
    // Channel o: mean of its two weights; γ = g²; s = γ/√(1 + 1e-5).
    let (weight, _) = conv_tensors(&fused);
    let w0: Vec<f64> = w0.iter().map(|&v| v as f64).collect();
    for o in 0..2 {
        let mean = (w0[2 * o] + w0[2 * o + 1]) / 2.0;
        let gamma = [1.5f64, -0.5][o].powi(2);
        let s = gamma / (1.0f64 + 1e-5).sqrt();
        for i in 0..2 {
            let want = (s * (w0[2 * o + i] - mean)) as f32 as f64;
            assert_eq!(weight[2 * o + i], want, "weight {o},{i}");
        }
    }
}

#[test]
fn a_weight_drawn_at_random_is_never_taken_for_a_constant() {
    let model = Graph::new(13)
        .input("x", &[1, 2, 3, 3])
        .init("w0", &[2, 2, 1, 1], &[1.0, 3.0, -2.0, 6.0])
        .bn_params("bn", 2)
        .node("RandomNormalLike", &["w0"], &["w"])
        .node("Conv", &["x", "w"], &["c"])
        .bn("bn", "c", "y")
        .output("y")
        .model();
    let got = skips(model);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, "param_not_constant", "{got:?}");
}

#[test]
fn a_bias_add_nothing_folded_into_is_not_taken_for_a_fold_by_the_proof() {
    // A transformer's rank-3 MatMul → Add(bias): no fold, so no region to run and nothing
    // unproven.
    let model = Graph::new(13)
        .input("x", &[2, 4, 3])
        .init("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .init("bias", &[2], &[0.5, -0.5])
        .node("MatMul", &["x", "w"], &["p"])
        .node("Add", &["p", "bias"], &["a"])
        .node("Relu", &["a"], &["y"])
        .output("y")
        .model();
    let original = Model::from_proto(model, ExternalStore::none()).unwrap();
    let mut fused = original.clone();
    assert!(fold(&mut fused, &FoldOptions::default())
        .unwrap()
        .folds
        .is_empty());
    let v = bnfold::verify(&original, &fused, &[], &bnfold::VerifyOptions::default()).unwrap();
    assert_eq!(v.status, bnfold::verify::Status::Passed, "{v:?}");
    assert!(v.regions.is_empty() && v.certificates.is_empty(), "{v:?}");
}
