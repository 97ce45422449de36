//! Forward folds as regions: the original's BN (and Flatten or Reshape) before the layer, and
//! the fused nodes that replace them (found by [`crate::certificate::forward_folds`]).

use super::Region;
use crate::certificate::forward_folds;
use crate::graph::GraphIndex;

/// Every forward fold of the two graphs as a region.
pub(super) fn forward_targets<'g>(
    orig_index: &GraphIndex<'g>,
    fused_index: &GraphIndex<'g>,
) -> Vec<Region<'g>> {
    forward_folds(orig_index, fused_index)
        .into_iter()
        .map(|fold| {
            let mut orig_nodes = vec![fold.bn];
            orig_nodes.extend(fold.reshape);
            orig_nodes.push(fold.layer);
            let channels = orig_index
                .initializer(&fold.bn.input[1])
                .and_then(|t| t.dims.first().copied())
                .unwrap_or(0)
                .max(0) as usize;
            Region {
                node: fold.node,
                bn: fold.bn,
                layer: fold.layer,
                orig_nodes,
                fused_nodes: fold.fused_nodes,
                data: fold.bn.input[0].clone(),
                forward: Some((channels, fold.reshape.is_some())),
                decomposed: false,
            }
        })
        .collect()
}
