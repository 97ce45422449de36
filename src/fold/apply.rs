//! Applying a plan: the one place a fold changes a graph (through [`super::edits`]).

use super::edits::{write_tensor, GraphNames, NewTensor, NodeEdits};
use super::plan::{ChainPlan, ConcatPlan, ForwardPlan};
use super::rules::{ConsumerRewrite, FoldKind, NodeChange, ProducerRewrite};
use crate::attr::{self};
use crate::error::Result;
use crate::graph::node_label;
use crate::proto::{GraphProto, NodeProto};
use crate::report::{Direction, FoldRecord};
use crate::scaled::ScaledTensor;
use crate::tensor::Tensor;

/// Mutates the graph for a forward fold.
/// Applies a forward fold; returns its record and the tensors it may have left unused.
pub(super) fn apply_forward(
    graph: &mut GraphProto,
    plan: ForwardPlan,
    path: &str,
    names: &mut GraphNames,
    edits: &mut NodeEdits,
) -> Result<(FoldRecord, Vec<String>)> {
    let bn = graph.node[plan.bn].clone();
    let bn_label = node_label(&bn);
    let ConsumerRewrite {
        bias,
        shift_add,
        gemm_beta_one,
        ..
    } = plan.rewrite;
    let (new_weight, new_bias) = write_layer_tensors(
        graph,
        names,
        LayerTensors {
            weight_name: &plan.weight_name,
            weight_in_place: plan.weight_in_place,
            weight: Some(plan.folded_weight),
            bias_name: plan.bias_name.as_deref(),
            bias_in_place: plan.bias_in_place,
            bias,
        },
    )?;
    let consumer = &mut graph.node[plan.consumer];
    consumer.input[1] = new_weight.clone();
    if plan.kind == FoldKind::MatMul {
        consumer.op_type = Some("Gemm".into());
        consumer.input.truncate(2);
    }
    if let Some(b) = &new_bias {
        if consumer.input.len() < 3 {
            consumer.input.resize(3, String::new());
        }
        consumer.input[2] = b.clone();
    }
    if gemm_beta_one && attr::has(consumer, "beta") {
        attr::set_float(consumer, "beta", 1.0);
    }
    let consumer_label = node_label(consumer);
    let output = consumer.output[0].clone();
    let mut passthrough: Vec<String> = plan
        .steps
        .iter()
        .map(|&i| node_label(&graph.node[i]))
        .collect();
    passthrough.extend(plan.flatten.map(|f| node_label(&graph.node[f])));
    let shift_node = match shift_add {
        Some(shift) => {
            let shift_name = write_tensor(
                graph,
                names,
                &format!("{bn_label}_shift"),
                false,
                NewTensor::Values(shift),
                None,
            )?;
            let add_name = names.unique(&format!("{bn_label}_shift_add"));
            // A new tensor: it holds `x + d`, not what the chain's end computed, so no reader
            // (a comparison by name, a user's debugger) takes it for that.
            let shifted = names.unique(&format!("{}_shifted", bn.output[0]));
            graph.node[plan.bn] = NodeProto {
                name: Some(add_name.clone()),
                op_type: Some("Add".into()),
                input: vec![plan.data.clone(), shift_name],
                output: vec![shifted.clone()],
                ..Default::default()
            };
            let reader = plan.flatten.unwrap_or(plan.consumer);
            graph.node[reader].input[0] = shifted;
            edits.forget_value_info(bn.output[0].clone());
            Some(add_name)
        }
        None => {
            let reader = plan.flatten.unwrap_or(plan.consumer);
            graph.node[reader].input[0] = plan.data.clone();
            edits.remove(plan.bn);
            edits.forget_value_info(bn.output[0].clone());
            None
        }
    };
    for &step in &plan.steps {
        edits.remove(step);
        edits.forget_value_info(graph.node[step].output[0].clone());
    }
    let mut detached = plan.detached;
    detached.retain(|d| d != &new_weight && Some(d) != new_bias.as_ref());
    let record = FoldRecord {
        graph: path.to_string(),
        kind: plan.kind,
        direction: Direction::Forward,
        producer: consumer_label,
        batch_norm: bn_label,
        passthrough,
        output,
        followed_by: None,
        weight: new_weight,
        weight_in_place: plan.weight_in_place,
        bias: new_bias.or(plan.bias_name).unwrap_or_default(),
        shift_kept_as: shift_node,
        max_rel_weight_change: plan.max_rel_weight_change,
    };
    Ok((record, detached))
}

