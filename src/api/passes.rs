//! The two passes of the generated (synchronous) processor over one request: `Decoded`
//! records the `Call` it decoded; `Answer` hands back the `Outcome` of carrying it out, so the
//! processor writes it with the request's method name and sequence number.

use std::cell::RefCell;

use thrift::{ApplicationError, ApplicationErrorKind};

use crate::gen::cache::{
    AdminChange, BackupInfo, ByteEntry, CacheEntry, CacheServiceSyncHandler, CacheStats,
    Membership, NodeStatus, ReadOptions, WatchResult, WriteOptions, WriteResult,
};

/// One decoded client call.
pub(super) enum Call {
    Get {
        key: String,
    },
    GetWith {
        key: String,
        options: ReadOptions,
    },
    Put {
        entry: CacheEntry,
    },
    Remove {
        key: String,
    },
    Status,
    AdminSnapshot {
        token: String,
    },
    AdminMembers {
        token: String,
    },
    AdminBackupBegin {
        token: String,
    },
    AdminBackupRead {
        token: String,
        backup_id: String,
        offset: i64,
        max_bytes: i32,
    },
    AdminBackupEnd {
        token: String,
        backup_id: String,
    },
    Authenticate {
        token: String,
    },
    AdminChange {
        change: AdminChange,
        token: String,
    },
    GetMany {
        keys: Vec<String>,
        options: ReadOptions,
    },
    /// `put_many`, or `put_many_with` (`with_options`).
    PutMany {
        entries: Vec<CacheEntry>,
        options: WriteOptions,
        with_options: bool,
    },
    /// `remove_many`, or `remove_many_with` (`with_options`).
    RemoveMany {
        keys: Vec<String>,
        options: WriteOptions,
        with_options: bool,
    },
    PutIfAbsent {
        entry: CacheEntry,
    },
    CompareAndPut {
        key: String,
        expected: String,
        entry: CacheEntry,
    },
    Increment {
        key: String,
        delta: i64,
    },
    Scan {
        prefix: String,
        start_after: String,
        limit: i32,
        options: ReadOptions,
    },
    Stats,
    /// `put_with`, `remove_with`, `put_if_absent_with`, `compare_and_put_with`,
    /// `increment_with` and `put_bytes`: a write answered with a `WriteResult`.
    Write {
        write: Write,
        options: WriteOptions,
    },
    GetBytes {
        key: String,
        options: ReadOptions,
    },
    Watch {
        prefix: String,
        after_index: i64,
        max_events: i32,
        timeout_ms: i32,
        after_offset: i32,
    },
}

/// A write of the calls that take `WriteOptions` one at a time.
pub(super) enum Write {
    Put(CacheEntry),
    PutBytes(ByteEntry),
    Remove(String),
    PutIfAbsent(CacheEntry),
    CompareAndPut {
        key: String,
        expected: String,
        entry: CacheEntry,
    },
    Increment {
        key: String,
        delta: i64,
    },
}

impl Write {
    /// The method's name in `cache.thrift`.
    pub(super) fn method(&self) -> &'static str {
        match self {
            Write::Put(_) => "put_with",
            Write::PutBytes(_) => "put_bytes",
            Write::Remove(_) => "remove_with",
            Write::PutIfAbsent(_) => "put_if_absent_with",
            Write::CompareAndPut { .. } => "compare_and_put_with",
            Write::Increment { .. } => "increment_with",
        }
    }
}

