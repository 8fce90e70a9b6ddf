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
//! Reads, length changes and syncs keep using the segment's ordinary handle: the kernel drops
//! the cached pages a direct write covers, so a read after it sees what it wrote. The
//! `fdatasync` after a direct write is still needed: it flushes the disk's write cache and
//! commits a change of the file's size.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use memmap2::MmapMut;

use crate::fs::File;
use crate::limits::{
    DIRECT_BLOCK_BYTES, DIRECT_BUFFERS_KEPT, DIRECT_WRITE_BYTES, DIRECT_WRITE_BYTES_MIN,
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

/// The end of a log file written with direct writes, and the handle they go through.
#[derive(Debug)]
pub(crate) struct DirectTail {
    file: Arc<dyn File>,
    /// Where the block holding the file's end starts, and that block's bytes up to the end,
    /// as the last direct write left them; `None` until a write succeeds: the next write
    /// reads them from the file. A write that starts elsewhere (the file was cut since)
    /// reads them too.
    tail: Option<(u64, Vec<u8>)>,
}

impl DirectTail {
    /// Direct writes through `file`, a handle opened for them
    /// ([`crate::fs::FileSystem::open_direct`]).
    pub(crate) fn new(file: Arc<dyn File>) -> DirectTail {
        DirectTail { file, tail: None }
    }

    /// Writes `bufs` back to back at `start` (the file's end; `buffered` is the file's
    /// ordinary handle, read from when the bytes before `start` in its block are not known),
    /// and zeros after them to the next block boundary. Returns where those zeros end. On an
    /// error the caller must cut the file back to `start`; the bytes kept of the last block
    /// are gone with the failed write, so the next one reads them from the file.
    pub(crate) fn write(
        &mut self,
        buffered: &dyn File,
        bufs: &[&[u8]],
        start: u64,
    ) -> io::Result<u64> {
        let block = DIRECT_BLOCK_BYTES as u64;
        let mut position = start / block * block;
        let head_len = (start - position) as usize;
        let mut buffer = Buffer::take()?;
        let buf_bytes = buffer.bytes();
        let space = buf_bytes.len();
        match self.tail.take() {
            Some((at, bytes)) if at == position && bytes.len() == head_len => {
                buf_bytes[..head_len].copy_from_slice(&bytes);
            }
            _ => buffered.read_exact_at(&mut buf_bytes[..head_len], position)?,
        }
        let mut filled = head_len;
        for buf in bufs {
            let mut rest: &[u8] = buf;
            while !rest.is_empty() {
                let n = rest.len().min(space - filled);
                copy_past_cache(&mut buf_bytes[filled..filled + n], &rest[..n]);
                filled += n;
                rest = &rest[n..];
                if filled == space {
                    self.file.write_all_at(buf_bytes, position)?;
                    position += space as u64;
                    filled = 0;
                }
            }
        }
        let whole = filled / DIRECT_BLOCK_BYTES * DIRECT_BLOCK_BYTES;
        let padded = filled.div_ceil(DIRECT_BLOCK_BYTES) * DIRECT_BLOCK_BYTES;
        if padded > 0 {
            buf_bytes[filled..padded].fill(0);
            self.file.write_all_at(&buf_bytes[..padded], position)?;
        }
        self.tail = Some((position + whole as u64, buf_bytes[whole..filled].to_vec()));
        Ok(position + padded as u64)
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
/// stay the process's once touched.
struct Buffer(Option<MmapMut>);

static KEPT: Mutex<Vec<MmapMut>> = Mutex::new(Vec::new());

impl Buffer {
    fn take() -> io::Result<Buffer> {
        let kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let map = match kept {
            Some(map) => map,
            None => MmapMut::map_anon(DIRECT_WRITE_BYTES)?,
        };
        Ok(Buffer(Some(map)))
    }

    fn bytes(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
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
