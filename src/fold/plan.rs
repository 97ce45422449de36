//! The plans the matchers produce and the checks they share: a BN as an affine map, a
//! layer's weight as a constant that may be scaled, the range a folded weight must fit.

use super::options::PassContext;
use super::rules::{Affine, ConsumerRewrite, FoldKind, ProducerRewrite, SkipReason};
use crate::attr::{self};
use crate::consts::{ConstEval, NotConstant};
use crate::error::Result;
use crate::graph::GraphIndex;
use crate::proto::NodeProto;
use crate::scaled::{ScaledTensor, Scaling};
use crate::tensor::Tensor;

/// What a backward fold makes of one layer: its new weight and bias.
pub(super) struct LayerFold {
    pub(super) producer: usize,
    pub(super) kind: FoldKind,
    pub(super) weight_name: String,
    pub(super) weight_in_place: bool,
    pub(super) bias_name: Option<String>,
    pub(super) bias_in_place: bool,
    pub(super) rewrite: ProducerRewrite,
    /// The weight, scaled; `None` when the chain does not scale it (bias `Add`s only).
    pub(super) folded_weight: Option<ScaledTensor>,
    pub(super) max_rel_weight_change: f64,
}

/// A fold ready to apply: which nodes go, what the producer becomes.
pub(super) struct ChainPlan {
    /// The node that ends the chain, whose output the layer takes over.
    pub(super) bn: usize,
    /// The chain's other steps, from the end back.
    pub(super) passthrough: Vec<usize>,
    pub(super) layer: LayerFold,
    pub(super) detached: Vec<String>,
    /// The op of the one node that consumes the BN's output, if one does.
    pub(super) followed_by: Option<String>,
}

/// A chain that starts at a `Concat` along the channels: each of its inputs' layers takes its
/// range of channels, and the Concat takes over the end's output.
pub(super) struct ConcatPlan {
    pub(super) end: usize,
    pub(super) passthrough: Vec<usize>,
    pub(super) concat: usize,
    pub(super) parts: Vec<LayerFold>,
    pub(super) detached: Vec<String>,
    pub(super) followed_by: Option<String>,
}

/// A backward fold, into one layer or into the layers of a Concat.
pub(super) enum Backward {
    Layer(Box<ChainPlan>),
    Concat(ConcatPlan),
}

impl Backward {
    /// The nodes the plan reads or changes.
    pub(super) fn nodes(&self) -> Vec<usize> {
        match self {
            Backward::Layer(plan) => {
                let mut nodes = vec![plan.bn, plan.layer.producer];
                nodes.extend(&plan.passthrough);
                nodes
            }
            Backward::Concat(plan) => {
                let mut nodes = vec![plan.end, plan.concat];
                nodes.extend(&plan.passthrough);
                nodes.extend(plan.parts.iter().map(|p| p.producer));
                nodes
            }
        }
    }
}

/// A forward fold ready to apply: the chain goes (its end becomes an `Add` when the shift
/// stays), the consumer changes.
pub(super) struct ForwardPlan {
    /// The node that ends the chain (a BN, or the last `Mul`/`Add`/`Sub`/`Div`).
    pub(super) bn: usize,
    /// The chain's other steps, from the end back.
    pub(super) steps: Vec<usize>,
    /// The tensor the chain starts from, which the consumer (or its shift Add) reads now.
    pub(super) data: String,
    pub(super) consumer: usize,
    pub(super) flatten: Option<usize>,
    pub(super) kind: FoldKind,
    pub(super) weight_name: String,
    pub(super) weight_in_place: bool,
    pub(super) bias_name: Option<String>,
    pub(super) bias_in_place: bool,
    pub(super) rewrite: ConsumerRewrite,
    pub(super) folded_weight: ScaledTensor,
    pub(super) detached: Vec<String>,
    pub(super) max_rel_weight_change: f64,
}

/// `weight` with one more scaling, or the skip when a scaled value would not fit its dtype.
pub(super) fn scale_within_range(
    weight: &ScaledTensor,
    scaling: &Scaling,
    ctx: &PassContext,
) -> Result<std::result::Result<ScaledTensor, SkipReason>> {
    let folded = weight.then(scaling.clone());
    skip_if!(
        !folded.fits(ctx.store)?,
        SkipReason::FoldedValueOutOfRange {
            tensor: weight.name.clone()
        }
    );
    Ok(Ok(folded))
}

