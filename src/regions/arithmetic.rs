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

/// In f64 and on magnitudes each Gemm is spelled as MatMul and Add (see
/// [`crate::reference::spell_gemms`]).
pub(crate) fn spell_gemms(
    nodes: Vec<NodeProto>,
    constants: &mut Vec<(String, Tensor)>,
    arithmetic: Arithmetic,
) -> crate::error::Result<Vec<NodeProto>> {
    match arithmetic.spells_gemm() {
        true => crate::reference::spell_gemms(nodes, constants),
        false => Ok(nodes),
    }
}
