//! The layer figures, computed on a thread of their own while the model is written, so that
//! the figures never hold up the write and no weight is scaled twice.
//!
//! A folded weight whose output channels are runs in memory order (a Conv's, a Gemm's with
//! `transB`) is measured on the bytes the writer writes: the caller shows each chunk to
//! [`LayerFigures`] as a [`FoldedWatcher`], which hands it to the thread
//! ([`written`](super::written)), and the thread adds it to the weight's sums once the channel
//! ranges are known ([`streamed`](super::streamed)). Every other weight is measured whole
//! ([`jobs`](super::jobs)): read from the model's own sources, a folded one scaled as the
//! writer scales it; the largest go first, the thread takes them when no chunk is waiting, and
//! once the caller has written the model it takes the remaining ones too
//! ([`LayerFigures::finish`]), so both end together. The figures are put back in graph order,
//! so who measured what, and when, never shows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::consts::ConstEval;
use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::graph::{GraphIndex, OuterScope};
use crate::model::{FoldedWatcher, Model};
use crate::proto::{NodeProto, TensorProto};
use crate::scaled::SourceRead;
use crate::tensor::{self, Dtype};

use super::jobs::{self, Job, Measured, Queue, Slot, Source};
use super::layout::{ChannelLayout, Elements};
use super::stats;
use super::streamed::Streamed;
use super::written::{self, Inbox, Tap};
use super::{output_axis, LayerReadiness};

/// The per-layer figures of a model's weights, being computed.
pub struct LayerFigures {
    /// Layers whose weight is computed (a `Constant` node, or constants evaluated): measured at
    /// the start.
    computed: Vec<(usize, LayerReadiness)>,
    queue: Queue,
    store: ExternalStore,
    tap: Option<Tap>,
    /// Set when the figures are given up: the thread stops at the next weight or chunk.
    cancelled: Arc<AtomicBool>,
    worker: Option<JoinHandle<Measured>>,
}

impl LayerFigures {
    /// Plans the figures of `model`'s weights (the model as it will run) and starts the thread
    /// that computes them, every weight read from the model's sources.
    pub fn start(model: &Model) -> Result<LayerFigures> {
        LayerFigures::start_with(model, false)
    }

    /// [`LayerFigures::start`] for a model about to be written with this as its
    /// [`FoldedWatcher`]: folded weights whose channels are runs in memory order are measured
    /// on the written bytes (any whose bytes do not all come, measured whole at the end).
    pub fn start_for_write(model: &Model) -> Result<LayerFigures> {
        LayerFigures::start_with(model, true)
    }

