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
//! [`crate::pass`] finds the chains and is the one place that mutates the model.

pub mod conv;
pub mod conv_transpose;
pub mod decompose;
pub mod forward_conv;
pub mod forward_conv_transpose;
pub mod forward_gemm;
pub mod gemm;
pub mod matmul;

use serde::Serialize;

use crate::scaled::{ScaledTensor, Scaling};
use crate::tensor::{Dtype, Tensor};

/// The kinds of layer a BatchNormalization folds into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FoldKind {
    /// `Conv`, any rank, grouped or depthwise.
    Conv,
    /// `ConvTranspose`.
    ConvTranspose,
    /// `Gemm`.
    Gemm,
    /// `MatMul` with a constant weight.
    MatMul,
}

impl FoldKind {
    /// Every kind, in the order of [`FoldKind::op_type`].
    pub const ALL: [FoldKind; 4] = [
        FoldKind::Conv,
        FoldKind::ConvTranspose,
        FoldKind::Gemm,
        FoldKind::MatMul,
    ];

    /// The ONNX op this kind folds into.
    pub fn op_type(self) -> &'static str {
        match self {
            FoldKind::Conv => "Conv",
            FoldKind::ConvTranspose => "ConvTranspose",
            FoldKind::Gemm => "Gemm",
            FoldKind::MatMul => "MatMul",
        }
    }

    /// The kind folding into `op_type`.
    pub fn from_op_type(op_type: &str) -> Option<FoldKind> {
        FoldKind::ALL.into_iter().find(|k| k.op_type() == op_type)
    }

    /// The lower-case name used by `--only`.
    pub fn name(self) -> &'static str {
        match self {
            FoldKind::Conv => "conv",
            FoldKind::ConvTranspose => "convtranspose",
            FoldKind::Gemm => "gemm",
            FoldKind::MatMul => "matmul",
        }
    }
}

/// Why a BatchNormalization was left in place. Data for the report, not a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SkipReason {
    /// The BN input is a graph input or comes from no node.
    NoProducer,
    /// The BN input comes from an op bnfold does not fold into.
    UnsupportedProducer {
        /// The producer's op type.
        op_type: String,
    },
    /// The producer's output (or an intermediate one) has another consumer.
    ProducerOutputShared {
        /// The shared tensor.
        tensor: String,
    },
    /// The producer's output (or an intermediate one) is a graph output.
    ProducerOutputIsGraphOutput {
        /// The tensor.
        tensor: String,
    },
    /// `training_mode=1`, or `is_test=0` before opset 7.
    TrainingMode,
    /// The running-statistics outputs of the BN are used.
    ExtraOutputsUsed,
    /// `spatial=0` before opset 9: statistics per element, not per channel.
    NotSpatial,
    /// A parameter is computed at run time.
    ParamNotConstant {
        /// The parameter as the node names it.
        tensor: String,
    },
    /// A parameter is stored as a `sparse_initializer`: left as it is rather than densified.
    ParamSparse {
        /// The parameter.
        tensor: String,
    },
    /// A parameter is an initializer that is also a graph input, so it can be overridden at run
    /// time (IR ≥ 4); `--inputs-are-constants` treats it as constant.
    ParamOverridable {
        /// The parameter.
        tensor: String,
    },
    /// The weight comes out of `DequantizeLinear`: the model is already quantized.
    QuantizedWeight {
        /// The weight.
        tensor: String,
    },
    /// A parameter's shape does not fit the producer's channels.
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// What was expected and found.
        detail: String,
    },
    /// A parameter's dtype cannot be folded (not floating point).
    UnsupportedDtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// A weight, bias or BN parameter holds NaN or an infinity.
    NotFinite {
        /// The tensor.
        tensor: String,
        /// The first such element, in storage order.
        element: usize,
        /// What it holds: `NaN`, `inf` or `-inf`.
        value: String,
    },
    /// The BN's `epsilon` attribute is NaN or infinite.
    EpsilonNotFinite {
        /// What it holds.
        value: String,
    },
    /// `var + ε ≤ 0` for some channel.
    NonPositiveVariance {
        /// The first such channel.
        channel: usize,
    },
    /// A folded value is not finite or does not fit the tensor's dtype.
    FoldedValueOutOfRange {
        /// The tensor whose new value does not fit.
        tensor: String,
    },
    /// A `MatMul` whose rank is unknown or not 2: BN's channel axis is not the weight's output.
    MatMulRank {
        /// The rank of the product, when known.
        rank: Option<usize>,
    },
    /// A `MatMul` whose constant is the left operand.
    MatMulWeightOnLeft,
    /// An `Add` between producer and BN whose constant is not one value per channel.
    AddNotPerChannel {
        /// The constant.
        tensor: String,
    },
    /// The producer's kind was excluded with `--only`.
    KindExcluded {
        /// The kind.
        kind: FoldKind,
    },
    /// The node was excluded with `--skip-node`.
    NodeExcluded,
    /// The BN is inside a model-local function, whose body bnfold does not rewrite (every call
    /// site would change with it).
    InFunction {
        /// The function, as `domain.name`.
        function: String,
    },
    /// Forward: the BN's output is a graph output or feeds nothing.
    NoConsumer,
    /// Forward: the BN's output (or the Flatten's) feeds more than one node.
    ConsumerOutputShared {
        /// The tensor.
        tensor: String,
    },
    /// Forward: the BN feeds an op that cannot absorb it.
    ConsumerNotFoldable {
        /// The consumer's op type.
        op_type: String,
    },
    /// Forward into a padded Conv: the shift must stay as `Add(X, shift/scale)`, which needs
    /// every scale non-zero.
    ZeroScaleUnderPadding {
        /// The first channel whose scale is zero.
        channel: usize,
    },
}

