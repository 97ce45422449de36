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

mod kernels;
mod ops;
pub use kernels::{broadcast_shape, broadcast_to, transpose};

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
    /// Ranks worked out so far ([`ConstEval::rank`]).
    ranks: RefCell<HashMap<String, Option<usize>>>,
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
            ranks: RefCell::new(HashMap::default()),
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

    /// [`ConstEval::value`], but an initializer not looked up before is decoded without being
    /// kept: for values read once (a BatchNormalization's parameters), whose memory then serves
    /// the next instead of staying until the evaluator goes (efficientnet_b0's 49 BNs kept
    /// 0.67 MB of them: 170 page faults a run on fresh pages).
    pub fn value_once(&self, name: &str) -> Result<Lookup> {
        if self.index.initializer(name).is_some() && !self.cache.borrow().contains_key(name) {
            return self.compute(name, 0);
        }
        self.value(name)
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

    /// The rank of `name`, from declarations, constants, or the ops that produce it, however far
    /// back that takes (models as exported carry no `value_info`). Each tensor's rank is worked
    /// out once per evaluator, inputs first, with a stack of its own rather than recursion.
    pub fn rank(&self, name: &str) -> Option<usize> {
        let mut pending = vec![(name.to_string(), false)];
        while let Some((tensor, inputs_known)) = pending.pop() {
            if self.ranks.borrow().contains_key(&tensor) {
                continue;
            }
            let producer = self.index.producer(&tensor).map(|p| self.index.node(p));
            if !inputs_known {
                let known = self.known_rank(&tensor);
                let Some(node) = producer.filter(|_| known.is_none()) else {
                    self.ranks.borrow_mut().insert(tensor, known);
                    continue;
                };
                let ranks = self.ranks.borrow();
                let missing: Vec<String> = rank_inputs(node)
                    .filter(|input| !ranks.contains_key(*input))
                    .map(str::to_string)
                    .collect();
                drop(ranks);
                if !missing.is_empty() {
                    pending.push((tensor, true));
                    pending.extend(missing.into_iter().map(|input| (input, false)));
                    continue;
                }
            }
            let rank = producer.and_then(|node| self.rank_by_op(node));
            self.ranks.borrow_mut().insert(tensor, rank);
        }
        self.ranks.borrow().get(name).copied().flatten()
    }

    /// The rank of `name` without looking at its producer: declared, or a constant's.
    fn known_rank(&self, name: &str) -> Option<usize> {
        if let Some(dims) = self.index.declared_shape(name) {
            return Some(dims.len());
        }
        match self.value(name) {
            Ok(Ok(t)) => Some(t.dims.len()),
            _ => None,
        }
    }

    /// The rank of `node`'s output by its op, from the ranks of its inputs worked out already.
    fn rank_by_op(&self, node: &NodeProto) -> Option<usize> {
        match node.op_type() {
            "Flatten" | "Gemm" => return Some(2),
            "Reshape" => return self.value(node.input.get(1)?).ok()?.ok().map(|s| s.len()),
            _ => {}
        }
        // Borrowed only once no constant is evaluated (which is free to ask for a rank).
        let ranks = self.ranks.borrow();
        let input_rank = |i: usize| {
            node.input
                .get(i)
                .filter(|n| !n.is_empty())
                .and_then(|n| ranks.get(n.as_str()).copied().flatten())
        };
        match node.op_type() {
            "MatMul" => match (input_rank(0)?, input_rank(1)?) {
                (1, 1) => Some(0),
                (1, b) => Some(b - 1),
                (a, 1) => Some(a - 1),
                (a, b) => Some(a.max(b)),
            },
            op if rank_of_all_inputs(op) => (0..node.input.len())
                .map(input_rank)
                .try_fold(0, |m, r| Some(m.max(r?))),
            op if rank_of_first_input(op) => input_rank(0),
            _ => None,
        }
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

/// Ops whose output has the largest rank of their inputs (broadcasting).
fn rank_of_all_inputs(op: &str) -> bool {
    matches!(
        op,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Where" | "PRelu"
    )
}

/// Ops whose output has the rank of their first input.
fn rank_of_first_input(op: &str) -> bool {
    crate::graph::keeps_batch_and_rank(op)
        || matches!(
            op,
            "Cast"
                | "CastLike"
                | "Softmax"
                | "LogSoftmax"
                | "Erf"
                | "Exp"
                | "Log"
                | "Neg"
                | "Abs"
                | "Sqrt"
                | "Transpose"
        )
}

/// The inputs of `node` whose ranks give its output's rank ([`ConstEval::rank`]).
fn rank_inputs(node: &NodeProto) -> impl Iterator<Item = &str> {
    let op = node.op_type();
    let count = match op {
        "MatMul" => 2,
        op if rank_of_all_inputs(op) => node.input.len(),
        op if rank_of_first_input(op) => 1,
        _ => 0,
    };
    node.input
        .iter()
        .take(count)
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests;
