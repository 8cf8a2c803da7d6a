//! The filesystem's state: what a process sees now (live) and what a disk
//! would still hold after a power cut (durable), kept apart.
//!
//! The durability rules are the ones POSIX and Linux's journaling
//! filesystems give an application that does not rely on luck:
//!
//! - A file's **bytes and size** become durable when the file is fsynced
//!   (`fsync` or `fdatasync`, through any of its names or handles). Until
//!   then the disk holds what the last fsync left: writes after it, and
//!   truncations or extensions after it, are lost by a power cut.
//! - A **name** (create, mkdir, link, unlink, rmdir, rename) becomes
//!   durable when its directory is fsynced. fsyncing a file never makes its
//!   name durable: a file created, written and fsynced in a directory that
//!   is not fsynced is gone after the cut.
//! - A **rename across directories** is one atomic change, as in every
//!   journaling filesystem: fsyncing either directory makes both sides
//!   durable, and renames are made durable in the order they were made (the
//!   fsync of a directory commits every rename up to the last one that
//!   involves it, renames within one directory included), so no cut leaves
//!   a file under two names.
//!
//! A power cut then keeps exactly the durable state and drops the rest:
//! every directory goes back to its durable entries, every file to its
//! durable bytes and size, and an inode no durable name reaches is freed.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::ranges::RangeSet;

pub const ROOT: u64 = 1;

/// An errno for the kernel.
pub type Errno = i32;

pub type Result<T> = std::result::Result<T, Errno>;

fn io_errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What `stat` reports.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

#[derive(Debug)]
struct FileBody {
    /// What processes read now; opened while the inode has open handles.
    live: Option<File>,
    size: u64,
    /// What the disk holds: the bytes and size of the last fsync.
    durable_size: u64,
    /// Bytes of `live` that differ (or may differ) from the durable file.
    dirty: RangeSet,
}

#[derive(Debug, Default)]
struct DirBody {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Body {
    File(FileBody),
    Dir(DirBody),
}

#[derive(Debug)]
struct Inode {
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Names in the live tree.
    nlink: u32,
    /// Names in the durable tree.
    durable_links: u32,
    /// Open handles.
    open: u32,
    /// One live name (for paths in fault rules and `..`).
    parent: u64,
    name: OsString,
    body: Body,
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        }
    }
}

/// A rename across directories not yet made durable.
#[derive(Debug, Clone)]
struct PendingRename {
    src: u64,
    src_name: OsString,
    dst: u64,
    dst_name: OsString,
    ino: u64,
}

/// What a power cut dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loss {
    /// File bytes written (or truncated away) since their file's last fsync.
    pub dirty_bytes: u64,
    /// Files whose bytes or size went back.
    pub files_reverted: u64,
    /// Directories whose entries went back.
    pub dirs_reverted: u64,
    /// Inodes no durable name reached, freed.
    pub inodes_freed: u64,
}

/// Counters of the operations served.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub writes: u64,
    pub bytes_written: u64,
    pub reads: u64,
    pub bytes_read: u64,
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
}

#[derive(Debug)]
pub struct Model {
    /// Backing files: `<ino>.live` and `<ino>.durable`.
    store: PathBuf,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    pending: Vec<PendingRename>,
    /// Total bytes the filesystem may hold (live file sizes); `None` is
    /// the backing filesystem's free space.
    capacity: Option<u64>,
    pub counts: Counts,
}

impl Model {
    /// An empty filesystem keeping its bytes under `store` (which must be
    /// empty: it is this filesystem's disk).
    pub fn new(store: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(store)?;
        let now = SystemTime::now();
        let (uid, gid) = current_ids();
        let root = Inode {
            perm: 0o755,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 1,
            durable_links: 1,
            open: 0,
            parent: ROOT,
            name: OsString::new(),
            body: Body::Dir(DirBody::default()),
        };
        Ok(Model {
            store: store.to_path_buf(),
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            pending: Vec::new(),
            capacity: None,
            counts: Counts::default(),
        })
    }

    pub fn set_capacity(&mut self, capacity: Option<u64>) {
        self.capacity = capacity;
    }

    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// The directory holding the backing files.
    pub fn store(&self) -> &Path {
        &self.store
    }

    fn live_path(&self, ino: u64) -> PathBuf {
        self.store.join(format!("{ino}.live"))
    }

    fn durable_path(&self, ino: u64) -> PathBuf {
        self.store.join(format!("{ino}.durable"))
    }

