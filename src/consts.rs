//! Values known before the model runs: initializers, `Constant` nodes, and small subgraphs whose
//! result depends only on constants, types or static shapes (torch's dynamo exporter computes a
//! zero Conv bias as `Expand(CastLike(0, x), Shape(W)[0:1])`).

use foldhash::HashMap;
use std::cell::RefCell;
use std::rc::Rc;

use crate::attr;
use crate::error::Result;
use crate::external::ExternalStore;
use crate::folded::{FoldedTensor, FoldedWeights};
use crate::graph::GraphIndex;
use crate::proto::NodeProto;
use crate::tensor::{self, Dtype, Tensor};

/// Why a tensor is not a constant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotConstant {
    /// An initializer also listed as a graph input (IR ≥ 4): the caller can override it.
    OverridableInput(String),
    /// Computed at run time from this tensor.
    Runtime(String),
    /// Stored as a `sparse_initializer`, which bnfold does not densify.
    Sparse(String),
}

/// Largest constant bnfold computes from a subgraph, in elements.
const MAX_COMPUTED_ELEMENTS: usize = 1 << 26;
/// Deepest chain of constant ops followed.
const MAX_DEPTH: usize = 64;

/// Evaluates constant tensors of one graph, memoized.
pub struct ConstEval<'a> {
    index: &'a GraphIndex<'a>,
    store: &'a ExternalStore,
    folded: Option<&'a FoldedWeights>,
    opset: i64,
    inputs_are_constants: bool,
    cache: RefCell<HashMap<String, std::result::Result<Rc<Tensor>, NotConstant>>>,
}

type Lookup = std::result::Result<Rc<Tensor>, NotConstant>;

impl<'a> ConstEval<'a> {
    /// An evaluator over `index`; `inputs_are_constants` treats initializers that are also graph
    /// inputs as constants (the spec's reading for IR < 4, or the user's choice).
    pub fn new(
        index: &'a GraphIndex<'a>,
        store: &'a ExternalStore,
        opset: i64,
        inputs_are_constants: bool,
    ) -> Self {
        ConstEval {
            index,
            store,
            folded: None,
            opset,
            inputs_are_constants,
            cache: RefCell::new(HashMap::default()),
        }
    }

