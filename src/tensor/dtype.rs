//! The element types bnfold reads and writes, their codes, sizes, and the one rounding from f64
//! into each.

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
