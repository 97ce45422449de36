//! What the user allows the pass to do, the model-wide facts it reads, and what it found.

use std::collections::BTreeSet;

use super::equalize::statistics::BatchNormStatistics;
use super::rules::FoldKind;
use crate::external::ExternalStore;
use crate::report::AbsorptionPlan;
use crate::report::{
    DecompositionRecord, EqualizationRecord, FoldRecord, InitializerRecord, MergeRecord,
    NormalizationRecord, SkipRecord,
};

/// What the user allows the pass to do.
#[derive(Clone, Debug, Default)]
pub struct FoldOptions {
    /// Treat initializers that are also graph inputs (IR ≥ 4) as constants.
    pub inputs_are_constants: bool,
    /// Fold only into these kinds (all when `None`).
    pub only: Option<BTreeSet<FoldKind>>,
    /// BatchNormalization nodes (by name or first output) to leave alone.
    pub skip_nodes: BTreeSet<String>,
    /// Rewrite a BatchNormalization that folds nowhere into `Mul` and `Add`.
    pub decompose_standalone: bool,
    /// Merge each `Add` of parallel Conv / BN / identity branches of one tensor (RepVGG,
    /// MobileOne) into one Conv.
    pub merge_branches: bool,
    /// Leave layer weights and BN parameters stored as `Constant` nodes as they are (by
    /// default they become initializers, where quantizers look for weights).
    pub keep_constant_nodes: bool,
    /// Equalize the channel ranges of consecutive Convs (`--equalize`, exact: only positively
    /// homogeneous activations between them).
    pub equalize: bool,
    /// With `equalize`, also plan high-bias absorption (`--equalize=absorb`): an approximation,
    /// returned as [`Report::absorption`](crate::Report) for [`crate::absorb`] to apply.
    pub absorb_high_bias: bool,
    /// Plan without reading the layer weights for NaN or an infinity (which would leave their
    /// BatchNormalization in place with the reason `not_finite`): such a weight is folded, and
    /// writing the model fails with
    /// [`Error::FoldedNotFinite`](crate::error::Error::FoldedNotFinite). Saves a read of every
    /// weight before the first byte is written. A caller folds again without it on that error,
    /// and after a plan that skipped anything (a non-finite weight's reason would have come
    /// first), as the command line does.
    pub defer_weight_check: bool,
}

/// The model-wide facts the pass needs.
pub struct PassContext<'a> {
    /// Where external data is read from.
    pub store: &'a ExternalStore,
    /// The opset of the default domain.
    pub opset: i64,
    /// The model's IR version.
    pub ir_version: i64,
    /// The user's options.
    pub options: &'a FoldOptions,
    /// The main graph's BatchNormalization statistics, taken before folding, when high-bias
    /// absorption is planned.
    pub statistics: Option<&'a BatchNormStatistics>,
}

/// Everything the pass found.
#[derive(Default)]
pub struct PassOutcome {
    /// Folds applied.
    pub folds: Vec<FoldRecord>,
    /// BatchNormalization nodes left in place.
    pub skips: Vec<SkipRecord>,
    /// Normalizations that never fold.
    pub normalizations: Vec<NormalizationRecord>,
    /// BatchNormalization nodes rewritten as `Mul` and `Add`.
    pub decompositions: Vec<DecompositionRecord>,
    /// Adds of parallel branches merged into one Conv.
    pub merges: Vec<MergeRecord>,
    /// Weights and BN parameters moved from `Constant` nodes to initializers.
    pub initializers: Vec<InitializerRecord>,
    /// Pairs of Convs equalized.
    pub equalizations: Vec<EqualizationRecord>,
    /// High-bias absorption planned with them.
    pub absorption: AbsorptionPlan,
}
