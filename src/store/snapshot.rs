//! Snapshot files: the whole cache at one log index, streamed to and from disk in pieces so
//! that building, sending and installing a snapshot never holds the data set in memory.
//!
//! A snapshot is built without pausing applies: a copy of the data tree taken while applies go
//! on (each key as it was at some moment between applied indexes X0 and X1), followed by the
//! effects of the log entries X0+1..=X1 (each changed key's new stored bytes, or its removal,
//! as `store/apply.rs` recorded them while the build ran), replayed in order on install.
//! Writing a key's final bytes is idempotent, so the copy plus the replay is exactly the state
//! at X1: a key no entry touched kept its X0 value, and a touched key ends with its last
//! effect. Replaying the requests instead would not be exact: an increment or compare-and-put
//! the copy already saw would be applied again to a different value.
//!
//! Layout: the magic `RCSNAP03`; the copied records (`u32` key length, key, `u32` value length,
//! value); an end marker (`u32::MAX`) and their count (`u64`); the replayed writes (a tag byte,
//! 1 put or 2 remove, the key, and for a put the value); a zero tag and their count (`u64`); the
//! metadata (bincode), its length (`u32`), the CRC-32 (IEEE) of every byte
//! before it (`u32`), and the magic again. A file cut short is detected by its missing trailer,
//! markers or counts; a damaged byte anywhere by its checksum, which every read of the whole
//! file checks (`for_each_chunk`, `verify`): before a received snapshot is installed, before a
//! node sends its own, and when a node starts. The same bytes travel to followers.
//!
//! Files of the previous layout (`RCSNAP02`, without the checksum) are rewritten in this one
//! when a node starts (`upgrade`).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::schema::{decode, encode};
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"RCSNAP03";
/// The layout before snapshots carried a checksum.
const MAGIC_UNCHECKED: &[u8; 8] = b"RCSNAP02";
const END: u32 = u32::MAX;
const TAG_END: u8 = 0;
const TAG_PUT: u8 = 1;
const TAG_REMOVE: u8 = 2;
/// The snapshot in force; others (being built or received) have temporary names beside it.
pub const CURRENT: &str = "current";
/// Buffer size for reading and writing snapshot files.
const BUFFER_BYTES: usize = 1 << 20;
/// No key or value in a snapshot is larger; a larger length means a damaged file.
const MAX_PART_BYTES: usize = 256 << 20;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A fresh temporary path in `dir`, for a snapshot being built or received.
pub fn temp_path(dir: &Path, what: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    dir.join(format!("{what}-{nanos}"))
}

/// Removes temporary files left by a crash while building or receiving.
pub fn remove_temporaries(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != CURRENT {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Passes bytes through to `inner` and keeps the CRC-32 of every byte that went through.
struct Checksummed<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Checksummed<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }

    fn checksum(&self) -> u32 {
        self.crc.clone().finalize()
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Checksummed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.crc.update(&buf[..read]);
        Ok(read)
    }
}

/// Writes a snapshot file: copied records, then replayed writes, then the metadata.
pub struct Writer {
    file: File,
    out: BufWriter<Checksummed<File>>,
    records: u64,
    writes: u64,
    bytes: u64,
}

