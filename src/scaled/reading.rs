//! How a scaled tensor's source is read, a chunk at a time: copied (`pread` for a payload in
//! the mapped input or an external file: none of its pages stays mapped), or in place through
//! the input's mapping (no copy; the pages are dropped every so often).

use std::ops::Range;

use super::kernels::{for_each_slice, scratch, Chunk};
use super::{ScaledSource, ScaledTensor, CHUNK};
use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::tensor;

/// How a scaled weight's stored source is read while it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceRead {
    /// Copied a chunk at a time (`pread`): none of its pages stays mapped.
    Copied,
    /// In place through the input's mapping where it lies there (an inline payload), counted
    /// towards dropping the mapping's pages: for a weight whose pages another reader maps anyway.
    InPlace,
}

impl ScaledTensor {
    /// Reads the source a chunk at a time: `f(first element, chunk)`, stored bytes as they are.
    pub(super) fn for_each_source_chunk(
        &self,
        store: &ExternalStore,
        f: &mut dyn FnMut(usize, Chunk) -> Result<()>,
    ) -> Result<()> {
        self.source_chunks(store, 0..self.len(), f)
    }

    /// [`ScaledTensor::for_each_source_chunk`] over the elements `range`.
    pub(super) fn source_chunks(
        &self,
        store: &ExternalStore,
        range: Range<usize>,
        f: &mut dyn FnMut(usize, Chunk) -> Result<()>,
    ) -> Result<()> {
        let numel = self.len();
        let size = self.dtype.size();
        let stored = match &self.source {
            ScaledSource::Values(v) => {
                return for_each_slice(&v.data[range.clone()], range.start, f)
            }
            ScaledSource::Stored(t) => t,
        };
        let mut raw = scratch(|s| std::mem::take(&mut s.raw));
        let mut read_chunks = |read: &mut dyn FnMut(usize, &mut [u8]) -> Result<()>| {
            let mut start = range.start;
            while start < range.end {
                let end = (start + CHUNK).min(range.end);
                raw.resize((end - start) * size, 0);
                read(start * size, &mut raw)?;
                f(start, Chunk::Raw(&raw))?;
                start = end;
            }
            Ok::<(), Error>(())
        };
        if tensor::is_external(stored) {
            let (path, offset) = store.locate(stored, numel * size)?;
            let (file, _) = crate::source::open_regular(&path)?;
            read_chunks(&mut |at, buf| {
                crate::source::read_exact_at(&file, buf, offset + at as u64)
                    .map_err(|e| Error::io(&path, e))
            })?;
            scratch(|s| s.raw = raw);
            return Ok(());
        }
        match stored.raw_data.as_ref().filter(|r| !r.is_empty()) {
            Some(data) if data.len() == numel * size => {
                read_chunks(&mut |at, buf| store.read_inline(stored.name(), data, at, buf))?;
                scratch(|s| s.raw = raw);
                Ok(())
            }
            Some(data) => Err(Error::tensor(
                stored.name(),
                format!(
                    "raw_data has {} bytes, the shape needs {}",
                    data.len(),
                    numel * size
                ),
            )),
            None => {
                let values = tensor::decode(stored, store)?;
                for_each_slice(&values.data[range.clone()], range.start, f)
            }
        }
    }

    /// [`ScaledTensor::for_each_source_chunk`], an inline payload read in place (through the
    /// mapping of the input, without a copy) and counted towards dropping the mapping's pages
    /// from memory.
    pub(super) fn for_each_mapped_chunk(
        &self,
        store: &ExternalStore,
        f: &mut dyn FnMut(usize, Chunk) -> Result<()>,
    ) -> Result<()> {
        let size = self.dtype.size();
        let inline = match &self.source {
            ScaledSource::Stored(t) if !tensor::is_external(t) => t.raw_data.as_ref(),
            _ => None,
        };
        match inline.filter(|raw| raw.len() == self.len() * size) {
            Some(raw) => {
                for (k, chunk) in raw.chunks(CHUNK * size).enumerate() {
                    f(k * CHUNK, Chunk::Raw(chunk))?;
                }
                store.release(raw);
                Ok(())
            }
            None => self.for_each_source_chunk(store, f),
        }
    }
}
