//! The fold pass: finds every BatchNormalization chain (read-only), asks the fold of its
//! producer's kind for a plan, and applies plans in the one function that mutates the graph.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashSet};

use crate::attr::{self, node_error};
use crate::consts::{ConstEval, NotConstant};
use crate::error::Result;
use crate::external::ExternalStore;
use crate::folds::{
    self, Affine, ConsumerRewrite, FoldInput, FoldKind, ForwardInput, NodeChange, ProducerRewrite,
    SkipReason,
};
use crate::graph::{is_graph_attribute, node_label, GraphIndex, OuterScope};
use crate::proto::{GraphProto, NodeProto, TensorProto, TypeProto, ValueInfoProto};
use crate::report::{DecompositionRecord, Direction, FoldRecord, NormalizationRecord, SkipRecord};
use crate::scaled::{ScaledTensor, Scaling};
use crate::tensor::{self, Tensor};

/// In a plan function returning `Result<Result<_, SkipReason>>`: skip with `$reason` if `$cond`.
macro_rules! skip_if {
    ($cond:expr, $reason:expr) => {
        if $cond {
            return Ok(Err($reason));
        }
    };
}

/// In a plan function: the value of a `Result<_, SkipReason>`, or skip with its reason.
macro_rules! or_skip {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason)),
        }
    };
}

/// What the user allows the pass to do.
#[derive(Clone, Debug, Default)]
pub struct FoldOptions {
    /// Treat initializers that are also graph inputs (IR ≥ 4) as constants.
    pub inputs_are_constants: bool,
    /// Fold only into these kinds (all when `None`).
    pub only: Option<BTreeSet<FoldKind>>,
    /// BatchNormalization nodes (by name or first output) to leave alone.
    pub skip_nodes: BTreeSet<String>,
    /// Rewrite a BatchNormalization that folds nowhere into `Mul` and `Add`.
    pub decompose_standalone: bool,
}

/// The model-wide facts the pass needs.
pub struct PassContext<'a> {
    /// Where external data is read from.
    pub store: &'a ExternalStore,
    /// The opset of the default domain.
    pub opset: i64,
    /// The model's IR version.
    pub ir_version: i64,
    /// The user's options.
    pub options: &'a FoldOptions,
}

/// Everything the pass found.
#[derive(Default)]
pub struct PassOutcome {
    /// Folds applied.
    pub folds: Vec<FoldRecord>,
    /// BatchNormalization nodes left in place.
    pub skips: Vec<SkipRecord>,
    /// Normalizations that never fold.
    pub normalizations: Vec<NormalizationRecord>,
    /// BatchNormalization nodes rewritten as `Mul` and `Add`.
    pub decompositions: Vec<DecompositionRecord>,
}

/// A fold ready to apply: which nodes go, what the producer becomes.
struct ChainPlan {
    bn: usize,
    producer: usize,
    passthrough: Vec<usize>,
    kind: FoldKind,
    weight_name: String,
    weight_in_place: bool,
    bias_name: Option<String>,
    bias_in_place: bool,
    rewrite: ProducerRewrite,
    folded_weight: ScaledTensor,
    detached: Vec<String>,
    max_rel_weight_change: f64,
    /// The op of the one node that consumes the BN's output, if one does.
    followed_by: Option<String>,
}

impl ChainPlan {
    /// The nodes the plan reads or changes.
    fn nodes(&self) -> Vec<usize> {
        let mut nodes = vec![self.bn, self.producer];
        nodes.extend(&self.passthrough);
        nodes
    }
}

/// Marks `nodes` as taken by a rewrite of this round; false (and nothing marked) when an earlier
/// rewrite of the round already took one of them.
fn claim(taken: &mut HashSet<usize>, nodes: &[usize]) -> bool {
    if nodes.iter().any(|n| taken.contains(n)) {
        return false;
    }
    taken.extend(nodes);
    true
}

