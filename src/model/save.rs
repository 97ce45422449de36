//! Staging a model beside its target and committing it atomically: temporary names, renames,
//! the report committed with the model, `fsync` on request.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::data_files::DataFilesPlan;
use super::encode::{write_streaming, Output, BACKGROUND_WRITE_MIN_FOLDED};
use super::output_file::{create_output, new_output_file};
use super::{Model, SaveOptions};
use crate::error::{Error, Result};
use crate::output::WritePlan;
use crate::tensor;
use crate::walk::visit_tensors_but_initializers_mut;
use crate::writer::BufferedWriter;
impl Model {
    /// Writes the model to `path` atomically (temporary files, then renames), in the same
    /// layout it was read: tensors that were external are streamed to data files beside `path`.
    pub fn save(&self, path: impl AsRef<Path>, options: SaveOptions) -> Result<()> {
        self.stage(path, options)?.commit()
    }

    /// Writes the model (and its data files, in a staging folder) beside `path` under temporary
    /// names, where they can be read (and verified) before [`StagedModel::commit`] moves them
    /// into place; dropped without a commit, they are removed and nothing is written. Every
    /// target is checked first (see [`crate::output::WritePlan`]): nothing the model was read
    /// from is ever written, and an existing file is replaced only with `options.force`.
    pub fn stage(&self, path: impl AsRef<Path>, options: SaveOptions) -> Result<StagedModel> {
        let mut plan = WritePlan::new(options.force);
        plan.protect(&self.input_files);
        if options.overwrite_input {
            plan.allow_replacing_input_model();
        }
        self.stage_planned(path.as_ref(), options, &mut plan)
    }

    /// [`Model::stage`] within a plan that may hold other targets of the same run (a report) and
    /// other protected inputs; the model file and every data file are claimed in it before
    /// anything is written.
    pub fn stage_planned(
        &self,
        path: &Path,
        options: SaveOptions,
        plan: &mut WritePlan,
    ) -> Result<StagedModel> {
        self.stage_watched(path, options, plan, &mut ())
    }

    /// [`Model::stage_planned`], showing `watcher` each folded weight's bytes as they are
    /// written.
    pub fn stage_watched(
        &self,
        path: &Path,
        options: SaveOptions,
        plan: &mut WritePlan,
        watcher: &mut dyn super::FoldedWatcher,
    ) -> Result<StagedModel> {
        plan.protect(&self.input_files);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::io(path, std::io::Error::other("not a file name")))?;
        plan.claim_model(path)?;
        let mut rewritten = None;
        let data_files = DataFilesPlan::new(
            &dir,
            path,
            &self.store,
            self.proto.graph.as_ref(),
            &self.folded,
        )?;
        for location in &data_files.locations {
            plan.claim(&dir.join(location))?;
        }
        crate::staging::remove_stale(&dir);
        crate::staging::watch(&dir);
        let (staging, model_file, files) = if self.has_external_data() {
            let folder = tempfile::Builder::new()
                .prefix(crate::staging::prefix())
                .tempdir_in(&dir)
                .map_err(|e| Error::io(&dir, e))?;
            let mut data_files = data_files.start(folder.path());
            let proto = rewritten.get_or_insert_with(|| self.proto.clone());
            if let Some(g) = proto.graph.as_mut() {
                for t in &mut g.initializer {
                    let folded = self.folded.of(t).filter(|f| f.location.is_some());
                    if folded.is_some() || tensor::is_external(t) {
                        data_files.stream(t, &self.store, folded, watcher)?;
                    }
                }
                let mut failure = Ok(());
                visit_tensors_but_initializers_mut(g, &mut |t| {
                    if failure.is_ok() && tensor::is_external(t) {
                        failure = data_files.stream(t, &self.store, None, &mut ());
                    }
                });
                failure?;
            }
            let mut files = data_files.finish()?;
            let staged_model = folder.path().join(file_name);
            let model_file = create_output(&staged_model, path)?;
            files.push((staged_model, path.to_path_buf()));
            (
                Staging::Folder {
                    _removed_on_drop: folder,
                },
                model_file,
                files,
            )
        } else {
            let (model_file, temp_path) = new_output_file(&dir, path)?.into_parts();
            let files = vec![(temp_path.to_path_buf(), path.to_path_buf())];
            (Staging::File(temp_path), model_file, files)
        };
        let mut staged = StagedModel {
            staging: Some(staging),
            files,
            sync: options.sync,
            extra: Vec::new(),
        };
        let proto = rewritten.as_ref().unwrap_or(&self.proto);
        let writer = if self.folded_bytes() >= BACKGROUND_WRITE_MIN_FOLDED {
            BufferedWriter::with_spare_core(&model_file, watcher.busy_threads())
        } else {
            BufferedWriter::inline(&model_file)
        }
        .map_err(|e| Error::io(path, e))?;
        let mut output = Output::File(writer);
        write_streaming(proto, &self.store, &self.folded, &mut output, watcher)
            .map_err(|e| Error::io(path, e))?;
        if let Output::File(writer) = output {
            writer.finish().map_err(|e| Error::io(path, e))?;
        }
        if options.sync {
            for (staged, _) in &staged.files {
                std::fs::File::open(staged)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(staged, e))?;
            }
        }
        staged.files.shrink_to_fit();
        Ok(staged)
    }
}

