//! The way written chunks go from the writer to the readiness thread: the writer's end
//! ([`Tap`]) takes each chunk of a weight measured as written (its buffer, swapped for one
//! from a small pool: no copy) and sends the chunks in batches; the thread's end ([`receive`])
//! adds them to that weight's sums and sends the buffers back. The writer waits only when
//! every buffer is in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use crate::external::ExternalStore;

use super::jobs::{self, Measured, Queue};
use super::streamed::Streamed;

/// Chunk buffers in flight at most: the writer waits for one to come back beyond.
const CHUNKS_IN_FLIGHT: usize = 64;

/// Bytes of chunks sent together: each send may wake the thread, a system call on the
/// writer's side, so they are sent a few at a time.
const BATCH: usize = 1 << 19;

/// Written chunks of one weight measured as written, in order.
struct Piece {
    weight: usize,
    chunks: Vec<Vec<u8>>,
}

/// The writer's end: which initializers are measured as written (their index and the bytes
/// still to come), and where their chunks go.
pub(super) struct Tap {
    weights: HashMap<String, (usize, usize)>,
    pieces: SyncSender<Piece>,
    free: Receiver<Vec<u8>>,
    allocated: usize,
    batch: Option<Piece>,
    batched: usize,
}

impl Tap {
    /// How many weights are measured as written.
    pub fn weights(&self) -> usize {
        self.weights.len()
    }

    /// Takes `bytes` of `tensor` for the thread, leaving a buffer of the pool in their place;
    /// false once the thread is gone.
    pub fn take(&mut self, tensor: &str, bytes: &mut Vec<u8>) -> bool {
        let Some((weight, left)) = self.weights.get_mut(tensor) else {
            return true;
        };
        let (weight, complete) = (*weight, *left <= bytes.len());
        *left = left.saturating_sub(bytes.len());
        if self.batch.as_ref().is_some_and(|b| b.weight != weight) && !self.flush() {
            return false;
        }
        let replacement = match self.free.try_recv() {
            Ok(buffer) => buffer,
            Err(_) if self.allocated < CHUNKS_IN_FLIGHT => {
                self.allocated += 1;
                Vec::new()
            }
            // Every buffer is out: the ones batched here go first, so some come back.
            Err(_) if !self.flush() => return false,
            Err(_) => match self.free.recv() {
                Ok(buffer) => buffer,
                Err(_) => return false,
            },
        };
        let chunk = std::mem::replace(bytes, replacement);
        self.batched += chunk.len();
        self.batch
            .get_or_insert_with(|| Piece {
                weight,
                chunks: Vec::new(),
            })
            .chunks
            .push(chunk);
        match complete || self.batched >= BATCH {
            true => self.flush(),
            false => true,
        }
    }

    /// Sends the chunks taken and not sent yet; false once the thread is gone.
    fn flush(&mut self) -> bool {
        self.batched = 0;
        match self.batch.take() {
            Some(piece) => self.pieces.send(piece).is_ok(),
            None => true,
        }
    }
}

impl Drop for Tap {
    /// The writer is done: the last chunks go.
    fn drop(&mut self) {
        self.flush();
    }
}

/// The thread's end: the weights measured as written, their chunks, and where copies go back.
pub(super) struct Inbox {
    weights: Vec<Option<Streamed>>,
    pieces: Receiver<Piece>,
    recycle: SyncSender<Vec<u8>>,
}

/// The two ends for the weights `streamed`, in the order they are written.
pub(super) fn channel(streamed: Vec<Streamed>) -> (Tap, Inbox) {
    let (pieces, inbox) = sync_channel(CHUNKS_IN_FLIGHT);
    let (recycle, free) = sync_channel(CHUNKS_IN_FLIGHT + 1);
    let weights = streamed
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), (i, s.value.len() * s.value.dtype.size())))
        .collect();
    let tap = Tap {
        weights,
        pieces,
        free,
        allocated: 0,
        batch: None,
        batched: 0,
    };
    let inbox = Inbox {
        weights: streamed.into_iter().map(Some).collect(),
        pieces: inbox,
        recycle,
    };
    (tap, inbox)
}

/// Adds each written chunk to its weight's sums until the writer is done. While none waits,
/// reads the next weight's ranges ahead, else measures a whole weight from the queue. Weights
/// whose bytes did not all come are measured whole at the end.
pub(super) fn receive(
    inbox: Inbox,
    queue: &Queue,
    store: &ExternalStore,
    mut buffer: Vec<u8>,
    measured: &mut Measured,
    cancelled: &AtomicBool,
) -> Vec<u8> {
    let Inbox {
        mut weights,
        pieces,
        recycle,
    } = inbox;
    let mut ahead = 0;
    while !cancelled.load(Ordering::Relaxed) {
        let piece = match pieces.try_recv() {
            Ok(piece) => piece,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                while weights
                    .get(ahead)
                    .is_some_and(|w| w.as_ref().is_none_or(Streamed::is_prepared))
                {
                    ahead += 1;
                }
                if let Some(weight) = weights.get_mut(ahead).and_then(Option::as_mut) {
                    ahead += 1;
                    if let Err(e) = weight.prepare(store) {
                        measured.failure.get_or_insert(e);
                    }
                    continue;
                }
                if let Some(job) = jobs::take(queue) {
                    buffer = jobs::run(job, store, buffer, measured);
                    continue;
                }
                match pieces.recv() {
                    Ok(piece) => piece,
                    Err(_) => break,
                }
            }
        };
        for chunk in piece.chunks {
            let entry = weights.get_mut(piece.weight);
            if let Some(entry) = entry.filter(|_| measured.failure.is_none()) {
                if let Some(weight) = entry.as_mut() {
                    match weight.add(store, &chunk) {
                        Err(e) => measured.failure = Some(e),
                        Ok(()) if weight.is_complete() => {
                            measured.measured_as_written += 1;
                            measured
                                .layers
                                .extend(entry.take().map(Streamed::figures).unwrap_or_default());
                        }
                        Ok(()) => {}
                    }
                }
            }
            let _ = recycle.try_send(chunk);
        }
    }
    for weight in weights.into_iter().flatten() {
        if cancelled.load(Ordering::Relaxed) {
            break;
        }
        buffer = jobs::run(weight.into_job(), store, buffer, measured);
    }
    buffer
}