impl SkipReason {
    /// A one-line explanation for people.
    pub fn message(&self) -> String {
        match self {
            SkipReason::NoProducer => {
                "its input comes from no node (a graph input): nothing to fold into".into()
            }
            SkipReason::UnsupportedProducer { op_type } => {
                format!("its input comes from {op_type}, which bnfold does not fold into")
            }
            SkipReason::ProducerOutputShared { tensor } => {
                format!("'{tensor}' has other consumers, which need the value before BN")
            }
            SkipReason::ProducerOutputIsGraphOutput { tensor } => {
                format!("'{tensor}' is a graph output, which must keep its value")
            }
            SkipReason::TrainingMode => "training mode: statistics come from the batch".into(),
            SkipReason::ExtraOutputsUsed => "its running-statistics outputs are used".into(),
            SkipReason::NotSpatial => "spatial=0: statistics per element, not per channel".into(),
            SkipReason::ParamNotConstant { tensor } => {
                format!("parameter '{tensor}' is computed at run time")
            }
            SkipReason::ParamSparse { tensor } => format!(
                "parameter '{tensor}' is a sparse_initializer; bnfold leaves sparse tensors as \
                 they are"
            ),
            SkipReason::ParamOverridable { tensor } => format!(
                "parameter '{tensor}' is also a graph input and can be overridden at run time \
                 (use --inputs-are-constants to fold anyway)"
            ),
            SkipReason::QuantizedWeight { tensor } => {
                format!("weight '{tensor}' comes out of DequantizeLinear (already quantized)")
            }
            SkipReason::ShapeMismatch { tensor, detail } => format!("'{tensor}': {detail}"),
            SkipReason::UnsupportedDtype { tensor, dtype } => {
                format!("'{tensor}' is {dtype}, not floating point")
            }
            SkipReason::NotFinite {
                tensor,
                element,
                value,
            } => format!("'{tensor}' holds {value} (element {element}): nothing finite to fold"),
            SkipReason::EpsilonNotFinite { value } => {
                format!("its epsilon is {value}: the normalization is not finite")
            }
            SkipReason::NonPositiveVariance { channel } => {
                format!("var + epsilon <= 0 at channel {channel}")
            }
            SkipReason::FoldedValueOutOfRange { tensor } => {
                format!("folded values of '{tensor}' are not finite in its dtype")
            }
            SkipReason::MatMulRank { rank: Some(r) } => format!(
                "the MatMul product has rank {r}: BN's channel axis 1 is not the weight's output \
                 axis (only rank 2 folds)"
            ),
            SkipReason::MatMulRank { rank: None } => {
                "the rank of the MatMul product is unknown (only rank 2 folds)".into()
            }
            SkipReason::MatMulWeightOnLeft => {
                "the MatMul's constant is its left operand: BN's channels are the data's".into()
            }
            SkipReason::AddNotPerChannel { tensor } => {
                format!("the Add constant '{tensor}' is not one value per channel")
            }
            SkipReason::KindExcluded { kind } => {
                format!("folds into {} are excluded by --only", kind.op_type())
            }
            SkipReason::NodeExcluded => "excluded by --skip-node".into(),
            SkipReason::InFunction { function } => format!(
                "it is inside the model-local function '{function}', whose body bnfold does not \
                 rewrite"
            ),
            SkipReason::NoConsumer => {
                "its output is a graph output or unused: nothing to fold forward into".into()
            }
            SkipReason::ConsumerOutputShared { tensor } => {
                format!("'{tensor}' feeds several nodes; every one would have to take the fold")
            }
            SkipReason::ConsumerNotFoldable { op_type } => {
                format!("its output feeds {op_type}, which cannot absorb it")
            }
            SkipReason::ZeroScaleUnderPadding { channel } => format!(
                "the consumer pads, and the scale of channel {channel} is zero: the shift cannot \
                 move before the Conv"
            ),
        }
    }

