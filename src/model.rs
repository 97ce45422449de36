//! Loading and writing models: the checks on the way in, atomic and deterministic output.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::external::{self, ExternalStore};
use crate::output::{FileId, InputFile, WritePlan};
use crate::proto::{
    tensor_proto::DataLocation, GraphProto, ModelProto, StringStringEntryProto, TensorProto,
};
use crate::source::MappedSource;
use crate::tensor;
use crate::writer::BufferedWriter;

/// The newest `ir_version` of the vendored `onnx.proto`.
pub const SUPPORTED_IR_VERSION: i64 = crate::proto::Version::IrVersion as i64;

/// An ONNX model and where its tensor data lives.
///
/// A model loaded from a file maps it: payloads are read when needed, not copied at load. After
/// [`crate::fold`], a folded weight's initializer in `proto` holds its name, dtype and shape and
/// an `external_data` entry `bnfold.pending` that refers to the store, where the weight waits as
/// its source and per-channel factors; its values are computed when the model is written.
/// [`crate::tensor::decode`] with `store` reads them, and [`Model::materialized`] gives a
/// protobuf with every value inline.
#[derive(Clone, Debug)]
pub struct Model {
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// Where tensor data outside `proto` is read from: external files, the mapped input,
    /// folded weights waiting to be written.
    pub store: ExternalStore,
    /// The file it was loaded from, if any.
    pub source: Option<PathBuf>,
    /// Every file it was read from: the model file and each external data file, as they were
    /// at load. An output never replaces one of them (see [`crate::output::WritePlan`]).
    pub input_files: Vec<InputFile>,
}

/// Sees the main graph's initializers as a model is written ([`Model::stage_tapped`]) or
/// streamed ([`Model::stream_initializers`]): a folded one as the bytes computed for it, the
/// others as they are stored, for the tap to read itself. A folded weight is thus computed once,
/// for the output and for whatever the tap measures.
pub trait InitializerTap {
    /// Whether the initializer `name` is wanted.
    fn wants(&self, name: &str) -> bool;
    /// An empty buffer for a folded initializer's `len` bytes.
    fn buffer(&mut self, len: usize) -> Vec<u8>;
    /// The folded initializer `name`: its dtype, its shape and the bytes written for it.
    fn folded(
        &mut self,
        name: &str,
        dtype: tensor::Dtype,
        dims: &[usize],
        bytes: Vec<u8>,
    ) -> Result<()>;
    /// An initializer written as stored.
    fn stored(&mut self, t: &TensorProto) -> Result<()>;
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

impl Model {
    /// Decodes a model held in memory (external data, if any, is an error when read).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Model> {
        let proto = ModelProto::decode(bytes.into())?;
        Model::from_proto(proto, ExternalStore::none())
    }

