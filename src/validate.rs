//! Structural checks run when a model is loaded and again after folding: every tensor's stored
//! data fits its type and shape, names are defined once and before use, and the graph has no
//! cycle. A model that fails is refused with the first problem found, named.

use foldhash::{HashMap, HashSet};

use crate::attr::{self, node_error};
use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::graph::node_label;
use crate::proto::tensor_proto::DataType;
use crate::proto::{GraphProto, NodeProto, TensorProto};
use crate::tensor::{self, Dtype};

/// Checks the stored size of every tensor, then the graph and its subgraphs.
pub fn model(graph: &GraphProto, store: &ExternalStore) -> Result<()> {
    let mut problem = Ok(());
    crate::walk::visit_tensors(graph, &mut |t| {
        if problem.is_ok() {
            problem = stored_size(t, store);
        }
    });
    problem?;
    graph_structure(graph, &HashSet::default())
}

/// The tensor's dtype is a real ONNX type and its data holds exactly what its shape needs.
pub fn stored_size(t: &TensorProto, store: &ExternalStore) -> Result<()> {
    let name = t.name();
    let code = t.data_type();
    if code == DataType::Undefined as i32 || DataType::try_from(code).is_err() {
        return Err(Error::UnsupportedDtype {
            tensor: name.to_string(),
            data_type: code,
        });
    }
    let dims = tensor::proto_dims(t)?;
    // Every dtype gets these checks, whether or not bnfold reads its values: a location is
    // refused the same way for a FLOAT8 tensor as for a float one.
    if tensor::is_external(t) {
        if t.raw_data.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(Error::tensor(name, "has both external data and raw_data"));
        }
        if tensor::stored_bits(code).is_none() {
            return Err(Error::tensor(
                name,
                "a STRING tensor cannot keep its data in an external file",
            ));
        }
        return store.locate(t, tensor::stored_len(t)?).map(|_| ());
    }
    let numel: usize = dims.iter().product();
    let Some(dtype) = Dtype::from_code(code) else {
        // Passed through untouched; only its packed raw size can be checked.
        return match (
            t.raw_data.as_ref().filter(|r| !r.is_empty()),
            tensor::stored_bits(code),
        ) {
            (Some(raw), Some(_)) if raw.len() != tensor::stored_len(t)? => Err(Error::tensor(
                name,
                format!(
                    "raw_data has {} bytes, the shape {dims:?} needs {}",
                    raw.len(),
                    tensor::stored_len(t)?
                ),
            )),
            _ => Ok(()),
        };
    };
    let needed = numel * dtype.size();
    if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty()) {
        if raw.len() != needed {
            return Err(Error::tensor(
                name,
                format!(
                    "raw_data has {} bytes, the shape {dims:?} needs {needed}",
                    raw.len()
                ),
            ));
        }
        return Ok(());
    }
    let (field, stored) = match dtype {
        Dtype::F32 => ("float_data", t.float_data.len()),
        Dtype::F64 => ("double_data", t.double_data.len()),
        Dtype::I64 => ("int64_data", t.int64_data.len()),
        Dtype::U32 | Dtype::U64 => ("uint64_data", t.uint64_data.len()),
        _ => ("int32_data", t.int32_data.len()),
    };
    if stored != numel {
        return Err(Error::tensor(
            name,
            format!("{field} has {stored} values, the shape {dims:?} needs {numel}"),
        ));
    }
    Ok(())
}

