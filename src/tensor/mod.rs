//! Decoding and encoding of tensor values, for every way ONNX stores them.
//!
//! Values are decoded to `f64` (exact for every float dtype bnfold folds and for the integers of
//! shape arithmetic) and encoded back into the tensor's own dtype with one rounding.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::proto::TensorProto;

mod dtype;
pub use dtype::Dtype;

/// A decoded tensor: its dtype, its shape and its values widened to `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The element type the values came from, and go back to.
    pub dtype: Dtype,
    /// The shape.
    pub dims: Vec<usize>,
    /// The values in row-major order.
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor of the given dtype and shape; `data.len()` must be the product of `dims`.
    pub fn new(dtype: Dtype, dims: Vec<usize>, data: Vec<f64>) -> Tensor {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        Tensor { dtype, dims, data }
    }

    /// A rank-0 tensor.
    pub fn scalar(dtype: Dtype, value: f64) -> Tensor {
        Tensor::new(dtype, vec![], vec![value])
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values as integers (for shape arithmetic).
    pub fn as_i64(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }

    /// Encodes the tensor as a `TensorProto` named `name`, values in little-endian `raw_data`.
    pub fn to_proto(&self, name: &str) -> TensorProto {
        let mut raw = Vec::with_capacity(self.data.len() * self.dtype.size());
        push_le(self.dtype, &self.data, &mut raw);
        TensorProto {
            dims: self.dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(self.dtype.code()),
            name: Some(name.to_string()),
            raw_data: Some(Bytes::from(raw)),
            ..Default::default()
        }
    }
}

/// Largest element count bnfold decodes for one tensor (2^34 elements is 128 GiB of f64):
/// guards every allocation sized from a field of the file.
const MAX_ELEMENTS: usize = 1 << 34;

/// The checked shape of a tensor proto: no negative dims, no overflowing product.
pub fn proto_dims(t: &TensorProto) -> Result<Vec<usize>> {
    let name = t.name();
    let mut numel: usize = 1;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| Error::tensor(name, format!("negative dim {d}")))?;
        numel = numel
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| Error::tensor(name, format!("shape {:?} is too large", t.dims)))?;
        dims.push(d);
    }
    Ok(dims)
}

/// The dtype of a tensor proto, if bnfold handles it.
pub fn proto_dtype(t: &TensorProto) -> Result<Dtype> {
    Dtype::from_code(t.data_type()).ok_or_else(|| Error::UnsupportedDtype {
        tensor: t.name().to_string(),
        data_type: t.data_type(),
    })
}

/// Bits per stored element of every `TensorProto.DataType` the vendored schema knows; `None`
/// for `STRING` (not stored as bytes) and unknown codes. Types under 8 bits are packed, low
/// bits first, as onnx packs them.
pub fn stored_bits(code: i32) -> Option<usize> {
    Some(match code {
        2 | 3 | 9 | 17..=20 | 24 => 8,
        4 | 5 | 10 | 16 => 16,
        1 | 6 | 12 => 32,
        7 | 11 | 13 | 14 => 64,
        15 => 128,
        21..=23 => 4,
        25 | 26 => 2,
        27 | 28 => 6,
        _ => return None,
    })
}

/// The bytes a tensor's data takes in `raw_data` or an external file, for every dtype whose
/// elements are stored as bytes (see [`stored_bits`]).
pub fn stored_len(t: &TensorProto) -> Result<usize> {
    let numel: usize = proto_dims(t)?.iter().product();
    let bits = stored_bits(t.data_type()).ok_or_else(|| Error::UnsupportedDtype {
        tensor: t.name().to_string(),
        data_type: t.data_type(),
    })?;
    Ok((numel * bits).div_ceil(8))
}

/// Whether the tensor's data lives in an external file.
pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(crate::proto::tensor_proto::DataLocation::External as i32)
}

/// Decodes a tensor proto's values, reading external data through `store`.
pub fn decode(t: &TensorProto, store: &ExternalStore) -> Result<Tensor> {
    let name = t.name();
    let dtype = proto_dtype(t)?;
    let dims = proto_dims(t)?;
    let numel: usize = dims.iter().product();
    let data = if is_external(t) {
        let raw = store.read(t, numel * dtype.size())?;
        decode_raw(name, dtype, &raw, numel)?
    } else if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty() || numel == 0) {
        decode_raw(name, dtype, &store.inline_bytes(name, raw)?, numel)?
    } else {
        decode_typed(t, dtype, numel)?
    };
    Ok(Tensor { dtype, dims, data })
}

fn decode_raw(name: &str, dtype: Dtype, raw: &[u8], numel: usize) -> Result<Vec<f64>> {
    let size = dtype.size();
    if raw.len() != numel * size {
        return Err(Error::tensor(
            name,
            format!(
                "raw_data has {} bytes, the shape needs {} ({} x {} bytes)",
                raw.len(),
                numel * size,
                numel,
                size
            ),
        ));
    }
    Ok(decode_le(dtype, raw))
}

/// Little-endian values of `dtype`, widened to f64 (a trailing partial element is ignored).
pub(crate) fn decode_le(dtype: Dtype, raw: &[u8]) -> Vec<f64> {
    let mut out = Vec::with_capacity(raw.len() / dtype.size());
    decode_le_into(dtype, raw, &mut out);
    out
}