    /// Wraps an already decoded model; external data is read relative to `store`.
    pub fn from_proto(proto: ModelProto, store: ExternalStore) -> Result<Model> {
        let model = Model {
            proto,
            store,
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
        let proto = ModelProto::decode(bytes)?;
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

    /// Whether any tensor keeps its data in an external file.
    pub fn has_external_data(&self) -> bool {
        let mut found = false;
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
        let rewritten = self.with_folded_subgraphs_inline()?;
        let mut bytes = Vec::new();
        let proto = rewritten.as_ref().unwrap_or(&self.proto);
        write_streaming(proto, &self.store, &mut Output::Memory(&mut bytes), None)
            .map_err(|e| Error::InvalidGraph(format!("encoding the model: {e}")))?;
        Ok(bytes)
    }

    /// A copy of the protobuf with every folded tensor's values inline, as a reader of the
    /// protobuf alone (tract) needs it. External tensors stay external.
    pub fn materialized(&self) -> Result<ModelProto> {
        let mut proto = self.proto.clone();
        if let Some(g) = proto.graph.as_mut() {
            materialize(g, &self.store, true)?;
        }
        Ok(proto)
    }

    /// Shows `tap` the main graph's initializers without writing anything: the folded ones
    /// computed once, as writing would.
    pub fn stream_initializers(&self, tap: &mut dyn InitializerTap) -> Result<()> {
        let Some(graph) = &self.proto.graph else {
            return Ok(());
        };
        for t in &graph.initializer {
            if !tap.wants(t.name()) {
                continue;
            }
            match self.store.pending(t)? {
                Some(p) => {
                    let mut bytes = tap.buffer(p.len() * p.dtype.size());
                    p.stream(&self.store, &mut |chunk| {
                        bytes.extend_from_slice(chunk);
                        Ok(())
                    })?;
                    tap.folded(t.name(), p.dtype, &p.dims, bytes)?;
                }
                None => tap.stored(t)?,
            }
        }
        Ok(())
    }

    /// Bytes of the main graph's folded tensors: what writing the model computes.
    fn folded_bytes(&self) -> usize {
        let Some(graph) = &self.proto.graph else {
            return 0;
        };
        graph
            .initializer
            .iter()
            .filter_map(|t| self.store.pending(t).ok().flatten())
            .map(|p| p.len() * p.dtype.size())
            .sum()
    }

    /// When a subgraph holds a folded tensor, a copy of the protobuf with those inline (the main
    /// graph's are left for [`write_streaming`], which writes them a chunk at a time); `None`
    /// when there is nothing to rewrite and the protobuf can be written as it is.
    fn with_folded_subgraphs_inline(&self) -> Result<Option<ModelProto>> {
        let Some(graph) = &self.proto.graph else {
            return Ok(None);
        };
        let mut folded_in_subgraph = false;
        for node in &graph.node {
            for sub in node.attribute.iter().flat_map(crate::graph::attr_graphs) {
                visit_tensors(sub, &mut |t| folded_in_subgraph |= external::is_pending(t));
            }
        }
        if !folded_in_subgraph {
            return Ok(None);
        }
        let mut proto = self.proto.clone();
        if let Some(g) = proto.graph.as_mut() {
            materialize(g, &self.store, false)?;
        }
        Ok(Some(proto))
    }

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
        self.stage_tapped(path, options, plan, None)
    }

    /// [`Model::stage_planned`], showing `tap` each main-graph initializer as it is written.
    pub fn stage_tapped(
        &self,
        path: &Path,
        options: SaveOptions,
        plan: &mut WritePlan,
        mut tap: Option<&mut dyn InitializerTap>,
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
        let mut rewritten = self.with_folded_subgraphs_inline()?;
        let written_proto = rewritten.as_ref().unwrap_or(&self.proto);
        let data_files = DataFilesPlan::new(&dir, path, &self.store, written_proto.graph.as_ref())?;
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
                    if tensor::is_external(t) {
                        data_files.stream(t, &self.store, tap.as_deref_mut())?;
                    }
                }
                let mut failure = Ok(());
                visit_tensors_but_initializers_mut(g, &mut |t| {
                    if failure.is_ok() && tensor::is_external(t) {
                        failure = data_files.stream(t, &self.store, None);
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
            BufferedWriter::background(&model_file)
        } else {
            BufferedWriter::inline(&model_file)
        }
        .map_err(|e| Error::io(path, e))?;
        let mut output = Output::File(writer);
        write_streaming(proto, &self.store, &mut output, tap).map_err(|e| Error::io(path, e))?;
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

/// Replaces folded tensors by their values: in the main graph's initializers too when `all`,
/// else only in subgraphs.
fn materialize(g: &mut GraphProto, store: &ExternalStore, all: bool) -> Result<()> {
    if all {
        for t in &mut g.initializer {
            inline_pending(t, store)?;
        }
    }
    for node in &mut g.node {
        for a in &mut node.attribute {
            for sub in a.g.as_deref_mut().into_iter().chain(a.graphs.iter_mut()) {
                materialize(sub, store, true)?;
            }
        }
    }
    Ok(())
}

fn inline_pending(t: &mut TensorProto, store: &ExternalStore) -> Result<()> {
    if let Some(pending) = store.pending(t)? {
        t.raw_data = Some(pending.to_bytes(store)?.into());
        t.external_data.clear();
        t.data_location = None;
    }
    Ok(())
}

/// Where [`write_streaming`] writes: a file, whose unchanged payloads the kernel copies from the
/// input file, or memory.
enum Output<'a> {
    File(BufferedWriter),
    Memory(&'a mut Vec<u8>),
}

/// Folded bytes from which the model is written on a second thread, computing while it writes.
/// Below, the thread's start and hand-overs cost more than the overlap saves (measured on a
/// 2-core VM: on mobilenet_v3_small, 1.8 MB folded of 10 MB, one thread is 0.7 ms faster; on
/// efficientnet_b0, 13 MB folded of 21 MB, two are 1.5 ms faster).
const BACKGROUND_WRITE_MIN_FOLDED: usize = 8 << 20;

/// Payloads at least this large are copied file to file by the kernel; smaller ones are read
/// (not through the mapping, which would make them resident) into the write buffer.
const KERNEL_COPY_THRESHOLD: usize = 1 << 18;

impl Output<'_> {
    /// Makes room for the `len` bytes the whole output will take.
    fn preallocate(&mut self, len: usize) {
        match self {
            Output::File(w) => w.preallocate(0, len as u64),
            Output::Memory(v) => v.reserve(len),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::File(w) => w.write_all(bytes),
            Output::Memory(v) => {
                v.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Writes a stored payload: large ones in the mapped input go file to file.
    fn write_payload(&mut self, raw: &Bytes, store: &ExternalStore) -> std::io::Result<()> {
        match (&mut *self, store.mapped(raw)) {
            (Output::File(w), Some((source, offset))) if raw.len() >= KERNEL_COPY_THRESHOLD => {
                w.copy_from(source, offset, raw.len() as u64)
            }
            (Output::File(w), Some((source, offset))) => w.read_from(source, offset, raw.len()),
            _ => self.write_all(raw),
        }
    }
}

/// Writes `proto` without first encoding it whole: the model's other fields, then the graph's,
/// then each initializer with its payload (stored bytes, or a folded tensor computed a chunk at
/// a time). The fields come in a different order than `encode_to_vec` gives (protobuf allows
/// any order), always the same.
fn write_streaming(
    proto: &ModelProto,
    store: &ExternalStore,
    out: &mut Output,
    mut tap: Option<&mut (dyn InitializerTap + '_)>,
) -> std::io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    let mut model_head = Vec::new();
    encode_model_except_graph(proto, &mut model_head);
    let Some(graph) = &proto.graph else {
        out.preallocate(model_head.len());
        return out.write_all(&model_head);
    };
    let mut graph_head = Vec::new();
    encode_graph_except_initializers(graph, &mut graph_head);
    let mut heads = Vec::with_capacity(graph.initializer.len());
    let mut graph_len = graph_head.len();
    for t in &graph.initializer {
        let pending = store.pending(t).map_err(std::io::Error::other)?;
        let mut head = TensorProto {
            raw_data: None,
            ..t.clone()
        };
        let payload_len = match (&pending, &t.raw_data) {
            (Some(p), _) => {
                head.external_data.clear();
                head.data_location = None;
                Some(p.len() * p.dtype.size())
            }
            (None, Some(raw)) => Some(raw.len()),
            (None, None) => None,
        };
        let len = head.encoded_len()
            + payload_len.map_or(0, |n| key_len(9) + encoded_len_varint(n as u64) + n);
        graph_len += key_len(5) + encoded_len_varint(len as u64) + len;
        heads.push((head, len, payload_len, pending, t));
    }
    out.preallocate(
        model_head.len() + key_len(7) + encoded_len_varint(graph_len as u64) + graph_len,
    );
    out.write_all(&model_head)?;
    let mut header = Vec::new();
    encode_key(7, WireType::LengthDelimited, &mut header);
    encode_varint(graph_len as u64, &mut header);
    out.write_all(&header)?;
    out.write_all(&graph_head)?;
    drop(graph_head);
    for (head, len, payload_len, pending, t) in heads {
        header.clear();
        encode_key(5, WireType::LengthDelimited, &mut header);
        encode_varint(len as u64, &mut header);
        head.encode(&mut header).map_err(std::io::Error::other)?;
        if let Some(n) = payload_len {
            encode_key(9, WireType::LengthDelimited, &mut header);
            encode_varint(n as u64, &mut header);
        }
        out.write_all(&header)?;
        let tap = tap.as_deref_mut().filter(|tap| tap.wants(t.name()));
        match (pending, tap) {
            (Some(p), Some(tap)) => {
                let mut bytes = tap.buffer(p.len() * p.dtype.size());
                p.stream(store, &mut |chunk| {
                    bytes.extend_from_slice(chunk);
                    out.write_all(chunk)
                })
                .and_then(|()| tap.folded(t.name(), p.dtype, &p.dims, bytes))
                .map_err(std::io::Error::other)?
            }
            (Some(p), None) => p
                .stream(store, &mut |chunk| out.write_all(chunk))
                .map_err(std::io::Error::other)?,
            (None, tap) => {
                // Handed over before the payload is copied, so the tap reads while it is written;
                // an external one was shown to the tap when its data file was written.
                if let Some(tap) = tap.filter(|_| !tensor::is_external(t)) {
                    tap.stored(t).map_err(std::io::Error::other)?;
                }
                if let Some(raw) = &t.raw_data {
                    out.write_payload(raw, store)?;
                }
            }
        }
    }
    Ok(())
}

/// Encodes every field of `m` but its graph, as `encode_to_vec` would with the graph unset.
/// The patterns name every field, so a field added to the schema fails to compile here
/// instead of being dropped.
fn encode_model_except_graph(m: &ModelProto, buf: &mut Vec<u8>) {
    use prost::encoding::{int64, message, string};
    let ModelProto {
        ir_version,
        opset_import,
        producer_name,
        producer_version,
        domain,
        model_version,
        doc_string,
        graph: _,
        metadata_props,
        training_info,
        functions,
        configuration,
    } = m;
    if let Some(v) = ir_version {
        int64::encode(1, v, buf);
    }
    for (tag, field) in [(2, producer_name), (3, producer_version), (4, domain)] {
        if let Some(v) = field {
            string::encode(tag, v, buf);
        }
    }
    if let Some(v) = model_version {
        int64::encode(5, v, buf);
    }
    if let Some(v) = doc_string {
        string::encode(6, v, buf);
    }
    message::encode_repeated(8, opset_import, buf);
    message::encode_repeated(14, metadata_props, buf);
    message::encode_repeated(20, training_info, buf);
    message::encode_repeated(25, functions, buf);
    message::encode_repeated(26, configuration, buf);
}

/// Encodes every field of `g` but its initializers, as `encode_to_vec` would without them.
fn encode_graph_except_initializers(g: &GraphProto, buf: &mut Vec<u8>) {
    use prost::encoding::{message, string};
    let GraphProto {
        node,
        name,
        initializer: _,
        sparse_initializer,
        doc_string,
        input,
        output,
        value_info,
        quantization_annotation,
        metadata_props,
    } = g;
    message::encode_repeated(1, node, buf);
    if let Some(v) = name {
        string::encode(2, v, buf);
    }
    if let Some(v) = doc_string {
        string::encode(10, v, buf);
    }
    message::encode_repeated(11, input, buf);
    message::encode_repeated(12, output, buf);
    message::encode_repeated(13, value_info, buf);
    message::encode_repeated(14, quantization_annotation, buf);
    message::encode_repeated(15, sparse_initializer, buf);
    message::encode_repeated(16, metadata_props, buf);
}

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
fn create_output(staged: &Path, target: &Path) -> Result<std::fs::File> {
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

/// Calls `f` on every tensor stored in the graph: initializers and tensor attributes, in
/// subgraphs too, in a fixed order.
pub fn visit_tensors(g: &GraphProto, f: &mut dyn FnMut(&TensorProto)) {
    for t in &g.initializer {
        f(t);
    }
    for s in &g.sparse_initializer {
        s.values.iter().chain(&s.indices).for_each(&mut *f);
    }
    for node in &g.node {
        for a in &node.attribute {
            a.t.as_deref()
                .into_iter()
                .chain(&a.tensors)
                .for_each(&mut *f);
            for s in a
                .sparse_tensor
                .as_deref()
                .into_iter()
                .chain(&a.sparse_tensors)
            {
                s.values.iter().chain(&s.indices).for_each(&mut *f);
            }
            for sub in a.g.as_deref().into_iter().chain(&a.graphs) {
                visit_tensors(sub, f);
            }
        }
    }
}

fn visit_tensors_mut(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for t in &mut g.initializer {
        f(t);
    }
    visit_tensors_but_initializers_mut(g, f);
}

/// [`visit_tensors_mut`] but for the graph's own initializers (those of subgraphs included).
fn visit_tensors_but_initializers_mut(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for s in &mut g.sparse_initializer {
        s.values
            .iter_mut()
            .chain(s.indices.iter_mut())
            .for_each(&mut *f);
    }
    for node in &mut g.node {
        for a in &mut node.attribute {
            a.t.as_deref_mut()
                .into_iter()
                .chain(a.tensors.iter_mut())
                .for_each(&mut *f);
            for s in a
                .sparse_tensor
                .as_deref_mut()
                .into_iter()
                .chain(a.sparse_tensors.iter_mut())
            {
                s.values
                    .iter_mut()
                    .chain(s.indices.iter_mut())
                    .for_each(&mut *f);
            }
            for sub in a.g.as_deref_mut().into_iter().chain(a.graphs.iter_mut()) {
                visit_tensors_mut(sub, f);
            }
        }
    }
}

/// The data files an output model will have, known before any is written: one per location of
/// the input, renamed after the output when it is written into the input's own folder.
struct DataFilesPlan {
    dir: PathBuf,
    prefix: Option<String>,
    /// Their locations relative to the output's folder, in the order they are first used.
    locations: Vec<String>,
}

impl DataFilesPlan {
    fn new(
        dir: &Path,
        model_path: &Path,
        input: &ExternalStore,
        graph: Option<&GraphProto>,
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
        if let Some(g) = graph {
            visit_tensors(g, &mut |t| {
                if failure.is_err() || !tensor::is_external(t) {
                    return;
                }
                match external::external_ref(t) {
                    Ok(r) => {
                        let location = output_location(prefix.as_deref(), &r.location);
                        if !locations.contains(&location) {
                            locations.push(location);
                        }
                    }
                    Err(e) => failure = Err(e),
                }
            });
        }
        failure?;
        Ok(DataFilesPlan {
            dir: dir.to_path_buf(),
            prefix,
            locations,
        })
    }

    fn start(self, staging: &Path) -> DataFiles {
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
struct DataFiles {
    dir: PathBuf,
    staging: PathBuf,
    prefix: Option<String>,
    files: Vec<DataFile>,
}

/// One data file being written: its location, the thread writing it and the bytes written so
/// far.
struct DataFile {
    location: String,
    writer: BufferedWriter,
    len: u64,
}

impl DataFiles {
    fn stream(
        &mut self,
        t: &mut TensorProto,
        store: &ExternalStore,
        tap: Option<&mut (dyn InitializerTap + '_)>,
    ) -> Result<()> {
        let tap = tap.filter(|tap| tap.wants(t.name()));
        let reference = external::external_ref(t)?;
        let len = tensor::stored_len(t)?;
        let pending = store.pending(t)?;
        let stored = match &pending {
            Some(_) => None,
            None => Some(store.locate(t, len)?),
        };
        let location = output_location(self.prefix.as_deref(), &reference.location);
        let slot = match self.files.iter().position(|f| f.location == location) {
            Some(i) => i,
            None => {
                let target = self.dir.join(&location);
                let staged = self.staging.join(&location);
                let parent = staged.parent().unwrap_or(&self.staging).to_path_buf();
                std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
                let file = create_output(&staged, &target)?;
                let writer =
                    BufferedWriter::background(&file).map_err(|e| Error::io(&target, e))?;
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
            (Some(p), _) => match tap {
                Some(tap) => {
                    let mut bytes = tap.buffer(p.len() * p.dtype.size());
                    p.stream(store, &mut |chunk| {
                        bytes.extend_from_slice(chunk);
                        writer.write_all(chunk)
                    })?;
                    tap.folded(t.name(), p.dtype, &p.dims, bytes)?;
                }
                None => p.stream(store, &mut |chunk| writer.write_all(chunk))?,
            },
            (None, Some((source_path, source_offset))) => {
                if let Some(tap) = tap {
                    tap.stored(t)?;
                }
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
    fn finish(self) -> Result<Vec<(PathBuf, PathBuf)>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        DeviceConfigurationProto, FunctionProto, NodeProto, OperatorSetIdProto, SparseTensorProto,
        StringStringEntryProto, TensorAnnotation, TrainingInfoProto, ValueInfoProto,
    };

    fn entry(key: &str) -> StringStringEntryProto {
        StringStringEntryProto {
            key: Some(key.into()),
            value: Some("v".into()),
        }
    }

    fn every_graph_field() -> GraphProto {
        GraphProto {
            node: vec![NodeProto {
                op_type: Some("Relu".into()),
                ..Default::default()
            }],
            name: Some("g".into()),
            initializer: vec![],
            sparse_initializer: vec![SparseTensorProto::default()],
            doc_string: Some("doc".into()),
            input: vec![ValueInfoProto {
                name: Some("x".into()),
                ..Default::default()
            }],
            output: vec![ValueInfoProto {
                name: Some("y".into()),
                ..Default::default()
            }],
            value_info: vec![ValueInfoProto {
                name: Some("z".into()),
                ..Default::default()
            }],
            quantization_annotation: vec![TensorAnnotation {
                tensor_name: Some("x".into()),
                ..Default::default()
            }],
            metadata_props: vec![entry("graph")],
        }
    }

    #[test]
    fn partial_encoders_match_prost_on_every_field() {
        let graph = every_graph_field();
        let mut ours = Vec::new();
        encode_graph_except_initializers(&graph, &mut ours);
        assert_eq!(ours, graph.encode_to_vec());

        let model = ModelProto {
            ir_version: Some(10),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            producer_name: Some("p".into()),
            producer_version: Some("1".into()),
            domain: Some("d".into()),
            model_version: Some(3),
            doc_string: Some("doc".into()),
            graph: None,
            metadata_props: vec![entry("model")],
            training_info: vec![TrainingInfoProto::default()],
            functions: vec![FunctionProto {
                name: Some("f".into()),
                ..Default::default()
            }],
            configuration: vec![DeviceConfigurationProto {
                name: Some("c".into()),
                ..Default::default()
            }],
        };
        let mut ours = Vec::new();
        encode_model_except_graph(&model, &mut ours);
        assert_eq!(ours, model.encode_to_vec());
    }

    #[test]
    fn streaming_write_decodes_to_the_same_model() {
        let mut graph = every_graph_field();
        graph.initializer = vec![TensorProto {
            name: Some("w".into()),
            dims: vec![2],
            data_type: Some(1),
            raw_data: Some(bytes::Bytes::from_static(&[0, 0, 128, 63, 0, 0, 0, 64])),
            ..Default::default()
        }];
        let model = ModelProto {
            ir_version: Some(10),
            graph: Some(graph),
            ..Default::default()
        };
        let mut bytes = Vec::new();
        write_streaming(
            &model,
            &ExternalStore::none(),
            &mut Output::Memory(&mut bytes),
            None,
        )
        .unwrap();
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), model);
    }
}
