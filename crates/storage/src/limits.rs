//! Every size and count the storage layer enforces, in one place.
//!
//! Limits are checked at the edge (as typed errors, see `AppendError`) and asserted again
//! inside as bugs. The `const` assertions at the bottom pin how the limits relate, so a change
//! that breaks one relation fails to compile instead of failing at run time.

use crate::batch::BATCH_HEADER_BYTES;

/// The largest encoded batch, header included, that a log accepts.
pub const BATCH_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// The most records one batch may carry.
pub const BATCH_RECORDS_MAX: u32 = 100_000;
/// The most bytes a compressed batch's records may decompress to: a small batch must not
/// expand into gigabytes (checked while decompressing, never allocated past it).
pub const DECOMPRESSED_BYTES_MAX: usize = 4 * BATCH_BYTES_MAX as usize;
/// The most headers one record may carry.
pub const RECORD_HEADERS_MAX: u32 = 64;

/// The smallest and largest segment size a log may be configured with.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// The default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// A sparse index gets one entry per this many bytes of log (at most; a batch is never split).
pub const INDEX_INTERVAL_BYTES: u32 = 4 * 1024;

/// Segment file positions are stored as `u32` in the offset index, so a segment must stay
/// addressable by one.
pub const SEGMENT_POSITION_MAX: u64 = u32::MAX as u64;

/// The most index entries one segment holds: enough for a full segment of the largest size
/// at one entry per interval, plus one for the batch that crosses the size limit.
pub const fn index_entries_max(segment_bytes_max: u64) -> u64 {
    segment_bytes_max / INDEX_INTERVAL_BYTES as u64 + 2
}

/// Index entries a new segment's index files are preallocated with (4 KiB of offset index,
/// 6 KiB of time index), and a reopened one's at its next entry; they double, preallocated
/// each time, up to [`index_entries_max`], so an idle partition holds kilobytes of index, not
/// hundreds.
pub const INDEX_ENTRIES_INITIAL: usize = 512;
/// Sealed segments' log files the process keeps open at once, over all logs (least recently
/// used closed first); an active segment's file is always open, besides these.
pub const SEALED_FILES_OPEN_MAX: usize = 1024;

/// The longest interval an `interval` fsync policy may name, in milliseconds.
pub const FSYNC_INTERVAL_MS_MAX: u64 = 60 * 60 * 1000;

/// How often, at most, a `never` log fsyncs the segments it sealed (so that the recovery point
/// advances and a crash rescans at most this long's worth of writes). Any fsync on ext4 with
/// `data=ordered` also forces out the other files' dirty data, so syncing at every roll would
/// tie a `never` log's appends to the disk's write-back speed.
pub const NEVER_SEALED_SYNC_INTERVAL_MS: u64 = 30_000;

/// At most this many logs' syncs run their own fsyncs at once; more syncs at the same time
/// share one `syncfs` of the data directory's file system (see `SharedSync`). On the 2-core
/// VM, 8 and 64 busy partitions produced as fast either way (within noise), so a few keep
/// their own fsyncs and never wait for other files; 1,000 partitions taking one small batch
/// each were acknowledged about 3× faster shared.
pub const SYNCS_ALONE_MAX: usize = 4;

/// An append to an fsync `always` log this large or larger starts the disk writing its whole
/// pages at once (see `File::start_writeback`), ahead of the fsync that follows. Smaller ones
/// do not: writing back a page that the next small append dirties again made the fsync wait
/// for that write and write the page twice (e2e at 10,000 1 KiB messages/s: p99 4-6 ms without
/// the hint, 10 ms with it on every append).
pub const WRITEBACK_HINT_BYTES_MIN: u64 = 256 * 1024;

/// An fsync `always` log appended to in small runs writes zeros this far past its end (the
/// runway), so the fsyncs that follow write into blocks the file already has and commit no
/// change of its size: on the 2-core VM's ext4, a 4 KiB write and `fdatasync` into zeroed
/// blocks took a p50 of 140-163 µs against 272-289 µs appending at the end (and 246-262 µs
/// into `posix_fallocate`d blocks, whose extents still change on the first write). The zeros
/// are written once, in the page cache, and reach the disk with the next fsync; a sealed
/// segment and a clean close cut what is left of them, and an open after a crash cuts them as
/// a tail nothing was acknowledged in.
pub const RUNWAY_BYTES: u64 = 256 * 1024;

/// An append run this small or smaller is light: the log keeps a runway (above) only while
/// its runs are light and come within [`RUNWAY_APPENDS_WITHIN_MS`] of each other, so heavy
/// writers (whose fsyncs each cover megabytes and commit a size change anyway) never write
/// zeros, and idle partitions never hold them.
pub const RUNWAY_RUN_BYTES_MAX: u64 = RUNWAY_BYTES / 4;

