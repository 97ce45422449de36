//! The plan of high-bias absorption (`--equalize=absorb`), carried by the [`Report`](super::Report)
//! from the fold, which makes it, to [`crate::absorb`], which applies it.

use crate::tensor::Tensor;

/// A bias to write: on the node that writes `node_output` (node `node` when planned), its input
/// `input` (added when the node has none there), the value `value`.
#[derive(Clone, Debug)]
pub(crate) struct PlannedBias {
    pub(crate) node: usize,
    pub(crate) node_output: String,
    pub(crate) input: usize,
    pub(crate) base_name: String,
    pub(crate) value: Tensor,
}

/// What `--equalize=absorb` plans: the biases to write, by [`crate::absorb`].
#[derive(Clone, Debug, Default)]
pub struct AbsorptionPlan {
    pub(crate) biases: Vec<PlannedBias>,
    /// Per absorbed pair: its index among the equalization records, and the second layer's
    /// output, where the change is measured.
    pub(crate) measured_at: Vec<(usize, String)>,
}

impl AbsorptionPlan {
    /// Whether there is nothing to absorb.
    pub fn is_empty(&self) -> bool {
        self.biases.is_empty()
    }

    /// Names each bias's node by its first output once the graph's tensors are renamed
    /// (`outputs` per node index).
    pub(crate) fn name_nodes(&mut self, outputs: &[String], seconds: &[(usize, usize)]) {
        for bias in &mut self.biases {
            bias.node_output = outputs[bias.node].clone();
        }
        self.measured_at = seconds
            .iter()
            .map(|&(record, node)| (record, outputs[node].clone()))
            .collect();
    }

    /// Each planned bias: the first output of the node that reads it, and which input.
    pub(crate) fn bias_inputs(&self) -> impl Iterator<Item = (&str, usize)> {
        self.biases
            .iter()
            .map(|b| (b.node_output.as_str(), b.input))
    }

    /// Per absorbed pair: its index among the equalization records, and the tensor its change
    /// is measured at.
    pub fn measured_at(&self) -> &[(usize, String)] {
        &self.measured_at
    }
}
