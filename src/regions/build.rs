//! The region models: a shape the layer's data input may have, and a model of a few nodes with
//! that input and every other input a constant.

use super::arithmetic::{convert, spell_gemms, Arithmetic};
use crate::attr;
use crate::certificate::Side;
use crate::error::Result;
use crate::external::ExternalStore;
use crate::model::Model;
use crate::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::tensor::{Dtype, Tensor};

/// A shape the layer's data input may have, and whether its first axis is free (samples may be
/// stacked along it: not where a Gemm's C of shape `[M, N]` fixes it, nor where it is transposed).
pub(super) fn input_shape(
    layer: &NodeProto,
    weight: &[usize],
    orig: &Side,
) -> Result<std::result::Result<(Vec<usize>, bool), String>> {
    let ints = |name: &str, n: usize, default: usize| -> Result<Vec<usize>> {
        Ok(attr::ints(layer, name)?
            .map(|v| v.iter().map(|&x| x.max(1) as usize).collect())
            .unwrap_or_else(|| vec![default; n]))
    };
    Ok(Ok(match layer.op_type() {
        "Conv" if weight.len() >= 3 => {
            let spatial = weight.len() - 2;
            let group = attr::int(layer, "group")?.unwrap_or(1).max(1) as usize;
            let (strides, dilations) =
                (ints("strides", spatial, 1)?, ints("dilations", spatial, 1)?);
            let mut shape = vec![1, weight[1] * group];
            for i in 0..spatial {
                shape.push(dilations[i] * (weight[2 + i] - 1) + 1 + 2 * strides[i]);
            }
            (shape, true)
        }
        "ConvTranspose" if weight.len() >= 3 => {
            // Output `(n − 1)·stride + dilation·(k − 1) + 1 + output_padding − pads` must be
            // positive: large pads need a larger input than 3.
            let spatial = weight.len() - 2;
            let (strides, dilations) =
                (ints("strides", spatial, 1)?, ints("dilations", spatial, 1)?);
            let pads: Vec<usize> = attr::ints(layer, "pads")?
                .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
                .unwrap_or_else(|| vec![0; 2 * spatial]);
            let output_padding: Vec<usize> = attr::ints(layer, "output_padding")?
                .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
                .unwrap_or_else(|| vec![0; spatial]);
            let mut shape = vec![1, weight[0]];
            for i in 0..spatial {
                let padded =
                    pads.get(i).copied().unwrap_or(0) + pads.get(i + spatial).copied().unwrap_or(0);
                let at = |v: &[usize], default: usize| v.get(i).copied().unwrap_or(default);
                let covered = at(&dilations, 1) * weight[2 + i].saturating_sub(1)
                    + 1
                    + at(&output_padding, 0);
                let needed = padded.saturating_sub(covered) / at(&strides, 1).max(1) + 2;
                shape.push(needed.max(3));
            }
            (shape, true)
        }
        "Gemm" if weight.len() == 2 => {
            let trans_a = attr::int(layer, "transA")?.unwrap_or(0) != 0;
            let trans_b = attr::int(layer, "transB")?.unwrap_or(0) != 0;
            let k = if trans_b { weight[1] } else { weight[0] };
            // A C of shape [M, N] fixes M.
            let c_rows = match layer.input.get(2).filter(|c| !c.is_empty()) {
                Some(c) => match orig.value(c)? {
                    Ok(c) if c.dims.len() == 2 && c.dims[0] > 1 => Some(c.dims[0]),
                    _ => None,
                },
                None => None,
            };
            let rows = c_rows.unwrap_or(2);
            if trans_a {
                (vec![k, rows], false)
            } else {
                (vec![rows, k], c_rows.is_none())
            }
        }
        "MatMul" if weight.len() == 2 => (vec![2, weight[0]], true),
        other => return Ok(Err(format!("{other} with a weight of shape {weight:?}"))),
    }))
}

