//! Each fold run alone is judged by its arithmetic: against the original region evaluated in
//! f64, the fused nodes may be a few times as far as the original region itself, plus two units
//! of rounding of `Σ|W|·|x| + |b|`. Shown here: every kind of fold is judged that way and passes;
//! an ill-conditioned region whose original is far less exact than the fold is not a false
//! alarm (the fixed tolerance of one layer refused it); and a bias moved by far less than that
//! tolerance is caught.

mod common;

use bnfold::proto::ModelProto;
use bnfold::regions::check;
use bnfold::tensor::{decode, Dtype, Tensor};
use bnfold::verify::Status;
use bnfold::{fold, FoldOptions, Model, VerifyOptions};
use common::*;

fn fused(original: &Model) -> Model {
    let mut fused = original.clone();
    fold(&mut fused, &FoldOptions::default()).unwrap();
    Model::from_bytes(fused.to_bytes().unwrap()).unwrap()
}

fn set(model: &mut ModelProto, name: &str, values: &[f64]) {
    let t = initializer(model, name);
    let dims = t.dims.iter().map(|&d| d as usize).collect();
    *t = Tensor::new(Dtype::F32, dims, values.to_vec()).to_proto(name);
}

const JUDGED: [&str; 16] = [
    "conv_bn.onnx",
    "conv_bn_f16.onnx",
    "conv_bn_bf16.onnx",
    "conv_bn_f64.onnx",
    "torch_conv2d_grouped_depthwise_op11.onnx",
    "torch_conv3d_bn_op17.onnx",
    "torch_convtranspose_grouped_op13.onnx",
    "gemm_transb0_c_3x6.onnx",
    "gemm_transb1_c_scalar.onnx",
    "matmul_bn.onnx",
    "conv_identity_add_bn.onnx",
    "torch_conv_bn_bn_op13.onnx",
    "torch_relu_bn_conv_pad_op13.onnx",
    "torch_relu_bn_convtranspose_op13.onnx",
    "torch_head_bn_flatten_linear_op13.onnx",
    "torch_bn_input_conv_pad_op13.onnx",
];

#[test]
fn every_kind_of_fold_is_judged_against_its_exact_value_and_passes() {
    for name in JUDGED {
        let original = Model::load(fixture(name)).unwrap();
        let proof = check(&original, &fused(&original), &VerifyOptions::default()).unwrap();
        assert!(!proof.regions.is_empty(), "{name}");
        for r in &proof.regions {
            let exact = r.exact.as_ref().unwrap_or_else(|| panic!("{name}: {r:?}"));
            assert_eq!(r.status, Status::Passed, "{name}: {r:?}");
            assert!(exact.passed && exact.fused_error_units <= exact.bound_units);
            assert!(exact.fused_error_units.is_finite() && exact.fused_error_units > 0.0);
            assert!(exact.bound_units < 100.0, "{name}: {exact:?}");
            // Below f64 the reference is wider than the region: the original's own rounding
            // shows (in units of the region's dtype: bf16 regions compute in f32, far finer).
            let wider = !matches!(name, "conv_bn_f64.onnx" | "conv_bn_bf16.onnx");
            assert_eq!(exact.original_error_units > 0.1, wider, "{name}: {exact:?}");
        }
    }
}

/// `conv_bn.onnx` made ill-conditioned: a Conv bias of 1e6 that the BN's mean cancels, and a
/// variance of 0 (a scale of γ/√ε ≈ 316): the original rounds the Conv's output at 1e6 (an ulp
/// of 0.06) and amplifies that error 316 times; the fold cancels the mean exactly in f64.
fn cancelling() -> Model {
    let mut proto = conv_bn();
    set(&mut proto, "b", &[1e6, -1e6, 1e6, 2e6]);
    set(
        &mut proto,
        "bn.mean",
        &[1e6 + 0.5, -1e6 - 0.25, 1e6, 2e6 - 1.0],
    );
    set(&mut proto, "bn.var", &[0.0; 4]);
    Model::from_proto(proto, bnfold::external::ExternalStore::none()).unwrap()
}

#[test]
fn an_ill_conditioned_region_is_not_a_false_alarm() {
    let original = cancelling();
    let proof = check(&original, &fused(&original), &VerifyOptions::default()).unwrap();
    let [r] = proof.regions.as_slice() else {
        panic!("{:?}", proof.regions)
    };
    let (exact, against_original) = (r.exact.as_ref().unwrap(), r.check.as_ref().unwrap());
    // The fused Conv differs from the original region by more than the tolerance of one layer…
    assert!(!against_original.passed, "{against_original:?}");
    // …because the original is the inexact one: the fold is closer to the exact value.
    assert!(exact.original_error_units > 1000.0, "{exact:?}");
    assert!(exact.fused_error_units < exact.original_error_units / 100.0);
    assert_eq!(r.status, Status::Passed, "{r:?}");
}