    /// The stored tensor behind `name` when it is one, undecoded: an initializer (unless a graph
    /// input can override it) or a `Constant` node's `value`. `None` when `name` is computed
    /// or not constant: ask [`ConstEval::value`].
    pub fn stored(
        &self,
        name: &str,
    ) -> Result<Option<std::result::Result<&'a crate::proto::TensorProto, NotConstant>>> {
        let index = self.index;
        if let Some(t) = index.initializer(name) {
            if index.is_graph_input(name) && !self.inputs_are_constants {
                return Ok(Some(Err(NotConstant::OverridableInput(name.to_string()))));
            }
            return Ok(Some(Ok(t)));
        }
        let Some(producer) = index.producer(name) else {
            return Ok(None);
        };
        let node = index.node(producer);
        if node.op_type() == "Constant" && matches!(node.domain(), "" | "ai.onnx") {
            return Ok(attr::tensor(node, "value")?.map(Ok));
        }
        Ok(None)
    }

    /// The same evaluator, reading the graph's own initializers that `folded` holds as folded.
    pub fn with_folded(mut self, folded: &'a FoldedWeights) -> Self {
        self.folded = Some(folded);
        self
    }

    /// The folded tensor behind the graph's own initializer `name`, if a fold rewrote it.
    pub fn folded(&self, name: &str) -> Option<&'a FoldedTensor> {
        match self.index.is_own_initializer(name) {
            true => self
                .folded
                .zip(self.index.initializer(name))
                .and_then(|(f, t)| f.of(t)),
            false => None,
        }
    }

    /// The store tensor data is read through.
    pub fn store(&self) -> &'a ExternalStore {
        self.store
    }

    /// The value of `name`, or why it is not a constant.
    pub fn value(&self, name: &str) -> Result<Lookup> {
        self.value_at(name, 0)
    }

    fn value_at(&self, name: &str, depth: usize) -> Result<Lookup> {
        if let Some(hit) = self.cache.borrow().get(name) {
            return Ok(hit.clone());
        }
        let found = self.compute(name, depth)?;
        self.cache
            .borrow_mut()
            .insert(name.to_string(), found.clone());
        Ok(found)
    }

    fn compute(&self, name: &str, depth: usize) -> Result<Lookup> {
        let index = self.index;
        if let Some(t) = index.initializer(name) {
            if index.is_graph_input(name) && !self.inputs_are_constants {
                return Ok(Err(NotConstant::OverridableInput(name.to_string())));
            }
            return Ok(Ok(Rc::new(match self.folded(name) {
                Some(folded) => folded.value.decode(self.store)?,
                None => tensor::decode(t, self.store)?,
            })));
        }
        let runtime = || Ok(Err(NotConstant::Runtime(name.to_string())));
        let Some(producer) = index.producer(name) else {
            if index.is_sparse_initializer(name) {
                return Ok(Err(NotConstant::Sparse(name.to_string())));
            }
            return runtime();
        };
        if depth > MAX_DEPTH {
            return runtime();
        }
        let node = index.node(producer);
        if !matches!(node.domain(), "" | "ai.onnx") || node.output.len() != 1 {
            return runtime();
        }
        match self.eval(node, depth + 1)? {
            Some(t) if t.len() <= MAX_COMPUTED_ELEMENTS => Ok(Ok(Rc::new(t))),
            Some(_) => runtime(),
            None => {
                // Report the deepest input that is not constant, which names the real cause.
                for input in node.input.iter().filter(|i| !i.is_empty()) {
                    if let Err(reason) = self.value_at(input, depth + 1)? {
                        return Ok(Err(reason));
                    }
                }
                runtime()
            }
        }
    }

    fn input(&self, node: &NodeProto, i: usize, depth: usize) -> Result<Option<Rc<Tensor>>> {
        match node.input.get(i).filter(|n| !n.is_empty()) {
            Some(name) => Ok(self.value_at(name, depth)?.ok()),
            None => Ok(None),
        }
    }

    /// The element type of `name`, from declarations, constants or the op that produces it.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.dtype_at(name, 0)
    }

    fn dtype_at(&self, name: &str, depth: usize) -> Option<Dtype> {
        if let Some(d) = self.index.declared_dtype(name) {
            return Some(d);
        }
        let node = self.index.node(self.index.producer(name)?);
        if depth > MAX_DEPTH {
            return None;
        }
        match node.op_type() {
            "Cast" => attr::int(node, "to")
                .ok()?
                .and_then(|c| Dtype::from_code(c as i32)),
            "CastLike" => self.dtype_at(node.input.get(1)?, depth + 1),
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(Dtype::I64),
            "Constant" => self.value(name).ok()?.ok().map(|t| t.dtype),
            "Equal" | "Less" | "Greater" | "Not" | "And" | "Or" | "IsNaN" => Some(Dtype::Bool),
            _ => self.dtype_at(node.input.first()?, depth + 1),
        }
    }

    /// The static shape of `name`, when every axis is known.
    pub fn static_shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(dims) = self.index.declared_shape(name) {
            if let Some(dims) = dims.into_iter().collect::<Option<Vec<_>>>() {
                return Some(dims);
            }
        }
        self.value(name).ok()?.ok().map(|t| t.dims.clone())
    }

    /// The rank of `name`, from declarations, constants, or the ops that produce it.
    pub fn rank(&self, name: &str) -> Option<usize> {
        self.rank_at(name, 0)
    }

    fn rank_at(&self, name: &str, depth: usize) -> Option<usize> {
        if let Some(dims) = self.index.declared_shape(name) {
            return Some(dims.len());
        }
        if let Ok(Ok(t)) = self.value(name) {
            return Some(t.dims.len());
        }
        if depth > MAX_DEPTH {
            return None;
        }
        let node = self.index.node(self.index.producer(name)?);
        let input_rank = |i: usize| {
            node.input
                .get(i)
                .filter(|n| !n.is_empty())
                .and_then(|n| self.rank_at(n, depth + 1))
        };
        match node.op_type() {
            "Flatten" | "Gemm" => Some(2),
            "Reshape" => self.value(node.input.get(1)?).ok()?.ok().map(|s| s.len()),
            "MatMul" => match (input_rank(0)?, input_rank(1)?) {
                (1, 1) => Some(0),
                (1, b) => Some(b - 1),
                (a, 1) => Some(a - 1),
                (a, b) => Some(a.max(b)),
            },
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Where" | "PRelu" => {
                (0..node.input.len())
                    .map(input_rank)
                    .try_fold(0, |m, r| Some(m.max(r?)))
            }
            op if crate::graph::keeps_batch_and_rank(op) => input_rank(0),
            "Cast" | "CastLike" | "Softmax" | "LogSoftmax" | "Erf" | "Exp" | "Log" | "Neg"
            | "Abs" | "Sqrt" | "Transpose" => input_rank(0),
            _ => None,
        }
    }

    fn eval(&self, node: &NodeProto, depth: usize) -> Result<Option<Tensor>> {
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

/// The value of a `Constant` node: `value`, `value_float(s)` or `value_int(s)`.
pub fn constant_node_value(node: &NodeProto, store: &ExternalStore) -> Result<Option<Tensor>> {
    if let Some(t) = attr::tensor(node, "value")? {
        return Ok(Some(tensor::decode(t, store)?));
    }
    if let Some(f) = attr::float(node, "value_float")? {
        return Ok(Some(Tensor::scalar(Dtype::F32, f as f64)));
    }
    if let Some(i) = attr::int(node, "value_int")? {
        return Ok(Some(Tensor::scalar(Dtype::I64, i as f64)));
    }
    if let Some(v) = attr::floats(node, "value_floats")? {
        let data: Vec<f64> = v.iter().map(|&f| f as f64).collect();
        return Ok(Some(Tensor::new(Dtype::F32, vec![data.len()], data)));
    }
    if let Some(v) = attr::ints(node, "value_ints")? {
        let data: Vec<f64> = v.iter().map(|&i| i as f64).collect();
        return Ok(Some(Tensor::new(Dtype::I64, vec![data.len()], data)));
    }
    Ok(None)
}

fn checked_numel(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_COMPUTED_ELEMENTS)
}

