//! The plan of every file a run writes, made before anything is written.
//!
//! A run may write a model, its data files and a report. Each target is claimed in one
//! [`WritePlan`] first, and a claim is refused when the target
//! - is a file some input reads (the input model or one of its data files, by identity: device
//!   and inode, so no other name of it, through a symlink, a hard link or `..`, gets through),
//!   whatever the flags; the one exception is the input model itself under `--in-place`;
//! - is claimed twice in the same run (the report over the model, a data file over the model);
//! - exists and replacing existing files was not asked for (`--force`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file's identity on its file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    device: u64,
    inode: u64,
}

impl FileId {
    /// The identity of the file at `path` (following symlinks), if it exists.
    pub fn of(path: &Path) -> Option<FileId> {
        let metadata = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(FileId {
                device: metadata.dev(),
                inode: metadata.ino(),
            })
        }
        #[cfg(not(unix))]
        {
            use std::hash::{Hash, Hasher};
            let _ = metadata;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            path.canonicalize().ok()?.hash(&mut hasher);
            Some(FileId {
                device: 0,
                inode: hasher.finish(),
            })
        }
    }
}

/// A file an input model reads: the model file itself or one of its data files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// Its path, as the model named it.
    pub path: PathBuf,
    /// Its identity when the model was loaded.
    pub id: FileId,
    /// Whether it is the model file (else a data file).
    pub is_model: bool,
}

/// Every target of a run, checked against the inputs and each other before anything is
/// written (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct WritePlan {
    inputs: Vec<InputFile>,
    targets: Vec<PathBuf>,
    force: bool,
    model_may_replace_input: bool,
}

impl WritePlan {
    /// A plan that replaces existing files only when `force` is set.
    pub fn new(force: bool) -> WritePlan {
        WritePlan {
            force,
            ..WritePlan::default()
        }
    }

    /// Never writes any of `files`.
    pub fn protect(&mut self, files: &[InputFile]) -> &mut WritePlan {
        self.inputs.extend_from_slice(files);
        self
    }

    /// Lets [`WritePlan::claim_model`] replace the input model file (`--in-place`); its data
    /// files stay protected.
    pub fn allow_replacing_input_model(&mut self) -> &mut WritePlan {
        self.model_may_replace_input = true;
        self
    }

    /// Whether existing files may be replaced.
    pub fn force(&self) -> bool {
        self.force
    }

    /// Claims `target` for an output model file.
    pub fn claim_model(&mut self, target: &Path) -> Result<()> {
        self.claim_as(target, self.model_may_replace_input)
    }

    /// Claims `target` for a data file or a report.
    pub fn claim(&mut self, target: &Path) -> Result<()> {
        self.claim_as(target, false)
    }

    fn claim_as(&mut self, target: &Path, may_replace_input_model: bool) -> Result<()> {
        let normalized = normalize(target);
        if self.targets.contains(&normalized) {
            return Err(Error::WrittenTwice(target.to_path_buf()));
        }
        let id = FileId::of(target);
        let input = id.and_then(|id| self.inputs.iter().find(|i| i.id == id));
        match input {
            Some(input) if input.is_model && may_replace_input_model => {}
            Some(input) if input.is_model => {
                return Err(Error::WouldOverwriteInput(target.to_path_buf()))
            }
            Some(input) => {
                return Err(Error::WouldWriteInputData {
                    target: target.to_path_buf(),
                    input: input.path.clone(),
                })
            }
            None if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) => {
                return Err(Error::io(
                    target,
                    std::io::Error::other("is a directory, not a file to write"),
                ))
            }
            None if !self.force && std::fs::symlink_metadata(target).is_ok() => {
                return Err(Error::OutputExists(target.to_path_buf()))
            }
            None => {}
        }
        self.targets.push(normalized);
        Ok(())
    }
}

/// `path` with its folder made absolute and resolved (the file itself may not exist yet), so
/// that two spellings of one target compare equal.
/// Whether `a` and `b` name the same existing file or folder (through links and `..`).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn normalize(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = dir
        .canonicalize()
        .unwrap_or_else(|_| std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()));
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(path: &Path, is_model: bool) -> InputFile {
        InputFile {
            path: path.to_path_buf(),
            id: FileId::of(path).unwrap(),
            is_model,
        }
    }

    #[test]
    fn input_files_are_refused_by_any_name_and_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        let data = dir.path().join("w.bin");
        std::fs::write(&model, b"m").unwrap();
        std::fs::write(&data, b"w").unwrap();
        let link = dir.path().join("link.bin");
        std::fs::hard_link(&data, &link).unwrap();
        let mut plan = WritePlan::new(true);
        plan.protect(&[input(&model, true), input(&data, false)]);
        assert!(matches!(
            plan.claim(&link),
            Err(Error::WouldWriteInputData { .. })
        ));
        assert!(matches!(
            plan.claim_model(&data),
            Err(Error::WouldWriteInputData { .. })
        ));
        assert!(matches!(
            plan.claim(&model),
            Err(Error::WouldOverwriteInput(_))
        ));
        plan.allow_replacing_input_model();
        assert!(plan.claim_model(&model).is_ok());
        assert!(matches!(
            plan.claim(&dir.path().join(".").join("m.onnx")),
            Err(Error::WrittenTwice(_))
        ));
    }

    #[test]
    fn existing_files_need_force_and_targets_are_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("r.json");
        std::fs::write(&existing, b"{}").unwrap();
        let mut plan = WritePlan::new(false);
        assert!(matches!(plan.claim(&existing), Err(Error::OutputExists(_))));
        let fresh = dir.path().join("out.onnx");
        plan.claim_model(&fresh).unwrap();
        assert!(matches!(plan.claim(&fresh), Err(Error::WrittenTwice(_))));
        assert!(WritePlan::new(true).claim(&existing).is_ok());
    }
}
