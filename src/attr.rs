//! Typed access to node attributes; every error names the node, its op and the attribute.

use crate::error::{Error, Result};
use crate::graph::node_label;
use crate::proto::{attribute_proto::AttributeType, AttributeProto, NodeProto, TensorProto};

/// Errors about `node`, naming it and its op.
pub fn node_error(node: &NodeProto, problem: impl Into<String>) -> Error {
    Error::BadNode {
        node: node_label(node),
        op_type: node.op_type().to_string(),
        problem: problem.into(),
    }
}

fn find<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn checked<'a>(
    node: &'a NodeProto,
    name: &str,
    expected: AttributeType,
) -> Result<Option<&'a AttributeProto>> {
    match find(node, name) {
        Some(a) if a.r#type.is_some() && a.r#type() != expected => Err(node_error(
            node,
            format!(
                "attribute '{name}' is not of type {}",
                expected.as_str_name()
            ),
        )),
        other => Ok(other),
    }
}

/// An integer attribute.
pub fn int(node: &NodeProto, name: &str) -> Result<Option<i64>> {
    Ok(checked(node, name, AttributeType::Int)?.and_then(|a| a.i))
}

/// A float attribute.
pub fn float(node: &NodeProto, name: &str) -> Result<Option<f32>> {
    Ok(checked(node, name, AttributeType::Float)?.and_then(|a| a.f))
}

/// A list-of-integers attribute.
pub fn ints<'a>(node: &'a NodeProto, name: &str) -> Result<Option<&'a [i64]>> {
    Ok(checked(node, name, AttributeType::Ints)?.map(|a| a.ints.as_slice()))
}

/// A list-of-floats attribute.
pub fn floats<'a>(node: &'a NodeProto, name: &str) -> Result<Option<&'a [f32]>> {
    Ok(checked(node, name, AttributeType::Floats)?.map(|a| a.floats.as_slice()))
}

/// A string attribute.
pub fn string(node: &NodeProto, name: &str) -> Result<Option<String>> {
    Ok(checked(node, name, AttributeType::String)?
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned()))
}

/// A tensor attribute.
pub fn tensor<'a>(node: &'a NodeProto, name: &str) -> Result<Option<&'a TensorProto>> {
    Ok(checked(node, name, AttributeType::Tensor)?.and_then(|a| a.t.as_deref()))
}

/// Whether the attribute is present at all.
pub fn has(node: &NodeProto, name: &str) -> bool {
    find(node, name).is_some()
}

/// Sets a float attribute, replacing any previous value.
pub fn set_float(node: &mut NodeProto, name: &str, value: f32) {
    node.attribute.retain(|a| a.name() != name);
    node.attribute.push(AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    });
}
