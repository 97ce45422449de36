//! Each fold run in isolation: the original region as a model of its own against the nodes that
//! replace it, on seeded random inputs. Backward, the region is layer → pass-throughs → BNs and
//! the fused layer; forward, BN → (Flatten | Reshape)? → layer and the shift's `Add` (when kept),
//! the same Flatten or Reshape and the fused layer.
//!
//! A fold replaces a small region by one node and is an identity for every input, so random
//! inputs of any valid shape test it fully, and a shallow region's float error does not compound
//! as a deep network's does: the tolerance of one layer is a fair one. The regions are the
//! nodes the certificate finds (see [`crate::certificate`]); the data input gets a small shape
//! the layer accepts (spatial sizes of `dilation·(k − 1) + 1 + 2·stride`, so padded borders are a
//! large share of the output), and every other input its constant value. A region runs whatever
//! else the model contains, since only its own ops go to tract.
//!
//! The certificate shows that what was written is the formula; the region run shows that the
//! formula is right for the layer (layout, groups, padding).

mod arithmetic;
mod build;
mod exact;
mod forward;
mod prepare;
mod run;

use forward::forward_targets;
use prepare::prepare;
use run::{run_batch, weight_bytes, Ready, BATCH_BYTES};

use crate::certificate::{chain_from, decompositions, fold_targets, forward_folded_before, Side};
use crate::error::Result;
use crate::graph::{node_label, GraphIndex};
use crate::model::Model;
use crate::pairs::{graph_pairs, GraphPair};
use crate::proto::{GraphProto, NodeProto};
pub use crate::verify::RegionCheck;
use crate::verify::{Status, VerifyOptions};

/// Samples each region runs (stacked along its batch axis where it is free): every output
/// element of each is compared, so two give tens of thousands of comparisons per layer.
const REGION_SAMPLES: usize = 2;

/// The local proof: every region's run, and the structure outside them.
#[derive(Clone, Debug, Default)]
pub struct LocalProof {
    /// Each fold's region run alone.
    pub regions: Vec<RegionCheck>,
    /// The first difference between the graphs outside the regions, if any
    /// (see [`crate::structure`]).
    pub structure_difference: Option<String>,
    /// The main graphs' node indices inside the folds' regions (original, fused).
    pub main_region_nodes: (Vec<usize>, Vec<usize>),
    /// Whether the first difference is in the main graph (a difference there can be explained
    /// by [`crate::divergence`]).
    pub difference_in_main: bool,
    /// The first difference inside a subgraph, if any.
    pub subgraph_difference: Option<String>,
}

/// Runs every fold's region of `original` against the nodes that replace it in `fused`, and
/// compares the graphs outside them.
pub fn check(original: &Model, fused: &Model, options: &VerifyOptions) -> Result<LocalProof> {
    let (original, fused) = (original.with_folded_inline()?, fused.with_folded_inline()?);
    let (original, fused) = (original.as_ref(), fused.as_ref());
    let mut proof = LocalProof::default();
    let pairs = graph_pairs(original, fused);
    if pairs.is_empty() {
        proof.structure_difference = Some("a model has no graph".into());
    }
    for pair in &pairs {
        let (regions, difference, nodes) = check_pair(original, fused, pair, options)?;
        proof.regions.extend(regions);
        if pair.is_main() {
            proof.main_region_nodes = nodes;
            proof.difference_in_main = difference.is_some();
        }
        let difference = difference.map(|d| match pair.is_main() {
            true => d,
            false => format!("in {}: {d}", pair.path),
        });
        if !pair.is_main() && proof.subgraph_difference.is_none() {
            proof.subgraph_difference.clone_from(&difference);
        }
        if proof.structure_difference.is_none() {
            proof.structure_difference = difference;
        }
    }
    Ok(proof)
}

/// One pair of graphs' regions, first difference outside them, and region node indices.
type PairProof = (Vec<RegionCheck>, Option<String>, (Vec<usize>, Vec<usize>));

