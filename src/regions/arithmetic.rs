//! The arithmetic a region model computes in: as stored, widened (f32 for bfloat16, which tract
//! does not run; f64 for the exact reference), or the magnitudes `Σ|W|·|x| + |b|` that bound
//! the rounding of every dot product (in f32: a bound needs no more precision, and tract's f32
//! kernels are many times faster than its f64 ones).

use crate::proto::NodeProto;
use crate::tensor::{Dtype, Tensor};

/// How a region model's float tensors, data input and output are typed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Arithmetic {
    /// As stored in the model.
    Stored,
    /// Every float value widened (exactly) to this dtype.
    Widened(Dtype),
    /// Every float value replaced by its magnitude, in this dtype (f32, or f64 for f64 regions,
    /// whose values f32 may not hold): fed `|x|`, the model computes the sum of the magnitudes
    /// of the terms of each output element.
    Magnitudes(Dtype),
}

impl Arithmetic {
    /// The element type of the data input and the output, for a region stored as `stored`.
    pub(crate) fn dtype(self, stored: Dtype) -> Dtype {
        match self {
            Arithmetic::Stored => stored,
            Arithmetic::Widened(d) => d,
            Arithmetic::Magnitudes(d) => d,
        }
    }

    /// Whether a Gemm is spelled as MatMul and Add (see [`spell_gemms`]).
    fn spells_gemm(self) -> bool {
        matches!(
            self,
            Arithmetic::Widened(Dtype::F64) | Arithmetic::Magnitudes(_)
        )
    }
}

/// A constant of the region in `arithmetic`: float values widened (or their magnitudes),
/// anything else as it is.
pub(crate) fn convert(t: Tensor, arithmetic: Arithmetic) -> Tensor {
    if !t.dtype.is_float() {
        return t;
    }
    match arithmetic {
        Arithmetic::Stored => t,
        Arithmetic::Widened(d) => Tensor::new(d, t.dims, t.data),
        Arithmetic::Magnitudes(d) => {
            Tensor::new(d, t.dims, t.data.iter().map(|v| v.abs()).collect())
        }
    }
}

/// In f64, tract's Gemm multiplies by an f32 `beta`, and on magnitudes a negative `alpha` or
/// `beta` would subtract, so those models spell each Gemm
/// `(Transpose(A))? · B″ (+ C″)` with `B″ = alpha·B` (transposed when `transB`) and
/// `C″ = beta·C` computed in f64 (rounded at 2⁻⁵³, far below any dtype's own rounding).
/// `constants` holds the region's constants by name; new ones are added to it.
pub(crate) fn spell_gemms(
    nodes: Vec<NodeProto>,
    constants: &mut Vec<(String, Tensor)>,
    arithmetic: Arithmetic,
) -> crate::error::Result<Vec<NodeProto>> {
    if !arithmetic.spells_gemm() {
        return Ok(nodes);
    }
    let mut out = Vec::new();
    for node in nodes {
        let constant = |name: &str| constants.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let (Some(b), Some(output)) = (
            node.input.get(1).and_then(|n| constant(n)),
            node.output.first().cloned(),
        ) else {
            out.push(node);
            continue;
        };
        if node.op_type() != "Gemm" || b.dims.len() != 2 {
            out.push(node);
            continue;
        }
        let alpha = f64::from(crate::attr::float(&node, "alpha")?.unwrap_or(1.0));
        let beta = f64::from(crate::attr::float(&node, "beta")?.unwrap_or(1.0));
        let trans_a = crate::attr::int(&node, "transA")?.unwrap_or(0) != 0;
        let trans_b = crate::attr::int(&node, "transB")?.unwrap_or(0) != 0;
        let (rows, cols) = (b.dims[0], b.dims[1]);
        let b_scaled = if trans_b {
            let mut data = vec![0.0; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    data[c * rows + r] = alpha * b.data[r * cols + c];
                }
            }
            Tensor::new(b.dtype, vec![cols, rows], data)
        } else {
            Tensor::new(
                b.dtype,
                b.dims.clone(),
                b.data.iter().map(|v| alpha * v).collect(),
            )
        };
        let c = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(name) => match constant(name) {
                Some(c) => Some(Tensor::new(
                    c.dtype,
                    c.dims.clone(),
                    c.data.iter().map(|v| beta * v).collect(),
                )),
                // A C computed in the graph: the Gemm stays as it is.
                None => {
                    out.push(node);
                    continue;
                }
            },
            None => None,
        };
        let simple = |op: &str, inputs: Vec<String>, output: String| NodeProto {
            op_type: Some(op.into()),
            input: inputs,
            output: vec![output],
            ..Default::default()
        };
        let mut data = node.input[0].clone();
        if trans_a {
            let transposed = format!("{output}#gemm_a");
            out.push(simple("Transpose", vec![data], transposed.clone()));
            data = transposed;
        }
        let b_name = format!("{output}#gemm_b");
        constants.push((b_name.clone(), b_scaled));
        match c {
            Some(c) => {
                let (product, c_name) = (format!("{output}#gemm_ab"), format!("{output}#gemm_c"));
                constants.push((c_name.clone(), c));
                out.push(simple("MatMul", vec![data, b_name], product.clone()));
                out.push(simple("Add", vec![product, c_name], output));
            }
            None => out.push(simple("MatMul", vec![data, b_name], output)),
        }
    }
    Ok(out)
}
