//! The power-cut filesystem, mounted for real and used through the kernel with ordinary file
//! calls: what survives a cut is exactly what an fsync (of the file, or of its directory for
//! the entry) covered. A mount that fails fails the test, with the reason.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use raftcache_powerfs::Disk;

fn mounted() -> (tempfile::TempDir, Disk) {
    let dir = tempfile::Builder::new()
        .prefix("powerfs-test-")
        .tempdir()
        .expect("temp dir");
    let disk = Disk::mount(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, disk)
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

#[test]
fn a_write_without_fsync_is_lost_and_one_with_fsync_kept() {
    let (_dir, mut disk) = mounted();
    let root = disk.mountpoint().to_path_buf();
    let mut f = File::create(root.join("log")).unwrap();
    sync_dir(&root);
    f.write_all(b"synced").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" and not").unwrap();
    assert_eq!(fs::read(root.join("log")).unwrap(), b"synced and not");
    drop(f);
    let report = disk.power_cut().unwrap();
    assert_eq!(fs::read(root.join("log")).unwrap(), b"synced");
    assert_eq!(report.files_reverted, 1);
}

#[test]
fn sync_file_range_makes_nothing_durable() {
    let (_dir, mut disk) = mounted();
    let root = disk.mountpoint().to_path_buf();
    let f = File::create(root.join("db")).unwrap();
    sync_dir(&root);
    f.write_all_at(b"pages", 0).unwrap();
    // What sled 0.34's flush does on Linux.
    use std::os::unix::io::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open fd and a range within the file.
    let ret = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 5, flags) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    drop(f);
    disk.power_cut().unwrap();
    assert_eq!(fs::read(root.join("db")).unwrap(), b"");
}

#[test]
fn a_created_file_without_a_directory_fsync_vanishes() {
    let (_dir, mut disk) = mounted();
    let root = disk.mountpoint().to_path_buf();
    fs::create_dir(root.join("log")).unwrap();
    sync_dir(&root);
    let mut f = File::create(root.join("log/segment")).unwrap();
    f.write_all(b"entries").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Also a directory whose parent was never synced, with a synced file in it.
    fs::create_dir(root.join("db")).unwrap();
    let mut g = File::create(root.join("db/conf")).unwrap();
    g.write_all(b"x").unwrap();
    g.sync_all().unwrap();
    sync_dir(&root.join("db"));
    drop(g);
    let report = disk.power_cut().unwrap();
    assert!(root.join("log").is_dir());
    assert!(!root.join("log/segment").exists());
    assert!(!root.join("db").exists());
    assert_eq!(report.inodes_dropped, 3, "{report:?}");
    // With the directory synced, the file stays.
    let mut f = File::create(root.join("log/segment")).unwrap();
    f.write_all(b"entries").unwrap();
    f.sync_all().unwrap();
    sync_dir(&root.join("log"));
    drop(f);
    disk.power_cut().unwrap();
    assert_eq!(fs::read(root.join("log/segment")).unwrap(), b"entries");
}

#[test]
fn a_rename_is_atomic_and_durable_only_with_its_directory_fsync() {
    let (_dir, mut disk) = mounted();
    let root = disk.mountpoint().to_path_buf();
    let replace = |value: &[u8], sync: bool| {
        let mut tmp = File::create(root.join("vote.tmp")).unwrap();
        tmp.write_all(value).unwrap();
        tmp.sync_all().unwrap();
        fs::rename(root.join("vote.tmp"), root.join("vote")).unwrap();
        if sync {
            sync_dir(&root);
        }
    };
    replace(b"term 1", true);
    replace(b"term 2", false);
    assert_eq!(fs::read(root.join("vote")).unwrap(), b"term 2");
    disk.power_cut().unwrap();
    assert_eq!(fs::read(root.join("vote")).unwrap(), b"term 1");
    assert!(!root.join("vote.tmp").exists());
    replace(b"term 3", true);
    disk.power_cut().unwrap();
    assert_eq!(fs::read(root.join("vote")).unwrap(), b"term 3");
    let names: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["vote"]);
}

#[test]
fn an_unlink_without_a_directory_fsync_comes_back() {
    let (_dir, mut disk) = mounted();
    let root = disk.mountpoint().to_path_buf();
    let mut f = File::create(root.join("old-segment")).unwrap();
    f.write_all(b"purged entries").unwrap();
    f.sync_all().unwrap();
    sync_dir(&root);
    drop(f);
    fs::remove_file(root.join("old-segment")).unwrap();
    disk.power_cut().unwrap();
    assert_eq!(
        fs::read(root.join("old-segment")).unwrap(),
        b"purged entries"
    );
}

#[test]
fn a_cut_is_refused_while_a_file_is_open() {
    let (_dir, mut disk) = mounted();
    let root = disk.mountpoint().to_path_buf();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("busy"))
        .unwrap();
    let refused = disk.power_cut().expect_err("a busy disk cannot be cut");
    assert!(refused.to_string().contains("cannot unmount"), "{refused}");
    drop(f);
    disk.power_cut().unwrap();
}
