//! Valid means valid, invalid means refused: non-finite parameters are named skips, sparse
//! weights stay as they are with a reason, BatchNormalization inside model-local functions is
//! listed, layers whose group does not divide their channels are refused, and `bnfold verify`
//! compares interfaces before values.

mod common;

use bnfold::proto::{FunctionProto, NodeProto, OperatorSetIdProto, SparseTensorProto, TensorProto};
use common::*;

/// The JSON report of a run, checked against `schema/report.schema.json`.
fn json(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut args = args.to_vec();
    args.extend(["--report", "json"]);
    let o = bnfold(&args);
    let report = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    let schema_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/report.schema.json"),
    )
    .unwrap();
    let schema = jsonschema::validator_for(&serde_json::from_str(&schema_text).unwrap()).unwrap();
    if !report.is_null() {
        let errors: Vec<String> = schema.iter_errors(&report).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{args:?}: {errors:?}");
    }
    (o.status.code(), report, stderr(&o))
}

fn set_value(model: &mut bnfold::proto::ModelProto, name: &str, element: usize, value: f32) {
    let t = initializer(model, name);
    let mut raw = t.raw_data.take().unwrap().to_vec();
    raw[element * 4..element * 4 + 4].copy_from_slice(&value.to_le_bytes());
    t.raw_data = Some(raw.into());
}

#[test]
fn a_non_finite_weight_bias_or_bn_parameter_is_a_skip_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    for (tensor, element, value, shown) in [
        ("w", 31, f32::NAN, "NaN"),
        ("b", 2, f32::INFINITY, "inf"),
        ("bn.var", 1, f32::NAN, "NaN"),
        ("bn.gamma", 0, f32::NEG_INFINITY, "-inf"),
    ] {
        let mut model = conv_bn();
        set_value(&mut model, tensor, element, value);
        let input = dir.path().join(format!("{tensor}.onnx"));
        write(&input, &model);
        let (code, report, err) = json(&[s(&input), "--dry-run", "--no-verify"]);
        assert_eq!(code, Some(0), "{tensor}: {err}");
        let skip = &report["skips"][0];
        assert_eq!(skip["reason"], "not_finite", "{tensor}: {report}");
        assert_eq!(skip["details"]["tensor"], tensor);
        assert_eq!(skip["details"]["element"], element);
        assert_eq!(skip["details"]["value"], shown);
        let (code, _, err) = json(&["inspect", s(&input)]);
        assert_eq!(code, Some(0), "inspect {tensor}: {err}");
        // Written, the weights are read only as they are written: a NaN there stops the write
        // before anything is committed, and the fold runs again reading them first.
        let out = dir.path().join(format!("{tensor}.fused.onnx"));
        let (code, written, err) = json(&[s(&input), "-o", s(&out)]);
        assert_eq!(code, Some(0), "{tensor}: {err}");
        assert_eq!(written["skips"], report["skips"], "{tensor}");
        assert_eq!(written["ops_after"]["BatchNormalization"], 1, "{tensor}");
        assert_eq!(written["verification"]["status"], "passed", "{tensor}");
        assert!(out.exists(), "{tensor}");
    }
    let left: Vec<_> = files(dir.path()).into_keys().collect();
    assert_eq!(
        left.len(),
        8,
        "nothing but the inputs and outputs: {left:?}"
    );
}

