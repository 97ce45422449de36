//! The way written chunks go from the writer to the readiness thread: the writer's end
//! ([`Tap`]) takes each chunk of a weight measured as written (its buffer, swapped for one
//! from a small [`pool`](super::pool): no copy), takes each channel's largest magnitude while
//! the chunk is in its cache (for weights of at most
//! [`READ_AHEAD_ABOVE`](super::streamed::READ_AHEAD_ABOVE) bytes, mostly), and sends the
//! chunks in batches, the ranges with the last; the thread's end ([`receive`]) adds them to
//! that weight's sums (keeping them until the ranges come) and sends the buffers back. The
//! writer waits only when every buffer is in flight, the pool counting one weight's chunks on
//! top, since the thread may keep them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use crate::external::ExternalStore;
use crate::scaled::CHUNK;
use crate::tensor::Dtype;

use super::jobs::{self, Measured, Queue};
use super::pool::{self, Buffers, Maker, IN_FLIGHT};
use super::stats;
use super::streamed::Streamed;

/// Bytes of chunks sent together: each send may wake the thread, a system call on the
/// writer's side, so they are sent a few at a time.
const BATCH: usize = 1 << 19;

/// Written chunks of one weight measured as written, in order; with the last of them, the
/// weight's channel ranges when the writer takes them.
struct Piece {
    weight: usize,
    chunks: Vec<Vec<u8>>,
    ranges: Option<Vec<f64>>,
}

/// What the writer's end knows of a weight measured as written.
struct Watched {
    index: usize,
    dtype: Dtype,
    /// Bytes per output channel.
    run: usize,
    /// Bytes written so far, and in all.
    written: usize,
    len: usize,
    /// Each channel's largest magnitude so far, when the writer takes the ranges; else the
    /// thread reads them ahead from the source.
    ranges: Option<Vec<f64>>,
    read_ahead: bool,
}

/// The writer's end: which initializers are measured as written, and where their chunks go.
pub(super) struct Tap {
    weights: HashMap<String, Watched>,
    pieces: SyncSender<Piece>,
    buffers: Buffers,
    batch: Option<Piece>,
    batched: usize,
    /// The weight being written, and its chunks taken so far: the thread may keep them all
    /// until its last, so the pool grows by as many.
    current: Option<usize>,
    of_this_weight: usize,
}

impl Tap {
    /// How many weights are measured as written.
    pub fn weights(&self) -> usize {
        self.weights.len()
    }

    /// Whether the thread reads `tensor`'s ranges ahead from its source (in place, if inline).
    pub fn reads_ahead(&self, tensor: &str) -> bool {
        self.weights.get(tensor).is_some_and(|w| w.read_ahead)
    }

