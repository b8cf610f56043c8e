//! One mounted power-cut disk: the tree, the FUSE session that serves it at a mount point, and
//! the cut itself.
//!
//! A cut unmounts the filesystem, reverts the tree to its durable state and mounts it again.
//! Unmounting first means no process can still have a file open across the cut (the unmount
//! fails with EBUSY if one has, and the cut is refused), and a fresh mount means the kernel
//! holds no page, entry or attribute from before it. The disk is unmounted when dropped, also
//! when a test panics.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::fuse::Ops;
use crate::model::{Counters, CutReport, Tree};

/// How long an unmount is retried while the mount point is busy (a killed process whose files
/// the kernel has not closed yet).
const UNMOUNT_RETRY: Duration = Duration::from_secs(2);

/// A power-cut disk mounted at a directory.
pub struct Disk {
    mountpoint: PathBuf,
    tree: Arc<Mutex<Tree>>,
    /// The FUSE session serving the mount; `None` while unmounted.
    session: Option<BackgroundSession>,
    /// Whether processes of other users may use it (`allow_other`).
    shared: bool,
}

/// Why a disk could not be mounted.
fn mount_error(mountpoint: &Path, e: io::Error) -> io::Error {
    let fuse = if Path::new("/dev/fuse").exists() {
        "/dev/fuse exists"
    } else {
        "/dev/fuse is missing (load the fuse module, or give the container the device)"
    };
    io::Error::new(
        e.kind(),
        format!(
            "cannot mount the power-cut filesystem at {}: {e} ({fuse}; mounting needs root or \
             fusermount3, from the fuse3 package)",
            mountpoint.display()
        ),
    )
}

impl Disk {
    /// Mounts an empty disk at `mountpoint` (an existing, empty directory), for the mounting
    /// user's processes.
    pub fn mount(mountpoint: &Path) -> io::Result<Disk> {
        Self::mount_with(mountpoint, false)
    }

    /// Mounts an empty disk at `mountpoint` that every user's processes may use (FUSE's
    /// `allow_other`): a container that runs as another user, its data dir bind-mounted from
    /// the disk. Needs root (or `user_allow_other` in `/etc/fuse.conf`).
    pub fn mount_shared(mountpoint: &Path) -> io::Result<Disk> {
        Self::mount_with(mountpoint, true)
    }

    fn mount_with(mountpoint: &Path, shared: bool) -> io::Result<Disk> {
        let mut disk = Disk {
            mountpoint: mountpoint.to_path_buf(),
            tree: Arc::new(Mutex::new(Tree::new())),
            session: None,
            shared,
        };
        disk.mount_session()?;
        Ok(disk)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn mount_session(&mut self) -> io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("raftcache-powerfs".into()),
            MountOption::Subtype("powerfs".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        if self.shared {
            config.acl = SessionACL::All;
        }
        let ops = Ops {
            tree: self.tree.clone(),
        };
        let session = fuser::spawn_mount(ops, &self.mountpoint, &config)
            .map_err(|e| mount_error(&self.mountpoint, e))?;
        self.session = Some(session);
        Ok(())
    }

    /// Unmounts (retrying while the mount is busy) and waits for the session to end.
    fn unmount(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let path = CString::new(self.mountpoint.as_os_str().as_bytes())?;
        let started = Instant::now();
        loop {
            // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) && fusermount_unmount(&self.mountpoint) {
                break;
            }
            if e.raw_os_error() == Some(libc::EBUSY) && started.elapsed() < UNMOUNT_RETRY {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            // Keep the session, so a later unmount (or the drop) can try again.
            self.session = Some(session);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot unmount {}: {e} (is a process still using it?)",
                    self.mountpoint.display()
                ),
            ));
        }
        // Unmounted: the session's loop ends. (Not `umount_and_join`: fuser 0.18 takes the
        // device's POLLERR after an unmount for "still mounted" and tries again, which fails
        // with EINVAL; the same retry on drop, inside `join`, only logs.) The kernel ends the
        // session's read of the device with ENODEV, or, when it aborted the connection on the
        // unmount (seen with requests still queued under load), ECONNABORTED: both mean the
        // mount is gone.
        match session.join() {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            ended => ended,
        }
    }

    /// Cuts the power: everything not made durable by an fsync (of the file, or of the
    /// directory for its entries) is lost. No process may have files open on the disk (kill
    /// them first); the disk is mounted again, empty of caches, before this returns.
    pub fn power_cut(&mut self) -> io::Result<CutReport> {
        self.unmount()?;
        let report = self
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .power_cut();
        self.mount_session()?;
        Ok(report)
    }

    /// Replaces the disk with a new, empty one at the same mount point, as a lost disk would
    /// be: nothing of the old tree survives, durable or not. No process may have files open on
    /// it.
    pub fn replace(&mut self) -> io::Result<()> {
        self.unmount()?;
        *self.tree.lock().unwrap_or_else(|p| p.into_inner()) = Tree::new();
        self.mount_session()
    }

    /// Counters over the disk's life (syncs, writes, cuts).
    pub fn counters(&self) -> Counters {
        self.tree.lock().unwrap_or_else(|p| p.into_inner()).counters
    }
}

/// Unmounts through the setuid helper, for a test not run as root. Whether it worked.
fn fusermount_unmount(mountpoint: &Path) -> bool {
    std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("powerfs: {e}; detaching it");
            if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
                // SAFETY: as above. A lazy unmount cannot fail for a busy mount.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
