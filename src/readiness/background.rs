//! The layer figures, computed on a thread of their own while the model is written. Every
//! weight is read from the model's own sources as soon as the fold is planned: a folded one
//! scaled as the writer scales it (the same bytes, computed a second time on the other core), a
//! stored one read as stored. So the figures never wait for the writer, and the writer never
//! waits for them or copies a weight for them. The largest weights go first; once the caller has
//! written the model it takes the remaining ones too ([`LayerFigures::finish`]), so both end
//! together. Each side holds one weight's bytes at a time (its buffer grows once, to the first
//! and largest weight it takes); the figures are put back in graph order, so who measured what,
//! and when, never shows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::consts::ConstEval;
use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::graph::{GraphIndex, OuterScope};
use crate::model::Model;
use crate::proto::{NodeProto, TensorProto};
use crate::scaled::ScaledTensor;
use crate::tensor::{self, Dtype};

use super::stats::{self, ChannelLayout, Elements};
use super::{output_axis, LayerReadiness};

/// Figures measured by one side, and its first failure.
#[derive(Default)]
struct Measured {
    layers: Vec<(usize, LayerReadiness)>,
    failure: Option<Error>,
}

/// A layer whose weight is an initializer.
#[derive(Clone)]
struct Slot {
    /// Its place among the layers, in graph order.
    order: usize,
    node: NodeProto,
    axis: usize,
    group: usize,
}

/// One weight to measure: the layers that read it, and where its values come from.
struct Job {
    slots: Vec<Slot>,
    name: String,
    source: Source,
}

/// Where a weight's values come from.
enum Source {
    /// A folded weight: its source and factors, scaled here.
    Scaled(Box<ScaledTensor>),
    /// A weight written as stored (inline, typed or external), read here.
    Stored(Box<TensorProto>),
}

/// The jobs left, largest first.
type Queue = Arc<Mutex<VecDeque<Job>>>;

/// The per-layer figures of a model's weights, being computed.
pub struct LayerFigures {
    /// Layers whose weight is computed (a `Constant` node, or constants evaluated): measured at
    /// the start.
    computed: Vec<(usize, LayerReadiness)>,
    queue: Queue,
    store: ExternalStore,
    worker: Option<JoinHandle<Measured>>,
}

impl LayerFigures {
    /// Plans the figures of `model`'s weights (the model as it will run) and starts the thread
    /// that computes them.
    pub fn start(model: &Model) -> Result<LayerFigures> {
        // Each initializer that is some layer's weight: its bytes, and the layers.
        let mut wanted: HashMap<String, (usize, Vec<Slot>)> = HashMap::new();
        let mut computed = Vec::new();
        let mut jobs = Vec::new();
        if let Some(graph) = &model.proto.graph {
            let layers: Vec<(usize, &NodeProto, usize)> = graph
                .node
                .iter()
                .filter_map(|n| output_axis(n).map(|axis| (n, axis)))
                .enumerate()
                .map(|(order, (n, axis))| (order, n, axis))
                .collect();
            let initializers: HashMap<&str, &TensorProto> = match layers.is_empty() {
                true => HashMap::new(),
                false => graph.initializer.iter().map(|t| (t.name(), t)).collect(),
            };
            let index = std::cell::OnceCell::new();
            let eval = std::cell::OnceCell::new();
            for (order, node, axis) in layers {
                let name = &node.input[1];
                let group = crate::attr::int(node, "group")?.unwrap_or(1).max(1) as usize;
                let slot = Slot {
                    order,
                    node: node_head(node),
                    axis,
                    group,
                };
                match initializers.get(name.as_str()) {
                    Some(t) if Dtype::from_code(t.data_type()).is_some() => {
                        let (dtype, dims) = (tensor::proto_dtype(t)?, tensor::proto_dims(t)?);
                        if measurable(dtype, &dims) {
                            let bytes = dims.iter().product::<usize>() * dtype.size();
                            let entry = wanted.entry(name.clone()).or_insert((bytes, Vec::new()));
                            entry.1.push(slot);
                        }
                    }
                    _ => {
                        // Weights computed by Constant nodes go through the evaluator.
                        let eval = eval.get_or_init(|| {
                            let index =
                                index.get_or_init(|| GraphIndex::new(graph, OuterScope::default()));
                            ConstEval::new(index, &model.store, model.opset(), true)
                        });
                        if let Ok(w) = eval.value(name)? {
                            if measurable(w.dtype, &w.dims) {
                                let layout = ChannelLayout::new(&w.dims, axis, group);
                                let values = Elements::Values(&w.data);
                                computed.push((order, stats::layer(node, name, &layout, values)));
                            }
                        }
                    }
                }
            }
            for t in &graph.initializer {
                let Some((bytes, slots)) = wanted.remove(t.name()) else {
                    continue;
                };
                let source = match model.folded.of(t) {
                    Some(folded) => Source::Scaled(Box::new(folded.value.clone())),
                    None => Source::Stored(Box::new(t.clone())),
                };
                jobs.push((
                    bytes,
                    Job {
                        slots,
                        name: t.name().to_string(),
                        source,
                    },
                ));
            }
        }
        // Largest first (a stable sort: equal sizes in graph order).
        jobs.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let queue: Queue = Arc::new(Mutex::new(jobs.into_iter().map(|(_, j)| j).collect()));
        // Without a weight to measure there is no thread.
        let worker = match take(&queue).map(|first| (first, queue.clone(), model.store.clone())) {
            None => None,
            Some((first, queue, store)) => {
                let worker = std::thread::Builder::new()
                    .name("bnfold-readiness".into())
                    .spawn(move || work(first, &queue, &store))
                    .map_err(|e| {
                        Error::InvalidGraph(format!("starting the readiness thread: {e}"))
                    })?;
                Some(worker)
            }
        };
        Ok(LayerFigures {
            computed,
            queue,
            store: model.store.clone(),
            worker,
        })
    }

