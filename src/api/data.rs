//! The cache methods beyond get/put/remove: `get_many`, `put_many`, `remove_many`,
//! `put_if_absent`, `compare_and_put`, `increment`, `scan`, `stats`, the writes with
//! `WriteOptions` (`put_with`, ..., `put_bytes`), `get_bytes` and `watch`. Each checks its
//! arguments against the limits here; the writes are decided by the state machine when it
//! applies them (`store/apply.rs`), a tracked one at most once (`store/sessions.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::passes::{Call, Outcome, Write};
use super::{
    invalid, read_options, route_error, to_wire, ttl_clock, ttl_left, unexpected, user_error,
    CacheApi, RouteError, Written,
};
use crate::gen::cache::{
    ByteEntry, CacheEntry, CacheStats, Compacted, EventKind as WireKind, ReadOptions, WatchEvent,
    WatchResult, WriteOptions, WriteResult,
};
use crate::store::history::{EventKind, Position, Read};
use crate::types::{Item, Request, Response, SessionLimits, SessionRequest};

impl CacheApi {
    pub(super) async fn execute_data(&self, call: Call) -> Outcome {
        match call {
            Call::GetMany { keys, options } => Outcome::Entries(self.get_many(keys, options).await),
            Call::PutMany {
                entries, options, ..
            } => Outcome::Write(self.put_many(entries, options).await),
            Call::RemoveMany { keys, options, .. } => {
                Outcome::Write(self.remove_many(keys, options).await)
            }
            Call::Write { write, options } => {
                let method = write.method();
                Outcome::Write(match self.write_request(write) {
                    Ok(request) => self.write_with(request, &options, method).await,
                    Err(e) => Err(e),
                })
            }
            Call::GetBytes { key, options } => {
                Outcome::ByteEntry(self.get_bytes(key, options).await)
            }
            Call::Watch {
                prefix,
                after_index,
                max_events,
                timeout_ms,
                after_offset,
            } => Outcome::Watch(
                self.watch(prefix, after_index, max_events, timeout_ms, after_offset)
                    .await,
            ),
            Call::PutIfAbsent { entry } => Outcome::Flag(self.put_if_absent(entry).await),
            Call::CompareAndPut {
                key,
                expected,
                entry,
            } => Outcome::Flag(self.compare_and_put(key, expected, entry).await),
            Call::Increment { key, delta } => Outcome::Index(self.increment(key, delta).await),
            Call::Scan {
                prefix,
                start_after,
                limit,
                options,
            } => Outcome::Entries(self.scan(prefix, start_after, limit, options).await),
            Call::Stats => Outcome::Stats(self.stats()),
            _ => unreachable!("execute handles the other calls"),
        }
    }

    pub(super) fn count_reads(&self, reads: u64, hits: u64) {
        self.reads.hits.fetch_add(hits, Ordering::Relaxed);
        self.reads.misses.fetch_add(reads - hits, Ordering::Relaxed);
    }

    /// Refuses more than `--max-batch-items` keys or entries in one call.
    fn check_items(&self, count: usize, method: &str) -> thrift::Result<()> {
        if count > self.limits.max_batch_items {
            return Err(invalid(format!(
                "{method} got {count} items; the limit is {} (--max-batch-items)",
                self.limits.max_batch_items
            )));
        }
        Ok(())
    }

    fn item(&self, entry: CacheEntry) -> thrift::Result<Item> {
        let expiry = self.check_entry(&entry)?;
        Ok(Item {
            key: entry.key,
            value: entry.value.into_bytes(),
            expiry,
        })
    }

    /// The request a write with `WriteOptions` makes, its arguments checked.
    fn write_request(&self, write: Write) -> thrift::Result<Request> {
        Ok(match write {
            Write::Put(entry) => {
                let item = self.item(entry)?;
                Request::Put {
                    key: item.key,
                    value: item.value,
                    expiry: item.expiry,
                }
            }
            Write::PutBytes(entry) => {
                let expiry = self.check_write(&entry.key, entry.value.len(), entry.ttl_ms)?;
                Request::Put {
                    key: entry.key,
                    value: entry.value,
                    expiry,
                }
            }
            Write::Remove(key) => {
                self.check_key(&key)?;
                Request::Remove { key }
            }
            Write::PutIfAbsent(entry) => Request::PutIfAbsent {
                item: self.item(entry)?,
            },
            Write::CompareAndPut {
                key,
                expected,
                entry,
            } => self.compare_and_put_request(key, expected, entry)?,
            Write::Increment { key, delta } => {
                self.check_key(&key)?;
                Request::Increment { key, delta }
            }
        })
    }

    /// Carries out `request` with the client's `WriteOptions`; its `WriteResult`.
    async fn write_with(
        &self,
        request: Request,
        options: &WriteOptions,
        method: &str,
    ) -> thrift::Result<WriteResult> {
        let written = self.write(tracked(request, options)?).await?;
        to_write_result(written, method)
    }

