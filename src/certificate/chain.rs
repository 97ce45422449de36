//! The chain a fold replaced, as the certificate reads it from the original: the layer at its
//! start, the composed per-channel affine map of its steps, and where the layer's output
//! channels lie in its weight.

use crate::attr;
use crate::error::Result;
use crate::graph::node_label;
use crate::proto::NodeProto;
use crate::tensor::Tensor;

use super::Side;

/// The composed per-channel map `y = S·x + T` of a chain; `T` may hold several rows (a Gemm's
/// `C` of shape `[M, N]`).
pub(super) struct Chain {
    pub(super) scale: Vec<f64>,
    pub(super) shift_rows: usize,
    pub(super) shift: Vec<f64>,
    /// Per shift element, the sum of the magnitudes of the terms it was computed from.
    pub(super) shift_terms: Vec<f64>,
    pub(super) steps: usize,
    /// The shift as it was stored (rounded) before each BN after the first, with the product of
    /// the magnitudes of the scales applied since: bnfold folds a BN → BN chain's bias one BN at
    /// a time, rounding it in between (its weight is rounded once).
    pub(super) intermediate: Vec<(Vec<f64>, Vec<f64>)>,
    /// Where the layer's channels lie among the chain's: the chain's constants hold `total`
    /// values per row and the layer's channel `c` is their `offset + c` (a Concat's input).
    pub(super) offset: usize,
    pub(super) total: usize,
}

/// The layer at the start of the chain ending in `bn`, with the chain's steps in order from the
/// layer, or why the chain is not one this certificate knows.
pub(crate) fn chain_from<'o>(
    orig: &Side<'o>,
    bn: &'o NodeProto,
) -> std::result::Result<(&'o NodeProto, Vec<&'o NodeProto>), String> {
    let (start, steps) = walk_back(orig, bn)?;
    match start.op_type() {
        "Concat" => Err("the original chain starts at a Concat".into()),
        _ => Ok((start, steps)),
    }
}

/// The Concat at the start of the chain ending in `end`, with the chain's steps in order from
/// it, when the chain starts at one.
pub(crate) fn concat_chain_from<'o>(
    orig: &Side<'o>,
    end: &'o NodeProto,
) -> std::result::Result<(&'o NodeProto, Vec<&'o NodeProto>), String> {
    let (start, steps) = walk_back(orig, end)?;
    match start.op_type() {
        "Concat" => Ok((start, steps)),
        other => Err(format!(
            "the original chain starts at a {other}, not a Concat"
        )),
    }
}

/// The node where the chain ending in `end` starts (a layer or a Concat), and its steps in
/// order from there.
fn walk_back<'o>(
    orig: &Side<'o>,
    end: &'o NodeProto,
) -> std::result::Result<(&'o NodeProto, Vec<&'o NodeProto>), String> {
    let index = orig.index;
    let producer = |name: &str| index.producer(name).map(|i| index.node(i));
    let is_constant = |name: &str| {
        index.initializer(name).is_some() || matches!(orig.eval.value(name), Ok(Ok(_)))
    };
    let mut steps = vec![end];
    let mut current = end;
    loop {
        // An element-wise step's data operand is the one that is not a constant.
        let data = match current.op_type() {
            "Add" | "Mul" | "Sub" | "Div" => current
                .input
                .iter()
                .find(|i| !is_constant(i))
                .cloned()
                .unwrap_or_default(),
            _ => current.input.first().cloned().unwrap_or_default(),
        };
        let Some(prev) = producer(&data) else {
            return Err(format!("'{data}' comes from no node in the original"));
        };
        match prev.op_type() {
            "BatchNormalization" | "Identity" | "Add" | "Mul" | "Sub" | "Div" => {
                steps.push(prev);
                current = prev;
            }
            "Conv" | "ConvTranspose" | "Gemm" | "MatMul" | "Concat" => {
                steps.reverse();
                return Ok((prev, steps));
            }
            other => return Err(format!("the original chain passes through {other}")),
        }
    }
}

/// Where a layer's output channels lie in its weight, and the factors of `α`/`β` between the
/// original and the fused node.
pub(super) struct Layout {
    pub(super) channels: usize,
    /// Where output channels lie.
    pub(super) kind: LayoutKind,
    /// `α / α'`: what the fused weight holds beyond `S·W`.
    pub(super) weight_factor: f64,
    /// `β'`: the fused bias is stored divided by it.
    pub(super) bias_factor: f64,
}

