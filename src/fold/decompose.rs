//! The decompose phase (`--decompose-standalone`): each BatchNormalization that folds nowhere
//! becomes one `Mul` and one `Add` of precomputed constants ([`super::rules::decompose`]).

use foldhash::HashMap;

use super::backward::plan_chain;
use super::cleanup::{list_initializers_as_inputs, remove_dead};
use super::edits::{write_tensor, GraphNames, NewTensor};
use super::forward::allows_forward;
use super::plan::bn_affine;
use super::{inputs_are_constants, is_batch_norm, rules, PassContext, PassOutcome};
use crate::consts::ConstEval;
use crate::error::Result;
use crate::folded::FoldedWeights;
use crate::graph::{node_label, GraphIndex, OuterScope};
use crate::proto::{GraphProto, NodeProto};
use crate::report::DecompositionRecord;

/// Rewrites every BN that is still there and is a fixed affine map into `Mul` and `Add`.
pub(super) fn decompose_remaining(
    graph: &mut GraphProto,
    ctx: &PassContext,
    path: &str,
    outer: OuterScope,
    folded: &mut FoldedWeights,
    out: &mut PassOutcome,
) -> Result<()> {
    loop {
        let found = {
            let index = GraphIndex::new(graph, outer);
            let eval = ConstEval::new(&index, ctx.store, ctx.opset, inputs_are_constants(ctx))
                .with_folded(folded);
            let mut found = Vec::new();
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
                    rules::decompose::plan(&affine, rank, dtype, &node_label(node))
                {
                    found.push((i, constants));
                }
            }
            found
        };
        if found.is_empty() {
            return Ok(());
        }
        // Every BN found is rewritten in this pass, in graph order, and the node list is
        // rebuilt once: one pass per round, not one per BN (each a scan of the whole graph).
        let mut names = GraphNames::new(graph, folded);
        let mut rewritten = HashMap::default();
        let mut detached = Vec::new();
        for (i, (scale, shift)) in found {
            let bn = graph.node[i].clone();
            let label = node_label(&bn);
            let mut store = |suffix: &str, values| {
                let name = format!("{label}_{suffix}");
                write_tensor(
                    graph,
                    &mut names,
                    &name,
                    false,
                    NewTensor::Values(values),
                    None,
                )
            };
            let scale_name = store("scale", scale)?;
            let shift_name = store("shift", shift)?;
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
            rewritten.insert(i, [mul, add]);
            detached.extend_from_slice(&bn.input[1..5]);
            out.decompositions.push(DecompositionRecord {
                graph: path.to_string(),
                node: label,
                mul: mul_name,
                add: add_name,
            });
        }
        let nodes = std::mem::take(&mut graph.node);
        for (i, node) in nodes.into_iter().enumerate() {
            match rewritten.remove(&i) {
                Some(pair) => graph.node.extend(pair),
                None => graph.node.push(node),
            }
        }
        remove_dead(graph, detached, ctx);
        folded.retain_initializers_of(graph);
        if ctx.ir_version < 4 {
            list_initializers_as_inputs(graph);
        }
    }
}