impl Call {
    /// The call's name in `cache.thrift`, as `/metrics` labels it.
    pub(super) fn method(&self) -> &'static str {
        match self {
            Call::Get { .. } => "get",
            Call::GetWith { .. } => "get_with",
            Call::Put { .. } => "put",
            Call::Remove { .. } => "remove",
            Call::Status => "status",
            Call::AdminSnapshot { .. } => "admin_snapshot",
            Call::AdminMembers { .. } => "admin_members",
            Call::AdminBackupBegin { .. } => "admin_backup_begin",
            Call::AdminBackupRead { .. } => "admin_backup_read",
            Call::AdminBackupEnd { .. } => "admin_backup_end",
            Call::Authenticate { .. } => "authenticate",
            Call::AdminChange { .. } => "admin_change",
            Call::GetMany { .. } => "get_many",
            Call::PutMany {
                with_options: false,
                ..
            } => "put_many",
            Call::PutMany { .. } => "put_many_with",
            Call::RemoveMany {
                with_options: false,
                ..
            } => "remove_many",
            Call::RemoveMany { .. } => "remove_many_with",
            Call::PutIfAbsent { .. } => "put_if_absent",
            Call::CompareAndPut { .. } => "compare_and_put",
            Call::Increment { .. } => "increment",
            Call::Scan { .. } => "scan",
            Call::Stats => "stats",
            Call::Write { write, .. } => write.method(),
            Call::GetBytes { .. } => "get_bytes",
            Call::Watch { .. } => "watch",
        }
    }
}

/// What a call returns, in the shape the generated processor writes back.
pub(super) enum Outcome {
    Entry(thrift::Result<CacheEntry>),
    Entries(thrift::Result<Vec<CacheEntry>>),
    Flag(thrift::Result<bool>),
    Status(thrift::Result<NodeStatus>),
    Index(thrift::Result<i64>),
    Membership(thrift::Result<Membership>),
    Write(thrift::Result<WriteResult>),
    Stats(thrift::Result<CacheStats>),
    Backup(thrift::Result<BackupInfo>),
    Bytes(thrift::Result<Vec<u8>>),
    Done(thrift::Result<()>),
    ByteEntry(thrift::Result<ByteEntry>),
    Watch(thrift::Result<WatchResult>),
}

/// The first pass: records the call the processor decoded. What it returns is never sent.
#[derive(Default)]
pub(super) struct Decoded(pub(super) RefCell<Option<Call>>);

impl Decoded {
    fn record<T>(&self, call: Call) -> thrift::Result<T> {
        *self.0.borrow_mut() = Some(call);
        Err(thrift::Error::Application(ApplicationError::new(
            ApplicationErrorKind::Unknown,
            "decoded",
        )))
    }
}