#[test]
fn a_bias_moved_by_a_tenth_of_the_old_tolerance_is_caught_by_its_region() {
    let original = Model::load(fixture("conv_bn.onnx")).unwrap();
    let mut proto = fused(&original).proto.clone();
    let bias = proto.graph.as_ref().unwrap().node[0].input[2].clone();
    let t = initializer(&mut proto, &bias);
    let mut value = decode(t, &bnfold::external::ExternalStore::none()).unwrap();
    let good = check(&original, &fused(&original), &VerifyOptions::default()).unwrap();
    let magnitude = good.regions[0].check.as_ref().unwrap().max_magnitude;
    // 1e-5 of the output's largest value: the fixed tolerance (1e-4 of it) lets it through.
    value.data[2] += 1e-5 * magnitude;
    *t = value.to_proto(&bias);
    let tampered = Model::from_proto(proto, bnfold::external::ExternalStore::none()).unwrap();
    let proof = check(&original, &tampered, &VerifyOptions::default()).unwrap();
    let r = &proof.regions[0];
    assert!(r.check.as_ref().unwrap().passed, "{r:?}");
    assert_eq!(r.status, Status::Failed, "{r:?}");
    let exact = r.exact.as_ref().unwrap();
    assert!(
        exact.fused_error_units > 3.0 * exact.bound_units,
        "{exact:?}"
    );
    assert!(r
        .reason
        .as_ref()
        .unwrap()
        .contains("units of rounding from the exact value"));
}

#[test]
fn a_whole_model_beyond_the_fixed_tolerance_is_judged_against_the_original_in_f64() {
    // The ill-conditioned model end to end: its output differs from the original's by more than
    // 1e-4 of its largest value, and is closer to the exact one than the original is.
    let original = cancelling();
    let v = bnfold::verify(&original, &fused(&original), &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    let output = &v.outputs[0];
    let reference = output.reference.as_ref().expect("a second opinion");
    assert_eq!(reference.kind, bnfold::reference::ReferenceKind::Exact);
    assert!(output.max_abs_error > output.atol, "{output:?}");
    assert!(
        reference.candidate_error * 100.0 < reference.original_error,
        "{reference:?}"
    );
}

/// The ill-conditioned model reading `Sigmoid(x)` (which tract does not run in f64), with
/// `offset` added to the fused Conv's bias (0: the fold as made).
fn cancelling_with_sigmoid(offset: f64) -> (Model, Model) {
    let with_sigmoid = |m: &Model| {
        let mut proto = m.proto.clone();
        let g = proto.graph.as_mut().unwrap();
        g.node[0].input[0] = "xs".into();
        g.node.insert(
            0,
            bnfold::proto::NodeProto {
                op_type: Some("Sigmoid".into()),
                input: vec!["x".into()],
                output: vec!["xs".into()],
                ..Default::default()
            },
        );
        Model::from_proto(proto, bnfold::external::ExternalStore::none()).unwrap()
    };
    let original = with_sigmoid(&cancelling());
    let mut proto = fused(&cancelling()).proto.clone();
    let bias = proto.graph.as_ref().unwrap().node[0].input[2].clone();
    let t = initializer(&mut proto, &bias);
    let mut value = decode(t, &bnfold::external::ExternalStore::none()).unwrap();
    value.data[1] += offset;
    *t = value.to_proto(&bias);
    let fused =
        with_sigmoid(&Model::from_proto(proto, bnfold::external::ExternalStore::none()).unwrap());
    (original, fused)
}

#[test]
fn where_f64_cannot_run_the_originals_own_sensitivity_judges_and_still_catches_a_wrong_bias() {
    let (original, fused) = cancelling_with_sigmoid(0.0);
    let options = VerifyOptions::default();
    let run = |fused: &Model| {
        let v = bnfold::verify::run_whole_model(&original, fused, &[], &options).unwrap();
        v.outputs.into_iter().find(|o| o.name == "y").unwrap()
    };
    let y = run(&fused);
    let reference = y.reference.as_ref().unwrap_or_else(|| panic!("{y:?}"));
    assert_eq!(
        reference.kind,
        bnfold::reference::ReferenceKind::Sensitivity
    );
    assert!(y.passed && reference.passed, "{y:?}");
    // The original's own arithmetic moves this output by about 100 (its bias of 1e6 has an ulp
    // of 0.06, amplified 316 times): a bias element 2000 off is far beyond that.
    let (_, wrong) = cancelling_with_sigmoid(2000.0);
    let y = run(&wrong);
    assert!(!y.passed, "{y:?}");
    assert_eq!(
        y.reference.unwrap().kind,
        bnfold::reference::ReferenceKind::Sensitivity
    );
}

#[test]
fn a_convtranspose_with_large_pads_gets_a_region_input_large_enough_to_run() {
    // Found while fuzzing the proof: pads of 4 on a 3×3 kernel are valid on the model's 16×16
    // input but leave no output on the 3×3 region input the region used to get (tract
    // panicked, so the fold was "not verified").
    let original = Model::load(fixture("regressions/convtranspose_bn_pads_4.onnx")).unwrap();
    let proof = check(&original, &fused(&original), &VerifyOptions::default()).unwrap();
    let [r] = proof.regions.as_slice() else {
        panic!("{:?}", proof.regions)
    };
    assert_eq!(r.status, Status::Passed, "{r:?}");
    assert!(
        r.input_shape[2..].iter().all(|&d| d >= 5),
        "{:?}",
        r.input_shape
    );
    assert!(r.exact.as_ref().is_some_and(|e| e.passed));
}
