//! A full disk is a state, not a crash. A node whose data dir's filesystem has less free space
//! than `--min-free-disk-bytes` raises an alarm for the whole cluster, as etcd's NOSPACE alarm
//! does: the leader refuses every write that would add data (`CacheFull`, saying which node is
//! short of space) before any voter's disk fills, while reads, removes, status, metrics and
//! admin calls go on. A follower cannot refuse the entries the leader sends it, so it reports
//! its alarm to the leader (`disk_alarm`, every check while it lasts); a report the leader has
//! not heard again for `REPORT_LIFE` lapses, so a node that freed space, or died, stops
//! blocking writes by itself. Writes resume on their own once every voter has room again.
//!
//! Removes are still taken: they are how an operator makes room in the cache, and their
//! entries are small. The log they add is compacted behind the next snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use serde::{Deserialize, Serialize};

use crate::network::{peer_addr, PeerClients, PeerMethod};
use crate::types::{NodeId, Raft, Request};

/// How often each node measures its free space (and a short node reports to the leader).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long the leader keeps a report it does not hear again.
const REPORT_LIFE: Duration = Duration::from_secs(3);

/// A node's report to the leader: its free space, and whether it is under its minimum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskAlarm {
    pub from: NodeId,
    pub free_bytes: u64,
    pub min_free_bytes: u64,
    pub low: bool,
}

/// This node's disk, and (on the leader) the alarms other nodes reported.
pub struct DiskGuard {
    id: NodeId,
    dir: PathBuf,
    min_free: u64,
    /// This node's free bytes while under `min_free`.
    own_low: Mutex<Option<u64>>,
    /// Alarms reported by other nodes, and when each was last heard.
    reported: Mutex<HashMap<NodeId, (DiskAlarm, Instant)>>,
}

/// The default `--min-free-disk-bytes` for a filesystem of `size` bytes: 5% of it, at least
/// 16 MiB and at most 1 GiB (but never more than a quarter of a small disk).
pub fn default_min_free(size: u64) -> u64 {
    (size / 20).clamp(16 << 20, 1 << 30).min(size / 4)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Bytes available to this process, and the size, of the filesystem holding `path`.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block))
}

