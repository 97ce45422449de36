//! The certificate of forward folds (BN → (Flatten | Reshape)? → layer): the layer's weight
//! must hold `W ⊙ a` along its input channels (`a = γ/√(σ²+ε)`), and the shift
//! `c = β − μ·a` must be where the fold put it: in the bias (`B + Σ W·c`, for a Conv that does
//! not pad, and for a Gemm `β·C + α·Σ_k c·op(B)` with `β' = 1`), or in an `Add` of `c / a`
//! before the layer (padded Convs and every ConvTranspose), the bias then unchanged.

use super::ulps::compare;
use super::{Side, TensorCheck};
use crate::attr;
use crate::error::Result;
use crate::graph::GraphIndex;
use crate::proto::NodeProto;
use crate::tensor::Tensor;

/// A forward fold found from the two graphs.
pub(crate) struct ForwardFold<'g> {
    /// The fused layer.
    pub(crate) node: &'g NodeProto,
    /// The original BN.
    pub(crate) bn: &'g NodeProto,
    /// The original layer (the BN's consumer).
    pub(crate) layer: &'g NodeProto,
    /// The original's Flatten or Reshape between them, if any.
    pub(crate) reshape: Option<&'g NodeProto>,
    /// The fused nodes from the BN's input to the fused layer (the shift's `Add`, the Flatten or
    /// Reshape, the layer), in order.
    pub(crate) fused_nodes: Vec<&'g NodeProto>,
}

/// Forward folds: a fused Conv, ConvTranspose or Gemm whose output the original computes with
/// the same kind of layer from a BatchNormalization (directly, or through one Flatten or
/// Reshape), and which reads that BN's input (through the `Add` that keeps a shift, and the
/// same Flatten or Reshape).
pub(crate) fn forward_folds<'g>(
    orig: &GraphIndex<'g>,
    fused: &GraphIndex<'g>,
) -> Vec<ForwardFold<'g>> {
    let orig_producer = |name: &str| orig.producer(name).map(|i| orig.node(i));
    let fused_producer = |name: &str| fused.producer(name).map(|i| fused.node(i));
    let mut found = Vec::new();
    for node in &fused.graph.node {
        if !matches!(node.op_type(), "Conv" | "ConvTranspose" | "Gemm") {
            continue;
        }
        let Some(layer) = node.output.first().and_then(|o| orig_producer(o)) else {
            continue;
        };
        let same_kind = layer.op_type() == node.op_type()
            || (layer.op_type() == "MatMul" && node.op_type() == "Gemm");
        let Some(mut before) = layer.input.first().and_then(|i| orig_producer(i)) else {
            continue;
        };
        if !same_kind {
            continue;
        }
        let mut reshape = None;
        if matches!(before.op_type(), "Flatten" | "Reshape") {
            reshape = Some(before);
            match before.input.first().and_then(|i| orig_producer(i)) {
                Some(p) => before = p,
                None => continue,
            }
        }
        if before.op_type() != "BatchNormalization" {
            continue;
        }
        let data = &before.input[0];
        let mut fused_nodes = vec![node];
        let mut current = node.input[0].clone();
        while &current != data {
            match fused_producer(&current) {
                Some(p) if matches!(p.op_type(), "Add" | "Flatten" | "Reshape") => {
                    fused_nodes.push(p);
                    current = p.input[0].clone();
                }
                _ => break,
            }
        }
        if &current != data {
            continue;
        }
        fused_nodes.reverse();
        found.push(ForwardFold {
            node,
            bn: before,
            layer,
            reshape,
            fused_nodes,
        });
    }
    found
}

/// A BN's map per channel in f64: scale `a`, shift `c`, and the magnitudes of `c`'s terms.
pub(super) struct BnAffine {
    pub(super) scale: Vec<f64>,
    pub(super) shift: Vec<f64>,
    pub(super) shift_terms: Vec<f64>,
}

