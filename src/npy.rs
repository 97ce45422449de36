//! Reads NumPy `.npy` files (format versions 1–3, C order, little-endian or single-byte types),
//! so that verification can be fed real inputs with `--input NAME=file.npy`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::Dtype;

/// A dense array read from a `.npy` file, values widened to f64.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The element type as stored in the file.
    pub dtype: Dtype,
    /// The shape, outermost axis first.
    pub shape: Vec<usize>,
    /// The values in C order.
    pub values: Vec<f64>,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let (file, metadata) = crate::source::open_regular(path)?;
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, metadata.len()), &mut bytes)
        .map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes).map_err(|problem| Error::InputData {
        source_file: path.display().to_string(),
        problem,
    })
}

/// Parses the bytes of a `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or("truncated header")?;
    let header =
        std::str::from_utf8(&bytes[header_start..data_start]).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    let shape = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    if fortran.trim() != "False" {
        return Err(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        );
    }
    let dtype = descr_dtype(descr.trim().trim_matches(|c| c == '\'' || c == '"'))?;
    let shape = parse_shape(shape)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("shape overflows")?;
    let data = &bytes[data_start..];
    let expected = count.checked_mul(dtype.size()).ok_or("shape overflows")?;
    if data.len() != expected {
        return Err(format!(
            "shape {shape:?} needs {expected} bytes of data, the file has {}",
            data.len()
        ));
    }
    let values = crate::tensor::decode_le(dtype, data);
    Ok(NpyArray {
        dtype,
        shape,
        values,
    })
}

/// The text after `'key':` up to the next top-level comma (tuples kept whole).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn descr_dtype(descr: &str) -> std::result::Result<Dtype, String> {
    let (order, code) = descr.split_at(descr.len().min(1));
    if order == ">" && !matches!(code, "i1" | "u1" | "b1") {
        return Err(format!("big-endian dtype '{descr}' is not supported"));
    }
    Ok(match code {
        "f2" => Dtype::F16,
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        "i1" => Dtype::I8,
        "u1" => Dtype::U8,
        "i2" => Dtype::I16,
        "u2" => Dtype::U16,
        "i4" => Dtype::I32,
        "u4" => Dtype::U32,
        "i8" => Dtype::I64,
        "u8" => Dtype::U64,
        "b1" => Dtype::Bool,
        _ => return Err(format!("unsupported dtype '{descr}'")),
    })
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("shape '{text}' is not a tuple"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| format!("shape entry '{d}' is not a dimension"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_f32_matrix() {
        let data: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!(a.dtype, Dtype::F32);
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.values, vec![1.5, -2.0, 3.25, 0.0, 7.0, 8.0]);
    }

    #[test]
    fn reads_scalar_and_vector_shapes() {
        let a = parse_npy(&npy("<i8", "()", &42i64.to_le_bytes())).unwrap();
        assert_eq!((a.shape.clone(), a.values.clone()), (vec![], vec![42.0]));
        let b = parse_npy(&npy("|b1", "(3,)", &[1, 0, 1])).unwrap();
        assert_eq!((b.shape, b.values), (vec![3], vec![1.0, 0.0, 1.0]));
    }

    #[test]
    fn refuses_wrong_length_fortran_and_big_endian() {
        assert!(parse_npy(&npy("<f4", "(2, 3)", &[0; 8]))
            .unwrap_err()
            .contains("needs 24 bytes"));
        let mut f = npy("<f4", "(1,)", &[0; 4]);
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        assert!(parse_npy(&f).unwrap_err().contains("Fortran"));
        assert!(parse_npy(&npy(">f4", "(1,)", &[0; 4]))
            .unwrap_err()
            .contains("big-endian"));
        assert!(parse_npy(b"PK\x03\x04 not npy").is_err());
        assert!(
            parse_npy(&npy("<f4", "(4294967296, 4294967296, 4294967296)", &[]))
                .unwrap_err()
                .contains("overflows")
        );
    }
}