    /// Takes `bytes` of `tensor` for the thread, leaving a buffer of the pool in their place;
    /// false once the thread is gone.
    pub fn take(&mut self, tensor: &str, bytes: &mut Vec<u8>) -> bool {
        let Some(watched) = self.weights.get_mut(tensor) else {
            return true;
        };
        if let Some(ranges) = &mut watched.ranges {
            // The chunk is still in this core's cache: each channel's largest magnitude now.
            let size = watched.dtype.size();
            let mut at = watched.written;
            for part in split_at_runs(bytes, at, watched.run) {
                if let Some(range) = ranges.get_mut(at / watched.run) {
                    *range = range.max(stats::range_of(watched.dtype, part));
                }
                at += part.len() - part.len() % size;
            }
        }
        watched.written += bytes.len();
        let (weight, complete) = (watched.index, watched.written >= watched.len);
        let ranges = complete.then(|| watched.ranges.take()).flatten();
        if self.current != Some(weight) {
            (self.current, self.of_this_weight) = (Some(weight), 0);
            if !self.flush() {
                return false;
            }
        }
        self.of_this_weight += 1;
        let replacement = match self.buffers.try_take(IN_FLIGHT + self.of_this_weight) {
            Some(buffer) => buffer,
            // Every buffer is out: the ones batched here go first, so some come back.
            None if !self.flush() => return false,
            None => match self.buffers.wait() {
                Some(buffer) => buffer,
                None => return false,
            },
        };
        let chunk = std::mem::replace(bytes, replacement);
        self.batched += chunk.len();
        let batch = self.batch.get_or_insert_with(|| Piece {
            weight,
            chunks: Vec::new(),
            ranges: None,
        });
        batch.chunks.push(chunk);
        batch.ranges = ranges;
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

/// `bytes`, which start `at` bytes into their tensor, cut where a run of `run` bytes ends.
fn split_at_runs(bytes: &[u8], at: usize, run: usize) -> impl Iterator<Item = &[u8]> {
    let first = (run - at % run).min(bytes.len());
    let (head, tail) = bytes.split_at(first);
    std::iter::once(head)
        .chain(tail.chunks(run))
        .filter(|part| !part.is_empty())
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
    maker: Maker,
}

/// The two ends for the weights `streamed`, in the order they are written.
pub(super) fn channel(streamed: Vec<Streamed>) -> (Tap, Inbox) {
    let (pieces, inbox) = sync_channel(IN_FLIGHT);
    let chunk_bytes = |s: &Streamed| CHUNK * s.value.dtype.size();
    let chunks = streamed.iter().map(|s| s.value.len().div_ceil(CHUNK)).sum();
    let bytes = streamed.iter().map(chunk_bytes).max().unwrap_or(0);
    let (buffers, maker) = pool::pool(chunks, bytes);
    let weights = streamed
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let (dtype, len) = (s.value.dtype, s.value.len());
            let watched = Watched {
                index,
                dtype,
                run: s.run.max(1) * dtype.size(),
                written: 0,
                len: len * dtype.size(),
                ranges: s.ranges_from_writer.then(|| vec![0.0; len / s.run.max(1)]),
                read_ahead: !s.ranges_from_writer,
            };
            (s.name.clone(), watched)
        })
        .collect();
    let tap = Tap {
        weights,
        pieces,
        buffers,
        batch: None,
        batched: 0,
        current: None,
        of_this_weight: 0,
    };
    let inbox = Inbox {
        weights: streamed.into_iter().map(Some).collect(),
        pieces: inbox,
        maker,
    };
    (tap, inbox)
}