/// Appends the little-endian values of `dtype` in `raw`, widened to f64, to `out`.
pub(crate) fn decode_le_into(dtype: Dtype, raw: &[u8], out: &mut Vec<f64>) {
    fn widen<const N: usize>(raw: &[u8], out: &mut Vec<f64>, f: impl Fn([u8; N]) -> f64) {
        out.extend(raw.chunks_exact(N).map(|c| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(c);
            f(bytes)
        }));
    }
    match dtype {
        Dtype::F32 => widen(raw, out, |b| f32::from_le_bytes(b) as f64),
        Dtype::F64 => widen(raw, out, f64::from_le_bytes),
        Dtype::F16 => widen(raw, out, |b| half::f16::from_le_bytes(b).to_f64()),
        Dtype::Bf16 => widen(raw, out, |b| half::bf16::from_le_bytes(b).to_f64()),
        Dtype::I8 => widen(raw, out, |[b]: [u8; 1]| b as i8 as f64),
        Dtype::U8 | Dtype::Bool => widen(raw, out, |[b]: [u8; 1]| b as f64),
        Dtype::I16 => widen(raw, out, |b| i16::from_le_bytes(b) as f64),
        Dtype::U16 => widen(raw, out, |b| u16::from_le_bytes(b) as f64),
        Dtype::I32 => widen(raw, out, |b| i32::from_le_bytes(b) as f64),
        Dtype::U32 => widen(raw, out, |b| u32::from_le_bytes(b) as f64),
        Dtype::I64 => widen(raw, out, |b| i64::from_le_bytes(b) as f64),
        Dtype::U64 => widen(raw, out, |b| u64::from_le_bytes(b) as f64),
    }
}

/// Appends `values` rounded once into `dtype` to `out` as little-endian bytes (a value too
/// large for a float dtype becomes infinity).
fn push_le(dtype: Dtype, values: &[f64], out: &mut Vec<u8>) {
    let values = values.iter().copied();
    match dtype {
        Dtype::F32 => out.extend(values.flat_map(|v| (v as f32).to_le_bytes())),
        Dtype::F64 => out.extend(values.flat_map(f64::to_le_bytes)),
        Dtype::F16 => out.extend(
            values
                .flat_map(|v| half::f16::from_f64(Dtype::F16.round(v).unwrap_or(v)).to_le_bytes()),
        ),
        Dtype::Bf16 => {
            out.extend(values.flat_map(|v| {
                half::bf16::from_f64(Dtype::Bf16.round(v).unwrap_or(v)).to_le_bytes()
            }))
        }
        Dtype::I8 => out.extend(values.map(|v| v as i8 as u8)),
        Dtype::U8 | Dtype::Bool => out.extend(values.map(|v| v as u8)),
        Dtype::I16 => out.extend(values.flat_map(|v| (v as i16).to_le_bytes())),
        Dtype::U16 => out.extend(values.flat_map(|v| (v as u16).to_le_bytes())),
        Dtype::I32 => out.extend(values.flat_map(|v| (v as i32).to_le_bytes())),
        Dtype::U32 => out.extend(values.flat_map(|v| (v as u32).to_le_bytes())),
        Dtype::I64 => out.extend(values.flat_map(|v| (v as i64).to_le_bytes())),
        Dtype::U64 => out.extend(values.flat_map(|v| (v as u64).to_le_bytes())),
    }
}

/// Appends `values` rounded once into `dtype` to `out` as little-endian bytes, unless a float
/// value is not finite once rounded: then nothing is appended and its index is returned.
pub(crate) fn encode_le_into(dtype: Dtype, values: &[f64], out: &mut Vec<u8>) -> Option<usize> {
    if dtype.is_float() {
        let fits = |v: f64| dtype.round(v).is_some_and(f64::is_finite);
        if let Some(bad) = values.iter().position(|&v| !fits(v)) {
            return Some(bad);
        }
    }
    push_le(dtype, values, out);
    None
}

fn decode_typed(t: &TensorProto, dtype: Dtype, numel: usize) -> Result<Vec<f64>> {
    let (field, values): (&str, Vec<f64>) = match dtype {
        Dtype::F32 => (
            "float_data",
            t.float_data.iter().map(|&v| v as f64).collect(),
        ),
        Dtype::F64 => ("double_data", t.double_data.clone()),
        Dtype::F16 => (
            "int32_data",
            t.int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16).to_f64())
                .collect(),
        ),
        Dtype::Bf16 => (
            "int32_data",
            t.int32_data
                .iter()
                .map(|&v| half::bf16::from_bits(v as u16).to_f64())
                .collect(),
        ),
        Dtype::I8 | Dtype::U8 | Dtype::I16 | Dtype::U16 | Dtype::I32 | Dtype::Bool => (
            "int32_data",
            t.int32_data.iter().map(|&v| v as f64).collect(),
        ),
        Dtype::I64 => (
            "int64_data",
            t.int64_data.iter().map(|&v| v as f64).collect(),
        ),
        Dtype::U32 | Dtype::U64 => (
            "uint64_data",
            t.uint64_data.iter().map(|&v| v as f64).collect(),
        ),
    };
    if values.len() != numel {
        return Err(Error::tensor(
            t.name(),
            format!(
                "{field} has {} values, the shape {:?} needs {numel}",
                values.len(),
                t.dims
            ),
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod tests;
