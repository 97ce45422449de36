//! Tensor data outside the decoded protobuf: external data (`location` / `offset` / `length`
//! relative to the model's folder) and inline payloads located in the mapped input file.
//!
//! A location is refused when it is absolute, contains `..`, or resolves (through symlinks)
//! outside the model's folder, and a range is refused when it lies outside its file.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::proto::TensorProto;
use crate::source::MappedSource;

/// Inline payloads at least this large are read from the mapped file with `pread` rather than
/// through the mapping, so that reading them does not make them resident.
const PREAD_THRESHOLD: usize = 1 << 12;

/// Where a model's tensor data lives outside its decoded protobuf: external data files in the
/// model's folder, and the mapped input file that inline payloads point into.
#[derive(Clone, Debug, Default)]
pub struct ExternalStore {
    base_dir: Option<PathBuf>,
    source: Option<Arc<MappedSource>>,
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
            ..ExternalStore::default()
        }
    }

    /// The same store, with inline payloads located in the mapped input file.
    pub fn with_source(mut self, source: Option<MappedSource>) -> ExternalStore {
        self.source = source.map(Arc::new);
        self
    }

    /// Where `raw` lies in the mapped input file, when it does.
    pub fn mapped(&self, raw: &[u8]) -> Option<(&File, u64)> {
        let source = self.source.as_deref()?;
        Some((source.file(), source.offset_of(raw)?))
    }

    /// Counts `raw`, an inline payload, as read in place: the mapped input's pages are dropped
    /// from memory every so often (see [`MappedSource::release`]); nothing for a payload outside
    /// the mapped input.
    pub fn release(&self, raw: &[u8]) {
        if let Some(source) = self.source.as_deref() {
            source.release(raw);
        }
    }

    /// The bytes of tensor `name`'s inline payload; a large one in the mapped input is read with
    /// `pread`.
    pub fn inline_bytes<'r>(&self, name: &str, raw: &'r Bytes) -> Result<Cow<'r, [u8]>> {
        if raw.len() < PREAD_THRESHOLD {
            return Ok(Cow::Borrowed(raw));
        }
        let mut buf = vec![0u8; raw.len()];
        self.read_inline(name, raw, 0, &mut buf)?;
        Ok(Cow::Owned(buf))
    }

    /// Fills `buf` with the bytes of tensor `name`'s inline payload `raw` from offset `at`.
    pub fn read_inline(&self, name: &str, raw: &Bytes, at: usize, buf: &mut [u8]) -> Result<()> {
        match self.mapped(raw) {
            Some((file, offset)) => crate::source::read_exact_at(file, buf, offset + at as u64)
                .map_err(|e| Error::tensor(name, format!("reading the model: {e}"))),
            None => {
                buf.copy_from_slice(&raw[at..at + buf.len()]);
                Ok(())
            }
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

    /// Reads the `expected_len` bytes of an external tensor, after checking its location.
    pub fn read(&self, t: &TensorProto, expected_len: usize) -> Result<Vec<u8>> {
        let (path, offset) = self.locate(t, expected_len)?;
        let (mut file, _) = crate::source::open_regular(&path)?;
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
