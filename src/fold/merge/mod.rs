//! The branch-merging phase (`--merge-branches`, after the folds): each `Add` of parallel
//! branches of one tensor becomes one Conv (the rule and its math: [`super::rules::merge_branches`]).
//! Matching is read-only and returns a plan or a skip reason; [`merge_branches`] applies them.

mod tree;

pub(in crate::fold) use tree::is_root_add;
use tree::{collect, geometry, Leaf};

use foldhash::HashSet;

use super::chain::excluded;
use super::cleanup::{list_initializers_as_inputs, remove_dead, remove_nodes};
use super::edits::{write_tensor, GraphNames, NewTensor};
use super::inputs_are_constants;
use super::options::PassContext;
use super::plan::{bn_affine, float_constant, layer_weight};
use super::rules::merge_branches::{add_centred, add_identity, Branch};
use super::rules::{per_channel_values, round_into, ChannelAxis};
use crate::attr;
use crate::consts::ConstEval;
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::{node_label, GraphIndex, OuterScope};
use crate::proto::GraphProto;
use crate::report::MergeRecord;
use crate::tensor::Tensor;

/// A merge ready to apply.
pub(super) struct MergePlan {
    root: usize,
    adds: Vec<usize>,
    convs: Vec<usize>,
    batch_norms: Vec<usize>,
    identities: usize,
    data: String,
    /// The Conv with the largest kernel: the merged node keeps its attributes.
    template: usize,
    weight: Tensor,
    bias: Tensor,
    detached: Vec<String>,
    range_before: f64,
    range_after: f64,
}

