//! External data: folded tensors go back to data files beside the output, in the input's
//! layout, the input's own files untouched; locations that leave the model's folder are
//! refused. Each result is checked by tract against the original.

mod common;

use bnfold::tensor::decode;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, SaveOptions, VerifyOptions};
use common::{bn_count, fixture};

#[test]
fn external_data_is_read_folded_and_written_beside_the_output() {
    let original = Model::load(fixture("external/conv_bn_external.onnx")).unwrap();
    assert!(original.has_external_data());
    let mut fused = original.clone();
    fold(&mut fused, &FoldOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fused.onnx");
    fused.save(&out, SaveOptions::default()).unwrap();
    assert!(dir.path().join("conv_bn_external.data").exists());
    let reloaded = Model::load(&out).unwrap();
    assert!(reloaded.has_external_data());
    assert_eq!(bn_count(&reloaded), 0);
    let v = verify(&original, &reloaded, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{:?}", v.reason);
}

/// A model whose weights are spread over two data files, as some exporters write them, keeps
/// that layout: each folded tensor goes back to a file of the same name, and the result verifies.
#[test]
fn several_external_data_files_keep_their_layout() {
    use bnfold::proto::{tensor_proto::DataLocation, StringStringEntryProto};
    let src = tempfile::tempdir().unwrap();
    let mut m = Model::load(fixture("conv_bn.onnx")).unwrap();
    let graph = m.proto.graph.as_mut().unwrap();
    for (k, t) in graph.initializer.iter_mut().enumerate() {
        let raw = decode(t, &Default::default())
            .unwrap()
            .to_proto(t.name())
            .raw_data
            .unwrap();
        let location = format!("part{}.bin", k % 2);
        let path = src.path().join(&location);
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, &raw).unwrap();
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.raw_data = None;
        t.float_data.clear();
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![
            entry("location", location),
            entry("offset", offset.to_string()),
            entry("length", raw.len().to_string()),
        ];
    }
    let model_path = src.path().join("split.onnx");
    std::fs::write(&model_path, prost::Message::encode_to_vec(&m.proto)).unwrap();
    let original = Model::load(&model_path).unwrap();
    let mut fused = original.clone();
    assert_eq!(
        fold(&mut fused, &FoldOptions::default())
            .unwrap()
            .folds
            .len(),
        1
    );
    let out = tempfile::tempdir().unwrap();
    fused
        .save(out.path().join("fused.onnx"), SaveOptions::default())
        .unwrap();
    assert!(out.path().join("part0.bin").exists() && out.path().join("part1.bin").exists());
    let reloaded = Model::load(out.path().join("fused.onnx")).unwrap();
    assert_eq!(bn_count(&reloaded), 0);
    let v = verify(&original, &reloaded, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{:?}", v.reason);
}

#[test]
fn writing_beside_the_input_never_touches_the_input_data_file() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["conv_bn_external.onnx", "conv_bn_external.data"] {
        std::fs::copy(fixture("external").join(f), dir.path().join(f)).unwrap();
    }
    let data_before = std::fs::read(dir.path().join("conv_bn_external.data")).unwrap();
    let mut m = Model::load(dir.path().join("conv_bn_external.onnx")).unwrap();
    fold(&mut m, &FoldOptions::default()).unwrap();
    m.save(dir.path().join("fused.onnx"), SaveOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("conv_bn_external.data")).unwrap(),
        data_before
    );
    assert!(dir.path().join("fused.conv_bn_external.data").exists());
    let original = Model::load(dir.path().join("conv_bn_external.onnx")).unwrap();
    let fused = Model::load(dir.path().join("fused.onnx")).unwrap();
    assert_eq!(
        verify(&original, &fused, &[], &VerifyOptions::default())
            .unwrap()
            .status,
        Status::Passed
    );
}

#[test]
fn external_locations_that_escape_the_model_folder_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::load(fixture("external/conv_bn_external.onnx")).unwrap();
    for loc in ["../conv_bn_external.data", "/etc/passwd"] {
        for t in &mut m.proto.graph.as_mut().unwrap().initializer {
            for e in &mut t.external_data {
                if e.key() == "location" {
                    e.value = Some(loc.to_string());
                }
            }
        }
        let path = dir.path().join("hostile.onnx");
        std::fs::write(&path, prost::Message::encode_to_vec(&m.proto)).unwrap();
        let err = Model::load(&path).unwrap_err();
        assert!(
            matches!(err, bnfold::Error::ExternalData { .. }),
            "{loc}: {err}"
        );
    }
}
