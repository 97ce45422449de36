//! What high-bias absorption reads: the BatchNormalization statistics taken before folding
//! ([`super::absorb`] plans from them).

use foldhash::HashMap;

use crate::consts::ConstEval;
use crate::error::Result;
use crate::external::ExternalStore;
use crate::graph::{GraphIndex, OuterScope};
use crate::proto::GraphProto;

/// Per BatchNormalization output (by tensor name), the mean β and standard deviation |γ| of
/// each channel: what the normalization makes of its input.
#[derive(Clone, Debug, Default)]
pub struct BatchNormStatistics(pub(super) HashMap<String, (Vec<f64>, Vec<f64>)>);

impl BatchNormStatistics {
    /// The statistics of every BatchNormalization of `graph` whose scale and bias are constants.
    pub fn of(
        graph: &GraphProto,
        store: &ExternalStore,
        opset: i64,
        inputs_are_constants: bool,
    ) -> Result<BatchNormStatistics> {
        let mut out = HashMap::default();
        let index = GraphIndex::new(graph, OuterScope::default());
        let eval = ConstEval::new(&index, store, opset, inputs_are_constants);
        for node in graph
            .node
            .iter()
            .filter(|n| n.op_type() == "BatchNormalization" && matches!(n.domain(), "" | "ai.onnx"))
        {
            let (Some(scale), Some(shift), Some(output)) =
                (node.input.get(1), node.input.get(2), node.output.first())
            else {
                continue;
            };
            if let (Ok(scale), Ok(shift)) = (eval.value(scale)?, eval.value(shift)?) {
                if scale.len() == shift.len() {
                    let deviation = scale.data.iter().map(|g| g.abs()).collect();
                    out.insert(output.clone(), (shift.data.clone(), deviation));
                }
            }
        }
        Ok(BatchNormStatistics(out))
    }
}
