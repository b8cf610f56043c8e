//! Backups: a copy of a node's whole data set at one log index, and a new cluster's data dir
//! made from one.
//!
//! `raftcache admin backup FILE` asks a node to build a snapshot covering everything it has
//! applied (built while writes go on: `store/snapshot.rs`), reads it in pieces
//! (`admin_backup_read`, served by `Backups` from a hard link to that snapshot file, so that a
//! newer snapshot replacing it meanwhile changes nothing) and writes it behind a header into
//! FILE, with a checksum over the whole file. Layout:
//!
//! - the magic `RCBACKUP`, the format version (`u32`, big-endian) and the header's length
//!   (`u32`);
//! - the header, JSON (`Header`: the cluster id, the node, the index, the data's length, when,
//!   and by which raftcache), readable with `head -c 300 FILE`;
//! - the data: the snapshot file as the node holds it (its own layout and checksum);
//! - the CRC-32 (IEEE) of every byte before it (`u32`), and the magic again.
//!
//! `raftcache restore FILE` with `serve`'s flags makes the data dir of one node of a new
//! cluster: the backup's data at its index, with the membership of `--initial-cluster` (or of
//! the node alone), and a cluster id of its own, so that no node of the source cluster can
//! mistake it for its own. Restoring every node of the new cluster from the same file with the
//! same `--initial-cluster` gives them the same state and the same cluster id; they then start
//! with `raftcache serve` and elect a leader as a freshly bootstrapped cluster does. The
//! snapshot's log id is rewritten to term 0 (as a bootstrap's first entry has), so that the
//! new cluster's terms start over without going backwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::vote::RaftLeaderId;
use serde::{Deserialize, Serialize};

use crate::config::{NodeConfig, StartMode};
use crate::store::integrity::Identity;
use crate::store::snapshot;
use crate::types::{CommittedLeaderId, LogId, Membership, Node, SnapshotMeta, StoredMembership};

/// The first and last bytes of a backup file.
pub const MAGIC: &[u8; 8] = b"RCBACKUP";
/// The layout this raftcache writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// A longer header means a damaged file.
const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// Most bytes one `admin_backup_read` returns, whatever it asks for.
pub const MAX_READ_BYTES: i32 = 4 << 20;
/// Magic, version and header length.
const PREFIX_BYTES: u64 = 8 + 4 + 4;
/// Checksum and magic.
const TRAILER_BYTES: u64 = 4 + 8;

/// What a backup file says of itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The cluster the data comes from.
    pub cluster_id: String,
    /// The node it was read from.
    pub node_id: u64,
    /// The log index it covers: every write up to it, none after.
    pub index: u64,
    /// Length of the data (the snapshot file), in bytes.
    pub bytes: u64,
    /// When the backup was taken (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// The raftcache that wrote it.
    pub raftcache_version: String,
}

/// Writes a backup file: the prefix and header, then the data as it arrives, then the trailer.
/// The file is written under a temporary name beside `dest` and renamed onto it once whole and
/// synced, so that an interrupted backup never leaves a file that looks like one.
pub struct Writer {
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    partial: PathBuf,
    dest: PathBuf,
    expected: u64,
    written: u64,
}

