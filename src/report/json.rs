//! The JSON reports as types: a fold, `inspect` and `verify`. These structs are the one source
//! of the JSON that `--report json`, `--report-file` and the Python package write, and of
//! `schema/report.schema.json`, which [`super::schema`] generates from them.
//!
//! A report is written through [`to_value`]: `serde_json`'s map keeps keys sorted, so the same
//! input gives the same bytes however the structs order their fields.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use super::SkipReason;
use crate::readiness::Readiness;
use crate::report::{
    AbsorptionCheck, DecompositionRecord, Direction, EqualizationRecord, FoldRecord,
    InitializerRecord, MergeRecord, NormalizationRecord, Report, SCHEMA_VERSION,
};
use crate::verify::Verification;

/// The version of the report's schema, written as `"schema": 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct SchemaVersion(u32);

impl Default for SchemaVersion {
    fn default() -> Self {
        SchemaVersion(SCHEMA_VERSION)
    }
}

impl JsonSchema for SchemaVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "schema_version".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "const": SCHEMA_VERSION,
            "description": "Version of this schema; bumped on any incompatible change.",
        })
    }
}

/// The stable code of a [`SkipReason`] (`training_mode`, `producer_output_shared`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ReasonCode(String);

impl From<&SkipReason> for ReasonCode {
    fn from(reason: &SkipReason) -> Self {
        ReasonCode(reason.code())
    }
}

impl JsonSchema for ReasonCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "reason_code".into()
    }

    /// Every `code` the schema of [`SkipReason`] lists: the codes have one source, the enum.
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let reasons = SkipReason::json_schema(generator);
        let codes: Vec<Value> = reasons
            .get("oneOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|variant| variant.pointer("/properties/code/const").cloned())
            .collect();
        schemars::json_schema!({
            "description": "Why a node was left in place, as a stable code.",
            "enum": codes,
        })
    }
}

/// One node left in place: the skip, its reason as a code and with its data, and for people.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct SkipEntry {
    /// The graph it is in.
    pub graph: String,
    /// The node's name (or first output).
    pub node: String,
    /// Why it stayed.
    pub reason: ReasonCode,
    /// The reason code again with the tensor, op or value it is about.
    pub details: SkipReason,
    /// The reason, for people.
    pub message: String,
    /// Why it did not fold forward either (null when forward was not tried).
    pub forward_reason: Option<ReasonCode>,
    /// That reason, for people.
    pub forward_message: Option<String>,
}

/// The report of a fold, `--check` or `--dry-run`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct FoldDocument {
    /// The schema's version.
    pub schema: SchemaVersion,
    /// The input model's path as given.
    pub input: String,
    /// The path written, or null when nothing was written (`--check`, `--dry-run`, a failed
    /// verification).
    pub output: Option<String>,
    /// Node count per op type before folding, subgraphs included.
    pub ops_before: BTreeMap<String, usize>,
    /// And after.
    pub ops_after: BTreeMap<String, usize>,
    /// Every fold, in the order applied.
    pub folds: Vec<FoldRecord>,
    /// Every BatchNormalization (or per-channel arithmetic) left in place.
    pub skips: Vec<SkipEntry>,
    /// LayerNormalization, GroupNormalization and InstanceNormalization nodes.
    pub non_foldable_normalizations: Vec<NormalizationRecord>,
    /// BatchNormalization nodes rewritten as `Mul` and `Add` (`--decompose-standalone`).
    pub decompositions: Vec<DecompositionRecord>,
    /// The equivalence check; null with `--check` or `--no-verify`.
    pub verification: Option<Verification>,
    /// Quantization readiness of the weights as folded; null with `--check` or
    /// `--no-readiness`.
    pub quantization_readiness: Option<Readiness>,
    /// Adds of parallel branches merged into one Conv (`--merge-branches`); present only when
    /// one was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merges: Vec<MergeRecord>,
    /// Layer weights and BatchNormalization parameters that `Constant` nodes (or data movement
    /// on constants) computed, now initializers of the same name; present only when there was
    /// one (none with `--keep-constant-nodes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub initializers_from_constants: Vec<InitializerRecord>,
    /// Pairs of Convs equalized (`--equalize`); present only when there was one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub equalizations: Vec<EqualizationRecord>,
    /// High-bias absorption (`--equalize=absorb`) measured against the exactly equalized model;
    /// present only when something was absorbed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_bias_absorption: Option<AbsorptionCheck>,
}

impl FoldDocument {
    /// The report of `report`: `input` as given, `output` the model written (none when nothing
    /// was).
    pub fn new(report: &Report, input: &str, output: Option<&str>) -> Self {
        let skips = report
            .skips
            .iter()
            .map(|s| SkipEntry {
                graph: s.graph.clone(),
                node: s.node.clone(),
                reason: ReasonCode::from(&s.reason),
                details: s.reason.clone(),
                message: s.message.clone(),
                forward_reason: s.forward.as_ref().map(ReasonCode::from),
                forward_message: s.forward_message.clone(),
            })
            .collect();
        FoldDocument {
            schema: SchemaVersion::default(),
            input: input.to_string(),
            output: output.map(str::to_string),
            ops_before: report.ops_before.clone(),
            ops_after: report.ops_after.clone(),
            folds: report.folds.clone(),
            skips,
            non_foldable_normalizations: report.non_foldable_normalizations.clone(),
            decompositions: report.decompositions.clone(),
            verification: report.verification.clone(),
            quantization_readiness: report.readiness.clone(),
            merges: report.merges.clone(),
            initializers_from_constants: report.initializers_from_constants.clone(),
            equalizations: report.equalizations.clone(),
            high_bias_absorption: report.absorption_check.clone(),
        }
    }
}

