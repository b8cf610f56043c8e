//! openraft's storage conformance suite, run against raftcache's sled log store and state
//! machine. Each case gets a fresh data dir, kept alive by the builder's guard value.

use openraft::testing::{StoreBuilder, Suite};
use raftcache::store::{self, LogStore, StateMachine, StoreOptions};
use raftcache::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = store::open(dir.path(), 1, None, &StoreOptions::default())
            .await
            .expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_stores_pass_openraft_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
