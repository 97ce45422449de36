//! Why bytes that do not decode are not a model, in terms a user can act on: a Git LFS
//! pointer checked out instead of the model, or a file cut short (a partial download or
//! copy), with the tensor or node it ends inside.
//!
//! The walk reads protobuf's wire format by hand, only as far as the bytes go: the first
//! length-delimited field of `ModelProto` that runs past the end, then inside the graph the
//! initializer or node that does, then that message's name (written before its data, so it is
//! there when the data is cut).

use crate::error::Error;

/// `ModelProto.graph`, `GraphProto.node`, `GraphProto.initializer`,
/// `GraphProto.sparse_initializer`, `NodeProto.name`, `TensorProto.name`.
const MODEL_GRAPH: u64 = 7;
const GRAPH_NODE: u64 = 1;
const GRAPH_INITIALIZER: u64 = 5;
const GRAPH_SPARSE_INITIALIZER: u64 = 15;
const NODE_NAME: u64 = 3;
const TENSOR_NAME: u64 = 8;
const SPARSE_VALUES: u64 = 1;

/// The error for `bytes`, which prost could not decode, when a cause is recognised.
pub(super) fn diagnose(bytes: &[u8]) -> Option<Error> {
    if bytes.starts_with(b"version https://git-lfs.github.com/spec/") {
        return Some(Error::LfsPointer);
    }
    // Only a file that reads as a model up to its graph is called cut short: random bytes
    // or another format are just not a model.
    let graph = overrun(bytes, is_model_field)?;
    if graph.len > MAX_MESSAGE {
        return None;
    }
    if graph.field != MODEL_GRAPH {
        let part = match graph.field {
            8 => "the opset imports",
            25 => "the model-local functions",
            _ => "the model's header",
        };
        return Some(truncated(part.to_string(), bytes.len(), graph.end()));
    }
    let part = match overrun(graph.available, |_, _| true) {
        Some(inner) => {
            let part = match inner.field {
                GRAPH_INITIALIZER => format!("initializer {}", name(inner.available, TENSOR_NAME)),
                GRAPH_SPARSE_INITIALIZER => {
                    let values = field(inner.available, SPARSE_VALUES).unwrap_or_default();
                    format!("sparse initializer {}", name(values, TENSOR_NAME))
                }
                GRAPH_NODE => format!("node {}", name(inner.available, NODE_NAME)),
                _ => "the main graph".to_string(),
            };
            let end = graph.body_at + inner.end();
            return Some(truncated(part, bytes.len(), end));
        }
        None => "the main graph".to_string(),
    };
    Some(truncated(part, bytes.len(), graph.end()))
}

/// Protobuf's limit on a message's size: a longer declared length is garbage, not a cut.
const MAX_MESSAGE: usize = i32::MAX as usize;

/// A field `ModelProto` has, with its wire type (0 varint, 2 length-delimited).
fn is_model_field(number: u64, wire: u64) -> bool {
    match number {
        1 | 5 => wire == 0,
        2 | 3 | 4 | 6 | 7 | 8 | 14 | 20 | 25 | 26 => wire == 2,
        _ => false,
    }
}

fn truncated(part: String, size: usize, needed: usize) -> Error {
    Error::Truncated { part, size, needed }
}

/// A length-delimited field whose declared length runs past the bytes there are.
struct Overrun<'a> {
    field: u64,
    /// Where its body starts.
    body_at: usize,
    /// Its declared length.
    len: usize,
    /// The part of its body that is there.
    available: &'a [u8],
}

impl Overrun<'_> {
    fn end(&self) -> usize {
        self.body_at.saturating_add(self.len)
    }
}

/// One field of a message: its number and wire type, and where its body (length-delimited
/// fields) or its value lies.
enum Step {
    /// A whole field, the next one starting at `next`; `body` for a length-delimited one.
    Whole {
        tag: u64,
        body: Option<(usize, usize)>,
        next: usize,
    },
    /// A length-delimited field declaring `len` bytes from `body_at`, past the end of `buf`.
    Cut {
        tag: u64,
        body_at: usize,
        len: usize,
    },
}

/// The field of the message in `buf` starting at `at`; `None` when it is malformed (a cut
/// varint, an unknown wire type).
fn step(buf: &[u8], at: usize) -> Option<Step> {
    let (tag, at) = varint(buf, at)?;
    let (body, next) = match tag & 7 {
        0 => (None, varint(buf, at)?.1),
        1 => (None, at.checked_add(8)?),
        5 => (None, at.checked_add(4)?),
        2 => {
            let (len, body_at) = varint(buf, at)?;
            let len = usize::try_from(len).ok()?;
            match body_at.checked_add(len) {
                Some(end) if end <= buf.len() => (Some((body_at, end)), end),
                _ => return Some(Step::Cut { tag, body_at, len }),
            }
        }
        _ => return None,
    };
    Some(Step::Whole { tag, body, next })
}

/// The first field of the message in `buf` that runs past its end, if the fields before it
/// are well formed and `accept`ed (field number, wire type).
fn overrun(buf: &[u8], accept: impl Fn(u64, u64) -> bool) -> Option<Overrun<'_>> {
    let mut at = 0;
    while at < buf.len() {
        let found = step(buf, at)?;
        let tag = match found {
            Step::Whole { tag, .. } | Step::Cut { tag, .. } => tag,
        };
        if !accept(tag >> 3, tag & 7) {
            return None;
        }
        match found {
            Step::Whole { next, .. } => at = next,
            Step::Cut { tag, body_at, len } => {
                return Some(Overrun {
                    field: tag >> 3,
                    body_at,
                    len,
                    available: &buf[body_at.min(buf.len())..],
                })
            }
        }
    }
    None
}

/// The body of the first whole length-delimited field `number` of the message in `buf`.
fn field(buf: &[u8], number: u64) -> Option<&[u8]> {
    let mut at = 0;
    while at < buf.len() {
        match step(buf, at)? {
            Step::Whole {
                tag,
                body: Some((start, end)),
                ..
            } if tag >> 3 == number => return buf.get(start..end),
            Step::Whole { next, .. } => at = next,
            Step::Cut { .. } => return None,
        }
    }
    None
}

/// `'name'`, or `(unnamed)` when the name is missing or cut.
fn name(message: &[u8], number: u64) -> String {
    match field(message, number).map(std::str::from_utf8) {
        Some(Ok(name)) if !name.is_empty() => format!("'{name}'"),
        _ => "(unnamed)".to_string(),
    }
}

/// A varint at `at`: its value and where the next byte is.
fn varint(buf: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}