impl Writer {
    /// Refuses to replace an existing file.
    pub fn create(dest: &Path, header: &Header) -> io::Result<Writer> {
        if dest.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists: remove it or choose another name",
                    dest.display()
                ),
            ));
        }
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = dest.with_file_name(name);
        let mut writer = Writer {
            out: BufWriter::with_capacity(1 << 20, File::create(&partial)?),
            crc: crc32fast::Hasher::new(),
            partial,
            dest: dest.to_path_buf(),
            expected: header.bytes,
            written: 0,
        };
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        writer.put(MAGIC)?;
        writer.put(&FORMAT_VERSION.to_be_bytes())?;
        writer.put(&(json.len() as u32).to_be_bytes())?;
        writer.put(&json)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    /// The next piece of the data.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        if self.written > self.expected {
            return Err(io::Error::other(format!(
                "the node sent more than the {} bytes it announced",
                self.expected
            )));
        }
        self.put(bytes)
    }

    /// Bytes of data written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes the trailer, syncs the file and renames it onto its name.
    pub fn finish(mut self) -> io::Result<()> {
        if self.written != self.expected {
            return Err(io::Error::other(format!(
                "the node sent {} of the {} bytes it announced",
                self.written, self.expected
            )));
        }
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_be_bytes())?;
        self.out.write_all(MAGIC)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&self.partial, &self.dest)?;
        let dir = self
            .dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::store::fsync::sync_dir(dir)
    }

    /// Removes the partial file (the backup failed).
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// Reads and checks the prefix and header of the backup at `path`, and that the file has the
/// length they announce. Returns the header and where the data begins.
pub fn read_header(path: &Path) -> Result<(Header, u64), String> {
    let name = path.display();
    let mut file = File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read {name}: {e}"))?
        .len();
    let mut prefix = [0u8; PREFIX_BYTES as usize];
    if len < PREFIX_BYTES || file.read_exact(&mut prefix).is_err() {
        return Err(format!(
            "{name} is not a raftcache backup: it is {len} bytes long, shorter than a backup's first bytes"
        ));
    }
    if &prefix[..8] != MAGIC {
        return Err(format!(
            "{name} is not a raftcache backup (it does not begin with RCBACKUP)"
        ));
    }
    let version = u32::from_be_bytes(prefix[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "{name} is a backup of format version {version}; this raftcache ({}) reads version {FORMAT_VERSION}",
            env!("CARGO_PKG_VERSION")
        ));
    }
    let header_len = u32::from_be_bytes(prefix[12..16].try_into().expect("4 bytes"));
    if header_len > MAX_HEADER_BYTES || PREFIX_BYTES + header_len as u64 > len {
        return Err(format!(
            "{name} is damaged or cut short: its header of {header_len} bytes does not fit in the file's {len} bytes"
        ));
    }
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    let header: Header = serde_json::from_slice(&json)
        .map_err(|e| format!("{name} is damaged: its header does not read ({e})"))?;
    let data_at = PREFIX_BYTES + header_len as u64;
    let whole = data_at + header.bytes + TRAILER_BYTES;
    if len != whole {
        return Err(format!(
            "{name} is {} a whole backup of index {} ({len} bytes, where its header announces {whole})",
            if len < whole {
                "cut short: not"
            } else {
                "damaged: longer than"
            },
            header.index
        ));
    }
    Ok((header, data_at))
}

/// Checks the whole backup at `path` (prefix, length, checksum and trailer) and copies its
/// data, the snapshot file, to `dest`; then checks that snapshot whole and that it covers the
/// header's index. Returns the header and the snapshot's metadata.
pub fn extract(path: &Path, dest: &Path) -> Result<(Header, SnapshotMeta), String> {
    let name = path.display();
    let (header, data_at) = read_header(path)?;
    let read_err = |e: io::Error| format!("cannot read {name}: {e}");
    let mut file = File::open(path).map_err(read_err)?;
    let mut crc = crc32fast::Hasher::new();
    let mut prefix = vec![0u8; data_at as usize];
    file.read_exact(&mut prefix).map_err(read_err)?;
    crc.update(&prefix);
    let mut input = BufReader::with_capacity(1 << 20, file);
    let write_err = |e: io::Error| format!("cannot write {}: {e}", dest.display());
    let mut out = BufWriter::with_capacity(1 << 20, File::create(dest).map_err(write_err)?);
    let mut left = header.bytes;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        input.read_exact(&mut buf[..want]).map_err(read_err)?;
        crc.update(&buf[..want]);
        out.write_all(&buf[..want]).map_err(write_err)?;
        left -= want as u64;
    }
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    input.read_exact(&mut trailer).map_err(read_err)?;
    let recorded = u32::from_be_bytes(trailer[..4].try_into().expect("4 bytes"));
    let found = crc.finalize();
    if &trailer[4..] != MAGIC || found != recorded {
        return Err(format!(
            "{name} is damaged: its checksum does not match (crc32 {found:08x}, recorded {recorded:08x})"
        ));
    }
    let out = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    out.sync_all().map_err(write_err)?;
    snapshot::verify(dest).map_err(|e| format!("{name} holds a damaged snapshot: {e}"))?;
    let meta =
        snapshot::read_meta(dest).map_err(|e| format!("{name} holds a damaged snapshot: {e}"))?;
    let covered = meta.last_log_id.map_or(0, |id| id.index);
    if covered != header.index {
        return Err(format!(
            "{name} is damaged: its header says index {}, its data covers index {covered}",
            header.index
        ));
    }
    Ok((header, meta))
}

