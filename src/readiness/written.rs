//! The way written chunks go from the writer to the readiness thread: the writer's end
//! ([`Tap`]) copies each chunk of a weight measured as written into a buffer of a small pool
//! and sends it; the thread's end ([`receive`]) adds it to that weight's sums and sends the
//! buffer back. The writer waits only when every buffer is in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use crate::external::ExternalStore;

use super::jobs::{self, Measured, Queue};
use super::streamed::Streamed;

/// Copies of written chunks in flight at most: the writer waits for one to come back beyond.
const CHUNKS_IN_FLIGHT: usize = 64;

/// Written bytes of one weight measured as written: its index, and a copy of the bytes.
struct Piece {
    weight: usize,
    bytes: Vec<u8>,
}

/// The writer's end: which initializers are measured as written, and where their chunks go.
pub(super) struct Tap {
    weights: HashMap<String, usize>,
    pieces: SyncSender<Piece>,
    free: Receiver<Vec<u8>>,
    allocated: usize,
}

impl Tap {
    /// How many weights are measured as written.
    pub fn weights(&self) -> usize {
        self.weights.len()
    }

    /// Hands a copy of `bytes` of `tensor` to the thread; false once the thread is gone.
    pub fn send(&mut self, tensor: &str, bytes: &[u8]) -> bool {
        let Some(&weight) = self.weights.get(tensor) else {
            return true;
        };
        let mut copy = match self.free.try_recv() {
            Ok(copy) => copy,
            Err(_) if self.allocated < CHUNKS_IN_FLIGHT => {
                self.allocated += 1;
                Vec::with_capacity(bytes.len())
            }
            Err(_) => match self.free.recv() {
                Ok(copy) => copy,
                Err(_) => return false,
            },
        };
        copy.clear();
        copy.extend_from_slice(bytes);
        self.pieces
            .send(Piece {
                weight,
                bytes: copy,
            })
            .is_ok()
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
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    let tap = Tap {
        weights,
        pieces,
        free,
        allocated: 0,
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
        let entry = weights.get_mut(piece.weight);
        if let Some(entry) = entry.filter(|_| measured.failure.is_none()) {
            if let Some(weight) = entry.as_mut() {
                match weight.add(store, &piece.bytes) {
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
        let _ = recycle.try_send(piece.bytes);
    }
    for weight in weights.into_iter().flatten() {
        if cancelled.load(Ordering::Relaxed) {
            break;
        }
        buffer = jobs::run(weight.into_job(), store, buffer, measured);
    }
    buffer
}
