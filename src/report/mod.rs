//! What a run did: folds, skips, normalizations that cannot fold, op counts, verification.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

mod absorption;
pub mod html;
pub mod json;
pub mod schema;
mod vocab;

pub use absorption::AbsorptionPlan;
pub(crate) use absorption::PlannedBias;
pub use vocab::{FoldKind, SkipReason};

use crate::verify::Verification;

/// The version of the JSON report's schema.
pub const SCHEMA_VERSION: u32 = 1;

/// Which way a BatchNormalization folded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the layer that produces its input.
    Backward,
    /// Into the layer that consumes its output.
    Forward,
}

/// One BatchNormalization folded into its producer (or, forward, its consumer).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct FoldRecord {
    /// The graph it happened in (`main`, or `main/<node>/<attribute>` for a subgraph).
    pub graph: String,
    /// The kind of layer it folded into.
    pub kind: FoldKind,
    /// Backward (into the producer) or forward (into the consumer).
    pub direction: Direction,
    /// The node it folded into: the producer, or forward the consumer (name, or first output).
    pub producer: String,
    /// The node at the end of the chain, whose output the fused layer takes over: a
    /// BatchNormalization, or the last `Mul`, `Add`, `Sub` or `Div` of a per-channel affine
    /// chain (name, or first output).
    pub batch_norm: String,
    /// The other nodes of the chain that folded too (Identity, BatchNormalization, and `Mul`,
    /// `Add`, `Sub` or `Div` of a per-channel constant), from the end back to the layer;
    /// forward, the Flatten.
    pub passthrough: Vec<String>,
    /// The tensor to compare after the fold: backward, the BN's output, which the fused
    /// producer now writes; forward, the consumer's output.
    pub output: String,
    /// The op consuming the output, when there is exactly one (`Relu`, ...).
    pub followed_by: Option<String>,
    /// The weight tensor written.
    pub weight: String,
    /// Whether the weight was rewritten under its own name (else a new tensor).
    pub weight_in_place: bool,
    /// The bias tensor written.
    pub bias: String,
    /// Forward into a padded Conv: the `Add` node that keeps the shift (the scale folded).
    pub shift_kept_as: Option<String>,
    /// The largest relative change of a weight element, `max |s − 1|`.
    pub max_rel_weight_change: f64,
}

/// One BatchNormalization left in place, or a `Mul`, `Add`, `Sub` or `Div` after a layer whose
/// constant is not per channel.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct SkipRecord {
    /// The graph it is in.
    pub graph: String,
    /// The node's name (or first output).
    pub node: String,
    /// Why it stayed.
    pub reason: SkipReason,
    /// The reason, for people.
    pub message: String,
    /// Why it did not fold forward either, when that was tried.
    pub forward: Option<SkipReason>,
    /// That reason, for people.
    pub forward_message: Option<String>,
}

/// A BatchNormalization rewritten as `Mul` and `Add` (`--decompose-standalone`).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct DecompositionRecord {
    /// The graph it is in.
    pub graph: String,
    /// The BatchNormalization node replaced.
    pub node: String,
    /// The new `Mul` node.
    pub mul: String,
    /// The new `Add` node.
    pub add: String,
}

/// A normalization whose statistics depend on the input, so it never folds.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct NormalizationRecord {
    /// The graph it is in.
    pub graph: String,
    /// The node's name (or first output).
    pub node: String,
    /// Its op type.
    pub op_type: String,
}

/// A layer weight or BN parameter that a `Constant` node (or data movement on constants)
/// computed, now stored as an initializer of the same name (quantizers treat only initializers
/// as weights; `--keep-constant-nodes` leaves them).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct InitializerRecord {
    /// The graph it is in.
    pub graph: String,
    /// The tensor, now an initializer.
    pub tensor: String,
    /// The node that computed it, now gone.
    pub node: String,
    /// That node's op type (`Constant`, `Reshape`, ...).
    pub op_type: String,
}

