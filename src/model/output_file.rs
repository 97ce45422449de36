//! Creating output files: hidden temporary names beside the target, its permissions kept.

use std::path::Path;

use crate::error::{Error, Result};
/// A temporary file in `dir` that will be renamed over `target`: readable like any file the user
/// writes (the permissions of the file it replaces, else 0644), not tempfile's private 0600.
pub fn new_output_file(dir: &Path, target: &Path) -> Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(crate::staging::prefix());
    #[cfg(unix)]
    builder.permissions(output_permissions(target));
    builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))
}

/// The permissions an output at `target` gets: those of the file it replaces, else 0644.
#[cfg(unix)]
fn output_permissions(target: &Path) -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(target)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::fs::Permissions::from_mode(0o644))
}

/// Creates `staged` with the permissions the file at `target` will need: those of the file it
/// replaces, else 0644 (not a temporary file's private 0600).
pub(super) fn create_output(staged: &Path, target: &Path) -> Result<std::fs::File> {
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(staged)
        .map_err(|e| Error::io(staged, e))?;
    #[cfg(unix)]
    file.set_permissions(output_permissions(target))
        .map_err(|e| Error::io(staged, e))?;
    #[cfg(not(unix))]
    let _ = target;
    Ok(file)
}