/// The backups being read from this node, each a hard link to the snapshot it was taken
/// from, in the snapshot directory (where a restart removes what a crash left). A backup left
/// unread for `idle` is dropped.
pub struct Backups {
    dir: PathBuf,
    idle: Duration,
    open: Mutex<HashMap<String, Open>>,
}

struct Open {
    path: PathBuf,
    bytes: u64,
    used: Instant,
}

/// A backup ready to be read.
#[derive(Debug, Clone)]
pub struct Begun {
    pub id: String,
    pub meta: SnapshotMeta,
    pub bytes: u64,
}

impl Backups {
    pub fn new(snapshot_dir: PathBuf, idle: Duration) -> Self {
        Self {
            dir: snapshot_dir,
            idle,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps the current snapshot for reading. The caller has just had one built covering
    /// what it needs; a newer one published meanwhile covers more.
    pub fn begin(&self) -> io::Result<Begun> {
        self.drop_idle();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("{nanos:x}");
        let path = self.dir.join(format!("backup-{id}"));
        std::fs::hard_link(self.dir.join(snapshot::CURRENT), &path)?;
        let described =
            snapshot::read_meta(&path).and_then(|meta| Ok((meta, std::fs::metadata(&path)?.len())));
        let (meta, bytes) = match described {
            Ok(found) => found,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        self.open.lock().expect("backups lock").insert(
            id.clone(),
            Open {
                path,
                bytes,
                used: Instant::now(),
            },
        );
        Ok(Begun { id, meta, bytes })
    }

    /// Up to `max` bytes of backup `id` from `offset` (empty at its end).
    pub fn read(&self, id: &str, offset: u64, max: usize) -> Result<Vec<u8>, String> {
        self.drop_idle();
        let (path, bytes) = {
            let mut open = self.open.lock().expect("backups lock");
            let backup = open.get_mut(id).ok_or_else(|| {
                format!(
                    "no backup {id} is being read from this node (ended, or left unread for {} ms)",
                    self.idle.as_millis()
                )
            })?;
            backup.used = Instant::now();
            (backup.path.clone(), backup.bytes)
        };
        let want = bytes.saturating_sub(offset).min(max as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut read = || -> io::Result<()> {
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut buf)
        };
        read().map_err(|e| format!("cannot read backup {id}: {e}"))?;
        Ok(buf)
    }

    /// Releases backup `id` (nothing if it is unknown).
    pub fn end(&self, id: &str) {
        if let Some(backup) = self.open.lock().expect("backups lock").remove(id) {
            let _ = std::fs::remove_file(backup.path);
        }
    }

    fn drop_idle(&self) {
        let mut open = self.open.lock().expect("backups lock");
        open.retain(|_, backup| {
            let keep = backup.used.elapsed() < self.idle;
            if !keep {
                let _ = std::fs::remove_file(&backup.path);
            }
            keep
        });
    }
}

/// Bytes asked for by each `admin_backup_read` of `take`.
const READ_BYTES: i32 = 1 << 20;

/// Takes a backup of the node `client` is connected to into `file` (see the module's doc):
/// calls `progress(written, total)` after each piece. The file appears only once whole.
pub fn take(
    client: &mut crate::client::CacheClient,
    token: &str,
    file: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<Header, String> {
    use crate::gen::cache::TCacheServiceSyncClient;
    let err = |e: thrift::Error| crate::client::describe_error(&e);
    let info = client
        .service()
        .admin_backup_begin(token.to_string())
        .map_err(err)?;
    let header = Header {
        cluster_id: info.cluster_id.clone(),
        node_id: info.node_id as u64,
        index: info.index as u64,
        bytes: info.bytes as u64,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        raftcache_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let written = Writer::create(file, &header)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
        .and_then(|mut out| {
            let copied = (|| -> Result<(), String> {
                loop {
                    let piece = client
                        .service()
                        .admin_backup_read(
                            token.to_string(),
                            info.backup_id.clone(),
                            out.written() as i64,
                            READ_BYTES,
                        )
                        .map_err(err)?;
                    if piece.is_empty() {
                        return Ok(());
                    }
                    out.data(&piece)
                        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
                    progress(out.written(), header.bytes);
                }
            })();
            match copied {
                Ok(()) => out
                    .finish()
                    .map_err(|e| format!("cannot write {}: {e}", file.display())),
                Err(e) => {
                    out.abandon();
                    Err(e)
                }
            }
        });
    let _ = client
        .service()
        .admin_backup_end(token.to_string(), info.backup_id);
    written.map(|()| header)
}

/// What `restore` made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub header: Header,
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub members: BTreeMap<u64, Node>,
    /// Keys and removals written (the snapshot's items).
    pub items: u64,
}

/// Makes `config`'s data dir the data dir of a node of a new cluster holding the backup at
/// `file` (see the module's doc). Refuses a data dir that is not empty, a start mode other
/// than bootstrapping, and a damaged, cut-short or foreign file.
pub async fn restore(file: &Path, config: &NodeConfig) -> Result<Restored, String> {
    if config.start_mode() != StartMode::Bootstrap {
        return Err("restore founds a new cluster: give it --initial-cluster (or nothing, for a one-node cluster), not --join or --no-bootstrap".into());
    }
    let data_dir = config.data_dir();
    if std::fs::read_dir(&data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!(
            "the data dir {} is not empty: restore makes a new node's data dir; give an empty or absent one (--data-dir)",
            data_dir.display()
        ));
    }
    let (header, _) = read_header(file)?;
    let own = config.advertised(config.peer_listen, config.listen)?;
    let members: BTreeMap<u64, Node> = config
        .bootstrap_members(&own)?
        .into_iter()
        .map(|(id, m)| {
            let node = Node {
                peer_addr: m.peer_addr,
                client_addr: m.client_addr,
            };
            (id, node)
        })
        .collect();
    // Another cluster than the source, and than a cluster bootstrapped with the same flags:
    // the same on every node restored from this file with these flags.
    let base = config.cluster_id().unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{nanos:x}")
    });
    let from = format!("{}/{}", header.cluster_id, header.index);
    let cluster_id = crate::store::restored_cluster_id(&base, &from);

    let staging = staging_path(&data_dir);
    let result = restore_into(file, config, &members, &cluster_id, &from, &staging).await;
    let _ = std::fs::remove_file(staging.with_extension("extracted"));
    let _ = std::fs::remove_file(staging.with_extension("rewritten"));
    let (header, items) = result?;
    Ok(Restored {
        header,
        data_dir,
        cluster_id,
        members,
        items,
    })
}

/// Beside the data dir (not in it: it must be empty for the store to open it as new).
fn staging_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    data_dir.with_file_name(name)
}