impl Writer {
    pub fn create(path: &Path) -> io::Result<Writer> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(BUFFER_BYTES, Checksummed::new(file.try_clone()?));
        out.write_all(MAGIC)?;
        Ok(Writer {
            file,
            out,
            records: 0,
            writes: 0,
            bytes: 0,
        })
    }

    fn part(&mut self, part: &[u8]) -> io::Result<()> {
        self.out.write_all(&(part.len() as u32).to_be_bytes())?;
        self.out.write_all(part)?;
        self.bytes += part.len() as u64;
        Ok(())
    }

    /// One copied record.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.part(key)?;
        self.part(value)?;
        self.records += 1;
        Ok(())
    }

    /// Ends the copied records; what follows are replayed writes.
    pub fn end_records(&mut self) -> io::Result<()> {
        self.out.write_all(&END.to_be_bytes())?;
        self.out.write_all(&self.records.to_be_bytes())
    }

    /// One replayed write: a put (`Some(value)`) or a remove (`None`).
    pub fn write(&mut self, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
        self.out
            .write_all(&[if value.is_some() { TAG_PUT } else { TAG_REMOVE }])?;
        self.part(key)?;
        if let Some(value) = value {
            self.part(value)?;
        }
        self.writes += 1;
        Ok(())
    }

    /// Writes the trailer with `meta` and syncs the file. Returns (records, writes, bytes).
    pub fn finish(mut self, meta: &SnapshotMeta) -> io::Result<(u64, u64, u64)> {
        let meta_bytes = encode(meta);
        self.out.write_all(&[TAG_END])?;
        self.out.write_all(&self.writes.to_be_bytes())?;
        self.out.write_all(&meta_bytes)?;
        self.out
            .write_all(&(meta_bytes.len() as u32).to_be_bytes())?;
        let mut summed = self.out.into_inner().map_err(|e| e.into_error())?;
        let checksum = summed.checksum();
        summed.inner.write_all(&checksum.to_be_bytes())?;
        summed.inner.write_all(MAGIC)?;
        drop(summed);
        self.file.sync_all()?;
        Ok((self.records, self.writes, self.bytes))
    }
}

/// Makes `from` the current snapshot of `dir`: rename, then sync the directory.
pub fn publish(dir: &Path, from: &Path) -> io::Result<()> {
    std::fs::rename(from, dir.join(CURRENT))?;
    File::open(dir)?.sync_all()
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut raw = [0u8; 4];
    input.read_exact(&mut raw)?;
    Ok(u32::from_be_bytes(raw))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut raw = [0u8; 8];
    input.read_exact(&mut raw)?;
    Ok(u64::from_be_bytes(raw))
}

fn read_part(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let len = read_u32(input)? as usize;
    if len > MAX_PART_BYTES {
        return Err(invalid(format!(
            "a part of {len} bytes: the snapshot is damaged"
        )));
    }
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// What a snapshot file's trailer says.
struct Trailer {
    meta: SnapshotMeta,
    meta_len: usize,
    /// The checksum of every byte before it; None in a file of the layout without one.
    checksum: Option<u32>,
}

/// Reads the trailer of the snapshot file at `path`.
fn read_trailer(path: &Path) -> io::Result<Trailer> {
    read_trailer_of(&mut File::open(path)?, path)
}

/// Reads the trailer of `file`, the snapshot file opened at `path`.
fn read_trailer_of(file: &mut File, path: &Path) -> io::Result<Trailer> {
    let not_snapshot = || {
        invalid(format!(
            "{} is not a whole raftcache snapshot",
            path.display()
        ))
    };
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).map_err(|_| not_snapshot())?;
    let checked = match &magic {
        m if m == MAGIC => true,
        m if m == MAGIC_UNCHECKED => false,
        _ => return Err(not_snapshot()),
    };
    // From the end: [checksum: u32] magic (8 bytes), before them the metadata's length.
    let tail_len = if checked { 16 } else { 12 };
    file.seek(SeekFrom::End(-tail_len))
        .map_err(|_| not_snapshot())?;
    let meta_len = read_u32(file)? as usize;
    let checksum = if checked { Some(read_u32(file)?) } else { None };
    let mut tail = [0u8; 8];
    file.read_exact(&mut tail)?;
    if tail != magic || meta_len > MAX_PART_BYTES {
        return Err(not_snapshot());
    }
    file.seek(SeekFrom::End(-tail_len - meta_len as i64))
        .map_err(|_| not_snapshot())?;
    let mut meta = vec![0u8; meta_len];
    file.read_exact(&mut meta)?;
    let meta = decode(&meta).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    Ok(Trailer {
        meta,
        meta_len,
        checksum,
    })
}

