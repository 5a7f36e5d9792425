//! The embedded store on a disk that fails and recovers: its file is made to refuse to grow (a
//! file-size limit, as a full disk refuses), then allowed to again. A test binary of its own,
//! since the limit holds for the whole process.
#![allow(unsafe_code)] // setrlimit and signal: libc's, with valid arguments, before any thread reads them

use std::sync::Arc;

use sluice_core::{Clock, CounterKey, Limit, ManualClock, MonthlyCycle, Op, Period, Transition};
use sluice_store::{CounterStore, EmbeddedStore, EmbeddedStoreConfig, StoreError};
use sluice_test_support::conformance::START;

/// Lets files grow to `bytes` at most (`libc::RLIM_INFINITY`: without limit). A write past it
/// fails with `EFBIG` (its signal ignored), as a write to a full disk fails with `ENOSPC`.
fn limit_file_size(bytes: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain calls with valid arguments; the signal is ignored, not handled.
    let status = unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        libc::setrlimit(libc::RLIMIT_FSIZE, &limit)
    };
    assert_eq!(status, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

fn monthly(capacity: u64) -> Limit {
    let utc = MonthlyCycle::time_zone("UTC").expect("UTC exists");
    Limit::fixed_window(capacity, Period::Monthly(MonthlyCycle::calendar_month(utc)))
        .expect("a valid limit")
}

/// A quota counter whose key is large, so that each new one needs room in the file.
fn counter(n: u32) -> CounterKey {
    let mut scope = vec![b'x'; 16 * 1024];
    scope.extend_from_slice(&n.to_le_bytes());
    CounterKey::new(&scope, b"quota")
}

async fn count(store: &EmbeddedStore, key: &CounterKey, limit: &Limit) -> Result<u64, StoreError> {
    let decision = store
        .apply(&[Transition {
            key: key.clone(),
            limit,
            op: Op::Acquire { cost: 1 },
        }])
        .await?;
    Ok(decision.limits()[0].remaining())
}

#[tokio::test]
async fn a_store_whose_disk_filled_up_commits_again_once_there_is_room() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let clock = ManualClock::new(START);
    let open = || {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        EmbeddedStore::open(dir.path(), clock, EmbeddedStoreConfig::default()).expect("opens")
    };
    let store = open();
    let quota = monthly(1_000);
    assert_eq!(count(&store, &counter(0), &quota).await.ok(), Some(999));

    // The file may not grow: new counters cannot be written, and their requests are told so.
    let size = std::fs::metadata(store.path()).expect("the file").len();
    limit_file_size(size);
    let mut refused = None;
    for n in 1..64 {
        if let Err(error) = count(&store, &counter(n), &quota).await {
            refused = Some(n);
            assert!(matches!(error, StoreError::Storage(_)), "{error:?}");
            break;
        }
    }
    let refused = refused.expect("a file that cannot grow refuses a commit");

    // Room again: the store commits again (it reopens its file, which redb requires after an
    // I/O error), within a few of its 100 ms retries.
    limit_file_size(libc::RLIM_INFINITY);
    let mut recovered = false;
    for _ in 0..50 {
        if count(&store, &counter(100), &quota).await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the store never committed again");
    assert_eq!(count(&store, &counter(0), &quota).await.ok(), Some(998));

    // What it reported written is in the file: the counts are there after reopening.
    drop(store);
    let store = open();
    assert_eq!(count(&store, &counter(0), &quota).await.ok(), Some(997));
    assert_eq!(
        count(&store, &counter(refused), &quota).await.ok(),
        Some(998),
        "the refused request's count was kept in memory and written with a later batch"
    );

    // Closed while its disk still fails, the store closes all the same: what it could not write,
    // its callers were told of, and retrying for ever would keep the process from exiting.
    limit_file_size(std::fs::metadata(store.path()).expect("the file").len());
    let mut failed = false;
    for n in 200..264 {
        if count(&store, &counter(n), &quota).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "a file that cannot grow refuses a commit");
    let (closed, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(store);
        let _ = closed.send(());
    });
    let outcome = wait.recv_timeout(std::time::Duration::from_secs(10));
    limit_file_size(libc::RLIM_INFINITY);
    assert!(outcome.is_ok(), "the store still had not closed after 10 s");
}