/// Names are defined once, every input is defined (here or in an enclosing graph), graph
/// outputs exist, and the nodes can be ordered (no cycle).
pub fn graph_structure(graph: &GraphProto, outer: &HashSet<String>) -> Result<()> {
    let mut defined: HashSet<&str> = HashSet::default();
    let sparse_names = graph
        .sparse_initializer
        .iter()
        .filter_map(|s| s.values.as_ref().map(|v| v.name()));
    for name in graph
        .input
        .iter()
        .map(|v| v.name())
        .chain(graph.initializer.iter().map(|t| t.name()))
        .chain(sparse_names)
    {
        if !defined.insert(name) && !graph.input.iter().any(|i| i.name() == name) {
            return Err(Error::InvalidGraph(format!(
                "tensor '{name}' is defined twice"
            )));
        }
    }
    let mut producer: HashMap<&str, usize> = HashMap::default();
    for (k, node) in graph.node.iter().enumerate() {
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains(o.as_str()) || producer.insert(o, k).is_some() {
                return Err(Error::InvalidGraph(format!(
                    "tensor '{o}' is defined twice (again by node '{}')",
                    node_label(node)
                )));
            }
        }
    }
    let initializers: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name(), t)).collect();
    for node in &graph.node {
        node_attributes(node, &initializers)?;
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            let known = defined.contains(i.as_str())
                || producer.contains_key(i.as_str())
                || outer.contains(i.as_str());
            if !known {
                return Err(Error::InvalidGraph(format!(
                    "node '{}' ({}) reads '{i}', which nothing defines",
                    node_label(node),
                    node.op_type()
                )));
            }
        }
    }
    for o in &graph.output {
        let name = o.name();
        if !defined.contains(name) && !producer.contains_key(name) && !outer.contains(name) {
            return Err(Error::InvalidGraph(format!(
                "graph output '{name}' is not defined"
            )));
        }
    }
    if let Some(node) = node_on_cycle(graph, &producer) {
        return Err(Error::InvalidGraph(format!(
            "node '{}' ({}) is on a cycle",
            node_label(node),
            node.op_type()
        )));
    }
    let has_subgraphs = graph.node.iter().any(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    });
    if !has_subgraphs {
        return Ok(());
    }
    let mut visible: HashSet<String> = outer.clone();
    visible.extend(defined.iter().map(|s| s.to_string()));
    visible.extend(producer.keys().map(|s| s.to_string()));
    for node in &graph.node {
        for a in &node.attribute {
            for sub in a.g.as_deref().into_iter().chain(&a.graphs) {
                graph_structure(sub, &visible)?;
            }
        }
    }
    Ok(())
}

/// Spatial dims beyond this are refused: no real Conv has them, and each one sizes a loop.
const MAX_SPATIAL_RANK: usize = 8;

/// The attributes and arity of the ops bnfold reads, checked before anything reads them.
fn node_attributes(node: &NodeProto, initializers: &HashMap<&str, &TensorProto>) -> Result<()> {
    let inputs = node.input.iter().take_while(|i| !i.is_empty()).count();
    let need_inputs = |min: usize, max: usize| {
        if inputs < min || node.input.len() > max {
            return Err(node_error(
                node,
                format!("has {} inputs, expected {min} to {max}", node.input.len()),
            ));
        }
        Ok(())
    };
    match node.op_type() {
        "Constant" => {
            let values = node
                .attribute
                .iter()
                .filter(|a| a.name().starts_with("value") || a.name() == "sparse_value")
                .count();
            if values != 1 {
                return Err(node_error(
                    node,
                    format!("has {values} value attributes, expected exactly one"),
                ));
            }
        }
        "BatchNormalization" => {
            need_inputs(5, 5)?;
            attr::float(node, "epsilon")?;
            attr::float(node, "momentum")?;
            attr::int(node, "training_mode")?;
            attr::int(node, "spatial")?;
            attr::int(node, "is_test")?;
        }
        "Conv" | "ConvTranspose" => {
            need_inputs(2, 3)?;
            let group = attr::int(node, "group")?.unwrap_or(1);
            if !(1..=i64::from(i32::MAX)).contains(&group) {
                return Err(node_error(
                    node,
                    format!("group {group} is not a positive count"),
                ));
            }
            for name in [
                "kernel_shape",
                "strides",
                "dilations",
                "pads",
                "output_padding",
                "output_shape",
            ] {
                if let Some(list) = attr::ints(node, name)? {
                    if list.len() > 2 * MAX_SPATIAL_RANK {
                        return Err(node_error(
                            node,
                            format!("attribute '{name}' has {} entries", list.len()),
                        ));
                    }
                }
            }
            if let Some(w) = initializers.get(node.input[1].as_str()) {
                let rank = w.dims.len();
                if !(3..=MAX_SPATIAL_RANK + 2).contains(&rank) {
                    return Err(node_error(
                        node,
                        format!(
                            "weight '{}' has rank {rank}; expected [C_out, C_in/group, k…] with 1 to {MAX_SPATIAL_RANK} spatial dims",
                            w.name()
                        ),
                    ));
                }
                if let Some(kernel) = attr::ints(node, "kernel_shape")? {
                    if kernel.len() != rank - 2 {
                        return Err(node_error(
                            node,
                            format!(
                                "kernel_shape has {} dims but weight '{}' has {}",
                                kernel.len(),
                                w.name(),
                                rank - 2
                            ),
                        ));
                    }
                }
                for (name, per_dim) in [
                    ("strides", 1),
                    ("dilations", 1),
                    ("pads", 2),
                    ("output_padding", 1),
                ] {
                    if let Some(list) = attr::ints(node, name)? {
                        if list.len() != per_dim * (rank - 2) {
                            return Err(node_error(
                                node,
                                format!(
                                    "attribute '{name}' has {} entries, the weight's {} spatial \
                                     dims need {}",
                                    list.len(),
                                    rank - 2,
                                    per_dim * (rank - 2)
                                ),
                            ));
                        }
                    }
                }
                // Conv splits its output channels (weight axis 0) into groups; ConvTranspose its
                // input channels, also on weight axis 0.
                let grouped = w.dims[0];
                if grouped % group != 0 {
                    let axis = match node.op_type() {
                        "Conv" => "output channels",
                        _ => "input channels",
                    };
                    return Err(node_error(
                        node,
                        format!(
                            "group {group} does not divide the {grouped} {axis} of weight '{}'",
                            w.name()
                        ),
                    ));
                }
            }
        }
        "Gemm" => {
            need_inputs(2, 3)?;
            attr::float(node, "alpha")?;
            attr::float(node, "beta")?;
            for name in ["transA", "transB"] {
                if !matches!(attr::int(node, name)?, None | Some(0) | Some(1)) {
                    return Err(node_error(node, format!("{name} must be 0 or 1")));
                }
            }
        }
        "MatMul" => need_inputs(2, 2)?,
        _ => {}
    }
    Ok(())
}

