//! The cache methods beyond get/put/remove: `get_many`, `put_many`, `remove_many`,
//! `put_if_absent`, `compare_and_put`, `increment`, `scan` and `stats`. Each checks its
//! arguments against the limits here; the writes are decided by the state machine when it
//! applies them (`store/apply.rs`).

use std::sync::atomic::Ordering;

use super::passes::{Call, Outcome};
use super::{invalid, route_error, to_wire, ttl_clock, unexpected, CacheApi, RouteError};
use crate::gen::cache::{CacheEntry, CacheStats, ReadOptions, WriteResult};
use crate::types::{Item, Request, Response};

impl CacheApi {
    pub(super) async fn execute_data(&self, call: Call) -> Outcome {
        match call {
            Call::GetMany { keys, options } => Outcome::Entries(self.get_many(keys, options).await),
            Call::PutMany { entries } => Outcome::Write(self.put_many(entries).await),
            Call::RemoveMany { keys } => Outcome::Write(self.remove_many(keys).await),
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
            value: entry.value,
            expiry,
        })
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
            .collect();
        self.count_reads(keys.len() as u64, found.len() as u64);
        self.router.note_reads(keys.iter().map(String::as_str));
        Ok(found)
    }

    async fn put_many(&self, entries: Vec<CacheEntry>) -> thrift::Result<WriteResult> {
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
        let applied = self.write(Request::PutMany { items }).await?;
        write_result(applied.index, applied.response, "put_many")
    }

    async fn remove_many(&self, keys: Vec<String>) -> thrift::Result<WriteResult> {
        self.check_items(keys.len(), "remove_many")?;
        for key in &keys {
            self.check_key(key)?;
        }
        let applied = self.write(Request::RemoveMany { keys }).await?;
        write_result(applied.index, applied.response, "remove_many")
    }

    async fn put_if_absent(&self, entry: CacheEntry) -> thrift::Result<bool> {
        let item = self.item(entry)?;
        match self.write(Request::PutIfAbsent { item }).await?.response {
            Response::Written(wrote) => Ok(wrote),
            other => Err(unexpected(other, "put_if_absent")),
        }
    }

    async fn compare_and_put(
        &self,
        key: String,
        expected: String,
        entry: CacheEntry,
    ) -> thrift::Result<bool> {
        if key != entry.key {
            return Err(invalid(format!(
                "compare_and_put of key {key:?} got an entry for key {:?}; they must be the same",
                entry.key
            )));
        }
        let item = self.item(entry)?;
        match self
            .write(Request::CompareAndPut { expected, item })
            .await?
            .response
        {
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
            Response::Refused(message) => Err(invalid(message)),
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
        Ok(entries.into_iter().map(|e| to_wire(e, ttl_from)).collect())
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

fn write_result(index: u64, response: Response, method: &str) -> thrift::Result<WriteResult> {
    match response {
        Response::Count(count) => Ok(WriteResult {
            index: index as i64,
            count: count as i32,
        }),
        other => Err(unexpected(other, method)),
    }
}