/// Folds every foldable BatchNormalization of `graph` and of its subgraphs.
pub fn fold_graph(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    out: &mut PassOutcome,
) -> Result<()> {
    fold_subgraphs(graph, ctx, path, outer, out)?;
    if !graph.node.iter().any(is_batch_norm) {
        // Nothing to fold, decompose or report here: no index of a large graph is built.
        list_other_normalizations(graph, path, out);
        drop_stale_value_info(graph);
        return Ok(());
    }
    // Rounds: plan every BN against one index, then apply the plans whose nodes no other plan of
    // the round took; node removals and insertions are made at the round's end, so the indices
    // the plans were made with hold throughout. BNs a fold just made foldable (BN → BN) wait for
    // the next round. Plans are applied from the end of the graph back (the order new names
    // were always handed out in).
    loop {
        let plans = {
            let index = GraphIndex::new(graph, outer);
            let eval = ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx));
            let mut plans = Vec::new();
            for i in 0..graph.node.len() {
                if is_batch_norm(&graph.node[i]) {
                    if let Ok(plan) = plan_chain(&index, &eval, i, ctx)? {
                        plans.push(plan);
                    }
                }
            }
            plans
        };
        if plans.is_empty() {
            break;
        }
        let mut records = Vec::new();
        let mut detached = Vec::new();
        let mut names = GraphNames::new(graph);
        let mut edits = NodeEdits::new(graph.node.len());
        let mut taken = HashSet::default();
        for plan in plans.into_iter().rev() {
            if !claim(&mut taken, &plan.nodes()) {
                continue;
            }
            let record = apply(
                graph,
                plan,
                ctx,
                path,
                &mut names,
                &mut edits,
                &mut detached,
            )?;
            records.push(record);
        }
        edits.finish(graph);
        remove_dead(graph, detached, ctx);
        if ctx.ir_version < 4 {
            list_initializers_as_inputs(graph);
        }
        records.reverse();
        out.folds.extend(records);
    }
    // Forward folds, where backward ones do not apply: rounds too, in graph order.
    loop {
        let plans = {
            let index = GraphIndex::new(graph, outer);
            let eval = ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx));
            let mut plans = Vec::new();
            for i in 0..graph.node.len() {
                if !is_batch_norm(&graph.node[i]) {
                    continue;
                }
                if let Err(reason) = plan_chain(&index, &eval, i, ctx)? {
                    if allows_forward(&reason) {
                        if let Ok(plan) = plan_forward(&index, &eval, i, ctx)? {
                            plans.push(plan);
                        }
                    }
                }
            }
            plans
        };
        if plans.is_empty() {
            break;
        }
        let mut names = GraphNames::new(graph);
        let mut edits = NodeEdits::new(graph.node.len());
        let mut taken = HashSet::default();
        let mut detached = Vec::new();
        for plan in plans {
            let nodes: Vec<usize> = [plan.bn, plan.consumer]
                .into_iter()
                .chain(plan.flatten)
                .collect();
            if !claim(&mut taken, &nodes) {
                continue;
            }
            let record = apply_forward(graph, plan, ctx, path, &mut names, &mut edits)?;
            detached.extend(record.1);
            out.folds.push(record.0);
        }
        edits.finish(graph);
        remove_dead(graph, detached, ctx);
        if ctx.ir_version < 4 {
            list_initializers_as_inputs(graph);
        }
    }
    if ctx.options.decompose_standalone {
        decompose_remaining(graph, ctx, path, outer, out)?;
    }
    let index = GraphIndex::new(graph, outer);
    let eval = ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx));
    for (i, node) in graph.node.iter().enumerate() {
        if is_batch_norm(node) {
            if let Err(reason) = plan_chain(&index, &eval, i, ctx)? {
                let forward = if allows_forward(&reason) {
                    plan_forward(&index, &eval, i, ctx)?.err()
                } else {
                    None
                };
                out.skips.push(SkipRecord {
                    graph: path.to_string(),
                    node: node_label(node),
                    message: reason.message(),
                    reason,
                    forward_message: forward.as_ref().map(SkipReason::message),
                    forward,
                });
            }
        }
    }
    list_other_normalizations(graph, path, out);
    drop_stale_value_info(graph);
    Ok(())
}

/// Records the normalizations whose statistics come from the input, which never fold.
fn list_other_normalizations(graph: &GraphProto, path: &str, out: &mut PassOutcome) {
    for node in &graph.node {
        if matches!(
            node.op_type(),
            "LayerNormalization" | "GroupNormalization" | "InstanceNormalization"
        ) {
            out.normalizations.push(NormalizationRecord {
                graph: path.to_string(),
                node: node_label(node),
                op_type: node.op_type().to_string(),
            });
        }
    }
}

/// Whether a BN left by the backward folds may fold forward: its own preconditions hold.
fn allows_forward(reason: &SkipReason) -> bool {
    !matches!(
        reason,
        SkipReason::NodeExcluded
            | SkipReason::TrainingMode
            | SkipReason::ExtraOutputsUsed
            | SkipReason::NotSpatial
    )
}

/// A forward fold ready to apply: the BN goes (or becomes an `Add`), the consumer changes.
struct ForwardPlan {
    bn: usize,
    consumer: usize,
    flatten: Option<usize>,
    kind: FoldKind,
    weight_name: String,
    weight_in_place: bool,
    bias_name: Option<String>,
    bias_in_place: bool,
    rewrite: ConsumerRewrite,
    folded_weight: ScaledTensor,
    detached: Vec<String>,
    max_rel_weight_change: f64,
}

