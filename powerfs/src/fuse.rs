//! The FUSE side: each kernel request becomes one operation on the shared `Tree`.
//!
//! Nothing may be served from the kernel's caches that the tree would not say now: entries and
//! attributes are given a TTL of zero, and files are opened with `FOPEN_DIRECT_IO`, so every
//! read and write reaches the tree (and the mount is replaced at each cut besides: `mount.rs`).
//! `fsync` and `fdatasync` arrive as FUSE_FSYNC, a directory's as FUSE_FSYNCDIR; both are
//! implemented, so the kernel never decides on its own that syncing is unsupported (it stops
//! sending them after one ENOSYS). `sync_file_range` never reaches a FUSE filesystem: it acts on
//! the page cache only, so here it makes nothing durable, as on a power cut of a real disk whose
//! cache it does not flush. Locks (`flock`, POSIX locks) are kept by the kernel.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{Body, Ino, Tree};

/// Entries and attributes are never cached by the kernel.
const TTL: Duration = Duration::ZERO;
const BLOCK_BYTES: u32 = 4096;

/// The filesystem one mount serves: a view of the shared tree.
pub struct Ops {
    pub tree: Arc<Mutex<Tree>>,
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl Ops {
    fn tree(&self) -> MutexGuard<'_, Tree> {
        // A panic in another request must not wedge the mount: the tree itself stays usable.
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn attr(tree: &Tree, ino: Ino) -> Result<FileAttr, i32> {
    let node = tree.node(ino)?;
    let size = node.size();
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: node.mtime,
        mtime: node.mtime,
        ctime: node.mtime,
        crtime: node.mtime,
        kind: if node.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: node.perm,
        nlink: if node.is_dir() { 2 } else { 1 },
        uid: node.uid,
        gid: node.gid,
        rdev: 0,
        blksize: BLOCK_BYTES,
        flags: 0,
    })
}

impl Filesystem for Ops {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = self.tree();
        match tree.lookup(parent.0, name).and_then(|ino| attr(&tree, ino)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(&self.tree(), ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.tree();
        let changed = (|| {
            if let Some(len) = size {
                tree.set_len(ino.0, len)?;
            }
            if let Some(mode) = mode {
                tree.set_perm(ino.0, (mode & 0o7777) as u16)?;
            }
            attr(&tree, ino.0)
        })();
        match changed {
            Ok(a) => reply.attr(&TTL, &a),
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
        let mut tree = self.tree();
        let perm = (mode & !umask & 0o7777) as u16;
        match tree
            .create(parent.0, name, true, perm, req.uid(), req.gid())
            .and_then(|ino| attr(&tree, ino))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
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
        let mut tree = self.tree();
        let perm = (mode & !umask & 0o7777) as u16;
        let created = tree
            .create(parent.0, name, false, perm, req.uid(), req.gid())
            .and_then(|ino| {
                tree.opened(ino)?;
                attr(&tree, ino)
            });
        match created {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree().unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.tree().unlink(parent.0, name, true) {
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
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .tree()
            .rename(parent.0, name, newparent.0, newname, no_replace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = self.tree();
        match tree.node(ino.0).map(|n| n.is_dir()) {
            Ok(false) => {
                let _ = tree.opened(ino.0);
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
            }
            Ok(true) => reply.error(Errno::EISDIR),
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
        match self.tree().read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
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
        match self.tree().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
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
        // `close` makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tree().released(ino.0);
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
        match self.tree().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = self.tree();
        match tree.node(ino.0).map(|n| n.is_dir()) {
            Ok(true) => {
                let _ = tree.opened(ino.0);
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(false) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.tree();
        let entries = match tree.entries(ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
            (
                tree.parent_of(ino.0),
                FileType::Directory,
                OsStr::new("..").to_owned(),
            ),
        ];
        let listed = entries.into_iter().map(|(name, child)| {
            let kind = match tree.node(child).map(|n| &n.body) {
                Ok(Body::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (child, kind, name)
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(listed)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tree().released(ino.0);
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
        match self.tree().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // An in-memory disk: report plenty of room.
        let blocks = 1 << 24;
        reply.statfs(
            blocks,
            blocks,
            blocks,
            1 << 20,
            1 << 20,
            BLOCK_BYTES,
            255,
            BLOCK_BYTES,
        );
    }
}
