//! Loading and writing models: the checks on the way in, atomic and deterministic output.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::external::{self, ExternalStore};
use crate::folded::FoldedWeights;
use crate::output::{FileId, InputFile};
use crate::proto::{ModelProto, TensorProto};
use crate::scaled::SourceRead;
use crate::source::MappedSource;
use crate::tensor;
use crate::walk::visit_tensors;
use encode::{write_streaming, Output};

mod data_files;
mod encode;
mod output_file;
mod save;
mod truncation;

pub use output_file::new_output_file;
pub use save::{StagedFile, StagedModel};

/// The newest `ir_version` of the vendored `onnx.proto`.
pub const SUPPORTED_IR_VERSION: i64 = crate::proto::Version::IrVersion as i64;

/// An ONNX model and where its tensor data lives.
///
/// A model loaded from a file maps it: payloads are read when needed, not copied at load. After
/// [`crate::fold()`], a folded weight of the main graph is held in `folded`, as its source and
/// per-channel factors, and its values are computed when the model is written; its initializer
/// in `proto` holds only its name, dtype and shape. [`Model::initializer_value`] reads any
/// initializer, folded or not, and [`Model::materialized`] gives a protobuf with every folded
/// value inline.
#[derive(Clone, Debug)]
pub struct Model {
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// Where tensor data outside `proto` is read from: external files, the mapped input.
    pub store: ExternalStore,
    /// The main graph's folded weights, waiting to be written.
    pub folded: FoldedWeights,
    /// The file it was loaded from, if any.
    pub source: Option<PathBuf>,
    /// Every file it was read from: the model file and each external data file, as they were
    /// at load. An output never replaces one of them (see [`crate::output::WritePlan`]).
    pub input_files: Vec<InputFile>,
}

/// Sees each folded weight's bytes as the model is written: in order, a chunk of whole elements
/// at a time (what the readiness figures are measured on, so that no weight is scaled twice).
pub trait FoldedWatcher {
    /// The next bytes of the folded initializer `tensor`, as written, in a buffer the watcher
    /// may keep by swapping in one of its own (any length and contents: the writer writes the
    /// next chunk over it).
    fn written(&mut self, tensor: &str, bytes: &mut Vec<u8>);

    /// How many threads of its own the watcher keeps busy while the model is written: the
    /// writer takes a thread only when a core is left for it beside them and the caller.
    fn busy_threads(&self) -> usize {
        0
    }

    /// How the writer reads the source of the initializer `tensor` (a folded one's source, or
    /// a stored one's payload): in place when the watcher reads it in place too (its pages are
    /// then mapped once, not also copied).
    fn source_read(&self, _tensor: &str) -> SourceRead {
        SourceRead::Copied
    }
}

/// Watching nothing.
impl FoldedWatcher for () {
    fn written(&mut self, _: &str, _: &mut Vec<u8>) {}
}

/// How [`Model::save`] treats existing files.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions {
    /// Replace an existing output file.
    pub force: bool,
    /// Allow the output to be the model's own source file.
    pub overwrite_input: bool,
    /// Flush every written file to disk (`fsync`) before renaming it into place, so the output
    /// survives a power loss, not only a crash of bnfold. Off by default: the rename alone
    /// already means a reader never sees a partial file.
    pub sync: bool,
}

/// Decodes a model, saying why when the bytes are a known kind of not-a-model.
fn decode(bytes: Bytes) -> Result<ModelProto> {
    ModelProto::decode(bytes.clone()).map_err(|e| truncation::diagnose(&bytes).unwrap_or(e.into()))
}

