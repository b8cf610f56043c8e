//! Snapshot files: the whole cache at one log index, streamed to and from disk in pieces so
//! that building, sending and installing a snapshot never holds the data set in memory.
//!
//! Layout: the magic `RCSNAP01`, the metadata (`u32` length + bincode), then one record per key
//! (`u32` key length, key, `u32` value length, value), then an end marker (`u32::MAX`) and the
//! number of records (`u64`). A file cut short is detected by its missing end marker and count.
//! The same bytes travel to followers, which check them the same way before installing.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{decode, encode};
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"RCSNAP01";
const END: u32 = u32::MAX;
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

/// Writes a snapshot of `pairs` with `meta` to `path` and syncs it. Returns (records, bytes).
pub fn write<I>(path: &Path, meta: &SnapshotMeta, pairs: I) -> io::Result<(u64, u64)>
where
    I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
{
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, &file);
    let meta_bytes = encode(meta);
    out.write_all(MAGIC)?;
    out.write_all(&(meta_bytes.len() as u32).to_be_bytes())?;
    out.write_all(&meta_bytes)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    for pair in pairs {
        let (key, value) = pair.map_err(io::Error::other)?;
        for part in [key.as_ref(), value.as_ref()] {
            out.write_all(&(part.len() as u32).to_be_bytes())?;
            out.write_all(part)?;
        }
        records += 1;
        bytes += (key.len() + value.len()) as u64;
    }
    out.write_all(&END.to_be_bytes())?;
    out.write_all(&records.to_be_bytes())?;
    out.flush()?;
    drop(out);
    file.sync_all()?;
    Ok((records, bytes))
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

fn read_exact_vec(input: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    if len > MAX_PART_BYTES {
        return Err(invalid(format!(
            "a record of {len} bytes: the snapshot is damaged"
        )));
    }
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// Opens a snapshot file and reads its header.
fn open_reader(path: &Path) -> io::Result<(SnapshotMeta, BufReader<File>)> {
    let mut input = BufReader::with_capacity(BUFFER_BYTES, File::open(path)?);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid(format!(
            "{} is not a raftcache snapshot",
            path.display()
        )));
    }
    let meta_len = read_u32(&mut input)? as usize;
    let meta =
        decode(&read_exact_vec(&mut input, meta_len)?).map_err(|e| invalid(e.to_string()))?;
    Ok((meta, input))
}

/// The metadata of the snapshot file at `path`.
pub fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    open_reader(path).map(|(meta, _)| meta)
}

/// Calls `each` with the records of the snapshot at `path`, `chunk` at a time, and checks the
/// file is whole. A failure from `each` is returned as is.
pub fn for_each_chunk<E: From<io::Error>>(
    path: &Path,
    chunk: usize,
    mut each: impl FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), E>,
) -> Result<u64, E> {
    let (_, mut input) = open_reader(path)?;
    let mut pairs = Vec::with_capacity(chunk);
    let mut records = 0u64;
    loop {
        let key_len = read_u32(&mut input)?;
        if key_len == END {
            break;
        }
        let key = read_exact_vec(&mut input, key_len as usize)?;
        let value_len = read_u32(&mut input)? as usize;
        pairs.push((key, read_exact_vec(&mut input, value_len)?));
        records += 1;
        if pairs.len() == chunk {
            each(std::mem::take(&mut pairs))?;
        }
    }
    let mut count = [0u8; 8];
    input.read_exact(&mut count)?;
    if u64::from_be_bytes(count) != records {
        return Err(invalid(format!(
            "{} holds {records} records but says {}",
            path.display(),
            u64::from_be_bytes(count)
        ))
        .into());
    }
    if !pairs.is_empty() {
        each(pairs)?;
    }
    Ok(records)
}

/// Reads the whole snapshot at `path` and checks it is complete, without keeping anything.
pub fn verify(path: &Path) -> io::Result<u64> {
    for_each_chunk(path, 4096, |_| Ok::<(), io::Error>(()))
}
