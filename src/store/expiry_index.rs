//! `sm_expiry`: the keys of `sm_data` that carry an expiry, ordered by it, so that the leader's
//! expiry sweep reads only keys whose expiry has passed instead of decoding every value held.
//!
//! An entry's key is the expiry (8 bytes, big-endian milliseconds: byte order is time order)
//! followed by the data key; its value is empty. The index is derived from `sm_data` and is
//! never sent in a snapshot:
//! - applies keep it in step with the values, in the same journaled run (`apply.rs` writes an
//!   entry's insert and removal for every key whose expiry changes); a key without expiry,
//!   written or removed, never touches it;
//! - installing a snapshot rebuilds it (`rebuild`), under the install marker;
//! - a data dir written before the index existed lacks `KEY_EXPIRY_BUILT` (`schema.rs`) in `sm_meta` and gets it built
//!   when it is opened.

use super::schema::{is_internal, read_u64, Usage};
use super::state_machine::ApplyLock;
use super::value;

/// The index key of `key` expiring at `at_ms`.
pub(super) fn index_key(at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The expiry and the data key of an index key.
fn split(index_key: &[u8]) -> (u64, &[u8]) {
    let (at, key) = index_key.split_at(8.min(index_key.len()));
    (read_u64(at), key)
}

/// Replaces the index with one built from `data` in a single pass, and returns what the pass
/// counted on the way: the keys and bytes held, and how many keys carry an expiry. Not atomic:
/// the caller marks the index built only after it returned (and was flushed).
pub(super) fn rebuild(data: &sled::Tree, index: &sled::Tree) -> Result<(Usage, u64), sled::Error> {
    index.clear()?;
    let mut usage = Usage::default();
    let mut indexed = 0;
    for pair in data.iter() {
        let (key, raw) = pair?;
        if is_internal(&key) {
            usage.sessions += 1;
            continue;
        }
        let (at, len) = value::peek(&raw);
        usage.keys += 1;
        usage.bytes += (key.len() + len) as u64;
        if let Some(at) = at {
            index.insert(index_key(at, &key), &[])?;
            indexed += 1;
        }
    }
    Ok((usage, indexed))
}

/// Up to `limit` keys of `data` expired at `now_ms`, soonest expiry first. Only index entries
/// due at `now_ms` are read. An entry that does not match its key's value (none should; a data
/// dir last written by an older raftcache could hold some) is dropped rather than returned.
pub(super) fn due(
    data: &sled::Tree,
    index: &sled::Tree,
    applies: &ApplyLock,
    limit: usize,
    now_ms: u64,
) -> Result<Vec<String>, sled::Error> {
    let mut expired = Vec::new();
    let mut stale = Vec::new();
    let until = ..now_ms.saturating_add(1).to_be_bytes().to_vec();
    for entry in index.range(until).keys().take(limit) {
        let entry = entry?;
        let (_, key) = split(&entry);
        // The entry is due, so a key that still expires at its time is expired; a key that
        // expires later, or no longer at all, has (or needs) no entry at this time.
        match data.get(key)?.and_then(|raw| value::peek(&raw).0) {
            Some(held) if held <= now_ms => expired.push(String::from_utf8_lossy(key).into_owned()),
            _ => stale.push(entry),
        }
    }
    if !stale.is_empty() {
        drop_stale(data, index, applies, &stale)?;
    }
    Ok(expired)
}

/// Removes the entries of `stale` that still do not match their key, checked again under the
/// apply lock: an apply cannot run meanwhile and lose an entry it just wrote.
fn drop_stale(
    data: &sled::Tree,
    index: &sled::Tree,
    applies: &ApplyLock,
    stale: &[sled::IVec],
) -> Result<(), sled::Error> {
    let _no_apply = applies.read().expect("apply lock");
    let mut dropped = 0;
    for entry in stale {
        let (at, key) = split(entry);
        if data.get(key)?.and_then(|raw| value::peek(&raw).0) != Some(at) {
            index.remove(entry)?;
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "expiry index entries that did not match their keys dropped"
        );
    }
    Ok(())
}

/// Index entries as tests read them: (expiry, key).
#[cfg(test)]
pub(super) type Entries = Vec<(u64, String)>;

/// The entries of an index, in order.
#[cfg(test)]
pub(super) fn entries(index: &sled::Tree) -> Entries {
    index
        .iter()
        .keys()
        .map(|entry| {
            let entry = entry.unwrap();
            let (at, key) = split(&entry);
            (at, String::from_utf8(key.to_vec()).unwrap())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::store::state_machine::tests::entry;
    use crate::store::{self, StateMachine, StoreOptions};
    use crate::types::{Expiry, Request};

    fn index(sm: &StateMachine) -> Entries {
        entries(sm.expiry_tree())
    }

    fn put(key: &str, expiry: Expiry) -> Request {
        Request::Put {
            key: key.into(),
            value: "1".into(),
            expiry,
        }
    }

    async fn open(dir: &std::path::Path) -> (store::LogStore, StateMachine) {
        store::open(dir, 1, None, &StoreOptions::default())
            .await
            .unwrap()
    }
    #[tokio::test]
    async fn the_expiry_index_follows_every_change_of_a_keys_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(&dir.path().join("a")).await;
        let mut index_at = 0;
        let mut step = |requests| {
            index_at += 1;
            entry(index_at, requests)
        };
        let steps: Vec<(Vec<Request>, Entries)> = vec![
            (
                vec![put("k", Expiry::AtMs(5_000))],
                vec![(5_000, "k".into())],
            ),
            // Overwritten with another expiry: the old entry goes.
            (
                vec![put("k", Expiry::AtMs(9_000))],
                vec![(9_000, "k".into())],
            ),
            // An increment keeps the key's expiry, and its one entry.
            (
                vec![Request::Increment {
                    key: "k".into(),
                    delta: 2,
                }],
                vec![(9_000, "k".into())],
            ),
            // Overwritten without expiry: no entry left.
            (vec![put("k", Expiry::Never)], vec![]),
            (
                vec![put("r", Expiry::AtMs(7_000)), put("e", Expiry::AtMs(8_000))],
                vec![(7_000, "r".into()), (8_000, "e".into())],
            ),
            (
                vec![Request::Remove { key: "r".into() }],
                vec![(8_000, "e".into())],
            ),
            (
                vec![Request::Evict {
                    keys: vec!["e".into()],
                }],
                vec![],
            ),
            (vec![put("x", Expiry::AtMs(500))], vec![(500, "x".into())]),
            (
                vec![Request::Expire {
                    keys: vec!["x".into()],
                }],
                vec![],
            ),
        ];
        for (requests, expected) in steps {
            let described = format!("{requests:?}");
            sm.apply_entries(vec![step(requests)]).await.unwrap();
            assert_eq!(index(&sm), expected, "after {described}");
        }
        assert_eq!(sm.reader().stats().unwrap().keys, 1, "only k is left");
    }

    #[tokio::test]
    async fn the_sweep_reads_expired_keys_from_the_index_not_from_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(&dir.path().join("a")).await;
        let mut requests: Vec<Request> = (0..5_000)
            .map(|i| put(&format!("plain{i}"), Expiry::Never))
            .collect();
        requests.push(put("late", Expiry::AtMs(3_000)));
        requests.push(put("b-soon", Expiry::AtMs(1_500)));
        requests.push(put("a-soon", Expiry::AtMs(1_200)));
        sm.apply_entries(vec![entry(1, requests)]).await.unwrap();
        assert_eq!(index(&sm).len(), 3, "keys without expiry are not indexed");
        let reader = sm.reader();
        assert_eq!(
            reader.expired_keys(10, 1_199).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            reader.expired_keys(1, 2_000).unwrap(),
            ["a-soon"],
            "soonest first"
        );
        assert_eq!(
            reader.expired_keys(10, 2_000).unwrap(),
            ["a-soon", "b-soon"]
        );
        assert_eq!(
            reader.expired_keys(10, 3_000).unwrap(),
            ["a-soon", "b-soon", "late"],
            "due from its expiry on"
        );
        // An entry that no longer matches its key is dropped, not returned.
        sm.expiry_tree()
            .insert(index_key(100, b"plain7"), &[])
            .unwrap();
        sm.expiry_tree()
            .insert(index_key(100, b"missing"), &[])
            .unwrap();
        assert_eq!(reader.expired_keys(10, 1_300).unwrap(), ["a-soon"]);
        assert_eq!(index(&sm).len(), 3, "the stale entries are gone");
    }

    #[tokio::test]
    async fn a_snapshot_install_rebuilds_the_expiry_index() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut source) = open(&dir.path().join("a")).await;
        let requests = (0..3_000)
            .map(|i| match i % 3 {
                0 => put(&format!("k{i}"), Expiry::AtMs(10_000 + i)),
                _ => put(&format!("k{i}"), Expiry::Never),
            })
            .collect();
        source
            .apply_entries(vec![entry(1, requests)])
            .await
            .unwrap();
        let mut builder = source.get_snapshot_builder().await;
        let built = builder.build_snapshot().await.unwrap();

        let (_log, mut target) = open(&dir.path().join("b")).await;
        target
            .apply_entries(vec![entry(
                1,
                vec![put("k0", Expiry::AtMs(1)), put("old", Expiry::AtMs(2))],
            )])
            .await
            .unwrap();
        let mut bytes = Vec::new();
        let mut current = source.get_current_snapshot().await.unwrap().unwrap();
        current.snapshot.read_to_end(&mut bytes).await.unwrap();
        let mut file = target.inbox().begin().await.unwrap();
        file.write_all(&bytes).await.unwrap();
        target.install_snapshot(&built.meta, file).await.unwrap();
        assert_eq!(index(&target).len(), 1_000);
        assert_eq!(index(&target), index(&source));
    }
}
