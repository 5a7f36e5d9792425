//! The embedded backend: the shared conformance suite, what survives closing and reopening the
//! file, group commit, records, and a data directory that one process at a time may hold.

use sluice_core::{
    Clock, CounterKey, Limit, ManualClock, MonthlyCycle, Op, Period, Timestamp, Transition,
};
use sluice_store::{
    CounterStore, EmbeddedStore, EmbeddedStoreConfig, RecordStore, RecordTable, StoreError,
};
use sluice_test_support::conformance::START;
use std::sync::Arc;

mod conformance {
    use sluice_store::{EmbeddedStore, EmbeddedStoreConfig};
    sluice_test_support::store_conformance!(|clock| async move {
        let dir = tempfile::tempdir().expect("a temporary directory");
        EmbeddedStore::open(dir.path(), clock, EmbeddedStoreConfig::default()).expect("opens")
    });
}

/// The same suite with every counter durable, so every change goes through the commit queue.
mod conformance_all_durable {
    use std::time::Duration;

    use sluice_store::{EmbeddedStore, EmbeddedStoreConfig};
    sluice_test_support::store_conformance!(|clock| async move {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = EmbeddedStoreConfig {
            durable_from: Duration::ZERO,
        };
        EmbeddedStore::open(dir.path(), clock, config).expect("opens")
    });
}

fn open(dir: &std::path::Path, clock: &ManualClock) -> EmbeddedStore {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    EmbeddedStore::open(dir, clock, EmbeddedStoreConfig::default()).expect("the store opens")
}

fn monthly(capacity: u64) -> Limit {
    let utc = MonthlyCycle::time_zone("UTC").expect("UTC exists");
    Limit::fixed_window(capacity, Period::Monthly(MonthlyCycle::calendar_month(utc)))
        .expect("a valid limit")
}

fn per_minute(capacity: u64) -> Limit {
    Limit::fixed_window(capacity, Period::Span(60_000_000_000)).expect("a valid limit")
}

fn acquire<'a>(key: &CounterKey, limit: &'a Limit, cost: u64) -> Transition<'a> {
    Transition {
        key: key.clone(),
        limit,
        op: Op::Acquire { cost },
    }
}

async fn remaining(store: &EmbeddedStore, key: &CounterKey, limit: &Limit) -> u64 {
    let decision = store
        .apply(&[acquire(key, limit, 0)])
        .await
        .expect("the store answers");
    decision.limits()[0].remaining()
}

#[tokio::test]
async fn quota_counts_survive_reopening_and_short_windows_start_afresh() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(START);
    let quota = monthly(100);
    let burst = per_minute(10);
    let team = CounterKey::new(b"team:7", b"quota/moderation");
    let user = CounterKey::new(b"user:42", b"upload/0");
    {
        let store = open(dir.path(), &clock);
        for _ in 0..30 {
            let decision = store
                .apply(&[acquire(&team, &quota, 1), acquire(&user, &burst, 0)])
                .await
                .expect("the store answers");
            assert!(decision.allowed());
        }
        store
            .apply(&[acquire(&user, &burst, 4)])
            .await
            .expect("the store answers");
        assert_eq!(remaining(&store, &user, &burst).await, 6);
    }
    let store = open(dir.path(), &clock);
    assert_eq!(remaining(&store, &team, &quota).await, 70);
    assert_eq!(remaining(&store, &user, &burst).await, 10);
}

#[tokio::test]
async fn a_refund_is_as_durable_as_the_count() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(START);
    let quota = monthly(5);
    let team = CounterKey::new(b"team:7", b"quota/moderation");
    {
        let store = open(dir.path(), &clock);
        store.apply(&[acquire(&team, &quota, 3)]).await.unwrap();
        let refund = Transition {
            key: team.clone(),
            limit: &quota,
            op: Op::Release {
                cost: 1,
                acquired_at: START,
            },
        };
        store.apply(&[refund]).await.unwrap();
    }
    let store = open(dir.path(), &clock);
    assert_eq!(remaining(&store, &team, &quota).await, 3);
}

#[tokio::test]
async fn counters_expired_while_closed_read_as_new() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(START);
    let quota = monthly(5);
    let team = CounterKey::new(b"team:7", b"quota/moderation");
    {
        let store = open(dir.path(), &clock);
        store.apply(&[acquire(&team, &quota, 5)]).await.unwrap();
    }
    // 2026-12-01T00:00:00Z: a new month.
    clock.set(Timestamp::from_secs(1_796_083_200));
    let store = open(dir.path(), &clock);
    assert_eq!(remaining(&store, &team, &quota).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_counted_requests_share_commits() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(START);
    let store = Arc::new(open(dir.path(), &clock));
    let quota = Arc::new(monthly(1_000_000));
    let tasks: Vec<_> = (0..400)
        .map(|task| {
            let (store, quota) = (Arc::clone(&store), Arc::clone(&quota));
            tokio::spawn(async move {
                let key = CounterKey::new(format!("team:{}", task % 40).as_bytes(), b"quota");
                for _ in 0..5 {
                    let decision = store.apply(&[acquire(&key, &quota, 1)]).await.unwrap();
                    assert!(decision.allowed());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("the task finishes");
    }
    let stats = store.commit_stats();
    assert_eq!(stats.writes, 2_000, "every counted request was written");
    assert!(
        stats.commits < stats.writes / 4,
        "{} commits for {} writes: the commits were not grouped",
        stats.commits,
        stats.writes
    );
    drop(store);
    let store = open(dir.path(), &clock);
    let mut total = 0;
    for team in 0..40 {
        let key = CounterKey::new(format!("team:{team}").as_bytes(), b"quota");
        total += 1_000_000 - remaining(&store, &key, &quota).await;
    }
    assert_eq!(total, 2_000);
}

#[tokio::test]
async fn records_are_kept_and_deleted_durably() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(START);
    {
        let store = open(dir.path(), &clock);
        store
            .put_record(RecordTable::Keys, b"b", Some(b"second"))
            .await
            .unwrap();
        store
            .put_record(RecordTable::Keys, b"a", Some(b"first"))
            .await
            .unwrap();
        store
            .put_record(RecordTable::Overrides, b"user:1", Some(b"x"))
            .await
            .unwrap();
        store
            .put_record(RecordTable::Overrides, b"user:1", None)
            .await
            .unwrap();
    }
    let store = open(dir.path(), &clock);
    let keys = store.records(RecordTable::Keys).await.unwrap();
    assert_eq!(
        keys,
        vec![
            (b"a".to_vec(), b"first".to_vec()),
            (b"b".to_vec(), b"second".to_vec())
        ]
    );
    assert!(
        store
            .records(RecordTable::Overrides)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn one_process_at_a_time_holds_a_data_directory() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(START);
    let _held = open(dir.path(), &clock);
    let clock: Arc<dyn Clock> = Arc::new(clock);
    let second = EmbeddedStore::open(dir.path(), clock, EmbeddedStoreConfig::default());
    match second {
        Err(error @ StoreError::InUse(_)) => {
            assert!(error.to_string().contains("in use by another process"));
        }
        other => panic!("expected the directory to be in use, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unwritable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START));
    let error = EmbeddedStore::open(&file, clock, EmbeddedStoreConfig::default())
        .expect_err("a file is not a data directory");
    assert!(
        error.to_string().contains("not-a-directory"),
        "the error names the path: {error}"
    );
}
