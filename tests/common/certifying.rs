//! Folding a fixture and holding the certificate against it, for the certificate tests.

use bnfold::certificate::{ulps, NodeCertificate};
use bnfold::tensor::Dtype;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};

use super::fixture;

/// The original, the fused model as written (reloaded from its bytes), and the first fold's
/// producer, weight and bias names.
pub fn folded(name: &str) -> (Model, Model, [String; 3]) {
    let original = Model::load(fixture(name)).unwrap();
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    let f = &report.folds[0];
    let names = [f.producer.clone(), f.weight.clone(), f.bias.clone()];
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    (original, fused, names)
}

pub fn certificates(original: &Model, fused: &Model) -> Vec<NodeCertificate> {
    bnfold::certificate::certify(original, fused).unwrap()
}

/// `v` moved by `n` units in the last place of `dtype` (the unit of `v`'s own binade).
pub fn moved(dtype: Dtype, v: f64, n: f64) -> f64 {
    let (precision, min_exponent) = match dtype {
        Dtype::F32 => (24, -126),
        Dtype::F16 => (11, -14),
        Dtype::Bf16 => (8, -126),
        _ => (53, -1022),
    };
    let exponent = match v {
        0.0 => min_exponent,
        _ => ((v.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023,
    };
    let moved = v + n * 2f64.powi(exponent.max(min_exponent) - (precision - 1));
    assert!(ulps(dtype, v, moved) >= n / 2.0);
    moved
}

pub fn assert_caught(name: &str, original: &Model, tampered: &Model, node: &str, tensor: &str) {
    let certs = certificates(original, tampered);
    let failing: Vec<_> = certs.iter().filter(|c| !c.passed()).collect();
    assert_eq!(failing.len(), 1, "{name}: {certs:?}");
    assert_eq!(failing[0].node, node, "{name}");
    let bad = failing[0].tensors.iter().find(|t| !t.passed()).unwrap();
    assert_eq!(bad.tensor, tensor, "{name}");
    let v = verify(original, tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{name}: {v:?}");
    let reason = v.reason.unwrap();
    assert!(
        reason.starts_with("certificate: ") && reason.contains(node) && reason.contains(tensor),
        "{name}: {reason}"
    );
}

/// A fixture of every kind of backward fold, each certified by the tests.
pub const KINDS: [&str; 14] = [
    "conv_bn.onnx",
    "torch_conv2d_grouped_depthwise_op11.onnx",
    "torch_conv3d_bn_op17.onnx",
    "torch_convtranspose_grouped_op13.onnx",
    "gemm_transb0_c_3x6.onnx",
    "gemm_transb1_c_1x6.onnx",
    "matmul_bn.onnx",
    "matmul_transposed_weight_bn.onnx",
    "conv_identity_add_bn.onnx",
    "torch_conv_bn_bn_op13.onnx",
    "torch_frozen_bn_resnet_op13.onnx",
    "torch_frozen_bn_resnet_unfolded_op13.onnx",
    "torch_dynamo_frozen_bn_resnet_op18.onnx",
    "timm_mixnet_s_quarter_op13.onnx",
];