/// The merge of the Add tree rooted at `root`, or why its branches do not merge.
pub(super) fn plan_merge(
    index: &GraphIndex,
    eval: &ConstEval,
    ctx: &PassContext,
    root: usize,
) -> Result<Option<MergePlan>> {
    // Why a tree does not merge is not reported (most Adds are residual connections); the
    // comments say it.
    let not_mergeable = |_why: &str| Ok(None);
    let (mut leaves, mut adds) = (Vec::new(), Vec::new());
    collect(index, root, &mut leaves, &mut adds);
    if adds.iter().any(|&a| index.node(a).input.len() != 2) {
        return not_mergeable("an Add without two inputs");
    }
    // Conv branches first: they name the shared input.
    let sole = |leaf: &Leaf| {
        index.feeds_only(&leaf.tensor, leaf.add) && !index.is_graph_output(&leaf.tensor)
    };
    let producer_of = |leaf: &Leaf| index.producer(&leaf.tensor).map(|p| (p, index.node(p)));
    let mut convs = Vec::new();
    for leaf in &leaves {
        if let Some((p, node)) = producer_of(leaf) {
            if node.op_type() == "Conv" && matches!(node.domain(), "" | "ai.onnx") && sole(leaf) {
                convs.push(p);
            }
        }
    }
    let Some(&first) = convs.first() else {
        return not_mergeable("no Conv branch");
    };
    let data = index.node(first).input[0].clone();
    let (mut batch_norms, mut identities, mut constants) = (Vec::new(), 0, Vec::new());
    for leaf in &leaves {
        if let Ok(value) = eval.value(&leaf.tensor)? {
            // A constant branch (MobileOne exports `+ 0` for a block without identity) goes
            // into the bias.
            constants.push((leaf.tensor.clone(), value));
            continue;
        }
        match producer_of(leaf) {
            Some((p, _)) if convs.contains(&p) => {}
            Some((p, node))
                if node.op_type() == "BatchNormalization"
                    && node.input.len() >= 5
                    && node.input[0] == data
                    && sole(leaf)
                    && !excluded(node, ctx)
                    && attr::int(node, "training_mode")?.unwrap_or(0) == 0
                    && node.output[1..]
                        .iter()
                        .all(|o| o.is_empty() || index.consumers(o).is_empty()) =>
            {
                batch_norms.push(p)
            }
            _ if leaf.tensor == data => identities += 1,
            _ => {
                return not_mergeable(
                    "a branch that is neither a Conv, a BN nor the input of the Convs",
                )
            }
        }
    }
    if convs.len() + batch_norms.len() + identities < 2 {
        return not_mergeable("a single branch");
    }
    // The Convs: one input, one geometry, kernels that centre-align.
    let mut shapes = Vec::new();
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for &c in &convs {
        let conv = index.node(c);
        if conv.input[0] != data || conv.input.len() < 2 {
            return not_mergeable("Convs that read different tensors");
        }
        // Merged weights are computed now, so their values are read now.
        let Ok(weight) = layer_weight(index, eval, &conv.input[1], true)? else {
            return not_mergeable("a Conv weight that is not a float constant");
        };
        let Some(g) = geometry(conv, &weight.dims)? else {
            return not_mergeable("a Conv with auto_pad or no spatial axes");
        };
        let bias = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => match float_constant(eval, b)? {
                Ok(b) => Some(b),
                Err(_) => return not_mergeable("a Conv bias that is not a float constant"),
            },
            None => None,
        };
        weights.push(weight.exact(ctx.store)?);
        biases.push(bias);
        shapes.push(g);
    }
    let lead = &shapes[0];
    let same = shapes.iter().all(|g| {
        g.group == lead.group
            && g.strides == lead.strides
            && g.dilations == lead.dilations
            && g.dims.len() == lead.dims.len()
            && g.dims[..2] == lead.dims[..2]
    });
    let dtype = weights[0].dtype;
    if !same || weights.iter().any(|w| w.dtype != dtype) {
        return not_mergeable("Convs of different group, strides, dilations, channels or dtype");
    }
    let spatial = lead.dims.len() - 2;
    let kernel: Vec<usize> = (0..spatial)
        .map(|d| shapes.iter().map(|g| g.dims[2 + d]).max().unwrap_or(1))
        .collect();
    let Some(template) = (0..convs.len()).find(|&k| shapes[k].dims[2..] == kernel[..]) else {
        return not_mergeable("no Conv has the largest kernel on every axis");
    };
    let big_pads = &shapes[template].pads;
    for g in &shapes {
        for d in 0..spatial {
            let shrink = kernel[d] - g.dims[2 + d];
            let inset = (shrink / 2) as i64 * g.dilations[d];
            if !shrink.is_multiple_of(2)
                || g.pads[d] != big_pads[d] - inset
                || g.pads[d + spatial] != big_pads[d + spatial] - inset
            {
                return not_mergeable("kernels that do not centre-align under their padding");
            }
        }
    }
    let (out_channels, in_per_group) = (lead.dims[0], lead.dims[1]);
    let in_channels = in_per_group * lead.group as usize;
    if batch_norms.len() + identities > 0 {
        let keeps_size = (0..spatial).all(|d| {
            let half = (kernel[d] / 2) as i64 * lead.dilations[d];
            kernel[d] % 2 == 1
                && lead.strides[d] == 1
                && big_pads[d] == half
                && big_pads[d + spatial] == half
        });
        if out_channels != in_channels || !keeps_size {
            return not_mergeable(
                "an identity branch beside Convs that change the size or channels",
            );
        }
    }
    // W = Σ pad(Wᵢ) + identities + BN scales; b = Σ bᵢ + BN shifts, in f64.
    let per_channel: usize = in_per_group * kernel.iter().product::<usize>();
    let mut merged = vec![0.0; out_channels * per_channel];
    let mut bias = vec![0.0; out_channels];
    let mut range_before: f64 = 0.0;
    for (w, b) in weights.iter().zip(&biases) {
        range_before = w.data.iter().fold(range_before, |m, v| m.max(v.abs()));
        add_centred(
            &mut merged,
            &kernel,
            &Branch {
                dims: &w.dims,
                values: &w.data,
            },
        );
        if let Some(b) = b {
            if b.len() != out_channels {
                return not_mergeable("a Conv bias that is not one value per channel");
            }
            bias.iter_mut().zip(&b.data).for_each(|(t, v)| *t += v);
        }
    }
    for _ in 0..identities {
        add_identity(&mut merged, &kernel, in_per_group, &vec![1.0; out_channels]);
    }
    for &bn in &batch_norms {
        let Ok(affine) = bn_affine(eval, index.node(bn))? else {
            return not_mergeable("a BN branch whose parameters do not fold");
        };
        if affine.channels() != out_channels {
            return not_mergeable("a BN branch of another channel count");
        }
        add_identity(&mut merged, &kernel, in_per_group, &affine.scale);
        bias.iter_mut()
            .zip(&affine.shift)
            .for_each(|(t, v)| *t += v);
    }
    let axis = ChannelAxis {
        rank: lead.dims.len(),
        axis: 1,
        channels: out_channels,
    };
    for (_, value) in &constants {
        let Some(values) = per_channel_values(value, &axis).filter(|_| value.dtype.is_float())
        else {
            return not_mergeable("a constant branch that is not one value per channel");
        };
        bias.iter_mut().zip(&values).for_each(|(t, v)| *t += v);
    }
    let template_node = index.node(convs[template]);
    let mut dims = vec![out_channels, in_per_group];
    dims.extend(&kernel);
    let name = format!("{}_merged", node_label(template_node));
    let range_after = merged.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let Ok(weight) = round_into(dtype, dims, merged, &name) else {
        return not_mergeable("a merged weight out of its dtype's range");
    };
    let bias_dtype = biases.iter().flatten().next().map_or(dtype, |b| b.dtype);
    let Ok(bias) = round_into(bias_dtype, vec![out_channels], bias, &name) else {
        return not_mergeable("a merged bias out of its dtype's range");
    };
    let mut detached = Vec::new();
    for &c in &convs {
        detached.extend(
            index.node(c).input[1..]
                .iter()
                .filter(|n| !n.is_empty())
                .cloned(),
        );
    }
    for &bn in &batch_norms {
        detached.extend(index.node(bn).input[1..5].iter().cloned());
    }
    detached.extend(constants.into_iter().map(|(name, _)| name));
    Ok(Some(MergePlan {
        root,
        adds,
        template: convs[template],
        convs,
        batch_norms,
        identities,
        data,
        weight,
        bias,
        detached,
        range_before,
        range_after,
    }))
}

