//! Folding with `--equalize` and proving the result, for the equalization tests.

use bnfold::external::ExternalStore;
use bnfold::proto::ModelProto;
use bnfold::verify::Status;
use bnfold::{fold, verify, FoldOptions, Model, Report, VerifyOptions};

/// `model` folded with `--equalize`: the original, the fused model read back from its bytes,
/// and the report.
pub fn equalized(model: ModelProto) -> (Model, Model, Report) {
    equalized_model(Model::from_proto(model, ExternalStore::none()).unwrap())
}

/// A fixture, loaded.
pub fn fixture_model(name: &str) -> Model {
    Model::load(super::fixture(name)).unwrap()
}

/// `original` folded with `--equalize`, the fused model read back from its bytes.
pub fn equalized_model(original: Model) -> (Model, Model, Report) {
    let mut fused = original.clone();
    let options = FoldOptions {
        equalize: true,
        ..FoldOptions::default()
    };
    let report = fold(&mut fused, &options).unwrap();
    let fused = Model::from_bytes(fused.to_bytes().unwrap()).unwrap();
    (original, fused, report)
}

/// The verification passes, every pair proven locally.
pub fn passes(original: &Model, fused: &Model) {
    let v = verify(original, fused, &[], &VerifyOptions::default()).unwrap();
    assert_eq!(v.status, Status::Passed, "{v:?}");
    assert!(v.proven_locally, "{v:?}");
}

/// The largest magnitude among `values`.
pub fn range<'v>(values: impl IntoIterator<Item = &'v f64>) -> f64 {
    values.into_iter().fold(0.0, |m: f64, v| m.max(v.abs()))
}

/// The op types of each equalized pair, first and second.
pub fn pair_kinds(report: &Report) -> Vec<(&str, &str)> {
    report
        .equalizations
        .iter()
        .map(|e| (e.first_op_type.as_str(), e.second_op_type.as_str()))
        .collect()
}

/// The fixture `name` equalized: its pairs are `kinds`, and the verification proves it; the
/// report, for what else the caller checks.
pub fn exported_pairs(name: &str, kinds: &[(&str, &str)]) -> Report {
    let (original, fused, report) = equalized_model(fixture_model(name));
    assert_eq!(pair_kinds(&report), kinds, "{name}");
    passes(&original, &fused);
    report
}
