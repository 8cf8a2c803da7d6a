//! The kernel's side: FUSE requests served from the [`Model`], with the
//! armed faults and latency applied before each operation.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::fault::{Faults, Op, Verdict};
use crate::model::{Attr, Kind, Model};

/// State shared by the mount's worker threads and the test's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) model: Mutex<Model>,
    pub(crate) faults: Mutex<Faults>,
    handles: Mutex<HashMap<u64, u64>>,
    next_fh: AtomicU64,
}

impl Shared {
    pub(crate) fn new(model: Model) -> Self {
        Shared {
            model: Mutex::new(model),
            faults: Mutex::new(Faults::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub(crate) fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn forget_handles(&self) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn new_handle(&self, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, ino);
        fh
    }

    fn drop_handle(&self, fh: u64) -> Option<u64> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
    }

    /// Applies the latency and fault rules for `op` on `path`: waits the
    /// added latency, then passes (with the bytes allowed) or fails.
    fn gate(&self, op: Op, path: &str, len: u64) -> Result<u64, Errno> {
        let (delay, verdict) = {
            let mut f = self.faults();
            (f.delay(op, path), f.check(op, path, len))
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match verdict {
            Verdict::Pass(n) => Ok(n),
            Verdict::Fail(e) => Err(Errno::from_i32(e)),
        }
    }
}

/// The mounted filesystem: a thin adapter, all state is in [`Shared`].
pub(crate) struct Adapter(pub(crate) Arc<Shared>);

/// Attributes and names are cached by the kernel for this long. Every
/// change goes through this mount, so the kernel's view stays right; a
/// power cut remounts, which drops the cache.
const TTL: Duration = Duration::from_secs(1);

/// Files are served without the kernel's page cache: every read reaches
/// the "disk", so a read fault fires on the read it names, not only on a
/// cache miss.
const FILE_OPEN: FopenFlags = FopenFlags::FOPEN_DIRECT_IO;

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: match a.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Adapter {
    fn path(&self, ino: INodeNo) -> String {
        self.0.model().path(ino.0)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> String {
        self.0.model().child_path(parent.0, name)
    }
}

impl Filesystem for Adapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.model().lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.model().attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if size.is_some()
            && let Err(e) = self.0.gate(Op::Write, &self.path(ino), 0)
        {
            return reply.error(e);
        }
        let mut m = self.0.model();
        let result = (|| {
            if let Some(mode) = mode {
                m.set_perm(ino.0, mode as u16)?;
            }
            if uid.is_some() || gid.is_some() {
                m.set_owner(ino.0, uid, gid)?;
            }
            if let Some(size) = size {
                m.truncate(ino.0, size)?;
            }
            if atime.is_some() || mtime.is_some() {
                m.set_times(ino.0, atime.map(time), mtime.map(time))?;
            }
            m.attr(ino.0)
        })();
        match result {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        if let Err(e) = self.0.gate(Op::Create, &self.child_path(parent, name), 0) {
            return reply.error(e);
        }
        let perm = (mode & !umask & 0o7777) as u16;
        match self
            .0
            .model()
            .create(parent.0, name, perm, req.uid(), req.gid())
        {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.0.gate(Op::Create, &self.child_path(parent, name), 0) {
            return reply.error(e);
        }
        let perm = (mode & !umask & 0o7777) as u16;
        match self
            .0
            .model()
            .mkdir(parent.0, name, perm, req.uid(), req.gid())
        {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.0.gate(Op::Unlink, &self.child_path(parent, name), 0) {
            return reply.error(e);
        }
        match self.0.model().unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.0.gate(Op::Unlink, &self.child_path(parent, name), 0) {
            return reply.error(e);
        }
        match self.0.model().rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        if let Err(e) = self.0.gate(Op::Rename, &self.child_path(parent, name), 0) {
            return reply.error(e);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .0
            .model()
            .rename(parent.0, name, newparent.0, newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self
            .0
            .gate(Op::Create, &self.child_path(newparent, newname), 0)
        {
            return reply.error(e);
        }
        match self.0.model().link(ino.0, newparent.0, newname) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.0.gate(Op::Open, &self.path(ino), 0) {
            return reply.error(e);
        }
        match self.0.model().open(ino.0) {
            Ok(()) => reply.opened(FileHandle(self.0.new_handle(ino.0)), FILE_OPEN),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.0.gate(Op::Create, &self.child_path(parent, name), 0) {
            return reply.error(e);
        }
        let perm = (mode & !umask & 0o7777) as u16;
        let mut m = self.0.model();
        let created = m
            .create(parent.0, name, perm, req.uid(), req.gid())
            .and_then(|a| {
                m.open(a.ino)?;
                Ok(a)
            });
        drop(m);
        match created {
            Ok(a) => {
                let fh = self.0.new_handle(a.ino);
                reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FILE_OPEN,
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let allowed = match self.0.gate(Op::Read, &self.path(ino), u64::from(size)) {
            Ok(n) => n as u32,
            Err(e) => return reply.error(e),
        };
        match self.0.model().read(ino.0, offset, allowed) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let allowed = match self.0.gate(Op::Write, &self.path(ino), data.len() as u64) {
            Ok(n) => n as usize,
            Err(e) => return reply.error(e),
        };
        match self
            .0
            .model()
            .write(ino.0, offset, &data[..allowed.min(data.len())])
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(ino) = self.0.drop_handle(fh.0) {
            self.0.model().release(ino);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.0.gate(Op::Fsync, &self.path(ino), 0) {
            return reply.error(e);
        }
        match self.0.model().fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.0.model().readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            let kind = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.0.gate(Op::Fsync, &self.path(ino), 0) {
            return reply.error(e);
        }
        match self.0.model().fsync_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        let (capacity, used, store) = {
            let m = self.0.model();
            (m.capacity(), m.used(), m.store().to_path_buf())
        };
        let (blocks, free) = match capacity {
            Some(cap) => (cap / BSIZE, cap.saturating_sub(used) / BSIZE),
            None => match rustix::fs::statvfs(&store) {
                Ok(s) => {
                    let scale = s.f_frsize.max(1);
                    (s.f_blocks * scale / BSIZE, s.f_bavail * scale / BSIZE)
                }
                Err(e) => return reply.error(errno(e.raw_os_error())),
            },
        };
        reply.statfs(
            blocks,
            free,
            free,
            1 << 20,
            1 << 20,
            BSIZE as u32,
            255,
            BSIZE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.0.gate(Op::Write, &self.path(ino), 0) {
            return reply.error(e);
        }
        match self.0.model().fallocate(ino.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}
