//! The pairs equalization balances: a layer, what may stand between (a MatMul's bias `Add`,
//! then a positively homogeneous activation), and the layer that reads it.

use foldhash::HashMap;

use super::layer::{self, is_layer, pair_kinds, read, Layer};
use crate::consts::ConstEval;
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::GraphIndex;
use crate::proto::GraphProto;

use super::super::options::PassContext;

/// A pair: layer `a` (index into the layers), the nodes between (a MatMul's bias `Add`, then
/// the activation, each optional), layer `b`.
pub(super) struct Pair {
    pub(super) a: usize,
    pub(super) bias_add: Option<usize>,
    pub(super) activation: Option<usize>,
    pub(super) b: usize,
}

impl Pair {
    /// The nodes between the two layers, in order.
    pub(super) fn between(&self) -> impl Iterator<Item = usize> {
        self.bias_add.into_iter().chain(self.activation)
    }
}

/// The pairs of `graph` and the layers they join.
pub(super) fn find_pairs(
    graph: &GraphProto,
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    folded: &FoldedWeights,
) -> Result<(Vec<Layer>, Vec<Pair>)> {
    let mut layers: Vec<Layer> = Vec::new();
    let mut by_node: HashMap<usize, usize> = HashMap::default();
    let mut pairs = Vec::new();
    let sole = |name: &str| {
        let consumers = index.consumers(name);
        (consumers.len() == 1 && !index.is_graph_output(name)).then(|| consumers[0])
    };
    for (a, node) in graph.node.iter().enumerate() {
        if !is_layer(node, false)? {
            continue;
        }
        let Some(mut next) = sole(&node.output[0]) else {
            continue;
        };
        // A MatMul's bias is an `Add` of a constant (checked once the layer is read).
        let mut bias_add = None;
        if node.op_type() == "MatMul" && graph.node[next].op_type() == "Add" {
            let add = &graph.node[next];
            let data = add.input.iter().position(|i| *i == node.output[0]);
            let (Some(data), 2) = (data, add.input.len()) else {
                continue;
            };
            bias_add = Some((next, 1 - data));
            match sole(&add.output[0]) {
                Some(after) => next = after,
                None => continue,
            }
        }
        let mut activation = None;
        if matches!(
            graph.node[next].op_type(),
            "Relu" | "LeakyRelu" | "PRelu" | "Identity"
        ) {
            activation = Some(next);
            match sole(&graph.node[next].output[0]) {
                Some(b) => next = b,
                None => continue,
            }
        }
        let last = activation.or(bias_add.map(|(n, _)| n));
        let reads = last.map_or(&node.output[0], |n| &graph.node[n].output[0]);
        let b = next;
        if !pair_kinds(node.op_type(), graph.node[b].op_type())
            || !is_layer(&graph.node[b], true)?
            || graph.node[b].input.first() != Some(reads)
            || a == b
        {
            continue;
        }
        let mut slot = |n: usize| -> Result<Option<usize>> {
            if let Some(&k) = by_node.get(&n) {
                return Ok(Some(k));
            }
            let Some(layer) = read(graph, index, eval, ctx, folded, n)? else {
                return Ok(None);
            };
            layers.push(layer);
            by_node.insert(n, layers.len() - 1);
            Ok(Some(layers.len() - 1))
        };
        let (Some(la), Some(lb)) = (slot(a)?, slot(b)?) else {
            continue;
        };
        let (wa, wb) = (&layers[la], &layers[lb]);
        if wa.values.dtype != wb.values.dtype || wb.columns() * wb.group != wa.outputs() {
            continue;
        }
        if let Some((add, k)) = bias_add {
            let constant = &graph.node[add].input[k];
            if !layer::per_output_channel(eval, constant, layers[la].outputs())? {
                continue;
            }
            layers[la].bias = Some((add, k));
        }
        pairs.push(Pair {
            a: la,
            bias_add: bias_add.map(|(n, _)| n),
            activation,
            b: lb,
        });
    }
    Ok((layers, pairs))
}