impl CacheServiceSyncHandler for &Decoded {
    fn handle_get(&self, key: String) -> thrift::Result<CacheEntry> {
        self.record(Call::Get { key })
    }
    fn handle_put(&self, entry: CacheEntry) -> thrift::Result<bool> {
        self.record(Call::Put { entry })
    }
    fn handle_remove(&self, key: String) -> thrift::Result<bool> {
        self.record(Call::Remove { key })
    }
    fn handle_get_with(&self, key: String, options: ReadOptions) -> thrift::Result<CacheEntry> {
        self.record(Call::GetWith { key, options })
    }
    fn handle_status(&self) -> thrift::Result<NodeStatus> {
        self.record(Call::Status)
    }
    fn handle_admin_snapshot(&self) -> thrift::Result<i64> {
        self.record(Call::AdminSnapshot {
            token: String::new(),
        })
    }
    fn handle_admin_snapshot_with(&self, token: String) -> thrift::Result<i64> {
        self.record(Call::AdminSnapshot { token })
    }
    fn handle_admin_members(&self, token: String) -> thrift::Result<Membership> {
        self.record(Call::AdminMembers { token })
    }
    fn handle_admin_change(
        &self,
        change: AdminChange,
        token: String,
    ) -> thrift::Result<Membership> {
        self.record(Call::AdminChange { change, token })
    }
    fn handle_get_many(
        &self,
        keys: Vec<String>,
        options: ReadOptions,
    ) -> thrift::Result<Vec<CacheEntry>> {
        self.record(Call::GetMany { keys, options })
    }
    fn handle_put_many(&self, entries: Vec<CacheEntry>) -> thrift::Result<WriteResult> {
        self.record(Call::PutMany {
            entries,
            options: WriteOptions::default(),
            with_options: false,
        })
    }
    fn handle_remove_many(&self, keys: Vec<String>) -> thrift::Result<WriteResult> {
        self.record(Call::RemoveMany {
            keys,
            options: WriteOptions::default(),
            with_options: false,
        })
    }
    fn handle_put_many_with(
        &self,
        entries: Vec<CacheEntry>,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::PutMany {
            entries,
            options,
            with_options: true,
        })
    }
    fn handle_remove_many_with(
        &self,
        keys: Vec<String>,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::RemoveMany {
            keys,
            options,
            with_options: true,
        })
    }
    fn handle_put_if_absent(&self, entry: CacheEntry) -> thrift::Result<bool> {
        self.record(Call::PutIfAbsent { entry })
    }
    fn handle_compare_and_put(
        &self,
        key: String,
        expected: String,
        entry: CacheEntry,
    ) -> thrift::Result<bool> {
        self.record(Call::CompareAndPut {
            key,
            expected,
            entry,
        })
    }
    fn handle_increment(&self, key: String, delta: i64) -> thrift::Result<i64> {
        self.record(Call::Increment { key, delta })
    }
    fn handle_scan(
        &self,
        prefix: String,
        start_after: String,
        limit: i32,
        options: ReadOptions,
    ) -> thrift::Result<Vec<CacheEntry>> {
        self.record(Call::Scan {
            prefix,
            start_after,
            limit,
            options,
        })
    }
    fn handle_stats(&self) -> thrift::Result<CacheStats> {
        self.record(Call::Stats)
    }
    fn handle_admin_backup_begin(&self, token: String) -> thrift::Result<BackupInfo> {
        self.record(Call::AdminBackupBegin { token })
    }
    fn handle_admin_backup_read(
        &self,
        token: String,
        backup_id: String,
        offset: i64,
        max_bytes: i32,
    ) -> thrift::Result<Vec<u8>> {
        self.record(Call::AdminBackupRead {
            token,
            backup_id,
            offset,
            max_bytes,
        })
    }
    fn handle_admin_backup_end(&self, token: String, backup_id: String) -> thrift::Result<()> {
        self.record(Call::AdminBackupEnd { token, backup_id })
    }
    fn handle_authenticate(&self, token: String) -> thrift::Result<()> {
        self.record(Call::Authenticate { token })
    }
    fn handle_put_with(
        &self,
        entry: CacheEntry,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::Write {
            write: Write::Put(entry),
            options,
        })
    }
    fn handle_remove_with(
        &self,
        key: String,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::Write {
            write: Write::Remove(key),
            options,
        })
    }
    fn handle_put_if_absent_with(
        &self,
        entry: CacheEntry,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::Write {
            write: Write::PutIfAbsent(entry),
            options,
        })
    }
    fn handle_compare_and_put_with(
        &self,
        key: String,
        expected: String,
        entry: CacheEntry,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::Write {
            write: Write::CompareAndPut {
                key,
                expected,
                entry,
            },
            options,
        })
    }
    fn handle_increment_with(
        &self,
        key: String,
        delta: i64,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::Write {
            write: Write::Increment { key, delta },
            options,
        })
    }
    fn handle_put_bytes(
        &self,
        entry: ByteEntry,
        options: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        self.record(Call::Write {
            write: Write::PutBytes(entry),
            options,
        })
    }
    fn handle_get_bytes(&self, key: String, options: ReadOptions) -> thrift::Result<ByteEntry> {
        self.record(Call::GetBytes { key, options })
    }
    fn handle_watch(
        &self,
        prefix: String,
        after_index: i64,
        max_events: i32,
        timeout_ms: i32,
        after_offset: i32,
    ) -> thrift::Result<WatchResult> {
        self.record(Call::Watch {
            prefix,
            after_index,
            max_events,
            timeout_ms,
            after_offset,
        })
    }
}

/// The second pass: hands the processor the outcome of the call it decodes again.
pub(super) struct Answer(pub(super) RefCell<Option<Outcome>>);

fn mismatch() -> thrift::Error {
    thrift::Error::Application(ApplicationError::new(
        ApplicationErrorKind::InternalError,
        "the answer does not match the request",
    ))
}

/// Takes the outcome out of an `Answer` if it has the expected shape, else `mismatch()`.
macro_rules! answer {
    ($self:ident, $variant:ident) => {
        match $self.0.borrow_mut().take() {
            Some(Outcome::$variant(result)) => result,
            _ => Err(mismatch()),
        }
    };
}

