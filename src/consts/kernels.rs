//! The array operations constant evaluation needs, on `ndarray` views of the decoded values:
//! broadcasting, element-wise arithmetic, casts, and the data movement of shape arithmetic
//! (Reshape, Transpose, Unsqueeze, Squeeze, Concat, Gather, Slice) with ONNX's index rules.
//! Every function returns `None` where ONNX would reject the node, never panics.

use std::rc::Rc;

use tract_onnx::prelude::tract_ndarray::{self as nd, ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::MAX_COMPUTED_ELEMENTS;
use crate::tensor::{Dtype, Tensor};

/// The element count of `dims`, when it is within what constant evaluation computes.
pub(super) fn checked_numel(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_COMPUTED_ELEMENTS)
}

/// Non-negative dims from an ONNX shape tensor's values.
pub(super) fn to_dims(v: &[i64]) -> Option<Vec<usize>> {
    v.iter().map(|&d| usize::try_from(d).ok()).collect()
}

fn view(t: &Tensor) -> Option<ArrayViewD<'_, f64>> {
    ArrayViewD::from_shape(IxDyn(&t.dims), &t.data).ok()
}

/// `array`'s elements in logical (row-major) order as a tensor of `dtype`.
fn from_array(dtype: Dtype, array: ArrayD<f64>) -> Tensor {
    Tensor::new(
        dtype,
        array.shape().to_vec(),
        array.iter().copied().collect(),
    )
}

/// `f` applied to every element.
pub(super) fn map(t: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::new(
        t.dtype,
        t.dims.clone(),
        t.data.iter().map(|&v| f(v)).collect(),
    )
}

/// `t` cast to `to`: floats round once (overflow saturates to an infinity), integers truncate,
/// booleans are `v ≠ 0`.
pub(super) fn cast(t: &Tensor, to: Dtype) -> Tensor {
    let convert = |v: f64| match to {
        Dtype::Bool => (v != 0.0) as u8 as f64,
        d if d.is_float() => d.round(v).unwrap_or(match v > 0.0 {
            true => f64::INFINITY,
            false => f64::NEG_INFINITY,
        }),
        _ => v.trunc(),
    };
    Tensor::new(
        to,
        t.dims.clone(),
        t.data.iter().map(|&v| convert(v)).collect(),
    )
}

/// The numpy broadcast of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |k| s[k]);
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// `t` broadcast to `shape` (which must be a broadcast of `t.dims`).
pub fn broadcast_to(t: &Tensor, shape: &[usize]) -> Option<Tensor> {
    checked_numel(shape)?;
    let broadcast = view(t)?.broadcast(IxDyn(shape))?.to_owned();
    Some(from_array(t.dtype, broadcast))
}

/// `Add`, `Sub`, `Mul` or `Div` with numpy broadcasting, each result rounded into `a`'s dtype
/// (integer division truncates).
pub(super) fn binary(a: &Tensor, b: &Tensor, op: &str) -> Option<Tensor> {
    let shape = broadcast_shape(&a.dims, &b.dims)?;
    checked_numel(&shape)?;
    let (x, y) = (view(a)?, view(b)?);
    let (x, y) = (x.broadcast(IxDyn(&shape))?, y.broadcast(IxDyn(&shape))?);
    let int = !a.dtype.is_float();
    let result = nd::Zip::from(&x).and(&y).map_collect(|&x, &y| {
        let v = match op {
            "Add" => x + y,
            "Sub" => x - y,
            "Mul" => x * y,
            _ if int => (x / y).trunc(),
            _ => x / y,
        };
        a.dtype.round(v).unwrap_or(v)
    });
    Some(from_array(a.dtype, result))
}

/// ONNX `Reshape`: `0` copies the input's dim, one `-1` is inferred.
pub(super) fn reshape(t: &Tensor, shape: &[i64]) -> Option<Tensor> {
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate() {
        match d {
            0 => dims.push(*t.dims.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            d => dims.push(usize::try_from(d).ok()?),
        }
    }
    if let Some(i) = infer {
        let known: usize = dims.iter().product();
        if known == 0 || !t.len().is_multiple_of(known) {
            return None;
        }
        dims[i] = t.len() / known;
    }
    (dims.iter().product::<usize>() == t.len()).then(|| Tensor::new(t.dtype, dims, t.data.clone()))
}

/// `t` with its axes permuted (`perm` absent reverses them).
pub fn transpose(t: &Tensor, perm: Option<&[i64]>) -> Option<Tensor> {
    let rank = t.dims.len();
    let perm: Vec<usize> = match perm {
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).ok().filter(|&a| a < rank))
            .collect::<Option<_>>()?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return None;
    }
    Some(from_array(t.dtype, view(t)?.permuted_axes(perm).to_owned()))
}

fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

