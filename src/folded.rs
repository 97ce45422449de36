//! The folded weights a [`crate::Model`] owns: for each initializer of the main graph that a
//! fold rewrote, its value as a [`ScaledTensor`] (the source and its factors, computed when the
//! model is written) and the external data file it goes to, when it replaces an external
//! tensor. The protobuf holds only the tensor's name, dtype and shape, and no data: a reader
//! that does not ask the model fails on it instead of reading something else. Folds inside
//! subgraphs are written inline as the pass leaves each subgraph, so only the main graph's wait
//! here; a clone of the model clones the table (the sources' stored bytes are shared, never
//! changed).

use std::collections::BTreeMap;

use crate::error::Result;
use crate::external::ExternalStore;
use crate::proto::TensorProto;
use crate::scaled::ScaledTensor;
use crate::tensor::Tensor;

/// One folded initializer.
#[derive(Clone, Debug)]
pub struct FoldedTensor {
    /// Its values, computed when read.
    pub value: ScaledTensor,
    /// The external data file it is written to (that of the tensor it replaces), if any.
    pub location: Option<String>,
}

/// The folded initializers of a graph, by name.
#[derive(Clone, Debug, Default)]
pub struct FoldedWeights {
    tensors: BTreeMap<String, FoldedTensor>,
}

impl FoldedWeights {
    /// The folded tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&FoldedTensor> {
        self.tensors.get(name)
    }

    /// The folded tensor the initializer `t` stands for: one of the table's that `t` holds no
    /// data for (an initializer given data since, e.g. edited by hand, is what it holds).
    pub fn of(&self, t: &TensorProto) -> Option<&FoldedTensor> {
        self.tensors.get(t.name()).filter(|_| holds_no_data(t))
    }

    /// Records `name` as folded (replacing an earlier fold of the same name).
    pub fn insert(&mut self, name: &str, tensor: FoldedTensor) {
        self.tensors.insert(name.to_string(), tensor);
    }

    /// Forgets `name` (removed, or replaced by a tensor stored in full).
    pub fn remove(&mut self, name: &str) {
        self.tensors.remove(name);
    }

    /// Forgets the tensors `graph` no longer has (removed as dead).
    pub fn retain_initializers_of(&mut self, graph: &crate::proto::GraphProto) {
        if self.tensors.is_empty() {
            return;
        }
        let kept: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name()).collect();
        self.tensors.retain(|name, _| kept.contains(name.as_str()));
    }

    /// Whether nothing is folded.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The values of `t`, folded or stored.
    pub fn decode(&self, t: &TensorProto, store: &ExternalStore) -> Result<Tensor> {
        match self.of(t) {
            Some(folded) => folded.value.decode(store),
            None => crate::tensor::decode(t, store),
        }
    }

    /// Writes the folded tensor `t` stands for into it, inline (`t` unchanged when it is not
    /// folded).
    pub fn inline(&self, t: &mut TensorProto, store: &ExternalStore) -> Result<()> {
        if let Some(folded) = self.of(t) {
            t.raw_data = Some(folded.value.to_bytes(store)?.into());
            t.external_data.clear();
            t.data_location = None;
        }
        Ok(())
    }
}

/// Whether `t` carries no values: no payload, no typed data, not external.
fn holds_no_data(t: &TensorProto) -> bool {
    t.raw_data.is_none()
        && !crate::tensor::is_external(t)
        && t.float_data.is_empty()
        && t.int32_data.is_empty()
        && t.string_data.is_empty()
        && t.int64_data.is_empty()
        && t.double_data.is_empty()
        && t.uint64_data.is_empty()
}
