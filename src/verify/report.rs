//! What the check found, as the report writes it: per compared tensor, per fold run alone, per
//! differing region, and the verdict.

use schemars::JsonSchema;
use serde::Serialize;

use crate::certificate::NodeCertificate;
use crate::reference::ReferenceCheck;

/// The outcome of the check.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every compared tensor is within tolerance.
    Passed,
    /// Some tensor differs beyond tolerance, or the outputs do not correspond.
    Failed,
    /// tract could not run a model; nothing was compared.
    NotVerified,
}

impl Status {
    /// The status in words, as the text and HTML reports print it.
    pub fn words(&self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "FAILED",
            Status::NotVerified => "not verified",
        }
    }
}

/// The comparison of one tensor present in both models.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct OutputCheck {
    /// The tensor's name.
    pub name: String,
    /// Whether it is a graph output (else the output of a folded chain).
    pub graph_output: bool,
    /// Largest `|a − b|` over all samples.
    pub max_abs_error: f64,
    /// Largest `|a − b| / |a|` over elements whose `|a|` is at least the absolute tolerance
    /// rounded up to a power of two.
    pub max_rel_error: f64,
    /// `max |a − b| / max |a|`.
    pub normalized_error: f64,
    /// Largest `|a|` of the reference.
    pub max_magnitude: f64,
    /// Absolute tolerance held to.
    pub atol: f64,
    /// Relative tolerance held to.
    pub rtol: f64,
    /// Whether every element satisfied `|a − b| ≤ atol + rtol·|a|`, or, where one did not, the
    /// second opinion passed.
    pub passed: bool,
    /// The second opinion, for an output beyond the fixed tolerance: an exact
    /// reference where tract can run one, else the original's own sensitivity.
    pub reference: Option<ReferenceCheck>,
}

/// What the check did.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Verification {
    /// Passed, failed, or not verified.
    pub status: Status,
    /// Why it failed or could not run.
    pub reason: Option<String>,
    /// Per compared tensor.
    pub outputs: Vec<OutputCheck>,
    /// Symbolic dimensions that were given a guessed value (`input:axis=value`).
    pub guessed_dims: Vec<String>,
    /// Samples run.
    pub samples: usize,
    /// The seed.
    pub seed: u64,
    /// The exact certificate of every node that took over a BatchNormalization's output: each
    /// rewritten tensor against the fold's formula recomputed from the original.
    pub certificates: Vec<NodeCertificate>,
    /// Each backward fold run alone against its original region.
    pub regions: Vec<RegionCheck>,
    /// The first difference between the graphs outside the folds, if any.
    pub structure_difference: Option<String>,
    /// Whether the local proof is complete: no difference outside the folds, every region
    /// passed, every certificate passed.
    pub proven_locally: bool,
    /// Where the candidate differs outside the folds: each differing region run alone on the
    /// original's values.
    pub divergences: Vec<DivergenceCheck>,
}

/// One fold's region against its fused node.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct RegionCheck {
    /// The graph holding it: `main`, or a subgraph's path as the fold report has it.
    pub graph: String,
    /// The fused node (name, or first output).
    pub node: String,
    /// The last BatchNormalization of the original region.
    pub batch_norm: String,
    /// The tensor compared: the region's output, which the fused node took over.
    pub output: String,
    /// The shape of the region's data input.
    pub input_shape: Vec<usize>,
    /// Passed, failed, or not verified (the region could not be built or run).
    pub status: Status,
    /// Why it failed or could not run.
    pub reason: Option<String>,
    /// The comparison of the region's output against the original region's, when it ran (its
    /// figures; the exact check decides).
    pub check: Option<OutputCheck>,
    /// The region's output against its exact value, which decides.
    pub exact: Option<ExactCheck>,
    /// Why the region has no exact check (tract cannot run it in f64), when it has none: then
    /// `check` decides, with the tolerance of one layer.
    pub exact_unavailable: Option<String>,
}

/// A region's outputs against their exact values.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct ExactCheck {
    /// Largest error of the fused nodes against the exact value, in units of rounding of `M`.
    pub fused_error_units: f64,
    /// Largest error of the original region against the exact value, in the same units.
    pub original_error_units: f64,
    /// The bound held to: `4 × original_error_units + 2` (for f64 regions, whose reference is
    /// no wider than themselves, plus the dot product's rounding bound `n`, `n` its terms).
    pub bound_units: f64,
    /// The unit roundoff `u` of the region's dtype.
    pub unit_roundoff: f64,
    /// Whether `fused_error_units ≤ bound_units`.
    pub passed: bool,
}

/// One differing region of the candidate against the original's values.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct DivergenceCheck {
    /// The region's first node in the candidate's graph order (name, or first output).
    pub first_node: String,
    /// Its op type.
    pub op_type: String,
    /// How many candidate nodes the region holds.
    pub nodes: usize,
    /// The tensors it reads (the original's values fed).
    pub inputs: Vec<String>,
    /// Passed, failed, or not verified (not comparable, or tract could not run it).
    pub status: Status,
    /// Why it failed or could not be compared.
    pub reason: Option<String>,
    /// Each output against the original's value of the same tensor.
    pub outputs: Vec<OutputCheck>,
}

impl Verification {
    /// "Not verified" without running anything, for `reason`.
    pub fn not_run(reason: String, seed: u64) -> Verification {
        Verification::not_verified(reason, seed)
    }

    pub(crate) fn not_verified(reason: String, seed: u64) -> Verification {
        Verification {
            status: Status::NotVerified,
            reason: Some(reason),
            outputs: vec![],
            guessed_dims: vec![],
            samples: 0,
            seed,
            certificates: vec![],
            regions: vec![],
            structure_difference: None,
            proven_locally: false,
            divergences: vec![],
        }
    }
}
