//! A file written in buffers, from a second thread when that pays: while the kernel copies one
//! buffer into the page cache, the caller computes the next. Folding is read, scale, write; with
//! the write on its own core a fold takes about the time of the write alone. The thread costs its
//! start and a cross-core wake-up per buffer, so outputs with little to compute are written on
//! the calling thread, and so are outputs written while the other cores are taken (by the
//! readiness thread, on 2 cores).

use std::fs::File;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use bytes::Bytes;

/// Bytes gathered before a `write` on the calling thread.
const INLINE_BUFFER: usize = 1 << 17;
/// Bytes gathered before a buffer is handed to the writing thread: large enough that the
/// cross-core wake-ups stay few (a third fewer wall-clock than 128 KiB on a 2-core VM).
const BACKGROUND_BUFFER: usize = 1 << 19;
/// Buffers in flight: bounds the memory the pipeline holds to `BUFFERS × BACKGROUND_BUFFER`.
const BUFFERS: usize = 3;
/// Bytes read and written at a time by a copy from another file: `pread` and `write` through a
/// buffer this size copied efficientnet_b0's 21 MB 8% faster than `copy_file_range`, and a
/// 1.2 GB data file 13% faster (ext4, Linux 6.18), the buffer staying in the cache.
const COPY_BUFFER: usize = 1 << 17;

enum Job {
    Bytes(Vec<u8>),
    Copy {
        source: File,
        offset: u64,
        len: u64,
    },
    /// Bytes of the mapped input, written straight from the mapping.
    Mapped(Bytes),
}

/// The cores this process may run on (its affinity and CPU quota counted), asked once.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Appends to a file in the order of the calls, on a background thread or on the caller's.
pub struct BufferedWriter {
    /// A handle to the file: written through on the calling thread, preallocated through always.
    file: File,
    current: Vec<u8>,
    /// Where copies from another file pass on the calling thread.
    spare: Vec<u8>,
    pipeline: Option<Pipeline>,
}

/// The writing thread and its channels.
struct Pipeline {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl BufferedWriter {
    /// Writes to a handle to `file` (appending at its current position) on the calling thread.
    pub fn inline(file: &File) -> std::io::Result<BufferedWriter> {
        Ok(BufferedWriter {
            file: file.try_clone()?,
            current: Vec::new(),
            spare: Vec::new(),
            pipeline: None,
        })
    }

    /// [`BufferedWriter::background`] when a core is left for the writing thread beside the
    /// caller's and `busy` other threads, else [`BufferedWriter::inline`]: on cores all taken,
    /// the thread's hand-overs and wake-ups cost more than the copies it takes off the caller
    /// (resnet18's default fold on 2 cores, the readiness thread beside the caller: 1.67× `cp`
    /// with the writing thread, 1.37× without).
    pub fn with_spare_core(file: &File, busy: usize) -> std::io::Result<BufferedWriter> {
        match cores() > busy + 1 {
            true => BufferedWriter::background(file),
            false => BufferedWriter::inline(file),
        }
    }

    /// Starts a writing thread on a handle to `file` (appending at its current position).
    pub fn background(file: &File) -> std::io::Result<BufferedWriter> {
        let mut target = file.try_clone()?;
        let (jobs, inbox) = sync_channel::<Job>(BUFFERS);
        let (recycle, free) = sync_channel::<Vec<u8>>(BUFFERS + 1);
        for _ in 0..BUFFERS {
            let _ = recycle.send(Vec::with_capacity(BACKGROUND_BUFFER));
        }
        let thread = std::thread::Builder::new()
            .name("bnfold-writer".into())
            .spawn(move || -> std::io::Result<()> {
                let mut spare = Vec::new();
                for job in inbox {
                    match job {
                        Job::Bytes(mut bytes) => {
                            target.write_all(&bytes)?;
                            bytes.clear();
                            let _ = recycle.try_send(bytes);
                        }
                        Job::Copy {
                            source,
                            offset,
                            len,
                        } => copy_range(&source, offset, len, &target, &mut spare)?,
                        Job::Mapped(bytes) => target.write_all(&bytes)?,
                    }
                }
                Ok(())
            })?;
        Ok(BufferedWriter {
            file: file.try_clone()?,
            current: Vec::new(),
            spare: Vec::new(),
            pipeline: Some(Pipeline {
                jobs: Some(jobs),
                free,
                thread: Some(thread),
            }),
        })
    }