/// Adds each written chunk to its weight's sums until the writer is done. While none waits,
/// makes a chunk buffer ahead for the writer, else reads the next weight's ranges ahead, else
/// measures a whole weight from the queue. Weights whose bytes did not all come are measured
/// whole at the end.
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
        maker,
    } = inbox;
    let mut ahead = 0;
    while !cancelled.load(Ordering::Relaxed) {
        let piece = match pieces.try_recv() {
            Ok(piece) => piece,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if maker.make_ahead() {
                    continue;
                }
                while weights
                    .get(ahead)
                    .is_some_and(|w| w.as_ref().is_none_or(|w| !w.reads_ahead()))
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
        let mut done = Vec::new();
        let entry = weights.get_mut(piece.weight);
        match entry.filter(|e| e.is_some() && measured.failure.is_none()) {
            Some(entry) => {
                let mut taken = Ok(());
                if let Some(weight) = entry.as_mut() {
                    for chunk in piece.chunks {
                        taken = taken.and_then(|()| weight.take(store, chunk, &mut done));
                    }
                    if let Some(ranges) = piece.ranges {
                        taken =
                            taken.and_then(|()| weight.ranges_written(store, ranges, &mut done));
                    }
                }
                match taken {
                    Err(e) => measured.failure = Some(e),
                    Ok(()) if entry.as_ref().is_some_and(Streamed::is_complete) => {
                        measured.measured_as_written += 1;
                        let figures = entry.take().map(Streamed::figures).unwrap_or_default();
                        measured.layers.extend(figures);
                    }
                    Ok(()) => {}
                }
            }
            // Nothing to add them to (or a failure already): the buffers go back.
            None => done = piece.chunks,
        }
        for chunk in done {
            maker.give_back(chunk);
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::readiness::jobs::Slot;
    use crate::readiness::layout::Elements;
    use crate::readiness::streamed::tests::{slot, weight};
    use crate::readiness::LayerReadiness;
    use crate::scaled::Scaling;

    /// The figures the thread's end gives for `streamed`, whose written bytes the writer's end
    /// takes in pieces of `piece` elements.
    fn through_the_tap(streamed: Vec<Streamed>, written: &[Vec<u8>], piece: usize) -> Measured {
        let names: Vec<(String, usize)> = streamed
            .iter()
            .map(|s| (s.name.clone(), s.value.dtype.size()))
            .collect();
        let (mut tap, inbox) = channel(streamed);
        let queue: Queue = Arc::new(Mutex::new(VecDeque::new()));
        let store = ExternalStore::none();
        let thread = std::thread::spawn(move || {
            let (mut measured, cancelled) = (Measured::default(), AtomicBool::new(false));
            receive(inbox, &queue, &store, Vec::new(), &mut measured, &cancelled);
            measured
        });
        for ((name, size), bytes) in names.iter().zip(written) {
            for part in bytes.chunks(piece * size) {
                let mut chunk = part.to_vec();
                assert!(tap.take(name, &mut chunk));
            }
        }
        drop(tap);
        thread.join().unwrap()
    }

    #[test]
    fn figures_of_written_chunks_are_the_figures_of_the_whole_weight() {
        // Fed the written bytes in pieces of every size (one element, a channel and a bit, more
        // than a batch), with the ranges taken by the writer or read ahead from the source, the
        // figures equal those of the whole written weight, for each layer that reads it.
        let store = ExternalStore::none();
        let factors: Vec<f64> = (0..16).map(|c| 0.3 + c as f64 * 0.17).collect();
        let cases = [
            (vec![16, 3, 3, 3], vec![Scaling::new(27, factors.clone())]),
            (
                vec![16, 2, 3, 3],
                vec![
                    Scaling::new(18, factors.clone()),
                    Scaling::new(9, vec![-1.5, 0.25]),
                ],
            ),
            (vec![6, 10], vec![Scaling::new(10, factors[..6].to_vec())]),
            (vec![4, 50_000], vec![]),
        ];
        let slots: Vec<Slot> = vec![slot(3, "Conv", 0, 1), slot(5, "Gemm", 0, 1)];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::F64] {
            for ranges_from_writer in [true, false] {
                let mut streamed = Vec::new();
                let mut written = Vec::new();
                let mut want: Vec<(usize, LayerReadiness)> = Vec::new();
                for (k, (dims, scalings)) in cases.iter().enumerate() {
                    let value = weight(dtype, dims, scalings.clone());
                    let bytes = value.to_bytes(&store).unwrap();
                    let name = format!("w{k}");
                    let slots: Vec<Slot> = slots
                        .iter()
                        .map(|s| Slot {
                            order: s.order + 10 * k,
                            ..s.clone()
                        })
                        .collect();
                    for s in &slots {
                        let elements = Elements::Raw(dtype, &bytes);
                        let figures = stats::layer(&s.node, &name, &s.layout(dims), elements);
                        want.push((s.order, figures));
                    }
                    let Ok(mut s) = Streamed::new(name, slots, value) else {
                        panic!("{dims:?} is measured as written");
                    };
                    s.ranges_from_writer = ranges_from_writer;
                    streamed.push(s);
                    written.push(bytes);
                }
                for piece in [1, 29, 4099, 200_000] {
                    let streamed = streamed
                        .iter()
                        .map(|s| {
                            let mut copy =
                                Streamed::new(s.name.clone(), s.slots.clone(), s.value.clone())
                                    .unwrap_or_else(|_| panic!("measured as written"));
                            copy.ranges_from_writer = ranges_from_writer;
                            copy
                        })
                        .collect();
                    let measured = through_the_tap(streamed, &written, piece);
                    assert!(measured.failure.is_none());
                    assert_eq!(measured.measured_as_written, cases.len());
                    let mut got = measured.layers;
                    got.sort_by_key(|(order, _)| *order);
                    let context = format!("{dtype:?}, writer's ranges {ranges_from_writer}");
                    assert_eq!(got, want, "{context}, by {piece}");
                }
            }
        }
    }
}
