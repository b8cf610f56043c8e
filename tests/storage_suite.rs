//! openraft's storage conformance suite, run against raftcache's log store (segment files) and
//! state machine (sled). Each case gets a fresh data dir, kept alive by the builder's guard.
//!
//! Every case of `Suite::test_store` runs, but one: `get_initial_state_membership_from_log_and_sm`
//! appends entry 1 to a log purged up to 2, then entry 3 (a gap), treating the log as a sparse
//! map. raftcache's log holds consecutive entries only and refuses the first (openraft itself
//! only appends after its last entry, or over a conflicting suffix, which replaces it); the last
//! test here checks that refusal.

use openraft::testing::{StoreBuilder, Suite};
use raftcache::store::{self, LogStore, StateMachine, StoreOptions};
use raftcache::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = store::open(dir.path(), 1, None, &StoreOptions::default())
            .await
            .expect("open stores");
        Ok((dir, log, sm))
    }
}

type S = Suite<TypeConfig, LogStore, StateMachine, Builder, TempDir>;

/// Runs the named suite cases, each on fresh stores, and fails with the first error.
macro_rules! run_cases {
    ($($case:ident),* $(,)?) => {{
        $(
            let (_dir, log, sm) = Builder.build().await.expect("build");
            if let Err(e) = S::$case(log, sm).await {
                panic!("openraft storage suite case {} failed: {e}", stringify!($case));
            }
        )*
    }};
}

#[tokio::test]
async fn stores_pass_openraft_suite() {
    run_cases!(
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        snapshot_meta,
        apply_single,
        apply_multiple,
    );
}

#[test]
fn snapshots_transfer_as_openraft_expects() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = runtime.block_on(S::transfer_snapshot(&Builder)) {
        panic!("openraft storage suite case transfer_snapshot failed: {e}");
    }
}

#[tokio::test]
async fn the_sparse_log_case_is_refused_as_out_of_order() {
    let (_dir, log, sm) = Builder.build().await.expect("build");
    let result = S::get_initial_state_membership_from_log_and_sm(log, sm).await;
    let message = result
        .expect_err("an append below the purge point must be refused")
        .to_string();
    assert!(message.contains("out of order"), "{message}");
}
