//! The Raft log's files: append-only segment files of checksummed records, one record per log
//! entry, and an in-memory index of where each entry lives.
//!
//! Why not sled: every sled flush is a job on sled's I/O thread pool, whose each job wakes all
//! of its idle threads; with one flush per batch on every node, those wake-ups cost more CPU
//! than the rest of a write's path (docs/benchmarks.md). A log is the simplest durable
//! structure there is: records are written at the end of the current segment and made durable
//! with one `fdatasync`, by the caller, on its own schedule (`LogStore` does it on one thread).
//!
//! A segment is named after the index of its first entry (`00000000000000000042.seg`) and
//! holds records of consecutive indexes: `[payload length: u32][crc32 of index and payload:
//! u32][index: u64][payload]`, integers little-endian. On open every segment is read and
//! checked: a record cut short or failing its checksum at the very end of the last segment is
//! a write that never finished (a crash before its `fdatasync`, so never acknowledged) and is
//! cut off; anything else that does not check out is damage, and the log refuses to open.
//!
//! Purging deletes whole segments behind the purge point (the caller has recorded the point
//! durably first, so entries of a segment that outlives a crash are simply skipped). Truncating
//! the end cuts the segment holding the first removed entry and deletes the ones after it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes before each record's payload: length, checksum, index.
const HEADER_BYTES: u64 = 16;
/// The largest payload a record may claim; a larger claim is damage, not an entry.
const MAX_RECORD_BYTES: u64 = 1 << 30;
const SUFFIX: &str = ".seg";

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The files hold something no crash can leave behind.
    #[error("{0}")]
    Damaged(String),
}

/// Where one entry's record lives.
#[derive(Debug, Clone, Copy)]
struct Location {
    /// The segment, by the index it is named after.
    segment: u64,
    /// Offset of the record's header in the segment.
    offset: u64,
    /// Payload length.
    len: u32,
}

impl Location {
    fn end(&self) -> u64 {
        self.offset + HEADER_BYTES + self.len as u64
    }
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of whole records in the file.
    len: u64,
    /// Index of the entry that would follow its last record.
    next: u64,
}

/// What a caller must make durable before it reports the last appends done.
#[derive(Default)]
pub struct SyncWork {
    /// Segments written since the last sync.
    pub files: Vec<Arc<File>>,
    /// A segment was created or deleted: the directory needs a sync too.
    pub dir: Option<PathBuf>,
}