/// See [`RUNWAY_RUN_BYTES_MAX`].
pub const RUNWAY_APPENDS_WITHIN_MS: i64 = 50;

/// Direct writes (`direct`) start and end on multiples of this, from buffers aligned to it:
/// the largest logical block size of the disks Linux runs on, and the page size.
pub const DIRECT_BLOCK_BYTES: usize = 4096;
/// An append run of an fsync `always` log this large or larger is written directly, past
/// the page cache (`direct`); smaller ones are buffered, so a light load keeps recent records
/// in the page cache for readers at the tail, and the runway above.
pub const DIRECT_WRITE_BYTES_MIN: u64 = 256 * 1024;
/// The size of each buffer direct writes copy batches into; a larger append is written a
/// buffer at a time. Whole 2 MiB pages, so each buffer can be held in huge pages (`direct`).
pub const DIRECT_WRITE_BYTES: usize = 4 * 1024 * 1024;
/// How many of those buffers the process keeps for the next appends (any more that
/// concurrent appends needed are unmapped after use): at most 32 MiB, two segments writing
/// behind (below).
pub const DIRECT_BUFFERS_KEPT: usize = 8;
/// Filled buffers a segment's direct writer thread holds queued behind the write it runs
/// (`direct`): an append waits while it has this many. A write takes the one it starts with
/// and those queued, so a segment writing behind holds at most twice this many plus two
/// buffers (written, queued, and one being filled): 16 MiB. Two queued ran no faster.
pub const DIRECT_WRITES_QUEUED: usize = 1;
/// The most bytes a segment's direct writer thread writes in one call, of the buffers queued.
pub const DIRECT_WRITE_COALESCED_BYTES: usize = 4 * 1024 * 1024;
/// How many segments' direct writes may go behind their appends, each on a writer thread of
/// its own (`direct`); any other segment's direct writes are over before its append returns.
pub const DIRECT_WRITER_THREADS_MAX: usize = 16;
/// How far past the end of the writes behind a segment's blocks are reserved (`allocate`),
/// so that a full disk refuses an append rather than a write after its answer: one
/// reservation serves many appends. A seal or a clean close cuts what the appends did not
/// fill, as it cuts the runway's zeros.
pub const DIRECT_RESERVED_AHEAD_BYTES: u64 = 16 * 1024 * 1024;

/// The page size the writeback hint rounds to.
pub const PAGE_BYTES: u64 = 4096;

/// A segment read this large or larger maps the file instead of copying it (see
/// `File::read_shared_at`): a replay's 1 MiB chunks then go from the page cache to the socket
/// with no copy in between (replay of 1 KiB messages on the 2-core VM, paired runs: 845-1,142
/// MB/s copied, 1,197-1,564 MB/s mapped). Smaller reads (a follower at the tail) copy, which
/// costs less than setting up and tearing down a map.
pub const MAP_READ_BYTES_MIN: usize = 256 * 1024;

/// How many bytes one `read` call may ask for.
pub const READ_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// `verify` reads a segment this many bytes at a time (a batch larger than this is read whole).
pub const VERIFY_READ_BYTES: usize = 1024 * 1024;
/// The most findings `verify` keeps per log; it counts the rest.
pub const VERIFY_FINDINGS_MAX: usize = 100;
/// How many directory levels below the directory it is given `verify` looks for logs (a data
/// directory's partition logs are three down: `topics/{name}/{partition}`).
pub const VERIFY_DEPTH_MAX: usize = 8;

const _: () = assert!(BATCH_HEADER_BYTES as u32 + 1 < BATCH_BYTES_MAX);
// A largest batch (8 MiB) does not fit in a segment of the smallest size (64 KiB), and need
// not: `Log::roll_due` never rolls an empty segment, so an empty segment takes any batch, and a
// roll always makes room for the batch that caused it. A segment that is not empty takes a
// batch only if it stays within its configured size, so a segment passes its size only by its
// first batch, and by less than one batch. What this relies on is that such a segment stays
// addressable: the largest segment size plus one largest batch fits the `u32` positions of the
// offset index.
const _: () = assert!(SEGMENT_BYTES_MAX + BATCH_BYTES_MAX as u64 <= SEGMENT_POSITION_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!((INDEX_INTERVAL_BYTES as u64) < SEGMENT_BYTES_MIN);
// Relative offsets in the index are u32: a segment can never hold more records than that.
const _: () = assert!(SEGMENT_BYTES_MAX + BATCH_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(READ_BYTES_MAX >= BATCH_BYTES_MAX);
const _: () = assert!(DIRECT_WRITE_BYTES % DIRECT_BLOCK_BYTES == 0);
const _: () = assert!(DIRECT_WRITE_BYTES % (2 * 1024 * 1024) == 0);
