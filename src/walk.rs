//! Every walk over the tensors a graph stores: initializers, sparse initializers and tensor
//! attributes, in subgraphs too, always in the same order.

use crate::proto::{GraphProto, TensorProto};

/// Calls `f` on every tensor stored in the graph: initializers and tensor attributes, in
/// subgraphs too, in a fixed order.
pub fn visit_tensors(g: &GraphProto, f: &mut dyn FnMut(&TensorProto)) {
    for t in &g.initializer {
        f(t);
    }
    visit_tensors_but_initializers(g, f);
}

/// [`visit_tensors`] but for the graph's own initializers (those of subgraphs included).
pub fn visit_tensors_but_initializers(g: &GraphProto, f: &mut dyn FnMut(&TensorProto)) {
    for s in &g.sparse_initializer {
        s.values.iter().chain(&s.indices).for_each(&mut *f);
    }
    for node in &g.node {
        for a in &node.attribute {
            a.t.as_deref()
                .into_iter()
                .chain(&a.tensors)
                .for_each(&mut *f);
            for s in a
                .sparse_tensor
                .as_deref()
                .into_iter()
                .chain(&a.sparse_tensors)
            {
                s.values.iter().chain(&s.indices).for_each(&mut *f);
            }
            for sub in a.g.as_deref().into_iter().chain(&a.graphs) {
                visit_tensors(sub, f);
            }
        }
    }
}

pub(crate) fn visit_tensors_mut(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for t in &mut g.initializer {
        f(t);
    }
    visit_tensors_but_initializers_mut(g, f);
}

/// [`visit_tensors_mut`] but for the graph's own initializers (those of subgraphs included).
pub(crate) fn visit_tensors_but_initializers_mut(
    g: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto),
) {
    for s in &mut g.sparse_initializer {
        s.values
            .iter_mut()
            .chain(s.indices.iter_mut())
            .for_each(&mut *f);
    }
    for node in &mut g.node {
        for a in &mut node.attribute {
            a.t.as_deref_mut()
                .into_iter()
                .chain(a.tensors.iter_mut())
                .for_each(&mut *f);
            for s in a
                .sparse_tensor
                .as_deref_mut()
                .into_iter()
                .chain(a.sparse_tensors.iter_mut())
            {
                s.values
                    .iter_mut()
                    .chain(s.indices.iter_mut())
                    .for_each(&mut *f);
            }
            for sub in a.g.as_deref_mut().into_iter().chain(a.graphs.iter_mut()) {
                visit_tensors_mut(sub, f);
            }
        }
    }
}