/// The one function that mutates the graph for a backward fold. Tensors it detaches are added to
/// `detached`, for the caller to remove once they are dead.
pub(super) fn apply(
    graph: &mut GraphProto,
    plan: ChainPlan,
    path: &str,
    names: &mut GraphNames,
    edits: &mut NodeEdits,
    detached: &mut Vec<String>,
) -> Result<FoldRecord> {
    let bn = graph.node[plan.bn].clone();
    let weight_kept = plan.layer.folded_weight.is_none();
    let out_name = bn.output[0].clone();
    let ProducerRewrite {
        weight_slot,
        bias,
        change,
        ..
    } = plan.layer.rewrite;

    let (new_weight, new_bias) = write_layer_tensors(
        graph,
        names,
        LayerTensors {
            weight_name: &plan.layer.weight_name,
            weight_in_place: plan.layer.weight_in_place,
            weight: plan.layer.folded_weight,
            bias_name: plan.layer.bias_name.as_deref(),
            bias_in_place: plan.layer.bias_in_place,
            bias: Some(bias),
        },
    )?;
    let new_bias = new_bias.unwrap_or_default();

    let then_add_names = (change == NodeChange::MatMulThenAdd).then(|| {
        let label = node_label(&graph.node[plan.layer.producer]);
        (
            names.unique(&format!("{out_name}_matmul")),
            names.unique(&format!("{label}_bias_add")),
        )
    });
    let producer = &mut graph.node[plan.layer.producer];
    let old_out = std::mem::replace(&mut producer.output[0], out_name.clone());
    producer.input[weight_slot] = new_weight.clone();
    let mut extra_node = None;
    match change {
        NodeChange::None | NodeChange::GemmBetaOne => {
            if producer.input.len() < 3 {
                producer.input.resize(3, String::new());
            }
            producer.input[2] = new_bias.clone();
            if change == NodeChange::GemmBetaOne && attr::has(producer, "beta") {
                attr::set_float(producer, "beta", 1.0);
            }
        }
        NodeChange::MatMulToGemm => {
            producer.op_type = Some("Gemm".into());
            producer.input.truncate(2);
            producer.input.push(new_bias.clone());
        }
        NodeChange::MatMulThenAdd => {
            let (product, add_name) = then_add_names.unwrap_or_default();
            producer.output[0] = product.clone();
            extra_node = Some(NodeProto {
                name: Some(add_name),
                op_type: Some("Add".into()),
                input: vec![product, new_bias.clone()],
                output: vec![out_name.clone()],
                ..Default::default()
            });
        }
    }
    let producer_label = node_label(&graph.node[plan.layer.producer]);
    let passthrough_labels: Vec<String> = plan
        .passthrough
        .iter()
        .map(|&i| node_label(&graph.node[i]))
        .collect();
    for &i in plan.passthrough.iter().chain([&plan.bn]) {
        edits.remove(i);
    }
    if let Some(add) = extra_node {
        edits.insert_after(plan.layer.producer, add);
    }
    edits.forget_value_info(old_out);

    detached.extend(
        plan.detached
            .into_iter()
            .filter(|d| d != &new_weight && d != &new_bias),
    );
    Ok(FoldRecord {
        graph: path.to_string(),
        kind: plan.layer.kind,
        direction: Direction::Backward,
        producer: producer_label,
        batch_norm: node_label(&bn),
        passthrough: passthrough_labels,
        output: out_name,
        followed_by: plan.followed_by,
        weight: new_weight,
        weight_in_place: plan.layer.weight_in_place || weight_kept,
        bias: new_bias,
        shift_kept_as: None,
        max_rel_weight_change: plan.layer.max_rel_weight_change,
    })
}

