//! Loading and writing models: the checks on the way in, atomic and deterministic output.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::external::{self, ExternalStore};
use crate::proto::{
    tensor_proto::DataLocation, GraphProto, ModelProto, StringStringEntryProto, TensorProto,
};
use crate::tensor::{self, proto_dims, proto_dtype};

/// The newest `ir_version` of the vendored `onnx.proto`.
pub const SUPPORTED_IR_VERSION: i64 = crate::proto::Version::IrVersion as i64;

/// An ONNX model and where its external data lives.
#[derive(Clone, Debug)]
pub struct Model {
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// Where external tensor data is read from.
    pub store: ExternalStore,
    /// The file it was loaded from, if any.
    pub source: Option<PathBuf>,
}

/// How [`Model::save`] treats existing files.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions {
    /// Replace an existing output file.
    pub force: bool,
    /// Allow the output to be the model's own source file.
    pub overwrite_input: bool,
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
        };
        model.check()?;
        Ok(model)
    }

    /// Reads and decodes a model file; its folder holds any external data.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let proto = ModelProto::decode(Bytes::from(bytes))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut model = Model::from_proto(proto, ExternalStore::in_dir(dir))?;
        model.source = Some(path.to_path_buf());
        Ok(model)
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
        Ok(self.proto.encode_to_vec())
    }

    /// Writes the model to `path` atomically (temporary file, then rename), in the same layout
    /// it was read: tensors that were external are streamed to data files beside `path`.
    pub fn save(&self, path: impl AsRef<Path>, options: SaveOptions) -> Result<()> {
        let path = path.as_ref();
        if let Some(source) = &self.source {
            if same_file(source, path) && !options.overwrite_input {
                return Err(Error::WouldOverwriteInput(path.to_path_buf()));
            }
        }
        if path.exists()
            && !options.force
            && !self.source.as_deref().is_some_and(|s| same_file(s, path))
        {
            return Err(Error::OutputExists(path.to_path_buf()));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut proto = self.proto.clone();
        let mut data_files = DataFiles::new(&dir, path, &self.store);
        if let Some(g) = proto.graph.as_mut() {
            let mut failure = Ok(());
            visit_tensors_mut(g, &mut |t| {
                if failure.is_ok() && tensor::is_external(t) {
                    failure = data_files.stream(t, &self.store);
                }
            });
            failure?;
        }
        let mut model_file = new_output_file(&dir, path)?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, model_file.as_file_mut());
        write_streaming(&proto, &mut writer)
            .and_then(|_| writer.flush())
            .map_err(|e| Error::io(path, e))?;
        drop(writer);
        model_file
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(path, e))?;
        data_files.persist()?;
        model_file
            .persist(path)
            .map_err(|e| Error::io(path, e.error))?;
        Ok(())
    }
}

/// Writes `proto` without first encoding it whole: the model's other fields, then the graph's,
/// then each initializer with its `raw_data` written straight from its buffer. The fields come
/// in a different order than `encode_to_vec` gives (protobuf allows any order), always the same.
fn write_streaming(proto: &ModelProto, out: &mut impl Write) -> std::io::Result<()> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let mut header = Vec::new();
    let mut shell = proto.clone();
    let graph = shell.graph.take();
    out.write_all(&shell.encode_to_vec())?;
    let Some(graph) = graph else { return Ok(()) };
    encode_key(7, WireType::LengthDelimited, &mut header);
    encode_varint(graph.encoded_len() as u64, &mut header);
    out.write_all(&header)?;
    let mut graph_shell = graph.clone();
    graph_shell.initializer.clear();
    out.write_all(&graph_shell.encode_to_vec())?;
    for t in &graph.initializer {
        let mut head = t.clone();
        let raw = head.raw_data.take();
        header.clear();
        encode_key(5, WireType::LengthDelimited, &mut header);
        encode_varint(t.encoded_len() as u64, &mut header);
        head.encode(&mut header).map_err(std::io::Error::other)?;
        if let Some(raw) = &raw {
            encode_key(9, WireType::LengthDelimited, &mut header);
            encode_varint(raw.len() as u64, &mut header);
        }
        out.write_all(&header)?;
        if let Some(raw) = &raw {
            out.write_all(raw)?;
        }
    }
    Ok(())
}