/// The read-only step of a forward fold: the BN's one consumer (through a Flatten for Gemm)
/// and what it becomes, or why not.
fn plan_forward(
    index: &GraphIndex,
    eval: &ConstEval,
    bn_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<ForwardPlan, SkipReason>> {
    let bn = index.node(bn_index);
    let sole_consumer = |tensor: &str| -> std::result::Result<usize, SkipReason> {
        let consumers = index.consumers(tensor);
        if index.is_graph_output(tensor) || consumers.is_empty() {
            return Err(SkipReason::NoConsumer);
        }
        match consumers {
            [only] => Ok(*only),
            _ => Err(SkipReason::ConsumerOutputShared {
                tensor: tensor.to_string(),
            }),
        }
    };
    let mut consumer = or_skip!(sole_consumer(&bn.output[0]));
    let mut flatten = None;
    let mut data = bn.output[0].as_str();
    let first = index.node(consumer);
    let flattens = match (first.op_type(), first.domain()) {
        ("Flatten", "" | "ai.onnx") => Some(attr::int(first, "axis")?.unwrap_or(1) == 1),
        ("Reshape", "" | "ai.onnx") if first.input.len() == 2 && first.input[0] == bn.output[0] => {
            Some(reshape_keeps_rows(
                index,
                eval,
                &bn.input[0],
                &first.input[1],
            )?)
        }
        _ => None,
    };
    if let Some(keeps_rows) = flattens {
        skip_if!(
            !keeps_rows,
            SkipReason::ConsumerNotFoldable {
                op_type: format!(
                    "{} that does not lay each sample's channels out in one row",
                    first.op_type()
                )
            }
        );
        flatten = Some(consumer);
        data = &first.output[0];
        consumer = or_skip!(sole_consumer(data));
    }
    let node = index.node(consumer);
    let kind = match (node.op_type(), flatten) {
        ("Conv", None) => FoldKind::Conv,
        ("ConvTranspose", None) => FoldKind::ConvTranspose,
        ("Gemm", _) => FoldKind::Gemm,
        ("MatMul", _) => FoldKind::MatMul,
        (op, _) => {
            return Ok(Err(SkipReason::ConsumerNotFoldable {
                op_type: op.to_string(),
            }))
        }
    };
    if kind == FoldKind::MatMul {
        if flatten.is_none() {
            let rank = eval.rank(&bn.input[0]);
            skip_if!(rank != Some(2), SkipReason::MatMulRank { rank });
        }
        let bf16 = eval.dtype(&node.input[1]) == Some(crate::tensor::Dtype::Bf16);
        skip_if!(
            ctx.opset < 7 || (bf16 && ctx.opset < 13),
            SkipReason::ConsumerNotFoldable {
                op_type: "MatMul (no Gemm with broadcast C at this opset)".into()
            }
        );
    }
    skip_if!(
        !matches!(node.domain(), "" | "ai.onnx") || node.input.len() < 2 || node.input[0] != data,
        SkipReason::ConsumerNotFoldable {
            op_type: format!("{} (not on its data input)", node.op_type())
        }
    );
    if let Some(only) = &ctx.options.only {
        skip_if!(!only.contains(&kind), SkipReason::KindExcluded { kind });
    }
    let affine = or_skip!(bn_affine(eval, bn)?);
    let weight_name = node.input[1].clone();
    let weight = or_skip!(layer_weight(index, eval, &weight_name)?);
    let weight_values = weight.decode(ctx.store)?;
    let bias_name = node.input.get(2).filter(|b| !b.is_empty()).cloned();
    let bias = match &bias_name {
        Some(b) => Some(or_skip!(float_constant(eval, b)?)),
        None => None,
    };
    let pads_nonzero = attr::ints(node, "pads")?.is_some_and(|p| p.iter().any(|&v| v != 0));
    let auto_pad = attr::string(node, "auto_pad")?.unwrap_or_default();
    let padded = pads_nonzero || auto_pad.starts_with("SAME");
    let new_bias_name = bias_name
        .clone()
        .unwrap_or_else(|| format!("{weight_name}_bias"));
    let bn_label = node_label(bn);
    let input = ForwardInput {
        node,
        bn_name: &bn_label,
        weight_name: &weight_name,
        weight: &weight_values,
        bias_name: &new_bias_name,
        bias: bias.as_deref(),
        affine: &affine,
        group: attr::int(node, "group")?.unwrap_or(1).max(1) as usize,
        padded,
        positions: if flatten.is_some() { 0 } else { 1 },
        activation_dtype: eval.dtype(&bn.input[0]).unwrap_or(weight.dtype),
    };
    let rewrite = or_skip!(match kind {
        FoldKind::Conv => folds::forward_conv::plan(&input),
        FoldKind::ConvTranspose => folds::forward_conv_transpose::plan(&input),
        FoldKind::Gemm | FoldKind::MatMul => folds::forward_gemm::plan(&input),
    });
    let folded_weight = or_skip!(scale_within_range(&weight, &rewrite.weight, ctx)?);
    let exclusive = |name: &str| {
        index.is_own_initializer(name)
            && index.consumers(name) == [consumer]
            && !index.is_graph_input(name)
            && !index.is_graph_output(name)
    };
    let mut detached: Vec<String> = bn.input[1..5].to_vec();
    detached.push(weight_name.clone());
    detached.extend(bias_name.iter().cloned());
    let max_rel_weight_change = affine.max_rel_change();
    Ok(Ok(ForwardPlan {
        bn: bn_index,
        consumer,
        flatten,
        kind,
        weight_in_place: exclusive(&weight_name),
        bias_in_place: bias_name.as_deref().is_some_and(exclusive),
        weight_name,
        bias_name,
        rewrite,
        folded_weight,
        detached,
        max_rel_weight_change,
    }))
}

/// `weight` with one more scaling, or the skip when a scaled value would not fit its dtype.
fn scale_within_range(
    weight: &ScaledTensor,
    scaling: &Scaling,
    ctx: &PassContext,
) -> Result<std::result::Result<ScaledTensor, SkipReason>> {
    let folded = weight.then(scaling.clone());
    skip_if!(
        !folded.fits(ctx.store)?,
        SkipReason::FoldedValueOutOfRange {
            tensor: weight.name.clone()
        }
    );
    Ok(Ok(folded))
}

/// Whether `Reshape(x, shape)` is a flatten to `[batch, features]` that keeps each sample in one
/// row: a constant shape `[0, -1]` or `[0, K]`; or `[N, -1]` / `[-1, K]` / `[N, K]` when the static
/// shape of `x` shows that `N` is its batch and `K` its features per sample.
fn reshape_keeps_rows(index: &GraphIndex, eval: &ConstEval, x: &str, shape: &str) -> Result<bool> {
    let Ok(target) = eval.value(shape)? else {
        return Ok(false);
    };
    let target = target.as_i64();
    if target.len() != 2 {
        return Ok(false);
    }
    if target[0] == 0 && target[1] != 0 {
        return Ok(true);
    }
    if target[1] == -1 && target[0] > 0 {
        return Ok(batch_dim(index, x) == Some(target[0] as usize));
    }
    let Some(dims) = eval.static_shape(x) else {
        return Ok(false);
    };
    let (Some(&batch), features) = (dims.first(), dims.iter().skip(1).product::<usize>()) else {
        return Ok(false);
    };
    let rows_ok = target[0] == -1 || target[0] == batch as i64;
    let cols_ok = target[1] == -1 || target[1] == features as i64;
    Ok(rows_ok && cols_ok && !(target[0] == -1 && target[1] == -1))
}

/// The static batch (axis 0) of `name`, followed back through ops that keep axis 0 of their
/// first input (convolutions, pooling, normalizations, element-wise activations) to a declared
/// shape.
fn batch_dim(index: &GraphIndex, name: &str) -> Option<usize> {
    let mut name = name.to_string();
    for _ in 0..index.graph.node.len() + 1 {
        if let Some(Some(batch)) = index.declared_shape(&name).and_then(|d| d.first().copied()) {
            return Some(batch);
        }
        let node = index.node(index.producer(&name)?);
        let keeps_batch = crate::graph::keeps_batch_and_rank(node.op_type())
            || matches!(node.op_type(), "GlobalAveragePool" | "GlobalMaxPool");
        let keeps_batch = keeps_batch && matches!(node.domain(), "" | "ai.onnx");
        if !keeps_batch {
            return None;
        }
        name = node.input.first()?.clone();
    }
    None
}

/// Mutates the graph for a forward fold.
/// Applies a forward fold; returns its record and the tensors it may have left unused.
fn apply_forward(
    graph: &mut GraphProto,
    plan: ForwardPlan,
    ctx: &PassContext,
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
        ctx.store,
        LayerTensors {
            weight_name: &plan.weight_name,
            weight_in_place: plan.weight_in_place,
            weight: plan.folded_weight,
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
    let flatten_label = plan.flatten.map(|f| node_label(&graph.node[f]));
    let shift_node = match shift_add {
        Some(shift) => {
            let shift_name = write_tensor(
                graph,
                names,
                ctx.store,
                &format!("{bn_label}_shift"),
                false,
                NewTensor::Values(shift),
                None,
            )?;
            let add_name = names.unique(&format!("{bn_label}_shift_add"));
            graph.node[plan.bn] = NodeProto {
                name: Some(add_name.clone()),
                op_type: Some("Add".into()),
                input: vec![bn.input[0].clone(), shift_name],
                output: vec![bn.output[0].clone()],
                ..Default::default()
            };
            Some(add_name)
        }
        None => {
            let reader = plan.flatten.unwrap_or(plan.consumer);
            graph.node[reader].input[0] = bn.input[0].clone();
            edits.remove(plan.bn);
            edits.forget_value_info(bn.output[0].clone());
            None
        }
    };
    let mut detached = plan.detached;
    detached.retain(|d| d != &new_weight && Some(d) != new_bias.as_ref());
    let record = FoldRecord {
        graph: path.to_string(),
        kind: plan.kind,
        direction: Direction::Forward,
        producer: consumer_label,
        batch_norm: bn_label,
        passthrough: flatten_label.into_iter().collect(),
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

/// Rewrites every BN that is still there and is a fixed affine map into `Mul` and `Add`.
fn decompose_remaining(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    out: &mut PassOutcome,
) -> Result<()> {
    loop {
        let found = {
            let index = GraphIndex::new(graph, outer);
            let eval = ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx));
            let mut found = None;
            for i in 0..graph.node.len() {
                let node = &graph.node[i];
                if !is_batch_norm(node) {
                    continue;
                }
                let Err(reason) = plan_chain(&index, &eval, i, ctx)? else {
                    continue;
                };
                if !allows_forward(&reason) {
                    continue;
                }
                let Ok(affine) = bn_affine(&eval, node)? else {
                    continue;
                };
                let Some(rank) = eval.rank(&node.input[0]) else {
                    continue;
                };
                let dtype = eval.dtype(&node.input[0]).or(eval.dtype(&node.input[1]));
                let Some(dtype) = dtype.filter(|d| d.is_float()) else {
                    continue;
                };
                if let Ok(constants) =
                    folds::decompose::plan(&affine, rank, dtype, &node_label(node))
                {
                    found = Some((i, constants));
                    break;
                }
            }
            found
        };
        let Some((i, (scale, shift))) = found else {
            return Ok(());
        };
        let mut names = GraphNames::new(graph);
        let bn = graph.node[i].clone();
        let label = node_label(&bn);
        let scale_name = write_tensor(
            graph,
            &mut names,
            ctx.store,
            &format!("{label}_scale"),
            false,
            NewTensor::Values(scale),
            None,
        )?;
        let shift_name = write_tensor(
            graph,
            &mut names,
            ctx.store,
            &format!("{label}_shift"),
            false,
            NewTensor::Values(shift),
            None,
        )?;
        let scaled = names.unique(&format!("{}_scaled", bn.output[0]));
        let mul_name = names.unique(&format!("{label}_mul"));
        let add_name = names.unique(&format!("{label}_add"));
        let mul = NodeProto {
            name: Some(mul_name.clone()),
            op_type: Some("Mul".into()),
            input: vec![bn.input[0].clone(), scale_name],
            output: vec![scaled.clone()],
            ..Default::default()
        };
        let add = NodeProto {
            name: Some(add_name.clone()),
            op_type: Some("Add".into()),
            input: vec![scaled, shift_name],
            output: vec![bn.output[0].clone()],
            ..Default::default()
        };
        graph.node[i] = mul;
        graph.node.insert(i + 1, add);
        remove_dead(graph, bn.input[1..5].to_vec(), ctx);
        if ctx.ir_version < 4 {
            list_initializers_as_inputs(graph);
        }
        out.decompositions.push(DecompositionRecord {
            graph: path.to_string(),
            node: label,
            mul: mul_name,
            add: add_name,
        });
    }
}

fn inputs_are_constants(ctx: &PassContext) -> bool {
    ctx.options.inputs_are_constants || ctx.ir_version < 4
}

fn is_batch_norm(node: &NodeProto) -> bool {
    node.op_type() == "BatchNormalization" && matches!(node.domain(), "" | "ai.onnx")
}

fn fold_subgraphs(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    out: &mut PassOutcome,
) -> Result<()> {
    if !graph
        .node
        .iter()
        .any(|n| n.attribute.iter().any(is_graph_attribute))
    {
        return Ok(());
    }
    let mut visible: HashMap<String, TensorProto> = outer
        .initializers
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for t in &graph.initializer {
        visible.insert(t.name().to_string(), t.clone());
    }
    let scope = OuterScope {
        initializers: Some(&visible),
    };
    for node in &mut graph.node {
        let label = node_label(node);
        for a in &mut node.attribute {
            let sub_path = format!("{path}/{label}/{}", a.name());
            if let Some(g) = a.g.as_mut() {
                fold_graph(g, ctx, &sub_path, scope, out)?;
            }
            for (k, g) in a.graphs.iter_mut().enumerate() {
                fold_graph(g, ctx, &format!("{sub_path}[{k}]"), scope, out)?;
            }
        }
    }
    Ok(())
}

/// The read-only step: everything about one BN chain, or why it does not fold.
fn plan_chain(
    index: &GraphIndex,
    eval: &ConstEval,
    bn_index: usize,
    ctx: &PassContext,
) -> Result<std::result::Result<ChainPlan, SkipReason>> {
    let bn = index.node(bn_index);
    let label = node_label(bn);
    skip_if!(
        ctx.options.skip_nodes.contains(&label)
            || ctx.options.skip_nodes.contains(bn.name())
            || bn
                .output
                .first()
                .is_some_and(|o| ctx.options.skip_nodes.contains(o)),
        SkipReason::NodeExcluded
    );
    if bn.input.len() < 5 || bn.output.is_empty() || bn.input[..5].iter().any(|i| i.is_empty()) {
        return Err(node_error(bn, "needs 5 inputs and an output"));
    }
    skip_if!(
        attr::int(bn, "training_mode")?.unwrap_or(0) != 0,
        SkipReason::TrainingMode
    );
    skip_if!(
        ctx.opset < 7 && attr::int(bn, "is_test")?.unwrap_or(0) == 0,
        SkipReason::TrainingMode
    );
    skip_if!(
        ctx.opset < 9 && attr::int(bn, "spatial")?.unwrap_or(1) != 1,
        SkipReason::NotSpatial
    );
    skip_if!(
        bn.output[1..]
            .iter()
            .any(|o| !o.is_empty() && (!index.consumers(o).is_empty() || index.is_graph_output(o))),
        SkipReason::ExtraOutputsUsed
    );

    // Walk back from the BN through Identity and Add-of-a-constant to the producer.
    let mut consumer = bn_index;
    let mut name = bn.input[0].as_str();
    let mut passthrough = Vec::new();
    let mut added: Vec<(String, std::rc::Rc<Tensor>)> = Vec::new();
    let producer = loop {
        skip_if!(
            index.is_graph_output(name),
            SkipReason::ProducerOutputIsGraphOutput {
                tensor: name.to_string()
            }
        );
        skip_if!(
            !index.feeds_only(name, consumer),
            SkipReason::ProducerOutputShared {
                tensor: name.to_string()
            }
        );
        let Some(p) = index.producer(name) else {
            return Ok(Err(SkipReason::NoProducer));
        };
        let node = index.node(p);
        match node.op_type() {
            "Identity" if node.input.len() == 1 => {
                passthrough.push(p);
                consumer = p;
                name = &node.input[0];
            }
            "Add" if node.input.len() == 2 => {
                let constant = (0..2).find_map(|k| match eval.value(&node.input[k]) {
                    Ok(Ok(v)) => Some(Ok((k, v))),
                    Ok(Err(_)) => None,
                    Err(e) => Some(Err(e)),
                });
                let Some((k, value)) = constant.transpose()? else {
                    return Ok(Err(SkipReason::UnsupportedProducer {
                        op_type: "Add".into(),
                    }));
                };
                added.push((node.input[k].clone(), value));
                passthrough.push(p);
                consumer = p;
                name = &node.input[1 - k];
            }
            op => match FoldKind::from_op_type(op)
                .filter(|_| matches!(node.domain(), "" | "ai.onnx"))
            {
                Some(_) => break p,
                None => {
                    return Ok(Err(SkipReason::UnsupportedProducer {
                        op_type: op.to_string(),
                    }))
                }
            },
        }
    };
    let prod = index.node(producer);
    let Some(kind) = FoldKind::from_op_type(prod.op_type()) else {
        return Ok(Err(SkipReason::NoProducer));
    };
    if let Some(only) = &ctx.options.only {
        skip_if!(!only.contains(&kind), SkipReason::KindExcluded { kind });
    }
    if prod.output.len() != 1 || prod.input.len() < 2 {
        return Err(node_error(
            prod,
            "expected at least 2 inputs and one output",
        ));
    }

    let mut affine = or_skip!(bn_affine(eval, bn)?);
    let channels = affine.channels();

    // Producer weight and bias.
    let weight_slot = match kind {
        FoldKind::MatMul => {
            let right = constant(eval, &prod.input[1])?;
            let left = constant(eval, &prod.input[0])?;
            match (right, left) {
                (Err(_), Ok(_)) => return Ok(Err(SkipReason::MatMulWeightOnLeft)),
                _ => 1,
            }
        }
        _ => 1,
    };
    let weight_name = prod.input[weight_slot].clone();
    let weight = or_skip!(layer_weight(index, eval, &weight_name)?);
    let bias_name = match kind {
        FoldKind::MatMul => None,
        _ => prod.input.get(2).filter(|b| !b.is_empty()).cloned(),
    };
    let bias = match &bias_name {
        Some(b) => Some(or_skip!(float_constant(eval, b)?)),
        None => None,
    };

    let output_rank = match kind {
        FoldKind::Conv | FoldKind::ConvTranspose => Some(weight.dims.len()),
        FoldKind::Gemm => Some(2),
        FoldKind::MatMul => eval.rank(&prod.output[0]),
    };
    for (added_name, value) in &added {
        let per_channel = output_rank.and_then(|rank| per_channel_values(value, rank, channels));
        let Some(c) = per_channel else {
            return Ok(Err(SkipReason::AddNotPerChannel {
                tensor: added_name.clone(),
            }));
        };
        for (k, v) in c.iter().enumerate() {
            affine.shift[k] += affine.scale[k] * v;
        }
    }

    let new_bias_name = bias_name
        .clone()
        .unwrap_or_else(|| format!("{weight_name}_bias"));
    let input = FoldInput {
        node: prod,
        weight_name: &weight_name,
        bias_name: &new_bias_name,
        weight: &weight,
        weight_slot,
        bias: bias.as_deref(),
        affine: &affine,
        output_rank,
        opset: ctx.opset,
    };
    let rewrite = or_skip!(match kind {
        FoldKind::Conv => folds::conv::plan(&input)?,
        FoldKind::ConvTranspose => folds::conv_transpose::plan(&input)?,
        FoldKind::Gemm => folds::gemm::plan(&input)?,
        FoldKind::MatMul => folds::matmul::plan(&input)?,
    });
    let folded_weight = or_skip!(scale_within_range(&weight, &rewrite.weight, ctx)?);

    let exclusive = |name: &str| {
        index.is_own_initializer(name)
            && index.consumers(name) == [producer]
            && !index.is_graph_input(name)
            && !index.is_graph_output(name)
    };
    let mut detached: Vec<String> = bn.input[1..5].to_vec();
    detached.push(weight_name.clone());
    detached.extend(bias_name.iter().cloned());
    detached.extend(added.iter().map(|(n, _)| n.clone()));
    let max_rel_weight_change = affine.max_rel_change();
    Ok(Ok(ChainPlan {
        bn: bn_index,
        producer,
        passthrough,
        kind,
        weight_in_place: exclusive(&weight_name),
        bias_in_place: bias_name.as_deref().is_some_and(exclusive),
        weight_name,
        bias_name,
        rewrite,
        folded_weight,
        detached,
        max_rel_weight_change,
        followed_by: sole_direct_consumer(index, &bn.output[0]),
    }))
}

/// The op type of the one node that takes `name` as a direct input (uses inside subgraphs do not
/// count), if exactly one does.
fn sole_direct_consumer(index: &GraphIndex, name: &str) -> Option<String> {
    let mut consumers: Vec<usize> = index
        .consumers(name)
        .iter()
        .copied()
        .filter(|&i| index.node(i).input.iter().any(|input| input == name))
        .collect();
    consumers.dedup();
    match consumers.as_slice() {
        [only] => Some(index.node(*only).op_type().to_string()),
        _ => None,
    }
}

/// The BN's per-channel affine map `y = scale·x + shift`, or why its parameters do not give one.
fn bn_affine(eval: &ConstEval, bn: &NodeProto) -> Result<std::result::Result<Affine, SkipReason>> {
    let mut params = Vec::with_capacity(4);
    for name in &bn.input[1..5] {
        params.push(or_skip!(float_constant(eval, name)?));
    }
    let channels = params[0].len();
    for (name, p) in bn.input[1..5].iter().zip(&params) {
        skip_if!(
            p.dims.len() != 1 || p.len() != channels,
            SkipReason::ShapeMismatch {
                tensor: name.clone(),
                detail: format!("shape {:?}, expected [{channels}]", p.dims),
            }
        );
    }
    let epsilon = attr::float(bn, "epsilon")?.unwrap_or(1e-5) as f64;
    skip_if!(
        !epsilon.is_finite(),
        SkipReason::EpsilonNotFinite {
            value: describe_non_finite(epsilon)
        }
    );
    let mut affine = Affine {
        scale: Vec::with_capacity(channels),
        shift: Vec::with_capacity(channels),
    };
    for c in 0..channels {
        let (gamma, beta, mean, var) = (
            params[0].data[c],
            params[1].data[c],
            params[2].data[c],
            params[3].data[c],
        );
        let denominator = var + epsilon;
        skip_if!(
            !denominator.is_finite() || denominator <= 0.0,
            SkipReason::NonPositiveVariance { channel: c }
        );
        let s = gamma / denominator.sqrt();
        affine.scale.push(s);
        affine.shift.push(beta - mean * s);
    }

    Ok(Ok(affine))
}

/// A layer's weight: a floating-point constant that does not come out of `DequantizeLinear`.
/// A stored one is not decoded: folds only need its dtype and shape.
fn layer_weight(
    index: &GraphIndex,
    eval: &ConstEval,
    name: &str,
) -> Result<std::result::Result<ScaledTensor, SkipReason>> {
    if let Some(q) = index.producer(name) {
        skip_if!(
            index.node(q).op_type() == "DequantizeLinear",
            SkipReason::QuantizedWeight {
                tensor: name.to_string()
            }
        );
    }
    let weight = match eval.stored(name)? {
        Some(Err(not)) => return Ok(Err(not_constant(name, not))),
        Some(Ok(stored)) => ScaledTensor::stored(stored, eval.store())?,
        None => {
            let value = or_skip!(float_constant(eval, name)?);
            ScaledTensor::values(name, std::sync::Arc::new(Tensor::clone(&value)))
        }
    };
    skip_if!(
        !weight.dtype.is_float(),
        SkipReason::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: weight.dtype.name().into()
        }
    );
    if let Some((element, value)) = weight.first_not_finite(eval.store())? {
        return Ok(Err(SkipReason::NotFinite {
            tensor: name.to_string(),
            element,
            value: describe_non_finite(value),
        }));
    }
    Ok(Ok(weight))
}

/// A floating-point constant, or why not.
fn float_constant(
    eval: &ConstEval,
    name: &str,
) -> Result<std::result::Result<std::rc::Rc<Tensor>, SkipReason>> {
    let value = or_skip!(constant(eval, name)?);
    skip_if!(
        !value.dtype.is_float(),
        SkipReason::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: value.dtype.name().into()
        }
    );
    if let Some(element) = value.data.iter().position(|v| !v.is_finite()) {
        return Ok(Err(SkipReason::NotFinite {
            tensor: name.to_string(),
            element,
            value: describe_non_finite(value.data[element]),
        }));
    }
    Ok(Ok(value))
}

