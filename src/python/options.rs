//! The keyword options of `bnfold.fold` and `bnfold.verify`, as the Python package passes them
//! (a dict holding every key, defaults filled in), turned into the library's options. They
//! mirror the command line's flags one for one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{FoldKind, FoldOptions, VerifyOptions};

/// The option `key`, converted; a missing key or a value of the wrong type names the key.
pub(super) fn item<'py, T>(options: &Bound<'py, PyDict>, key: &str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py>,
    for<'a> <T as FromPyObject<'a, 'py>>::Error: Into<PyErr>,
{
    let Some(value) = options.get_item(key)? else {
        return Err(PyTypeError::new_err(format!("missing option {key}")));
    };
    value
        .extract::<T>()
        .map_err(|e| PyTypeError::new_err(format!("{key}: {}", e.into())))
}

/// `only`, `skip_nodes`, `inputs_are_constants`, `decompose_standalone`, `merge_branches`,
/// `keep_constant_nodes`.
pub(super) fn fold_options(options: &Bound<'_, PyDict>) -> PyResult<FoldOptions> {
    let only: Option<Vec<String>> = item(options, "only")?;
    let only = match only {
        Some(kinds) => Some(
            kinds
                .iter()
                .map(|k| fold_kind(k))
                .collect::<PyResult<_>>()?,
        ),
        None => None,
    };
    let equalize = equalize_mode(options)?;
    Ok(FoldOptions {
        only,
        skip_nodes: item::<Vec<String>>(options, "skip_nodes")?
            .into_iter()
            .collect(),
        inputs_are_constants: item(options, "inputs_are_constants")?,
        decompose_standalone: item(options, "decompose_standalone")?,
        merge_branches: item(options, "merge_branches")?,
        keep_constant_nodes: item(options, "keep_constant_nodes")?,
        equalize: equalize != Equalize::Off,
        absorb_high_bias: equalize == Equalize::Absorb,
        defer_weight_check: false,
    })
}

/// What `equalize` asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Equalize {
    Off,
    Exact,
    Absorb,
}

/// `equalize`: a bool (`True` is `"exact"`), `"exact"` or `"absorb"`.
fn equalize_mode(options: &Bound<'_, PyDict>) -> PyResult<Equalize> {
    let Some(value) = options.get_item("equalize")? else {
        return Err(PyTypeError::new_err("missing option equalize"));
    };
    if let Ok(on) = value.extract::<bool>() {
        return Ok(if on { Equalize::Exact } else { Equalize::Off });
    }
    match value.extract::<String>().as_deref() {
        Ok("exact") => Ok(Equalize::Exact),
        Ok("absorb") => Ok(Equalize::Absorb),
        Ok(other) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "equalize: {other:?} is not one of True, False, \"exact\", \"absorb\""
        ))),
        Err(_) => Err(PyTypeError::new_err(
            "equalize: expected a bool, \"exact\" or \"absorb\"",
        )),
    }
}

/// A layer kind as `--only` names it (`conv`, `convtranspose`, `gemm`, `matmul`; `_` allowed).
fn fold_kind(name: &str) -> PyResult<FoldKind> {
    match name.to_ascii_lowercase().replace('_', "").as_str() {
        "conv" => Ok(FoldKind::Conv),
        "convtranspose" => Ok(FoldKind::ConvTranspose),
        "gemm" => Ok(FoldKind::Gemm),
        "matmul" => Ok(FoldKind::MatMul),
        _ => Err(PyValueError::new_err(format!(
            "only: '{name}' is not a layer kind (conv, convtranspose, gemm, matmul)"
        ))),
    }
}

/// `seed`, `samples`, `dims`, `input_shapes`, `inputs` (paths of `.npy` files), `atol`, `rtol`.
pub(super) fn verify_options(options: &Bound<'_, PyDict>) -> PyResult<VerifyOptions> {
    let defaults = VerifyOptions::default();
    let mut verify = VerifyOptions {
        seed: item::<Option<u64>>(options, "seed")?.unwrap_or(defaults.seed),
        samples: item(options, "samples")?,
        dims: item(options, "dims")?,
        input_shapes: item(options, "input_shapes")?,
        atol: item(options, "atol")?,
        rtol: item(options, "rtol")?,
        ..defaults
    };
    let inputs: BTreeMap<String, PathBuf> = item(options, "inputs")?;
    for (name, path) in inputs {
        let data = crate::npy::read_npy(&path)
            .map_err(|e| PyValueError::new_err(format!("inputs[{name:?}]: {e}")))?;
        verify.input_data.insert(name, data);
    }
    Ok(verify)
}