/// Where a staged model waits: a hidden folder beside the target when it has data files, else a
/// hidden file; their folder is watched by [`crate::staging`] before they are created.
#[derive(Debug)]
enum Staging {
    Folder { _removed_on_drop: tempfile::TempDir },
    File(tempfile::TempPath),
}

/// A written model waiting under a temporary name (see [`Model::stage`]).
#[derive(Debug)]
pub struct StagedModel {
    staging: Option<Staging>,
    /// (staged, final) paths; the model file last.
    files: Vec<(PathBuf, PathBuf)>,
    sync: bool,
    /// Other files of the same run (a report), committed after the model.
    extra: Vec<StagedFile>,
}

impl StagedModel {
    /// The staged model file: loadable, its data files beside it under their final names.
    pub fn path(&self) -> &Path {
        &self.files[self.files.len() - 1].0
    }

    /// Commits `file` with the model, after it.
    pub fn attach(&mut self, file: StagedFile) {
        self.extra.push(file);
    }

    /// Moves the data files, then the model file, then any attached file into place (each an
    /// atomic rename). A signal arriving meanwhile waits until every rename is done.
    pub fn commit(mut self) -> Result<()> {
        let extra = std::mem::take(&mut self.extra);
        crate::staging::while_held(|| -> Result<()> {
            for (staged, target) in &self.files {
                if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                std::fs::rename(staged, target).map_err(|e| Error::io(target, e))?;
            }
            if let Some(Staging::File(temp_path)) = self.staging.take() {
                // Renamed: there is nothing left to remove under the temporary name.
                let _ = temp_path.keep();
            }
            for file in extra {
                file.commit_held()?;
            }
            Ok(())
        })?;
        if self.sync {
            if let Some(dir) = self.files.last().and_then(|(_, t)| t.parent()) {
                sync_dir(dir)?;
            }
        }
        Ok(())
    }
}

/// One file (a report) written under a temporary name beside its target, waiting to be renamed
/// into place; dropped without a commit, it is removed.
#[derive(Debug)]
pub struct StagedFile {
    temp: Option<tempfile::TempPath>,
    target: PathBuf,
    sync: bool,
}

impl StagedFile {
    /// Writes `bytes` beside `target` (which the run's [`WritePlan`] has claimed).
    pub fn write(target: &Path, bytes: &[u8], sync: bool) -> Result<StagedFile> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        crate::staging::remove_stale(dir);
        crate::staging::watch(dir);
        let (mut file, temp) = new_output_file(dir, target)?.into_parts();
        let staged = StagedFile {
            temp: Some(temp),
            target: target.to_path_buf(),
            sync,
        };
        file.write_all(bytes)
            .and_then(|_| if sync { file.sync_all() } else { Ok(()) })
            .map_err(|e| Error::io(target, e))?;
        Ok(staged)
    }

    /// Renames the file into place.
    pub fn commit(self) -> Result<()> {
        crate::staging::while_held(|| self.commit_held())
    }

    fn commit_held(mut self) -> Result<()> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        temp.persist(&self.target)
            .map_err(|e| Error::io(&self.target, e.error))?;
        if self.sync {
            if let Some(dir) = self.target.parent() {
                sync_dir(dir)?;
            }
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
