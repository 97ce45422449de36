//! The folds of a BatchNormalization into the layer that produces its input, in the order they
//! are tried:
//!
//! - [`conv`]: `Conv → BN`
//! - [`conv_transpose`]: `ConvTranspose → BN`
//! - [`gemm`]: `Gemm → BN`
//! - [`matmul`]: `MatMul → BN` with a constant right-hand weight and a rank-2 product
//!
//! When none of these applies, the BN is folded forward into the layer that consumes it:
//!
//! - [`forward_conv`]: `BN → Conv` (ReLU → BN → Conv, pre-activation blocks)
//! - [`forward_conv_transpose`]: `BN → ConvTranspose` (the scale; the shift stays as an `Add`)
//! - [`forward_gemm`]: `BN → (Flatten →) Gemm` (classifier heads), and `BN → MatMul` on rank 2
//!
//! and, on request, a BN that folds nowhere is rewritten as `Mul` and `Add` ([`decompose`]).
//!
//! Each fold is a pure `plan` that returns the rewritten weight and bias or a [`SkipReason`];
//! [`mod@crate::fold`] finds the chains and is the one place that mutates the model.

pub mod conv;
pub mod conv_transpose;
pub mod decompose;
pub mod forward_conv;
pub mod forward_conv_transpose;
pub mod forward_gemm;
pub mod gemm;
pub mod matmul;
pub mod merge_branches;

mod affine;
mod steps;

pub use crate::report::{FoldKind, SkipReason};
pub use affine::{bias_values, round_into, Affine};
pub use steps::{per_channel_values, Arithmetic, ChannelAxis};

use crate::scaled::{ScaledTensor, Scaling};
use crate::tensor::{Dtype, Tensor};

/// What a fold makes of its producer: the weight's per-channel factors (applied, and rounded,
/// when the model is written) and the new bias, rounded into its dtype.
#[derive(Clone, Debug)]
pub struct ProducerRewrite {
    /// The input slot of the weight.
    pub weight_slot: usize,
    /// How the weight is scaled.
    pub weight: Scaling,
    /// The folded bias (input slot 2 of Conv, ConvTranspose and Gemm).
    pub bias: Tensor,
    /// What else changes on the producer node.
    pub change: NodeChange,
}

/// Changes to the producer node besides its weight and bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeChange {
    /// Nothing else.
    None,
    /// `Gemm`: `beta` is folded into the bias, so it becomes 1.
    GemmBetaOne,
    /// `MatMul` becomes `Gemm(A, W', bias)`.
    MatMulToGemm,
    /// `MatMul` stays and an `Add` of the bias follows it.
    MatMulThenAdd,
}

/// What a forward fold makes of the consumer: new weight, new bias (or `C`), or the shift that
/// stays as an `Add` before it.
#[derive(Clone, Debug)]
pub struct ConsumerRewrite {
    /// How the weight is scaled.
    pub weight: Scaling,
    /// The rewritten bias (Conv) or `C` (Gemm); `None` when it does not change.
    pub bias: Option<Tensor>,
    /// The per-channel constant `d` of `Add(X, d)` that replaces the BN, when the consumer pads.
    pub shift_add: Option<Tensor>,
    /// Gemm: `beta` becomes 1 (it is folded into `C`).
    pub gemm_beta_one: bool,
}

/// The result of a forward plan.
pub type PlannedForward = Result<ConsumerRewrite, SkipReason>;

/// What a forward fold needs to know of the consumer.
pub struct ForwardInput<'a> {
    /// The consumer node.
    pub node: &'a crate::proto::NodeProto,
    /// The BN node's name, for the tensors it leaves behind.
    pub bn_name: &'a str,
    /// The weight's name.
    pub weight_name: &'a str,
    /// The weight.
    pub weight: &'a Tensor,
    /// The bias's (or `C`'s) name: the existing one, or the one to create.
    pub bias_name: &'a str,
    /// The bias, if any.
    pub bias: Option<&'a Tensor>,
    /// The BN's affine map.
    pub affine: &'a Affine,
    /// Conv `group`.
    pub group: usize,
    /// Conv: whether it pads (its padded zeros are not `BN(0)`).
    pub padded: bool,
    /// Gemm after Flatten: positions per channel (`0`: unknown, any whole multiple).
    pub positions: usize,
    /// The dtype of the BN's data, for the shift constant.
    pub activation_dtype: Dtype,
}

/// What the fold step needs to know of the producer's parameters.
pub struct FoldInput<'a> {
    /// The producer node.
    pub node: &'a crate::proto::NodeProto,
    /// The weight's name.
    pub weight_name: &'a str,
    /// The bias's name (empty when absent).
    pub bias_name: &'a str,
    /// The weight: its dtype and shape (its values are not read).
    pub weight: &'a ScaledTensor,
    /// The weight's input slot.
    pub weight_slot: usize,
    /// The bias, if any.
    pub bias: Option<&'a Tensor>,
    /// The BN's affine map.
    pub affine: &'a Affine,
    /// The rank of the producer's output, when known.
    pub output_rank: Option<usize>,
    /// The opset of the default domain.
    pub opset: i64,
}

/// The result of a fold's plan: a hard error, a skip, or the rewrite.
pub type Planned = crate::error::Result<Result<ProducerRewrite, SkipReason>>;