    /// The stable code used in the JSON report.
    pub fn code(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m
                .get("code")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        }
    }
}

/// The per-channel affine map of an inference BatchNormalization, `y = scale·x + shift`, with
/// any constant added between the producer and the BN already moved into `shift`.
#[derive(Clone, Debug, PartialEq)]
pub struct Affine {
    /// `γ / √(σ² + ε)`
    pub scale: Vec<f64>,
    /// `β − μ·scale` (+ `scale·c` for a constant `c` added before the BN)
    pub shift: Vec<f64>,
}

impl Affine {
    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }

    /// `max |scale − 1|`: how much the fold changes a weight, relatively.
    pub fn max_rel_change(&self) -> f64 {
        self.scale
            .iter()
            .map(|s| (s - 1.0).abs())
            .fold(0.0, f64::max)
    }

    /// The constant `d = shift / scale`, shaped `[C, 1, …]` for data of rank `rank`, such that
    /// `scale·(X + d)` is the BN: what stays as an `Add` when only the scale can fold forward.
    pub fn shift_before(
        &self,
        rank: usize,
        dtype: Dtype,
        name: &str,
    ) -> Result<Tensor, SkipReason> {
        if let Some(channel) = self.scale.iter().position(|a| *a == 0.0 || !a.is_finite()) {
            return Err(SkipReason::ZeroScaleUnderPadding { channel });
        }
        let d: Vec<f64> = self
            .shift
            .iter()
            .zip(&self.scale)
            .map(|(c, a)| c / a)
            .collect();
        let mut dims = vec![self.channels()];
        dims.resize(rank.max(2) - 1, 1);
        round_into(dtype, dims, d, name)
    }
}

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
pub type Planned = crate::Result<Result<ProducerRewrite, SkipReason>>;

/// Checks that a bias has one value per output channel and returns its values (zeros if absent).
pub fn bias_values(
    bias: Option<&Tensor>,
    bias_name: &str,
    channels: usize,
) -> Result<Vec<f64>, SkipReason> {
    match bias {
        None => Ok(vec![0.0; channels]),
        Some(b) if b.len() == channels => Ok(b.data.clone()),
        Some(b) => Err(SkipReason::ShapeMismatch {
            tensor: bias_name.to_string(),
            detail: format!("bias has {} values for {channels} channels", b.len()),
        }),
    }
}

/// Rounds every value of `values` into `dtype`; a value that does not fit skips the fold.
pub fn round_into(
    dtype: Dtype,
    dims: Vec<usize>,
    values: Vec<f64>,
    name: &str,
) -> Result<Tensor, SkipReason> {
    let out_of_range = || SkipReason::FoldedValueOutOfRange {
        tensor: name.to_string(),
    };
    let mut data = values;
    let fits = match dtype {
        Dtype::F64 => data.iter().all(|v| v.is_finite()),
        Dtype::F32 => data.iter_mut().fold(true, |fits, v| {
            *v = *v as f32 as f64;
            fits & v.is_finite()
        }),
        _ => data.iter_mut().fold(true, |fits, v| match dtype.round(*v) {
            Some(r) if r.is_finite() => {
                *v = r;
                fits
            }
            _ => false,
        }),
    };
    if !fits {
        return Err(out_of_range());
    }
    Ok(Tensor::new(dtype, dims, data))
}