impl CacheServiceSyncHandler for Answer {
    fn handle_get(&self, _key: String) -> thrift::Result<CacheEntry> {
        answer!(self, Entry)
    }
    fn handle_put(&self, _entry: CacheEntry) -> thrift::Result<bool> {
        answer!(self, Flag)
    }
    fn handle_remove(&self, _key: String) -> thrift::Result<bool> {
        answer!(self, Flag)
    }
    fn handle_get_with(&self, _key: String, _options: ReadOptions) -> thrift::Result<CacheEntry> {
        answer!(self, Entry)
    }
    fn handle_status(&self) -> thrift::Result<NodeStatus> {
        answer!(self, Status)
    }
    fn handle_admin_snapshot(&self) -> thrift::Result<i64> {
        answer!(self, Index)
    }
    fn handle_admin_snapshot_with(&self, _token: String) -> thrift::Result<i64> {
        answer!(self, Index)
    }
    fn handle_admin_members(&self, _token: String) -> thrift::Result<Membership> {
        answer!(self, Membership)
    }
    fn handle_admin_change(&self, _: AdminChange, _: String) -> thrift::Result<Membership> {
        answer!(self, Membership)
    }
    fn handle_get_many(&self, _: Vec<String>, _: ReadOptions) -> thrift::Result<Vec<CacheEntry>> {
        answer!(self, Entries)
    }
    fn handle_put_many(&self, _: Vec<CacheEntry>) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_remove_many(&self, _: Vec<String>) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_put_many_with(
        &self,
        _: Vec<CacheEntry>,
        _: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_remove_many_with(
        &self,
        _: Vec<String>,
        _: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_put_if_absent(&self, _: CacheEntry) -> thrift::Result<bool> {
        answer!(self, Flag)
    }
    fn handle_compare_and_put(&self, _: String, _: String, _: CacheEntry) -> thrift::Result<bool> {
        answer!(self, Flag)
    }
    fn handle_increment(&self, _: String, _: i64) -> thrift::Result<i64> {
        answer!(self, Index)
    }
    fn handle_scan(
        &self,
        _: String,
        _: String,
        _: i32,
        _: ReadOptions,
    ) -> thrift::Result<Vec<CacheEntry>> {
        answer!(self, Entries)
    }
    fn handle_stats(&self) -> thrift::Result<CacheStats> {
        answer!(self, Stats)
    }
    fn handle_admin_backup_begin(&self, _token: String) -> thrift::Result<BackupInfo> {
        answer!(self, Backup)
    }
    fn handle_admin_backup_read(
        &self,
        _: String,
        _: String,
        _: i64,
        _: i32,
    ) -> thrift::Result<Vec<u8>> {
        answer!(self, Bytes)
    }
    fn handle_admin_backup_end(&self, _: String, _: String) -> thrift::Result<()> {
        answer!(self, Done)
    }
    fn handle_authenticate(&self, _: String) -> thrift::Result<()> {
        answer!(self, Done)
    }
    fn handle_put_with(&self, _: CacheEntry, _: WriteOptions) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_remove_with(&self, _: String, _: WriteOptions) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_put_if_absent_with(
        &self,
        _: CacheEntry,
        _: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_compare_and_put_with(
        &self,
        _: String,
        _: String,
        _: CacheEntry,
        _: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_increment_with(
        &self,
        _: String,
        _: i64,
        _: WriteOptions,
    ) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_put_bytes(&self, _: ByteEntry, _: WriteOptions) -> thrift::Result<WriteResult> {
        answer!(self, Write)
    }
    fn handle_get_bytes(&self, _: String, _: ReadOptions) -> thrift::Result<ByteEntry> {
        answer!(self, ByteEntry)
    }
    fn handle_watch(
        &self,
        _: String,
        _: i64,
        _: i32,
        _: i32,
        _: i32,
    ) -> thrift::Result<WatchResult> {
        answer!(self, Watch)
    }
}

impl Outcome {
    /// The answer to `call` on a connection that has not authenticated: the exception the
    /// method declares for it (InvalidRequest for data calls, Unauthorized for admin calls),
    /// else an application exception.
    pub(super) fn unauthenticated(call: &Call) -> Outcome {
        use crate::gen::cache::{InvalidRequest, Unauthorized};
        const WHY: &str = "this node needs a client token: call authenticate(token) first on this connection (raftcache --client-token, or RAFTCACHE_CLIENT_TOKEN)";
        let invalid = || {
            thrift::Error::User(Box::new(InvalidRequest {
                message: WHY.into(),
            }))
        };
        let unauthorized = || {
            thrift::Error::User(Box::new(Unauthorized {
                message: WHY.into(),
            }))
        };
        let application = || {
            thrift::Error::Application(ApplicationError::new(ApplicationErrorKind::Unknown, WHY))
        };
        match call {
            Call::Get { .. } | Call::GetWith { .. } => Outcome::Entry(Err(invalid())),
            Call::Put { .. }
            | Call::Remove { .. }
            | Call::PutIfAbsent { .. }
            | Call::CompareAndPut { .. } => Outcome::Flag(Err(invalid())),
            Call::GetMany { .. } | Call::Scan { .. } => Outcome::Entries(Err(invalid())),
            Call::PutMany { .. } | Call::RemoveMany { .. } | Call::Write { .. } => {
                Outcome::Write(Err(invalid()))
            }
            Call::GetBytes { .. } => Outcome::ByteEntry(Err(invalid())),
            Call::Watch { .. } => Outcome::Watch(Err(invalid())),
            Call::Increment { .. } => Outcome::Index(Err(invalid())),
            Call::Status => Outcome::Status(Err(application())),
            Call::Stats => Outcome::Stats(Err(application())),
            Call::AdminSnapshot { .. } => Outcome::Index(Err(unauthorized())),
            Call::AdminMembers { .. } | Call::AdminChange { .. } => {
                Outcome::Membership(Err(unauthorized()))
            }
            Call::AdminBackupBegin { .. } => Outcome::Backup(Err(unauthorized())),
            Call::AdminBackupRead { .. } => Outcome::Bytes(Err(unauthorized())),
            Call::AdminBackupEnd { .. } | Call::Authenticate { .. } => {
                Outcome::Done(Err(unauthorized()))
            }
        }
    }

    /// The error the call ended with, if any.
    fn error(&self) -> Option<&thrift::Error> {
        match self {
            Outcome::Entry(r) => r.as_ref().err(),
            Outcome::Entries(r) => r.as_ref().err(),
            Outcome::Flag(r) => r.as_ref().err(),
            Outcome::Status(r) => r.as_ref().err(),
            Outcome::Index(r) => r.as_ref().err(),
            Outcome::Membership(r) => r.as_ref().err(),
            Outcome::Write(r) => r.as_ref().err(),
            Outcome::Stats(r) => r.as_ref().err(),
            Outcome::Backup(r) => r.as_ref().err(),
            Outcome::Bytes(r) => r.as_ref().err(),
            Outcome::Done(r) => r.as_ref().err(),
            Outcome::ByteEntry(r) => r.as_ref().err(),
            Outcome::Watch(r) => r.as_ref().err(),
        }
    }

    /// How the call ended, as `/metrics` labels it: `ok`, or the exception it raised.
    pub(super) fn label(&self) -> &'static str {
        use crate::gen::cache::{
            AdminRefused, CacheFull, InvalidRequest, KeyNotFound, Unauthorized, Unavailable,
        };
        let Some(error) = self.error() else {
            return "ok";
        };
        let thrift::Error::User(e) = error else {
            return "error";
        };
        if e.is::<KeyNotFound>() {
            "not_found"
        } else if e.is::<Unavailable>() {
            "unavailable"
        } else if e.is::<InvalidRequest>() {
            "invalid"
        } else if e.is::<CacheFull>() {
            "full"
        } else if e.is::<Unauthorized>() {
            "unauthorized"
        } else if e.is::<AdminRefused>() {
            "refused"
        } else if e.is::<crate::gen::cache::Compacted>() {
            "compacted"
        } else {
            "error"
        }
    }
}
