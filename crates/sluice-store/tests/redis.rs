//! The Redis backend against real `redis-server` processes: the conformance suite on one server
//! and on a 3-primary Redis Cluster, the server's clock, key expiry, records.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Clock, CounterKey, Decision, Limit, Op, Period, SystemClock, Transition};
use sluice_store::{
    CounterStore, RecordStore, RecordTable, RedisStore, RedisStoreConfig, RedisTarget, StoreError,
};
use sluice_test_support::{RedisCluster, RedisServer, store_conformance};

/// A store and the Redis processes it talks to, which live exactly as long as it does.
struct Served<R> {
    store: RedisStore,
    _redis: R,
}

impl<R: Send + Sync> CounterStore for Served<R> {
    async fn apply(&self, transitions: &[Transition<'_>]) -> Result<Decision, StoreError> {
        self.store.apply(transitions).await
    }
}

async fn connect(url: &str) -> RedisStore {
    let target = RedisTarget::parse(url).expect("a Redis URL");
    RedisStore::connect(&target, &RedisStoreConfig::default())
        .await
        .expect("the store connects")
}

async fn single(clock: Arc<dyn Clock>) -> Served<RedisServer> {
    let redis = RedisServer::start();
    Served {
        store: connect(&redis.url()).await.with_clock(clock),
        _redis: redis,
    }
}

async fn cluster(clock: Arc<dyn Clock>) -> Served<RedisCluster> {
    let redis = RedisCluster::start();
    Served {
        store: connect(&redis.url()).await.with_clock(clock),
        _redis: redis,
    }
}

mod on_one_server {
    use super::*;
    store_conformance!(single);
}

mod on_a_cluster {
    use super::*;
    store_conformance!(cluster);
}

fn hourly() -> Limit {
    Limit::fixed_window(1, Period::Span(3_600_000_000_000)).expect("a valid limit")
}

fn acquire<'a>(scope: &str, name: &str, limit: &'a Limit) -> Transition<'a> {
    Transition {
        key: CounterKey::new(scope.as_bytes(), name.as_bytes()),
        limit,
        op: Op::Acquire { cost: 1 },
    }
}

/// How many of `calls` sends of `request`, one after another, the store admits.
async fn admitted_of(store: &RedisStore, request: &[Transition<'_>], calls: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..calls {
        if store.apply(request).await.expect("Redis answers").allowed() {
            admitted += 1;
        }
    }
    admitted
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection")
}

/// Without a test clock, the Redis server's clock decides, and every counter written carries
/// an expiry no earlier than its state's.
#[tokio::test]
async fn the_server_clock_decides_and_every_key_expires() {
    let redis = RedisServer::start();
    let store = connect(&redis.url()).await;
    let limits = [
        hourly(),
        Limit::sliding_window(5, Duration::from_secs(60)).expect("a valid limit"),
        Limit::token_bucket(5, Duration::from_secs(60), 5).expect("a valid limit"),
        Limit::concurrency(5, Duration::from_secs(60)).expect("a valid limit"),
    ];
    let request: Vec<Transition<'_>> = limits
        .iter()
        .enumerate()
        .map(|(index, limit)| acquire("user:1", &format!("limit/{index}"), limit))
        .collect();
    let local = SystemClock::new().now();
    let first = store.apply(&request).await.expect("Redis answers");
    assert!(first.allowed());
    let skew = first.now().as_nanos().abs_diff(local.as_nanos());
    assert!(
        skew < 5_000_000_000,
        "server and local clocks differ by {skew} ns"
    );
    let second = store.apply(&request[..1]).await.expect("Redis answers");
    assert!(!second.allowed(), "the hourly limit holds across calls");

    let mut connection = raw(&redis.url()).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), limits.len(), "{keys:?}");
    for key in keys {
        assert!(key.starts_with("sluice:v1:c:{user:1}limit/"), "{key}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("PTTL");
        assert!(ttl > 0 && ttl <= 3_600_000, "{key} expires in {ttl} ms");
    }
}

