//! The certificate of forward folds and of the folds whose arithmetic is the risk: every forward
//! fold certified and a moved weight, shift or bias caught; a layer with a BatchNormalization on
//! each side certified on both; a fold computed in float32 failing one rounding; scaled weights
//! that overflow an accumulation refused by the whole-model run.

mod common;

use bnfold::verify::Status;
use bnfold::{verify, Model, VerifyOptions};
use common::certifying::{assert_caught, certificates, folded, moved, KINDS};
use common::*;

/// The fused tensor a forward fold put its shift in: the kept `Add`'s constant when there is
/// one, else the bias.
fn forward_shift_tensor(original: &Model, fused: &Model, bias: &str) -> String {
    let certs = certificates(original, fused);
    certs[0]
        .tensors
        .iter()
        .map(|t| t.tensor.clone())
        .find(|t| t.ends_with("_shift_bnfold"))
        .unwrap_or_else(|| bias.to_string())
}

#[test]
fn every_forward_fold_is_certified_and_a_moved_weight_shift_or_bias_is_caught() {
    for name in FORWARD_KINDS {
        let (original, fused, [node, weight, bias]) = folded(name);
        let certs = certificates(&original, &fused);
        assert_eq!(certs.len(), 1, "{name}: {certs:?}");
        assert!(
            certs[0].passed() && certs[0].tensors.len() >= 2,
            "{name}: {certs:?}"
        );
        let two_ulps = edited(&fused, &weight, |data, _, dtype| {
            let k = data.len() / 3;
            data[k] = moved(dtype, data[k], 2.0);
        });
        assert_caught(name, &original, &two_ulps, &node, &weight);
        let shift = forward_shift_tensor(&original, &fused, &bias);
        let shifted = edited(&fused, &shift, |data, _, _| {
            let range = data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
            let last = data.len() - 1;
            data[last] += 1e-3 * range;
        });
        assert_caught(name, &original, &shifted, &node, &shift);
        if shift != bias {
            // A padded fold keeps the bias as it was: any change to it is caught too.
            let moved_bias = edited(&fused, &bias, |data, _, dtype| {
                data[0] = moved(dtype, data[0], 2.0);
            });
            assert_caught(name, &original, &moved_bias, &node, &bias);
        }
    }
}

#[test]
fn a_layer_with_a_bn_on_each_side_is_certified_on_both_sides() {
    let (original, fused, _) = folded("regressions/bn_conv_bn_each_side.onnx");
    let certs = certificates(&original, &fused);
    assert!(
        certs.iter().all(|c| c.passed() && c.unproven.is_none()),
        "{certs:?}"
    );
    let both = certs
        .iter()
        .find(|c| c.tensors.len() == 3)
        .expect("shift, weight and bias");
    // The weight holds both sides' scales: one element 2 ulps off is caught.
    let weight = both.tensors[1].tensor.clone();
    let tampered = edited(&fused, &weight, |data, _, dtype| {
        data[5] = moved(dtype, data[5], 2.0);
    });
    assert_caught(
        "bn_conv_bn_each_side",
        &original,
        &tampered,
        &both.node,
        &weight,
    );
}

#[test]
fn a_fold_computed_in_float32_fails_one_rounding_and_passes_with_float_folds() {
    // Every weight element one ulp off the exact value, as folding in float32 leaves them (an
    // onnxruntime-fused resnet18 is 1.8 ulps off): not bnfold's promise, but equivalent.
    for name in KINDS {
        let (original, fused, [node, weight, _]) = folded(name);
        let float32 = edited(&fused, &weight, |data, _, dtype| {
            for (k, v) in data.iter_mut().enumerate() {
                *v = moved(dtype, *v, if k % 2 == 0 { 1.0 } else { -1.0 });
            }
        });
        let strict = verify(&original, &float32, &[], &VerifyOptions::default()).unwrap();
        assert_eq!(strict.status, Status::Failed, "{name}");
        let reason = strict.reason.unwrap();
        assert!(
            reason.contains(&node) && reason.contains("--float-folds"),
            "{name}: {reason}"
        );
        let options = VerifyOptions {
            float_folds: true,
            ..VerifyOptions::default()
        };
        let v = verify(&original, &float32, &[], &options).unwrap();
        assert_eq!(v.status, Status::Passed, "{name}: {:?}", v.reason);
        // A weight ×1.001 is no float error.
        let wrong = edited(&fused, &weight, |data, _, _| data[0] *= 1.001);
        let v = verify(&original, &wrong, &[], &options).unwrap();
        assert_eq!(v.status, Status::Failed, "{name}");
        assert!(!v.reason.unwrap().contains("--float-folds"), "{name}");
    }
}

#[test]
fn a_fold_whose_scaled_weights_overflow_an_accumulation_is_refused_by_the_whole_model_run() {
    // Found by fuzzing the proof: a BN with γ = 4.6e31 after a depthwise Conv. Every element is
    // certified and every region passes, but on the model's own inputs the fused Conv sums
    // products near f32's largest value and overflows where the original (scaling after the
    // sum) gives 4e37: the fused model computes an infinity the original does not.
    let (original, fused, _) =
        folded("regressions/bn_gamma_4e31_overflows_fused_accumulation.onnx");
    let options = VerifyOptions {
        samples: 1,
        ..VerifyOptions::default()
    };
    let v = verify(&original, &fused, &[], &options).unwrap();
    assert!(
        v.certificates.iter().all(|c| c.passed()),
        "{:?}",
        v.certificates
    );
    assert!(v.regions.iter().all(|r| r.status == Status::Passed));
    assert_eq!(v.status, Status::Failed);
    assert!(v.outputs[0].max_abs_error.is_infinite(), "{:?}", v.outputs);
}
