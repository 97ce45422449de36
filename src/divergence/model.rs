//! A region's nodes as a model of their own.

use std::collections::BTreeSet;

use super::discover::Region;
use crate::error::Result;
use crate::external::ExternalStore;
use crate::model::Model;
use crate::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::verify::Captured;

/// A region's inputs and outputs, each with the original's value (its dtype and shape).
pub(super) type Typed<'a, 'c> = (&'a [(&'a str, &'c Captured)], &'a [(&'a str, &'c Captured)]);

/// The region's nodes of `graph` (of `model`) as a model of their own: inputs and outputs typed
/// by the original's values, the constants they read as initializers.
pub(super) fn region_model(
    model: &Model,
    graph: &GraphProto,
    region: &Region,
    (inputs, outputs): Typed,
) -> Result<Model> {
    let nodes: Vec<NodeProto> = region
        .nodes
        .iter()
        .map(|&j| graph.node[j].clone())
        .collect();
    let read: BTreeSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut initializers = Vec::new();
    for t in graph.initializer.iter().filter(|t| read.contains(t.name())) {
        let mut t = t.clone();
        if crate::tensor::is_external(&t) {
            t = crate::tensor::decode(&t, &model.store)?.to_proto(t.name());
        }
        initializers.push(t);
    }
    let value_info = |name: &str, typed: Option<&Captured>| ValueInfoProto {
        name: Some(name.to_string()),
        r#type: typed.map(|c| TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(c.dtype.code()),
                shape: Some(TensorShapeProto {
                    dim: c
                        .shape
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let proto = ModelProto {
        ir_version: Some(model.proto.ir_version().max(4)),
        opset_import: model.proto.opset_import.clone(),
        graph: Some(GraphProto {
            name: Some("divergence".into()),
            node: nodes,
            initializer: initializers,
            input: inputs.iter().map(|(n, c)| value_info(n, Some(c))).collect(),
            output: outputs
                .iter()
                .map(|(n, c)| value_info(n, Some(c)))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_proto(proto, ExternalStore::none())
}
