//! The exact certificate: every folded element of bnfold's own folds, on real exporter output
//! and hand-built graphs, is within half an ulp of the formula recomputed from the original; an
//! element moved by two ulps, a weight ×1.001, a bias moved by 1e-3 of its range or two swapped
//! channels fail, naming the node and the tensor, in `fold` and in `bnfold verify`.

mod common;

use bnfold::tensor::Dtype;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, VerifyOptions};
use common::certifying::{assert_caught, certificates, folded, moved, KINDS};
use common::*;

#[test]
fn every_folded_element_is_within_half_an_ulp_in_every_dtype() {
    let dtypes = ["conv_bn_f16.onnx", "conv_bn_bf16.onnx", "conv_bn_f64.onnx"];
    for name in KINDS.iter().chain(&dtypes) {
        let (original, fused, _) = folded(name);
        let certs = certificates(&original, &fused);
        assert!(!certs.is_empty(), "{name}: nothing certified");
        for c in &certs {
            assert!(c.passed(), "{name}: {c:?}");
            assert!(!c.tensors.is_empty(), "{name}: {c:?}");
        }
    }
}

#[test]
fn one_element_two_ulps_off_is_caught_naming_node_and_tensor() {
    for name in KINDS {
        let (original, fused, [node, weight, _]) = folded(name);
        let tampered = edited(&fused, &weight, |data, _, dtype| {
            let k = data.len() / 2;
            data[k] = moved(dtype, data[k], 2.0);
        });
        assert_caught(name, &original, &tampered, &node, &weight);
    }
}

#[test]
fn a_weight_times_1_001_a_moved_bias_and_swapped_channels_are_caught() {
    for name in KINDS {
        let (original, fused, [node, weight, bias]) = folded(name);
        let largest = edited(&fused, &weight, |data, _, _| {
            let k = (0..data.len())
                .max_by(|&a, &b| data[a].abs().total_cmp(&data[b].abs()))
                .unwrap();
            data[k] *= 1.001;
        });
        assert_caught(name, &original, &largest, &node, &weight);
        let shifted = edited(&fused, &bias, |data, _, _| {
            let range = data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
            data[0] += 1e-3 * range;
        });
        assert_caught(name, &original, &shifted, &node, &bias);
        let swapped = edited(&fused, &weight, |data, dims, _| {
            let per = data.len() / dims[0];
            for k in 0..per {
                data.swap(k, per + k);
            }
        });
        assert_caught(name, &original, &swapped, &node, &weight);
    }
}