/// The metadata of the snapshot file at `path`, from its trailer. Checks neither the contents
/// nor the checksum: `verify` does.
pub fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    read_trailer(path).map(|t| t.meta)
}

/// Whether the snapshot file at `path` has the layout without a checksum.
pub fn is_unchecked(path: &Path) -> io::Result<bool> {
    read_trailer(path).map(|t| t.checksum.is_none())
}

/// Rewrites a snapshot file of the layout without a checksum in the current one (every item
/// as a replayed write, which installs the same state). Checks it whole first.
pub fn upgrade(path: &Path) -> io::Result<()> {
    let meta = read_meta(path)?;
    let upgraded = temp_path(path.parent().unwrap_or(Path::new(".")), "upgrading");
    let mut out = Writer::create(&upgraded)?;
    out.end_records()?;
    for_each_chunk(path, 4096, |items| {
        for (key, value) in items {
            out.write(&key, value.as_deref())?;
        }
        Ok::<(), io::Error>(())
    })?;
    out.finish(&meta)?;
    std::fs::rename(&upgraded, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Calls `each` with the snapshot's contents in file order, `chunk` items at a time: first the
/// copied records (`Some(value)`), then the replayed writes (`Some(value)` for a put, `None` for
/// a remove). Applying the chunks in order rebuilds the state. Checks the file is whole; a
/// failure from `each` is returned as is. Returns the number of items.
pub fn for_each_chunk<E: From<io::Error>>(
    path: &Path,
    chunk: usize,
    mut each: impl FnMut(Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), E>,
) -> Result<u64, E> {
    // One open for the trailer and the body: a snapshot renamed onto `path` in between would
    // pair one file's checksum with another's bytes, and read as damaged.
    let mut file = File::open(path)?;
    let trailer = read_trailer_of(&mut file, path)?;
    file.seek(SeekFrom::Start(0))?;
    let mut input = Checksummed::new(BufReader::with_capacity(BUFFER_BYTES, file));
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    let mut items = Vec::with_capacity(chunk);
    let mut flush = |items: &mut Vec<_>, force: bool| -> Result<(), E> {
        if items.len() >= chunk || (force && !items.is_empty()) {
            each(std::mem::take(items))?;
        }
        Ok(())
    };
    let mut records = 0u64;
    loop {
        let key_len = read_u32(&mut input)?;
        if key_len == END {
            break;
        }
        if key_len as usize > MAX_PART_BYTES {
            return Err(
                invalid(format!("a key of {key_len} bytes: the snapshot is damaged")).into(),
            );
        }
        let mut key = vec![0u8; key_len as usize];
        input.read_exact(&mut key)?;
        items.push((key, Some(read_part(&mut input)?)));
        records += 1;
        flush(&mut items, false)?;
    }
    if read_u64(&mut input)? != records {
        return Err(invalid(format!("{} lost copied records", path.display())).into());
    }
    let mut writes = 0u64;
    loop {
        let mut tag = [0u8; 1];
        input.read_exact(&mut tag)?;
        match tag[0] {
            TAG_END => break,
            TAG_PUT => {
                let key = read_part(&mut input)?;
                items.push((key, Some(read_part(&mut input)?)));
            }
            TAG_REMOVE => items.push((read_part(&mut input)?, None)),
            other => {
                return Err(invalid(format!(
                    "unknown write tag {other}: the snapshot is damaged"
                ))
                .into())
            }
        }
        writes += 1;
        flush(&mut items, false)?;
    }
    if read_u64(&mut input)? != writes {
        return Err(invalid(format!("{} lost replayed writes", path.display())).into());
    }
    if let Some(expected) = trailer.checksum {
        // The metadata and its length are covered too; then the checksum itself.
        let mut rest = vec![0u8; trailer.meta_len + 4];
        input.read_exact(&mut rest)?;
        let found = input.checksum();
        if found != expected {
            return Err(invalid(format!(
                "{} fails its checksum (crc32 {found:08x}, recorded {expected:08x}): the snapshot is damaged",
                path.display()
            ))
            .into());
        }
    }
    flush(&mut items, true)?;
    Ok(records + writes)
}

/// Reads the whole snapshot at `path` and checks it is complete, without keeping anything.
pub fn verify(path: &Path) -> io::Result<u64> {
    for_each_chunk(path, 4096, |_| Ok::<(), io::Error>(()))
}

#[cfg(test)]
mod tests {
    use crate::types::{CommittedLeaderId, LogId};
    use openraft::vote::RaftLeaderId;

    use super::*;

    fn meta() -> SnapshotMeta {
        let node = crate::types::Node {
            peer_addr: "checked:9190".into(),
            client_addr: String::new(),
        };
        let membership = crate::types::Membership::new(
            vec![std::collections::BTreeSet::from([1])],
            std::collections::BTreeMap::from([(1, node)]),
        )
        .unwrap();
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 30)),
            last_membership: crate::types::StoredMembership::new(None, membership),
        }
    }

    /// A snapshot of 100 copied records and 10 replayed writes, with a value that stands out.
    fn write_snapshot(path: &Path) {
        let mut out = Writer::create(path).unwrap();
        for i in 0..100 {
            out.record(
                format!("k{i:03}").as_bytes(),
                format!("val-{i:04}").as_bytes(),
            )
            .unwrap();
        }
        out.end_records().unwrap();
        for i in 0..10 {
            out.write(format!("w{i}").as_bytes(), Some(b"replayed"))
                .unwrap();
        }
        out.write(b"k000", None).unwrap();
        out.finish(&meta()).unwrap();
    }

    fn flip_bit(path: &Path, offset: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[offset] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn an_intact_snapshot_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        write_snapshot(&path);
        assert_eq!(verify(&path).unwrap(), 111);
        assert_eq!(read_meta(&path).unwrap(), meta());
    }

    /// One flipped bit in a value, a replayed write or the metadata is refused: `val-0500`
    /// turned into `val-0400` must not install.
    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        write_snapshot(&path);
        let bytes = std::fs::read(&path).unwrap();
        let find = |needle: &[u8]| {
            bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        let places = [
            ("a copied value", find(b"val-0050") + 5),
            ("a copied key", find(b"k077") + 2),
            ("a replayed write", find(b"replayed") + 1),
            ("the metadata", find(b"checked") + 3),
        ];
        for (what, offset) in places {
            write_snapshot(&path);
            flip_bit(&path, offset);
            let refused = verify(&path);
            assert!(
                refused.is_err(),
                "a flipped bit in {what} (offset {offset}) went unnoticed"
            );
        }
    }

    /// A file of the layout without a checksum is rewritten with one, holding the same items.
    #[test]
    fn an_unchecked_snapshot_is_upgraded_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        write_snapshot(&path);
        let items = |path: &Path| {
            let mut state = std::collections::BTreeMap::new();
            for_each_chunk(path, 7, |chunk| {
                for (k, v) in chunk {
                    match v {
                        Some(v) => state.insert(k, v),
                        None => state.remove(&k),
                    };
                }
                Ok::<(), io::Error>(())
            })
            .unwrap();
            state
        };
        let expected = items(&path);
        // The old layout: the same bytes with the old magic and no checksum before the tail.
        let mut old = std::fs::read(&path).unwrap();
        let n = old.len();
        old.drain(n - 12..n - 8);
        let n = old.len();
        old[..8].copy_from_slice(MAGIC_UNCHECKED);
        old[n - 8..].copy_from_slice(MAGIC_UNCHECKED);
        std::fs::write(&path, &old).unwrap();
        assert!(is_unchecked(&path).unwrap());
        assert_eq!(items(&path), expected, "the old layout still reads");
        upgrade(&path).unwrap();
        assert!(!is_unchecked(&path).unwrap());
        assert_eq!(read_meta(&path).unwrap(), meta());
        assert_eq!(items(&path), expected);
        flip_bit(&path, 20);
        assert!(verify(&path).is_err(), "the upgraded file is checked");
    }
}