/// `NaN`, `inf` or `-inf`.
fn describe_non_finite(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v > 0.0 => "inf".into(),
        _ => "-inf".into(),
    }
}

fn constant(
    eval: &ConstEval,
    name: &str,
) -> Result<std::result::Result<std::rc::Rc<Tensor>, SkipReason>> {
    Ok(eval.value(name)?.map_err(|not| not_constant(name, not)))
}

fn not_constant(name: &str, not: NotConstant) -> SkipReason {
    match not {
        NotConstant::OverridableInput(t) => SkipReason::ParamOverridable { tensor: t },
        NotConstant::Runtime(_) => SkipReason::ParamNotConstant {
            tensor: name.to_string(),
        },
        NotConstant::Sparse(t) => SkipReason::ParamSparse { tensor: t },
    }
}

/// The per-channel values of a constant added to a tensor of rank `rank` with `channels`
/// channels on axis 1, when it adds one value per channel and does not grow the tensor.
fn per_channel_values(value: &Tensor, rank: usize, channels: usize) -> Option<Vec<f64>> {
    if value.dims.len() > rank || rank < 2 {
        return None;
    }
    let offset = rank - value.dims.len();
    let mut varies_per_channel = false;
    for (axis, &d) in value.dims.iter().enumerate() {
        if axis + offset == 1 && d == channels {
            varies_per_channel = true;
        } else if d != 1 {
            return None;
        }
    }
    match (varies_per_channel, value.len()) {
        (true, _) => Some(value.data.clone()),
        (false, 1) => Some(vec![value.data[0]; channels]),
        _ => None,
    }
}

