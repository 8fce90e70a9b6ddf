//! The handles [`SimFileSystem`] gives out: a [`SimFile`] reads and writes an inode's current
//! bytes and queues each change until a sync makes it durable; a [`SimMap`] is a private copy
//! of a file's bytes, written back on flush and on drop.

use std::io;
use std::sync::Arc;

use super::{Inode, Pending, SimFileSystem, lock};
use crate::fs::{File, MappedFile};
use crate::limits::DIRECT_BLOCK_BYTES;

#[derive(Debug)]
pub(super) struct SimFile {
    pub(super) fs: SimFileSystem,
    pub(super) inode: Arc<Inode>,
    /// A handle for direct writes (`FileSystem::open_direct`): a write that is not aligned
    /// fails with `EINVAL`, as Linux's does.
    pub(super) direct: bool,
}

impl SimFile {
    /// A direct handle's write must start on a block boundary, and each of its buffers must
    /// be aligned in memory and whole blocks long; `EINVAL` otherwise, as Linux answers.
    fn check_direct(&self, bufs: &[&[u8]], position: u64) -> io::Result<()> {
        let block = DIRECT_BLOCK_BYTES;
        let aligned = |buf: &&[u8]| buf.len() % block == 0 && buf.as_ptr() as usize % block == 0;
        if self.direct && !(position % block as u64 == 0 && bufs.iter().all(aligned)) {
            return Err(io::Error::from_raw_os_error(22)); // EINVAL
        }
        Ok(())
    }

    /// Writes `buf` at `position`, to be made durable by a sync.
    fn put(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let end = position + buf.len() as u64;
        self.fs.check_write(&self.inode, end)?;
        let mut data = lock(&self.inode.data);
        let (start, end) = (position as usize, end as usize);
        if data.current.len() < end {
            data.current.resize(end, 0);
        }
        data.current[start..end].copy_from_slice(buf);
        data.pending.push(Pending::Write { position: start, bytes: buf.to_vec() });
        Ok(())
    }
}

impl File for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.fs.running()?;
        let data = lock(&self.inode.data);
        let start = usize::try_from(position).unwrap_or(usize::MAX);
        let end = start.saturating_add(buf.len());
        if end > data.current.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"));
        }
        buf.copy_from_slice(&data.current[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.check_direct(&[buf], position)?;
        self.put(buf, position)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], position: u64) -> io::Result<()> {
        self.check_direct(bufs, position)?;
        self.put(&bufs.concat(), position)
    }

    fn writes_behind(&self) -> bool {
        self.fs.writes_behind()
    }

    fn len(&self) -> io::Result<u64> {
        self.fs.running()?;
        Ok(lock(&self.inode.data).current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        // Shrinking frees space and touches no data blocks: the injected faults spare it.
        if len > self.len()? {
            self.fs.check_write(&self.inode, len)?;
        } else {
            self.fs.step()?;
        }
        let mut data = lock(&self.inode.data);
        data.current.resize(len as usize, 0);
        data.pending.push(Pending::SetLen(len as usize));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.fs.check_write(&self.inode, len)?;
        let mut data = lock(&self.inode.data);
        if (data.current.len() as u64) < len {
            data.current.resize(len as usize, 0);
            data.pending.push(Pending::SetLen(len as usize));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.check_sync()?;
        let mut data = lock(&self.inode.data);
        data.make_durable();
        Ok(())
    }

    fn map_mut(&self, len: usize) -> io::Result<Box<dyn MappedFile>> {
        self.fs.running()?;
        let data = lock(&self.inode.data);
        if data.current.len() < len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "map past end of file"));
        }
        let bytes = data.current[..len].to_vec();
        Ok(Box::new(SimMap { fs: self.fs.clone(), inode: self.inode.clone(), bytes }))
    }
}

/// A map is a private copy written back on flush (durably) and on drop (to the page cache).
#[derive(Debug)]
struct SimMap {
    fs: SimFileSystem,
    inode: Arc<Inode>,
    bytes: Vec<u8>,
}

impl SimMap {
    fn write_back(&self, durable: bool) {
        // A halted machine writes nothing more, not even to its page cache.
        if !durable && self.fs.running().is_err() {
            return;
        }
        let mut data = lock(&self.inode.data);
        let n = self.bytes.len().min(data.current.len());
        data.current[..n].copy_from_slice(&self.bytes[..n]);
        if durable {
            data.make_durable();
        } else {
            data.pending.push(Pending::Write { position: 0, bytes: self.bytes[..n].to_vec() });
        }
    }
}

impl MappedFile for SimMap {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    fn flush(&self) -> io::Result<()> {
        self.fs.check_sync()?;
        self.write_back(true);
        Ok(())
    }
}

impl Drop for SimMap {
    fn drop(&mut self) {
        self.write_back(false);
    }
}
