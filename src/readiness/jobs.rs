//! Measuring one weight whole: a folded one scaled again from its source into a buffer, a
//! stored one read in place (inline in the mapped input) or into the buffer (external data),
//! then its figures taken from those bytes ([`stats::layer`]).
//! Either side of [`LayerFigures`](super::LayerFigures) takes such jobs from a shared queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::proto::{NodeProto, TensorProto};
use crate::scaled::ScaledTensor;
use crate::tensor;

use super::layout::{ChannelLayout, Elements};
use super::stats;
use super::LayerReadiness;

/// Figures measured by one side, and its first failure.
#[derive(Default)]
pub(super) struct Measured {
    pub layers: Vec<(usize, LayerReadiness)>,
    pub failure: Option<Error>,
    /// Weights measured on their written bytes.
    pub measured_as_written: usize,
}

/// A layer whose weight is an initializer.
#[derive(Clone)]
pub(super) struct Slot {
    /// Its place among the layers, in graph order.
    pub order: usize,
    /// The node's name, outputs and op type.
    pub node: NodeProto,
    /// The weight's axis of output channels.
    pub axis: usize,
    /// The node's `group`.
    pub group: usize,
}

impl Slot {
    /// Where the output channels lie in a weight of shape `dims`.
    pub fn layout(&self, dims: &[usize]) -> ChannelLayout {
        ChannelLayout::new(dims, self.axis, self.group)
    }
}

/// One weight to measure: the layers that read it, and where its values come from.
pub(super) struct Job {
    /// The layers that read it.
    pub slots: Vec<Slot>,
    /// The initializer.
    pub name: String,
    /// Its values.
    pub source: Source,
}

/// Where a weight's values come from.
pub(super) enum Source {
    /// A folded weight: its source and factors, scaled here.
    Scaled(Box<ScaledTensor>),
    /// A weight written as stored (inline, typed or external), read here.
    Stored(Box<TensorProto>),
}

/// The jobs left, largest first.
pub(super) type Queue = Arc<Mutex<VecDeque<Job>>>;

/// The next job, if any is left.
pub(super) fn take(queue: &Queue) -> Option<Job> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop_front()
}

/// Measures one weight into `measured` (after a failure, nothing more) with `buffer` for its
/// bytes; the buffer, to reuse.
pub(super) fn run(
    job: Job,
    store: &ExternalStore,
    mut buffer: Vec<u8>,
    measured: &mut Measured,
) -> Vec<u8> {
    if measured.failure.is_some() {
        return buffer;
    }
    let Job {
        slots,
        name,
        source,
    } = job;
    let out = &mut measured.layers;
    let result = match source {
        Source::Scaled(value) => {
            buffer.clear();
            buffer.reserve(value.dims.iter().product::<usize>() * value.dtype.size());
            value
                .stream(store, &mut |chunk| {
                    buffer.extend_from_slice(chunk);
                    Ok(())
                })
                .map(|()| {
                    let elements = Elements::Raw(value.dtype, &buffer);
                    measure_elements(&slots, &name, &value.dims, elements, out)
                })
        }
        Source::Stored(t) => measure_stored(&slots, &t, store, &mut buffer, out),
    };
    if let Err(e) = result {
        measured.failure = Some(e);
    }
    buffer
}

fn measure_elements(
    slots: &[Slot],
    name: &str,
    dims: &[usize],
    elements: Elements,
    out: &mut Vec<(usize, LayerReadiness)>,
) {
    for slot in slots {
        let layout = slot.layout(dims);
        out.push((
            slot.order,
            stats::layer(&slot.node, name, &layout, elements),
        ));
    }
}

/// Reads a stored weight (inline, external or typed) and measures it.
fn measure_stored(
    slots: &[Slot],
    t: &TensorProto,
    store: &ExternalStore,
    buffer: &mut Vec<u8>,
    out: &mut Vec<(usize, LayerReadiness)>,
) -> Result<()> {
    let name = t.name();
    let (dtype, dims) = (tensor::proto_dtype(t)?, tensor::proto_dims(t)?);
    let len = dims.iter().product::<usize>() * dtype.size();
    let raw = t.raw_data.as_ref().filter(|r| !r.is_empty());
    if tensor::is_external(t) {
        zeroed(buffer, len);
        let (path, offset) = store.locate(t, len)?;
        let (file, _) = crate::source::open_regular(&path)?;
        crate::source::read_exact_at(&file, buffer, offset).map_err(|e| Error::io(&path, e))?;
    } else if let Some(raw) = raw {
        if raw.len() != len {
            // The decoder's own message names the tensor and both lengths.
            return tensor::decode(t, store).map(|_| ());
        }
        // Read in place (no copy), then counted towards dropping the mapping's pages.
        measure_elements(slots, name, &dims, Elements::Raw(dtype, raw), out);
        store.release(raw);
        return Ok(());
    } else {
        let values = tensor::decode(t, store)?;
        measure_elements(slots, name, &dims, Elements::Values(&values.data), out);
        return Ok(());
    }
    measure_elements(slots, name, &dims, Elements::Raw(dtype, buffer), out);
    Ok(())
}

/// Makes `buffer` `len` bytes long, to be overwritten: a buffer that must grow is allocated
/// anew and zeroed by the allocator (fresh pages come zeroed, and the old bytes are not copied).
fn zeroed(buffer: &mut Vec<u8>, len: usize) {
    if buffer.capacity() < len {
        *buffer = vec![0; len];
    } else {
        buffer.resize(len, 0);
    }
}