#[test]
fn one_depthwise_channel_times_1_01_is_caught_by_bnfold_verify_on_the_command_line() {
    let name = "torch_conv2d_grouped_depthwise_op11.onnx";
    let (_, fused, [node, weight, _]) = folded(name);
    let tampered = edited(&fused, &weight, |data, dims, _| {
        let per = data.len() / dims[0];
        data[per..2 * per].iter_mut().for_each(|v| *v *= 1.01);
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tampered.onnx");
    std::fs::write(&path, tampered.to_bytes().unwrap()).unwrap();
    let o = bnfold(&["verify", s(&fixture(name)), s(&path)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line = err.lines().next().unwrap();
    assert!(
        line.starts_with("bnfold: error: verification failed: certificate: Conv ")
            && line.contains(&node)
            && line.contains(&format!("'{weight}' element")),
        "{err}"
    );
}

#[test]
fn a_fused_conv_whose_padding_moved_passes_the_certificate_and_fails_its_region() {
    // Same output size, every value shifted by one row and column: the weights are the
    // formula's, the layer is not.
    let name = "torch_conv2d_grouped_depthwise_op11.onnx";
    let (original, fused, [node, _, _]) = folded(name);
    let mut proto = fused.proto.clone();
    let conv = proto
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.name() == node)
        .unwrap();
    let pads = conv
        .attribute
        .iter_mut()
        .find(|a| a.name() == "pads")
        .unwrap();
    pads.ints = vec![2, 2, 0, 0];
    let shifted = Model::from_proto(proto, fused.store.clone()).unwrap();
    assert!(certificates(&original, &shifted).iter().all(|c| c.passed()));
    let v = verify(&original, &shifted, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
    let failing: Vec<_> = v
        .regions
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    assert_eq!(failing.len(), 1, "{:?}", v.regions);
    assert_eq!(failing[0].node, node);
    assert!(v.reason.unwrap().starts_with(&format!("region of {node} ")));
    // The other folds of the model ran alone and passed.
    assert!(v
        .regions
        .iter()
        .filter(|r| r.node != node)
        .all(|r| r.status == Status::Passed));
}

#[test]
fn every_backward_fold_of_every_kind_passes_its_region() {
    // A fold into a Concat's layers has no region of its own (its region would start at several
    // tensors): beside the certificate, the divergence check proves it, each fold a difference
    // outside the regions run against the exact reference (see the next test).
    for name in KINDS.iter().filter(|n| !n.starts_with("timm_mixnet")) {
        let (original, fused, _) = folded(name);
        let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
        assert_eq!(v.status, Status::Passed, "{name}: {v:?}");
        assert!(!v.regions.is_empty(), "{name}");
        for r in &v.regions {
            assert_eq!(r.status, Status::Passed, "{name}: {r:?}");
        }
    }
}

#[test]
fn folds_into_a_concat_are_proven_locally_as_divergences_against_the_exact_reference() {
    let (original, fused, _) = folded("timm_mixnet_s_quarter_op13.onnx");
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(
        v.proven_locally && v.structure_difference.is_none(),
        "{v:?}"
    );
    // One divergence per BN after a Concat, each from the Concat's Convs.
    assert_eq!(v.divergences.len(), 34);
    for d in &v.divergences {
        assert_eq!(d.status, Status::Passed, "{d:?}");
        assert_eq!(d.op_type, "Conv");
    }
}

#[test]
fn a_layer_with_a_bn_on_each_side_is_proven_by_one_region_without_a_false_alarm() {
    // Found by the fuzzer: BN → padded Conv → BN folds forward and backward into one Conv. The
    // certificate composes both sides; the region starts at the first BN.
    let mut original = Model::load(fixture("torch_bn_input_conv_pad_op13.onnx")).unwrap();
    let g = original.proto.graph.as_mut().unwrap();
    g.node[1].output[0] = "conv_out".into();
    let channels = 4;
    for (k, values) in [
        ("gamma", [1.5, 0.5, -0.7, 1.1]),
        ("beta", [0.1, -0.2, 0.3, 0.0]),
        ("mean", [0.2, -0.1, 0.05, 0.4]),
        ("var", [0.9, 1.7, 0.3, 2.5]),
    ] {
        let t = bnfold::tensor::Tensor::new(Dtype::F32, vec![channels], values.to_vec());
        g.initializer.push(t.to_proto(&format!("after.{k}")));
    }
    g.node.push(bnfold::proto::NodeProto {
        op_type: Some("BatchNormalization".into()),
        name: Some("after".into()),
        input: [
            "conv_out",
            "after.gamma",
            "after.beta",
            "after.mean",
            "after.var",
        ]
        .map(String::from)
        .to_vec(),
        output: vec!["output".into()],
        ..Default::default()
    });
    let mut fused = original.clone();
    let report = fold(&mut fused, &FoldOptions::default()).unwrap();
    assert_eq!(report.folds.len(), 2, "{:?}", report.folds);
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert_eq!(v.regions.len(), 1, "{:?}", v.regions);
    assert_eq!(v.regions[0].status, Status::Passed);
    // The certificate composes both sides: the shift's Add, the weight and the bias.
    assert!(v.certificates[0].passed(), "{:?}", v.certificates);
    assert_eq!(v.certificates[0].tensors.len(), 3, "{:?}", v.certificates);
    // And the combined region still catches a wrong weight.
    let w = &report.folds[0].weight;
    let tampered = edited(&fused, w, |data, _, _| data[0] *= 1.001);
    let v = verify(&original, &tampered, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
}

#[test]
fn the_inputs_the_fuzzer_found_certify_without_a_false_alarm() {
    // A BN → BN chain whose bias bnfold rounds between the two folds (0.59 ulp from the exact
    // value, within its two roundings), a layer with a BN on each side, and an f64 Conv with a
    // weight of 1.4e214 (its region's magnitudes overflowed f32: an infinite error), and a
    // depthwise Conv with a BN on each side and no padding (its bias rounded between the two
    // folds, the forward gain taken from the scaled weights as stored: 1.5 ulps).
    for name in [
        "regressions/bn_dwconv_bn_each_side_bias_rounded_between.onnx",
        "regressions/conv_bn_bn_bias_rounded_between.onnx",
        "regressions/bn_conv_bn_each_side.onnx",
        "regressions/conv_bn_f64_huge_weight.onnx",
    ] {
        let original = Model::load(fixture(name)).unwrap();
        let mut fused = original.clone();
        fold(&mut fused, &FoldOptions::default()).unwrap();
        let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
        for c in certificates(&original, &fused) {
            assert!(c.passed() || c.unproven.is_some(), "{name}: {c:?}");
        }
        let v = verify(&original, &fused, &[], &VerifyOptions::default()).unwrap();
        assert_eq!(v.status, Status::Passed, "{name}: {v:?}");
    }
}
