//! The Python extension module `bnfold._native` (feature `python`), which the package in
//! `python/bnfold/` wraps: the command line run in the Python process, and `fold`, `verify`
//! and `inspect` on a model held in memory or read from a path. Each releases the GIL while
//! it works; reports go back as the JSON of `schema/report.schema.json`, errors as the
//! package's exceptions (see `errors.rs`).

mod errors;
mod options;

use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::cli::commands::fold::check_skip_nodes;
use crate::pipeline::{self, RunOptions};
use crate::verify::Status;
use crate::{Model, SaveOptions};
use errors::{Failure, PyResultExt};
use options::{fold_options, verify_options};

/// A model as Python gives it: its bytes, or the path of its file.
enum Source {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

impl Source {
    fn extract(object: &Bound<'_, PyAny>) -> PyResult<Source> {
        if let Ok(bytes) = object.cast::<PyBytes>() {
            return Ok(Source::Bytes(bytes.as_bytes().to_vec()));
        }
        Ok(Source::Path(object.extract::<PathBuf>()?))
    }

    /// How the report names it.
    fn label(&self) -> String {
        match self {
            Source::Bytes(_) => "<bytes>".to_string(),
            Source::Path(path) => path.display().to_string(),
        }
    }

    fn load(self) -> crate::error::Result<Model> {
        match self {
            Source::Bytes(bytes) => Model::from_bytes(bytes),
            Source::Path(path) => Model::load(path),
        }
    }
}

/// Runs the command line on `argv` (the program's name first) and returns its exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| crate::cli::main(argv).code())
}

/// Folds a model: returns the fused model's bytes (none when written to `output`), the JSON
/// report, and whether verification failed (then nothing is written).
#[pyfunction]
fn fold(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    options: &Bound<'_, PyDict>,
) -> PyResult<(Option<Py<PyBytes>>, String, bool)> {
    let source = Source::extract(source)?;
    let label = source.label();
    let run = RunOptions {
        fold: fold_options(options)?,
        readiness: options::item(options, "readiness")?,
        verify: match options::item::<bool>(options, "verify")? {
            true => Some(verify_options(options)?),
            false => None,
        },
    };
    let require_verify: bool = options::item(options, "require_verify")?;
    let output: Option<PathBuf> = options::item(options, "output")?;
    let save = SaveOptions {
        force: options::item(options, "force")?,
        ..SaveOptions::default()
    };
    let (bytes, report, failed) = py
        .detach(|| -> Result<_, Failure> {
            let model = source.load()?;
            if output.is_none() && model.has_external_data() {
                return Err(Failure::Argument(format!(
                    "{label}: the model keeps tensors in external data files: give output= to \
                     write the fused model beside its data"
                )));
            }
            check_skip_nodes(&model, &run.fold.skip_nodes)
                .map_err(|e| Failure::Argument(crate::cli::one_line(&e)))?;
            let (fused, report) = pipeline::run(model, &run)?;
            let status = report.verification.as_ref().map(|v| &v.status);
            let stray = report
                .absorption_check
                .as_ref()
                .is_some_and(|c| c.status == Status::Failed);
            let failed = status == Some(&Status::Failed)
                || stray
                || (status == Some(&Status::NotVerified) && require_verify);
            let written = output.as_ref().filter(|_| !failed);
            let bytes = match (&output, written) {
                (_, Some(path)) => {
                    fused.save(path, save)?;
                    None
                }
                (None, None) => Some(fused.to_bytes()?),
                (Some(_), None) => None,
            };
            let written = written.map(|p| p.display().to_string());
            let json = crate::report::json::fold(&report, &label, written.as_deref());
            Ok((bytes, json.to_string(), failed))
        })
        .or_raise(py, &label)?;
    Ok((bytes.map(|b| PyBytes::new(py, &b).unbind()), report, failed))
}

/// Compares two models; returns the JSON report and whether the check passed.
#[pyfunction]
fn verify(
    py: Python<'_>,
    original: &Bound<'_, PyAny>,
    candidate: &Bound<'_, PyAny>,
    options: &Bound<'_, PyDict>,
) -> PyResult<(String, bool)> {
    let original = Source::extract(original)?;
    let candidate = Source::extract(candidate)?;
    let (original_label, candidate_label) = (original.label(), candidate.label());
    let mut verify = verify_options(options)?;
    verify.float_folds = options::item(options, "float_folds")?;
    let a = py
        .detach(|| original.load())
        .or_raise(py, &original_label)?;
    let b = py
        .detach(|| candidate.load())
        .or_raise(py, &candidate_label)?;
    let v = py
        .detach(|| crate::verify(&a, &b, &[], &verify))
        .or_raise(py, &candidate_label)?;
    let json = crate::report::json::verify(&original_label, &candidate_label, &v);
    Ok((json.to_string(), v.status == Status::Passed))
}

/// The readiness report of a model, as `bnfold inspect` writes it in JSON.
#[pyfunction]
fn inspect(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    inputs_are_constants: bool,
) -> PyResult<String> {
    let source = Source::extract(source)?;
    let label = source.label();
    let fold = crate::FoldOptions {
        inputs_are_constants,
        ..crate::FoldOptions::default()
    };
    py.detach(|| -> crate::error::Result<String> {
        let (report, readiness) = pipeline::inspect(source.load()?, &fold)?;
        let normalizations = crate::report::json::NormalizationEntry::all(&report);
        Ok(crate::report::json::inspect(&label, &normalizations, &readiness).to_string())
    })
    .or_raise(py, &label)
}

/// The module: its functions, and the version of the crate it was built from.
#[pymodule]
#[pyo3(name = "_native")]
fn native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_function(wrap_pyfunction!(main, module)?)?;
    module.add_function(wrap_pyfunction!(fold, module)?)?;
    module.add_function(wrap_pyfunction!(verify, module)?)?;
    module.add_function(wrap_pyfunction!(inspect, module)?)?;
    Ok(())
}
