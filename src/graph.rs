//! A read-only index of one graph: who produces and who consumes each tensor, and what is known
//! of each tensor's type and shape. Built afresh after every rewrite.

use foldhash::{HashMap, HashSet};

use crate::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto, GraphProto,
    NodeProto, TensorProto, ValueInfoProto,
};
use crate::tensor::Dtype;

/// The initializers of the enclosing graphs, visible from a subgraph.
#[derive(Clone, Copy, Debug, Default)]
pub struct OuterScope<'g> {
    /// Outer initializers by name.
    pub initializers: Option<&'g HashMap<String, TensorProto>>,
}

/// The nodes that use a tensor, once per use: most tensors have one, kept without an allocation
/// of its own.
enum Uses {
    One(usize),
    Many(Vec<usize>),
}

impl Uses {
    fn push(&mut self, node: usize) {
        match self {
            Uses::One(first) => *self = Uses::Many(vec![*first, node]),
            Uses::Many(nodes) => nodes.push(node),
        }
    }

    fn as_slice(&self) -> &[usize] {
        match self {
            Uses::One(node) => std::slice::from_ref(node),
            Uses::Many(nodes) => nodes,
        }
    }
}

/// Who produces and consumes each tensor of a graph.
pub struct GraphIndex<'g> {
    /// The graph indexed.
    pub graph: &'g GraphProto,
    /// Initializers visible from enclosing graphs.
    pub outer: OuterScope<'g>,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Uses>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    graph_inputs: HashSet<&'g str>,
    graph_outputs: HashSet<&'g str>,
    value_info: HashMap<&'g str, &'g ValueInfoProto>,
}

impl<'g> GraphIndex<'g> {
    /// Indexes `graph`.
    pub fn new(graph: &'g GraphProto, outer: OuterScope<'g>) -> GraphIndex<'g> {
        let outputs = graph.node.iter().map(|n| n.output.len()).sum();
        let mut producer = HashMap::with_capacity_and_hasher(outputs, Default::default());
        let mut consumers: HashMap<&str, Uses> =
            HashMap::with_capacity_and_hasher(outputs + graph.input.len(), Default::default());
        let mut used_by = |name: &'g str, i: usize| {
            consumers
                .entry(name)
                .and_modify(|uses| uses.push(i))
                .or_insert(Uses::One(i));
        };
        for (i, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(out.as_str(), i);
            }
            for input in node.input.iter().filter(|o| !o.is_empty()) {
                used_by(input.as_str(), i);
            }
            for free in subgraph_free_names(node) {
                used_by(free, i);
            }
        }
        let value_info = graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
            .map(|v| (v.name(), v))
            .collect();
        GraphIndex {
            graph,
            outer,
            producer,
            consumers,
            initializers: graph.initializer.iter().map(|t| (t.name(), t)).collect(),
            graph_inputs: graph.input.iter().map(|v| v.name()).collect(),
            graph_outputs: graph.output.iter().map(|v| v.name()).collect(),
            value_info,
        }
    }

    /// The node at `index`.
    pub fn node(&self, index: usize) -> &'g NodeProto {
        &self.graph.node[index]
    }

    /// The index of the node producing `name`.
    pub fn producer(&self, name: &str) -> Option<usize> {
        self.producer.get(name).copied()
    }

    /// The nodes consuming `name`, once per use (a subgraph's use counts for its node).
    pub fn consumers(&self, name: &str) -> &[usize] {
        self.consumers.get(name).map_or(&[], Uses::as_slice)
    }

    /// Whether `name` is one of the graph's outputs.
    pub fn is_graph_output(&self, name: &str) -> bool {
        self.graph_outputs.contains(name)
    }

    /// Whether `name` is one of the graph's inputs.
    pub fn is_graph_input(&self, name: &str) -> bool {
        self.graph_inputs.contains(name)
    }

    /// Whether `name` is used by exactly one node, once, and is not a graph output.
    pub fn feeds_only(&self, name: &str, node: usize) -> bool {
        self.consumers(name) == [node] && !self.is_graph_output(name)
    }

    /// The initializer named `name` in this graph or an enclosing one.
    pub fn initializer(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializers
            .get(name)
            .copied()
            .or_else(|| self.outer.initializers.and_then(|m| m.get(name)))
    }

    /// Whether `name` is a `sparse_initializer` of this graph.
    pub fn is_sparse_initializer(&self, name: &str) -> bool {
        self.graph
            .sparse_initializer
            .iter()
            .any(|s| s.values.as_ref().is_some_and(|v| v.name() == name))
    }

    /// Whether `name` is an initializer of this graph (not of an enclosing one).
    pub fn is_own_initializer(&self, name: &str) -> bool {
        self.initializers.contains_key(name)
    }

    /// The declared element type of `name`, from inputs, outputs, `value_info` or initializers.
    pub fn declared_dtype(&self, name: &str) -> Option<Dtype> {
        if let Some(t) = self.initializer(name) {
            return Dtype::from_code(t.data_type());
        }
        match self.value_info.get(name)?.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => Dtype::from_code(t.elem_type()),
            _ => None,
        }
    }

    /// The declared shape of `name`, one entry per axis, `None` for a symbolic axis.
    pub fn declared_shape(&self, name: &str) -> Option<Vec<Option<usize>>> {
        if let Some(t) = self.initializer(name) {
            return Some(t.dims.iter().map(|&d| usize::try_from(d).ok()).collect());
        }
        match self.value_info.get(name)?.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => Some(
                t.shape
                    .as_ref()?
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(dimension::Value::DimValue(v)) => usize::try_from(v).ok(),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// The names a node's subgraphs read from the enclosing scope.
pub fn subgraph_free_names(node: &NodeProto) -> Vec<&str> {
    let mut free = Vec::new();
    for attr in &node.attribute {
        for g in attr_graphs(attr) {
            graph_free_names(g, &mut free);
        }
    }
    free
}

pub(crate) fn attr_graphs(
    attr: &crate::proto::AttributeProto,
) -> impl Iterator<Item = &GraphProto> {
    attr.g.as_deref().into_iter().chain(attr.graphs.iter())
}

fn graph_free_names<'a>(g: &'a GraphProto, free: &mut Vec<&'a str>) {
    let mut defined: HashSet<&str> = g
        .input
        .iter()
        .map(|v| v.name())
        .chain(g.initializer.iter().map(|t| t.name()))
        .collect();
    for node in &g.node {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            if !defined.contains(input.as_str()) {
                free.push(input);
            }
        }
        let mut inner = Vec::new();
        for attr in &node.attribute {
            for sub in attr_graphs(attr) {
                graph_free_names(sub, &mut inner);
            }
        }
        free.extend(inner.into_iter().filter(|n| !defined.contains(n)));
        defined.extend(node.output.iter().map(|o| o.as_str()));
    }
    for out in &g.output {
        if !defined.contains(out.name()) {
            free.push(out.name());
        }
    }
}