    fn start_with(model: &Model, watched: bool) -> Result<LayerFigures> {
        let (computed, jobs) = plan(model)?;
        let mut queued = Vec::new();
        let mut streamed = Vec::new();
        for (bytes, job) in jobs {
            match job.source {
                Source::Scaled(value) if watched => {
                    match Streamed::new(job.name, job.slots, value) {
                        Ok(s) => streamed.push(s),
                        Err(job) => queued.push((bytes, job)),
                    }
                }
                source => queued.push((bytes, Job { source, ..job })),
            }
        }
        // Largest first (a stable sort: equal sizes in graph order).
        queued.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let queue: Queue = Arc::new(Mutex::new(queued.into_iter().map(|(_, j)| j).collect()));
        let (tap, inbox) = match streamed.is_empty() {
            true => (None, None),
            false => {
                let (tap, inbox) = written::channel(streamed);
                (Some(tap), Some(inbox))
            }
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        // Without a weight to measure there is no thread; with only whole ones, it starts on
        // the largest.
        let first = match inbox {
            Some(_) => None,
            None => jobs::take(&queue),
        };
        let worker = match (first.is_some() || inbox.is_some()).then(|| {
            let (queue, store, cancelled) = (queue.clone(), model.store.clone(), cancelled.clone());
            std::thread::Builder::new()
                .name("bnfold-readiness".into())
                .spawn(move || work(first, inbox, &queue, &store, &cancelled))
        }) {
            None => None,
            Some(spawned) => {
                Some(spawned.map_err(|e| {
                    Error::InvalidGraph(format!("starting the readiness thread: {e}"))
                })?)
            }
        };
        Ok(LayerFigures {
            computed,
            queue,
            store: model.store.clone(),
            tap,
            cancelled,
            worker,
        })
    }

    /// How many weights are to be measured on their written bytes.
    pub fn measured_as_written(&self) -> usize {
        self.tap.as_ref().map_or(0, Tap::weights)
    }

    /// Every layer's figures, in graph order: the caller measures the weights the thread has
    /// not taken yet, then waits for the thread.
    pub fn finish(self) -> Result<Vec<LayerReadiness>> {
        self.finish_counted().map(|(layers, _)| layers)
    }

    /// [`LayerFigures::finish`], and how many weights were measured on their written bytes.
    pub fn finish_counted(mut self) -> Result<(Vec<LayerReadiness>, usize)> {
        // No more chunks: the thread measures the ones it holds.
        self.tap = None;
        let mut mine = Measured::default();
        let mut buffer = Vec::new();
        while let Some(job) = jobs::take(&self.queue) {
            buffer = jobs::run(job, &self.store, buffer, &mut mine);
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
        let layers = layers.into_iter().map(|(_, l)| l).collect();
        Ok((layers, theirs.measured_as_written))
    }
}

impl FoldedWatcher for LayerFigures {
    fn written(&mut self, tensor: &str, bytes: &mut Vec<u8>) {
        if let Some(tap) = &mut self.tap {
            if !tap.take(tensor, bytes) {
                // The thread stopped: its failure is reported by `finish`.
                self.tap = None;
            }
        }
    }

    /// The readiness thread, while it runs.
    fn busy_threads(&self) -> usize {
        usize::from(self.worker.is_some())
    }

    /// In place for a weight whose ranges the thread reads ahead from the source in place: its
    /// pages are mapped for the thread anyway (resnet18's default fold, 2 cores: 1.47× `cp`
    /// copying them, 1.30× reading them in place; with nothing reading them ahead, a copy is
    /// the faster).
    fn source_read(&self, tensor: &str) -> SourceRead {
        match self.tap.as_ref().is_some_and(|tap| tap.reads_ahead(tensor)) {
            true => SourceRead::InPlace,
            false => SourceRead::Copied,
        }
    }
}

impl Drop for LayerFigures {
    /// Given up (the write failed): the thread stops after the weight or chunk it is measuring.
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

/// The figures of weights computed by constants (measured now), and a job (with its size in
/// bytes) per initializer that is some layer's weight, in the order of the initializers.
#[allow(clippy::type_complexity)]
fn plan(model: &Model) -> Result<(Vec<(usize, LayerReadiness)>, Vec<(usize, Job)>)> {
    let mut wanted: HashMap<String, (usize, Vec<Slot>)> = HashMap::new();
    let mut computed = Vec::new();
    let mut jobs = Vec::new();
    let Some(graph) = &model.proto.graph else {
        return Ok((computed, jobs));
    };
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
                    let index = index.get_or_init(|| GraphIndex::new(graph, OuterScope::default()));
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
        let name = t.name().to_string();
        jobs.push((
            bytes,
            Job {
                slots,
                name,
                source,
            },
        ));
    }
    Ok((computed, jobs))
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

/// The thread: the written chunks while they come (if any weight is measured as written), then
/// whole weights until none is left. A panic becomes the analysis's failure (the caller then
/// reports it instead of waiting forever or unwinding through `join`).
fn work(
    first: Option<Job>,
    inbox: Option<Inbox>,
    queue: &Queue,
    store: &ExternalStore,
    cancelled: &AtomicBool,
) -> Measured {
    let mut measured = Measured::default();
    let working = std::panic::AssertUnwindSafe(|| {
        let mut buffer = Vec::new();
        if let Some(inbox) = inbox {
            buffer = written::receive(inbox, queue, store, buffer, &mut measured, cancelled);
        }
        let mut next = first.or_else(|| jobs::take(queue));
        while let Some(job) = next.filter(|_| !cancelled.load(Ordering::Relaxed)) {
            buffer = jobs::run(job, store, buffer, &mut measured);
            next = jobs::take(queue);
        }
    });
    if std::panic::catch_unwind(working).is_err() {
        let failed = "the readiness analysis failed on a weight";
        measured.failure = Some(Error::InvalidGraph(failed.into()));
    }
    measured
}