/// The one function that mutates the graph for a backward fold. Tensors it detaches are added to
/// `detached`, for the caller to remove once they are dead.
fn apply(
    graph: &mut GraphProto,
    plan: ChainPlan,
    ctx: &PassContext,
    path: &str,
    names: &mut GraphNames,
    edits: &mut NodeEdits,
    detached: &mut Vec<String>,
) -> Result<FoldRecord> {
    let bn = graph.node[plan.bn].clone();
    let out_name = bn.output[0].clone();
    let ProducerRewrite {
        weight_slot,
        bias,
        change,
        ..
    } = plan.rewrite;

    let (new_weight, new_bias) = write_layer_tensors(
        graph,
        names,
        ctx.store,
        LayerTensors {
            weight_name: &plan.weight_name,
            weight_in_place: plan.weight_in_place,
            weight: plan.folded_weight,
            bias_name: plan.bias_name.as_deref(),
            bias_in_place: plan.bias_in_place,
            bias: Some(bias),
        },
    )?;
    let new_bias = new_bias.unwrap_or_default();

    let then_add_names = (change == NodeChange::MatMulThenAdd).then(|| {
        let label = node_label(&graph.node[plan.producer]);
        (
            names.unique(&format!("{out_name}_matmul")),
            names.unique(&format!("{label}_bias_add")),
        )
    });
    let producer = &mut graph.node[plan.producer];
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
    let producer_label = node_label(&graph.node[plan.producer]);
    let passthrough_labels: Vec<String> = plan
        .passthrough
        .iter()
        .map(|&i| node_label(&graph.node[i]))
        .collect();
    for &i in plan.passthrough.iter().chain([&plan.bn]) {
        edits.remove(i);
    }
    if let Some(add) = extra_node {
        edits.insert_after(plan.producer, add);
    }
    edits.forget_value_info(old_out);

    detached.extend(
        plan.detached
            .into_iter()
            .filter(|d| d != &new_weight && d != &new_bias),
    );
    Ok(FoldRecord {
        graph: path.to_string(),
        kind: plan.kind,
        direction: Direction::Backward,
        producer: producer_label,
        batch_norm: node_label(&bn),
        passthrough: passthrough_labels,
        output: out_name,
        followed_by: plan.followed_by,
        weight: new_weight,
        weight_in_place: plan.weight_in_place,
        bias: new_bias,
        shift_kept_as: None,
        max_rel_weight_change: plan.max_rel_weight_change,
    })
}