impl DiskGuard {
    /// `min_free`: `--min-free-disk-bytes`, or None for the default of the data dir's disk.
    pub fn new(id: NodeId, dir: PathBuf, min_free: Option<u64>) -> Arc<Self> {
        let min_free = min_free.unwrap_or_else(|| {
            disk_space(&dir).map_or(16 << 20, |(_, size)| default_min_free(size))
        });
        Arc::new(Self {
            id,
            dir,
            min_free,
            own_low: Mutex::new(None),
            reported: Mutex::new(HashMap::new()),
        })
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Measures this node's free space now; logs when it goes under or back over the minimum.
    /// Returns the alarm to report.
    pub fn measure(&self) -> Option<DiskAlarm> {
        let (free, _) = disk_space(&self.dir)?;
        let low = self.min_free > 0 && free < self.min_free;
        let mut own = self.own_low.lock().expect("disk lock");
        match (own.is_some(), low) {
            (false, true) => tracing::warn!(
                free = %mib(free),
                min_free = %mib(self.min_free),
                dir = %self.dir.display(),
                "the data dir's disk is nearly full: the cluster refuses writes until space is freed (--min-free-disk-bytes)"
            ),
            (true, false) => tracing::info!(
                free = %mib(free),
                "the data dir's disk has room again: writes resume"
            ),
            _ => {}
        }
        *own = low.then_some(free);
        Some(DiskAlarm {
            from: self.id,
            free_bytes: free,
            min_free_bytes: self.min_free,
            low,
        })
    }

    /// The leader heard `alarm` from another node.
    pub fn report(&self, alarm: DiskAlarm) {
        let mut reported = self.reported.lock().expect("disk lock");
        if alarm.low {
            if !reported.contains_key(&alarm.from) {
                tracing::warn!(node = alarm.from, free = %mib(alarm.free_bytes), "a node's disk is nearly full: writes are refused until it has room");
            }
            reported.insert(alarm.from, (alarm, Instant::now()));
        } else if reported.remove(&alarm.from).is_some() {
            tracing::info!(node = alarm.from, "a node's disk has room again");
        }
    }

    /// Why writes that add data are refused now, if they are: this node, or a node that
    /// reported within `REPORT_LIFE`, is short of space.
    pub fn refusal(&self) -> Option<String> {
        let (node, free, min) = match *self.own_low.lock().expect("disk lock") {
            Some(free) => (self.id, free, self.min_free),
            None => {
                let mut reported = self.reported.lock().expect("disk lock");
                reported.retain(|_, (_, at)| at.elapsed() < REPORT_LIFE);
                let (alarm, _) = reported.values().min_by_key(|(a, _)| a.free_bytes)?;
                (alarm.from, alarm.free_bytes, alarm.min_free_bytes)
            }
        };
        Some(format!(
            "writes are refused while node {node}'s disk is nearly full ({} free, under its --min-free-disk-bytes of {}); reads and removes still work, and writes resume once space is freed",
            mib(free),
            mib(min)
        ))
    }

    /// Checks this node's disk every `CHECK_EVERY`, and while it is short of space (and once
    /// when it has room again) tells the leader, unless this node leads.
    pub fn spawn_watch(self: &Arc<Self>, raft: Raft, peers: Arc<PeerClients>) {
        let guard = self.clone();
        tokio::spawn(async move {
            let mut told_low = false;
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let measured = tokio::task::spawn_blocking({
                    let guard = guard.clone();
                    move || guard.measure()
                })
                .await;
                let Ok(Some(alarm)) = measured else {
                    continue;
                };
                let leader = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow_watched();
                    if m.running_state.is_err() {
                        return;
                    }
                    m.current_leader
                };
                let Some(leader) = leader.filter(|l| *l != guard.id) else {
                    continue;
                };
                if !alarm.low && !told_low {
                    continue;
                }
                let Some(addr) = peer_addr(&raft, leader) else {
                    continue;
                };
                let low = alarm.low;
                let sent = peers
                    .rpc::<_, ()>(leader, &addr, PeerMethod::DiskAlarm, &alarm, CHECK_EVERY)
                    .await;
                if sent.is_ok() {
                    told_low = low;
                }
            }
        });
    }
}

impl Request {
    /// Whether the request may add data (refused while a disk is nearly full).
    pub fn adds_data(&self) -> bool {
        matches!(
            self.inner(),
            Request::Put { .. }
                | Request::PutMany { .. }
                | Request::PutIfAbsent { .. }
                | Request::CompareAndPut { .. }
                | Request::Increment { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_minimum_is_five_percent_between_16_mib_and_1_gib() {
        assert_eq!(default_min_free(100 << 30), 1 << 30);
        assert_eq!(default_min_free(10 << 30), 512 << 20);
        assert_eq!(default_min_free(256 << 20), 16 << 20);
        assert_eq!(
            default_min_free(32 << 20),
            8 << 20,
            "a quarter of a small disk"
        );
    }

    #[test]
    fn a_report_refuses_writes_until_it_lapses_or_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::new(1, dir.path().to_path_buf(), Some(1));
        guard.measure();
        assert_eq!(guard.refusal(), None, "its own disk has room");
        let alarm = |low| DiskAlarm {
            from: 2,
            free_bytes: 3 << 20,
            min_free_bytes: 8 << 20,
            low,
        };
        guard.report(alarm(true));
        let why = guard.refusal().expect("refused while node 2 is short");
        assert!(why.contains("node 2") && why.contains("3.0 MiB"), "{why}");
        guard.report(alarm(false));
        assert_eq!(guard.refusal(), None, "cleared");
        guard.report(alarm(true));
        guard.reported.lock().unwrap().get_mut(&2).unwrap().1 -= REPORT_LIFE;
        assert_eq!(guard.refusal(), None, "lapsed");
    }

    #[test]
    fn its_own_disk_under_the_minimum_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::new(1, dir.path().to_path_buf(), Some(u64::MAX));
        let alarm = guard.measure().unwrap();
        assert!(alarm.low);
        assert!(guard.refusal().unwrap().contains("node 1"));
    }
}
