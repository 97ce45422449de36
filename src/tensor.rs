//! Decoding and encoding of tensor values, for every way ONNX stores them.
//!
//! Values are decoded to `f64` (exact for every float dtype bnfold folds and for the integers of
//! shape arithmetic) and encoded back into the tensor's own dtype with one rounding.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::proto::TensorProto;

/// The element types bnfold reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// `FLOAT`
    F32,
    /// `FLOAT16`
    F16,
    /// `BFLOAT16`
    Bf16,
    /// `DOUBLE`
    F64,
    /// `INT8`
    I8,
    /// `UINT8`
    U8,
    /// `INT16`
    I16,
    /// `UINT16`
    U16,
    /// `INT32`
    I32,
    /// `UINT32`
    U32,
    /// `INT64`
    I64,
    /// `UINT64`
    U64,
    /// `BOOL`
    Bool,
}

impl Dtype {
    /// The dtype of an ONNX `TensorProto.DataType` code, if bnfold handles it.
    pub fn from_code(code: i32) -> Option<Dtype> {
        Some(match code {
            1 => Dtype::F32,
            2 => Dtype::U8,
            3 => Dtype::I8,
            4 => Dtype::U16,
            5 => Dtype::I16,
            6 => Dtype::I32,
            7 => Dtype::I64,
            9 => Dtype::Bool,
            10 => Dtype::F16,
            11 => Dtype::F64,
            12 => Dtype::U32,
            13 => Dtype::U64,
            16 => Dtype::Bf16,
            _ => return None,
        })
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn code(self) -> i32 {
        match self {
            Dtype::F32 => 1,
            Dtype::U8 => 2,
            Dtype::I8 => 3,
            Dtype::U16 => 4,
            Dtype::I16 => 5,
            Dtype::I32 => 6,
            Dtype::I64 => 7,
            Dtype::Bool => 9,
            Dtype::F16 => 10,
            Dtype::F64 => 11,
            Dtype::U32 => 12,
            Dtype::U64 => 13,
            Dtype::Bf16 => 16,
        }
    }

    /// Bytes per element in `raw_data`.
    pub fn size(self) -> usize {
        match self {
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Whether this is a floating-point type (the only kind bnfold folds).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::Bf16 | Dtype::F64)
    }

    /// The ONNX name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
            Dtype::F64 => "float64",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::I16 => "int16",
            Dtype::U16 => "uint16",
            Dtype::I32 => "int32",
            Dtype::U32 => "uint32",
            Dtype::I64 => "int64",
            Dtype::U64 => "uint64",
            Dtype::Bool => "bool",
        }
    }

    /// Rounds `value` once into this dtype and back; `None` when a finite value does not fit.
    pub fn round(self, value: f64) -> Option<f64> {
        let rounded = match self {
            Dtype::F64 => value,
            Dtype::F32 => value as f32 as f64,
            Dtype::F16 => round_binary(value, 10, -14, 65504.0),
            Dtype::Bf16 => round_binary(value, 7, -126, 3.389_531_389_251_535_5e38),
            _ => value.round(),
        };
        (rounded.is_finite() || !value.is_finite()).then_some(rounded)
    }
}

/// Rounds `value` to the nearest number (ties to even) of a binary format with `mantissa_bits`
/// stored bits, smallest normal exponent `min_exp` and largest finite value `max`, in one step
/// from f64 (`half`'s `from_f64` goes through f32, which rounds twice). Overflow gives infinity.
fn round_binary(value: f64, mantissa_bits: i32, min_exp: i32, max: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let exponent = ((value.abs().to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let quantum = exponent.max(min_exp) - mantissa_bits;
    let rounded = (value * 2f64.powi(-quantum)).round_ties_even() * 2f64.powi(quantum);
    if rounded.abs() > max {
        f64::INFINITY.copysign(value)
    } else {
        rounded
    }
}

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
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_reports_overflow_instead_of_infinity() {
        assert_eq!(Dtype::F16.round(65504.0), Some(65504.0));
        assert_eq!(Dtype::F16.round(70000.0), None);
        assert_eq!(Dtype::F32.round(1e300), None);
        assert_eq!(Dtype::F64.round(1e300), Some(1e300));
    }

    #[test]
    fn f16_rounds_once_from_f64_not_through_f32() {
        // 1 + 2^-11 + 2^-40 lies just above the f16 midpoint between 1 and 1 + 2^-10; via f32 the
        // 2^-40 is lost, the midpoint ties to even (1.0), while one rounding gives 1 + 2^-10.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        let (below, above) = (1.0, 1.0 + 2f64.powi(-10));
        assert!(
            above - v < v - below,
            "the exact nearest f16 is the one above"
        );
        assert_eq!(Dtype::F16.round(v), Some(above));
        // Rounded to f32 first, v becomes the midpoint itself, which ties to even.
        assert_eq!((v as f32) as f64, 1.0 + 2f64.powi(-11));
        assert_eq!(Dtype::F16.round((v as f32) as f64), Some(below));
    }

    #[test]
    fn half_precision_rounding_agrees_with_half_on_values_f32_holds_exactly() {
        for bits in (0u16..=0xffff).step_by(7) {
            let h = half::f16::from_bits(bits);
            let v = h.to_f64();
            if v.is_finite() {
                assert_eq!(Dtype::F16.round(v), Some(v));
                let mid = v + 2f64.powi(-30);
                assert_eq!(
                    Dtype::F16.round(mid).unwrap_or(f64::INFINITY),
                    half::f16::from_f32(mid as f32).to_f64()
                );
            }
            let b = half::bf16::from_bits(bits).to_f64();
            if b.is_finite() {
                assert_eq!(Dtype::Bf16.round(b), Some(b));
            }
        }
    }

    #[test]
    fn raw_and_typed_storage_decode_to_the_same_values() {
        let store = ExternalStore::none();
        let t = Tensor::new(Dtype::F16, vec![3], vec![1.5, -2.0, 0.25]);
        let raw = t.to_proto("w");
        let typed = TensorProto {
            dims: vec![3],
            data_type: Some(10),
            name: Some("w".into()),
            int32_data: [1.5f32, -2.0, 0.25]
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits() as i32)
                .collect(),
            ..Default::default()
        };
        assert_eq!(decode(&raw, &store).unwrap(), t);
        assert_eq!(decode(&typed, &store).unwrap(), t);
    }

    #[test]
    fn raw_data_of_the_wrong_length_is_an_error_naming_the_tensor() {
        let mut p = Tensor::new(Dtype::F32, vec![2], vec![1.0, 2.0]).to_proto("w");
        p.dims = vec![3];
        let err = decode(&p, &ExternalStore::none()).unwrap_err().to_string();
        assert!(
            err.contains("'w'") && err.contains("raw_data has 8 bytes"),
            "{err}"
        );
    }
}
