//! Typed errors of the library. Every variant names the file, node or tensor it is about.

use std::path::PathBuf;

/// Everything that can go wrong while loading, folding, verifying or writing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model (not protobuf, truncated, wrong wire types).
    #[error("not a valid ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The file ends before the model does: a download or copy cut short.
    #[error(
        "not a valid ONNX model: it is cut short, the file ends at byte {size} inside {part}, \
         which runs to byte {needed} (copy or download it again)"
    )]
    Truncated {
        /// Where it ends: `initializer 'w' of the main graph`, `node 'conv'`, `the model`.
        part: String,
        /// The file's size in bytes.
        size: usize,
        /// Where the part it ends inside would end.
        needed: usize,
    },
    /// The file is a Git LFS pointer: the repository was cloned without fetching LFS files.
    #[error(
        "not a valid ONNX model: it is a Git LFS pointer, not the model (fetch it with \
         `git lfs pull`)"
    )]
    LfsPointer,
    /// The model was written by a newer ONNX than the vendored schema knows.
    #[error(
        "model has ir_version {found}, newer than the {supported} this bnfold understands; \
         refusing rather than silently dropping fields it does not know"
    )]
    UnsupportedIrVersion {
        /// The model's `ir_version`.
        found: i64,
        /// The newest `ir_version` of the vendored `onnx.proto`.
        supported: i64,
    },
    /// The model has no graph.
    #[error("model has no graph")]
    MissingGraph,
    /// A tensor's stored data is inconsistent with its type or shape.
    #[error("tensor '{tensor}': {problem}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor uses a data type bnfold cannot read where it needs its values.
    #[error("tensor '{tensor}': unsupported data type {data_type}")]
    UnsupportedDtype {
        /// The tensor's name.
        tensor: String,
        /// The ONNX `TensorProto.DataType` code.
        data_type: i32,
    },
    /// External data that is absolute, escapes the model's folder, or lies outside its file.
    #[error("tensor '{tensor}': external data location '{location}' refused: {problem}")]
    ExternalData {
        /// The tensor's name.
        tensor: String,
        /// The `location` entry as written in the model.
        location: String,
        /// Why it was refused.
        problem: String,
    },
    /// A folded weight has an element that is NaN or infinite once scaled: its source holds one
    /// (when the fold was planned with
    /// [`FoldOptions::defer_weight_check`](crate::FoldOptions::defer_weight_check)), or the
    /// factors scaled it past its dtype's range.
    #[error("tensor '{tensor}': folded element {element} is not finite in {dtype} (scaled past its range)")]
    FoldedNotFinite {
        /// The weight's name.
        tensor: String,
        /// The row-major index of the element.
        element: usize,
        /// Its dtype's name.
        dtype: String,
    },
    /// A node is malformed (missing inputs, attribute of the wrong type, ...).
    #[error("node '{node}' ({op_type}): {problem}")]
    BadNode {
        /// The node's name (or its first output when unnamed).
        node: String,
        /// The node's op type.
        op_type: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The graph is structurally invalid (duplicate names, undefined inputs, cycles).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    /// The output path is the input path and overwriting was not asked for.
    #[error("refusing to overwrite the input file {0}")]
    WouldOverwriteInput(PathBuf),
    /// An output would replace a data file that the input model reads.
    #[error(
        "refusing to write {target}: it is {input}, a data file of the input model (choose \
         another output name or folder)"
    )]
    WouldWriteInputData {
        /// The output that would be written.
        target: PathBuf,
        /// The input's data file it is.
        input: PathBuf,
    },
    /// Two outputs of one run (the model, a data file, the report) would be the same file.
    #[error("{0}: two outputs of this run would be written there")]
    WrittenTwice(PathBuf),
    /// The output exists and overwriting was not asked for.
    #[error("output {0} exists (use --force to overwrite)")]
    OutputExists(PathBuf),
    /// Data given for a graph input (`--input NAME=file.npy`) is unreadable or does not fit.
    #[error("input data {source_file}: {problem}")]
    InputData {
        /// The file, or the input's name.
        source_file: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The verification engine could not run a model.
    #[error("verification: {0}")]
    Verify(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this is [`Error::FoldedNotFinite`], or the failure of a write it stopped.
    pub fn is_folded_not_finite(&self) -> bool {
        match self {
            Error::FoldedNotFinite { .. } => true,
            Error::Io { source, .. } => source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<Error>())
                .is_some_and(Error::is_folded_not_finite),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tensor(tensor: &str, problem: impl Into<String>) -> Self {
        Error::BadTensor {
            tensor: tensor.to_string(),
            problem: problem.into(),
        }
    }
}