/// Kahn's algorithm over the node inputs produced inside this graph; returns a node on a cycle
/// when some node never becomes ready.
fn node_on_cycle<'g>(
    graph: &'g GraphProto,
    producer: &HashMap<&str, usize>,
) -> Option<&'g NodeProto> {
    let n = graph.node.len();
    let mut waiting = vec![0usize; n];
    // (source, consumer) pairs in consumer order, then each source's consumers side by side:
    // node `s`'s are `next[start[s]..start[s + 1]]`. No allocation per node.
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let mut sources = Vec::new();
    for (k, node) in graph.node.iter().enumerate() {
        sources.clear();
        sources.extend(
            node.input
                .iter()
                .filter_map(|i| producer.get(i.as_str()).copied()),
        );
        sources.sort_unstable();
        sources.dedup();
        waiting[k] = sources.len();
        edges.extend(sources.iter().map(|&s| (s, k)));
    }
    let mut start = vec![0usize; n + 1];
    for &(s, _) in &edges {
        start[s + 1] += 1;
    }
    for s in 0..n {
        start[s + 1] += start[s];
    }
    let mut next = vec![0usize; edges.len()];
    let mut fill = start.clone();
    for &(s, k) in &edges {
        next[fill[s]] = k;
        fill[s] += 1;
    }
    let mut ready: Vec<usize> = (0..n).filter(|&k| waiting[k] == 0).collect();
    let mut done = 0;
    while let Some(k) = ready.pop() {
        done += 1;
        for &c in &next[start[k]..start[k + 1]] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    if done == n {
        return None;
    }
    // A node left waiting waits on a producer left waiting too: walking back from the first,
    // the first node met twice lies on a cycle (the first node left may only be downstream of
    // one).
    let mut at = (0..n).find(|&k| waiting[k] > 0).unwrap_or(0);
    let mut met = vec![false; n];
    while !met[at] {
        met[at] = true;
        let waits_on = graph.node[at]
            .input
            .iter()
            .filter_map(|i| producer.get(i.as_str()).copied())
            .find(|&p| waiting[p] > 0);
        match waits_on {
            Some(p) => at = p,
            None => break,
        }
    }
    Some(&graph.node[at])
}
