//! Where a candidate differs from the original outside the folds bnfold knows (`bnfold verify A
//! B` on any two models): the differing regions, each run alone on the original's own values.
//!
//! Nodes of the candidate equal to a node of the original (op, attributes, inputs, outputs) are
//! the same computation on the same-named tensors. The rest group into regions: connected
//! nodes, bounded by tensors both models name. Each region of the candidate runs alone, fed the
//! original's values of its input tensors (from one run of the original on the whole-model
//! run's seeded inputs), and its outputs are compared with the original's values of the same
//! tensors, with the tolerance of one layer. A region's error does not compound through the
//! network: a correct rewrite deep in a network is not a false alarm, and the first failing
//! region in graph order is the first divergent node. A region whose boundary the original does
//! not name cannot be compared; one bounded only by the graph's inputs and outputs is the
//! whole-model run's to judge.

use std::collections::{BTreeSet, HashMap};

use prost::Message;

use crate::error::Result;
use crate::external::ExternalStore;
use crate::graph::node_label;
use crate::model::Model;
use crate::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::verify::{
    capture, default_tolerance, fixed_runner, Accumulator, DivergenceCheck, Status, VerifyOptions,
};

/// Every differing region of the main graphs outside the folds' nodes (`orig_region`,
/// `cand_region`), in the candidate's graph order.
pub fn check(
    original: &Model,
    candidate: &Model,
    (orig_region, cand_region): (&[usize], &[usize]),
    options: &VerifyOptions,
) -> Result<Vec<DivergenceCheck>> {
    let (Some(a), Some(b)) = (&original.proto.graph, &candidate.proto.graph) else {
        return Ok(Vec::new());
    };
    let changed = changed_initializers(original, candidate)?;
    let regions = differing_regions(a, b, orig_region, cand_region, &changed);
    if regions.is_empty() {
        return Ok(Vec::new());
    }
    let produced_a: BTreeSet<&str> = a
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let inputs_a: BTreeSet<&str> = a.input.iter().map(|i| i.name()).collect();
    let outputs_b: BTreeSet<&str> = b.output.iter().map(|o| o.name()).collect();
    let mut checks = Vec::new();
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for r in &regions {
        let first = &b.node[r.nodes[0]];
        let mut check = DivergenceCheck {
            first_node: node_label(first),
            op_type: first.op_type().to_string(),
            nodes: r.nodes.len(),
            inputs: r.inputs.clone(),
            status: Status::NotVerified,
            reason: None,
            outputs: Vec::new(),
        };
        let unnamed = r
            .inputs
            .iter()
            .find(|i| !produced_a.contains(i.as_str()) && !inputs_a.contains(i.as_str()))
            .or_else(|| r.outputs.iter().find(|o| !produced_a.contains(o.as_str())));
        let end_to_end = r.inputs.iter().all(|i| inputs_a.contains(i.as_str()))
            && r.outputs.iter().all(|o| outputs_b.contains(o.as_str()));
        if let Some(name) = unnamed {
            check.reason = Some(format!("the original has no tensor '{name}'"));
        } else if end_to_end {
            check.reason = Some(
                "bounded by the graph's inputs and outputs only: the \
                                 whole-model run judges it"
                    .into(),
            );
        } else {
            needed.extend(r.inputs.iter().chain(&r.outputs).cloned());
        }
        checks.push(check);
    }
    if needed.is_empty() {
        return Ok(checks);
    }
    let names: Vec<String> = needed.into_iter().collect();
    let values = match capture(original, &names, options)? {
        Ok(v) => v,
        Err(why) => {
            for c in checks.iter_mut().filter(|c| c.reason.is_none()) {
                c.reason = Some(format!("the original could not run: {why}"));
            }
            return Ok(checks);
        }
    };
    let at = |name: &str| names.iter().position(|n| n == name).unwrap_or(0);
    for (r, check) in regions.iter().zip(&mut checks) {
        if check.reason.is_some() {
            continue;
        }
        let Some(first) = values.first() else {
            continue;
        };
        let typed: Vec<(&str, &crate::verify::Captured)> = r
            .inputs
            .iter()
            .map(|i| (i.as_str(), &first[at(i)]))
            .collect();
        let typed_outputs: Vec<(&str, &crate::verify::Captured)> = r
            .outputs
            .iter()
            .map(|o| (o.as_str(), &first[at(o)]))
            .collect();
        let model = region_model(candidate, b, r, (&typed, &typed_outputs))?;
        let runner = match fixed_runner(&model, &r.outputs) {
            Ok((runner, _)) => runner,
            Err(why) => {
                check.reason = Some(why);
                continue;
            }
        };
        let mut accs: Vec<Accumulator> = r
            .outputs
            .iter()
            .map(|o| {
                let dtype = first[at(o)].dtype;
                Accumulator::new(options.rtol.unwrap_or(default_tolerance(Some(dtype))))
            })
            .collect();
        let mut failure = None;
        for sample in &values {
            let feed: Vec<_> = r.inputs.iter().map(|i| sample[at(i)].to_tract()).collect();
            match runner.run(&feed) {
                Ok(got) => {
                    for ((o, acc), y) in r.outputs.iter().zip(&mut accs).zip(&got) {
                        let expected = &sample[at(o)].values;
                        if expected.len() != y.len() {
                            failure = Some(format!(
                                "'{o}' has {} values against the original's {}",
                                y.len(),
                                expected.len()
                            ));
                        }
                        acc.add(expected, y);
                    }
                }
                Err(why) => failure = Some(why),
            }
        }
        check.outputs = r
            .outputs
            .iter()
            .zip(&accs)
            .map(|(o, acc)| acc.check(o, false, Some(first[at(o)].dtype), options))
            .collect();
        let beyond: Vec<&str> = check
            .outputs
            .iter()
            .filter(|o| !o.passed)
            .map(|o| o.name.as_str())
            .collect();
        (check.status, check.reason) = match (failure, beyond.is_empty()) {
            (Some(why), _) => (Status::Failed, Some(why)),
            (None, true) => (Status::Passed, None),
            (None, false) => (
                Status::Failed,
                Some(format!("beyond tolerance: {}", beyond.join(", "))),
            ),
        };
    }
    Ok(checks)
}

