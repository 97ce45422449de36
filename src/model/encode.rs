//! Writing a model's protobuf without encoding it whole: folded tensors computed a chunk at a
//! time, stored payloads copied from the input file, the fields always in the same order.

use std::io::Write;

use bytes::Bytes;
use prost::Message;

use crate::external::ExternalStore;
use crate::folded::FoldedWeights;
use crate::proto::{GraphProto, ModelProto, TensorProto};
use crate::scaled::SourceRead;
use crate::writer::BufferedWriter;

use super::FoldedWatcher;
/// Where [`write_streaming`] writes: a file, whose unchanged payloads are read from the input
/// file with `pread` (through its mapping only where the watcher maps them anyway), or memory.
pub(super) enum Output<'a> {
    File(BufferedWriter),
    Memory(&'a mut Vec<u8>),
}

/// Folded bytes from which the model is written on a second thread, computing while it writes.
/// Below, the thread's start and hand-overs cost more than the overlap saves (measured on a
/// 2-core VM: on mobilenet_v3_small, 1.8 MB folded of 10 MB, one thread is 0.7 ms faster; on
/// efficientnet_b0, 13 MB folded of 21 MB, two are 1.5 ms faster).
pub(super) const BACKGROUND_WRITE_MIN_FOLDED: usize = 8 << 20;

/// Payloads at least this large are copied through a buffer of their own (on the writing thread,
/// if there is one); smaller ones are read (not through the mapping, which would make them
/// resident) into the write buffer, beside the bytes around them.
const COPY_THRESHOLD: usize = 1 << 18;

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

    /// Writes a stored payload: large ones in the mapped input are copied from the file, or
    /// written from the mapping when `read` is [`SourceRead::InPlace`] (another reader maps
    /// their pages anyway).
    fn write_payload(
        &mut self,
        raw: &Bytes,
        store: &ExternalStore,
        read: SourceRead,
    ) -> std::io::Result<()> {
        match (&mut *self, store.mapped(raw)) {
            (Output::File(w), Some(_))
                if raw.len() >= COPY_THRESHOLD && read == SourceRead::InPlace =>
            {
                w.write_mapped(raw)
            }
            (Output::File(w), Some((source, offset))) if raw.len() >= COPY_THRESHOLD => {
                w.copy_from(source, offset, raw.len() as u64)
            }
            (Output::File(w), Some((source, offset))) => w.read_from(source, offset, raw.len()),
            _ => self.write_all(raw),
        }
    }
}

/// Writes `proto` without first encoding it whole (each folded weight's bytes shown to
/// `watcher` as they are written): the model's other fields, then the graph's,
/// then each initializer with its payload (stored bytes, or a folded tensor computed a chunk at
/// a time). The fields come in a different order than `encode_to_vec` gives (protobuf allows
/// any order), always the same.
pub(super) fn write_streaming(
    proto: &ModelProto,
    store: &ExternalStore,
    folded: &FoldedWeights,
    out: &mut Output,
    watcher: &mut dyn FoldedWatcher,
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
        // A folded tensor bound for a data file is external here: it was written there.
        let pending = folded.of(t).map(|f| &f.value);
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
        match pending {
            Some(p) => p
                .stream_chunks(store, watcher.source_read(t.name()), &mut |chunk| {
                    out.write_all(chunk)?;
                    watcher.written(t.name(), chunk);
                    Ok(())
                })
                .map_err(std::io::Error::other)?,
            None => {
                if let Some(raw) = &t.raw_data {
                    out.write_payload(raw, store, watcher.source_read(t.name()))?;
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
            &FoldedWeights::default(),
            &mut Output::Memory(&mut bytes),
            &mut (),
        )
        .unwrap();
        assert_eq!(ModelProto::decode(bytes.as_slice()).unwrap(), model);
    }
}