/// A server that lost the script (a restart, `SCRIPT FLUSH`, a failover) gets it again on the
/// next call, which is decided as usual: the counts carry on.
#[tokio::test]
async fn a_flushed_script_is_loaded_again() {
    let redis = RedisServer::start();
    let store = connect(&redis.url()).await;
    let limit = Limit::fixed_window(3, Period::Span(3_600_000_000_000)).expect("a valid limit");
    let request = [acquire("user:1", "hourly", &limit)];
    assert_eq!(admitted_of(&store, &request, 2).await, 2);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw(&redis.url()).await)
        .await
        .expect("SCRIPT FLUSH");
    assert_eq!(admitted_of(&store, &request, 2).await, 1);
}

/// A counter whose stored value is not a state (written by something else) counts as empty,
/// on the short path and the general one alike, and its text never reaches the reply: commas
/// and line breaks in it cannot mix up the requests decided beside it.
#[tokio::test]
async fn an_unreadable_stored_value_counts_as_empty() {
    let redis = RedisServer::start();
    let store = connect(&redis.url()).await;
    let bucket = Limit::token_bucket(2, Duration::from_secs(60), 2).expect("a valid limit");
    let window = Limit::fixed_window(2, Period::Span(3_600_000_000_000)).expect("a valid limit");
    let mut connection = raw(&redis.url()).await;
    for key in ["sluice:v1:c:{user:1}bucket", "sluice:v1:c:{user:1}window"] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("1,2\n0,3 4 5 6")
            .query_async(&mut connection)
            .await
            .expect("SET");
    }
    // At once, so that both go in one batch.
    let (short, general) = (
        [acquire("user:1", "bucket", &bucket)],
        [acquire("user:1", "window", &window)],
    );
    let admitted = tokio::join!(
        admitted_of(&store, &short, 3),
        admitted_of(&store, &general, 3),
    );
    assert_eq!(admitted, (2, 2));
}

/// Records (API keys, overrides) are shared through Redis: written, listed in id order,
/// deleted, each change moving the version other gateways watch.
#[tokio::test]
async fn records_live_in_redis() {
    let redis = RedisServer::start();
    records_are_shared(&redis.url()).await;
}

#[tokio::test]
async fn records_live_in_a_cluster() {
    let redis = RedisCluster::start();
    records_are_shared(&redis.url()).await;
}

async fn records_are_shared(url: &str) {
    let store = connect(url).await;
    assert_eq!(store.records_version().await.expect("read"), 0);
    store
        .put_record(RecordTable::Keys, b"b", Some(b"2"))
        .await
        .expect("stored");
    store
        .put_record(RecordTable::Keys, b"a", Some(b"1"))
        .await
        .expect("stored");
    store
        .put_record(RecordTable::Overrides, b"a", Some(b"other table"))
        .await
        .expect("stored");
    assert_eq!(store.records_version().await.expect("read"), 3);
    let other = connect(url).await;
    assert_eq!(
        other.records(RecordTable::Keys).await.expect("listed"),
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ]
    );
    store
        .put_record(RecordTable::Keys, b"a", None)
        .await
        .expect("deleted");
    assert_eq!(
        other.records(RecordTable::Keys).await.expect("listed"),
        vec![(b"b".to_vec(), b"2".to_vec())]
    );
    assert_eq!(
        other
            .records(RecordTable::Overrides)
            .await
            .expect("listed")
            .len(),
        1
    );
}