impl Model {
    /// Decodes a model held in memory (external data, if any, is an error when read).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Model> {
        let proto = decode(bytes.into())?;
        Model::from_proto(proto, ExternalStore::none())
    }

    /// Wraps an already decoded model; external data is read relative to `store`.
    pub fn from_proto(proto: ModelProto, store: ExternalStore) -> Result<Model> {
        let model = Model {
            proto,
            store,
            folded: FoldedWeights::default(),
            source: None,
            input_files: Vec::new(),
        };
        model.check()?;
        Ok(model)
    }

    /// Reads and decodes a model file; its folder holds any external data.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let (bytes, source) = MappedSource::open(path)?;
        let proto = decode(bytes)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut model = Model::from_proto(proto, ExternalStore::in_dir(dir).with_source(source))?;
        model.source = Some(path.to_path_buf());
        model.input_files = model.read_files(path);
        Ok(model)
    }

    /// The model file and the data files its external tensors point to (already checked at
    /// load), each with its identity.
    fn read_files(&self, path: &Path) -> Vec<InputFile> {
        let mut files: Vec<InputFile> = FileId::of(path)
            .map(|id| InputFile {
                path: path.to_path_buf(),
                id,
                is_model: true,
            })
            .into_iter()
            .collect();
        let Some(base) = self.store.base_dir() else {
            return files;
        };
        let mut locations = std::collections::BTreeSet::new();
        if let Some(g) = &self.proto.graph {
            visit_tensors(g, &mut |t| {
                if let Ok(r) = external::external_ref(t) {
                    locations.insert(r.location);
                }
            });
        }
        for location in locations {
            if let Ok(path) = external::resolve(base, &location) {
                if let Some(id) = FileId::of(&path) {
                    if !files.iter().any(|f| f.id == id) {
                        files.push(InputFile {
                            path,
                            id,
                            is_model: false,
                        });
                    }
                }
            }
        }
        files
    }

    /// The opset version of the default (`ai.onnx`) domain.
    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| matches!(o.domain(), "" | "ai.onnx"))
            .map_or(1, |o| o.version())
    }

    /// Whether any tensor keeps its data in an external file (a folded one included).
    pub fn has_external_data(&self) -> bool {
        let mut found = self.main_initializers().any(|t| {
            self.folded
                .of(t)
                .is_some_and(|folded| folded.location.is_some())
        });
        if let Some(g) = &self.proto.graph {
            visit_tensors(g, &mut |t| found |= tensor::is_external(t));
        }
        found
    }

    fn check(&self) -> Result<()> {
        let ir = self.proto.ir_version();
        if ir > SUPPORTED_IR_VERSION {
            return Err(Error::UnsupportedIrVersion {
                found: ir,
                supported: SUPPORTED_IR_VERSION,
            });
        }
        let graph = self.proto.graph.as_ref().ok_or(Error::MissingGraph)?;
        crate::validate::model(graph, &self.store)
    }

    /// Encodes the model, all data inline. Fails on external tensors: use [`Model::save`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.has_external_data() {
            return Err(Error::InvalidGraph(
                "the model has external data: write it with Model::save".into(),
            ));
        }
        let mut bytes = Vec::new();
        let mut out = Output::Memory(&mut bytes);
        write_streaming(&self.proto, &self.store, &self.folded, &mut out, &mut ())
            .map_err(|e| Error::InvalidGraph(format!("encoding the model: {e}")))?;
        Ok(bytes)
    }

    /// A copy of the protobuf with every folded tensor's values inline, as a reader of the
    /// protobuf alone (tract) needs it. External tensors stay external.
    pub fn materialized(&self) -> Result<ModelProto> {
        let mut proto = self.proto.clone();
        if let Some(g) = proto.graph.as_mut() {
            for t in &mut g.initializer {
                self.folded.inline(t, &self.store)?;
            }
        }
        Ok(proto)
    }

    /// This model with every folded value inline (itself when nothing is folded): what code
    /// that reads tensors from the protobuf (verification, tract) is given.
    pub fn with_folded_inline(&self) -> Result<std::borrow::Cow<'_, Model>> {
        if self.folded.is_empty() {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        Ok(std::borrow::Cow::Owned(Model {
            proto: self.materialized()?,
            store: self.store.clone(),
            folded: FoldedWeights::default(),
            source: self.source.clone(),
            input_files: self.input_files.clone(),
        }))
    }

    /// The values of the main graph's initializer `name`, folded or stored.
    pub fn initializer_value(&self, name: &str) -> Result<Option<crate::tensor::Tensor>> {
        let Some(t) = self
            .proto
            .graph
            .as_ref()
            .and_then(|g| g.initializer.iter().find(|t| t.name() == name))
        else {
            return Ok(None);
        };
        self.folded.decode(t, &self.store).map(Some)
    }

    /// Bytes of the main graph's folded tensors: what writing the model computes.
    fn folded_bytes(&self) -> usize {
        self.main_initializers()
            .filter_map(|t| self.folded.of(t))
            .map(|f| f.value.len() * f.value.dtype.size())
            .sum()
    }

    fn main_initializers(&self) -> impl Iterator<Item = &TensorProto> {
        self.proto.graph.iter().flat_map(|g| &g.initializer)
    }
}