impl SyncWork {
    /// Makes the work durable: `fdatasync` of each segment, then of the directory if needed.
    pub fn sync(&self) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Records encoded for one segment, not yet written.
struct Group {
    segment: u64,
    first: u64,
    bytes: Vec<u8>,
    locations: Vec<Location>,
}

/// The segment files of one log and the index of their entries.
pub struct SegmentLog {
    dir: PathBuf,
    /// A segment that reaches this size is closed, and the next append starts a new one.
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// The entries from `first_index` on, in order.
    locations: VecDeque<Location>,
    /// Index of `locations[0]`, or of the next entry when the log is empty.
    first_index: u64,
    /// Written since the last `take_sync_work`.
    unsynced: SyncWork,
}

impl SegmentLog {
    /// Opens the log in `dir` (creating it), skipping entries at or below `purged`. Returns the
    /// log and the number of bytes cut off the end (an append a crash left unfinished).
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        purged: Option<u64>,
    ) -> Result<(SegmentLog, u64), SegmentError> {
        std::fs::create_dir_all(dir)?;
        let bases = list_segments(dir)?;
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            locations: VecDeque::new(),
            first_index: purged.map_or(0, |p| p + 1),
            unsynced: SyncWork::default(),
        };
        let mut cut_bytes = 0;
        let mut first_kept = None;
        for (i, &base) in bases.iter().enumerate() {
            if let Some(before) = log.segments.values().next_back().filter(|s| s.next != base) {
                return Err(damaged(format!(
                    "segment {} starts at index {base}, but the one before it ends at {}",
                    segment_name(base),
                    before.next.wrapping_sub(1)
                )));
            }
            let scanned = read_segment(dir, base, i + 1 == bases.len())?;
            cut_bytes += scanned.cut_bytes;
            for (k, (offset, len)) in scanned.records.into_iter().enumerate() {
                let index = base + k as u64;
                if index < log.first_index {
                    continue; // purged before a crash deleted its segment
                }
                first_kept.get_or_insert(index);
                log.locations.push_back(Location {
                    segment: base,
                    offset,
                    len,
                });
            }
            log.segments.insert(base, scanned.segment);
        }
        match (first_kept, purged) {
            (Some(first), None) => log.first_index = first,
            (Some(first), Some(p)) if first != p + 1 => {
                return Err(damaged(format!(
                    "the log was purged up to index {p}, but its first entry is {first}"
                )))
            }
            _ => {}
        }
        log.remove_unused_segments()?;
        Ok((log, cut_bytes))
    }

    /// Index of the first entry held (or of the next one, when empty).
    #[cfg(test)]
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Index of the last entry held.
    pub fn last_index(&self) -> Option<u64> {
        (!self.locations.is_empty()).then(|| self.first_index + self.locations.len() as u64 - 1)
    }

    /// Index the next appended entry must have (when the log is empty: any from it on).
    fn next_index(&self) -> u64 {
        self.last_index().map_or(self.first_index, |l| l + 1)
    }

    /// Appends records `(index, payload)`; indexes must follow the last one held (any index
    /// from `first_index` on, when the log is empty). Readable at once; durable only after the
    /// caller synced what `take_sync_work` returns.
    pub fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut group: Option<Group> = None;
        for (index, payload) in records {
            let expected = match &group {
                Some(g) => g.first + g.locations.len() as u64,
                None => self.next_index(),
            };
            let starts_empty_log = self.locations.is_empty() && group.is_none();
            if *index != expected && !(starts_empty_log && *index > expected) {
                return Err(io::Error::other(format!(
                    "log append out of order: index {index}, expected {expected}"
                )));
            }
            let full = group.as_ref().is_some_and(|g| {
                self.segments[&g.segment].len + g.bytes.len() as u64 >= self.segment_bytes
            });
            if group.is_none() || full {
                if let Some(g) = group.take() {
                    self.write_group(g)?;
                }
                group = Some(Group {
                    segment: self.segment_to_append(*index)?,
                    first: *index,
                    bytes: Vec::new(),
                    locations: Vec::new(),
                });
            }
            let g = group.as_mut().expect("a group is open");
            let offset = self.segments[&g.segment].len + g.bytes.len() as u64;
            encode_record(&mut g.bytes, *index, payload);
            g.locations.push(Location {
                segment: g.segment,
                offset,
                len: payload.len() as u32,
            });
        }
        match group {
            Some(g) => self.write_group(g),
            None => Ok(()),
        }
    }

    /// The segment to append entry `index` to: the last one if it ends right before `index`
    /// and has room, else a new one.
    fn segment_to_append(&mut self, index: u64) -> io::Result<u64> {
        if let Some((&base, last)) = self.segments.iter().next_back() {
            if last.next == index && last.len < self.segment_bytes {
                return Ok(base);
            }
        }
        let path = self.dir.join(segment_name(index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let segment = Segment {
            file: Arc::new(file),
            path,
            len: 0,
            next: index,
        };
        self.segments.insert(index, segment);
        self.unsynced.dir = Some(self.dir.clone());
        Ok(index)
    }

    /// Writes a group of records to its segment and indexes them.
    fn write_group(&mut self, group: Group) -> io::Result<()> {
        let segment = self
            .segments
            .get_mut(&group.segment)
            .expect("records go to an open segment");
        segment.file.write_all_at(&group.bytes, segment.len)?;
        segment.len += group.bytes.len() as u64;
        segment.next = group.first + group.locations.len() as u64;
        if !self
            .unsynced
            .files
            .iter()
            .any(|f| Arc::ptr_eq(f, &segment.file))
        {
            self.unsynced.files.push(segment.file.clone());
        }
        if self.locations.is_empty() {
            self.first_index = group.first;
        }
        self.locations.extend(group.locations);
        Ok(())
    }

    /// What must be synced for everything appended so far to be durable.
    pub fn take_sync_work(&mut self) -> SyncWork {
        std::mem::take(&mut self.unsynced)
    }

    /// The payloads of entries `start..end` that the log holds (stopping at the first index it
    /// does not hold), each checked against its checksum.
    pub fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<Vec<u8>>> {
        let start = start.max(self.first_index);
        let end = end.min(self.next_index());
        let mut out = Vec::new();
        let mut index = start;
        while index < end {
            // One read per run of records in the same segment.
            let first = self.locations[(index - self.first_index) as usize];
            let mut stop = index + 1;
            while stop < end
                && self.locations[(stop - self.first_index) as usize].segment == first.segment
            {
                stop += 1;
            }
            let last = self.locations[(stop - 1 - self.first_index) as usize];
            let mut buf = vec![0u8; (last.end() - first.offset) as usize];
            self.segments[&first.segment]
                .file
                .read_exact_at(&mut buf, first.offset)?;
            let mut at = 0usize;
            for i in index..stop {
                let (payload, used) = decode_record(&buf[at..], i)?;
                out.push(payload);
                at += used;
            }
            index = stop;
        }
        Ok(out)
    }

    /// Removes the entries from `index` on, durably.
    pub fn truncate(&mut self, index: u64) -> io::Result<()> {
        let index = index.max(self.first_index);
        let keep = (index - self.first_index) as usize;
        if keep >= self.locations.len() {
            return Ok(());
        }
        let cut = self.locations[keep];
        self.locations.truncate(keep);
        let doomed: Vec<u64> = self
            .segments
            .range(cut.segment + 1..)
            .map(|(b, _)| *b)
            .collect();
        for base in doomed {
            self.remove_segment(base)?;
        }
        if cut.offset == 0 {
            self.remove_segment(cut.segment)?;
        } else {
            let segment = self.segments.get_mut(&cut.segment).expect("held");
            segment.file.set_len(cut.offset)?;
            segment.file.sync_data()?;
            segment.len = cut.offset;
            segment.next = index;
        }
        if let Some(dir) = self.unsynced.dir.take() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Forgets the entries up to and including `index` and deletes the segments that hold only
    /// those. The caller has made the purge point durable first.
    pub fn purge(&mut self, index: u64) -> io::Result<()> {
        if index < self.first_index {
            return Ok(());
        }
        let dropped = ((index + 1 - self.first_index) as usize).min(self.locations.len());
        self.locations.drain(..dropped);
        self.first_index = index + 1;
        self.remove_unused_segments()
    }

    /// Deletes the segments no kept entry lives in (all of them when the log is empty).
    fn remove_unused_segments(&mut self) -> io::Result<()> {
        let used_from = self.locations.front().map(|l| l.segment);
        let doomed: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|base| used_from.is_none_or(|used| *base < used))
            .collect();
        for base in doomed {
            self.remove_segment(base)?;
        }
        Ok(())
    }

    fn remove_segment(&mut self, base: u64) -> io::Result<()> {
        if let Some(segment) = self.segments.remove(&base) {
            self.unsynced
                .files
                .retain(|f| !Arc::ptr_eq(f, &segment.file));
            std::fs::remove_file(&segment.path)?;
            self.unsynced.dir = Some(self.dir.clone());
        }
        Ok(())
    }
}

fn damaged(reason: String) -> SegmentError {
    SegmentError::Damaged(reason)
}

fn segment_name(base: u64) -> String {
    format!("{base:020}{SUFFIX}")
}

/// The bases of the segment files in `dir`, in order.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(SUFFIX).and_then(|n| n.parse().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(out: &mut Vec<u8>, index: u64, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(index, payload).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the record of entry `index` at the start of `buf`: its payload and its size.
fn decode_record(buf: &[u8], index: u64) -> io::Result<(Vec<u8>, usize)> {
    let bad = |what: &str| io::Error::other(format!("log entry {index}: {what}"));
    let header = buf
        .get(..HEADER_BYTES as usize)
        .ok_or_else(|| bad("record cut short"))?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let found = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let payload = buf
        .get(HEADER_BYTES as usize..HEADER_BYTES as usize + len)
        .ok_or_else(|| bad("record cut short"))?;
    if found != index || checksum(found, payload) != crc {
        return Err(bad("checksum mismatch: the log file is damaged"));
    }
    Ok((payload.to_vec(), HEADER_BYTES as usize + len))
}

/// One segment as read on open.
struct Scanned {
    segment: Segment,
    /// Each record's offset and payload length.
    records: Vec<(u64, u32)>,
    /// Bytes of an unfinished record cut off the end.
    cut_bytes: u64,
}

/// Reads and checks one segment. Only the last segment may end in an unfinished record, which
/// is then cut off.
fn read_segment(dir: &Path, base: u64, last: bool) -> Result<Scanned, SegmentError> {
    let path = dir.join(segment_name(base));
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let size = file.metadata()?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, &file);
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER_BYTES as usize];
    let mut payload = Vec::new();
    let problem = loop {
        if offset == size {
            break None;
        }
        if size - offset < HEADER_BYTES {
            break Some("a record header cut short".to_string());
        }
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let expected = base + records.len() as u64;
        if len > MAX_RECORD_BYTES || size - offset - HEADER_BYTES < len {
            break Some(format!("the record of entry {expected} cut short"));
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        if index != expected || checksum(index, &payload) != crc {
            break Some(format!("the record of entry {expected} fails its checksum"));
        }
        records.push((offset, len as u32));
        offset += HEADER_BYTES + len;
    };
    if let Some(problem) = problem {
        if !last {
            return Err(damaged(format!(
                "{}: {problem}, at byte {offset} of {size}",
                path.display()
            )));
        }
        tracing::warn!(segment = %path.display(), offset, size, %problem, "cutting off an unfinished append at the end of the log");
        file.set_len(offset)?;
        file.sync_all()?;
    }
    let next = base + records.len() as u64;
    let segment = Segment {
        file: Arc::new(file),
        path,
        len: offset,
        next,
    };
    Ok(Scanned {
        segment,
        records,
        cut_bytes: size - offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u64) -> Vec<u8> {
        format!("entry {index} {}", "x".repeat((index % 7) as usize)).into_bytes()
    }

    fn append(log: &mut SegmentLog, range: std::ops::RangeInclusive<u64>) {
        let records: Vec<_> = range.map(|i| (i, payload(i))).collect();
        log.append(&records).unwrap();
    }

    fn all(log: &SegmentLog) -> Vec<Vec<u8>> {
        log.read_range(0, u64::MAX).unwrap()
    }

    #[test]
    fn entries_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 200, None).unwrap();
        append(&mut log, 0..=40);
        append(&mut log, 41..=41);
        assert!(log.segments.len() > 3, "small segments rotate");
        let (log, cut) = SegmentLog::open(dir.path(), 200, None).unwrap();
        assert_eq!(cut, 0);
        assert_eq!(log.first_index(), 0);
        assert_eq!(log.last_index(), Some(41));
        assert_eq!(all(&log), (0..=41).map(payload).collect::<Vec<_>>());
        assert_eq!(
            log.read_range(10, 13).unwrap(),
            vec![payload(10), payload(11), payload(12)]
        );
    }

    #[test]
    fn an_unfinished_append_at_the_end_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20, None).unwrap();
        append(&mut log, 1..=10);
        let path = dir.path().join(segment_name(1));
        let size = std::fs::metadata(&path).unwrap().len();
        drop(log);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(size - 3).unwrap();
        let (log, cut) = SegmentLog::open(dir.path(), 1 << 20, None).unwrap();
        assert!(cut > 0);
        assert_eq!(log.last_index(), Some(9));
    }

    #[test]
    fn a_damaged_record_before_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 100, None).unwrap();
        append(&mut log, 1..=30);
        drop(log);
        let path = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES as usize] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        match SegmentLog::open(dir.path(), 100, None) {
            Err(SegmentError::Damaged(reason)) => assert!(reason.contains("checksum"), "{reason}"),
            other => panic!(
                "expected damage, got {:?}",
                other.map(|(l, c)| (l.last_index(), c))
            ),
        }
    }

    #[test]
    fn truncate_and_purge_keep_the_right_entries_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 150, None).unwrap();
        append(&mut log, 5..=50);
        log.truncate(31).unwrap();
        assert_eq!(log.last_index(), Some(30));
        append(&mut log, 31..=35);
        log.purge(12).unwrap();
        assert_eq!(log.first_index(), 13);
        let expected: Vec<_> = (13..=35).map(payload).collect();
        assert_eq!(all(&log), expected);
        drop(log);
        let (log, _) = SegmentLog::open(dir.path(), 150, Some(12)).unwrap();
        assert_eq!(log.first_index(), 13);
        assert_eq!(all(&log), expected);
    }

    #[test]
    fn purging_past_the_end_empties_the_log_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 150, None).unwrap();
        append(&mut log, 0..=9);
        log.purge(100).unwrap();
        assert_eq!(log.last_index(), None);
        assert!(list_segments(dir.path()).unwrap().is_empty());
        append(&mut log, 101..=102);
        drop(log);
        let (mut log, _) = SegmentLog::open(dir.path(), 150, Some(100)).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (101, Some(102)));
        assert!(
            log.append(&[(104, payload(104))]).is_err(),
            "gaps are refused"
        );
    }

    #[test]
    fn a_log_that_starts_after_its_purge_point_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20, None).unwrap();
        append(&mut log, 20..=25);
        drop(log);
        assert!(matches!(
            SegmentLog::open(dir.path(), 1 << 20, Some(10)),
            Err(SegmentError::Damaged(_))
        ));
    }
}