/// The BN's scale `a` and shift `c` per channel, in f64.
pub(super) fn bn_affine(
    orig: &Side,
    bn: &NodeProto,
) -> Result<std::result::Result<BnAffine, String>> {
    let epsilon = attr::float(bn, "epsilon")?.unwrap_or(1e-5) as f64;
    let mut p = Vec::with_capacity(4);
    for name in &bn.input[1..5] {
        match orig.value(name)? {
            Ok(t) => p.push(t.data),
            Err(why) => return Ok(Err(why)),
        }
    }
    let n = p[0].len();
    if p.iter().any(|v| v.len() != n) {
        return Ok(Err("the BN's parameters differ in length".into()));
    }
    let a: Vec<f64> = (0..n)
        .map(|c| p[0][c] / (p[3][c] + epsilon).sqrt())
        .collect();
    let c: Vec<f64> = (0..n).map(|k| p[1][k] - p[2][k] * a[k]).collect();
    let c_terms: Vec<f64> = (0..n)
        .map(|k| p[1][k].abs() + (p[2][k] * a[k]).abs())
        .collect();
    Ok(Ok(BnAffine {
        scale: a,
        shift: c,
        shift_terms: c_terms,
    }))
}

/// The input channel (of the BN) that each element of `layer`'s weight (shape `dims`) reads.
pub(super) fn input_channel_of(
    layer: &NodeProto,
    dims: &[usize],
    channels: usize,
) -> Result<std::result::Result<Vec<usize>, String>> {
    let total: usize = dims.iter().product();
    let group = attr::int(layer, "group")?.unwrap_or(1).max(1) as usize;
    Ok(Ok(match (layer.op_type(), dims) {
        ("Conv", [out, per_in, ..]) if *out % group == 0 && per_in * group == channels => {
            let taps: usize = dims[2..].iter().product();
            let per_out = out / group;
            (0..total)
                .map(|k| {
                    let (o, j) = (k / (per_in * taps), (k / taps) % per_in);
                    (o / per_out.max(1)) * per_in + j
                })
                .collect()
        }
        ("ConvTranspose", [c_in, per_out, ..]) if *c_in == channels => {
            let per = per_out * dims[2..].iter().product::<usize>();
            (0..total).map(|k| k / per.max(1)).collect()
        }
        ("Gemm" | "MatMul", [r, s]) => {
            let trans_b = attr::int(layer, "transB")?.unwrap_or(0) != 0;
            let k_rows = if trans_b { *s } else { *r };
            if channels == 0 || k_rows % channels != 0 {
                return Ok(Err(format!("{k_rows} rows for {channels} channels")));
            }
            let per = k_rows / channels;
            (0..total)
                .map(|idx| if trans_b { idx % s } else { idx / s } / per)
                .collect()
        }
        (op, _) => return Ok(Err(format!("{op} with a weight of shape {dims:?}"))),
    }))
}

/// The original layer's weight and bias with the BN before it applied (`W ⊙ a`, and the bias
/// with `Σ W·c` added unless the shift stayed in an `Add`), each bias element with the
/// magnitudes of its terms; plus the check of the shift's `Add` when there is one. For a Gemm
/// the bias is `β·C + α·Σ_k c·op(B)` (to be held with `β' = 1`).
pub(super) struct InputSide {
    pub(super) weight: Tensor,
    pub(super) bias: Option<Tensor>,
    pub(super) bias_terms: Vec<f64>,
    pub(super) shift_check: Option<TensorCheck>,
    /// Terms summed in a bias element (for the f64 slack).
    pub(super) terms: usize,
}

