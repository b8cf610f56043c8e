//! openraft's storage conformance suite, run against raftcache's log store (segment files) and
//! state machine (sled). Each case gets a fresh data dir, kept alive by the builder's guard.
//!
//! Every case of `Suite::test_store` runs, one by one so that a failure names its case.

use openraft::testing::log::{StoreBuilder, Suite};
use raftcache::store::{self, LogStore, StateMachine, StoreOptions};
use raftcache::types::TypeConfig;

type StorageError = openraft::StorageError<TypeConfig>;
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
        get_initial_state_membership_from_empty_log_and_sm,
        get_initial_state_membership_from_sm_inlog_is_smaller,
        get_initial_state_membership_from_log_insm_is_smaller,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_inverted_log_order,
        get_initial_state_conflict_at_same_index,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        leader_bounded_stream,
        entries_stream,
        try_get_log_entry,
        log_reader_reads_new_entries,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_after_11,
        delete_logs_after_5,
        delete_logs_after_0,
        delete_logs_after_none,
        append_to_log,
        snapshot_meta,
        snapshot_meta_optional,
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