/// The regions of one pair of graphs, the first difference between them outside the regions,
/// and the indices of the regions' nodes (original, fused).
fn check_pair(
    original: &Model,
    fused: &Model,
    pair: &GraphPair,
    options: &VerifyOptions,
) -> Result<PairProof> {
    let (orig_graph, fused_graph) = (pair.original, pair.fused);
    let orig_index = GraphIndex::new(orig_graph, pair.original_scope());
    let fused_index = GraphIndex::new(fused_graph, pair.fused_scope());
    let orig = Side::new(&orig_index, original);
    let fused_side = Side::new(&fused_index, fused);
    let region_options = VerifyOptions {
        seed: options.seed,
        samples: REGION_SAMPLES,
        atol: options.atol,
        rtol: options.rtol,
        one_model_at_a_time: Some(false),
        ..VerifyOptions::default()
    };
    let mut regions: Vec<std::result::Result<Region, (RegionCheck, String)>> = Vec::new();
    for (node, bn) in fold_targets(&orig_index, &fused_index) {
        regions.push(match chain_from(&orig, bn) {
            Ok((layer, steps)) => {
                let mut orig_nodes = vec![layer];
                orig_nodes.extend(steps);
                let mut fused_nodes: Vec<&NodeProto> = match node.op_type() {
                    "Add" => node
                        .input
                        .iter()
                        .filter_map(|i| fused_index.producer(i).map(|p| fused_index.node(p)))
                        .filter(|p| p.op_type() == "MatMul")
                        .chain([node])
                        .collect(),
                    _ => vec![node],
                };
                let mut data = layer.input[0].clone();
                // A BN on each side of the layer: the one before folded forward into it too, so
                // the region starts at that BN's input (and, fused, at the Add keeping its shift).
                if let Some(before) =
                    forward_folded_before(&orig_index, &fused_index, layer, fused_nodes[0])
                {
                    orig_nodes.insert(0, before);
                    data = before.input[0].clone();
                    let mut current = fused_nodes[0].input[0].clone();
                    while current != data {
                        match fused_index.producer(&current).map(|p| fused_index.node(p)) {
                            Some(p) if p.op_type() == "Add" => {
                                fused_nodes.insert(0, p);
                                current = p.input[0].clone();
                            }
                            _ => break,
                        }
                    }
                }
                Ok(Region {
                    node,
                    bn,
                    layer,
                    orig_nodes,
                    fused_nodes,
                    data,
                    forward: None,
                    decomposed: false,
                })
            }
            Err(why) => Err((empty_check(node, bn), why)),
        });
    }
    regions.extend(
        forward_targets(&orig_index, &fused_index)
            .into_iter()
            .map(Ok),
    );
    regions.extend(
        decompositions(&orig_index, &fused_index)
            .into_iter()
            .map(|(add, mul, bn)| Region {
                node: add,
                bn,
                layer: bn,
                orig_nodes: vec![bn],
                fused_nodes: vec![mul, add],
                data: bn.input[0].clone(),
                forward: None,
                decomposed: true,
            })
            .map(Ok),
    );
    let position = |g: &GraphProto, n: &NodeProto| g.node.iter().position(|m| std::ptr::eq(m, n));
    let (mut orig_region, mut fused_region) = (Vec::new(), Vec::new());
    for r in regions.iter().flatten() {
        orig_region.extend(r.orig_nodes.iter().filter_map(|n| position(orig_graph, n)));
        fused_region.extend(
            r.fused_nodes
                .iter()
                .filter_map(|n| position(fused_graph, n)),
        );
    }
    // Constant nodes (and constant subgraphs) that fed only the regions and are gone from the
    // fused graph were folded into them; the region runs used their values.
    for i in (0..orig_graph.node.len()).rev() {
        let node = &orig_graph.node[i];
        if orig_region.contains(&i) || node.output.is_empty() {
            continue;
        }
        let feeds_only_regions = node.output.iter().all(|o| {
            !orig_index.is_graph_output(o)
                && fused_index.producer(o).is_none()
                && orig_index
                    .consumers(o)
                    .iter()
                    .all(|c| orig_region.contains(c))
        });
        if feeds_only_regions
            && node
                .output
                .iter()
                .all(|o| matches!(orig.eval.value(o), Ok(Ok(_))))
        {
            orig_region.push(i);
        }
    }
    let structure_difference = crate::structure::first_difference(
        original,
        fused,
        (orig_graph, fused_graph),
        &orig_region,
        &fused_region,
    )?;
    let mut out = Vec::new();
    // Regions are prepared and run in batches of at most BATCH_BYTES of weights (both sides), so
    // that neither bnfold nor tract ever holds a large model's folded weights all at once.
    let mut ready = Vec::new();
    let mut ready_bytes = 0;
    for region in regions {
        let r = match region {
            Ok(r) => r,
            Err((mut check, why)) => {
                check.reason = Some(why);
                out.push(check);
                continue;
            }
        };
        let mut check = empty_check(r.node, r.bn);
        match prepare(&orig, &fused_side, &r, region_options.samples)? {
            Ok((models, units, shape, runs)) => {
                check.input_shape = shape;
                let entry = Ready {
                    slot: out.len(),
                    models,
                    units,
                    data: r.data.clone(),
                    runs,
                };
                let bytes = weight_bytes(&entry);
                if !ready.is_empty() && ready_bytes + bytes > BATCH_BYTES {
                    run_batch(&mut out, &ready, &region_options)?;
                    ready.clear();
                    ready_bytes = 0;
                }
                ready_bytes += bytes;
                ready.push(entry);
            }
            Err(why) => check.reason = Some(why),
        }
        out.push(check);
    }
    run_batch(&mut out, &ready, &region_options)?;
    for check in &mut out {
        check.graph = pair.path.clone();
    }
    Ok((out, structure_difference, (orig_region, fused_region)))
}

fn empty_check(node: &NodeProto, bn: &NodeProto) -> RegionCheck {
    RegionCheck {
        graph: "main".into(),
        node: node_label(node),
        batch_norm: node_label(bn),
        output: node.output[0].clone(),
        input_shape: Vec::new(),
        status: Status::NotVerified,
        reason: None,
        check: None,
        exact: None,
        exact_unavailable: None,
    }
}

/// A fold's region: the original nodes and the fused ones that replace them, from `data` to
/// the fused node's output.
pub(super) struct Region<'g> {
    pub(super) node: &'g NodeProto,
    pub(super) bn: &'g NodeProto,
    /// The layer whose weight tells the data's shape: the producer (backward) or the consumer
    /// (forward).
    pub(super) layer: &'g NodeProto,
    pub(super) orig_nodes: Vec<&'g NodeProto>,
    pub(super) fused_nodes: Vec<&'g NodeProto>,
    pub(super) data: String,
    /// Forward: the BN's channel count and whether a Flatten or Reshape lies between.
    pub(super) forward: Option<(usize, bool)>,
    /// A BN decomposed into Mul and Add (`layer` is the BN itself).
    pub(super) decomposed: bool,
}
