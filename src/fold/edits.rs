//! Edits a round collects and makes at its end: fresh tensor names, node removals and
//! insertions, new or shared-safe tensors (a shared weight gets a new tensor, never an
//! in-place edit).

use foldhash::{HashMap, HashSet};

use crate::error::Result;
use crate::folded::{FoldedTensor, FoldedWeights};
use crate::proto::{GraphProto, NodeProto, TensorProto};
use crate::scaled::ScaledTensor;
use crate::tensor::{self, Tensor};

/// What rewrites look up often: every name the graph uses (subgraphs included, and each name
/// handed out since) and where each initializer is. Built once per round of folds, so that a fold
/// costs what it touches rather than a scan of the whole graph.
pub(super) struct GraphNames<'f> {
    pub(super) used: HashSet<String>,
    pub(super) initializers: HashMap<String, usize>,
    /// The graph's folded initializers, which new folded tensors join.
    pub(super) folded: &'f mut FoldedWeights,
}

impl<'f> GraphNames<'f> {
    pub(super) fn new(graph: &GraphProto, folded: &'f mut FoldedWeights) -> GraphNames<'f> {
        let mut used = HashSet::default();
        crate::graph::collect_names(graph, &mut used);
        let initializers = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name().to_string(), i))
            .collect();
        GraphNames {
            used,
            initializers,
            folded,
        }
    }

    /// `base`, or `base_1`, `base_2`…: the first name nothing uses yet, now taken.
    pub(super) fn unique(&mut self, base: &str) -> String {
        let mut candidate = base.to_string();
        let mut k = 1;
        while self.used.contains(&candidate) {
            candidate = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(candidate.clone());
        candidate
    }

    /// The initializer of `graph` named `name`.
    pub(super) fn initializer<'g>(
        &self,
        graph: &'g GraphProto,
        name: &str,
    ) -> Option<&'g TensorProto> {
        self.initializers
            .get(name)
            .and_then(|&i| graph.initializer.get(i))
    }

    /// Stores `tensor` as the initializer of its name: in the slot of the one it replaces (whose
    /// doc string and metadata it keeps), else appended.
    pub(super) fn store(&mut self, graph: &mut GraphProto, mut tensor: TensorProto) {
        let name = tensor.name().to_string();
        match self.initializers.get(&name) {
            Some(&i) => {
                let slot = &mut graph.initializer[i];
                tensor.doc_string = slot.doc_string.take();
                tensor.metadata_props = std::mem::take(&mut slot.metadata_props);
                *slot = tensor;
            }
            None => {
                self.initializers
                    .insert(name.clone(), graph.initializer.len());
                self.used.insert(name);
                graph.initializer.push(tensor);
            }
        }
    }
}

/// The node removals and insertions of one round, made at its end in one pass: node indices stay
/// those the plans were made with, and no fold shifts the whole node list.
pub(super) struct NodeEdits {
    pub(super) removed: Vec<bool>,
    pub(super) inserted_after: Vec<(usize, NodeProto)>,
    pub(super) stale_value_info: HashSet<String>,
}

impl NodeEdits {
    pub(super) fn new(nodes: usize) -> NodeEdits {
        NodeEdits {
            removed: vec![false; nodes],
            inserted_after: Vec::new(),
            stale_value_info: HashSet::default(),
        }
    }

    pub(super) fn remove(&mut self, node: usize) {
        self.removed[node] = true;
    }

    pub(super) fn insert_after(&mut self, node: usize, inserted: NodeProto) {
        self.inserted_after.push((node, inserted));
    }

    /// Drops the `value_info` of a tensor that no longer exists.
    pub(super) fn forget_value_info(&mut self, name: String) {
        self.stale_value_info.insert(name);
    }

    pub(super) fn finish(mut self, graph: &mut GraphProto) {
        self.inserted_after.sort_by_key(|(after, _)| *after);
        let mut inserted = self.inserted_after.into_iter().peekable();
        let nodes = std::mem::take(&mut graph.node);
        graph.node.reserve(nodes.len());
        for (i, node) in nodes.into_iter().enumerate() {
            if !self.removed[i] {
                graph.node.push(node);
            }
            while let Some((_, add)) = inserted.next_if(|(after, _)| *after == i) {
                graph.node.push(add);
            }
        }
        if !self.stale_value_info.is_empty() {
            graph
                .value_info
                .retain(|v| !self.stale_value_info.contains(v.name()));
        }
    }
}

/// A tensor a fold writes: values computed in full (a bias, a shift), or a scaled weight.
pub(super) enum NewTensor {
    Values(Tensor),
    Scaled(Box<ScaledTensor>),
}

/// Stores `value` under `name` (in place) or under a new unique name derived from it, keeping
/// the storage of `template`: a tensor derived from an external one is written to the same data
/// file. A scaled weight (and anything bound for external data) joins the graph's folded
/// tensors, computed when the model is written; the initializer holds its name, dtype and shape.
pub(super) fn write_tensor(
    graph: &mut GraphProto,
    names: &mut GraphNames,
    name: &str,
    in_place: bool,
    value: NewTensor,
    template: Option<&TensorProto>,
) -> Result<String> {
    let final_name = if in_place {
        name.to_string()
    } else {
        names.unique(&format!("{name}_bnfold"))
    };
    let location = template.and_then(|t| match tensor::is_external(t) {
        true => crate::external::external_ref(t).ok().map(|r| r.location),
        false => names.folded.of(t).and_then(|f| f.location.clone()),
    });
    let proto = match (value, location) {
        (NewTensor::Values(v), None) => {
            names.folded.remove(&final_name);
            v.to_proto(&final_name)
        }
        (value, location) => {
            let mut scaled = match value {
                NewTensor::Scaled(s) => *s,
                NewTensor::Values(v) => ScaledTensor::values(&final_name, std::sync::Arc::new(v)),
            };
            scaled.name = final_name.clone();
            let proto = TensorProto {
                name: Some(final_name.clone()),
                dims: scaled.dims.iter().map(|&d| d as i64).collect(),
                data_type: Some(scaled.dtype.code()),
                ..Default::default()
            };
            let folded = FoldedTensor {
                value: scaled,
                location,
            };
            names.folded.insert(&final_name, folded);
            proto
        }
    };
    names.store(graph, proto);
    Ok(final_name)
}