/// A layer's folded weight and bias, and where they came from.
struct LayerTensors<'a> {
    weight_name: &'a str,
    weight_in_place: bool,
    weight: ScaledTensor,
    bias_name: Option<&'a str>,
    bias_in_place: bool,
    bias: Option<Tensor>,
}

/// Writes a layer's folded weight and (when there is one) bias, each in place when the layer
/// owns it, else under a new name; a bias the layer did not have is named after the weight and
/// stored like it (external when the weight is).
fn write_layer_tensors(
    graph: &mut GraphProto,
    names: &mut GraphNames,
    store: &ExternalStore,
    tensors: LayerTensors,
) -> Result<(String, Option<String>)> {
    let weight_template = names.initializer(graph, tensors.weight_name).cloned();
    let new_weight = write_tensor(
        graph,
        names,
        store,
        tensors.weight_name,
        tensors.weight_in_place,
        NewTensor::Scaled(Box::new(tensors.weight)),
        weight_template.as_ref(),
    )?;
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
        store,
        &base,
        tensors.bias_in_place,
        NewTensor::Values(bias),
        template.as_ref(),
    )?;
    Ok((new_weight, Some(new_bias)))
}

/// What rewrites look up often: every name the graph uses (subgraphs included, and each name
/// handed out since) and where each initializer is. Built once per round of folds, so that a fold
/// costs what it touches rather than a scan of the whole graph.
struct GraphNames {
    used: HashSet<String>,
    initializers: HashMap<String, usize>,
}

