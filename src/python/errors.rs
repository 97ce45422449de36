//! The library's errors as Python exceptions: the package's own (`bnfold.InvalidModel`,
//! `bnfold.BnfoldError`, defined in `python/bnfold/_errors.py`) or the built-in ones a Python
//! user expects for files (`FileNotFoundError`, `FileExistsError`, `OSError`) and arguments
//! (`ValueError`).

use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::error::Error;

/// Why a call failed: the library's error, or an argument that does not fit the model (a
/// `skip_nodes` name no node has), told apart without the GIL.
pub(super) enum Failure {
    /// The library's error.
    Library(Error),
    /// A `ValueError`'s message.
    Argument(String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::Library(error)
    }
}

/// Turns the library's result into Python's, naming the model where the message does not.
pub(super) trait PyResultExt<T> {
    /// The error as the exception a Python user expects; `label` is the model's path (or
    /// `<bytes>`).
    fn or_raise(self, py: Python<'_>, label: &str) -> PyResult<T>;
}

impl<T> PyResultExt<T> for crate::error::Result<T> {
    fn or_raise(self, py: Python<'_>, label: &str) -> PyResult<T> {
        self.map_err(|e| exception(py, &e, label))
    }
}

impl<T> PyResultExt<T> for Result<T, Failure> {
    fn or_raise(self, py: Python<'_>, label: &str) -> PyResult<T> {
        self.map_err(|failure| match failure {
            Failure::Library(e) => exception(py, &e, label),
            Failure::Argument(message) => PyValueError::new_err(message),
        })
    }
}

fn exception(py: Python<'_>, error: &Error, label: &str) -> PyErr {
    let message = match error {
        // The message names the file already.
        Error::Io { .. }
        | Error::OutputExists(_)
        | Error::WouldOverwriteInput(_)
        | Error::WouldWriteInputData { .. }
        | Error::WrittenTwice(_)
        | Error::InputData { .. } => error.to_string(),
        _ if label.starts_with('<') => error.to_string(),
        _ => format!("{label}: {error}"),
    };
    match error {
        Error::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
            _ => PyOSError::new_err(message),
        },
        Error::OutputExists(_)
        | Error::WouldOverwriteInput(_)
        | Error::WouldWriteInputData { .. }
        | Error::WrittenTwice(_) => PyFileExistsError::new_err(message),
        Error::InputData { .. } => PyValueError::new_err(message),
        Error::Verify(_) => package_error(py, "BnfoldError", message),
        _ => package_error(py, "InvalidModel", message),
    }
}

/// An exception of the package's `bnfold._errors` module.
pub(super) fn package_error(py: Python<'_>, class: &str, message: String) -> PyErr {
    let class = py
        .import("bnfold._errors")
        .and_then(|module| module.getattr(class))
        .and_then(|class| class.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        Err(e) => e,
    }
}