    async fn get_bytes(&self, key: String, options: ReadOptions) -> thrift::Result<ByteEntry> {
        let (consistency, min_index) = read_options(&options)?;
        let (entry, ttl_from) = self.read_live(key, consistency, min_index).await?;
        Ok(ByteEntry {
            key: entry.key,
            value: entry.value,
            ttl_ms: ttl_left(entry.expires_at_ms, ttl_from),
        })
    }

    /// The changes after a position, from this node's history, waiting for the first one.
    async fn watch(
        &self,
        prefix: String,
        after_index: i64,
        max_events: i32,
        timeout_ms: i32,
        after_offset: i32,
    ) -> thrift::Result<WatchResult> {
        self.check_key(&prefix)?;
        let after_index = u64::try_from(after_index).map_err(|_| {
            invalid(format!(
                "after_index is {after_index}; it must be 0 or more"
            ))
        })?;
        let after_offset = u32::try_from(after_offset).map_err(|_| {
            invalid(format!(
                "after_offset is {after_offset}; it must be 0 or more"
            ))
        })?;
        if max_events <= 0 {
            return Err(invalid(format!(
                "max_events is {max_events}; it must be positive"
            )));
        }
        let max = (max_events as usize).min(self.limits.max_scan_items);
        let wait =
            Duration::from_millis(timeout_ms.max(0) as u64).min(self.router.request_deadline());
        let state = self.router.state();
        let history = state.history();
        let from = Position::from_wire(after_index, after_offset);
        match history.wait_read(&prefix, from, max, wait).await {
            Read::Compacted { oldest_index } => Err(user_error(Compacted {
                message: format!(
                    "this node no longer holds the changes after index {after_index} (it keeps --watch-history-bytes of them since it started or installed a snapshot); read the keys again and watch from index {oldest_index} or later"
                ),
                oldest_index: oldest_index as i64,
            })),
            Read::Events { events, resume } => {
                let (resume_index, resume_offset) = resume.to_wire();
                Ok(WatchResult {
                    events: events.into_iter().map(to_wire_event).collect(),
                    resume_index: resume_index as i64,
                    resume_offset: resume_offset as i32,
                })
            }
        }
    }

    async fn get_many(
        &self,
        keys: Vec<String>,
        options: ReadOptions,
    ) -> thrift::Result<Vec<CacheEntry>> {
        self.check_items(keys.len(), "get_many")?;
        for key in &keys {
            self.check_key(key)?;
        }
        let state = self.readable_with(&options).await?;
        let now_ms = state.log_clock().now_ms();
        let ttl_from = ttl_clock(state);
        let found: Vec<CacheEntry> = state
            .entries(&keys, now_ms)
            .map_err(storage)?
            .into_iter()
            .flatten()
            .map(|e| to_wire(e, ttl_from))
            .collect::<thrift::Result<_>>()?;
        self.count_reads(keys.len() as u64, found.len() as u64);
        self.router.note_reads(keys.iter().map(String::as_str));
        Ok(found)
    }

    async fn put_many(
        &self,
        entries: Vec<CacheEntry>,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.check_items(entries.len(), "put_many")?;
        let bytes: usize = entries.iter().map(|e| e.key.len() + e.value.len()).sum();
        if bytes > self.limits.max_batch_bytes {
            return Err(invalid(format!(
                "put_many got {bytes} bytes of keys and values; the limit is {} (--max-batch-bytes)",
                self.limits.max_batch_bytes
            )));
        }
        let items = entries
            .into_iter()
            .map(|e| self.item(e))
            .collect::<thrift::Result<Vec<_>>>()?;
        self.write_with(Request::PutMany { items }, &options, "put_many")
            .await
    }

    async fn remove_many(
        &self,
        keys: Vec<String>,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.check_items(keys.len(), "remove_many")?;
        for key in &keys {
            self.check_key(key)?;
        }
        self.write_with(Request::RemoveMany { keys }, &options, "remove_many")
            .await
    }

    async fn put_if_absent(&self, entry: CacheEntry) -> thrift::Result<bool> {
        let item = self.item(entry)?;
        match self.write(Request::PutIfAbsent { item }).await?.response {
            Response::Written(wrote) => Ok(wrote),
            other => Err(unexpected(other, "put_if_absent")),
        }
    }

    fn compare_and_put_request(
        &self,
        key: String,
        expected: String,
        entry: CacheEntry,
    ) -> thrift::Result<Request> {
        if key != entry.key {
            return Err(invalid(format!(
                "compare_and_put of key {key:?} got an entry for key {:?}; they must be the same",
                entry.key
            )));
        }
        let item = self.item(entry)?;
        Ok(Request::CompareAndPut { expected, item })
    }

