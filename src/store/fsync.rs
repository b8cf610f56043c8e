//! Making what the stores wrote survive a power cut, not only a crash of the process.
//!
//! A write that a process handed to the kernel survives `kill -9`; it survives losing power only
//! once an `fsync`/`fdatasync` of the file returned, and a file created, renamed or removed is
//! only found again once its directory was synced too. Two things here need that and do not get
//! it by themselves:
//!
//! - The directories the node creates (the data dir, `db/`, `log/`, `snapshots/`): their
//!   entries are made durable in their parents when the stores open (`create_dir_durably`,
//!   `sync_dir`).
//! - sled's files. sled 0.34's `flush` ends in `sync_file_range` on Linux (its `db` file's pages
//!   reach the disk, but neither the file's metadata nor the device cache are covered), writes
//!   large values as `blobs/<lsn>` files that it never syncs, and never syncs its directory.
//!   `SledFiles::sync`, called after each flush that something relies on (the log purged behind
//!   it, a snapshot install marked), syncs the new blobs and `blobs/`, then `db/`, then `db` and
//!   `conf`. Directories before `db`: a directory sync can only make durable a sled snapshot
//!   file that sled synced before renaming it, so the `db` synced after it holds at least the
//!   log that snapshot describes. (sled 0.34 writes those snapshots only while it opens; one
//!   left unfinished by a kill is removed before the next open: `remove_unfinished_sled_snapshots`.)

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `fsync` of a directory: the entries created, renamed or removed in it become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, and each directory it created made durable in its parent.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Removes the page-table snapshots sled left unfinished in `db_path` (`snap.<lsn>.generating`,
/// renamed to `snap.<lsn>` once written and synced), and returns them. sled writes one while it
/// opens; a node killed meanwhile leaves the file behind, and sled 0.34 reads the newest
/// `snap.*` by name, that one included, and fails on it as corrupted. A finished one is never
/// left under that name, so removing it loses nothing. Nothing is removed while another process
/// holds the database (sled's own lock on its `db` file): that one may be writing it.
pub fn remove_unfinished_sled_snapshots(db_path: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(db_path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut unfinished = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating")) {
            unfinished.push(path);
        }
    }
    if unfinished.is_empty() {
        return Ok(unfinished);
    }
    // The lock sled takes (`flock`, exclusive) on its `db` file, held while removing.
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db_path.join("db"));
    let _lock = match data {
        Ok(file) => {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this function owns for the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Ok(Vec::new());
            }
            Some(file)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    for path in &unfinished {
        std::fs::remove_file(path)?;
    }
    sync_dir(db_path)?;
    Ok(unfinished)
}

/// sled's files under its directory, and which of its blobs are already synced (a blob is
/// written once and never changed, so each is synced once).
pub struct SledFiles {
    dir: PathBuf,
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl SledFiles {
    /// The files of the sled database at `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            synced_blobs: Mutex::default(),
        }
    }

    /// Makes what sled's last `flush` wrote durable. Call right after it returned.
    pub fn sync(&self) -> io::Result<()> {
        let mut synced = self.synced_blobs.lock().expect("synced blobs lock");
        let listed = self.list_blobs()?;
        self.sync_listed(&mut synced, listed)
    }

    /// The names in `blobs/`.
    fn list_blobs(&self) -> io::Result<Vec<OsString>> {
        match std::fs::read_dir(self.dir.join("blobs")) {
            Ok(listed) => listed.map(|entry| entry.map(|e| e.file_name())).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `sync`, with the blobs as listed. sled removes a blob on its own threads once the value
    /// in it was replaced and the segment that replaced it filled up, so a listed blob may be
    /// gone by the time it is opened: it holds nothing the database needs, and is skipped.
    fn sync_listed(&self, synced: &mut HashSet<OsString>, listed: Vec<OsString>) -> io::Result<()> {
        let blobs = self.dir.join("blobs");
        let mut new_blobs = false;
        let mut present = HashSet::new();
        for name in listed {
            if !synced.contains(&name) {
                match File::open(blobs.join(&name)) {
                    Ok(file) => file.sync_all()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_blobs = true;
            }
            present.insert(name);
        }
        if new_blobs || present.len() != synced.len() {
            sync_dir(&blobs)?;
        }
        *synced = present;
        sync_dir(&self.dir)?;
        for name in ["db", "conf"] {
            match File::open(self.dir.join(name)) {
                Ok(file) => file.sync_all()?,
                // `conf` is written only with a new database.
                Err(e) if e.kind() == io::ErrorKind::NotFound && name == "conf" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_directories_are_made_and_existing_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_durably(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durably(&deep).unwrap();
    }

    /// A sled database in `dir/db` that only explicit flushes write, and its files.
    fn sled_and_files(dir: &Path) -> (sled::Db, SledFiles) {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        (db, SledFiles::new(&dir.join("db")))
    }

    #[test]
    fn sled_files_sync_after_a_flush_with_and_without_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let (db, files) = sled_and_files(dir.path());
        db.insert(b"small", b"v".as_slice()).unwrap();
        db.flush().unwrap();
        files.sync().unwrap();
        // A value large enough for sled to write it as a blob file.
        db.insert(b"large", vec![7u8; 1 << 20]).unwrap();
        db.flush().unwrap();
        files.sync().unwrap();
        assert!(
            !files.synced_blobs.lock().unwrap().is_empty(),
            "the large value was written as a blob"
        );
        files.sync().unwrap();
    }

    /// sled removes a blob file on its own threads once the value in it was replaced: a sync
    /// whose listing still names a blob that is gone when it opens it succeeds.
    #[test]
    fn a_blob_removed_after_the_listing_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (db, files) = sled_and_files(dir.path());
        db.insert(b"large", vec![7u8; 1 << 20]).unwrap();
        db.flush().unwrap();
        let listed = files.list_blobs().unwrap();
        assert_eq!(listed.len(), 1, "the large value was written as a blob");
        std::fs::remove_file(dir.path().join("db/blobs").join(&listed[0])).unwrap();
        let mut synced = files.synced_blobs.lock().unwrap();
        files.sync_listed(&mut synced, listed).unwrap();
        assert!(synced.is_empty(), "a removed blob is not counted as synced");
    }
}
