//! The layer figures computed beside the write: the writer hands over each folded weight's
//! bytes as it writes them (scaled once, for the file and for the figures) and, for a weight in
//! an external data file copied as stored, the tensor to read. A thread of its own first
//! measures the weights stored inline and not folded (they need nothing from the writer), then
//! the weights queued while the next is written; when the writer needs a buffer and none is
//! free, it measures a queued weight itself, and at the end both drain the queue. At most two
//! handed-over weights' bytes are held at a time (plus one inline weight's while the thread
//! reads those first); the figures are put back in graph order, so who measured what, and when,
//! never shows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::consts::ConstEval;
use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::graph::{GraphIndex, OuterScope};
use crate::model::{InitializerTap, Model};
use crate::proto::{NodeProto, TensorProto};
use crate::tensor::{self, Dtype};

use super::stats::{self, ChannelLayout, Elements};
use super::{output_axis, LayerReadiness};

/// Buffers in circulation: one being filled by the writer, one being measured.
const BUFFERS: usize = 2;

/// What the writer and the measuring thread share.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    free: Vec<Vec<u8>>,
    /// No more jobs will come.
    closed: bool,
}

/// The queue and the signal that it changed.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Figures measured by one thread, and its first failure.
#[derive(Default)]
struct Measured {
    layers: Vec<(usize, LayerReadiness)>,
    failure: Option<Error>,
}

/// A layer whose weight is an initializer, waiting for its bytes.
#[derive(Clone)]
struct Slot {
    /// Its place among the layers, in graph order.
    order: usize,
    node: NodeProto,
    axis: usize,
    group: usize,
}

/// One weight to measure.
enum Job {
    /// Its bytes, as written.
    Bytes {
        slots: Vec<Slot>,
        name: String,
        dtype: Dtype,
        dims: Vec<usize>,
        bytes: Vec<u8>,
    },
    /// A stored tensor, read here into `buffer`.
    Stored {
        slots: Vec<Slot>,
        tensor: Box<TensorProto>,
        buffer: Vec<u8>,
    },
}

/// The per-layer figures of a model's weights, computed as the model is written.
pub struct LayerTap {
    /// The main graph's initializers that are some layer's weight.
    wanted: HashMap<String, Vec<Slot>>,
    /// Layers whose weight is computed (a `Constant` node, or constants evaluated): measured at
    /// the start.
    computed: Vec<(usize, LayerReadiness)>,
    shared: Arc<Shared>,
    store: ExternalStore,
    /// What the writer's thread measured itself.
    measured: Measured,
    /// The bytes of the largest wanted weight: a buffer that must grow grows to it at once, so
    /// each buffer is allocated once and its pages are faulted in once, not at every larger
    /// weight (growing by reallocation faulted in fresh pages for 70 % of resnet18's bytes).
    largest: usize,
    worker: Option<JoinHandle<Measured>>,
}

impl LayerTap {
    /// Plans the figures of `model`'s weights (the model as it will run) and starts the thread
    /// that computes them.
    pub fn start(model: &Model) -> Result<LayerTap> {
        let mut wanted: HashMap<String, Vec<Slot>> = HashMap::new();
        let mut computed = Vec::new();
        let mut largest = 0;
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
                            largest = largest.max(bytes);
                            wanted.entry(name.clone()).or_default().push(slot);
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
        }
        // Weights stored inline and not folded need nothing from the writer: the thread reads
        // them first, while the writer is busy with what comes before them in the file (a
        // classifier at the end of the graph is then not measured after everything is written).
        let mut early = Vec::new();
        if let Some(graph) = &model.proto.graph {
            for t in &graph.initializer {
                let ready = !tensor::is_external(t) && model.folded.of(t).is_none();
                if let Some(slots) = ready.then(|| wanted.remove(t.name())).flatten() {
                    early.push((slots, Box::new(t.clone())));
                }
            }
            largest = graph
                .initializer
                .iter()
                .filter(|t| wanted.contains_key(t.name()))
                .filter_map(|t| Some((tensor::proto_dtype(t).ok()?, tensor::proto_dims(t).ok()?)))
                .map(|(dtype, dims)| dims.iter().product::<usize>() * dtype.size())
                .fold(0, usize::max);
        }
        let shared = Arc::new(Shared::default());
        shared.lock().free = vec![Vec::new(); BUFFERS];
        // Without a weight to measure there is no thread.
        let worker = match wanted.is_empty() && early.is_empty() {
            true => None,
            false => {
                let (shared, store) = (shared.clone(), model.store.clone());
                let worker = std::thread::Builder::new()
                    .name("bnfold-readiness".into())
                    .spawn(move || work(&shared, &store, early))
                    .map_err(|e| {
                        Error::InvalidGraph(format!("starting the readiness thread: {e}"))
                    })?;
                Some(worker)
            }
        };
        Ok(LayerTap {
            wanted,
            computed,
            shared,
            store: model.store.clone(),
            measured: Measured::default(),
            largest,
            worker,
        })
    }

    /// Every layer's figures, in graph order, once every wanted weight was shown.
    pub fn finish(mut self) -> Result<Vec<LayerReadiness>> {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        loop {
            let job = self.shared.lock().jobs.pop_front();
            match job {
                Some(job) => {
                    run(job, &self.store, &mut self.measured);
                }
                None => break,
            }
        }
        let theirs = match self.worker.take().map(JoinHandle::join) {
            Some(Ok(measured)) => measured,
            Some(Err(_)) => return Err(Error::InvalidGraph("the readiness thread failed".into())),
            None => Measured::default(),
        };
        if let Some(e) = self.measured.failure.take().or(theirs.failure) {
            return Err(e);
        }
        if let Some(name) = self.wanted.keys().min() {
            return Err(Error::tensor(name, "never shown to the readiness analysis"));
        }
        let mut layers = std::mem::take(&mut self.computed);
        layers.append(&mut self.measured.layers);
        layers.extend(theirs.layers);
        layers.sort_by_key(|(order, _)| *order);
        Ok(layers.into_iter().map(|(_, l)| l).collect())
    }

    fn send(&mut self, job: Job) {
        self.shared.lock().jobs.push_back(job);
        self.shared.changed.notify_all();
    }
}