/// Merges every Add of parallel branches in `graph` that merges (all of them, in one sweep:
/// merges never share a node, an Add tree being its root's alone).
pub(super) fn merge_branches(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    folded: &mut FoldedWeights,
    records: &mut Vec<MergeRecord>,
) -> Result<()> {
    let plans = {
        let index = GraphIndex::new(graph, outer);
        let eval = ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx))
            .with_folded(folded);
        let mut plans = Vec::new();
        for i in 0..graph.node.len() {
            if is_root_add(&index, i) {
                if let Some(plan) = plan_merge(&index, &eval, ctx, i)? {
                    plans.push(plan);
                }
            }
        }
        plans
    };
    if plans.is_empty() {
        return Ok(());
    }
    let mut names = GraphNames::new(graph, folded);
    let mut gone = Vec::new();
    let mut detached = Vec::new();
    for plan in plans {
        let template = graph.node[plan.template].clone();
        let label = node_label(&template);
        let kernel: Vec<i64> = plan.weight.dims[2..].iter().map(|&d| d as i64).collect();
        let weight_name = write_tensor(
            graph,
            &mut names,
            &format!("{label}_merged.weight"),
            false,
            NewTensor::Values(plan.weight),
            None,
        )?;
        let bias_name = write_tensor(
            graph,
            &mut names,
            &format!("{label}_merged.bias"),
            false,
            NewTensor::Values(plan.bias),
            None,
        )?;
        let output = graph.node[plan.root].output[0].clone();
        let mut branches: Vec<String> = plan
            .convs
            .iter()
            .map(|&c| node_label(&graph.node[c]))
            .collect();
        branches.extend(plan.batch_norms.iter().map(|&b| node_label(&graph.node[b])));
        branches.extend(std::iter::repeat_n(plan.data.clone(), plan.identities));
        let adds: Vec<String> = plan
            .adds
            .iter()
            .map(|&a| node_label(&graph.node[a]))
            .collect();
        let merged = &mut graph.node[plan.template];
        merged.input = vec![plan.data, weight_name.clone(), bias_name.clone()];
        merged.output = vec![output.clone()];
        if let Some(k) = merged
            .attribute
            .iter_mut()
            .find(|a| a.name() == "kernel_shape")
        {
            k.ints = kernel;
        }
        let old_output = template.output[0].clone();
        graph.value_info.retain(|v| v.name() != old_output);
        gone.extend(plan.adds.iter().chain(&plan.batch_norms).copied());
        gone.extend(plan.convs.iter().copied().filter(|&c| c != plan.template));
        detached.extend(plan.detached);
        records.push(MergeRecord {
            graph: path.to_string(),
            node: label,
            output,
            branches,
            adds,
            weight: weight_name,
            bias: bias_name,
            max_abs_before: plan.range_before,
            max_abs_after: plan.range_after,
        });
    }
    let gone_outputs: HashSet<String> = remove_nodes(graph, &gone.into_iter().collect())
        .into_iter()
        .flat_map(|node| node.output)
        .collect();
    graph
        .value_info
        .retain(|v| !gone_outputs.contains(v.name()));
    remove_dead(graph, detached, ctx);
    folded.retain_initializers_of(graph);
    if ctx.ir_version < 4 {
        list_initializers_as_inputs(graph);
    }
    Ok(())
}
