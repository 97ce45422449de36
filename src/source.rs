//! The input model file, mapped read-only: decoding touches only the pages that hold the
//! protobuf structure, and large tensor payloads are read with `pread` when they are needed, so
//! they never become resident in bnfold's memory.
//!
//! The readiness figures read payloads in place, and the pages they made resident are dropped
//! every [`RELEASE_EVERY`] bytes ([`MappedSource::release`]).
//!
//! One of the crate's three `unsafe` places (`isa` calls loops compiled for the vector instructions
//! the processor was found to have, and `readiness::avx512` loads and stores its lanes): mapping a
//! file is sound as long as no other process truncates or rewrites it while bnfold runs, the same
//! contract as every mmap-based reader (ripgrep, tract's own loaders), and so is dropping pages of
//! a mapping nothing writes. bnfold writes its outputs through a temporary file and a rename, so it
//! never modifies a file it has mapped.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::error::{Error, Result};

/// A mapped input file, kept alive while any slice of it is.
#[derive(Debug)]
pub struct MappedSource {
    file: File,
    whole: Bytes,
    /// Bytes read in place since the mapping's pages were last dropped.
    read_in_place: AtomicUsize,
}

/// Payload bytes read in place after which the mapping's pages are dropped from memory.
pub const RELEASE_EVERY: usize = 64 << 20;

impl MappedSource {
    /// Maps `path` and returns its bytes with the handle that locates slices of them in the
    /// file; `None` for an empty file or one that cannot be mapped (it is then read whole).
    pub fn open(path: &Path) -> Result<(Bytes, Option<MappedSource>)> {
        let (file, metadata) = open_regular(path)?;
        if metadata.len() > 0 {
            if let Ok(map) = map_read_only(&file) {
                let _ = map.advise(memmap2::Advice::Random);
                let whole = Bytes::from_owner(map);
                let source = MappedSource {
                    file,
                    whole: whole.clone(),
                    read_in_place: AtomicUsize::new(0),
                };
                return Ok((whole, Some(source)));
            }
        }
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, metadata.len()), &mut bytes)
            .map_err(|e| Error::io(path, e))?;
        Ok((Bytes::from(bytes), None))
    }

    /// The file offset of `slice`, when it lies inside the mapping.
    pub fn offset_of(&self, slice: &[u8]) -> Option<u64> {
        let start = self.whole.as_ptr() as usize;
        let at = slice.as_ptr() as usize;
        (at >= start && at + slice.len() <= start + self.whole.len()).then(|| (at - start) as u64)
    }

    /// Counts `slice` (a slice of the mapping) as read in place; once [`RELEASE_EVERY`] bytes
    /// have been, drops every page of the mapping from this process's memory, so payloads read
    /// in place never stay resident beyond that (a later read maps its pages again from the
    /// page cache, with the same bytes). Not per payload: each drop interrupts the other cores
    /// running bnfold to flush their address translations, which slowed a fold by a third.
    pub fn release(&self, slice: &[u8]) {
        if self.offset_of(slice).is_none() {
            return;
        }
        let read = self.read_in_place.fetch_add(slice.len(), Ordering::Relaxed) + slice.len();
        if read < RELEASE_EVERY {
            return;
        }
        self.read_in_place.store(0, Ordering::Relaxed);
        // SAFETY: the range is the read-only file mapping `whole` owns, which nothing ever
        // writes; dropping its pages only makes the next read fetch them from the file.
        #[allow(unsafe_code)]
        unsafe {
            let at = self.whole.as_ptr() as *mut std::ffi::c_void;
            let _ = rustix::mm::madvise(at, self.whole.len(), rustix::mm::Advice::LinuxDontNeed);
        }
    }

    /// The open file (for `pread`).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens `path` for reading if it is a regular file, and refuses anything else (a device such as
/// `/dev/zero` would be read until memory runs out, a FIFO would block): the file is opened
/// without blocking and then checked, so a file swapped between a check and the open cannot
/// slip through.
pub fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let metadata = file.metadata().map_err(|e| Error::io(path, e))?;
    if !metadata.is_file() {
        let kind = if metadata.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, FIFO or socket has no size to read up to)"
        };
        return Err(Error::io(path, std::io::Error::other(kind)));
    }
    Ok((file, metadata))
}

#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only and private; see the module documentation for the
    // contract on concurrent modification of the input file.
    unsafe { memmap2::Mmap::map(file) }
}

/// Reads `buf.len()` bytes at `offset` without moving any shared file position.
pub(crate) fn read_exact_at(
    file: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut handle = file.try_clone()?;
        handle.seek(SeekFrom::Start(offset))?;
        handle.read_exact(buf)
    }
}