impl InitializerTap for LayerTap {
    fn wants(&self, name: &str) -> bool {
        self.wanted.contains_key(name)
    }

    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buffer = loop {
            let mut queue = self.shared.lock();
            if let Some(buffer) = queue.free.pop() {
                break buffer;
            }
            // Both buffers are taken: one queued (measured here, freeing it) or one being
            // measured by the thread (waited for).
            match queue.jobs.pop_front() {
                Some(job) => {
                    drop(queue);
                    break run(job, &self.store, &mut self.measured);
                }
                None => drop(self.shared.changed.wait(queue)),
            }
        };
        buffer.clear();
        if buffer.capacity() < len {
            buffer.reserve_exact(self.largest.max(len));
        }
        buffer
    }

    fn folded(&mut self, name: &str, dtype: Dtype, dims: &[usize], bytes: Vec<u8>) -> Result<()> {
        let Some(slots) = self.wanted.remove(name) else {
            return Ok(());
        };
        self.send(Job::Bytes {
            slots,
            name: name.to_string(),
            dtype,
            dims: dims.to_vec(),
            bytes,
        });
        Ok(())
    }

    fn stored(&mut self, t: &TensorProto) -> Result<()> {
        let Some(slots) = self.wanted.remove(t.name()) else {
            return Ok(());
        };
        let buffer = self.buffer(self.largest);
        self.send(Job::Stored {
            slots,
            tensor: Box::new(t.clone()),
            buffer,
        });
        Ok(())
    }
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

/// The thread: measures the `early` weights (in a buffer of its own, freed after them), then
/// queued weights until the queue is closed and empty.
fn work(
    shared: &Shared,
    store: &ExternalStore,
    early: Vec<(Vec<Slot>, Box<TensorProto>)>,
) -> Measured {
    let mut measured = Measured::default();
    let mut buffer = Vec::new();
    for (slots, tensor) in early {
        let job = Job::Stored {
            slots,
            tensor,
            buffer,
        };
        buffer = run_guarded(job, store, &mut measured);
    }
    drop(buffer);
    let mut queue = shared.lock();
    loop {
        match queue.jobs.pop_front() {
            Some(job) => {
                drop(queue);
                let buffer = run_guarded(job, store, &mut measured);
                queue = shared.lock();
                queue.free.push(buffer);
                shared.changed.notify_all();
            }
            None if queue.closed => return measured,
            None => {
                queue = shared
                    .changed
                    .wait(queue)
                    .unwrap_or_else(|p| p.into_inner())
            }
        }
    }
}

/// [`run`] on the thread: a panic must not leave the writer waiting for this buffer, so it
/// becomes the analysis's failure, and a fresh buffer takes the lost one's place.
fn run_guarded(job: Job, store: &ExternalStore, measured: &mut Measured) -> Vec<u8> {
    let measuring = std::panic::AssertUnwindSafe(|| run(job, store, measured));
    std::panic::catch_unwind(measuring).unwrap_or_else(|_| {
        let failed = "the readiness analysis failed on a weight";
        measured.failure = Some(Error::InvalidGraph(failed.into()));
        Vec::new()
    })
}

/// Measures one weight (after a failure, only frees its buffer); the buffer, to reuse.
fn run(job: Job, store: &ExternalStore, measured: &mut Measured) -> Vec<u8> {
    let out = &mut measured.layers;
    match job {
        Job::Bytes {
            slots,
            name,
            dtype,
            dims,
            bytes,
        } => {
            if measured.failure.is_none() {
                measure_elements(&slots, &name, &dims, Elements::Raw(dtype, &bytes), out);
            }
            bytes
        }
        Job::Stored {
            slots,
            tensor,
            mut buffer,
        } => {
            if measured.failure.is_none() {
                if let Err(e) = measure_stored(&slots, &tensor, store, &mut buffer, out) {
                    measured.failure = Some(e);
                }
            }
            buffer
        }
    }
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
        buffer.resize(len, 0);
        let (path, offset) = store.locate(t, len)?;
        let (file, _) = crate::source::open_regular(&path)?;
        crate::source::read_exact_at(&file, buffer, offset).map_err(|e| Error::io(&path, e))?;
    } else if let Some(raw) = raw {
        if raw.len() != len {
            // The decoder's own message names the tensor and both lengths.
            return tensor::decode(t, store).map(|_| ());
        }
        buffer.resize(len, 0);
        store.read_inline(name, raw, 0, buffer)?;
    } else {
        let values = tensor::decode(t, store)?;
        measure_elements(slots, name, &dims, Elements::Values(&values.data), out);
        return Ok(());
    }
    measure_elements(slots, name, &dims, Elements::Raw(dtype, buffer), out);
    Ok(())
}
