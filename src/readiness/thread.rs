//! The readiness thread: it measures the weights of the model as loaded that no fold is
//! expected to reach ([`early`](super::early)) until the plan of the folded model comes, then
//! the plan's written chunks while they come ([`written`](super::written)), then its whole
//! weights until none is left ([`jobs`](super::jobs)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::external::ExternalStore;

use super::jobs::{self, Job, Measured, Queue};
use super::written::{self, Inbox};

/// What the thread is given once the model it measures is final.
pub(super) struct Plan {
    /// The weight to start on (the largest, when none is measured as written).
    pub first: Option<Job>,
    /// Where the written chunks come, if any weight is measured as written.
    pub inbox: Option<Inbox>,
    /// The whole weights left.
    pub queue: Queue,
    /// Where the folded model's weights are read.
    pub store: ExternalStore,
}

/// What the thread measured: before the model folded, and after.
#[derive(Default)]
pub(super) struct Outcome {
    /// The weights measured before the plan came.
    pub early: Measured,
    /// The plan's.
    pub planned: Measured,
}

/// Starts the thread on the weights in `early` (read through `store`): it measures them until
/// a [`Plan`] comes, then works on that.
pub(super) fn spawn(
    early: Queue,
    store: ExternalStore,
    cancelled: Arc<AtomicBool>,
) -> Result<(SyncSender<Plan>, JoinHandle<Outcome>)> {
    let (plans, plan) = sync_channel(1);
    let worker = std::thread::Builder::new()
        .name("bnfold-readiness".into())
        .spawn(move || work(&early, &store, &plan, &cancelled))
        .map_err(|e| Error::InvalidGraph(format!("starting the readiness thread: {e}")))?;
    Ok((plans, worker))
}

/// The thread: the early weights until the plan comes (or none is left), then the plan's
/// written chunks while they come (if any weight is measured as written), then its whole
/// weights until none is left. A panic becomes the analysis's failure (the caller then reports
/// it instead of waiting forever or unwinding through `join`).
fn work(
    early: &Queue,
    early_store: &ExternalStore,
    plans: &Receiver<Plan>,
    cancelled: &AtomicBool,
) -> Outcome {
    let mut outcome = Outcome::default();
    let working = std::panic::AssertUnwindSafe(|| {
        let mut buffer = Vec::new();
        let plan = loop {
            match plans.try_recv() {
                Ok(plan) => break Some(plan),
                Err(TryRecvError::Disconnected) => break None,
                Err(TryRecvError::Empty) => {}
            }
            match jobs::take(early) {
                Some(job) => buffer = jobs::run(job, early_store, buffer, &mut outcome.early),
                None => break plans.recv().ok(),
            }
        };
        // No plan: the figures were given up.
        let Some(Plan {
            first,
            inbox,
            queue,
            store,
        }) = plan
        else {
            return;
        };
        let measured = &mut outcome.planned;
        if let Some(inbox) = inbox {
            buffer = written::receive(inbox, &queue, &store, buffer, measured, cancelled);
        }
        let mut next = first.or_else(|| jobs::take(&queue));
        while let Some(job) = next.filter(|_| !cancelled.load(Ordering::Relaxed)) {
            buffer = jobs::run(job, &store, buffer, measured);
            next = jobs::take(&queue);
        }
    });
    if std::panic::catch_unwind(working).is_err() {
        let failed = "the readiness analysis failed on a weight";
        outcome.planned.failure = Some(Error::InvalidGraph(failed.into()));
    }
    outcome
}