fn to_dims(v: &[i64]) -> Option<Vec<usize>> {
    v.iter().map(|&d| usize::try_from(d).ok()).collect()
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

fn map(t: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor::new(
        t.dtype,
        t.dims.clone(),
        t.data.iter().map(|&v| f(v)).collect(),
    )
}

fn cast(t: &Tensor, to: Dtype) -> Tensor {
    let convert = |v: f64| match to {
        Dtype::Bool => (v != 0.0) as u8 as f64,
        d if d.is_float() => d.round(v).unwrap_or(if v > 0.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
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
    (0..rank)
        .map(|i| {
            let da = if i + a.len() >= rank {
                a[i + a.len() - rank]
            } else {
                1
            };
            let db = if i + b.len() >= rank {
                b[i + b.len() - rank]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// `t` broadcast to `shape` (which must be a broadcast of `t.dims`).
pub fn broadcast_to(t: &Tensor, shape: &[usize]) -> Option<Tensor> {
    let n = checked_numel(shape)?;
    let offset = shape.len().checked_sub(t.dims.len())?;
    let src_strides = strides(&t.dims);
    let dst_strides = strides(shape);
    let mut data = Vec::with_capacity(n);
    for flat in 0..n {
        let mut src = 0;
        for (axis, &dim) in t.dims.iter().enumerate() {
            let coord = (flat / dst_strides[axis + offset]) % shape[axis + offset];
            if dim != 1 {
                src += coord * src_strides[axis];
            }
        }
        data.push(t.data[src]);
    }
    Some(Tensor::new(t.dtype, shape.to_vec(), data))
}

fn binary(a: &Tensor, b: &Tensor, op: &str) -> Option<Tensor> {
    let shape = broadcast_shape(&a.dims, &b.dims)?;
    let (a, b) = (broadcast_to(a, &shape)?, broadcast_to(b, &shape)?);
    let int = !a.dtype.is_float();
    let data = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| match op {
            "Add" => x + y,
            "Sub" => x - y,
            "Mul" => x * y,
            _ if int => (x / y).trunc(),
            _ => x / y,
        })
        .map(|v| a.dtype.round(v).unwrap_or(v))
        .collect();
    Some(Tensor::new(a.dtype, shape, data))
}

fn reshape(t: &Tensor, shape: &[i64]) -> Option<Tensor> {
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
        if known == 0 || t.len() % known != 0 {
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
    for &a in &perm {
        if std::mem::replace(&mut seen[a], true) {
            return None;
        }
    }
    if perm.len() != rank {
        return None;
    }
    let dims: Vec<usize> = perm.iter().map(|&a| t.dims[a]).collect();
    let src_strides = strides(&t.dims);
    let dst_strides = strides(&dims);
    let data = (0..t.len())
        .map(|flat| {
            let src: usize = (0..rank)
                .map(|k| ((flat / dst_strides[k]) % dims[k]) * src_strides[perm[k]])
                .sum();
            t.data[src]
        })
        .collect();
    Some(Tensor::new(t.dtype, dims, data))
}

fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

fn unsqueeze(t: &Tensor, axes: &[i64]) -> Option<Tensor> {
    let rank = t.dims.len() + axes.len();
    let mut axes: Vec<usize> = axes
        .iter()
        .map(|&a| normalize_axis(a, rank))
        .collect::<Option<_>>()?;
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

fn squeeze(t: &Tensor, axes: Option<&[i64]>) -> Option<Tensor> {
    let rank = t.dims.len();
    let drop: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&a| normalize_axis(a, rank))
            .collect::<Option<_>>()?,
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

fn concat(parts: &[Rc<Tensor>], axis: i64) -> Option<Tensor> {
    let first = parts.first()?;
    let rank = first.dims.len();
    let axis = normalize_axis(axis, rank)?;
    let outer: usize = first.dims[..axis].iter().product();
    let mut dims = first.dims.clone();
    dims[axis] = 0;
    for p in parts {
        if p.dims.len() != rank || (0..rank).any(|a| a != axis && p.dims[a] != first.dims[a]) {
            return None;
        }
        dims[axis] += p.dims[axis];
    }
    let mut data = Vec::with_capacity(checked_numel(&dims)?);
    for o in 0..outer {
        for p in parts {
            let chunk = p.len() / outer.max(1);
            data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Some(Tensor::new(first.dtype, dims, data))
}

fn gather(data: &Tensor, indices: &Tensor, axis: i64) -> Option<Tensor> {
    let axis = normalize_axis(axis, data.dims.len())?;
    let len = data.dims[axis] as i64;
    let idx: Vec<usize> = indices
        .as_i64()
        .iter()
        .map(|&i| {
            usize::try_from(if i < 0 { i + len } else { i })
                .ok()
                .filter(|&i| (i as i64) < len)
        })
        .collect::<Option<_>>()?;
    let outer: usize = data.dims[..axis].iter().product();
    let inner: usize = data.dims[axis + 1..].iter().product();
    let mut dims = data.dims[..axis].to_vec();
    dims.extend_from_slice(&indices.dims);
    dims.extend_from_slice(&data.dims[axis + 1..]);
    let mut out = Vec::with_capacity(checked_numel(&dims)?);
    for o in 0..outer {
        for &i in &idx {
            let start = (o * data.dims[axis] + i) * inner;
            out.extend_from_slice(&data.data[start..start + inner]);
        }
    }
    Some(Tensor::new(data.dtype, dims, out))
}

fn slice(
    t: &Tensor,
    starts: &[i64],
    ends: &[i64],
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Option<Tensor> {
    let rank = t.dims.len();
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&a| normalize_axis(a, rank))
            .collect::<Option<_>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return None;
    }
    let mut ranges: Vec<Vec<usize>> = t.dims.iter().map(|&d| (0..d).collect()).collect();
    for k in 0..starts.len() {
        let dim = t.dims[axes[k]] as i64;
        let step = steps[k];
        if step == 0 {
            return None;
        }
        let fix = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (mut s, mut e) = (fix(starts[k]), fix(ends[k]));
        ranges[axes[k]] = if step > 0 {
            s = s.clamp(0, dim);
            e = e.clamp(0, dim);
            (s..e).step_by(step as usize).map(|i| i as usize).collect()
        } else {
            s = s.clamp(-1, dim - 1);
            e = e.clamp(-1, dim - 1);
            let mut v = Vec::new();
            let mut i = s;
            while i > e {
                v.push(i as usize);
                i += step;
            }
            v
        };
    }
    let dims: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    let n = checked_numel(&dims)?;
    let src_strides = strides(&t.dims);
    let dst_strides = strides(&dims);
    let data = (0..n)
        .map(|flat| {
            let src: usize = (0..rank)
                .map(|a| ranges[a][(flat / dst_strides[a]) % dims[a]] * src_strides[a])
                .sum();
            t.data[src]
        })
        .collect();
    Some(Tensor::new(t.dtype, dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dims: &[usize], data: &[f64]) -> Tensor {
        Tensor::new(Dtype::F32, dims.to_vec(), data.to_vec())
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let m = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(
            transpose(&m, None).unwrap(),
            t(&[3, 2], &[1., 4., 2., 5., 3., 6.])
        );
    }

    #[test]
    fn slice_takes_the_first_dim_of_a_shape() {
        let shape = Tensor::new(Dtype::I64, vec![4], vec![16., 3., 3., 3.]);
        let s = slice(&shape, &[0], &[1], Some(vec![0]), None).unwrap();
        assert_eq!(s.data, vec![16.]);
        let rev = slice(&shape, &[-1], &[i64::MIN], None, Some(vec![-1])).unwrap();
        assert_eq!(rev.data, vec![3., 3., 3., 16.]);
    }

    #[test]
    fn expand_broadcasts_a_scalar() {
        let z = Tensor::scalar(Dtype::F32, 0.5);
        assert_eq!(broadcast_to(&z, &[3]).unwrap().data, vec![0.5; 3]);
        let col = t(&[2, 1], &[1., 2.]);
        assert_eq!(
            broadcast_to(&col, &[2, 2]).unwrap().data,
            vec![1., 1., 2., 2.]
        );
    }

    #[test]
    fn gather_and_concat_follow_numpy() {
        let m = t(&[2, 2], &[1., 2., 3., 4.]);
        let idx = Tensor::new(Dtype::I64, vec![1], vec![-1.]);
        assert_eq!(gather(&m, &idx, 1).unwrap(), t(&[2, 1], &[2., 4.]));
        let c = concat(&[Rc::new(m.clone()), Rc::new(m)], 1).unwrap();
        assert_eq!(c, t(&[2, 4], &[1., 2., 1., 2., 3., 4., 3., 4.]));
    }
}