    fn inode(&self, ino: u64) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&DirBody> {
        match &self.inode(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirBody> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    pub fn attr(&self, ino: u64) -> Result<Attr> {
        let i = self.inode(ino)?;
        let (size, nlink) = match &i.body {
            Body::File(f) => (f.size, i.nlink),
            Body::Dir(d) => (4096, 2 + d.live.len() as u32),
        };
        Ok(Attr {
            ino,
            kind: i.kind(),
            size,
            perm: i.perm,
            nlink,
            uid: i.uid,
            gid: i.gid,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
        })
    }

    /// The live path of `ino` below the root (for fault rules).
    pub fn path(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut hops = 0;
        while cur != ROOT && hops < 256 {
            let Some(i) = self.inodes.get(&cur) else {
                break;
            };
            parts.push(i.name.to_string_lossy().into_owned());
            cur = i.parent;
            hops += 1;
        }
        parts.reverse();
        parts.join("/")
    }

    /// The path `name` would have inside `parent`.
    pub fn child_path(&self, parent: u64, name: &OsStr) -> String {
        let p = self.path(parent);
        if p.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{p}/{}", name.to_string_lossy())
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        self.attr(ino)
    }

    fn new_inode(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
        body: Body,
    ) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        self.inodes.insert(
            ino,
            Inode {
                perm,
                uid,
                gid,
                atime: now,
                mtime: now,
                ctime: now,
                nlink: 1,
                durable_links: 0,
                open: 0,
                parent,
                name: name.to_os_string(),
                body,
            },
        );
        ino
    }

    fn check_new_name(&self, parent: u64, name: &OsStr) -> Result<()> {
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if self.dir(parent)?.live.contains_key(name) {
            return Err(libc::EEXIST);
        }
        if self.inode(parent)?.nlink == 0 {
            return Err(libc::ENOENT);
        }
        Ok(())
    }

    fn touch(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            let now = SystemTime::now();
            i.mtime = now;
            i.ctime = now;
        }
    }

    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.check_new_name(parent, name)?;
        let ino = self.new_inode(parent, name, perm, uid, gid, Body::Dir(DirBody::default()));
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch(parent);
        self.attr(ino)
    }

    /// Creates an empty regular file (not opened).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.check_new_name(parent, name)?;
        let body = Body::File(FileBody {
            live: None,
            size: 0,
            durable_size: 0,
            dirty: RangeSet::default(),
        });
        let ino = self.new_inode(parent, name, perm, uid, gid, body);
        // The backing files exist from the start, both empty.
        for path in [self.live_path(ino), self.durable_path(ino)] {
            if let Err(e) = File::create(&path) {
                self.inodes.remove(&ino);
                return Err(io_errno(e));
            }
        }
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch(parent);
        self.attr(ino)
    }

    pub fn link(&mut self, ino: u64, parent: u64, name: &OsStr) -> Result<Attr> {
        if self.inode(ino)?.kind() == Kind::Dir {
            return Err(libc::EPERM);
        }
        self.check_new_name(parent, name)?;
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        let i = self.inode_mut(ino)?;
        i.nlink += 1;
        i.ctime = SystemTime::now();
        self.touch(parent);
        self.attr(ino)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        if self.inode(ino)?.kind() == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.dir_mut(parent)?.live.remove(name);
        self.drop_live_link(ino, parent, name);
        self.touch(parent);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.dir_mut(parent)?.live.remove(name);
        self.drop_live_link(ino, parent, name);
        self.touch(parent);
        Ok(())
    }

    fn drop_live_link(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.nlink = i.nlink.saturating_sub(1);
            i.ctime = SystemTime::now();
            if i.nlink > 0 && i.parent == parent && i.name == name {
                // Another name still reaches it: find one for paths.
                self.rename_hint(ino);
            }
        }
        self.maybe_free(ino);
    }

    /// After the hinted name went away, point the hint at another live name.
    fn rename_hint(&mut self, ino: u64) {
        let found = self.inodes.iter().find_map(|(&d, i)| match &i.body {
            Body::Dir(body) => body
                .live
                .iter()
                .find(|(_, c)| **c == ino)
                .map(|(n, _)| (d, n.clone())),
            Body::File(_) => None,
        });
        if let (Some((d, n)), Some(i)) = (found, self.inodes.get_mut(&ino)) {
            i.parent = d;
            i.name = n;
        }
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<()> {
        let ino = *self.dir(parent)?.live.get(name).ok_or(libc::ENOENT)?;
        if new_name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        let moving_dir = self.inode(ino)?.kind() == Kind::Dir;
        if moving_dir {
            // Not into itself or below itself.
            let mut cur = new_parent;
            let mut hops = 0;
            while hops < 256 {
                if cur == ino {
                    return Err(libc::EINVAL);
                }
                if cur == ROOT {
                    break;
                }
                cur = self.inode(cur)?.parent;
                hops += 1;
            }
        }
        let target = self.dir(new_parent)?.live.get(new_name).copied();
        if let Some(t) = target {
            if t == ino {
                return Ok(());
            }
            if noreplace {
                return Err(libc::EEXIST);
            }
            match (moving_dir, self.inode(t)?.kind()) {
                (true, Kind::File) => return Err(libc::ENOTDIR),
                (false, Kind::Dir) => return Err(libc::EISDIR),
                (true, Kind::Dir) if !self.dir(t)?.live.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(new_parent)?
            .live
            .insert(new_name.to_os_string(), ino);
        {
            let i = self.inode_mut(ino)?;
            i.parent = new_parent;
            i.name = new_name.to_os_string();
            i.ctime = SystemTime::now();
        }
        // Same-directory renames too: a later rename across directories
        // commits them first (in order), as a journal would.
        {
            self.pending.push(PendingRename {
                src: parent,
                src_name: name.to_os_string(),
                dst: new_parent,
                dst_name: new_name.to_os_string(),
                ino,
            });
        }
        if let Some(t) = target {
            self.drop_live_link(t, new_parent, new_name);
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    pub fn readdir(&self, ino: u64) -> Result<Vec<(u64, Kind, OsString)>> {
        let parent = self.inode(ino)?.parent;
        let mut out = vec![
            (ino, Kind::Dir, ".".into()),
            (parent, Kind::Dir, "..".into()),
        ];
        for (name, &child) in &self.dir(ino)?.live {
            out.push((child, self.inode(child)?.kind(), name.clone()));
        }
        Ok(out)
    }

    pub fn open(&mut self, ino: u64) -> Result<()> {
        if self.inode(ino)?.kind() == Kind::File {
            self.ensure_live(ino)?;
        }
        self.inode_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.open = i.open.saturating_sub(1);
            if i.open == 0
                && let Body::File(f) = &mut i.body
            {
                f.live = None;
            }
        }
        self.maybe_free(ino);
    }

    fn ensure_live(&mut self, ino: u64) -> Result<()> {
        let path = self.live_path(ino);
        match &mut self.inode_mut(ino)?.body {
            Body::File(f) => {
                if f.live.is_none() {
                    f.live = Some(
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)
                            .map_err(io_errno)?,
                    );
                }
                Ok(())
            }
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileBody> {
        self.ensure_live(ino)?;
        match &mut self.inode_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn read(&mut self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>> {
        let f = self.file_mut(ino)?;
        let end = (offset + u64::from(len)).min(f.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let live = f.live.as_ref().expect("opened");
        live.read_exact_at(&mut buf, offset).map_err(io_errno)?;
        self.counts.reads += 1;
        self.counts.bytes_read += buf.len() as u64;
        Ok(buf)
    }

    /// Bytes of the live tree's files.
    pub fn used(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| match &i.body {
                Body::File(f) => f.size,
                Body::Dir(_) => 0,
            })
            .sum()
    }

    /// How many of `want` more bytes fit under the capacity.
    fn room(&self, want: u64) -> u64 {
        match self.capacity {
            None => want,
            Some(cap) => want.min(cap.saturating_sub(self.used())),
        }
    }

    /// Writes `data` at `offset`; may write fewer bytes (the disk is full).
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let (size, _) = {
            let f = self.file_mut(ino)?;
            (f.size, ())
        };
        let end = offset + data.len() as u64;
        let growth = end.saturating_sub(size);
        let room = self.room(growth);
        let data = if room < growth {
            // Only what fits; nothing at all is ENOSPC.
            // A hole before `offset` takes room too.
            let fits = (size + room).saturating_sub(offset) as usize;
            if fits == 0 {
                return Err(libc::ENOSPC);
            }
            &data[..fits.min(data.len())]
        } else {
            data
        };
        let f = self.file_mut(ino)?;
        let live = f.live.as_ref().expect("opened");
        live.write_all_at(data, offset).map_err(io_errno)?;
        let end = offset + data.len() as u64;
        // Bytes between the old end and `offset` are a hole: dirty too.
        f.dirty.insert(offset.min(f.size), end);
        f.size = f.size.max(end);
        self.counts.writes += 1;
        self.counts.bytes_written += data.len() as u64;
        self.touch(ino);
        Ok(data.len() as u32)
    }

    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        let old = self.file_mut(ino)?.size;
        if size > old && self.room(size - old) < size - old {
            return Err(libc::ENOSPC);
        }
        let f = self.file_mut(ino)?;
        f.live
            .as_ref()
            .expect("opened")
            .set_len(size)
            .map_err(io_errno)?;
        f.dirty.insert(size.min(old), size.max(old));
        f.size = size;
        self.touch(ino);
        Ok(())
    }

    /// `fallocate` mode 0 (grow the size) or `FALLOC_FL_KEEP_SIZE` (reserve
    /// only: nothing a power cut could lose).
    pub fn fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        match mode {
            0 => {
                let size = self.file_mut(ino)?.size;
                if end > size {
                    self.truncate(ino, end)?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => {
                let size = self.file_mut(ino)?.size;
                if self.room(end.saturating_sub(size)) < end.saturating_sub(size) {
                    return Err(libc::ENOSPC);
                }
                Ok(())
            }
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    pub fn set_perm(&mut self, ino: u64, perm: u16) -> Result<()> {
        let i = self.inode_mut(ino)?;
        i.perm = perm & 0o7777;
        i.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_owner(&mut self, ino: u64, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        let i = self.inode_mut(ino)?;
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        i.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_times(
        &mut self,
        ino: u64,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        let i = self.inode_mut(ino)?;
        if let Some(a) = atime {
            i.atime = a;
        }
        if let Some(m) = mtime {
            i.mtime = m;
        }
        Ok(())
    }

    /// fsync/fdatasync of a file: its bytes and size become durable.
    pub fn fsync(&mut self, ino: u64) -> Result<()> {
        let durable = self.durable_path(ino);
        let live_path = self.live_path(ino);
        self.counts.fsyncs += 1;
        let f = match &mut self.inode_mut(ino)?.body {
            Body::File(f) => f,
            // fsync on a directory handle opened with open(2): its names.
            Body::Dir(_) => return self.fsync_dir(ino),
        };
        if f.dirty.is_empty() && f.size == f.durable_size {
            return Ok(());
        }
        let out = OpenOptions::new()
            .write(true)
            .open(&durable)
            .map_err(io_errno)?;
        let live = match &f.live {
            Some(l) => l.try_clone().map_err(io_errno)?,
            None => File::open(&live_path).map_err(io_errno)?,
        };
        copy_ranges(&live, &out, &f.dirty, f.size)?;
        out.set_len(f.size).map_err(io_errno)?;
        f.durable_size = f.size;
        f.dirty.clear();
        Ok(())
    }

    /// fsync of a directory: its names become durable, with every rename
    /// across directories up to the last one that involves it.
    pub fn fsync_dir(&mut self, dir: u64) -> Result<()> {
        self.dir(dir)?;
        self.counts.dir_fsyncs += 1;
        if let Some(last) = self
            .pending
            .iter()
            .rposition(|r| r.src == dir || r.dst == dir)
        {
            // Applied while still pending (so nothing they name is freed
            // midway), then dropped from the list.
            let commit: Vec<PendingRename> = self.pending[..=last].to_vec();
            for r in &commit {
                // The new name first, so the inode is never unnamed between.
                if self.dir(r.dst).is_ok() {
                    let old = self
                        .dir_mut(r.dst)?
                        .durable
                        .insert(r.dst_name.clone(), r.ino);
                    self.durable_ref(r.ino);
                    if let Some(o) = old {
                        self.durable_unref(o);
                    }
                }
                if self.dir(r.src).is_ok() {
                    let removed = {
                        let d = self.dir_mut(r.src)?;
                        if d.durable.get(&r.src_name) == Some(&r.ino) {
                            d.durable.remove(&r.src_name)
                        } else {
                            None
                        }
                    };
                    if let Some(i) = removed {
                        self.durable_unref(i);
                    }
                }
            }
            self.pending.drain(..=last);
            // Kept only for a rename now committed (or dropped): maybe free.
            for r in commit {
                self.maybe_free(r.ino);
            }
        }
        let (old, new) = {
            let d = self.dir_mut(dir)?;
            let new = d.live.clone();
            (std::mem::replace(&mut d.durable, new.clone()), new)
        };
        for &i in new.values() {
            self.durable_ref(i);
        }
        for &i in old.values() {
            self.durable_unref(i);
        }
        Ok(())
    }

    fn durable_ref(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.durable_links += 1;
        }
    }

    fn durable_unref(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.durable_links = i.durable_links.saturating_sub(1);
        }
        self.maybe_free(ino);
    }

    /// Frees an inode that neither tree names and no handle holds.
    fn maybe_free(&mut self, ino: u64) {
        let free = match self.inodes.get(&ino) {
            Some(i) => ino != ROOT && i.nlink == 0 && i.durable_links == 0 && i.open == 0,
            None => false,
        } && !self.pending.iter().any(|r| r.ino == ino);
        if !free {
            return;
        }
        let Some(inode) = self.inodes.remove(&ino) else {
            return;
        };
        match inode.body {
            Body::File(_) => {
                let _ = std::fs::remove_file(self.live_path(ino));
                let _ = std::fs::remove_file(self.durable_path(ino));
            }
            Body::Dir(d) => {
                // Its durable entries no longer reach anything either.
                for (_, child) in d.durable {
                    self.durable_unref(child);
                }
            }
        }
    }

    /// A power cut that tears writes: of every 4 KiB page that an
    /// unsynced write changed inside a file's durable size, a seeded coin
    /// decides whether the new bytes reached the disk before the power went
    /// (disks write back in any order); then as [`Model::power_cut`]. What
    /// is outside the durable size (appends, whose size was never made
    /// durable) and every name change are lost as there.
    pub fn power_cut_torn(&mut self, seed: u64) -> Result<Loss> {
        use rand::{Rng, SeedableRng};
        const PAGE: u64 = 4096;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut inos: Vec<u64> = self.inodes.keys().copied().collect();
        inos.sort_unstable();
        let mut buf = vec![0u8; PAGE as usize];
        for ino in inos {
            let Body::File(f) = &self.inodes[&ino].body else {
                continue;
            };
            let limit = f.size.min(f.durable_size);
            let ranges: Vec<(u64, u64)> = f.dirty.iter().filter(|(s, _)| *s < limit).collect();
            if ranges.is_empty() {
                continue;
            }
            let live = File::open(self.live_path(ino)).map_err(io_errno)?;
            let durable = OpenOptions::new()
                .write(true)
                .open(self.durable_path(ino))
                .map_err(io_errno)?;
            for (start, end) in ranges {
                let end = end.min(limit);
                let mut pos = start;
                while pos < end {
                    let next = ((pos / PAGE) + 1) * PAGE;
                    let n = (next.min(end) - pos) as usize;
                    if rng.random_bool(0.5) {
                        live.read_exact_at(&mut buf[..n], pos).map_err(io_errno)?;
                        durable.write_all_at(&buf[..n], pos).map_err(io_errno)?;
                    }
                    pos += n as u64;
                }
            }
        }
        self.power_cut()
    }

    /// A power cut: everything not durable is lost.
    pub fn power_cut(&mut self) -> Result<Loss> {
        let mut loss = Loss::default();
        self.pending.clear();
        let inos: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in inos {
            let live_path = self.live_path(ino);
            let durable_path = self.durable_path(ino);
            let i = self.inodes.get_mut(&ino).expect("listed");
            i.open = 0;
            match &mut i.body {
                Body::Dir(d) => {
                    if d.live != d.durable {
                        loss.dirs_reverted += 1;
                        d.live = d.durable.clone();
                    }
                }
                Body::File(f) => {
                    f.live = None;
                    if f.dirty.is_empty() && f.size == f.durable_size {
                        continue;
                    }
                    loss.files_reverted += 1;
                    loss.dirty_bytes += f.dirty.len();
                    let live = OpenOptions::new()
                        .write(true)
                        .open(&live_path)
                        .map_err(io_errno)?;
                    let durable = File::open(&durable_path).map_err(io_errno)?;
                    copy_ranges(&durable, &live, &f.dirty, f.durable_size)?;
                    live.set_len(f.durable_size).map_err(io_errno)?;
                    f.size = f.durable_size;
                    f.dirty.clear();
                }
            }
        }
        // Link counts, names and reachability from the durable tree.
        for i in self.inodes.values_mut() {
            i.nlink = 0;
            i.durable_links = 0;
        }
        let mut stack = vec![ROOT];
        let mut seen = std::collections::HashSet::from([ROOT]);
        let root = self.inodes.get_mut(&ROOT).expect("root");
        root.nlink = 1;
        root.durable_links = 1;
        while let Some(dir) = stack.pop() {
            let entries: Vec<(OsString, u64)> = match &self.inodes[&dir].body {
                Body::Dir(d) => d.live.iter().map(|(n, i)| (n.clone(), *i)).collect(),
                Body::File(_) => continue,
            };
            for (name, child) in entries {
                let Some(c) = self.inodes.get_mut(&child) else {
                    continue;
                };
                c.nlink += 1;
                c.durable_links += 1;
                if seen.insert(child) {
                    c.parent = dir;
                    c.name = name;
                    stack.push(child);
                }
            }
        }
        let unreachable: Vec<u64> = self
            .inodes
            .keys()
            .copied()
            .filter(|i| !seen.contains(i))
            .collect();
        for ino in unreachable {
            if let Some(Inode {
                body: Body::File(_),
                ..
            }) = self.inodes.remove(&ino)
            {
                let _ = std::fs::remove_file(self.live_path(ino));
                let _ = std::fs::remove_file(self.durable_path(ino));
            }
            loss.inodes_freed += 1;
        }
        Ok(loss)
    }

    /// The durable tree as (path, contents) for files and (path/, empty)
    /// for directories, read from the durable backing files: what a disk
    /// would hold if the power went now. For tests.
    pub fn durable_snapshot(&self) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(ROOT, String::new())];
        let mut seen = std::collections::HashSet::new();
        while let Some((dir, prefix)) = stack.pop() {
            if !seen.insert(dir) {
                continue;
            }
            for (name, &child) in &self.dir(dir)?.durable {
                let path = format!("{prefix}{}", name.to_string_lossy());
                match &self.inode(child)?.body {
                    Body::Dir(_) => {
                        out.insert(format!("{path}/"), None);
                        stack.push((child, format!("{path}/")));
                    }
                    Body::File(f) => {
                        let mut bytes =
                            std::fs::read(self.durable_path(child)).map_err(io_errno)?;
                        bytes.truncate(f.durable_size as usize);
                        out.insert(path, Some(bytes));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Copies the bytes of `ranges` below `limit` from `from` to `to`, at the
/// same offsets (fsync: live to durable; a power cut: durable to live).
fn copy_ranges(from: &File, to: &File, ranges: &RangeSet, limit: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in ranges.iter() {
        let end = end.min(limit);
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], pos).map_err(io_errno)?;
            to.write_all_at(&buf[..n], pos).map_err(io_errno)?;
            pos += n as u64;
        }
    }
    Ok(())
}

/// The owner of this process (the root directory's owner).
fn current_ids() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const UID: u32 = 0;

    fn model() -> (tempfile::TempDir, Model) {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::new(&dir.path().join("store")).unwrap();
        (dir, m)
    }

    fn file(m: &mut Model, parent: u64, name: &str, data: &[u8]) -> u64 {
        let a = m.create(parent, name.as_ref(), 0o644, UID, UID).unwrap();
        m.open(a.ino).unwrap();
        assert_eq!(m.write(a.ino, 0, data).unwrap() as usize, data.len());
        m.release(a.ino);
        a.ino
    }

    fn read_all(m: &mut Model, ino: u64) -> Vec<u8> {
        m.open(ino).unwrap();
        let data = m.read(ino, 0, u32::MAX).unwrap();
        m.release(ino);
        data
    }

    fn names(m: &Model, dir: u64) -> Vec<String> {
        m.readdir(dir)
            .unwrap()
            .into_iter()
            .skip(2)
            .map(|(_, _, n)| n.to_string_lossy().into_owned())
            .collect()
    }

    fn read_name(m: &mut Model, dir: u64, name: &str) -> Vec<u8> {
        let ino = ino_of(m, dir, name);
        read_all(m, ino)
    }

    fn ino_of(m: &Model, dir: u64, name: &str) -> u64 {
        m.lookup(dir, name.as_ref()).unwrap().ino
    }

    #[test]
    fn what_fsync_and_directory_fsync_made_durable_survives_exactly() {
        let (_d, mut m) = model();
        let f = file(&mut m, ROOT, "kept", b"durable bytes");
        m.fsync(f).unwrap();
        m.fsync_dir(ROOT).unwrap();
        let loss = m.power_cut().unwrap();
        assert_eq!(loss, Loss::default(), "nothing was volatile");
        assert_eq!(names(&m, ROOT), ["kept"]);
        assert_eq!(read_name(&mut m, ROOT, "kept"), b"durable bytes");
    }

    #[test]
    fn bytes_never_fsynced_are_lost_but_a_durable_name_stays() {
        let (_d, mut m) = model();
        let f = file(&mut m, ROOT, "empty-after", b"lost");
        m.fsync_dir(ROOT).unwrap();
        let loss = m.power_cut().unwrap();
        assert_eq!(loss.dirty_bytes, 4);
        assert_eq!(loss.files_reverted, 1);
        assert_eq!(
            read_all(&mut m, f),
            b"",
            "a real disk holds the name and no bytes"
        );
    }

    #[test]
    fn a_file_fsynced_in_a_directory_never_fsynced_is_gone() {
        let (_d, mut m) = model();
        let f = file(&mut m, ROOT, "nameless", b"data");
        m.fsync(f).unwrap();
        let loss = m.power_cut().unwrap();
        assert!(names(&m, ROOT).is_empty());
        assert_eq!(loss.inodes_freed, 1);
        assert!(
            !m.store().join(format!("{f}.live")).exists(),
            "its blocks are freed"
        );
    }

    #[test]
    fn overwrites_truncations_and_extensions_after_the_last_fsync_are_undone() {
        let (_d, mut m) = model();
        let f = file(&mut m, ROOT, "f", b"0123456789");
        m.fsync(f).unwrap();
        m.fsync_dir(ROOT).unwrap();
        m.open(f).unwrap();
        m.write(f, 2, b"ab").unwrap();
        m.truncate(f, 5).unwrap();
        m.write(f, 8, b"XY").unwrap(); // extends, leaving a hole at 5..8
        m.release(f);
        assert_eq!(read_all(&mut m, f), b"01ab4\0\0\0XY");
        m.power_cut().unwrap();
        assert_eq!(read_all(&mut m, f), b"0123456789");

        // Shrunk and fsynced: the shorter file is what the disk holds.
        m.open(f).unwrap();
        m.truncate(f, 3).unwrap();
        m.fsync(f).unwrap();
        m.write(f, 3, b"more").unwrap();
        m.release(f);
        m.power_cut().unwrap();
        assert_eq!(read_all(&mut m, f), b"012");
    }

    #[test]
    fn an_unlink_counts_once_its_directory_is_fsynced() {
        let (_d, mut m) = model();
        let f = file(&mut m, ROOT, "f", b"still here");
        m.fsync(f).unwrap();
        m.fsync_dir(ROOT).unwrap();
        m.unlink(ROOT, "f".as_ref()).unwrap();
        assert!(names(&m, ROOT).is_empty());
        m.power_cut().unwrap();
        assert_eq!(names(&m, ROOT), ["f"]);
        assert_eq!(read_name(&mut m, ROOT, "f"), b"still here");

        m.unlink(ROOT, "f".as_ref()).unwrap();
        m.fsync_dir(ROOT).unwrap();
        assert!(
            !m.store().join(format!("{f}.durable")).exists(),
            "freed once no tree names it"
        );
        m.power_cut().unwrap();
        assert!(names(&m, ROOT).is_empty());
    }

    #[test]
    fn an_open_unlinked_file_keeps_its_bytes_until_released() {
        let (_d, mut m) = model();
        let f = file(&mut m, ROOT, "f", b"bytes");
        m.open(f).unwrap();
        m.unlink(ROOT, "f".as_ref()).unwrap();
        assert_eq!(m.read(f, 0, 100).unwrap(), b"bytes");
        m.release(f);
        assert!(m.attr(f).is_err(), "freed on the last release");
    }

    #[test]
    fn renames_are_durable_with_their_directory_and_atomic_across_two() {
        let (_d, mut m) = model();
        let a = m.mkdir(ROOT, "a".as_ref(), 0o755, UID, UID).unwrap().ino;
        let b = m.mkdir(ROOT, "b".as_ref(), 0o755, UID, UID).unwrap().ino;
        let f = file(&mut m, a, "tmp", b"chunk");
        m.fsync(f).unwrap();
        m.fsync_dir(a).unwrap();
        m.fsync_dir(ROOT).unwrap();

        // Within a directory, not fsynced: the old name.
        m.rename(a, "tmp".as_ref(), a, "renamed".as_ref(), false)
            .unwrap();
        m.power_cut().unwrap();
        assert_eq!(names(&m, a), ["tmp"]);

        // Across directories, only the destination fsynced: both sides.
        m.rename(a, "tmp".as_ref(), b, "final".as_ref(), false)
            .unwrap();
        m.fsync_dir(b).unwrap();
        m.power_cut().unwrap();
        assert!(names(&m, a).is_empty(), "the source side went with it");
        assert_eq!(names(&m, b), ["final"]);
        assert_eq!(read_name(&mut m, b, "final"), b"chunk");

        // Only the source fsynced: still one atomic change.
        m.rename(b, "final".as_ref(), a, "back".as_ref(), false)
            .unwrap();
        m.fsync_dir(b).unwrap();
        m.power_cut().unwrap();
        assert_eq!(names(&m, a), ["back"]);
        assert!(names(&m, b).is_empty());

        // In order: a → b then b → root; fsyncing the root commits both.
        m.rename(a, "back".as_ref(), b, "mid".as_ref(), false)
            .unwrap();
        m.rename(b, "mid".as_ref(), ROOT, "top".as_ref(), false)
            .unwrap();
        m.fsync_dir(ROOT).unwrap();
        m.power_cut().unwrap();
        assert!(
            names(&m, a).is_empty() && names(&m, b).is_empty(),
            "never under two names"
        );
        assert_eq!(names(&m, ROOT), ["a", "b", "top"]);
    }

    #[test]
    fn a_rename_within_a_directory_commits_before_a_later_one_out_of_it() {
        let (_d, mut m) = model();
        let p = m.mkdir(ROOT, "p".as_ref(), 0o755, UID, UID).unwrap().ino;
        let q = m.mkdir(ROOT, "q".as_ref(), 0o755, UID, UID).unwrap().ino;
        let f = file(&mut m, p, "x", b"bytes");
        m.fsync(f).unwrap();
        for d in [p, q, ROOT] {
            m.fsync_dir(d).unwrap();
        }
        m.rename(p, "x".as_ref(), p, "y".as_ref(), false).unwrap();
        m.rename(p, "y".as_ref(), q, "z".as_ref(), false).unwrap();
        m.fsync_dir(q).unwrap();
        m.power_cut().unwrap();
        assert!(
            names(&m, p).is_empty(),
            "never under two names: {:?}",
            names(&m, p)
        );
        assert_eq!(names(&m, q), ["z"]);
        assert_eq!(m.attr(f).unwrap().nlink, 1);
    }

    #[test]
    fn an_inode_a_committed_rename_names_is_not_freed_midway() {
        let (_d, mut m) = model();
        let dirs: Vec<u64> = ["a", "b", "c", "dd"]
            .iter()
            .map(|n| m.mkdir(ROOT, n.as_ref(), 0o755, UID, UID).unwrap().ino)
            .collect();
        let (a, b, c, dd) = (dirs[0], dirs[1], dirs[2], dirs[3]);
        let g = file(&mut m, a, "a", b"other");
        let f = file(&mut m, b, "b", b"kept");
        m.fsync(f).unwrap();
        m.fsync(g).unwrap();
        for d in [a, b, ROOT] {
            m.fsync_dir(d).unwrap();
        }
        m.link(f, c, "c".as_ref()).unwrap();
        m.rename(a, "a".as_ref(), b, "b".as_ref(), false).unwrap(); // replaces f's name in b
        m.rename(c, "c".as_ref(), dd, "d".as_ref(), false).unwrap();
        m.unlink(dd, "d".as_ref()).unwrap();
        // Commits both renames: f's durable name moves from b/b to dd/d.
        m.fsync_dir(c).unwrap();
        m.power_cut().unwrap();
        assert_eq!(read_name(&mut m, dd, "d"), b"kept");
        assert_eq!(read_name(&mut m, b, "b"), b"other");
    }

    #[test]
    fn a_write_past_the_end_counts_the_hole_against_the_capacity() {
        let (_d, mut m) = model();
        m.set_capacity(Some(20));
        let a = m.create(ROOT, "f".as_ref(), 0o644, UID, UID).unwrap().ino;
        m.open(a).unwrap();
        m.write(a, 0, &[1; 10]).unwrap();
        assert_eq!(
            m.write(a, 15, &[2; 10]).unwrap(),
            5,
            "the hole 10..15 took 5 of the 10 left"
        );
        assert_eq!(m.attr(a).unwrap().size, 20);
    }

    #[test]
    fn rename_noreplace_refuses_an_existing_name_and_plain_rename_replaces_it() {
        let (_d, mut m) = model();
        let old = file(&mut m, ROOT, "old", b"old");
        let new = file(&mut m, ROOT, "new", b"new");
        m.fsync(old).unwrap();
        m.fsync(new).unwrap();
        m.fsync_dir(ROOT).unwrap();
        assert_eq!(
            m.rename(ROOT, "new".as_ref(), ROOT, "old".as_ref(), true),
            Err(libc::EEXIST)
        );
        m.rename(ROOT, "new".as_ref(), ROOT, "old".as_ref(), false)
            .unwrap();
        assert_eq!(read_name(&mut m, ROOT, "old"), b"new");
        // The replaced file is still on disk until the directory is fsynced.
        m.power_cut().unwrap();
        assert_eq!(read_name(&mut m, ROOT, "old"), b"old");
        assert_eq!(read_name(&mut m, ROOT, "new"), b"new");
    }

    #[test]
    fn a_directory_not_made_durable_takes_its_contents_with_it() {
        let (_d, mut m) = model();
        let sub = m.mkdir(ROOT, "sub".as_ref(), 0o755, UID, UID).unwrap().ino;
        let f = file(&mut m, sub, "f", b"x");
        m.fsync(f).unwrap();
        m.fsync_dir(sub).unwrap();
        let loss = m.power_cut().unwrap();
        assert!(names(&m, ROOT).is_empty());
        assert_eq!(loss.inodes_freed, 2);
    }

    #[test]
    fn capacity_cuts_writes_short_then_refuses_them() {
        let (_d, mut m) = model();
        m.set_capacity(Some(10));
        let a = m.create(ROOT, "f".as_ref(), 0o644, UID, UID).unwrap().ino;
        m.open(a).unwrap();
        assert_eq!(m.write(a, 0, b"12345678").unwrap(), 8);
        assert_eq!(
            m.write(a, 8, b"abcd").unwrap(),
            2,
            "cut short at the capacity"
        );
        assert_eq!(m.write(a, 10, b"z"), Err(libc::ENOSPC));
        // Overwriting in place needs no room.
        assert_eq!(m.write(a, 0, b"AB").unwrap(), 2);
        assert_eq!(m.truncate(a, 11), Err(libc::ENOSPC));
        assert_eq!(
            m.fallocate(a, 0, 20, libc::FALLOC_FL_KEEP_SIZE),
            Err(libc::ENOSPC)
        );
    }

    /// One file under random writes, truncations, fsyncs and power cuts,
    /// against two byte arrays: what a process sees and what the disk holds.
    /// Reads must equal the first; after a cut, the file must equal the
    /// second — nothing more lost, nothing less.
    #[test]
    fn random_writes_lose_exactly_what_was_not_fsynced() {
        for seed in 0..40 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (_d, mut m) = model();
            let f = m.create(ROOT, "f".as_ref(), 0o644, UID, UID).unwrap().ino;
            m.fsync_dir(ROOT).unwrap();
            let mut live: Vec<u8> = Vec::new();
            let mut disk: Vec<u8> = Vec::new();
            m.open(f).unwrap();
            for step in 0..300 {
                match rng.random_range(0..100) {
                    0..55 => {
                        let off = rng.random_range(0..(live.len() as u64 + 3000));
                        let len = rng.random_range(1..2500usize);
                        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        m.write(f, off, &data).unwrap();
                        let end = off as usize + len;
                        if live.len() < end {
                            live.resize(end, 0);
                        }
                        live[off as usize..end].copy_from_slice(&data);
                    }
                    55..70 => {
                        let size = rng.random_range(0..(live.len() + 2000));
                        m.truncate(f, size as u64).unwrap();
                        live.resize(size, 0);
                    }
                    70..85 => {
                        m.fsync(f).unwrap();
                        disk = live.clone();
                    }
                    85..93 => {
                        let off = rng.random_range(0..(live.len() as u64 + 10));
                        let got = m.read(f, off, 4000).unwrap();
                        let from = (off as usize).min(live.len());
                        let to = (from + 4000).min(live.len());
                        assert_eq!(
                            got,
                            &live[from..to],
                            "seed {seed} step {step}: read at {off}"
                        );
                    }
                    _ => {
                        m.release(f);
                        m.power_cut().unwrap();
                        live = disk.clone();
                        assert_eq!(
                            read_all(&mut m, f),
                            disk,
                            "seed {seed} step {step}: after a cut"
                        );
                        m.open(f).unwrap();
                    }
                }
            }
            m.release(f);
            assert_eq!(read_all(&mut m, f), live, "seed {seed}: live");
            m.power_cut().unwrap();
            assert_eq!(read_all(&mut m, f), disk, "seed {seed}: final cut");
            assert_eq!(
                m.durable_snapshot().unwrap()["f"].as_deref(),
                Some(&disk[..])
            );
        }
    }

    #[test]
    fn a_torn_cut_keeps_each_overwritten_page_old_or_new_and_drops_appends() {
        let (_d, mut m) = model();
        let old: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let f = file(&mut m, ROOT, "volume", &old);
        m.fsync(f).unwrap();
        m.fsync_dir(ROOT).unwrap();
        m.open(f).unwrap();
        m.write(f, 1000, &vec![0xEE; 40_000]).unwrap();
        m.write(f, old.len() as u64, b"appended").unwrap();
        m.release(f);
        m.power_cut_torn(3).unwrap();
        let got = read_all(&mut m, f);
        assert_eq!(got.len(), old.len(), "the append's size was never durable");
        let (mut kept_new, mut kept_old) = (0, 0);
        for (p, page) in got.chunks(4096).enumerate() {
            for (k, &b) in page.iter().enumerate() {
                let at = p * 4096 + k;
                let new = if (1000..41_000).contains(&at) {
                    0xEE
                } else {
                    old[at]
                };
                assert!(b == old[at] || b == new, "byte {at}: neither old nor new");
            }
            let lo = p * 4096;
            if (1000..41_000).contains(&lo) && (1000..41_000).contains(&(lo + 4095)) {
                let is_new = page.iter().all(|&b| b == 0xEE);
                let is_old = page == &old[lo..lo + 4096];
                assert!(is_new || is_old, "page {p} is torn inside");
                if is_new {
                    kept_new += 1;
                } else {
                    kept_old += 1;
                }
            }
        }
        assert!(
            kept_new > 0 && kept_old > 0,
            "a coin per page: {kept_new} new, {kept_old} old"
        );
    }

    /// Random namespace changes in three directories against a reference
    /// that applies the rules as written: a directory's durable entries are
    /// its live entries at its last fsync, and a rename across directories
    /// is committed (both sides) by the first fsync of either side that
    /// follows it, together with every earlier cross-directory rename.
    #[test]
    fn random_namespace_changes_lose_exactly_what_no_directory_fsync_covered() {
        type Dirs = [BTreeMap<String, u32>; 3];
        for seed in 0..60 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + seed);
            let (_d, mut m) = model();
            let mut dirs = [0u64; 3];
            for (k, d) in dirs.iter_mut().enumerate() {
                *d = m
                    .mkdir(ROOT, format!("d{k}").as_ref(), 0o755, UID, UID)
                    .unwrap()
                    .ino;
            }
            m.fsync_dir(ROOT).unwrap();
            // Each file's content is its id, fsynced at creation.
            let mut live: Dirs = Default::default();
            let mut durable: Dirs = Default::default();
            let mut pending: Vec<(usize, String, usize, String, u32)> = Vec::new();
            let mut next_id = 0u32;
            for step in 0..200 {
                let d = rng.random_range(0..3usize);
                let name = format!("n{}", rng.random_range(0..5));
                match rng.random_range(0..100) {
                    0..30 => {
                        if live[d].contains_key(&name) {
                            continue;
                        }
                        next_id += 1;
                        let ino = file(&mut m, dirs[d], &name, &next_id.to_le_bytes());
                        m.fsync(ino).unwrap();
                        live[d].insert(name, next_id);
                    }
                    30..45 => {
                        if live[d].remove(&name).is_some() {
                            m.unlink(dirs[d], name.as_ref()).unwrap();
                        }
                    }
                    45..70 => {
                        let e = rng.random_range(0..3usize);
                        let to = format!("n{}", rng.random_range(0..5));
                        let Some(&id) = live[d].get(&name) else {
                            continue;
                        };
                        if d == e && name == to {
                            continue;
                        }
                        m.rename(dirs[d], name.as_ref(), dirs[e], to.as_ref(), false)
                            .unwrap();
                        live[d].remove(&name);
                        live[e].insert(to.clone(), id);
                        pending.push((d, name, e, to, id));
                    }
                    70..92 => {
                        m.fsync_dir(dirs[d]).unwrap();
                        if let Some(last) = pending.iter().rposition(|r| r.0 == d || r.2 == d) {
                            for (s, sn, t, tn, id) in pending.drain(..=last) {
                                if durable[s].get(&sn) == Some(&id) {
                                    durable[s].remove(&sn);
                                }
                                durable[t].insert(tn, id);
                            }
                        }
                        durable[d] = live[d].clone();
                    }
                    _ => {
                        m.power_cut().unwrap();
                        pending.clear();
                        live = durable.clone();
                        for k in 0..3 {
                            let mut seen = BTreeMap::new();
                            for n in names(&m, dirs[k]) {
                                let ino = ino_of(&m, dirs[k], &n);
                                let bytes = read_all(&mut m, ino);
                                seen.insert(n, u32::from_le_bytes(bytes.try_into().unwrap()));
                            }
                            assert_eq!(
                                seen, durable[k],
                                "seed {seed} step {step}: d{k} after a cut"
                            );
                        }
                    }
                }
            }
        }
    }
}
