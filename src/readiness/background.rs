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
//!
//! The thread ([`thread`](super::thread)) may start before the model folds
//! ([`EarlyFigures`](super::EarlyFigures)), on the stored weights no fold is expected to reach;
//! it takes the plan of the folded model ([`layers`](super::layers)) when that is ready, and
//! [`EarlyFigures::start_for_write`] hands it over here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use foldhash::HashSet;

use crate::error::{Error, Result};
use crate::external::ExternalStore;
use crate::model::{FoldedWatcher, Model};
use crate::scaled::SourceRead;
use crate::tensor;

use super::early::{Adoption, EarlyFigures, Running};
use super::jobs::{self, Job, Measured, Queue, Source};
use super::layers::plan;
use super::streamed::Streamed;
use super::thread::{spawn, Outcome, Plan};
use super::written::{self, Tap};
use super::LayerReadiness;

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
    worker: Option<JoinHandle<Outcome>>,
    /// The figures measured before the model folded that this plan takes over.
    adoption: Adoption,
    /// Stored weights read through the input's mapping (the writer writes them from there).
    read_in_place: HashSet<String>,
}

impl LayerFigures {
    /// Plans the figures of `model`'s weights (the model as it will run) and starts the thread
    /// that computes them, every weight read from the model's sources.
    pub fn start(model: &Model) -> Result<LayerFigures> {
        LayerFigures::start_with(model, false, None)
    }

    /// [`LayerFigures::start`] for a model about to be written with this as its
    /// [`FoldedWatcher`]: folded weights whose channels are runs in memory order are measured
    /// on the written bytes (any whose bytes do not all come, measured whole at the end).
    pub fn start_for_write(model: &Model) -> Result<LayerFigures> {
        LayerFigures::start_with(model, true, None)
    }

    /// The figures of `model`; `early`, the thread already measuring the model's weights as
    /// loaded, continues with them.
    pub(super) fn start_with(
        model: &Model,
        watched: bool,
        early: Option<Running>,
    ) -> Result<LayerFigures> {
        let (computed, jobs) = plan(model)?;
        let (jobs, mut adoption) = match &early {
            Some(running) => running.adopt(jobs),
            None => (jobs, Adoption::default()),
        };
        let mut read_in_place = std::mem::take(&mut adoption.names);
        let mut queued = Vec::new();
        let mut streamed = Vec::new();
        for (bytes, job) in jobs {
            if let Source::Stored(t) = &job.source {
                if !tensor::is_external(t) && !t.raw_data().is_empty() {
                    read_in_place.insert(job.name.clone());
                }
            }
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
        let cancelled = early
            .as_ref()
            .map_or_else(Arc::default, |r| r.cancelled.clone());
        // Without a weight to measure there is no thread (unless one runs already); with only
        // whole ones, it starts on the largest.
        let first = match inbox {
            Some(_) => None,
            None => jobs::take(&queue),
        };
        let plan = Plan {
            first,
            inbox,
            queue: queue.clone(),
            store: model.store.clone(),
        };
        let thread = match early {
            Some(running) => Some((running.plans, running.worker)),
            None if plan.first.is_none() && plan.inbox.is_none() => None,
            None => Some(spawn(
                Arc::default(),
                model.store.clone(),
                cancelled.clone(),
            )?),
        };
        let worker = thread.map(|(plans, worker)| {
            // A thread that is gone has failed: `finish` reports it.
            let _ = plans.send(plan);
            worker
        });
        Ok(LayerFigures {
            computed,
            queue,
            store: model.store.clone(),
            tap,
            cancelled,
            worker,
            adoption,
            read_in_place,
        })
    }

    /// How many weights measured before the model folded keep those figures.
    pub fn adopted_early(&self) -> usize {
        self.adoption.adopted
    }

    /// How many weights measured before the model folded are measured again (changed, or
    /// laid out otherwise).
    pub fn rejected_early(&self) -> usize {
        self.adoption.rejected
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
        let Outcome { mut early, planned } = match self.worker.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => return Err(Error::InvalidGraph("the readiness thread failed".into())),
            None => Outcome::default(),
        };
        // An early failure counts only if some early figures are taken over (any may be
        // missing then).
        let early_failure = early.failure.take().filter(|_| self.adoption.adopted > 0);
        if let Some(e) = mine.failure.take().or(planned.failure).or(early_failure) {
            return Err(e);
        }
        let mut layers = std::mem::take(&mut self.computed);
        layers.append(&mut mine.layers);
        layers.extend(planned.layers);
        self.adoption.take_over(early, &mut layers);
        layers.sort_by_key(|(order, _)| *order);
        let layers = layers.into_iter().map(|(_, l)| l).collect();
        Ok((layers, planned.measured_as_written))
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

    /// In place for a folded weight whose ranges the thread reads ahead from the source in
    /// place, and for a stored weight measured in place: their pages are mapped for the figures
    /// anyway (resnet18's default fold, 2 cores: 1.47× `cp` copying them, 1.30× reading them in
    /// place; with nothing reading them ahead, a copy is the faster).
    fn source_read(&self, tensor: &str) -> SourceRead {
        let reads_ahead = self.tap.as_ref().is_some_and(|tap| tap.reads_ahead(tensor));
        match reads_ahead || self.read_in_place.contains(tensor) {
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

/// The hand-over from the early thread to the plan of the folded model.
impl EarlyFigures {
    /// Continues with the figures of `model`, the loaded model folded, about to be written with
    /// the result as its [`FoldedWatcher`](crate::model::FoldedWatcher): early figures of
    /// weights it stores as they were are taken over, the rest are measured as
    /// [`LayerFigures::start_for_write`] measures them.
    pub fn start_for_write(self, model: &Model) -> Result<LayerFigures> {
        LayerFigures::start_with(model, true, self.running)
    }
}
