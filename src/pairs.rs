//! The graphs of two models paired for the local proof: the main graphs, then, recursively,
//! the subgraphs of the nodes that hold them (the k-th such node of one graph against the k-th
//! of the other, when op, name and attribute names agree), each with the initializers visible
//! from its enclosing graphs.

use foldhash::HashMap;
use foldhash::HashMapExt;

use crate::graph::{is_graph_attribute, node_label, OuterScope};
use crate::model::Model;
use crate::proto::{GraphProto, NodeProto, TensorProto};

/// One graph of the original and its counterpart in the fused model.
pub struct GraphPair<'m> {
    /// `main`, or the subgraph's path (`main/<node>/<attribute>[k]`), as the fold report has it.
    pub path: String,
    /// The original's graph.
    pub original: &'m GraphProto,
    /// The fused model's graph.
    pub fused: &'m GraphProto,
    original_visible: HashMap<String, TensorProto>,
    fused_visible: HashMap<String, TensorProto>,
}

impl<'m> GraphPair<'m> {
    /// The original graph's enclosing initializers.
    pub fn original_scope(&self) -> OuterScope<'_> {
        OuterScope {
            initializers: Some(&self.original_visible),
        }
    }

    /// The fused graph's enclosing initializers.
    pub fn fused_scope(&self) -> OuterScope<'_> {
        OuterScope {
            initializers: Some(&self.fused_visible),
        }
    }

    /// Whether this is the main graph.
    pub fn is_main(&self) -> bool {
        self.path == "main"
    }
}

/// Every pair of graphs, the main graphs first; subgraphs that do not pair (a node holding them
/// changed) are left to the structure check of the graph around them.
pub fn graph_pairs<'m>(original: &'m Model, fused: &'m Model) -> Vec<GraphPair<'m>> {
    let (Some(a), Some(b)) = (&original.proto.graph, &fused.proto.graph) else {
        return Vec::new();
    };
    let mut out = vec![GraphPair {
        path: "main".into(),
        original: a,
        fused: b,
        original_visible: HashMap::new(),
        fused_visible: HashMap::new(),
    }];
    let mut k = 0;
    while k < out.len() {
        let found = subgraph_pairs(&out[k]);
        out.extend(found);
        k += 1;
    }
    out
}

fn subgraph_pairs<'m>(pair: &GraphPair<'m>) -> Vec<GraphPair<'m>> {
    let holders = |g: &'m GraphProto| -> Vec<&'m NodeProto> {
        g.node
            .iter()
            .filter(|n| n.attribute.iter().any(is_graph_attribute))
            .collect()
    };
    let (ha, hb) = (holders(pair.original), holders(pair.fused));
    if ha.is_empty() || ha.len() != hb.len() {
        return Vec::new();
    }
    let visible = |outer: &HashMap<String, TensorProto>, g: &GraphProto| {
        let mut v = outer.clone();
        for t in &g.initializer {
            v.insert(t.name().to_string(), t.clone());
        }
        v
    };
    let va = visible(&pair.original_visible, pair.original);
    let vb = visible(&pair.fused_visible, pair.fused);
    let mut out = Vec::new();
    for (na, nb) in ha.into_iter().zip(hb) {
        if na.op_type() != nb.op_type() || na.name() != nb.name() {
            continue;
        }
        let label = node_label(na);
        for (aa, ab) in na.attribute.iter().zip(&nb.attribute) {
            if aa.name() != ab.name() {
                continue;
            }
            let base = format!("{}/{label}/{}", pair.path, aa.name());
            let mut push = |path: String, ga: &'m GraphProto, gb: &'m GraphProto| {
                out.push(GraphPair {
                    path,
                    original: ga,
                    fused: gb,
                    original_visible: va.clone(),
                    fused_visible: vb.clone(),
                });
            };
            if let (Some(ga), Some(gb)) = (aa.g.as_deref(), ab.g.as_deref()) {
                push(base.clone(), ga, gb);
            }
            if aa.graphs.len() == ab.graphs.len() {
                for (i, (ga, gb)) in aa.graphs.iter().zip(&ab.graphs).enumerate() {
                    push(format!("{base}[{i}]"), ga, gb);
                }
            }
        }
    }
    out
}