/// The BN's per-channel affine map `y = scale·x + shift`, or why its parameters do not give one.
pub(super) fn bn_affine(
    eval: &ConstEval,
    bn: &NodeProto,
) -> Result<std::result::Result<Affine, SkipReason>> {
    let mut params = Vec::with_capacity(4);
    for name in &bn.input[1..5] {
        let value = eval
            .value_once(name)?
            .map_err(|not| not_constant(name, not));
        params.push(or_skip!(finite_float(name, or_skip!(value))?));
    }
    let channels = params[0].len();
    for (name, p) in bn.input[1..5].iter().zip(&params) {
        skip_if!(
            p.dims.len() != 1 || p.len() != channels,
            SkipReason::ShapeMismatch {
                tensor: name.clone(),
                detail: format!("shape {:?}, expected [{channels}]", p.dims),
            }
        );
    }
    let epsilon = attr::float(bn, "epsilon")?.unwrap_or(1e-5) as f64;
    skip_if!(
        !epsilon.is_finite(),
        SkipReason::EpsilonNotFinite {
            value: describe_non_finite(epsilon)
        }
    );
    let mut affine = Affine {
        scale: Vec::with_capacity(channels),
        shift: Vec::with_capacity(channels),
    };
    for c in 0..channels {
        let (gamma, beta, mean, var) = (
            params[0].data[c],
            params[1].data[c],
            params[2].data[c],
            params[3].data[c],
        );
        let denominator = var + epsilon;
        skip_if!(
            !denominator.is_finite() || denominator <= 0.0,
            SkipReason::NonPositiveVariance { channel: c }
        );
        let s = gamma / denominator.sqrt();
        affine.scale.push(s);
        affine.shift.push(beta - mean * s);
    }

    Ok(Ok(affine))
}

/// A layer's weight: a floating-point constant that does not come out of `DequantizeLinear`.
/// A stored one is not decoded: folds only need its dtype and shape, and whether its values are
/// finite, read here when `checked` (else when it is written).
pub(super) fn layer_weight(
    index: &GraphIndex,
    eval: &ConstEval,
    name: &str,
    checked: bool,
) -> Result<std::result::Result<ScaledTensor, SkipReason>> {
    if let Some(q) = index.producer(name) {
        skip_if!(
            index.node(q).op_type() == "DequantizeLinear",
            SkipReason::QuantizedWeight {
                tensor: name.to_string()
            }
        );
    }
    let weight = match eval.stored(name)? {
        Some(Err(not)) => return Ok(Err(not_constant(name, not))),
        Some(Ok(stored)) => match eval.folded(name) {
            // Folded once already (BN → BN, or a BN on each side): one more scaling of the same
            // source, still rounded once.
            Some(folded) => folded.value.clone(),
            None => ScaledTensor::stored(stored)?,
        },
        None => {
            let value = or_skip!(float_constant(eval, name)?);
            ScaledTensor::values(name, std::sync::Arc::new(Tensor::clone(&value)))
        }
    };
    skip_if!(
        !weight.dtype.is_float(),
        SkipReason::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: weight.dtype.name().into()
        }
    );
    if !checked {
        return Ok(Ok(weight));
    }
    if let Some((element, value)) = weight.first_not_finite(eval.store())? {
        return Ok(Err(SkipReason::NotFinite {
            tensor: name.to_string(),
            element,
            value: describe_non_finite(value),
        }));
    }
    Ok(Ok(weight))
}

/// A floating-point constant, or why not.
pub(super) fn float_constant(
    eval: &ConstEval,
    name: &str,
) -> Result<std::result::Result<std::rc::Rc<Tensor>, SkipReason>> {
    let value = or_skip!(constant(eval, name)?);
    finite_float(name, value)
}

/// `value`, the constant `name`, when it is floating-point and finite; else why not.
fn finite_float(
    name: &str,
    value: std::rc::Rc<Tensor>,
) -> Result<std::result::Result<std::rc::Rc<Tensor>, SkipReason>> {
    skip_if!(
        !value.dtype.is_float(),
        SkipReason::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: value.dtype.name().into()
        }
    );
    if let Some(element) = value.data.iter().position(|v| !v.is_finite()) {
        return Ok(Err(SkipReason::NotFinite {
            tensor: name.to_string(),
            element,
            value: describe_non_finite(value.data[element]),
        }));
    }
    Ok(Ok(value))
}

/// `NaN`, `inf` or `-inf`.
pub(super) fn describe_non_finite(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v > 0.0 => "inf".into(),
        _ => "-inf".into(),
    }
}

pub(super) fn constant(
    eval: &ConstEval,
    name: &str,
) -> Result<std::result::Result<std::rc::Rc<Tensor>, SkipReason>> {
    Ok(eval.value(name)?.map_err(|not| not_constant(name, not)))
}

pub(super) fn not_constant(name: &str, not: NotConstant) -> SkipReason {
    match not {
        NotConstant::OverridableInput(t) => SkipReason::ParamOverridable { tensor: t },
        NotConstant::Runtime(_) => SkipReason::ParamNotConstant {
            tensor: name.to_string(),
        },
        NotConstant::Sparse(t) => SkipReason::ParamSparse { tensor: t },
    }
}