/// Applies `bn` (folded forward into `fused.node`) to the original layer's weight and bias.
pub(super) fn input_side(
    orig: &Side,
    fused: &Side,
    bn: &NodeProto,
    layer: &NodeProto,
    fused_nodes: &[&NodeProto],
) -> Result<std::result::Result<InputSide, String>> {
    let (a, c, c_terms) = match bn_affine(orig, bn)? {
        Ok(found) => (found.scale, found.shift, found.shift_terms),
        Err(why) => return Ok(Err(why)),
    };
    let weight = match orig.value(&layer.input[1])? {
        Ok(w) => w,
        Err(why) => return Ok(Err(why)),
    };
    let channel = match input_channel_of(layer, &weight.dims, a.len())? {
        Ok(ch) => ch,
        Err(why) => return Ok(Err(why)),
    };
    let bias = match layer.input.get(2).filter(|n| !n.is_empty()) {
        Some(name) => match orig.value(name)? {
            Ok(b) => Some(b),
            Err(why) => return Ok(Err(why)),
        },
        None => None,
    };
    let scaled = Tensor::new(
        weight.dtype,
        weight.dims.clone(),
        weight
            .data
            .iter()
            .zip(&channel)
            .map(|(w, &ch)| w * a[ch])
            .collect(),
    );
    let shift_add = fused_nodes
        .iter()
        .find(|n| n.op_type() == "Add" && n.input.first() == bn.input.first());
    if let Some(add) = shift_add {
        let Some(name) = add.input.get(1) else {
            return Ok(Err("the shift's Add has one input".into()));
        };
        let stored = match fused.value(name)? {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let expected: Vec<f64> = (0..a.len()).map(|k| c[k] / a[k]).collect();
        let terms: Vec<f64> = (0..a.len()).map(|k| c_terms[k] / a[k].abs()).collect();
        let check = compare(
            name,
            &stored,
            (&expected, &terms, 16.0 * f64::EPSILON),
            &stored.dims,
            &[],
        );
        let bias_terms = bias
            .as_ref()
            .map_or(Vec::new(), |b| b.data.iter().map(|v| v.abs()).collect());
        return Ok(Ok(InputSide {
            weight: scaled,
            bias,
            bias_terms,
            shift_check: Some(check),
            terms: 1,
        }));
    }
    // The shift moved into the bias: per output column, Σ over the weight elements it reads.
    let (outputs, output_of): (usize, Box<dyn Fn(usize) -> usize>) = match layer.op_type() {
        "Conv" => {
            let per = weight.dims[1..].iter().product::<usize>().max(1);
            (weight.dims[0], Box::new(move |k| k / per))
        }
        "Gemm" | "MatMul" => {
            let trans_b = attr::int(layer, "transB")?.unwrap_or(0) != 0;
            let (r, s) = (weight.dims[0], weight.dims[1]);
            match trans_b {
                true => (r, Box::new(move |k| k / s)),
                false => (s, Box::new(move |k| k % s)),
            }
        }
        other => return Ok(Err(format!("{other} folded forward without a shift Add"))),
    };
    let (alpha, beta) = match layer.op_type() {
        "Gemm" => (
            attr::float(layer, "alpha")?.unwrap_or(1.0) as f64,
            attr::float(layer, "beta")?.unwrap_or(1.0) as f64,
        ),
        _ => (1.0, 1.0),
    };
    let mut gain = vec![0.0; outputs];
    let mut gain_terms = vec![0.0; outputs];
    for (k, (&w, &ch)) in weight.data.iter().zip(&channel).enumerate() {
        gain[output_of(k)] += alpha * w * c[ch];
        gain_terms[output_of(k)] += (alpha * w).abs() * c_terms[ch];
    }
    // Rows of a Gemm's C of shape [M, N] each gain the same.
    let (dims, base): (Vec<usize>, Vec<f64>) = match &bias {
        Some(b) if b.len() == outputs || b.len() == 1 => (
            vec![outputs],
            (0..outputs)
                .map(|n| beta * b.data[if b.len() == 1 { 0 } else { n }])
                .collect(),
        ),
        Some(b) if b.dims.len() == 2 && b.dims[1] == outputs => {
            (b.dims.clone(), b.data.iter().map(|v| beta * v).collect())
        }
        Some(b) if b.dims.len() == 2 && b.dims[1] == 1 => (
            vec![b.dims[0], outputs],
            (0..b.dims[0] * outputs)
                .map(|k| beta * b.data[k / outputs])
                .collect(),
        ),
        Some(b) => return Ok(Err(format!("a bias of shape {:?}", b.dims))),
        None => (vec![outputs], vec![0.0; outputs]),
    };
    let values: Vec<f64> = base
        .iter()
        .enumerate()
        .map(|(k, v)| v + gain[k % outputs])
        .collect();
    let bias_terms: Vec<f64> = base
        .iter()
        .enumerate()
        .map(|(k, v)| v.abs() + gain_terms[k % outputs])
        .collect();
    let dtype = bias.as_ref().map_or(weight.dtype, |b| b.dtype);
    let per_output = weight.len() / outputs.max(1);
    Ok(Ok(InputSide {
        weight: scaled,
        bias: Some(Tensor::new(dtype, dims, values)),
        bias_terms,
        shift_check: None,
        terms: per_output + 1,
    }))
}