/// A temporary file in `dir` that will be renamed over `target`: readable like any file the user
/// writes (the permissions of the file it replaces, else 0644), not tempfile's private 0600.
pub fn new_output_file(dir: &Path, target: &Path) -> Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".bnfold-");
    #[cfg(unix)]
    let permissions = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(target)
            .map(|m| m.permissions())
            .unwrap_or_else(|_| std::fs::Permissions::from_mode(0o644))
    };
    #[cfg(unix)]
    builder.permissions(permissions);
    builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Calls `f` on every tensor stored in the graph: initializers and tensor attributes, in
/// subgraphs too, in a fixed order.
pub fn visit_tensors(g: &GraphProto, f: &mut dyn FnMut(&TensorProto)) {
    for t in &g.initializer {
        f(t);
    }
    for node in &g.node {
        for a in &node.attribute {
            a.t.iter().chain(&a.tensors).for_each(&mut *f);
            for sub in a.g.iter().chain(&a.graphs) {
                visit_tensors(sub, f);
            }
        }
    }
}

fn visit_tensors_mut(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for t in &mut g.initializer {
        f(t);
    }
    for node in &mut g.node {
        for a in &mut node.attribute {
            a.t.iter_mut().chain(a.tensors.iter_mut()).for_each(&mut *f);
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                visit_tensors_mut(sub, f);
            }
        }
    }
}

/// The external data files being written beside an output model, one per input location.
struct DataFiles {
    dir: PathBuf,
    prefix: Option<String>,
    files: Vec<(String, tempfile::NamedTempFile, u64)>,
}

impl DataFiles {
    fn new(dir: &Path, model_path: &Path, input: &ExternalStore) -> DataFiles {
        // Writing into the input's own folder must not replace the data files the input still
        // points to: name them after the output model instead.
        let shares_folder = input.base_dir().is_some_and(|b| same_file(b, dir));
        let prefix = shares_folder.then(|| {
            model_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        DataFiles {
            dir: dir.to_path_buf(),
            prefix,
            files: Vec::new(),
        }
    }

    fn stream(&mut self, t: &mut TensorProto, store: &ExternalStore) -> Result<()> {
        let reference = external::external_ref(t)?;
        let len = proto_dims(t)?.iter().product::<usize>() * proto_dtype(t)?.size();
        let bytes = match t.raw_data.take().filter(|r| !r.is_empty()) {
            Some(pending) => pending.to_vec(),
            None => store.read(t, len)?,
        };
        let location = match &self.prefix {
            Some(p) => format!("{p}.{}", reference.location.replace(['/', '\\'], "_")),
            None => reference.location.clone(),
        };
        let slot = match self.files.iter().position(|(l, _, _)| *l == location) {
            Some(i) => i,
            None => {
                let target = self.dir.join(&location);
                let parent = target.parent().unwrap_or(&self.dir).to_path_buf();
                std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
                let file = new_output_file(&parent, &target)?;
                self.files.push((location.clone(), file, 0));
                self.files.len() - 1
            }
        };
        let (_, file, offset) = &mut self.files[slot];
        file.write_all(&bytes)
            .map_err(|e| Error::io(self.dir.join(&location), e))?;
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", location),
            entry("offset", offset.to_string()),
            entry("length", bytes.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        *offset += bytes.len() as u64;
        Ok(())
    }

    fn persist(self) -> Result<()> {
        for (location, file, _) in self.files {
            let target = self.dir.join(&location);
            file.as_file()
                .sync_all()
                .map_err(|e| Error::io(&target, e))?;
            file.persist(&target)
                .map_err(|e| Error::io(&target, e.error))?;
        }
        Ok(())
    }
}