/// A region of the candidate: its nodes (indices, in graph order), the tensors it reads from
/// outside (constants of the candidate excepted) and those read after it or output.
struct Region {
    nodes: Vec<usize>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// The candidate's initializers whose values differ from the original's of the same name (or
/// that the original does not have).
fn changed_initializers(original: &Model, candidate: &Model) -> Result<BTreeSet<String>> {
    let (Some(a), Some(b)) = (&original.proto.graph, &candidate.proto.graph) else {
        return Ok(BTreeSet::new());
    };
    let mut changed = BTreeSet::new();
    for t in &b.initializer {
        let same = match a.initializer.iter().find(|u| u.name() == t.name()) {
            Some(u) => {
                u.data_type() == t.data_type()
                    && u.dims == t.dims
                    && crate::structure::same_values(u, t, original, candidate)?
            }
            None => false,
        };
        if !same {
            changed.insert(t.name().to_string());
        }
    }
    Ok(changed)
}

fn differing_regions(
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

/// A region's inputs and outputs, each with the original's value (its dtype and shape).
type Typed<'a, 'c> = (
    &'a [(&'a str, &'c crate::verify::Captured)],
    &'a [(&'a str, &'c crate::verify::Captured)],
);

/// The region's nodes as a model of their own: inputs typed by the original's values, the
/// candidate's constants they read as initializers.
fn region_model(
    candidate: &Model,
    b: &GraphProto,
    region: &Region,
    (inputs, outputs): Typed,
) -> Result<Model> {
    let nodes: Vec<NodeProto> = region.nodes.iter().map(|&j| b.node[j].clone()).collect();
    let read: BTreeSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut initializers = Vec::new();
    for t in b.initializer.iter().filter(|t| read.contains(t.name())) {
        let mut t = t.clone();
        if crate::tensor::is_external(&t) {
            t = crate::tensor::decode(&t, &candidate.store)?.to_proto(t.name());
        }
        initializers.push(t);
    }
    let value_info = |name: &str, typed: Option<&crate::verify::Captured>| ValueInfoProto {
        name: Some(name.to_string()),
        r#type: typed.map(|c| TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(c.dtype.code()),
                shape: Some(TensorShapeProto {
                    dim: c
                        .shape
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let proto = ModelProto {
        ir_version: Some(candidate.proto.ir_version().max(4)),
        opset_import: candidate.proto.opset_import.clone(),
        graph: Some(GraphProto {
            name: Some("divergence".into()),
            node: nodes,
            initializer: initializers,
            input: inputs.iter().map(|(n, c)| value_info(n, Some(c))).collect(),
            output: outputs
                .iter()
                .map(|(n, c)| value_info(n, Some(c)))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Model::from_proto(proto, ExternalStore::none())
}