pub(super) enum LayoutKind {
    /// Output channel = index along axis 0 (Conv; Gemm with `transB`).
    AxisZero,
    /// Output channel = last index of a `[K, N]` matrix.
    Columns,
    /// ConvTranspose `[C_in, C_out/group, …]`.
    Transposed {
        in_per_group: usize,
        out_per_group: usize,
    },
}

impl Layout {
    pub(super) fn of(
        layer: &NodeProto,
        fused: &NodeProto,
        weight: &Tensor,
    ) -> Result<std::result::Result<Layout, String>> {
        let dims = &weight.dims;
        // A MatMul becomes a Gemm: its α' and β' count.
        let (fused_alpha, fused_beta) = match fused.op_type() {
            "Gemm" => (
                attr::float(fused, "alpha")?.unwrap_or(1.0) as f64,
                attr::float(fused, "beta")?.unwrap_or(1.0) as f64,
            ),
            _ => (1.0, 1.0),
        };
        let flat = |kind, channels| Layout {
            channels,
            kind,
            weight_factor: 1.0 / fused_alpha,
            bias_factor: fused_beta,
        };
        Ok(Ok(match layer.op_type() {
            "Conv" if !dims.is_empty() => flat(LayoutKind::AxisZero, dims[0]),
            "ConvTranspose" if dims.len() >= 2 => {
                let group = attr::int(layer, "group")?.unwrap_or(1).max(1) as usize;
                flat(
                    LayoutKind::Transposed {
                        in_per_group: (dims[0] / group).max(1),
                        out_per_group: dims[1],
                    },
                    group * dims[1],
                )
            }
            "MatMul" if dims.len() == 2 => flat(LayoutKind::Columns, dims[1]),
            "Gemm" if dims.len() == 2 => {
                let trans_b = attr::int(layer, "transB")?.unwrap_or(0) != 0;
                if fused.op_type() != "Gemm"
                    || (attr::int(fused, "transB")?.unwrap_or(0) != 0) != trans_b
                {
                    return Ok(Err("the fused Gemm changed its weight's layout".into()));
                }
                let alpha = attr::float(layer, "alpha")?.unwrap_or(1.0) as f64;
                Layout {
                    channels: if trans_b { dims[0] } else { dims[1] },
                    kind: if trans_b {
                        LayoutKind::AxisZero
                    } else {
                        LayoutKind::Columns
                    },
                    weight_factor: alpha / fused_alpha,
                    bias_factor: fused_beta,
                }
            }
            other => return Ok(Err(format!("{other} with a weight of shape {dims:?}"))),
        }))
    }

    /// The output channel of each element of a weight of shape `dims`, as a function of the
    /// element's index.
    pub(super) fn channel_of<'d>(&self, dims: &'d [usize]) -> impl Fn(usize) -> usize + 'd {
        let per = |axis: usize| dims[axis + 1..].iter().product::<usize>().max(1);
        let (per0, per1) = (per(0), if dims.len() > 1 { per(1) } else { 1 });
        let second = dims.get(1).copied().unwrap_or(1).max(1);
        let kind = match self.kind {
            LayoutKind::AxisZero => (0, 1, 1),
            LayoutKind::Columns => (1, 1, 1),
            LayoutKind::Transposed {
                in_per_group,
                out_per_group,
            } => (2, in_per_group, out_per_group),
        };
        move |k| match kind {
            (0, ..) => k / per0,
            (1, ..) => k % second,
            (_, in_per_group, out_per_group) => {
                let (i, j) = (k / per0, (k / per1) % second);
                (i / in_per_group) * out_per_group + j
            }
        }
    }
}

/// `S = 1` and `T` = the layer's own bias (`β·C` broadcast to `[rows, N]` for a Gemm).
pub(super) fn start_chain(
    layer: &NodeProto,
    bias: Option<&Tensor>,
    channels: usize,
) -> Result<std::result::Result<Chain, String>> {
    let beta = match layer.op_type() {
        "Gemm" => attr::float(layer, "beta")?.unwrap_or(1.0) as f64,
        _ => 1.0,
    };
    let (rows, shift) = match bias {
        None => (1, vec![0.0; channels]),
        Some(b) if b.len() == channels || b.len() == 1 => {
            let value = |n: usize| b.data[if b.len() == 1 { 0 } else { n }] * beta;
            (1, (0..channels).map(value).collect())
        }
        Some(b) if b.dims.len() == 2 && (b.dims[1] == channels || b.dims[1] == 1) => {
            let rows = b.dims[0];
            let value = |k: usize| {
                let (m, n) = (k / channels, k % channels);
                b.data[m * b.dims[1] + if b.dims[1] == 1 { 0 } else { n }] * beta
            };
            (rows, (0..rows * channels).map(value).collect())
        }
        Some(b) => return Ok(Err(format!("a bias of shape {:?}", b.dims))),
    };
    Ok(Ok(Chain {
        scale: vec![1.0; channels],
        shift_rows: rows,
        shift_terms: shift.iter().map(|t| t.abs()).collect(),
        shift,
        steps: 1,
        intermediate: Vec::new(),
        offset: 0,
        total: channels,
    }))
}

