//! The differing regions of a candidate: its nodes that equal none of the original's, grouped
//! into connected regions bounded by tensors both models name.

use std::collections::{BTreeSet, HashMap};

use prost::Message;

use crate::error::Result;
use crate::model::Model;
use crate::proto::GraphProto;

/// A region of the candidate: its nodes (indices, in graph order), the tensors it reads from
/// outside (constants of the candidate excepted) and those read after it or output.
pub(super) struct Region {
    pub(super) nodes: Vec<usize>,
    pub(super) inputs: Vec<String>,
    pub(super) outputs: Vec<String>,
}

/// The candidate's initializers whose values differ from the original's of the same name (or
/// that the original does not have).
pub(super) fn changed_initializers(
    original: &Model,
    candidate: &Model,
) -> Result<BTreeSet<String>> {
    let (Some(a), Some(b)) = (&original.proto.graph, &candidate.proto.graph) else {
        return Ok(BTreeSet::new());
    };
    let mut changed = BTreeSet::new();
    for t in &b.initializer {
        let same = match a.initializer.iter().find(|u| u.name() == t.name()) {
            Some(u) => crate::structure::same_tensor(u, t, original, candidate)?,
            None => false,
        };
        if !same {
            changed.insert(t.name().to_string());
        }
    }
    Ok(changed)
}

pub(super) fn differing_regions(
    a: &GraphProto,
    b: &GraphProto,
    orig_region: &[usize],
    cand_region: &[usize],
    changed: &BTreeSet<String>,
) -> Vec<Region> {
    let mut unmatched_a: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, n) in a.node.iter().enumerate() {
        if !orig_region.contains(&i) {
            *unmatched_a.entry(n.encode_to_vec()).or_default() += 1;
        }
    }
    let mut differing = Vec::new();
    for (j, n) in b.node.iter().enumerate() {
        if cand_region.contains(&j) {
            continue;
        }
        // A node reading a changed constant computes something else under the same name.
        if n.input.iter().any(|i| changed.contains(i)) {
            differing.push(j);
            continue;
        }
        match unmatched_a.get_mut(&n.encode_to_vec()) {
            Some(count) if *count > 0 => *count -= 1,
            _ => differing.push(j),
        }
    }
    // Connected components of the differing nodes, joined by the tensors between them.
    let mut component: Vec<usize> = (0..differing.len()).collect();
    fn root(c: &mut [usize], mut k: usize) -> usize {
        while c[k] != k {
            c[k] = c[c[k]];
            k = c[k];
        }
        k
    }
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (k, &j) in differing.iter().enumerate() {
        for o in &b.node[j].output {
            producer.insert(o.as_str(), k);
        }
    }
    for (k, &j) in differing.iter().enumerate() {
        for i in &b.node[j].input {
            if let Some(&p) = producer.get(i.as_str()) {
                let (x, y) = (root(&mut component, k), root(&mut component, p));
                component[x] = y;
            }
        }
    }
    let constants: BTreeSet<&str> = b.initializer.iter().map(|t| t.name()).collect();
    let graph_outputs: BTreeSet<&str> = b.output.iter().map(|o| o.name()).collect();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, n) in b.node.iter().enumerate() {
        for i in &n.input {
            consumers.entry(i.as_str()).or_default().push(j);
        }
    }
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (k, &j) in differing.iter().enumerate() {
        let r = root(&mut component, k);
        match groups.iter_mut().find(|(root, _)| *root == r) {
            Some((_, nodes)) => nodes.push(j),
            None => groups.push((r, vec![j])),
        }
    }
    groups
        .into_iter()
        .map(|(_, nodes)| {
            let inside: BTreeSet<&str> = nodes
                .iter()
                .flat_map(|&j| b.node[j].output.iter().map(String::as_str))
                .collect();
            let mut inputs: Vec<String> = Vec::new();
            for &j in &nodes {
                for i in &b.node[j].input {
                    let outside = !i.is_empty() && !inside.contains(i.as_str());
                    if outside && !constants.contains(i.as_str()) && !inputs.contains(i) {
                        inputs.push(i.clone());
                    }
                }
            }
            let read_after = |name: &str| {
                graph_outputs.contains(name)
                    || consumers
                        .get(name)
                        .is_some_and(|c| c.iter().any(|j| !nodes.contains(j)))
            };
            let outputs = nodes
                .iter()
                .flat_map(|&j| b.node[j].output.iter())
                .filter(|o| !o.is_empty() && read_after(o))
                .cloned()
                .collect();
            Region {
                nodes,
                inputs,
                outputs,
            }
        })
        .collect()
}

/// The original's nodes that compute `region`'s outputs from its inputs (walking back from each
/// output through producers to the region's inputs and the original's constants), in graph
/// order; `None` when the walk reaches anything else.
pub(super) fn counterpart(a: &GraphProto, region: &Region) -> Option<Vec<usize>> {
    let producer: HashMap<&str, usize> = a
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let constants: BTreeSet<&str> = a.initializer.iter().map(|t| t.name()).collect();
    let mut nodes = BTreeSet::new();
    let mut todo: Vec<&str> = region.outputs.iter().map(String::as_str).collect();
    while let Some(name) = todo.pop() {
        if name.is_empty() || region.inputs.iter().any(|i| i == name) || constants.contains(name) {
            continue;
        }
        let &i = producer.get(name)?;
        if nodes.insert(i) {
            todo.extend(a.node[i].input.iter().map(String::as_str));
        }
        if nodes.len() > 4 * region.nodes.len() + 16 {
            return None;
        }
    }
    Some(nodes.into_iter().collect())
}
