//! Verification itself: it catches a weight off by one part in a thousand and renamed outputs,
//! passes identical models with zero error, gives the same figures one model at a time, and,
//! where tract cannot run the whole model, proves the folds locally or says why it cannot.

mod common;

use bnfold::tensor::decode;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::fixture;

#[test]
fn verification_catches_a_weight_altered_by_one_part_in_a_thousand() {
    let original = Model::load(fixture("torch_conv_bn_bn_op13.onnx")).unwrap();
    let mut fused = original.clone();
    fold(&mut fused, &FoldOptions::default()).unwrap();
    let g = fused.proto.graph.as_ref().unwrap();
    let conv = g.node.iter().find(|n| n.op_type() == "Conv").unwrap().input[1].clone();
    let mut w = fused.initializer_value(&conv).unwrap().unwrap();
    let g = fused.proto.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| t.name() == conv).unwrap();
    w.data.iter_mut().for_each(|v| *v *= 1.001);
    *t = w.to_proto(&conv);
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed);
}

#[test]
fn verification_catches_renamed_outputs_and_passes_identical_models_with_zero_error() {
    let original = Model::load(fixture("conv_bn.onnx")).unwrap();
    let v = verify(&original, &original, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed);
    assert!(v.outputs.iter().all(|o| o.max_abs_error == 0.0));
    let mut renamed = original.clone();
    let g = renamed.proto.graph.as_mut().unwrap();
    g.output[0].name = Some("renamed".into());
    g.node.last_mut().unwrap().output[0] = "renamed".into();
    let v = verify(&original, &renamed, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed);
    let mut input_renamed = original.clone();
    let g = input_renamed.proto.graph.as_mut().unwrap();
    let old = g.input[0].name().to_string();
    g.input[0].name = Some("other".into());
    for n in &mut g.node {
        n.input
            .iter_mut()
            .filter(|i| **i == old)
            .for_each(|i| *i = "other".into());
    }
    let v = verify(&original, &input_renamed, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed);
    assert!(v.reason.unwrap().contains("graph inputs differ"));
}

/// Large models are verified one model at a time (the original's outputs kept): the figures
/// are the same as when both models run side by side.
#[test]
fn one_model_at_a_time_gives_the_same_figures() {
    for name in ["torch_conv_bn_bn_op13.onnx", "matmul_rank_inferred_bn.onnx"] {
        let original = Model::load(fixture(name)).unwrap();
        let mut fused = original.clone();
        let report = fold(&mut fused, &FoldOptions::default()).unwrap();
        let chains: Vec<String> = report.folds.iter().map(|f| f.output.clone()).collect();
        let run = |sequential: bool| {
            let options = VerifyOptions {
                one_model_at_a_time: Some(sequential),
                ..VerifyOptions::default()
            };
            verify(&original, &fused, &chains, &options).unwrap()
        };
        let (side_by_side, sequential) = (run(false), run(true));
        assert_eq!(side_by_side.status, Status::Passed, "{name}");
        assert_eq!(side_by_side, sequential, "{name}");
    }
}

#[test]
fn a_model_tract_cannot_run_is_reported_not_verified_naming_the_op() {
    let mut m = Model::load(fixture("no_bn.onnx")).unwrap();
    let g = m.proto.graph.as_mut().unwrap();
    g.node[0].op_type = Some("FancyCustomOp".into());
    g.node[0].domain = Some("com.example".into());
    m.proto
        .opset_import
        .push(bnfold::proto::OperatorSetIdProto {
            domain: Some("com.example".into()),
            version: Some(1),
        });
    // Against itself: the whole model cannot run, but the two graphs are the same, which the
    // local proof shows; the reason still names the op.
    let v = verify(&m, &m, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally);
    assert!(
        v.reason
            .as_deref()
            .unwrap_or_default()
            .contains("FancyCustomOp"),
        "{:?}",
        v.reason
    );
    // Against a different model it cannot say.
    let other = Model::load(fixture("conv_bn.onnx")).unwrap();
    let v = verify(&m, &other, &[], &VerifyOptions::default()).unwrap();
    assert_ne!(v.status, Status::Passed, "{v:?}");
}

#[test]
fn folds_in_a_model_with_an_op_tract_lacks_are_proven_locally() {
    let mut original = Model::load(fixture("torch_conv_bn_bn_op13.onnx")).unwrap();
    let g = original.proto.graph.as_mut().unwrap();
    let out = g.output[0].name().to_string();
    g.node.push(bnfold::proto::NodeProto {
        op_type: Some("FancyCustomOp".into()),
        domain: Some("com.example".into()),
        name: Some("far_away".into()),
        input: vec![out],
        output: vec!["custom_out".into()],
        ..Default::default()
    });
    g.output[0].name = Some("custom_out".into());
    original
        .proto
        .opset_import
        .push(bnfold::proto::OperatorSetIdProto {
            domain: Some("com.example".into()),
            version: Some(1),
        });
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    // Conv → BN → BN: one fold, the first BN passed through.
    assert_eq!(report.folds.len(), 1);
    assert_eq!(report.folds[0].passthrough, ["/1/BatchNormalization"]);
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally && v.structure_difference.is_none());
    assert!(v.reason.unwrap().contains("FancyCustomOp"));
    assert!(v.regions.iter().all(|r| r.status == Status::Passed) && !v.regions.is_empty());
    // One weight element off: the local proof fails it although the whole model cannot run.
    let mut tampered = fused.proto.clone();
    let w = &report.folds[0].weight;
    let t = tampered
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name() == w)
        .unwrap();
    let mut value = decode(t, &Default::default()).unwrap();
    value.data[0] *= 1.001;
    *t = value.to_proto(w);
    let tampered = Model::from_proto(tampered, Default::default()).unwrap();
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
}