fn normalize_axes(axes: &[i64], rank: usize) -> Option<Vec<usize>> {
    axes.iter().map(|&a| normalize_axis(a, rank)).collect()
}

/// ONNX `Unsqueeze`: a dim of 1 at each of `axes` (of the output's rank).
pub(super) fn unsqueeze(t: &Tensor, axes: &[i64]) -> Option<Tensor> {
    let mut axes = normalize_axes(axes, t.dims.len() + axes.len())?;
    axes.sort_unstable();
    let mut dims = t.dims.clone();
    for a in axes {
        if a > dims.len() {
            return None;
        }
        dims.insert(a, 1);
    }
    Some(Tensor::new(t.dtype, dims, t.data.clone()))
}

/// ONNX `Squeeze`: the dims of 1 at `axes` removed (every dim of 1 when absent).
pub(super) fn squeeze(t: &Tensor, axes: Option<&[i64]>) -> Option<Tensor> {
    let rank = t.dims.len();
    let drop = match axes {
        Some(a) => normalize_axes(a, rank)?,
        None => (0..rank).filter(|&a| t.dims[a] == 1).collect(),
    };
    if drop.iter().any(|&a| t.dims[a] != 1) {
        return None;
    }
    let dims = (0..rank)
        .filter(|a| !drop.contains(a))
        .map(|a| t.dims[a])
        .collect();
    Some(Tensor::new(t.dtype, dims, t.data.clone()))
}

/// ONNX `Concat` along `axis`: every other dim must agree.
pub(super) fn concat(parts: &[Rc<Tensor>], axis: i64) -> Option<Tensor> {
    let first = parts.first()?;
    let axis = normalize_axis(axis, first.dims.len())?;
    let views: Vec<ArrayViewD<f64>> = parts.iter().map(|p| view(p)).collect::<Option<_>>()?;
    let mut dims = first.dims.clone();
    dims[axis] = parts
        .iter()
        .map(|p| p.dims.get(axis).copied())
        .sum::<Option<usize>>()?;
    checked_numel(&dims)?;
    let joined = nd::concatenate(Axis(axis), &views).ok()?;
    Some(from_array(first.dtype, joined))
}

/// ONNX `Gather` along `axis`: the output's dims are `data`'s before `axis`, `indices`'s, then
/// `data`'s after; negative indices count from the end.
pub(super) fn gather(data: &Tensor, indices: &Tensor, axis: i64) -> Option<Tensor> {
    let axis = normalize_axis(axis, data.dims.len())?;
    let len = data.dims[axis] as i64;
    let picks: Vec<usize> = indices
        .as_i64()
        .iter()
        .map(|&i| usize::try_from(if i < 0 { i + len } else { i }).ok())
        .map(|i| i.filter(|&i| (i as i64) < len))
        .collect::<Option<_>>()?;
    let mut dims = data.dims[..axis].to_vec();
    dims.extend_from_slice(&indices.dims);
    dims.extend_from_slice(&data.dims[axis + 1..]);
    checked_numel(&dims)?;
    let picked = from_array(data.dtype, view(data)?.select(Axis(axis), &picks));
    Some(Tensor::new(data.dtype, dims, picked.data))
}

/// ONNX `Slice`: per axis, `starts` to `ends` (exclusive) by `steps`, negative indices counting
/// from the end and everything clamped to the axis as the operator's definition says.
pub(super) fn slice(
    t: &Tensor,
    starts: &[i64],
    ends: &[i64],
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Option<Tensor> {
    let rank = t.dims.len();
    let axes = match axes {
        Some(a) => normalize_axes(&a, rank)?,
        None => (0..starts.len()).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return None;
    }
    let mut slices: Vec<Slice> = t.dims.iter().map(|_| Slice::from(..)).collect();
    for k in 0..starts.len() {
        let dim = *t.dims.get(axes[k])? as i64;
        let step = steps[k];
        let fix = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (start, end) = (fix(starts[k]), fix(ends[k]));
        slices[axes[k]] = match step {
            0 => return None,
            // Forward: start, start + step, ... below end.
            1.. => Slice::new(
                start.clamp(0, dim) as isize,
                Some(end.clamp(0, dim).max(start.clamp(0, dim)) as isize),
                step as isize,
            ),
            // Backward: start, start + step, ... above end, which ndarray takes as the range
            // (end, start] walked from its back.
            _ => {
                let (start, end) = (start.clamp(-1, dim - 1), end.clamp(-1, dim - 1));
                Slice::new(
                    (end + 1) as isize,
                    Some((start.max(end) + 1) as isize),
                    step as isize,
                )
            }
        };
    }
    let sliced = view(t)?
        .slice_each_axis(|a| slices[a.axis.index()])
        .to_owned();
    Some(from_array(t.dtype, sliced))
}
