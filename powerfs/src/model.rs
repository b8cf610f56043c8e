//! The filesystem as a power cut sees it: an in-memory tree in which every file has the bytes a
//! reader sees now and the bytes that survive a power cut, and every directory has the entries
//! a reader sees now and the entries that survive. Nothing here knows about FUSE (`fuse.rs`
//! translates), so the rules can be tested directly.
//!
//! The rules (strict, in the spirit of Jepsen's LazyFS):
//!
//! - `fsync`/`fdatasync` of a file makes its current bytes (and length) durable. Nothing else
//!   does: not `close`, not `sync_file_range`, not time passing.
//! - Creating, renaming or unlinking an entry changes its directory's current entries only; an
//!   `fsync` of the directory makes all of them durable at once. A rename between two
//!   directories is durable in each of them once that one is synced, so a cut in between can
//!   leave the file under both names or under neither (a real journaling filesystem would
//!   keep the rename atomic; raftcache renames only within one directory).
//! - `power_cut` puts back every file's durable bytes and every directory's durable entries.
//!   What is no longer reachable from the root through durable entries is gone.
//!
//! An inode outlives its last current name while a durable entry still names it (an unlink
//! not yet synced comes back after a cut) or a process has it open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// An inode number. The root is `ROOT`.
pub type Ino = u64;
pub const ROOT: Ino = 1;

/// Why an operation failed, as an errno.
pub type Errno = i32;

/// Largest file this filesystem holds: a test-only disk in memory.
pub const MAX_FILE_BYTES: u64 = 1 << 32;

/// A file's bytes: what readers see, what survives a cut, and which part differs.
#[derive(Debug, Default, Clone)]
pub struct FileBytes {
    pub current: Vec<u8>,
    pub durable: Vec<u8>,
    /// Byte range (start, end) that may differ between `current` and `durable` (besides their
    /// lengths), so an `fsync` copies only what changed.
    dirty: Option<(u64, u64)>,
}

impl FileBytes {
    fn touch(&mut self, start: u64, end: u64) {
        if start < end {
            self.dirty = Some(match self.dirty {
                Some((s, e)) => (s.min(start), e.max(end)),
                None => (start, end),
            });
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if self.current.len() < end {
            let old = self.current.len() as u64;
            self.current.resize(end, 0);
            self.touch(old, offset);
        }
        self.current[offset as usize..end].copy_from_slice(data);
        self.touch(offset, end as u64);
    }

    fn set_len(&mut self, len: u64) {
        let old = self.current.len() as u64;
        self.current.resize(len as usize, 0);
        self.touch(old.min(len), old.max(len));
    }

    fn sync(&mut self) {
        self.durable.resize(self.current.len(), 0);
        if let Some((start, end)) = self.dirty.take() {
            let end = (end as usize).min(self.current.len());
            let start = (start as usize).min(end);
            self.durable[start..end].copy_from_slice(&self.current[start..end]);
        }
        debug_assert!(self.durable == self.current, "fsync left a difference");
    }

    /// Bytes a cut would lose (an upper bound: the dirty range plus the length change).
    fn unsynced_bytes(&self) -> u64 {
        let dirty = self.dirty.map_or(0, |(s, e)| e - s);
        dirty.max(self.current.len().abs_diff(self.durable.len()) as u64)
    }

    fn cut(&mut self) {
        self.current = self.durable.clone();
        self.dirty = None;
    }
}

/// A directory's entries: what readers see, and what survives a cut.
#[derive(Debug, Default, Clone)]
pub struct DirEntries {
    pub current: BTreeMap<OsString, Ino>,
    pub durable: BTreeMap<OsString, Ino>,
}

#[derive(Debug, Clone)]
pub enum Body {
    File(FileBytes),
    Dir(DirEntries),
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    pub body: Body,
    /// Permission bits.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    /// Open handles (files and directories) on it.
    pub open: u32,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File(f) => f.current.len() as u64,
            Body::Dir(d) => d.current.len() as u64,
        }
    }
}