/// Composes one step of the chain into `chain`.
pub(super) fn apply_step(
    orig: &Side,
    step: &NodeProto,
    chain: &mut Chain,
) -> Result<std::result::Result<(), String>> {
    let channels = chain.scale.len();
    match step.op_type() {
        "Identity" => {}
        op @ ("Add" | "Mul" | "Sub" | "Div") => {
            // The constant operand, and whether it is the first (`c − x`; `c / x` is no step).
            let mut found = None;
            for (k, name) in step.input.iter().enumerate().rev() {
                if let Ok(t) = orig.value(name)? {
                    found = Some((k, t));
                    break;
                }
            }
            let (offset, total) = (chain.offset, chain.total);
            let per_channel = |a: &Tensor| a.len() == total || a.len() == 1;
            let Some((slot, c)) = found.filter(|(_, a)| per_channel(a)) else {
                return Ok(Err(format!(
                    "{op} '{}' does not take one constant per channel",
                    node_label(step)
                )));
            };
            if op == "Div" && slot == 0 {
                return Ok(Err(format!(
                    "Div '{}' divides a constant by the data",
                    node_label(step)
                )));
            }
            let at = |k: usize| {
                if c.len() == 1 {
                    0
                } else {
                    offset + k % channels
                }
            };
            for k in 0..chain.shift.len() {
                let value = c.data[at(k)];
                let (t, terms) = (&mut chain.shift[k], &mut chain.shift_terms[k]);
                match (op, slot) {
                    ("Add", _) => {
                        *t += value;
                        *terms += value.abs();
                    }
                    ("Sub", 1) => {
                        *t -= value;
                        *terms += value.abs();
                    }
                    ("Sub", _) => {
                        *t = value - *t;
                        *terms += value.abs();
                    }
                    ("Mul", _) => {
                        *t *= value;
                        *terms *= value.abs();
                    }
                    _ => {
                        *t /= value;
                        *terms /= value.abs();
                    }
                }
            }
            for (_, since) in &mut chain.intermediate {
                for (k, p) in since.iter_mut().enumerate() {
                    let value = c.data[at(k)];
                    match op {
                        "Mul" => *p *= value.abs(),
                        "Div" => *p /= value.abs(),
                        _ => {}
                    }
                }
            }
            for (k, s) in chain.scale.iter_mut().enumerate() {
                let value = c.data[at(k)];
                match (op, slot) {
                    ("Sub", 0) => *s = -*s,
                    ("Mul", _) => *s *= value,
                    ("Div", _) => *s /= value,
                    _ => {}
                }
            }
        }
        _ => {
            if chain.steps > 1 {
                let stored: Vec<f64> = chain.shift.iter().map(|t| t.abs()).collect();
                chain
                    .intermediate
                    .push((stored, vec![1.0; chain.shift.len()]));
            }
            chain.steps += 1;
            let epsilon = attr::float(step, "epsilon")?.unwrap_or(1e-5) as f64;
            let mut params = Vec::with_capacity(4);
            for name in &step.input[1..5] {
                match orig.value(name)? {
                    Ok(p) if p.len() == chain.total => params.push(p.data),
                    Ok(p) => return Ok(Err(format!("'{name}' has {} values", p.len()))),
                    Err(why) => return Ok(Err(why)),
                }
            }
            let offset = chain.offset;
            for (k, t) in chain.shift.iter_mut().enumerate() {
                let c = offset + k % channels;
                let s = params[0][c] / (params[3][c] + epsilon).sqrt();
                *t = s * *t + (params[1][c] - params[2][c] * s);
                chain.shift_terms[k] =
                    s.abs() * chain.shift_terms[k] + params[1][c].abs() + (params[2][c] * s).abs();
            }
            for (_, since) in &mut chain.intermediate {
                for (k, p) in since.iter_mut().enumerate() {
                    let c = offset + k % channels;
                    *p *= (params[0][c] / (params[3][c] + epsilon).sqrt()).abs();
                }
            }
            for (k, s) in chain.scale.iter_mut().enumerate() {
                let c = offset + k;
                *s *= params[0][c] / (params[3][c] + epsilon).sqrt();
            }
        }
    }
    Ok(Ok(()))
}
