//! The words the report prints: the kinds of layer a BatchNormalization folds into, and every
//! reason one is left in place, as data (the prose is derived from it, in one place).

use schemars::JsonSchema;
use serde::Serialize;

/// The kinds of layer a BatchNormalization folds into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
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
    /// A `Mul`, `Add`, `Sub` or `Div` of the chain whose constant is not one value per output
    /// channel (or one in all): it broadcasts over other axes, or would grow the data.
    ConstantNotPerChannel {
        /// The step's op type.
        op_type: String,
        /// The constant.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A chain of bias `Add`s after a `MatMul` at an opset whose fold keeps the bias as an `Add`
    /// (no Gemm with a broadcast `C`): folding would trade one `Add` for another.
    MatMulKeepsBiasAdd {
        /// The model's opset.
        opset: i64,
    },
    /// The chain starts at a `Concat` along another axis than the channels.
    ConcatNotOnChannels {
        /// Its `axis`.
        axis: i64,
    },
    /// The chain starts at a `Concat` along the channels, and one of its inputs cannot take its
    /// share of the chain.
    ConcatInputNotFoldable {
        /// The input that blocks it.
        tensor: String,
        /// Why that input does not fold.
        cause: Box<SkipReason>,
    },
    /// A branch of an `Add` of parallel branches (RepVGG, MobileOne) that `--merge-branches`
    /// merges into one Conv, the BN with it.
    MergeableBranch {
        /// The Add at the root of the branches.
        add: String,
    },
    /// Forward: a chain of `Add`s only, whose shift the consumer (padded, or a ConvTranspose)
    /// would keep as an `Add`: nothing to fold.
    ShiftStaysAsAdd,
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
    /// Forward: between the BN and its consumer, a `Flatten` or `Reshape` that does not keep
    /// each sample's channels in one row.
    ReshapeMixesChannels {
        /// `Flatten` or `Reshape`.
        op_type: String,
    },
    /// Forward into a `MatMul`: the shift needs a `Gemm` with a broadcast `C`, which this opset
    /// lacks (opset 7, and 13 for bfloat16).
    NoBroadcastGemm {
        /// The model's opset.
        opset: i64,
    },
    /// Forward: the BN's output reaches its consumer on another input than the data input.
    ConsumerNotOnDataInput {
        /// The consumer's op type.
        op_type: String,
    },
    /// Forward into a `Gemm` with `transA = 1`, whose rows are not the samples.
    GemmTransposedA,
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
            SkipReason::ConstantNotPerChannel {
                op_type,
                tensor,
                shape,
            } => format!(
                "the {op_type} constant '{tensor}' of shape {shape:?} is not one value per output \
                 channel"
            ),
            SkipReason::MatMulKeepsBiasAdd { opset } => {
                format!("a MatMul at opset {opset} keeps its bias as an Add: nothing to fold")
            }
            SkipReason::ConcatNotOnChannels { axis } => {
                format!("its input is a Concat along axis {axis}, not the channels")
            }
            SkipReason::ConcatInputNotFoldable { tensor, cause } => format!(
                "its input is a Concat whose input '{tensor}' does not fold: {}",
                cause.message()
            ),
            SkipReason::MergeableBranch { add } => format!(
                "it is a branch of the Add '{add}', which --merge-branches merges into one Conv"
            ),
            SkipReason::ShiftStaysAsAdd => {
                "it only shifts, and the consumer would keep the shift as an Add".into()
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
            SkipReason::ReshapeMixesChannels { op_type } => format!(
                "its output goes through a {op_type} that does not lay each sample's channels out \
                 in one row"
            ),
            SkipReason::NoBroadcastGemm { opset } => format!(
                "its output feeds a MatMul, and at opset {opset} no Gemm with a broadcast C can \
                 take the shift (opset 7, 13 for bfloat16)"
            ),
            SkipReason::ConsumerNotOnDataInput { op_type } => {
                format!("its output feeds {op_type} on another input than the data input")
            }
            SkipReason::GemmTransposedA => {
                "its output feeds a Gemm with transA=1, whose rows are not the samples".into()
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
