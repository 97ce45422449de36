//! The external data files of an output model: planned before anything is written (so the
//! write plan can claim them), then streamed one tensor after the other.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::output_file::create_output;
use crate::error::{Error, Result};
use crate::external::{self, ExternalStore};
use crate::folded::{FoldedTensor, FoldedWeights};
use crate::proto::{tensor_proto::DataLocation, GraphProto, StringStringEntryProto, TensorProto};
use crate::tensor;
use crate::walk::visit_tensors_but_initializers;
use crate::writer::BufferedWriter;
/// The data files an output model will have, known before any is written: one per location of
/// the input, renamed after the output when it is written into the input's own folder.
pub(super) struct DataFilesPlan {
    dir: PathBuf,
    prefix: Option<String>,
    /// Their locations relative to the output's folder, in the order they are first used.
    pub(super) locations: Vec<String>,
}

impl DataFilesPlan {
    pub(super) fn new(
        dir: &Path,
        model_path: &Path,
        input: &ExternalStore,
        graph: Option<&GraphProto>,
        folded: &FoldedWeights,
    ) -> Result<DataFilesPlan> {
        // Writing into the input's own folder must not replace the data files the input still
        // points to: name them after the output model instead (the write plan then refuses
        // any that is still an input's file).
        let shares_folder = input
            .base_dir()
            .is_some_and(|b| crate::output::same_file(b, dir));
        let prefix = shares_folder.then(|| {
            model_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        let mut locations: Vec<String> = Vec::new();
        let mut failure = Ok(());
        let mut add = |location: &str| {
            let location = output_location(prefix.as_deref(), location);
            if !locations.contains(&location) {
                locations.push(location);
            }
        };
        let mut visit = |t: &TensorProto, folded: Option<&FoldedTensor>| {
            if failure.is_err() {
                return;
            }
            match (
                folded.and_then(|f| f.location.as_deref()),
                tensor::is_external(t),
            ) {
                (Some(location), _) => add(location),
                (None, true) => match external::external_ref(t) {
                    Ok(r) => add(&r.location),
                    Err(e) => failure = Err(e),
                },
                (None, false) => {}
            }
        };
        if let Some(g) = graph {
            // The main graph's initializers first, as every walk visits them.
            for t in &g.initializer {
                visit(t, folded.of(t));
            }
            visit_tensors_but_initializers(g, &mut |t| visit(t, None));
        }
        failure?;
        Ok(DataFilesPlan {
            dir: dir.to_path_buf(),
            prefix,
            locations,
        })
    }

    pub(super) fn start(self, staging: &Path) -> DataFiles {
        DataFiles {
            dir: self.dir,
            staging: staging.to_path_buf(),
            prefix: self.prefix,
            files: Vec::new(),
        }
    }
}

/// Where the output's copy of an input data file goes.
fn output_location(prefix: Option<&str>, location: &str) -> String {
    match prefix {
        Some(p) => format!("{p}.{}", location.replace(['/', '\\'], "_")),
        None => location.to_string(),
    }
}

/// The external data files being written beside an output model, one per input location.
pub(super) struct DataFiles {
    dir: PathBuf,
    staging: PathBuf,
    prefix: Option<String>,
    files: Vec<DataFile>,
}

/// One data file being written: its location, the thread writing it and the bytes written so
/// far.
pub(super) struct DataFile {
    location: String,
    writer: BufferedWriter,
    len: u64,
}

impl DataFiles {
    pub(super) fn stream(
        &mut self,
        t: &mut TensorProto,
        store: &ExternalStore,
        folded: Option<&FoldedTensor>,
        watcher: &mut dyn super::FoldedWatcher,
    ) -> Result<()> {
        let len = tensor::stored_len(t)?;
        let (input_location, pending, stored) = match folded {
            Some(f) => (f.location.clone().unwrap_or_default(), Some(&f.value), None),
            None => (
                external::external_ref(t)?.location,
                None,
                Some(store.locate(t, len)?),
            ),
        };
        let location = output_location(self.prefix.as_deref(), &input_location);
        let slot = match self.files.iter().position(|f| f.location == location) {
            Some(i) => i,
            None => {
                let target = self.dir.join(&location);
                let staged = self.staging.join(&location);
                let parent = staged.parent().unwrap_or(&self.staging).to_path_buf();
                std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
                let file = create_output(&staged, &target)?;
                let writer = BufferedWriter::with_spare_core(&file, watcher.busy_threads())
                    .map_err(|e| Error::io(&target, e))?;
                self.files.push(DataFile {
                    location: location.clone(),
                    writer,
                    len: 0,
                });
                self.files.len() - 1
            }
        };
        let DataFile {
            writer,
            len: offset,
            ..
        } = &mut self.files[slot];
        let target_path = self.dir.join(&location);
        writer.preallocate(*offset, len as u64);
        match (pending, stored) {
            (Some(p), _) => {
                p.stream_chunks(store, watcher.source_read(t.name()), &mut |chunk| {
                    writer.write_all(chunk)?;
                    watcher.written(t.name(), chunk);
                    Ok(())
                })?
            }
            (None, Some((source_path, source_offset))) => {
                let (source, _) = crate::source::open_regular(&source_path)?;
                writer
                    .copy_from(&source, source_offset, len as u64)
                    .map_err(|e| Error::io(&target_path, e))?;
            }
            (None, None) => {}
        }
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", location),
            entry("offset", offset.to_string()),
            entry("length", len.to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        t.raw_data = None;
        *offset += len as u64;
        Ok(())
    }

    /// Waits for every data file to be written; their (staged, final) paths.
    pub(super) fn finish(self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let mut paths = Vec::with_capacity(self.files.len());
        for DataFile {
            location, writer, ..
        } in self.files
        {
            let target = self.dir.join(&location);
            writer.finish().map_err(|e| Error::io(&target, e))?;
            paths.push((self.staging.join(&location), target));
        }
        Ok(paths)
    }
}
