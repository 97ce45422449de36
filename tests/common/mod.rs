//! Helpers shared by the integration tests: the binary, fixtures, and small edits of a model.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bnfold::proto::tensor_proto::DataLocation;
use bnfold::proto::{ModelProto, StringStringEntryProto, TensorProto};
use prost::Message;

pub mod build;
pub mod certifying;
pub mod chains;
pub mod equalizing;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn bnfold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bnfold"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// How many BatchNormalization nodes the main graph of `model` holds.
pub fn bn_count(model: &bnfold::Model) -> usize {
    bnfold::op_counts(model.proto.graph.as_ref().unwrap())
        .get("BatchNormalization")
        .copied()
        .unwrap_or(0)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `conv_bn.onnx` with every value inline.
pub fn conv_bn() -> ModelProto {
    bnfold::Model::load(fixture("conv_bn.onnx"))
        .unwrap()
        .materialized()
        .unwrap()
}

pub fn initializer<'m>(model: &'m mut ModelProto, name: &str) -> &'m mut TensorProto {
    model
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .unwrap()
}

/// The first node of `op_type` in the main graph.
pub fn node_mut<'m>(model: &'m mut ModelProto, op_type: &str) -> &'m mut bnfold::proto::NodeProto {
    model
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type() == op_type)
        .unwrap()
}

/// Replaces attribute `name` of `node` with `attribute`.
pub fn set_attribute(
    node: &mut bnfold::proto::NodeProto,
    attribute: bnfold::proto::AttributeProto,
) {
    node.attribute.retain(|a| a.name != attribute.name);
    node.attribute.push(attribute);
}

/// Moves tensor `name`'s bytes to the end of `dir/location`.
pub fn externalize(model: &mut ModelProto, dir: &Path, name: &str, location: &str) {
    let t = initializer(model, name);
    let bytes = t.raw_data.take().unwrap();
    let path = dir.join(location);
    let mut data = std::fs::read(&path).unwrap_or_default();
    let offset = data.len();
    data.extend_from_slice(&bytes);
    std::fs::write(&path, data).unwrap();
    let entry = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    t.external_data = vec![
        entry("location", location.into()),
        entry("offset", offset.to_string()),
        entry("length", bytes.len().to_string()),
    ];
    t.data_location = Some(DataLocation::External as i32);
}

pub fn write(path: &Path, model: &ModelProto) {
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

/// Every file under `dir` and its bytes.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(files(&path));
        } else {
            all.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    all
}

/// A tensor of `code` with `dims`, its packed bytes in `dir/location`, returned by an Identity
/// as graph output `q_out` so that it stays in the model.
pub fn add_passthrough_tensor(
    model: &mut ModelProto,
    dir: &Path,
    code: i32,
    dims: &[i64],
    bytes: &[u8],
    location: &str,
) {
    use bnfold::proto::{type_proto, NodeProto, TypeProto, ValueInfoProto};
    model.ir_version = Some(10);
    let graph = model.graph.as_mut().unwrap();
    graph.initializer.push(TensorProto {
        name: Some("q".into()),
        data_type: Some(code),
        dims: dims.to_vec(),
        raw_data: Some(bytes.to_vec().into()),
        ..Default::default()
    });
    graph.node.push(NodeProto {
        op_type: Some("Identity".into()),
        name: Some("keep_q".into()),
        input: vec!["q".into()],
        output: vec!["q_out".into()],
        ..Default::default()
    });
    graph.output.push(ValueInfoProto {
        name: Some("q_out".into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(code),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    });
    externalize(model, dir, "q", location);
}

/// Fixtures with one forward fold of each kind (BN → Conv padded and not, grouped,
/// ConvTranspose, Flatten/View → Gemm, BN1d → Linear, BN1d → MatMul).
pub const FORWARD_KINDS: [&str; 8] = [
    "torch_relu_bn_conv_pad_op13.onnx",
    "torch_relu_bn_conv_nopad_op13.onnx",
    "torch_relu_bn_conv_grouped_op13.onnx",
    "torch_relu_bn_convtranspose_op13.onnx",
    "torch_head_bn_flatten_linear_op13.onnx",
    "torch_head_bn_view_linear_op13.onnx",
    "torch_bn1d_input_linear_op13.onnx",
    "torch_bn1d_matmul_op13.onnx",
];

/// `model` with tensor `name`'s values edited.
pub fn edited(
    model: &bnfold::Model,
    name: &str,
    edit: impl Fn(&mut Vec<f64>, &[usize], bnfold::tensor::Dtype),
) -> bnfold::Model {
    let mut proto = model.proto.clone();
    let graph = proto.graph.as_mut().unwrap();
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .unwrap();
    let mut value = bnfold::tensor::decode(t, &model.store).unwrap();
    edit(&mut value.data, &value.dims, value.dtype);
    *t = value.to_proto(name);
    bnfold::Model::from_proto(proto, model.store.clone()).unwrap()
}