/// A pair of convolutions (Conv, ConvTranspose) or of Gemms equalized (`--equalize`): the first's output channels scaled
/// down by the factors the second's input channels are scaled up by.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct EqualizationRecord {
    /// The graph it happened in.
    pub graph: String,
    /// The first layer.
    pub first: String,
    /// Its op type: `Conv`, `ConvTranspose` or `Gemm`.
    pub first_op_type: String,
    /// The activation between them (`Relu`, `LeakyRelu`, `PRelu`, `Identity`), if any.
    pub activation: Option<String>,
    /// The second layer.
    pub second: String,
    /// Its op type.
    pub second_op_type: String,
    /// The channels between them.
    pub channels: usize,
    /// The first weight's per-tensor symmetric INT8 SQNR before, in dB.
    pub sqnr_first_before_db: f64,
    /// And after.
    pub sqnr_first_after_db: f64,
    /// The second weight's per-tensor symmetric INT8 SQNR before, in dB.
    pub sqnr_second_before_db: f64,
    /// And after.
    pub sqnr_second_after_db: f64,
    /// The SQNR of the first weight's worst output channel under its per-tensor grid, before:
    /// what equalization is for (a narrow channel keeps few of the grid's steps).
    pub worst_channel_before_db: f64,
    /// And after.
    pub worst_channel_after_db: f64,
    /// The first weight's range `max |W[o]|` per output channel, before.
    pub first_ranges_before: Vec<f64>,
    /// And after: the ranges the per-tensor grid is set by.
    pub first_ranges_after: Vec<f64>,
    /// High-bias absorption into this pair (`--equalize=absorb`), when it absorbed anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absorption: Option<AbsorptionRecord>,
}

/// High-bias absorption into one equalized pair (`--equalize=absorb`): a constant taken out of
/// the first layer's output channels and added back through the second layer's bias.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct AbsorptionRecord {
    /// Channels shifted (`c > 0`).
    pub channels: usize,
    /// The largest shift `c`, in the first layer's equalized output.
    pub largest_shift: f64,
    /// The float model's change at the second layer's output, measured against the exactly
    /// equalized model on the verification's inputs: largest difference over the output's
    /// largest magnitude (`null`: not measured).
    pub float_change: Option<f64>,
}

impl Report {
    /// The layers in an equalized pair, by label.
    pub fn equalized_layers(&self) -> std::collections::BTreeSet<&str> {
        self.equalizations
            .iter()
            .flat_map(|p| [p.first.as_str(), p.second.as_str()])
            .collect()
    }
}

/// High-bias absorption applied (`--equalize=absorb`), measured against the exactly equalized
/// model (which the verification proves equivalent to the original) on the verification's
/// inputs.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct AbsorptionCheck {
    /// Pairs absorbed into.
    pub pairs: usize,
    /// The float model's change at the outputs: largest difference over the output's largest
    /// magnitude, the largest over the outputs (`null`: not measured).
    pub output_change: Option<f64>,
    /// `failed` when anything but the absorbed biases differs from the exactly equalized model
    /// (node by node, initializer by initializer, value by value), `passed` when nothing does
    /// and the change was measured, `not_verified` when it could not be run.
    pub status: crate::verify::Status,
    /// Why it failed or did not run.
    pub reason: Option<String>,
}

/// An `Add` of parallel branches merged into one Conv (`--merge-branches`).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct MergeRecord {
    /// The graph it happened in.
    pub graph: String,
    /// The merged Conv (the branch Conv with the largest kernel, now reading every branch).
    pub node: String,
    /// Its output: the Add's, which it took over.
    pub output: String,
    /// The branches merged: Convs and BNs by name, an identity branch by its tensor.
    pub branches: Vec<String>,
    /// The Adds that joined them.
    pub adds: Vec<String>,
    /// The merged weight.
    pub weight: String,
    /// The merged bias.
    pub bias: String,
    /// The largest weight magnitude among the branch Convs before the merge.
    pub max_abs_before: f64,
    /// The largest magnitude of the merged weight (a merged kernel's range grows, which the
    /// per-tensor INT8 grid pays for).
    pub max_abs_after: f64,
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
    /// BatchNormalization nodes rewritten as `Mul` and `Add`.
    pub decompositions: Vec<DecompositionRecord>,
    /// Adds of parallel branches merged into one Conv (`--merge-branches`).
    pub merges: Vec<MergeRecord>,
    /// Weights and BN parameters stored as initializers instead of `Constant` nodes.
    pub initializers_from_constants: Vec<InitializerRecord>,
    /// Pairs of layers equalized (`--equalize`).
    pub equalizations: Vec<EqualizationRecord>,
    /// High-bias absorption planned with them (`--equalize=absorb`), for [`crate::absorb`]:
    /// the model [`crate::fold()`] leaves is the exactly equalized one.
    #[serde(skip)]
    pub absorption: AbsorptionPlan,
    /// What high-bias absorption changed, measured, once applied.
    pub absorption_check: Option<AbsorptionCheck>,
    /// The equivalence check, when it ran.
    pub verification: Option<Verification>,
    /// Quantization readiness of the folded weights, when it was asked for.
    pub readiness: Option<crate::readiness::Readiness>,
}