/// With the README's recommended persistence for quotas (`appendonly yes`, `appendfsync
/// always`: each change written and fsync'd before Redis answers), a Redis process killed with
/// SIGKILL comes back with every count it acknowledged, and with the records: a quota keeps
/// counting where it was. (With `everysec` a slow disk can delay the write past the answer, so
/// a crash may lose the last second or two; that setting cannot be tested exactly.)
#[tokio::test]
async fn an_aof_redis_killed_and_restarted_still_has_the_counts() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let clock = sluice_core::ManualClock::new(sluice_core::Timestamp::from_secs(1_795_342_500));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let monthly =
        Limit::fixed_window(10, Period::Span(30 * 86_400_000_000_000)).expect("a valid limit");
    let before = connect(&redis.url()).await.with_clock(Arc::clone(&shared));
    for _ in 0..7 {
        let decision = before
            .apply(&[acquire("team:acme", "quota/moderations", &monthly)])
            .await
            .expect("Redis answers");
        assert!(decision.allowed());
    }
    before
        .put_record(RecordTable::Keys, b"key_acme", Some(b"hash"))
        .await
        .expect("stored");

    redis.crash_and_restart();

    // A gateway starting after the restart finds the seven units spent: three are left.
    let after = connect(&redis.url()).await.with_clock(shared);
    let mut admitted = 0;
    for _ in 0..5 {
        let decision = after
            .apply(&[acquire("team:acme", "quota/moderations", &monthly)])
            .await
            .expect("Redis answers");
        admitted += usize::from(decision.allowed());
    }
    assert_eq!(admitted, 3, "7 counted before the crash, 10 in all");
    assert_eq!(
        after.records(RecordTable::Keys).await.expect("listed"),
        vec![(b"key_acme".to_vec(), b"hash".to_vec())]
    );
    assert_eq!(after.records_version().await.expect("read"), 1);
}