    /// Bytes gathered before they are written.
    fn buffer(&self) -> usize {
        match self.pipeline {
            Some(_) => BACKGROUND_BUFFER,
            None => INLINE_BUFFER,
        }
    }

    /// Allocates the file's blocks for the `len` bytes from `offset` that are about to be written,
    /// without changing its size: the file system then maps each written page to a block it
    /// already has instead of reserving one per page (a fifth faster on ext4). Best effort: file
    /// systems without `fallocate` are written as they are.
    pub fn preallocate(&self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        if len > 0 {
            let _ = rustix::fs::fallocate(
                &self.file,
                rustix::fs::FallocateFlags::KEEP_SIZE,
                offset,
                len,
            );
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (&self.file, offset, len);
    }

    /// Appends `len` bytes of `source` from `offset`, copied through a buffer of their own
    /// (on the writing thread, if there is one).
    pub fn copy_from(&mut self, source: &File, offset: u64, len: u64) -> std::io::Result<()> {
        self.hand_over()?;
        if self.pipeline.is_none() {
            return copy_range(source, offset, len, &self.file, &mut self.spare);
        }
        let source = source.try_clone()?;
        self.send(Job::Copy {
            source,
            offset,
            len,
        })
    }

    /// Appends `bytes`, a payload of the mapped input whose pages another reader maps anyway,
    /// written straight from the mapping (on the writing thread, if there is one): one copy
    /// where [`BufferedWriter::copy_from`] makes two.
    pub fn write_mapped(&mut self, bytes: &Bytes) -> std::io::Result<()> {
        self.hand_over()?;
        if self.pipeline.is_none() {
            return (&self.file).write_all(bytes);
        }
        self.send(Job::Mapped(bytes.clone()))
    }

    /// Appends `len` bytes of `source` from `offset`, read into the buffer with the bytes
    /// around them (for payloads too small to be worth a write of their own).
    pub fn read_from(
        &mut self,
        source: &File,
        mut offset: u64,
        mut len: usize,
    ) -> std::io::Result<()> {
        let buffer = self.buffer();
        while len > 0 {
            if self.current.capacity() == 0 {
                self.current.reserve(buffer);
            }
            let start = self.current.len();
            let part = buffer.saturating_sub(start).max(1).min(len);
            self.current.resize(start + part, 0);
            crate::source::read_exact_at(source, &mut self.current[start..], offset)?;
            offset += part as u64;
            len -= part;
            if self.current.len() >= buffer {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    /// Waits until everything is written.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.hand_over()?;
        self.stop()
    }

    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let Some(pipeline) = &self.pipeline else {
            (&self.file).write_all(&self.current)?;
            self.current.clear();
            return Ok(());
        };
        let next = pipeline.free.recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.current, next);
        self.send(Job::Bytes(full))
    }

    fn send(&mut self, job: Job) -> std::io::Result<()> {
        let sent = self.pipeline.as_ref().and_then(|p| p.jobs.as_ref());
        if sent.is_some_and(|jobs| jobs.send(job).is_ok()) {
            return Ok(());
        }
        // The thread stopped: its error says why.
        self.stop()?;
        Err(std::io::Error::other("the writing thread stopped"))
    }

    /// Closes the thread's inbox and waits for it: its result.
    fn stop(&mut self) -> std::io::Result<()> {
        let Some(pipeline) = &mut self.pipeline else {
            return Ok(());
        };
        pipeline.jobs = None;
        match pipeline.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the writing thread panicked")),
            None => Ok(()),
        }
    }
}

impl Write for BufferedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        let buffer = self.buffer();
        while !bytes.is_empty() {
            if self.current.capacity() == 0 {
                self.current.reserve(buffer);
            }
            let room = buffer.saturating_sub(self.current.len()).max(1);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.current.extend_from_slice(now);
            bytes = rest;
            if self.current.len() >= buffer {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over()
    }
}

impl Drop for BufferedWriter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Copies `len` bytes at `offset` of `source` to the end of `target`, [`COPY_BUFFER`] bytes at
/// a time through `spare` (made that long once, then reused as it is).
fn copy_range(
    source: &File,
    offset: u64,
    len: u64,
    mut target: &File,
    spare: &mut Vec<u8>,
) -> std::io::Result<()> {
    if spare.len() < COPY_BUFFER {
        spare.resize(COPY_BUFFER, 0);
    }
    let mut copied = 0;
    while copied < len {
        let part = &mut spare[..(len - copied).min(COPY_BUFFER as u64) as usize];
        crate::source::read_exact_at(source, part, offset + copied).map_err(|e| {
            match e.kind() {
                std::io::ErrorKind::UnexpectedEof => std::io::Error::new(
                    e.kind(),
                    format!("the input file ended within {len} bytes from {offset}"),
                ),
                _ => e,
            }
        })?;
        target.write_all(part)?;
        copied += part.len() as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_copies_arrive_in_order() {
        for background in [false, true] {
            bytes_and_copies_arrive_in_order_when(background);
        }
    }

    #[test]
    fn a_writing_thread_starts_only_with_a_core_left_for_it() {
        let target = tempfile::tempfile().unwrap();
        let all_taken = BufferedWriter::with_spare_core(&target, cores()).unwrap();
        assert!(all_taken.pipeline.is_none());
        let none_taken = BufferedWriter::with_spare_core(&target, 0).unwrap();
        assert_eq!(none_taken.pipeline.is_some(), cores() > 1);
    }

    #[test]
    fn copies_longer_than_the_copy_buffer_arrive_whole_and_a_short_source_fails() {
        for background in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let source_path = dir.path().join("source");
            let bytes: Vec<u8> = (0..3 * COPY_BUFFER + 11).map(|i| (i % 251) as u8).collect();
            std::fs::write(&source_path, &bytes).unwrap();
            let source = File::open(&source_path).unwrap();
            let target_path = dir.path().join("target");
            let target = File::create(&target_path).unwrap();
            let mut writer = match background {
                true => BufferedWriter::background(&target).unwrap(),
                false => BufferedWriter::inline(&target).unwrap(),
            };
            writer.write_all(b"head").unwrap();
            let len = 2 * COPY_BUFFER + 5;
            writer.copy_from(&source, 7, len as u64).unwrap();
            writer.finish().unwrap();
            let written = std::fs::read(&target_path).unwrap();
            assert_eq!(&written[..4], b"head");
            assert_eq!(
                &written[4..],
                &bytes[7..7 + len],
                "background: {background}"
            );

            // A source shorter than the copy asks fails, naming the range.
            let mut writer = BufferedWriter::inline(&target).unwrap();
            let past_the_end =
                writer.copy_from(&source, COPY_BUFFER as u64, 3 * COPY_BUFFER as u64);
            let e = past_the_end.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            assert!(e.to_string().contains("the input file ended within"), "{e}");
        }
    }

    fn bytes_and_copies_arrive_in_order_when(background: bool) {
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("source");
        std::fs::write(&source_path, b"0123456789").unwrap();
        let source = File::open(&source_path).unwrap();
        let target = File::create(dir.path().join("target")).unwrap();
        let mut writer = if background {
            BufferedWriter::background(&target).unwrap()
        } else {
            BufferedWriter::inline(&target).unwrap()
        };
        writer.write_all(b"ab").unwrap();
        writer.copy_from(&source, 3, 4).unwrap();
        let big = vec![b'x'; BACKGROUND_BUFFER * 2 + 5];
        writer.write_all(&big).unwrap();
        writer.write_all(b"yz").unwrap();
        writer.write_mapped(&Bytes::from_static(b"mapped")).unwrap();
        writer.write_all(b"!").unwrap();
        writer.finish().unwrap();
        let written = std::fs::read(dir.path().join("target")).unwrap();
        let mut expected = b"ab3456".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"yzmapped!");
        assert_eq!(written, expected);
    }
}
