//! The chunk buffers that go round between the writer and the readiness thread. The writer
//! swaps each chunk it hands over for a free buffer (no copy), and the thread sends the
//! buffers back once their chunks are added. A buffer made on the writer's side costs the writer
//! a page fault per page the first time it is written (efficientnet_b0: 45 buffers of 64 KiB,
//! 720 faults a run), so the thread makes them ahead, writing over their pages, while nothing
//! else waits for it; the writer makes one only when none is free. The thread makes one only
//! while fewer than [`READY`] wait to be taken, counting the ones sent back: a buffer made where
//! a returned one would have done costs its faults for nothing, on the thread that finishes last
//! (one buffer per chunk cost mobilenet_v3_small's thread 440 more faults a run, and saved the
//! writer 90).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

/// Chunk buffers in flight at most, beside the chunks of the weight being written (which the
/// thread may keep until that weight's last): the writer waits for one to come back beyond.
pub(super) const IN_FLIGHT: usize = 64;

/// Buffers waiting to be taken above which the thread makes none ahead.
pub(super) const READY: usize = 16;

/// The writer's side: buffers sent back or made ahead.
pub(super) struct Buffers {
    free: Receiver<Vec<u8>>,
    made: Arc<AtomicUsize>,
    /// Buffers in `free`, counted by both sides.
    waiting: Arc<AtomicUsize>,
}

/// The thread's side: where buffers go back, and the buffers it makes ahead.
pub(super) struct Maker {
    /// Unbounded, so no buffer is ever dropped on its way back: every buffer made counts as in
    /// flight until it returns.
    recycle: Sender<Vec<u8>>,
    made: Arc<AtomicUsize>,
    waiting: Arc<AtomicUsize>,
    /// Buffers the thread makes ahead at most, and their length in bytes.
    ahead: usize,
    bytes: usize,
}

/// The two sides of a pool whose thread makes up to `ahead` buffers of `bytes` ahead (no more
/// than [`IN_FLIGHT`]).
pub(super) fn pool(ahead: usize, bytes: usize) -> (Buffers, Maker) {
    let (recycle, free) = mpsc::channel();
    let made = Arc::new(AtomicUsize::new(0));
    let waiting = Arc::new(AtomicUsize::new(0));
    let maker = Maker {
        recycle,
        made: made.clone(),
        waiting: waiting.clone(),
        ahead: ahead.min(IN_FLIGHT),
        bytes,
    };
    let buffers = Buffers {
        free,
        made,
        waiting,
    };
    (buffers, maker)
}

/// Counts one more buffer made, if fewer than `limit` are.
fn count_one_more(made: &AtomicUsize, limit: usize) -> bool {
    made.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
        (m < limit).then_some(m + 1)
    })
    .is_ok()
}

impl Buffers {
    /// A free buffer: one sent back or made ahead, else a new one (empty) while fewer than
    /// `limit` are made; `None` when every buffer is out.
    pub fn try_take(&self, limit: usize) -> Option<Vec<u8>> {
        match self.free.try_recv() {
            Ok(buffer) => Some(self.taken(buffer)),
            Err(_) => count_one_more(&self.made, limit).then(Vec::new),
        }
    }

    /// Waits for a buffer to come back; `None` once the thread is gone.
    pub fn wait(&self) -> Option<Vec<u8>> {
        self.free.recv().ok().map(|buffer| self.taken(buffer))
    }

    fn taken(&self, buffer: Vec<u8>) -> Vec<u8> {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        buffer
    }

    /// How many buffers have been made, by either side.
    #[cfg(test)]
    pub fn made(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }
}

impl Maker {
    /// Sends `buffer` back to the writer.
    pub fn give_back(&self, buffer: Vec<u8>) {
        // Counted before it is sent, so the writer never takes one not yet counted.
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _ = self.recycle.send(buffer);
    }

    /// Makes one buffer ahead of the writer, its pages written, unless enough are made or
    /// [`READY`] wait to be taken; whether it did.
    pub fn make_ahead(&self) -> bool {
        if self.waiting.load(Ordering::Relaxed) >= READY || !count_one_more(&self.made, self.ahead)
        {
            return false;
        }
        // Not zeros: the allocator may answer those with pages not mapped yet, which the writer
        // would then fault in. Any other byte is written, and maps every page here.
        let buffer = vec![1; self.bytes];
        self.give_back(buffer);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_made_ahead_are_written_and_counted_with_the_writers() {
        let (buffers, maker) = pool(3, 16);
        assert!(maker.make_ahead());
        assert!(maker.make_ahead());
        // Written over already: a chunk of that length is encoded into it without growing it.
        let first = buffers.try_take(5).unwrap();
        assert_eq!((first.len(), first.capacity() >= 16), (16, true));
        assert_eq!(buffers.try_take(5).unwrap().len(), 16);
        // None free: the writer makes its own (empty), counted with the thread's.
        assert_eq!(buffers.try_take(5).unwrap().len(), 0);
        assert_eq!(buffers.made(), 3);
        // The thread's limit counts the writer's buffers too.
        assert!(!maker.make_ahead());
        assert_eq!(buffers.try_take(4).unwrap().len(), 0);
        assert_eq!(buffers.try_take(4), None);
        maker.give_back(first);
        assert_eq!(buffers.try_take(4).map(|b| b.len()), Some(16));
        drop(maker);
        assert_eq!(buffers.wait(), None);
    }

    #[test]
    fn the_thread_makes_no_more_than_the_buffers_in_flight() {
        let (buffers, maker) = pool(IN_FLIGHT + 10, 1);
        let mut taken = Vec::new();
        while maker.make_ahead() {
            taken.extend(buffers.try_take(IN_FLIGHT));
        }
        assert_eq!((buffers.made(), taken.len()), (IN_FLIGHT, IN_FLIGHT));
    }

    #[test]
    fn the_thread_makes_none_while_enough_wait_sent_back_ones_counted() {
        let (buffers, maker) = pool(IN_FLIGHT, 1);
        while maker.make_ahead() {}
        assert_eq!(buffers.made(), READY);
        let first = buffers.try_take(IN_FLIGHT).unwrap();
        assert!(maker.make_ahead());
        assert!(!maker.make_ahead());
        // One sent back waits like one made: two must be taken before the thread makes more.
        maker.give_back(first);
        let _second = buffers.try_take(IN_FLIGHT).unwrap();
        assert!(!maker.make_ahead());
        let _third = buffers.wait().unwrap();
        assert!(maker.make_ahead());
        assert_eq!(buffers.made(), READY + 2);
    }
}