#[test]
fn a_nan_weight_is_the_reason_given_before_a_nan_bias_also_when_written() {
    // The weight is read before the bias while planning: its reason comes first whether the
    // model is written (weights read as they are written) or not.
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    set_value(&mut model, "w", 5, f32::NAN);
    set_value(&mut model, "b", 1, f32::INFINITY);
    let input = dir.path().join("both.onnx");
    write(&input, &model);
    let (_, dry, _) = json(&[s(&input), "--dry-run", "--no-verify"]);
    let out = dir.path().join("fused.onnx");
    let report_file = dir.path().join("report.json");
    let (code, written, err) = json(&[
        s(&input),
        "-o",
        s(&out),
        "--no-verify",
        "--report-file",
        s(&report_file),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(dry["skips"][0]["details"]["tensor"], "w", "{dry}");
    assert_eq!(written["skips"], dry["skips"]);
    let filed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(filed["skips"], dry["skips"]);
}

#[test]
fn a_fold_planned_without_reading_the_weights_fails_its_write_on_a_nan_weight() {
    // The library option behind the command line's single read of each weight: the NaN weight
    // is folded unread, and writing it fails with the error the command line retries on.
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    set_value(&mut model, "w", 31, f32::NAN);
    let input = dir.path().join("nan.onnx");
    write(&input, &model);
    let options = bnfold::FoldOptions {
        defer_weight_check: true,
        ..bnfold::FoldOptions::default()
    };
    let mut m = bnfold::Model::load(&input).unwrap();
    assert_eq!(bnfold::fold(&mut m, &options).unwrap().folds.len(), 1);
    let err = m
        .save(dir.path().join("out.onnx"), bnfold::SaveOptions::default())
        .unwrap_err();
    assert!(err.is_folded_not_finite(), "{err}");
    assert!(
        err.to_string()
            .contains("folded element 31 is not finite in float32"),
        "{err}"
    );
    assert!(!dir.path().join("out.onnx").exists());
}

#[test]
fn a_weight_scaled_past_its_range_fails_the_write_naming_it_and_writes_nothing() {
    // Finite, but 3e38 times a BN scale of about 10 overflows float32: read again after the
    // first attempt, it still fails, with the element named, and leaves no file behind.
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    set_value(&mut model, "w", 0, 3e38);
    set_value(&mut model, "bn.gamma", 0, 10.0);
    let message = "tensor 'w': folded element 0 is not finite in float32 (scaled past its range)";
    assert_refused(dir.path(), &model, message);
}

/// Folding `model` with an output is refused with exit 2 and one line holding `message`, and
/// nothing but the input is left in `dir`.
fn assert_refused(dir: &std::path::Path, model: &bnfold::proto::ModelProto, message: &str) {
    let input = dir.join("model.onnx");
    write(&input, model);
    let out = dir.join("fused.onnx");
    let o = bnfold(&[s(&input), "-o", s(&out)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(message), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(files(dir).into_keys().collect::<Vec<_>>(), vec![input]);
}

#[test]
fn a_non_finite_epsilon_is_its_own_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    set_attribute(
        node_mut(&mut model, "BatchNormalization"),
        bnfold::proto::AttributeProto {
            name: Some("epsilon".into()),
            r#type: Some(bnfold::proto::attribute_proto::AttributeType::Float as i32),
            f: Some(f32::INFINITY),
            ..Default::default()
        },
    );
    let input = dir.path().join("eps.onnx");
    write(&input, &model);
    let (code, report, err) = json(&[s(&input), "--dry-run", "--no-verify"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        report["skips"][0]["reason"], "epsilon_not_finite",
        "{report}"
    );
    assert_eq!(report["skips"][0]["details"]["value"], "inf");
}

#[test]
fn a_conv_whose_group_does_not_divide_its_channels_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    set_attribute(
        node_mut(&mut model, "Conv"),
        bnfold::proto::AttributeProto {
            name: Some("group".into()),
            r#type: Some(bnfold::proto::attribute_proto::AttributeType::Int as i32),
            i: Some(3),
            ..Default::default()
        },
    );
    let message = "node 'conv' (Conv): group 3 does not divide the 4 output channels";
    assert_refused(dir.path(), &model, message);
}

#[test]
fn a_sparse_weight_is_read_as_defined_and_left_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    let graph = model.graph.as_mut().unwrap();
    let at = graph
        .initializer
        .iter()
        .position(|t| t.name() == "w")
        .unwrap();
    let dense = graph.initializer.remove(at);
    // Two non-zero elements of the [4, 3, 3, 3] weight, at linear indices 0 and 50.
    let raw = dense.raw_data.unwrap();
    let values: Vec<u8> = raw[0..4].iter().chain(&raw[200..204]).copied().collect();
    graph.sparse_initializer.push(SparseTensorProto {
        values: Some(TensorProto {
            name: Some("w".into()),
            data_type: Some(1),
            dims: vec![2],
            raw_data: Some(values.into()),
            ..Default::default()
        }),
        indices: Some(TensorProto {
            name: Some("w_indices".into()),
            data_type: Some(7),
            dims: vec![2],
            int64_data: vec![0, 50],
            ..Default::default()
        }),
        dims: vec![4, 3, 3, 3],
    });
    let input = dir.path().join("sparse.onnx");
    write(&input, &model);
    let (code, report, err) = json(&[s(&input), "--dry-run", "--no-verify"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["skips"][0]["reason"], "param_sparse", "{report}");
    assert_eq!(report["skips"][0]["details"]["tensor"], "w");
    let out = dir.path().join("out.onnx");
    let o = bnfold(&[s(&input), "-o", s(&out), "--no-verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let written = bnfold::Model::load(&out).unwrap();
    assert_eq!(written.proto.graph.unwrap().sparse_initializer.len(), 1);
}

#[test]
fn batch_norm_inside_a_model_local_function_is_listed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    model.opset_import.push(OperatorSetIdProto {
        domain: Some("local".into()),
        version: Some(1),
    });
    model.functions.push(FunctionProto {
        name: Some("norm_block".into()),
        domain: Some("local".into()),
        input: ["x", "g", "b", "m", "v"].map(String::from).to_vec(),
        output: vec!["y".into()],
        node: vec![NodeProto {
            op_type: Some("BatchNormalization".into()),
            name: Some("inner_bn".into()),
            input: ["x", "g", "b", "m", "v"].map(String::from).to_vec(),
            output: vec!["y".into()],
            ..Default::default()
        }],
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        ..Default::default()
    });
    let input = dir.path().join("function.onnx");
    write(&input, &model);
    let (code, report, err) = json(&[s(&input), "--dry-run", "--no-verify"]);
    assert_eq!(code, Some(0), "{err}");
    let skips = report["skips"].as_array().unwrap();
    let inner = skips.iter().find(|k| k["node"] == "inner_bn").unwrap();
    assert_eq!(inner["reason"], "in_function");
    assert_eq!(inner["details"]["function"], "local.norm_block");
    assert_eq!(report["folds"].as_array().unwrap().len(), 1);
    let (code, inspected, _) = json(&["inspect", s(&input)]);
    assert_eq!(code, Some(0));
    let listed = inspected["normalizations"].as_array().unwrap();
    assert!(listed
        .iter()
        .any(|n| n["node"] == "inner_bn" && n["reason"] == "in_function"));
}

#[test]
fn verify_fails_when_an_input_changes_its_type_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    let x = &mut model.graph.as_mut().unwrap().input[0];
    if let Some(bnfold::proto::type_proto::Value::TensorType(t)) =
        x.r#type.as_mut().unwrap().value.as_mut()
    {
        t.elem_type = Some(11);
    }
    let candidate = dir.path().join("double.onnx");
    write(&candidate, &model);
    let o = bnfold(&["verify", s(&fixture("conv_bn.onnx")), s(&candidate)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("graph input 'x' is float32 in the original and float64 in the candidate"),
        "{err}"
    );
}

#[test]
fn a_model_whose_value_info_contradicts_its_shapes_is_still_verified() {
    use bnfold::proto::{tensor_shape_proto, type_proto, TensorShapeProto, TypeProto};
    let dir = tempfile::tempdir().unwrap();
    let mut model = conv_bn();
    let dim = |d: tensor_shape_proto::dimension::Value| tensor_shape_proto::Dimension {
        value: Some(d),
        ..Default::default()
    };
    use tensor_shape_proto::dimension::Value::{DimParam, DimValue};
    // The Conv's output declared with a symbolic batch and 5 channels, where it has 1 and 4.
    model
        .graph
        .as_mut()
        .unwrap()
        .value_info
        .push(bnfold::proto::ValueInfoProto {
            name: Some("y0".into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(TensorShapeProto {
                        dim: vec![
                            dim(DimParam("N".into())),
                            dim(DimValue(5)),
                            dim(DimValue(7)),
                            dim(DimValue(7)),
                        ],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
    let input = dir.path().join("contradicting.onnx");
    write(&input, &model);
    let original = bnfold::Model::load(&input).unwrap();
    let v = bnfold::verify(&original, &original, &[], &Default::default()).unwrap();
    assert_eq!(v.status, bnfold::verify::Status::Passed, "{v:?}");
    let (code, report, err) = json(&[s(&input), "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(report["verification"]["status"], "passed", "{report}");
}