/// The constants `nodes` read from outside (every input but `data` and their own outputs),
/// decoded once from `side` for all the region's models.
pub(super) fn region_constants(
    side: &Side,
    nodes: &[&NodeProto],
    data: &str,
) -> Result<std::result::Result<Vec<(String, Tensor)>, String>> {
    let internal: Vec<&str> = nodes
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let mut constants: Vec<(String, Tensor)> = Vec::new();
    for name in nodes.iter().flat_map(|n| &n.input) {
        if name.is_empty()
            || name == data
            || internal.contains(&name.as_str())
            || constants.iter().any(|(n, _)| n == name)
        {
            continue;
        }
        match side.value(name)? {
            Ok(t) => constants.push((name.clone(), t)),
            Err(why) => return Ok(Err(why)),
        }
    }
    Ok(Ok(constants))
}

/// A model of `nodes` alone (of `side`'s model): `data` its input of `shape`, every other
/// outside input one of `constants` (see [`region_constants`]), `output` its output.
#[allow(clippy::too_many_arguments)]
pub(super) fn region_model(
    side: &Side,
    nodes: &[&NodeProto],
    constants: &[(String, Tensor)],
    data: &str,
    shape: &[usize],
    elem_type: Dtype,
    output: &str,
    arithmetic: Arithmetic,
) -> Result<std::result::Result<Model, String>> {
    let widen = match arithmetic {
        // Alpha and beta are applied before the magnitudes are taken.
        Arithmetic::Magnitudes(_) => Arithmetic::Widened(Dtype::F64),
        other => other,
    };
    let mut constants: Vec<(String, Tensor)> = constants
        .iter()
        .map(|(name, t)| (name.clone(), convert(t.clone(), widen)))
        .collect();
    let nodes = spell_gemms(
        nodes.iter().map(|n| (*n).clone()).collect(),
        &mut constants,
        arithmetic,
    )?;
    let initializers = constants
        .into_iter()
        .map(|(name, t)| match arithmetic {
            Arithmetic::Magnitudes(_) => convert(t, arithmetic).to_proto(&name),
            _ => t.to_proto(&name),
        })
        .collect();
    let elem_type = arithmetic.dtype(elem_type).code();
    let tensor_type = |dims: Option<&[usize]>| TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(elem_type),
            shape: dims.map(|d| TensorShapeProto {
                dim: d
                    .iter()
                    .map(|&v| tensor_shape_proto::Dimension {
                        value: Some(tensor_shape_proto::dimension::Value::DimValue(v as i64)),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    };
    let value_info = |name: &str, dims: Option<&[usize]>| ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(tensor_type(dims)),
        ..Default::default()
    };
    let proto = ModelProto {
        // Below IR 4 initializers would have to be inputs too.
        ir_version: Some(side.model.proto.ir_version().max(4)),
        opset_import: side.model.proto.opset_import.clone(),
        graph: Some(GraphProto {
            name: Some("region".into()),
            node: nodes,
            initializer: initializers,
            input: vec![value_info(data, Some(shape))],
            output: vec![value_info(output, None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Model::from_proto(proto, ExternalStore::none()).map_err(|e| e.to_string()))
}

/// One model holding every region of `regions` (each with its data input), the data inputs
/// renamed apart (`<name>#region<k>`) so that regions reading one tensor get shapes of their own;
/// `None` when a region is not a single-input graph.
pub(super) fn merged(regions: &[(&Model, &str)]) -> Option<Model> {
    let first = regions.first()?.0;
    let mut graph = GraphProto {
        name: Some("regions".into()),
        ..Default::default()
    };
    for (k, (model, data)) in regions.iter().enumerate() {
        let g = model.proto.graph.as_ref()?;
        let renamed = format!("{data}#region{k}");
        let [input] = g.input.as_slice() else {
            return None;
        };
        let mut input = input.clone();
        input.name = Some(renamed.clone());
        graph.input.push(input);
        for node in &g.node {
            let mut node = node.clone();
            for i in node.input.iter_mut().filter(|i| i.as_str() == *data) {
                *i = renamed.clone();
            }
            graph.node.push(node);
        }
        for t in &g.initializer {
            if !graph.initializer.iter().any(|u| u.name == t.name) {
                graph.initializer.push(t.clone());
            }
        }
        graph.output.extend(g.output.iter().cloned());
    }
    let proto = ModelProto {
        graph: Some(graph),
        ..first.proto.clone()
    };
    Model::from_proto(proto, ExternalStore::none()).ok()
}
