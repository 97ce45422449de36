//! What a run did: folds, skips, normalizations that cannot fold, op counts, verification.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::folds::{FoldKind, SkipReason};
use crate::verify::Verification;

/// The version of the JSON report's schema.
pub const SCHEMA_VERSION: u32 = 1;

/// One BatchNormalization folded into its producer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FoldRecord {
    /// The graph it happened in (`main`, or `main/<node>/<attribute>` for a subgraph).
    pub graph: String,
    /// The kind of producer.
    pub kind: FoldKind,
    /// The producer node's name (or first output).
    pub producer: String,
    /// The BatchNormalization node's name (or first output).
    pub batch_norm: String,
    /// Identity or Add nodes between producer and BN that folded too.
    pub passthrough: Vec<String>,
    /// The tensor the fused producer now writes (the BN's output).
    pub output: String,
    /// The op consuming the output, when there is exactly one (`Relu`, ...).
    pub followed_by: Option<String>,
    /// The weight tensor written.
    pub weight: String,
    /// Whether the weight was rewritten under its own name (else a new tensor).
    pub weight_in_place: bool,
    /// The bias tensor written.
    pub bias: String,
    /// The largest relative change of a weight element, `max |s − 1|`.
    pub max_rel_weight_change: f64,
}

/// One BatchNormalization left in place.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SkipRecord {
    /// The graph it is in.
    pub graph: String,
    /// The BatchNormalization node's name (or first output).
    pub node: String,
    /// Why it stayed.
    pub reason: SkipReason,
    /// The reason, for people.
    pub message: String,
}

/// A normalization whose statistics depend on the input, so it never folds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NormalizationRecord {
    /// The graph it is in.
    pub graph: String,
    /// The node's name (or first output).
    pub node: String,
    /// Its op type.
    pub op_type: String,
}

/// The result of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Op counts before folding.
    pub ops_before: BTreeMap<String, usize>,
    /// Op counts after folding.
    pub ops_after: BTreeMap<String, usize>,
    /// Every fold, in the order applied.
    pub folds: Vec<FoldRecord>,
    /// Every BatchNormalization left in place.
    pub skips: Vec<SkipRecord>,
    /// LayerNormalization, GroupNormalization and InstanceNormalization nodes.
    pub non_foldable_normalizations: Vec<NormalizationRecord>,
    /// The equivalence check, when it ran.
    pub verification: Option<Verification>,
}