/// Adds every tensor name `g` uses to `names`: inputs, outputs, `value_info`, initializers and
/// node inputs and outputs, in subgraphs too.
pub fn collect_names(g: &GraphProto, names: &mut HashSet<String>) {
    let infos = g.input.iter().chain(&g.output).chain(&g.value_info);
    names.extend(infos.map(|v| v.name().to_string()));
    names.extend(g.initializer.iter().map(|t| t.name().to_string()));
    for node in &g.node {
        names.extend(node.input.iter().chain(&node.output).cloned());
        for sub in node.attribute.iter().flat_map(attr_graphs) {
            collect_names(sub, names);
        }
    }
}

/// The subgraph attributes of a node (`If` branches, `Loop` and `Scan` bodies).
pub fn is_graph_attribute(attr: &crate::proto::AttributeProto) -> bool {
    matches!(attr.r#type(), AttributeType::Graph | AttributeType::Graphs)
        || attr.g.is_some()
        || !attr.graphs.is_empty()
}

/// Ops whose output keeps the shape's axis 0 (the batch) and rank of their first input:
/// convolutions, pooling, normalizations and element-wise activations.
pub fn keeps_batch_and_rank(op_type: &str) -> bool {
    matches!(
        op_type,
        "Conv"
            | "ConvTranspose"
            | "MaxPool"
            | "AveragePool"
            | "BatchNormalization"
            | "LayerNormalization"
            | "InstanceNormalization"
            | "LpNormalization"
            | "Relu"
            | "LeakyRelu"
            | "Sigmoid"
            | "Tanh"
            | "HardSigmoid"
            | "HardSwish"
            | "Clip"
            | "Elu"
            | "Selu"
            | "Gelu"
            | "Softplus"
            | "Mish"
            | "Identity"
            | "Dropout"
    )
}

/// A node's display name: its name, else its first output.
pub fn node_label(node: &NodeProto) -> String {
    match node.name() {
        "" => node.output.first().cloned().unwrap_or_default(),
        name => name.to_string(),
    }
}

/// Whether `name` is computed by `Constant` nodes alone (directly, or by ops whose every input
/// is), with no initializer or graph input among them.
pub(crate) fn from_constant_nodes(index: &GraphIndex, name: &str) -> bool {
    fn walk(index: &GraphIndex, name: &str, depth: usize) -> bool {
        let Some(p) = index.producer(name) else {
            return false;
        };
        let node = index.node(p);
        node.op_type() == "Constant"
            || (depth < 16
                && !node.input.is_empty()
                && node
                    .input
                    .iter()
                    .all(|i| i.is_empty() || walk(index, i, depth + 1)))
    }
    walk(index, name, 0)
}