impl GraphNames {
    fn new(graph: &GraphProto) -> GraphNames {
        let mut used = HashSet::default();
        crate::graph::collect_names(graph, &mut used);
        let initializers = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name().to_string(), i))
            .collect();
        GraphNames { used, initializers }
    }

    /// `base`, or `base_1`, `base_2`…: the first name nothing uses yet, now taken.
    fn unique(&mut self, base: &str) -> String {
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
    fn initializer<'g>(&self, graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
        self.initializers
            .get(name)
            .and_then(|&i| graph.initializer.get(i))
    }

    /// Stores `tensor` as the initializer of its name: in the slot of the one it replaces (whose
    /// doc string and metadata it keeps), else appended.
    fn store(&mut self, graph: &mut GraphProto, mut tensor: TensorProto) {
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
struct NodeEdits {
    removed: Vec<bool>,
    inserted_after: Vec<(usize, NodeProto)>,
    stale_value_info: HashSet<String>,
}

impl NodeEdits {
    fn new(nodes: usize) -> NodeEdits {
        NodeEdits {
            removed: vec![false; nodes],
            inserted_after: Vec::new(),
            stale_value_info: HashSet::default(),
        }
    }

    fn remove(&mut self, node: usize) {
        self.removed[node] = true;
    }

    fn insert_after(&mut self, node: usize, inserted: NodeProto) {
        self.inserted_after.push((node, inserted));
    }

    /// Drops the `value_info` of a tensor that no longer exists.
    fn forget_value_info(&mut self, name: String) {
        self.stale_value_info.insert(name);
    }

    fn finish(mut self, graph: &mut GraphProto) {
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
enum NewTensor {
    Values(Tensor),
    Scaled(Box<ScaledTensor>),
}

/// Stores `value` under `name` (in place) or under a new unique name derived from it, keeping
/// the storage of `template`: a tensor derived from an external one stays external. A scaled
/// weight (and anything bound for external data) waits in the store until the model is
/// written.
fn write_tensor(
    graph: &mut GraphProto,
    names: &mut GraphNames,
    store: &ExternalStore,
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
    let external = template.filter(|t| tensor::is_external(t));
    let mut proto = match (value, external) {
        (NewTensor::Values(v), None) => v.to_proto(&final_name),
        (value, _) => {
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
            let marker = store.add_pending(scaled)?;
            TensorProto {
                external_data: vec![marker],
                ..proto
            }
        }
    };
    if let Some(t) = external {
        proto.data_location = t.data_location;
        let location = t.external_data.iter().filter(|e| e.key() == "location");
        proto.external_data = location.cloned().chain(proto.external_data).collect();
    }
    names.store(graph, proto);
    Ok(final_name)
}

/// Removes initializers and nodes that nothing uses any more, starting from `candidates`.
fn remove_dead(graph: &mut GraphProto, candidates: Vec<String>, ctx: &PassContext) {
    let mut work = candidates;
    // One index per round: the dead initializers and nodes among `work`; the inputs of the nodes
    // removed are the next round's candidates.
    while !work.is_empty() {
        let (dead_initializers, dead_nodes) = {
            let index = GraphIndex::new(graph, OuterScope::default());
            let mut initializers = HashSet::default();
            let mut nodes = BTreeSet::new();
            for name in &work {
                if !index.consumers(name).is_empty()
                    || index.is_graph_output(name)
                    || (index.is_graph_input(name) && ctx.ir_version >= 4)
                {
                    continue;
                }
                let Some(p) = index.producer(name) else {
                    initializers.insert(name.clone());
                    continue;
                };
                let node = &graph.node[p];
                let unused = node.output.iter().all(|o| {
                    o.is_empty() || (index.consumers(o).is_empty() && !index.is_graph_output(o))
                });
                if unused && matches!(node.domain(), "" | "ai.onnx") {
                    nodes.insert(p);
                }
            }
            (initializers, nodes)
        };
        graph
            .initializer
            .retain(|t| !dead_initializers.contains(t.name()));
        if ctx.ir_version < 4 {
            graph
                .input
                .retain(|v| !dead_initializers.contains(v.name()));
        }
        work = Vec::new();
        for &p in dead_nodes.iter().rev() {
            let node = graph.node.remove(p);
            work.extend(node.input.into_iter().filter(|i| !i.is_empty()));
        }
    }
}

/// IR < 4 requires every initializer to be listed in `graph.input`.
fn list_initializers_as_inputs(graph: &mut GraphProto) {
    let listed: HashSet<String> = graph.input.iter().map(|v| v.name().to_string()).collect();
    let missing: Vec<ValueInfoProto> = graph
        .initializer
        .iter()
        .filter(|t| !listed.contains(t.name()))
        .map(value_info_of)
        .collect();
    graph.input.extend(missing);
}

fn value_info_of(t: &TensorProto) -> ValueInfoProto {
    use crate::proto::{tensor_shape_proto::dimension, tensor_shape_proto::Dimension, type_proto};
    ValueInfoProto {
        name: Some(t.name().to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: t.data_type,
                shape: Some(crate::proto::TensorShapeProto {
                    dim: t
                        .dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `value_info` entries for tensors that no longer exist.
fn drop_stale_value_info(graph: &mut GraphProto) {
    if graph.value_info.is_empty() {
        return;
    }
    let live: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.initializer.iter().map(|t| t.name()))
        .chain(graph.input.iter().map(|v| v.name()))
        .collect();
    graph.value_info.retain(|v| live.contains(v.name()));
}