/// What one power cut threw away.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose current bytes differed from their durable bytes.
    pub files_reverted: u64,
    /// At most this many bytes were written and never synced.
    pub unsynced_bytes: u64,
    /// Directories whose entries differed from their durable entries.
    pub dirs_reverted: u64,
    /// Inodes no longer reachable after the cut (created and never made durable by a
    /// directory sync, or unlinked before).
    pub inodes_dropped: u64,
}

/// The sum of several cuts (of several disks at once).
impl std::ops::AddAssign for CutReport {
    fn add_assign(&mut self, other: CutReport) {
        self.files_reverted += other.files_reverted;
        self.unsynced_bytes += other.unsynced_bytes;
        self.dirs_reverted += other.dirs_reverted;
        self.inodes_dropped += other.inodes_dropped;
    }
}

/// Counters over the filesystem's life, for a test to show what it exercised.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub writes: u64,
    pub cuts: u64,
}

/// The whole tree.
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    pub counters: Counters,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty filesystem: a root directory that is always there.
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            new_node(Body::Dir(DirEntries::default()), 0o755, 0, 0),
        );
        Tree {
            nodes,
            next_ino: ROOT + 1,
            counters: Counters::default(),
        }
    }

    pub fn node(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&DirEntries, Errno> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirEntries, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileBytes, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// The inode `name` names in directory `parent` now.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.dir(parent)?
            .current
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// The current entries of a directory, in name order.
    pub fn entries(&self, dir: Ino) -> Result<Vec<(OsString, Ino)>, Errno> {
        Ok(self
            .dir(dir)?
            .current
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect())
    }

    /// The directory that holds `dir` now (the root for the root).
    pub fn parent_of(&self, dir: Ino) -> Ino {
        self.nodes
            .iter()
            .find(|(_, n)| matches!(&n.body, Body::Dir(d) if d.current.values().any(|i| *i == dir)))
            .map_or(ROOT, |(ino, _)| *ino)
    }

    /// Creates an empty file or directory `name` in `parent` (current entries only).
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        dir: bool,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, Errno> {
        if self.dir(parent)?.current.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = if dir {
            Body::Dir(DirEntries::default())
        } else {
            Body::File(FileBytes::default())
        };
        self.nodes.insert(ino, new_node(body, perm, uid, gid));
        self.dir_mut(parent)?.current.insert(name.to_owned(), ino);
        self.touch_mtime(parent);
        Ok(ino)
    }

    /// Removes `name` from `parent`'s current entries (a directory only if empty).
    pub fn unlink(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir(d), true) if !d.current.is_empty() => return Err(libc::ENOTEMPTY),
            (Body::Dir(_), false) => return Err(libc::EISDIR),
            (Body::File(_), true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.current.remove(name);
        self.touch_mtime(parent);
        Ok(())
    }

    /// Moves `name` in `parent` to `new_name` in `new_parent`, replacing what was there (an
    /// empty directory only by a directory). With `no_replace`, fails if the target exists.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            if target == ino {
                return Ok(());
            }
            match (&self.node(target)?.body, self.node(ino)?.is_dir()) {
                (Body::Dir(d), true) if !d.current.is_empty() => return Err(libc::ENOTEMPTY),
                (Body::Dir(_), false) => return Err(libc::EISDIR),
                (Body::File(_), true) => return Err(libc::ENOTDIR),
                _ => {}
            }
        }
        if self.node(ino)?.is_dir() && self.is_under(new_parent, ino) {
            return Err(libc::EINVAL);
        }
        self.dir(new_parent)?;
        self.dir_mut(parent)?.current.remove(name);
        self.dir_mut(new_parent)?
            .current
            .insert(new_name.to_owned(), ino);
        self.touch_mtime(parent);
        self.touch_mtime(new_parent);
        Ok(())
    }

    /// Whether directory `ino` is `ancestor` or lies under it now.
    fn is_under(&self, mut ino: Ino, ancestor: Ino) -> bool {
        for _ in 0..self.nodes.len() + 1 {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT {
                return false;
            }
            ino = self.parent_of(ino);
        }
        false
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<&[u8], Errno> {
        match &self.node(ino)?.body {
            Body::File(f) => {
                let start = (offset as usize).min(f.current.len());
                let end = (start + size as usize).min(f.current.len());
                Ok(&f.current[start..end])
            }
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if offset + data.len() as u64 > MAX_FILE_BYTES {
            return Err(libc::EFBIG);
        }
        self.file_mut(ino)?.write(offset, data);
        self.counters.writes += 1;
        self.touch_mtime(ino);
        Ok(())
    }

    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        if len > MAX_FILE_BYTES {
            return Err(libc::EFBIG);
        }
        self.file_mut(ino)?.set_len(len);
        self.touch_mtime(ino);
        Ok(())
    }

    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), Errno> {
        self.node_mut(ino)?.perm = perm;
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file, or of a directory: its current state becomes durable.
    pub fn sync(&mut self, ino: Ino) -> Result<(), Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => {
                f.sync();
                self.counters.file_syncs += 1;
            }
            Body::Dir(d) => {
                d.durable = d.current.clone();
                self.counters.dir_syncs += 1;
                // Inodes no name can bring back any more are gone.
                self.collect_garbage();
            }
        }
        Ok(())
    }

    pub fn opened(&mut self, ino: Ino) -> Result<(), Errno> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn released(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
        }
    }

    /// The power cut: every file back to its durable bytes, every directory to its durable
    /// entries, and what that leaves unreachable dropped. No handle survives it.
    pub fn power_cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        for node in self.nodes.values_mut() {
            node.open = 0;
            match &mut node.body {
                Body::File(f) => {
                    if f.current != f.durable {
                        report.files_reverted += 1;
                        report.unsynced_bytes += f.unsynced_bytes();
                    }
                    f.cut();
                }
                Body::Dir(d) => {
                    if d.current != d.durable {
                        report.dirs_reverted += 1;
                    }
                    d.current = d.durable.clone();
                }
            }
        }
        report.inodes_dropped = self.collect_garbage();
        self.counters.cuts += 1;
        report
    }

    /// Drops the inodes that neither a current nor a durable entry reaches from the root and
    /// that nobody has open. Returns how many.
    fn collect_garbage(&mut self) -> u64 {
        let mut live: HashSet<Ino> = HashSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if let Some(Body::Dir(d)) = self.nodes.get(&ino).map(|n| &n.body) {
                for child in d.current.values().chain(d.durable.values()) {
                    if live.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        let before = self.nodes.len();
        self.nodes
            .retain(|ino, node| live.contains(ino) || node.open > 0);
        (before - self.nodes.len()) as u64
    }

    fn touch_mtime(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.mtime = SystemTime::now();
        }
    }
}