    async fn compare_and_put(
        &self,
        key: String,
        expected: String,
        entry: CacheEntry,
    ) -> thrift::Result<bool> {
        let request = self.compare_and_put_request(key, expected, entry)?;
        match self.write(request).await?.response {
            Response::Written(wrote) => Ok(wrote),
            other => Err(unexpected(other, "compare_and_put")),
        }
    }

    async fn increment(&self, key: String, delta: i64) -> thrift::Result<i64> {
        self.check_key(&key)?;
        match self
            .write(Request::Increment { key, delta })
            .await?
            .response
        {
            Response::Incremented(value) => Ok(value),
            other => Err(unexpected(other, "increment")),
        }
    }

    async fn scan(
        &self,
        prefix: String,
        start_after: String,
        limit: i32,
        options: ReadOptions,
    ) -> thrift::Result<Vec<CacheEntry>> {
        self.check_key(&prefix)?;
        self.check_key(&start_after)?;
        if limit <= 0 {
            return Err(invalid(format!(
                "scan limit is {limit}; it must be positive"
            )));
        }
        let limit = (limit as usize).min(self.limits.max_scan_items);
        let state = self.readable_with(&options).await?;
        let now_ms = state.log_clock().now_ms();
        let entries = state
            .scan(&prefix, &start_after, limit, now_ms)
            .map_err(storage)?;
        let ttl_from = ttl_clock(state);
        entries.into_iter().map(|e| to_wire(e, ttl_from)).collect()
    }

    fn stats(&self) -> thrift::Result<CacheStats> {
        let state = self.router.state();
        let replica = state.stats().map_err(storage)?;
        let applied = self.router.applied_index();
        Ok(CacheStats {
            keys: replica.keys as i64,
            bytes: replica.bytes as i64,
            hits: self.reads.hits.load(Ordering::Relaxed) as i64,
            misses: self.reads.misses.load(Ordering::Relaxed) as i64,
            expired: replica.expired as i64,
            evicted: replica.evicted as i64,
            applied_index: applied as i64,
        })
    }
}

fn storage(e: sled::Error) -> thrift::Error {
    route_error(RouteError::Storage(e.to_string()))
}

/// The request `options` ask for: tracked (applied at most once) when they carry a client id.
fn tracked(request: Request, options: &WriteOptions) -> thrift::Result<Request> {
    let Some(client) = options.client_id.filter(|id| *id != 0) else {
        if options.seq.is_some_and(|seq| seq != 0) {
            return Err(invalid(
                "WriteOptions.seq was given without a client_id: a retry can only be recognised by both".into(),
            ));
        }
        return Ok(request);
    };
    let seq = options.seq.unwrap_or(0);
    if seq <= 0 {
        return Err(invalid(format!(
            "WriteOptions.seq is {seq}; with a client_id it must be positive (1, 2, 3, ... per client)"
        )));
    }
    let lowest_unanswered = options.lowest_unanswered.unwrap_or(0);
    if !(0..=seq).contains(&lowest_unanswered) {
        return Err(invalid(format!(
            "WriteOptions.lowest_unanswered is {lowest_unanswered}; it must be between 0 and the write's seq ({seq}), since this write has no answer yet"
        )));
    }
    Ok(Request::Tracked {
        session: SessionRequest {
            client: client as u64,
            seq: seq as u64,
            lowest_unanswered: lowest_unanswered as u64,
            // The leader writes its own limits in when it proposes the request.
            limits: SessionLimits::default(),
        },
        request: Box::new(request),
    })
}

/// A write's answer as a `WriteResult`.
fn to_write_result(written: Written, method: &str) -> thrift::Result<WriteResult> {
    let (count, value) = match written.response {
        Response::Put => (1, None),
        Response::Removed { existed } => (i32::from(existed), None),
        Response::Count(count) => (count as i32, None),
        Response::Written(wrote) => (i32::from(wrote), None),
        Response::Incremented(value) => (1, Some(value)),
        other => return Err(unexpected(other, method)),
    };
    Ok(WriteResult {
        index: written.index as i64,
        count,
        value,
        repeated: written.repeated.then_some(true),
    })
}

/// An event of the history as a watcher sees it.
fn to_wire_event(event: crate::store::history::Event) -> WatchEvent {
    WatchEvent {
        index: event.index as i64,
        offset: event.offset as i32,
        kind: match event.kind {
            EventKind::Put => WireKind::PUT,
            EventKind::Remove => WireKind::REMOVE,
            EventKind::Expire => WireKind::EXPIRE,
            EventKind::Evict => WireKind::EVICT,
        },
        key: event.key,
        value: event.value,
        expires_at_ms: event.expires_at_ms.map(|at| at as i64),
    }
}