/// No server at the address: connecting fails with a clear error, not a hang.
#[tokio::test]
async fn connecting_to_nothing_fails_clearly() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let target = RedisTarget::parse(&url).expect("a Redis URL");
    match RedisStore::connect(&target, &RedisStoreConfig::default()).await {
        Err(StoreError::Unavailable(message)) => assert!(!message.is_empty()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// The gateway connects the store on its main runtime and serves from one runtime per core:
/// each runtime calls Redis over its own connection, so the store keeps deciding exactly after
/// the runtime that connected it has gone, and for runtimes started later.
#[test]
fn a_store_serves_runtimes_other_than_the_one_that_connected_it() {
    let redis = RedisServer::start();
    runtimes_share_the_store(&redis.url());
}

#[test]
fn a_cluster_store_serves_runtimes_other_than_the_one_that_connected_it() {
    let redis = RedisCluster::start();
    runtimes_share_the_store(&redis.url());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn runtimes_share_the_store(url: &str) {
    let connecting = runtime();
    let store = Arc::new(connecting.block_on(connect(url)));
    drop(connecting);
    let limit = Limit::fixed_window(60, Period::Span(3_600_000_000_000)).expect("a valid limit");
    let request = [acquire("site:1", "hourly", &limit)];
    let admitted =
        |store: &RedisStore, calls: usize| runtime().block_on(admitted_of(store, &request, calls));
    let total: usize = std::thread::scope(|threads| {
        let serving: Vec<_> = (0..2)
            .map(|_| threads.spawn(|| admitted(&store, 25)))
            .collect();
        serving
            .into_iter()
            .map(|thread| thread.join().expect("a serving thread"))
            .sum()
    });
    assert_eq!(
        total, 50,
        "every call of the first two runtimes is admitted"
    );
    assert_eq!(
        admitted(&store, 20),
        10,
        "a runtime started after them finds their counts"
    );
}

/// Where the fleet's manual clock starts, in seconds.
const FLEET_START: u64 = 1_795_342_500;

/// Three gateways on one Redis, each with its own store, sharing a manual clock set to
/// [`FLEET_START`].
async fn fleet(redis: &RedisServer) -> (Arc<sluice_core::ManualClock>, Vec<RedisStore>) {
    let clock = Arc::new(sluice_core::ManualClock::new(
        sluice_core::Timestamp::from_secs(FLEET_START),
    ));
    let mut stores = Vec::new();
    for _ in 0..3 {
        let clock: Arc<dyn Clock> = clock.clone();
        stores.push(connect(&redis.url()).await.with_clock(clock));
    }
    // Twice, so that each has seen all three.
    for _ in 0..2 {
        for (index, store) in stores.iter().enumerate() {
            store
                .announce(&format!("gateway-{index}"), Duration::from_secs(60))
                .await
                .expect("Redis answers");
        }
    }
    for store in &stores {
        assert_eq!(store.live_instances(), 3);
    }
    (clock, stores)
}

/// Calls to the decide script since the last `CONFIG RESETSTAT`.
async fn script_calls(url: &str) -> u64 {
    let mut connection = raw(url).await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .expect("INFO");
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    };
    calls("evalsha") + calls("eval")
}

async fn reset_stats(url: &str) {
    let mut connection = raw(url).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut connection)
        .await
        .expect("CONFIG RESETSTAT");
}

/// Requests made at once on one runtime go to Redis in batches, one script call for many, and
/// are decided exactly as calls of their own would be: a token bucket of 10 that two kinds of
/// request share (one alone, one beside a fixed window) admits 10, each seeing a different
/// count left; a fixed window of 7 guarding a second bucket admits 7 and the denied requests
/// take nothing from that bucket; two counters of that same window of 7, in one request
/// (whose values go once for both, and once for the request before it), admit 7; and a token
/// bucket of 3 alone, among requests for the bucket of 10, admits 3.
#[tokio::test]
async fn concurrent_requests_are_batched_and_decided_exactly() {
    let redis = RedisServer::start();
    let clock: Arc<dyn Clock> = Arc::new(sluice_core::ManualClock::new(
        sluice_core::Timestamp::from_secs(FLEET_START),
    ));
    let store = Arc::new(connect(&redis.url()).await.with_clock(clock));
    let limits = Arc::new([
        Limit::token_bucket(10, Duration::from_secs(60), 10).expect("a valid limit"),
        Limit::fixed_window(7, Period::Span(3_600_000_000_000)).expect("a valid limit"),
        Limit::fixed_window(1_000, Period::Span(3_600_000_000_000)).expect("a valid limit"),
        Limit::token_bucket(3, Duration::from_secs(1), 3).expect("a valid limit"),
    ]);
    reset_stats(&redis.url()).await;
    const EACH: usize = 40;
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..EACH * 5 {
        let (store, limits) = (Arc::clone(&store), Arc::clone(&limits));
        requests.spawn(async move {
            let [bucket, seven, wide, three] = &*limits;
            let kind = index % 5;
            let request = match kind {
                0 => vec![acquire("user:a", "bucket", bucket)],
                1 => vec![
                    acquire("user:a", "bucket", bucket),
                    acquire("user:a", "wide", wide),
                ],
                2 => vec![
                    acquire("user:b", "bucket", bucket),
                    acquire("user:b", "seven", seven),
                ],
                // After kind 2, whose last counter has the same limit.
                3 => vec![
                    acquire("user:c", "seven", seven),
                    acquire("user:c", "seven-too", seven),
                ],
                _ => vec![acquire("user:d", "three", three)],
            };
            let decision = store.apply(&request).await.expect("Redis answers");
            (kind, decision)
        });
    }
    let mut admitted = [0; 5];
    let mut shared_left = Vec::new();
    while let Some(joined) = requests.join_next().await {
        let (kind, decision) = joined.expect("the request completes");
        if decision.allowed() {
            admitted[kind] += 1;
            if kind < 2 {
                shared_left.push(decision.limits()[0].remaining());
            }
        }
    }
    assert_eq!(admitted[0] + admitted[1], 10, "{admitted:?}");
    assert!(admitted[0] > 0 && admitted[1] > 0, "{admitted:?}");
    shared_left.sort_unstable();
    assert_eq!(shared_left, (0..10).collect::<Vec<u64>>());
    assert_eq!(admitted[2], 7, "{admitted:?}");
    assert_eq!(admitted[3], 7, "{admitted:?}");
    assert_eq!(admitted[4], 3, "{admitted:?}");

    let calls = script_calls(&redis.url()).await;
    assert!(
        calls * 4 <= (EACH * 5) as u64,
        "{calls} script calls for {} requests",
        EACH * 5
    );
    // The denied requests of the window of 7 took nothing from their bucket: 3 of its 10 left.
    let left = store
        .apply(&[Transition {
            op: Op::Acquire { cost: 0 },
            ..acquire("user:b", "bucket", &limits[0])
        }])
        .await
        .expect("Redis answers");
    assert_eq!(left.limits()[0].remaining(), 3);
}

/// Every gateway asks once per `step` for `steps` steps, when `asks(step, gateway)`; the
/// instants admitted, in order.
async fn hammer(
    stores: &[RedisStore],
    clock: &sluice_core::ManualClock,
    limit: &Limit,
    name: &str,
    step: Duration,
    steps: usize,
    asks: impl Fn(usize, usize) -> bool,
) -> Vec<u64> {
    let mut admitted = Vec::new();
    for at in 0..steps {
        for (gateway, store) in stores.iter().enumerate() {
            if !asks(at, gateway) {
                continue;
            }
            let request = [acquire("global", name, limit)];
            let decision = store.apply(&request).await.expect("Redis answers");
            if decision.allowed() {
                admitted.push(clock.now().as_nanos());
            }
        }
        clock.advance(step);
    }
    admitted
}

/// The most admitted in any interval beyond what `burst + interval / emission` allows: 0 for
/// an exact token bucket.
fn excess(admitted: &[u64], burst: u64, emission: u64) -> u64 {
    let mut worst = 0;
    for (i, first) in admitted.iter().enumerate() {
        for (j, last) in admitted.iter().enumerate().skip(i) {
            let count = (j - i + 1) as u64;
            let allowed = burst + (last - first) / emission;
            worst = worst.max(count.saturating_sub(allowed));
        }
    }
    worst
}

/// A token bucket counted in blocks, three gateways asking far more than it allows: in no
/// interval does the fleet admit more than block × gateways beyond the exact limit (the bound
/// `Limit::in_blocks` states), it admits most of what the exact limit does, and Redis sees
/// a small fraction of the calls. The same limit counted exactly, in the same run, is the
/// baseline. One gateway asks rarely and then in a burst, spending a block taken a second
/// earlier on top of what the others took since: the over-admission the bound is about.
#[tokio::test]
async fn blocks_of_a_token_bucket_stay_within_their_bound() {
    let redis = RedisServer::start();
    let (clock, stores) = fleet(&redis).await;
    // 100 per 10 s: one every 100 ms, 5 at once.
    let exact = Limit::token_bucket(100, Duration::from_secs(10), 5).expect("a valid limit");
    let blocks = exact.clone().in_blocks(5).expect("a valid block");
    let step = Duration::from_millis(10);
    let emission = 100_000_000;

    // Gateway 0 asks at the start of every 1.5 s, then 4 times a second later.
    let asks = |at: usize, gateway: usize| gateway > 0 || matches!(at % 150, 0 | 100..=103);
    reset_stats(&redis.url()).await;
    let baseline = hammer(&stores, &clock, &exact, "exact", step, 2_000, asks).await;
    let exact_calls = script_calls(&redis.url()).await;
    reset_stats(&redis.url()).await;
    let approximate = hammer(&stores, &clock, &blocks, "blocks", step, 2_000, asks).await;
    let block_calls = script_calls(&redis.url()).await;
    let requests = (0..2_000)
        .flat_map(|at| (0..3).map(move |gateway| (at, gateway)))
        .filter(|&(at, gateway)| asks(at, gateway))
        .count() as u64;

    assert_eq!(
        excess(&baseline, 5, emission),
        0,
        "the exact limit is exact"
    );
    let over = excess(&approximate, 5, emission);
    // Gateway 0's late spending shows: the bound is what holds it, not the traffic's shape.
    assert!(over > 0, "the late block never showed");
    assert!(over <= 5 * 3, "blocks admitted {over} beyond the limit");
    assert!(
        approximate.len() * 10 >= baseline.len() * 8,
        "blocks admitted {} where the exact limit admitted {}",
        approximate.len(),
        baseline.len()
    );
    assert_eq!(
        exact_calls, requests,
        "the exact limit calls Redis per request"
    );
    assert!(
        block_calls * 10 <= exact_calls,
        "blocks called Redis {block_calls} times for {requests} requests"
    );
    eprintln!(
        "exact: {} admitted, {exact_calls} calls; blocks: {} admitted, {block_calls} calls, \
         at most {over} beyond the limit in any interval",
        baseline.len(),
        approximate.len()
    );
}

/// A fixed window counted in blocks never admits more than its capacity in a window (a block
/// is spent only in the window it was taken in), and loses at most block − 1 per gateway.
#[tokio::test]
async fn blocks_of_a_fixed_window_never_exceed_it() {
    let redis = RedisServer::start();
    let (clock, stores) = fleet(&redis).await;
    let limit = Limit::fixed_window(50, Period::Span(60_000_000_000))
        .and_then(|limit| limit.in_blocks(10))
        .expect("a valid limit");
    reset_stats(&redis.url()).await;
    // 3 gateways × 4 per second for 3 minutes: 720 asked per window of 50.
    let admitted = hammer(
        &stores,
        &clock,
        &limit,
        "window",
        Duration::from_millis(250),
        720,
        |_, _| true,
    )
    .await;
    let calls = script_calls(&redis.url()).await;
    eprintln!(
        "{} admitted of 2,160 asked in 3 windows of 50, {calls} calls to Redis",
        admitted.len()
    );
    let start = FLEET_START * 1_000_000_000;
    for window in 0..4 {
        let from = (start / 60_000_000_000 + window) * 60_000_000_000;
        let in_window = admitted
            .iter()
            .filter(|&&at| at >= from && at < from + 60_000_000_000)
            .count();
        assert!(in_window <= 50, "window {window} admitted {in_window}");
        let whole = from >= start && from + 60_000_000_000 <= start + 180_000_000_000;
        if whole {
            assert!(
                in_window >= 50 - 3 * 9,
                "window {window} admitted only {in_window}"
            );
        }
    }
    assert!(
        calls * 10 <= 2_160,
        "Redis saw {calls} calls for 2,160 requests"
    );
}

/// Concurrent first requests on a hot key each take a block: the gateway keeps every unit
/// they took, so it admits the whole window's 50 rather than losing all but the last block.
#[tokio::test]
async fn concurrent_takes_add_up() {
    let redis = RedisServer::start();
    let store = connect(&redis.url()).await;
    let limit = Limit::fixed_window(50, Period::Span(3_600_000_000_000))
        .and_then(|limit| limit.in_blocks(10))
        .expect("a valid limit");
    let request = [acquire("global", "hot", &limit)];
    let ask = || admitted_of(&store, &request, 1);
    let first = tokio::join!(ask(), ask(), ask(), ask(), ask(), ask(), ask(), ask());
    let first = [
        first.0, first.1, first.2, first.3, first.4, first.5, first.6, first.7,
    ];
    let admitted = first.iter().sum::<usize>();
    assert_eq!(admitted, 5, "five blocks of 10 fit in 50: {first:?}");
    assert_eq!(
        admitted + admitted_of(&store, &request, 60).await,
        50,
        "every unit taken is spent"
    );
}

/// An operator's reset of a counter counted in blocks takes effect on the gateway that made it
/// at once: the refusal it held locally is dropped with the count, so the next request takes a
/// fresh block instead of being refused until the old window's end.
#[tokio::test]
async fn a_reset_clears_what_the_gateway_holds() {
    let redis = RedisServer::start();
    let store = connect(&redis.url()).await;
    let limit = Limit::fixed_window(20, Period::Span(3_600_000_000_000))
        .and_then(|limit| limit.in_blocks(10))
        .expect("a valid limit");
    let request = [acquire("user:7", "hot", &limit)];
    assert_eq!(
        admitted_of(&store, &request, 25).await,
        20,
        "the window's 20, then refused"
    );
    let reset = [Transition {
        op: Op::Reset,
        ..acquire("user:7", "hot", &limit)
    }];
    assert_eq!(
        admitted_of(&store, &reset, 1).await,
        1,
        "a reset always succeeds"
    );
    let after = store.apply(&request).await.expect("Redis answers");
    assert!(after.allowed(), "refused after the reset: {after:?}");
    // Reported as Redis counts it: from zero again, with this gateway's fresh block of 10.
    assert_eq!(after.limits()[0].remaining(), 10, "counted from zero again");
}