async fn restore_into(
    file: &Path,
    config: &NodeConfig,
    members: &BTreeMap<u64, Node>,
    cluster_id: &str,
    from: &str,
    staging: &Path,
) -> Result<(Header, u64), String> {
    if let Some(parent) = staging.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let extracted = staging.with_extension("extracted");
    let (header, source) = extract(file, &extracted)?;

    // The same data, under the new cluster's membership, at the backup's index in term 0.
    let first = *members.keys().next().expect("at least this node");
    let log_id = LogId::new(CommittedLeaderId::new(0, first), header.index);
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let membership = Membership::new(vec![voters], members.clone())
        .map_err(|e| format!("the new cluster's membership: {e}"))?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    };
    let rewritten = staging.with_extension("rewritten");
    let write_err = |e: io::Error| format!("cannot write {}: {e}", rewritten.display());
    let mut out = snapshot::Writer::create(&rewritten).map_err(write_err)?;
    out.end_records().map_err(write_err)?;
    snapshot::for_each_chunk(&extracted, 4096, |items| {
        for (key, value) in items {
            out.write(&key, value.as_deref())?;
        }
        Ok::<(), io::Error>(())
    })
    .map_err(|e| format!("cannot copy the backup's data: {e}"))?;
    let (_, items, _) = out.finish(&meta).map_err(write_err)?;
    tracing::debug!(source = ?source.last_log_id, "backup data rewritten for the new cluster");

    let (_log, mut sm) = crate::store::open(
        &config.data_dir(),
        config.id,
        Some(cluster_id),
        &crate::store::StoreOptions {
            cache_capacity_bytes: config.cache_capacity_bytes,
            log_segment_bytes: config.log_segment_bytes,
            watch_history_bytes: config.watch_history_bytes,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    // Recorded before the data goes in: `serve` with these flags then knows the cluster.
    let dir = config.data_dir();
    let mut identity = Identity::read(&dir)
        .ok()
        .flatten()
        .ok_or_else(|| format!("{} holds no identity", dir.display()))?;
    identity.restored_from = Some(from.to_string());
    identity
        .write(&dir)
        .map_err(|e| format!("cannot write the identity of {}: {e}", dir.display()))?;
    let data = tokio::fs::File::open(&rewritten)
        .await
        .map_err(|e| format!("cannot read {}: {e}", rewritten.display()))?;
    sm.install_snapshot(&meta, data)
        .await
        .map_err(|e| format!("cannot install the backup's data: {e}"))?;
    Ok((header, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: u64) -> Header {
        Header {
            cluster_id: "c0ffee".into(),
            node_id: 1,
            index: 42,
            bytes,
            created_unix_ms: 1,
            raftcache_version: "test".into(),
        }
    }

    fn write(path: &Path, data: &[u8]) {
        let mut w = Writer::create(path, &header(data.len() as u64)).unwrap();
        w.data(data).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn a_whole_file_reads_back_and_a_cut_damaged_or_foreign_one_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.rcbackup");
        write(&path, b"some data");
        let (read, _) = read_header(&path).unwrap();
        assert_eq!(read, header(9));
        assert!(
            Writer::create(&path, &header(1))
                .err()
                .unwrap()
                .to_string()
                .contains("exists"),
            "an existing file is not replaced"
        );
        let bytes = std::fs::read(&path).unwrap();

        let cut = dir.path().join("cut");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
        let e = read_header(&cut).unwrap_err();
        assert!(e.contains("cut short"), "{e}");

        let damaged = dir.path().join("damaged");
        let mut flipped = bytes.clone();
        let at = bytes.len() - 15; // in the data
        flipped[at] ^= 1;
        std::fs::write(&damaged, &flipped).unwrap();
        let e = extract(&damaged, &dir.path().join("x")).unwrap_err();
        assert!(e.contains("checksum does not match"), "{e}");

        let foreign = dir.path().join("foreign");
        let mut other = bytes.clone();
        other[8..12].copy_from_slice(&7u32.to_be_bytes());
        std::fs::write(&foreign, &other).unwrap();
        let e = read_header(&foreign).unwrap_err();
        assert!(e.contains("format version 7"), "{e}");

        let not = dir.path().join("not");
        std::fs::write(&not, b"hello, this is some other file entirely").unwrap();
        let e = read_header(&not).unwrap_err();
        assert!(e.contains("not a raftcache backup"), "{e}");
    }

    #[test]
    fn a_backup_sending_less_or_more_than_it_announced_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        let mut w = Writer::create(&path, &header(10)).unwrap();
        w.data(b"12345").unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("5 of the 10"));
        assert!(!path.exists());
        let mut w = Writer::create(&path, &header(3)).unwrap();
        assert!(w.data(b"12345").is_err());
        w.abandon();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
