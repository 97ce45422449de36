//! External tensor data: `location` / `offset` / `length` relative to the model's folder.
//!
//! A location is refused when it is absolute, contains `..`, or resolves (through symlinks)
//! outside the model's folder, and a range is refused when it lies outside its file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::proto::TensorProto;

/// The `external_data` key that marks a rewritten external tensor whose new bytes wait in the
/// store's spill file (`"offset:length"`); reserved: refused in input models, gone once saved.
pub const PENDING_KEY: &str = "bnfold.pending";

/// Where a model's external data files are looked up (the model's folder), and where rewritten
/// external tensors wait until the model is saved: an anonymous spill file, so that folding a
/// model larger than memory holds one tensor at a time.
#[derive(Clone, Debug, Default)]
pub struct ExternalStore {
    base_dir: Option<PathBuf>,
    spill: Arc<Mutex<Option<File>>>,
}

/// The `external_data` entries of one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalRef {
    /// The file, relative to the model's folder.
    pub location: String,
    /// Byte offset in the file.
    pub offset: u64,
    /// Byte length, when given.
    pub length: Option<u64>,
}

impl ExternalStore {
    /// A store for a model that was not read from a file: external data is an error.
    pub fn none() -> ExternalStore {
        ExternalStore::default()
    }

    /// A store for a model in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> ExternalStore {
        ExternalStore {
            base_dir: Some(dir.into()),
            spill: Arc::default(),
        }
    }

    /// The model's folder, if it came from a file.
    pub fn base_dir(&self) -> Option<&Path> {
        self.base_dir.as_deref()
    }

    /// Checks an external tensor's location and byte range without reading it: the file and
    /// the offset of its `expected_len` bytes.
    pub fn locate(&self, t: &TensorProto, expected_len: usize) -> Result<(PathBuf, u64)> {
        let reference = external_ref(t)?;
        let refuse = |problem: String| Error::ExternalData {
            tensor: t.name().to_string(),
            location: reference.location.clone(),
            problem,
        };
        let base = self
            .base_dir
            .as_deref()
            .ok_or_else(|| refuse("the model was not loaded from a file".into()))?;
        let path = resolve(base, &reference.location).map_err(&refuse)?;
        if let Some(length) = reference.length {
            if length != expected_len as u64 {
                return Err(refuse(format!(
                    "length {length} does not match the {expected_len} bytes its shape needs"
                )));
            }
        }
        let metadata = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !metadata.is_file() {
            return Err(refuse("it is not a regular file".into()));
        }
        let end = reference.offset.checked_add(expected_len as u64);
        if end.is_none_or(|end| end > metadata.len()) {
            return Err(refuse(format!(
                "bytes {}..{} lie past the end of the {}-byte file",
                reference.offset,
                reference.offset.saturating_add(expected_len as u64),
                metadata.len()
            )));
        }
        if reference.length.is_none() && end != Some(metadata.len()) {
            return Err(refuse(format!(
                "no 'length', so its data runs from offset {} to the end of the {}-byte file, \
                 which is not the {expected_len} bytes its shape needs",
                reference.offset,
                metadata.len()
            )));
        }
        Ok((path, reference.offset))
    }

    /// Appends the new bytes of a rewritten external tensor to the spill file and returns the
    /// `external_data` entry that points at them.
    pub fn spill(
        &self,
        tensor: &str,
        bytes: &[u8],
    ) -> Result<crate::proto::StringStringEntryProto> {
        let fail = |e: std::io::Error| Error::tensor(tensor, format!("spilling folded data: {e}"));
        let mut guard = self
            .spill
            .lock()
            .map_err(|_| Error::tensor(tensor, "spill file poisoned"))?;
        if guard.is_none() {
            let file = self
                .base_dir
                .as_deref()
                .and_then(|d| tempfile::tempfile_in(d).ok())
                .map_or_else(tempfile::tempfile, Ok)
                .map_err(fail)?;
            *guard = Some(file);
        }
        let file = guard
            .as_mut()
            .ok_or_else(|| Error::tensor(tensor, "no spill file"))?;
        let offset = file.seek(SeekFrom::End(0)).map_err(fail)?;
        file.write_all(bytes).map_err(fail)?;
        Ok(crate::proto::StringStringEntryProto {
            key: Some(PENDING_KEY.into()),
            value: Some(format!("{offset}:{}", bytes.len())),
        })
    }

    fn read_spilled(&self, t: &TensorProto, pending: &str, expected_len: usize) -> Result<Vec<u8>> {
        let bad = || Error::tensor(t.name(), format!("bad pending entry '{pending}'"));
        let (offset, len) = pending.split_once(':').ok_or_else(bad)?;
        let offset: u64 = offset.parse().map_err(|_| bad())?;
        let len: usize = len.parse().map_err(|_| bad())?;
        if len != expected_len {
            return Err(bad());
        }
        let mut guard = self.spill.lock().map_err(|_| bad())?;
        let file = guard.as_mut().ok_or_else(bad)?;
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::tensor(t.name(), format!("reading spilled data: {e}")))?;
        Ok(buf)
    }

    /// Reads the `expected_len` bytes of an external tensor, after checking its location.
    pub fn read(&self, t: &TensorProto, expected_len: usize) -> Result<Vec<u8>> {
        if let Some(pending) = t.external_data.iter().find(|e| e.key() == PENDING_KEY) {
            return self.read_spilled(t, pending.value(), expected_len);
        }
        let (path, offset) = self.locate(t, expected_len)?;
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut buf = vec![0u8; expected_len];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::io(&path, e))?;
        Ok(buf)
    }
}

/// Parses a tensor's `external_data` entries.
pub fn external_ref(t: &TensorProto) -> Result<ExternalRef> {
    let mut location = None;
    let mut offset = 0;
    let mut length = None;
    for entry in &t.external_data {
        let parse = |v: &str| {
            v.parse::<u64>().map_err(|_| Error::ExternalData {
                tensor: t.name().to_string(),
                location: location.clone().unwrap_or_default(),
                problem: format!("'{}' is not a byte count: '{v}'", entry.key()),
            })
        };
        match entry.key() {
            "location" => location = Some(entry.value().to_string()),
            "offset" => offset = parse(entry.value())?,
            "length" => length = Some(parse(entry.value())?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| Error::ExternalData {
        tensor: t.name().to_string(),
        location: String::new(),
        problem: "no 'location' entry".into(),
    })?;
    Ok(ExternalRef {
        location,
        offset,
        length,
    })
}

/// Resolves `location` inside `base`, refusing anything that could escape it.
pub fn resolve(base: &Path, location: &str) -> std::result::Result<PathBuf, String> {
    let relative = Path::new(location);
    if location.is_empty() {
        return Err("empty location".into());
    }
    for component in relative.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("it contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("it is absolute".into()),
        }
    }
    let path = base.join(relative);
    let real_base = base
        .canonicalize()
        .map_err(|e| format!("model folder: {e}"))?;
    let real_path = path.canonicalize().map_err(|e| format!("{e}"))?;
    if !real_path.starts_with(&real_base) {
        return Err("it resolves outside the model's folder".into());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_that_escape_the_model_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 8]).unwrap();
        assert!(resolve(dir.path(), "w.bin").is_ok());
        assert!(resolve(dir.path(), "../w.bin").unwrap_err().contains(".."));
        assert!(resolve(dir.path(), "/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
            assert!(resolve(dir.path(), "link/passwd")
                .unwrap_err()
                .contains("outside"));
        }
    }
}
