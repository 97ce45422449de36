//! The operators constant evaluation computes itself (data movement, casts, arithmetic on
//! shapes), and tract for the rest when every input is a constant.

use super::kernels::{
    binary, broadcast_shape, broadcast_to, cast, checked_numel, concat, gather, map, reshape,
    slice, squeeze, to_dims, transpose, unsqueeze,
};
use super::{constant_node_value, ConstEval};
use crate::attr;
use crate::error::Result;
use crate::proto::NodeProto;
use crate::tensor::{self, Dtype, Tensor};

impl<'a> ConstEval<'a> {
    /// The value of `node`'s first output when every input it needs is a constant.
    pub(super) fn eval(&self, node: &NodeProto, depth: usize) -> Result<Option<Tensor>> {
        let inp = |i| self.input(node, i, depth);
        let value = match node.op_type() {
            "Constant" => constant_node_value(node, self.store)?,
            "Identity" => inp(0)?.map(|t| (*t).clone()),
            "Cast" => match (inp(0)?, attr::int(node, "to")?) {
                (Some(t), Some(to)) => Dtype::from_code(to as i32).map(|d| cast(&t, d)),
                _ => None,
            },
            "CastLike" => {
                let target = node.input.get(1).and_then(|n| self.dtype_at(n, depth));
                match (inp(0)?, target) {
                    (Some(t), Some(d)) => Some(cast(&t, d)),
                    _ => None,
                }
            }
            "Shape" => node
                .input
                .first()
                .and_then(|n| self.static_shape(n))
                .map(|dims| {
                    let rank = dims.len() as i64;
                    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
                    let start = clamp(attr::int(node, "start").ok().flatten().unwrap_or(0));
                    let end = clamp(attr::int(node, "end").ok().flatten().unwrap_or(rank));
                    let dims: Vec<f64> = dims[start..end.max(start)]
                        .iter()
                        .map(|&d| d as f64)
                        .collect();
                    Tensor::new(Dtype::I64, vec![dims.len()], dims)
                }),
            "ConstantOfShape" => match inp(0)? {
                Some(shape) => {
                    let fill = match attr::tensor(node, "value")? {
                        Some(t) => tensor::decode(t, self.store)?,
                        None => Tensor::scalar(Dtype::F32, 0.0),
                    };
                    let dims = to_dims(&shape.as_i64());
                    dims.and_then(|dims| {
                        let n = checked_numel(&dims)?;
                        Some(Tensor::new(fill.dtype, dims, vec![*fill.data.first()?; n]))
                    })
                }
                None => None,
            },
            "Expand" => match (inp(0)?, inp(1)?) {
                (Some(t), Some(shape)) => {
                    let target = to_dims(&shape.as_i64());
                    target
                        .and_then(|s| broadcast_shape(&t.dims, &s))
                        .and_then(|s| broadcast_to(&t, &s))
                }
                _ => None,
            },
            "Reshape" => match (inp(0)?, inp(1)?) {
                (Some(t), Some(shape)) => reshape(&t, &shape.as_i64()),
                _ => None,
            },
            "Transpose" => match inp(0)? {
                Some(t) => transpose(&t, attr::ints(node, "perm")?),
                None => None,
            },
            "Unsqueeze" | "Squeeze" => {
                let axes = if self.opset >= 13 {
                    match inp(1)? {
                        Some(a) => Some(a.as_i64()),
                        None if node.input.len() > 1 && !node.input[1].is_empty() => {
                            return Ok(None)
                        }
                        None => None,
                    }
                } else {
                    attr::ints(node, "axes")?.map(|a| a.to_vec())
                };
                match inp(0)? {
                    Some(t) if node.op_type() == "Unsqueeze" => {
                        unsqueeze(&t, &axes.unwrap_or_default())
                    }
                    Some(t) => squeeze(&t, axes.as_deref()),
                    None => None,
                }
            }
            "Concat" => {
                let mut parts = Vec::new();
                for i in 0..node.input.len() {
                    match inp(i)? {
                        Some(t) => parts.push(t),
                        None => return Ok(None),
                    }
                }
                concat(&parts, attr::int(node, "axis")?.unwrap_or(0))
            }
            "Gather" => match (inp(0)?, inp(1)?) {
                (Some(data), Some(indices)) => {
                    gather(&data, &indices, attr::int(node, "axis")?.unwrap_or(0))
                }
                _ => None,
            },
            "Slice" => {
                let (starts, ends, axes, steps) = if self.opset >= 10 {
                    let get = |i| -> Result<Option<Vec<i64>>> { Ok(inp(i)?.map(|t| t.as_i64())) };
                    let given = |i: usize| node.input.get(i).is_some_and(|n| !n.is_empty());
                    let (axes, steps) = (get(3)?, get(4)?);
                    if (given(3) && axes.is_none()) || (given(4) && steps.is_none()) {
                        return Ok(None);
                    }
                    (get(1)?, get(2)?, axes, steps)
                } else {
                    let list = |n| -> Result<Option<Vec<i64>>> {
                        Ok(attr::ints(node, n)?.map(|v| v.to_vec()))
                    };
                    (list("starts")?, list("ends")?, list("axes")?, None)
                };
                match (inp(0)?, starts, ends) {
                    (Some(t), Some(s), Some(e)) => slice(&t, &s, &e, axes, steps),
                    _ => None,
                }
            }
            op @ ("Add" | "Sub" | "Mul" | "Div") => match (inp(0)?, inp(1)?) {
                (Some(a), Some(b)) => binary(&a, &b, op),
                _ => None,
            },
            "Neg" => inp(0)?.map(|t| map(&t, |v| -v)),
            "Sqrt" => inp(0)?.map(|t| map(&t, f64::sqrt)),
            "Reciprocal" => inp(0)?.map(|t| map(&t, |v| 1.0 / v)),
            _ => self.by_tract(node, depth)?,
        };
        Ok(value)
    }

    /// An op this evaluator does not know, computed by tract when every input is a constant.
    fn by_tract(&self, node: &NodeProto, depth: usize) -> Result<Option<Tensor>> {
        let mut inputs = Vec::with_capacity(node.input.len());
        for name in &node.input {
            inputs.push(match name.is_empty() {
                true => None,
                false => match self.value_at(name, depth)? {
                    Ok(t) => Some(t),
                    Err(_) => return Ok(None),
                },
            });
        }
        if inputs.iter().all(Option::is_none) {
            return Ok(None);
        }
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_deref()).collect();
        Ok(crate::tract_eval::evaluate(node, &refs, self.opset))
    }
}