/// Why a normalization stays: a skip's code, or `input_statistics` for a normalization whose
/// statistics come from its input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StaysBecause {
    /// A BatchNormalization left in place.
    Skip(ReasonCode),
    /// A LayerNormalization, GroupNormalization or InstanceNormalization.
    Statistics(InputStatistics),
}

/// The reason of a normalization whose statistics are computed from its input at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputStatistics {
    /// Written `input_statistics`.
    InputStatistics,
}

/// One normalization node and how it folds, as `inspect` lists them.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct NormalizationEntry {
    /// The graph it is in.
    pub graph: String,
    /// The node's name (or first output).
    pub node: String,
    /// Its op type.
    pub op_type: String,
    /// Whether it folds.
    pub foldable: bool,
    /// Why it stays; absent when it folds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<StaysBecause>,
    /// How it folds, or why it stays, for people.
    pub how: String,
}

impl NormalizationEntry {
    /// Every normalization of a fold's report: the folds, the skips, then the normalizations
    /// whose statistics come from their input.
    pub fn all(report: &Report) -> Vec<NormalizationEntry> {
        let folds = report.folds.iter().map(|f| {
            let how = match f.direction {
                Direction::Backward => format!("into {} {}", f.kind.op_type(), f.producer),
                Direction::Forward => format!("forward into {} {}", f.kind.op_type(), f.producer),
            };
            NormalizationEntry {
                graph: f.graph.clone(),
                node: f.batch_norm.clone(),
                op_type: "BatchNormalization".into(),
                foldable: true,
                reason: None,
                how,
            }
        });
        let skips = report.skips.iter().map(|k| NormalizationEntry {
            graph: k.graph.clone(),
            node: k.node.clone(),
            op_type: "BatchNormalization".into(),
            foldable: false,
            reason: Some(StaysBecause::Skip(ReasonCode::from(&k.reason))),
            how: k.message.clone(),
        });
        let statistics = report
            .non_foldable_normalizations
            .iter()
            .map(|n| NormalizationEntry {
                graph: n.graph.clone(),
                node: n.node.clone(),
                op_type: n.op_type.clone(),
                foldable: false,
                reason: Some(StaysBecause::Statistics(InputStatistics::InputStatistics)),
                how: "its statistics are computed from the input at run time".into(),
            });
        folds.chain(skips).chain(statistics).collect()
    }
}

/// The report of `bnfold inspect`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct InspectDocument {
    /// The schema's version.
    pub schema: SchemaVersion,
    /// The model's path as given.
    pub input: String,
    /// Every normalization node and how it folds.
    pub normalizations: Vec<NormalizationEntry>,
    /// Quantization readiness of the weights as they would fold.
    pub quantization_readiness: Readiness,
}

impl InspectDocument {
    /// The report of `inspect` on `input`.
    pub fn new(input: &str, normalizations: &[NormalizationEntry], readiness: &Readiness) -> Self {
        InspectDocument {
            schema: SchemaVersion::default(),
            input: input.to_string(),
            normalizations: normalizations.to_vec(),
            quantization_readiness: readiness.clone(),
        }
    }
}

/// The report of `bnfold verify ORIGINAL CANDIDATE`.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct VerifyDocument {
    /// The schema's version.
    pub schema: SchemaVersion,
    /// The original model's path as given.
    pub original: String,
    /// The candidate's path as given.
    pub candidate: String,
    /// The comparison.
    pub verification: Verification,
}

impl VerifyDocument {
    /// The report of `verify`: two models compared.
    pub fn new(original: &str, candidate: &str, verification: &Verification) -> Self {
        VerifyDocument {
            schema: SchemaVersion::default(),
            original: original.to_string(),
            candidate: candidate.to_string(),
            verification: verification.clone(),
        }
    }
}

/// `document` as a JSON value, keys sorted.
pub fn to_value(document: &impl Serialize) -> Value {
    serde_json::to_value(document).unwrap_or(Value::Null)
}

/// The report of a fold as JSON (see [`FoldDocument`]).
pub fn fold(report: &Report, input: &str, output: Option<&str>) -> Value {
    to_value(&FoldDocument::new(report, input, output))
}

/// The report of `inspect` as JSON (see [`InspectDocument`]).
pub fn inspect(input: &str, normalizations: &[NormalizationEntry], readiness: &Readiness) -> Value {
    to_value(&InspectDocument::new(input, normalizations, readiness))
}

/// The report of `verify` as JSON (see [`VerifyDocument`]).
pub fn verify(original: &str, candidate: &str, verification: &Verification) -> Value {
    to_value(&VerifyDocument::new(original, candidate, verification))
}