    /// Every layer's figures, in graph order: the caller measures the weights the thread has
    /// not taken yet, then waits for the thread.
    pub fn finish(mut self) -> Result<Vec<LayerReadiness>> {
        let mut mine = Measured::default();
        let mut buffer = Vec::new();
        while let Some(job) = take(&self.queue) {
            buffer = run(job, &self.store, buffer, &mut mine);
        }
        drop(buffer);
        let theirs = match self.worker.take().map(JoinHandle::join) {
            Some(Ok(measured)) => measured,
            Some(Err(_)) => return Err(Error::InvalidGraph("the readiness thread failed".into())),
            None => Measured::default(),
        };
        if let Some(e) = mine.failure.take().or(theirs.failure) {
            return Err(e);
        }
        let mut layers = std::mem::take(&mut self.computed);
        layers.append(&mut mine.layers);
        layers.extend(theirs.layers);
        layers.sort_by_key(|(order, _)| *order);
        Ok(layers.into_iter().map(|(_, l)| l).collect())
    }
}

impl Drop for LayerFigures {
    /// Given up (the write failed): the thread stops after the weight it is measuring.
    fn drop(&mut self) {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

/// The next job, if any is left.
fn take(queue: &Queue) -> Option<Job> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop_front()
}

/// A float weight with at least one element and one axis.
fn measurable(dtype: Dtype, dims: &[usize]) -> bool {
    dtype.is_float() && !dims.is_empty() && dims.iter().product::<usize>() > 0
}

/// What the figures need of a node: its name, outputs and op type (not its attributes, which may
/// hold large tensors).
fn node_head(node: &NodeProto) -> NodeProto {
    NodeProto {
        name: node.name.clone(),
        op_type: node.op_type.clone(),
        output: node.output.first().cloned().into_iter().collect(),
        ..Default::default()
    }
}

/// The thread: measures `first`, then jobs until none is left. A panic becomes the analysis's
/// failure (the caller then reports it instead of waiting forever or unwinding through `join`).
fn work(first: Job, queue: &Queue, store: &ExternalStore) -> Measured {
    let mut measured = Measured::default();
    let mut buffer = Vec::new();
    let mut next = Some(first);
    while let Some(job) = next {
        let measuring = std::panic::AssertUnwindSafe(|| run(job, store, buffer, &mut measured));
        buffer = std::panic::catch_unwind(measuring).unwrap_or_else(|_| {
            let failed = "the readiness analysis failed on a weight";
            measured.failure = Some(Error::InvalidGraph(failed.into()));
            Vec::new()
        });
        next = take(queue);
    }
    measured
}

/// Measures one weight into `measured` (after a failure, nothing more) with `buffer` for its
/// bytes; the buffer, to reuse.
fn run(job: Job, store: &ExternalStore, mut buffer: Vec<u8>, measured: &mut Measured) -> Vec<u8> {
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
        let layout = ChannelLayout::new(dims, slot.axis, slot.group);
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
        zeroed(buffer, len);
        store.read_inline(name, raw, 0, buffer)?;
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
