//! Direct writes: an fsync `always` log's appends go past the page cache (`O_DIRECT`).
//!
//! A buffered append copies every byte into the page cache, and a durable log syncs it at
//! once, so the cache holds nothing it did not have to write anyway; on a VM whose memory is
//! handed back to its host, the copy into pages the guest has not touched lately was the
//! slowest step of a 1 KiB produce (docs/benchmarks.md has the figures). A direct write
//! instead copies the batches into a reused, aligned buffer and the disk takes them from
//! there.
//!
//! A direct write must start and end on a block boundary ([`DIRECT_BLOCK_BYTES`]), and a
//! log's end seldom lies on one. So [`DirectTail`] keeps the bytes from the last boundary at
//! or below the end up to the end, and each write starts at that boundary with those bytes
//! again (the same bytes the file holds there), then the new batches, then zeros up to the
//! next boundary. The zeros past the batches are what the runway's are
//! ([`crate::limits::RUNWAY_BYTES`]): a seal and a clean close cut them, and an open after a
//! crash cuts them as a tail in which nothing was acknowledged.
//!
//! The batches are copied into the buffer with non-temporal stores ([`copy_past_cache`]):
//! the disk reads the buffer, the CPU never does, so an ordinary copy would first read every
//! destination line into the cache and then push the batches out of it.
//!
//! Writes behind: a segment's direct writes, once one has succeeded, go to a writer thread of
//! its own ([`DIRECT_WRITER_THREADS_MAX`] in the process), and the append returns as soon as
//! its buffers are handed on, so the disk writes one append's batches while the partition's
//! writer copies the next one's; buffers queued meanwhile go in one `pwritev`. What an
//! append returning means does not change for anyone who waits for a sync: a sync waits for
//! the writes handed on before it was prepared ([`Writes::wait_for`]), a failed write fails
//! it and fences the log, and so nothing written behind is acknowledged as durable before it
//! is written. Readers of an `always` log stop at what is synced, so never wait; any other
//! use of the file waits for the writes first. Two things an append still answers itself:
//! the blocks its writes need are reserved before it returns, so a full disk refuses the
//! append (not a write after its answer); and a caller that answers once a batch is written
//! rather than synced (`acks=leader`) waits for the writes (`Log::wait_for_writes`). The
//! simulated file system writes behind only when a test asks it to.
//!
//! Reads, length changes and syncs keep using the segment's ordinary handle: the kernel drops
//! the cached pages a direct write covers, so a read after it sees what it wrote. The
//! `fdatasync` after a direct write is still needed: it flushes the disk's write cache and
//! commits a change of the file's size.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use memmap2::MmapMut;

use crate::fs::File;
use crate::limits::{
    DIRECT_BLOCK_BYTES, DIRECT_BUFFERS_KEPT, DIRECT_RESERVED_AHEAD_BYTES, DIRECT_WRITE_BYTES,
    DIRECT_WRITE_BYTES_MIN, DIRECT_WRITE_COALESCED_BYTES, DIRECT_WRITER_THREADS_MAX,
    DIRECT_WRITES_QUEUED,
};

static ON: AtomicBool = AtomicBool::new(true);
static BYTES_MIN: AtomicU64 = AtomicU64::new(DIRECT_WRITE_BYTES_MIN);

