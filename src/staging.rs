//! Staging names: the hidden files and folders a run writes beside its targets before renaming
//! them into place.
//!
//! Each name records its owner, `.bnfold-<pid>-<start>-<random>`, where `<start>` is the
//! process's start time (so a reused pid is not mistaken for the owner). Every folder this
//! process stages in is listed in one registry before anything is created there, so that a
//! signal handler can remove every entry of this process's prefix in them ([`remove_all`])
//! before the process exits, even one created an instant before the signal, and a later run removes the staging entries of
//! runs that are gone ([`remove_stale`]: killed with SIGKILL, or on a machine that lost power),
//! never one whose owner still runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The start of every staging name.
const STAGING_PREFIX: &str = ".bnfold-";

fn registry() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    static LIVE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The prefix of this process's staging names: `.bnfold-<pid>-<start>-`.
pub fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let pid = std::process::id();
        format!(
            "{STAGING_PREFIX}{pid}-{}-",
            start_time(pid).unwrap_or_default()
        )
    })
}

/// Lists `dir` as a folder this process stages in, before a staging entry is created there.
pub fn watch(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    registry().insert(dir);
}

/// Runs `f` while no signal handler can remove staging entries: renames into place happen
/// here, so a signal during a commit waits for it instead of removing half of it.
pub fn while_held<T>(f: impl FnOnce() -> T) -> T {
    let _held = registry();
    f()
}

/// Removes every staging entry of this process in the folders it stages in (for a signal
/// handler, before exiting). Holds the registry until the process exits, so no commit starts.
pub fn remove_all() {
    let live = registry();
    for dir in live.iter() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix()) {
                remove(&entry.path());
            }
        }
    }
    std::mem::forget(live);
}

fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Removes the staging entries in `dir` whose owning process is gone; returns how many. Entries
/// of live processes, of this one, and names that do not record an owner are left alone.
pub fn remove_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, start)) = name.to_str().and_then(owner) else {
            continue;
        };
        if pid != std::process::id() && !is_running(pid, start) {
            remove(&entry.path());
            removed += 1;
        }
    }
    removed
}

/// The owner recorded in a staging name: `.bnfold-<pid>-<start>-<random>`.
fn owner(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix(STAGING_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let random = parts.next()?;
    (!random.is_empty()).then_some((pid, start))
}

/// Whether process `pid` runs and started at `start`. Where that cannot be told (no `/proc`),
/// every owner counts as running, so nothing is removed.
fn is_running(pid: u32, start: u64) -> bool {
    if !Path::new("/proc/self/stat").exists() {
        return true;
    }
    match start_time(pid) {
        Some(now) => now == start,
        None => Path::new(&format!("/proc/{pid}")).exists(),
    }
}

/// Field 22 of `/proc/<pid>/stat`: the process's start, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_name_records_its_owner() {
        let name = format!("{}abc123", prefix());
        assert_eq!(owner(&name).map(|(pid, _)| pid), Some(std::process::id()));
        assert_eq!(owner(".bnfold-abc123"), None);
        assert_eq!(owner(".bnfold-12-34-"), None);
        assert_eq!(owner("model.onnx"), None);
    }

    #[test]
    fn stale_entries_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join(format!("{}mine", prefix()));
        std::fs::write(&mine, b"x").unwrap();
        // pid 1 runs, but did not start at tick 1 after boot unless this is a very odd machine.
        let reused = dir.path().join(".bnfold-1-1-reused");
        std::fs::create_dir(&reused).unwrap();
        std::fs::write(reused.join("model.onnx"), b"x").unwrap();
        let gone = dir.path().join(format!(".bnfold-{}-5-gone", u32::MAX - 1));
        std::fs::write(&gone, b"x").unwrap();
        let unowned = dir.path().join(".bnfold-oldstyle");
        std::fs::write(&unowned, b"x").unwrap();
        let live_start = start_time(1);
        let removed = remove_stale(dir.path());
        assert!(mine.exists() && unowned.exists() && !gone.exists());
        if live_start.is_some_and(|s| s != 1) {
            assert!(!reused.exists());
            assert_eq!(removed, 2);
        }
    }
}