fn new_node(body: Body, perm: u16, uid: u32, gid: u32) -> Node {
    Node {
        body,
        perm,
        uid,
        gid,
        mtime: SystemTime::now(),
        open: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(t: &mut Tree, parent: Ino, n: &str) -> Ino {
        t.create(parent, name(n), false, 0o644, 0, 0).unwrap()
    }

    fn bytes(t: &Tree, ino: Ino) -> Vec<u8> {
        t.read(ino, 0, u32::MAX).unwrap().to_vec()
    }

    #[test]
    fn an_unsynced_write_is_lost_and_a_synced_one_kept() {
        let mut t = Tree::new();
        let f = file(&mut t, ROOT, "f");
        t.sync(ROOT).unwrap();
        t.write(f, 0, b"kept").unwrap();
        t.sync(f).unwrap();
        t.write(f, 4, b" lost").unwrap();
        t.write(f, 0, b"KEPT").unwrap();
        let report = t.power_cut();
        assert_eq!(bytes(&t, t.lookup(ROOT, name("f")).unwrap()), b"kept");
        assert_eq!(report.files_reverted, 1);
    }

    #[test]
    fn a_file_created_without_a_directory_sync_vanishes_even_if_its_data_was_synced() {
        let mut t = Tree::new();
        let f = file(&mut t, ROOT, "new");
        t.write(f, 0, b"data").unwrap();
        t.sync(f).unwrap();
        let report = t.power_cut();
        assert_eq!(t.lookup(ROOT, name("new")), Err(libc::ENOENT));
        assert_eq!(report.inodes_dropped, 1);
    }

    #[test]
    fn an_unlink_without_a_directory_sync_comes_back_with_its_durable_bytes() {
        let mut t = Tree::new();
        let f = file(&mut t, ROOT, "f");
        t.write(f, 0, b"old").unwrap();
        t.sync(f).unwrap();
        t.sync(ROOT).unwrap();
        t.unlink(ROOT, name("f"), false).unwrap();
        t.power_cut();
        assert_eq!(bytes(&t, t.lookup(ROOT, name("f")).unwrap()), b"old");
    }

    #[test]
    fn a_rename_is_all_or_nothing_at_the_directory_sync() {
        let mut t = Tree::new();
        let old = file(&mut t, ROOT, "vote");
        t.write(old, 0, b"term 1").unwrap();
        t.sync(old).unwrap();
        t.sync(ROOT).unwrap();
        // The temp-file-and-rename pattern, cut before the directory sync.
        let tmp = file(&mut t, ROOT, "vote.tmp");
        t.write(tmp, 0, b"term 2").unwrap();
        t.sync(tmp).unwrap();
        t.rename(ROOT, name("vote.tmp"), ROOT, name("vote"), false)
            .unwrap();
        t.power_cut();
        assert_eq!(bytes(&t, t.lookup(ROOT, name("vote")).unwrap()), b"term 1");
        assert_eq!(t.lookup(ROOT, name("vote.tmp")), Err(libc::ENOENT));
        // And with it: the new file, whole, under the name.
        let tmp = file(&mut t, ROOT, "vote.tmp");
        t.write(tmp, 0, b"term 3").unwrap();
        t.sync(tmp).unwrap();
        t.rename(ROOT, name("vote.tmp"), ROOT, name("vote"), false)
            .unwrap();
        t.sync(ROOT).unwrap();
        t.power_cut();
        assert_eq!(bytes(&t, t.lookup(ROOT, name("vote")).unwrap()), b"term 3");
        assert_eq!(t.entries(ROOT).unwrap().len(), 1);
    }

    #[test]
    fn a_directory_whose_parent_was_not_synced_vanishes_with_everything_in_it() {
        let mut t = Tree::new();
        let d = t.create(ROOT, name("d"), true, 0o755, 0, 0).unwrap();
        let f = file(&mut t, d, "f");
        t.write(f, 0, b"x").unwrap();
        t.sync(f).unwrap();
        t.sync(d).unwrap();
        t.power_cut();
        assert_eq!(t.lookup(ROOT, name("d")), Err(libc::ENOENT));
    }

    #[test]
    fn truncations_and_extensions_sync_exactly() {
        let mut t = Tree::new();
        let f = file(&mut t, ROOT, "f");
        t.sync(ROOT).unwrap();
        t.write(f, 0, &[7u8; 100]).unwrap();
        t.sync(f).unwrap();
        t.set_len(f, 50).unwrap();
        t.write(f, 80, &[9u8; 10]).unwrap();
        t.sync(f).unwrap(); // debug_assert inside checks durable == current
        t.set_len(f, 10).unwrap();
        t.power_cut();
        let f = t.lookup(ROOT, name("f")).unwrap();
        let got = bytes(&t, f);
        assert_eq!(got.len(), 90);
        assert_eq!(&got[..50], &[7u8; 50][..]);
        assert_eq!(&got[50..80], &[0u8; 30][..]);
        assert_eq!(&got[80..], &[9u8; 10][..]);
    }

    #[test]
    fn an_open_unlinked_file_stays_readable_until_the_cut() {
        let mut t = Tree::new();
        let f = file(&mut t, ROOT, "f");
        t.opened(f).unwrap();
        t.write(f, 0, b"x").unwrap();
        t.unlink(ROOT, name("f"), false).unwrap();
        t.sync(ROOT).unwrap();
        assert_eq!(bytes(&t, f), b"x");
        t.released(f);
        t.sync(ROOT).unwrap();
        assert!(t.node(f).is_err());
    }
}