/// Switches direct writes on or off for the whole process (on until switched off); a segment
/// writing directly goes on until its next light append.
pub fn set_direct_writes(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Changes which appends are heavy enough to write directly ([`DIRECT_WRITE_BYTES_MIN`]
/// until changed): for tests that write small logs.
pub fn set_direct_write_bytes_min(bytes: u64) {
    BYTES_MIN.store(bytes, Ordering::Relaxed);
}

/// Whether an fsync `always` log writes a run of `bytes` directly.
pub(crate) fn wanted(bytes: u64) -> bool {
    ON.load(Ordering::Relaxed) && bytes >= BYTES_MIN.load(Ordering::Relaxed)
}

/// How many writer threads run (one per segment writing behind), of
/// [`DIRECT_WRITER_THREADS_MAX`].
static WRITER_THREADS: AtomicUsize = AtomicUsize::new(0);

/// The end of a log file written with direct writes, and the handle they go through.
#[derive(Debug)]
pub(crate) struct DirectTail {
    file: Arc<dyn File>,
    /// Where the block holding the file's end starts, and that block's bytes up to the end,
    /// as the last direct write left them; `None` until a write is handed on: the next
    /// write reads them from the file. A write that starts elsewhere (the file was cut
    /// since) reads them too.
    tail: Option<(u64, Vec<u8>)>,
    /// The writes handed to the writer thread and not yet over; the segment's file
    /// ([`crate::segment_file::SegmentFile`]) holds them too, and every other use of the
    /// file waits for them.
    writes: Arc<Writes>,
    /// The thread writing behind the appends, once one runs.
    writer: Option<Writer>,
    /// Whether a direct write through the handle has succeeded: until one has, writes are
    /// not handed on, so a file system that takes the handle but refuses the write answers
    /// the append itself (see `Segment::append_run`).
    proven: bool,
    /// Where the file's blocks are reserved up to (`allocate`) for writes behind, so that a
    /// full disk refuses the append that needs more rather than a write after its answer.
    reserved: u64,
}

/// The thread that writes a segment's filled buffers, in the order they were filled, and
/// its place among [`DIRECT_WRITER_THREADS_MAX`].
#[derive(Debug)]
struct Writer {
    jobs: SyncSender<Job>,
    thread: JoinHandle<()>,
}

/// A filled buffer: its first `len` bytes go to `position`.
struct Job {
    buffer: Buffer,
    len: usize,
    position: u64,
}

/// One of the [`DIRECT_WRITER_THREADS_MAX`] places, held by a running writer thread.
struct ThreadPlace;

impl ThreadPlace {
    fn take() -> Option<ThreadPlace> {
        WRITER_THREADS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < DIRECT_WRITER_THREADS_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| ThreadPlace)
    }
}

impl Drop for ThreadPlace {
    fn drop(&mut self) {
        WRITER_THREADS.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DirectTail {
    /// Direct writes through `file`, a handle opened for them
    /// ([`crate::fs::FileSystem::open_direct`]); `writes` is the segment's.
    pub(crate) fn new(file: Arc<dyn File>, writes: Arc<Writes>) -> DirectTail {
        DirectTail { file, tail: None, writes, writer: None, proven: false, reserved: 0 }
    }

    /// Copies `bufs` into aligned buffers, to be written back to back at `start` (the file's
    /// end; `buffered` is the file's ordinary handle, read from when the bytes before `start`
    /// in its block are not known), with zeros after them to the next block boundary.
    /// Returns where the zeros past the batches end: that boundary, or the end of the blocks
    /// reserved for writes behind, if further (never past `reserve_to`, the segment's size,
    /// unless the batches are).
    ///
    /// Once a direct write has succeeded and a writer thread can run (see
    /// [`DIRECT_WRITER_THREADS_MAX`]), the buffers are handed to the thread and this returns
    /// without waiting for their writes: they go on while the next append fills other
    /// buffers, and a sync ([`Writes::wait_for`]) or any other use of the file
    /// ([`crate::segment_file::SegmentFile::get`]) waits for them. Their blocks are reserved
    /// first, so a full disk refuses this append. Otherwise the writes are over when this
    /// returns.
    ///
    /// On an error every write handed on before is over when this returns, and the caller
    /// must cut the file back to `start`; the bytes kept of the last block are gone, so the
    /// next write reads them from the file.
    pub(crate) fn write(
        &mut self,
        buffered: &dyn File,
        bufs: &[&[u8]],
        start: u64,
        reserve_to: u64,
    ) -> io::Result<u64> {
        let written = self.hand_on(buffered, bufs, start, reserve_to);
        if written.is_err() {
            self.tail = None;
            self.reserved = 0;
            self.writes.wait()?;
        }
        written
    }

    fn hand_on(
        &mut self,
        buffered: &dyn File,
        bufs: &[&[u8]],
        start: u64,
        reserve_to: u64,
    ) -> io::Result<u64> {
        let block = DIRECT_BLOCK_BYTES as u64;
        let mut position = start / block * block;
        let head_len = (start - position) as usize;
        let bytes: u64 = bufs.iter().map(|buf| buf.len() as u64).sum();
        let end = (start + bytes).div_ceil(block) * block;
        let behind = self.writer_ready();
        if behind {
            self.reserve(buffered, end, reserve_to)?;
        }
        let mut buffer = Buffer::take()?;
        match self.tail.take() {
            Some((at, bytes)) if at == position && bytes.len() == head_len => {
                buffer.bytes()[..head_len].copy_from_slice(&bytes);
            }
            _ => {
                self.writes.wait()?;
                buffered.read_exact_at(&mut buffer.bytes()[..head_len], position)?;
            }
        }
        let mut filled = head_len;
        for buf in bufs {
            let mut rest: &[u8] = buf;
            while !rest.is_empty() {
                let buf_bytes = buffer.bytes();
                let n = rest.len().min(buf_bytes.len() - filled);
                copy_past_cache(&mut buf_bytes[filled..filled + n], &rest[..n]);
                filled += n;
                rest = &rest[n..];
                if filled == buf_bytes.len() {
                    let full = std::mem::replace(&mut buffer, Buffer::take()?);
                    self.submit(Job { buffer: full, len: filled, position }, behind)?;
                    position += filled as u64;
                    filled = 0;
                }
            }
        }
        let whole = filled / DIRECT_BLOCK_BYTES * DIRECT_BLOCK_BYTES;
        let padded = filled.div_ceil(DIRECT_BLOCK_BYTES) * DIRECT_BLOCK_BYTES;
        debug_assert_eq!(position + padded as u64, end);
        let kept = buffer.bytes()[whole..filled].to_vec();
        if padded > 0 {
            buffer.bytes()[filled..padded].fill(0);
            self.submit(Job { buffer, len: padded, position }, behind)?;
        }
        self.tail = Some((position + whole as u64, kept));
        Ok(end.max(self.reserved))
    }

    /// Whether this write goes behind: a direct write has succeeded, the file takes writes
    /// behind, and the writer thread runs (started here if a place is free).
    fn writer_ready(&mut self) -> bool {
        if self.writer.is_some() {
            return true;
        }
        if !self.proven || !self.file.writes_behind() {
            return false;
        }
        let Some(place) = ThreadPlace::take() else { return false };
        let (jobs, queue) = std::sync::mpsc::sync_channel(DIRECT_WRITES_QUEUED);
        let (file, writes) = (self.file.clone(), self.writes.clone());
        let spawned = std::thread::Builder::new().name("spool-direct".into()).spawn(move || {
            let _place = place;
            write_jobs(file.as_ref(), &writes, queue);
        });
        match spawned {
            Ok(thread) => {
                self.writer = Some(Writer { jobs, thread });
                true
            }
            // No thread: the writes go inline, as before one ran.
            Err(_) => false,
        }
    }

    /// Reserves the file's blocks up to `end`, and up to [`DIRECT_RESERVED_AHEAD_BYTES`]
    /// past it (not past `reserve_to`) where there is room, so the next appends need no
    /// reservation.
    fn reserve(&mut self, buffered: &dyn File, end: u64, reserve_to: u64) -> io::Result<()> {
        if end <= self.reserved {
            return Ok(());
        }
        // The writes running finish first: the file system would wait for them anyway (ext4
        // does), and the simulated one then sees the steps in one order.
        self.writes.wait()?;
        let ahead = (end + DIRECT_RESERVED_AHEAD_BYTES).min(reserve_to).max(end);
        self.reserved = match buffered.allocate(ahead) {
            Ok(()) => ahead,
            Err(_) if ahead > end => {
                buffered.allocate(end)?;
                end
            }
            Err(error) => return Err(error),
        };
        Ok(())
    }

    /// Hands `job` to the writer thread (waiting while it has [`DIRECT_WRITES_QUEUED`]
    /// queued) if the write goes `behind`, else writes it here; an error if an earlier
    /// write failed.
    fn submit(&mut self, job: Job, behind: bool) -> io::Result<()> {
        self.writes.check()?;
        match (&self.writer, behind) {
            (Some(writer), true) => {
                self.writes.started(job.position);
                writer.jobs.send(job).map_err(|_| {
                    let error = || io::Error::other("the direct writer thread ended");
                    self.writes.finished(1, Err(error()), 0);
                    error()
                })
            }
            _ => {
                self.file.write_all_at(&job.buffer.bytes_ref()[..job.len], job.position)?;
                self.proven = true;
                Ok(())
            }
        }
    }
}

impl Drop for DirectTail {
    /// Ends the writer thread once it has written every buffer handed to it: a failure
    /// among them stays in [`Writes`] for the segment's next use of its file.
    fn drop(&mut self) {
        if let Some(Writer { jobs, thread }) = self.writer.take() {
            drop(jobs);
            let _ = thread.join();
        }
    }
}

/// The writer thread: writes the jobs in the order they were handed on, and tells `writes`.
/// Jobs queued while it wrote go in one `pwritev` (up to [`DIRECT_WRITE_COALESCED_BYTES`]):
/// each job but the last gives only the bytes before the next one's start, since the next
/// one starts by writing the last block again with more in it. After a failure it writes
/// nothing more (each later job only counts as over), so nothing lands past a hole.
fn write_jobs(file: &dyn File, writes: &Writes, queue: Receiver<Job>) {
    let mut next = None;
    loop {
        let Some(first) = next.take().or_else(|| queue.recv().ok()) else { return };
        let mut jobs = vec![first];
        let mut bytes = jobs[0].len;
        while bytes < DIRECT_WRITE_COALESCED_BYTES {
            let Ok(job) = queue.try_recv() else { break };
            let last = jobs.last().expect("one at least");
            if job.position < last.position || job.position > last.position + last.len as u64 {
                next = Some(job);
                break;
            }
            bytes += job.len;
            jobs.push(job);
        }
        let last = jobs.last().expect("one at least");
        let end = last.position + last.len as u64;
        let result = writes.check().and_then(|()| {
            let mut bufs: Vec<&[u8]> = Vec::with_capacity(jobs.len());
            for (job, following) in jobs.iter().zip(jobs.iter().skip(1).map(Some).chain([None])) {
                let len = following.map_or(job.len, |f| (f.position - job.position) as usize);
                bufs.push(&job.buffer.bytes_ref()[..len]);
            }
            file.write_all_vectored_at(&bufs, jobs[0].position)
        });
        let count = jobs.len();
        drop(jobs);
        writes.finished(count, result, end);
    }
}

/// The direct writes of one segment's file that are handed on and not yet over, and the
/// first that failed. Every use of the file other than appending waits for them; a failure
/// is kept for good, since the batches it held were appended already: the log must fence.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    state: Mutex<WritesState>,
    over: Condvar,
}

#[derive(Debug, Default)]
struct WritesState {
    /// Writes handed on since the segment opened, and how many of them are over.
    handed: u64,
    over: u64,
    /// The file holds what the appends wrote up to here: the writes handed on end past it.
    written_to: u64,
    failed: Option<(io::ErrorKind, String)>,
}

impl Writes {
    fn lock(&self) -> MutexGuard<'_, WritesState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write from `position` is handed on.
    fn started(&self, position: u64) {
        let mut state = self.lock();
        if state.over == state.handed {
            // Everything before it was written by earlier appends.
            state.written_to = state.written_to.max(position);
        }
        state.handed += 1;
    }

    /// `count` writes are over, the last ending at `end`.
    fn finished(&self, count: usize, result: io::Result<()>, end: u64) {
        let mut state = self.lock();
        state.over += count as u64;
        match result {
            Ok(()) => state.written_to = state.written_to.max(end),
            Err(error) => {
                state.failed.get_or_insert_with(|| (error.kind(), error.to_string()));
            }
        }
        self.over.notify_all();
    }

    /// Waits until every write handed on is over; an error if one of them (or any before)
    /// failed.
    pub(crate) fn wait(&self) -> io::Result<()> {
        let handed = self.handed();
        self.wait_for(handed)
    }

    /// How many writes have been handed on: what [`Writes::wait_for`] takes.
    pub(crate) fn handed(&self) -> u64 {
        self.lock().handed
    }

    /// Waits until the first `handed` writes handed on are over, not for any handed on
    /// since; an error if a write has failed.
    pub(crate) fn wait_for(&self, handed: u64) -> io::Result<()> {
        let mut state = self.lock();
        while state.over < handed && state.failed.is_none() {
            state = self.over.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        failure(&state)
    }

    /// Waits until the file holds what the appends wrote before `end` (at once when no
    /// write is running); an error if a failed write was to hold it.
    pub(crate) fn wait_to_read(&self, end: u64) -> io::Result<()> {
        let mut state = self.lock();
        while state.over < state.handed && state.written_to < end && state.failed.is_none() {
            state = self.over.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.over == state.handed || state.written_to >= end { Ok(()) } else { failure(&state) }
    }

    /// An error if a write has failed, without waiting.
    pub(crate) fn check(&self) -> io::Result<()> {
        failure(&self.lock())
    }
}

fn failure(state: &WritesState) -> io::Result<()> {
    match &state.failed {
        None => Ok(()),
        Some((kind, message)) => {
            Err(io::Error::new(*kind, format!("a direct write to the segment failed: {message}")))
        }
    }
}

/// Copies `src` into `dst` (of the same length) with non-temporal stores where the CPU has
/// them (SSE2, which every x86-64 has), so the copy neither reads each destination line
/// into the cache before writing it nor pushes other data out of the cache to hold it;
/// elsewhere, an ordinary copy. The stores are fenced before it returns, so the write that
/// follows sends what they stored. docs/benchmarks.md has what it gains.
fn copy_past_cache(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "a copy between slices of one length");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        const LANE: usize = std::mem::size_of::<__m128i>();
        // The stores must be aligned: copy up to the first 16-byte boundary the usual way.
        let mut at = dst.as_ptr().align_offset(LANE).min(dst.len());
        dst[..at].copy_from_slice(&src[..at]);
        while at + LANE <= dst.len() {
            // SAFETY: `at + LANE <= len` for both slices (one length, asserted above), so the
            // load and the store are in bounds; the load may be unaligned, and the store is
            // 16-byte aligned, since `at` started at `dst`'s first boundary and moves by 16.
            // SSE2 is part of x86-64.
            unsafe {
                let lane = _mm_loadu_si128(src.as_ptr().add(at).cast::<__m128i>());
                _mm_stream_si128(dst.as_mut_ptr().add(at).cast::<__m128i>(), lane);
            }
            at += LANE;
        }
        dst[at..].copy_from_slice(&src[at..]);
        // Non-temporal stores are not ordered with later ones: fence them before the buffer
        // is handed on.
        // SAFETY: SSE is part of x86-64.
        unsafe { _mm_sfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// An aligned buffer for direct writes, taken from the process's few kept ones and given
/// back on drop (see [`DIRECT_BUFFERS_KEPT`]). An anonymous map: page-aligned, and its pages
/// stay the process's once touched. On Linux it asks for transparent huge pages
/// (`MADV_HUGEPAGE`; a recent kernel places a map of whole 2 MiB pages on a 2 MiB
/// boundary): the copy into the buffer and each direct write out of it then go through two
/// large pages, not a thousand small ones, which made the 1 KiB produce about a quarter
/// faster (docs/benchmarks.md).
struct Buffer(Option<MmapMut>);

static KEPT: Mutex<Vec<MmapMut>> = Mutex::new(Vec::new());

impl Buffer {
    fn take() -> io::Result<Buffer> {
        let kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let map = match kept {
            Some(map) => map,
            None => {
                let map = MmapMut::map_anon(DIRECT_WRITE_BYTES)?;
                // Advice only: a kernel without transparent huge pages, or with them off,
                // refuses or ignores it, and the buffer works as well in small pages.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                map
            }
        };
        Ok(Buffer(Some(map)))
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }

    fn bytes_ref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() < DIRECT_BUFFERS_KEPT
            && let Some(map) = self.0.take()
        {
            kept.push(map);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::copy_past_cache;

    #[test]
    fn copying_past_the_cache_copies_every_byte_at_any_alignment() {
        let src: Vec<u8> = (0..(1 << 20) + 300).map(|i: u32| (i * 31 + i / 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        let lens = (0..300).chain([4096, 65_537, 1 << 20]);
        for len in lens {
            for (from, to) in [(0, 0), (1, 0), (0, 1), (3, 17), (16, 5), (15, 16), (7, 7)] {
                dst.fill(0xEE);
                copy_past_cache(&mut dst[to..to + len], &src[from..from + len]);
                assert_eq!(
                    &dst[to..to + len],
                    &src[from..from + len],
                    "len {len} from {from} to {to}"
                );
                assert!(dst[..to].iter().all(|&b| b == 0xEE), "len {len}: wrote before the copy");
                assert!(dst[to + len..].iter().all(|&b| b == 0xEE), "len {len}: wrote past it");
            }
        }
    }
}