/// Applies a fold into the layers of a Concat: each layer's weight and bias are rewritten in
/// place of the node's inputs, the Concat takes over the end's output, the steps go. One record
/// per layer.
pub(super) fn apply_concat(
    graph: &mut GraphProto,
    plan: ConcatPlan,
    path: &str,
    names: &mut GraphNames,
    edits: &mut NodeEdits,
    detached: &mut Vec<String>,
) -> Result<Vec<FoldRecord>> {
    let end = graph.node[plan.end].clone();
    let out_name = end.output[0].clone();
    let mut passthrough: Vec<String> = plan
        .passthrough
        .iter()
        .map(|&i| node_label(&graph.node[i]))
        .collect();
    passthrough.push(node_label(&graph.node[plan.concat]));
    let mut written = Vec::new();
    let mut records = Vec::with_capacity(plan.parts.len());
    for part in plan.parts {
        let weight_kept = part.folded_weight.is_none();
        let (new_weight, new_bias) = write_layer_tensors(
            graph,
            names,
            LayerTensors {
                weight_name: &part.weight_name,
                weight_in_place: part.weight_in_place,
                weight: part.folded_weight,
                bias_name: part.bias_name.as_deref(),
                bias_in_place: part.bias_in_place,
                bias: Some(part.rewrite.bias),
            },
        )?;
        let new_bias = new_bias.unwrap_or_default();
        let layer = &mut graph.node[part.producer];
        layer.input[part.rewrite.weight_slot] = new_weight.clone();
        if layer.input.len() < 3 {
            layer.input.resize(3, String::new());
        }
        layer.input[2] = new_bias.clone();
        written.extend([new_weight.clone(), new_bias.clone()]);
        records.push(FoldRecord {
            graph: path.to_string(),
            kind: part.kind,
            direction: Direction::Backward,
            producer: node_label(layer),
            batch_norm: node_label(&end),
            passthrough: passthrough.clone(),
            output: out_name.clone(),
            followed_by: plan.followed_by.clone(),
            weight: new_weight,
            weight_in_place: part.weight_in_place || weight_kept,
            bias: new_bias,
            shift_kept_as: None,
            max_rel_weight_change: part.max_rel_weight_change,
        });
    }
    let concat = &mut graph.node[plan.concat];
    let old_out = std::mem::replace(&mut concat.output[0], out_name);
    for &i in plan.passthrough.iter().chain([&plan.end]) {
        edits.remove(i);
    }
    edits.forget_value_info(old_out);
    detached.extend(plan.detached.into_iter().filter(|d| !written.contains(d)));
    Ok(records)
}

/// A layer's folded weight and bias, and where they came from.
pub(super) struct LayerTensors<'a> {
    pub(super) weight_name: &'a str,
    pub(super) weight_in_place: bool,
    /// The weight scaled, or `None` when it stays as it is.
    pub(super) weight: Option<ScaledTensor>,
    pub(super) bias_name: Option<&'a str>,
    pub(super) bias_in_place: bool,
    pub(super) bias: Option<Tensor>,
}

/// Writes a layer's folded weight and (when there is one) bias, each in place when the layer
/// owns it, else under a new name; a bias the layer did not have is named after the weight and
/// stored like it (external when the weight is).
pub(super) fn write_layer_tensors(
    graph: &mut GraphProto,
    names: &mut GraphNames,
    tensors: LayerTensors,
) -> Result<(String, Option<String>)> {
    let weight_template = names.initializer(graph, tensors.weight_name).cloned();
    let new_weight = match tensors.weight {
        Some(weight) => write_tensor(
            graph,
            names,
            tensors.weight_name,
            tensors.weight_in_place,
            NewTensor::Scaled(Box::new(weight)),
            weight_template.as_ref(),
        )?,
        None => tensors.weight_name.to_string(),
    };
    let Some(bias) = tensors.bias else {
        return Ok((new_weight, None));
    };
    let base = tensors
        .bias_name
        .map_or_else(|| format!("{}_bias", tensors.weight_name), str::to_string);
    let template = tensors
        .bias_name
        .and_then(|b| names.initializer(graph, b))
        .cloned()
        .or(weight_template);
    let new_bias = write_tensor(
        graph,
        names,
        &base,
        tensors.bias_in_place,
        NewTensor::Values(bias),
        template.as_ref(),
    )?;
    Ok((new_weight, Some(new_bias)))
}
