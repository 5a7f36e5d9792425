//! The Redis backend: counters shared by every gateway of a fleet, each request decided by one
//! script call at the Redis server's instant.
//!
//! `decide.lua` is the engine's state machine ported to Lua. The Rust side sends it what needs
//! no stored state (window bounds, token-bucket steps, computed by `sluice_core`), and builds the
//! reported [`Decision`] by running [`sluice_core::decide`] on the states the script read, at the
//! instant it decided: the script changes the counters, the engine explains the change, and a
//! disagreement between the two is an error, never a silent difference.
//!
//! Keys are `sluice:v1:c:{SCOPE}NAME`: versioned, independent of Rust types, and hash-tagged by
//! the counter's scope (its identity), so one identity's counters share a cluster slot. A
//! request whose counters span several scopes on a Redis Cluster is applied scope by scope at
//! one instant: a scope that denies withdraws what the earlier scopes took (see
//! [`RedisStore::apply`]).

mod batch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, RedisFuture, Script, Value};
use sluice_core::{
    Algorithm, Clock, CounterState, Decision, Op, Period, Retry, SystemClock, Timestamp,
    Transition, clamp_cost, decide,
};
use smallvec::SmallVec;
use tokio::runtime::{Handle, Id as RuntimeId};
use tokio::sync::OnceCell;

use self::batch::{Batches, Call, malformed};
use crate::{Record, RecordStore, RecordTable, StoreError};

/// Where the counters are: one Redis server, or a Redis Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a primary with replicas behind one address): `redis://HOST:PORT[/DB]`.
    Single(String),
    /// A Redis Cluster, by some of its nodes: `redis+cluster://HOST:PORT,HOST:PORT,…`.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Reads a `--store` value that names Redis; `None` when it names something else.
    pub fn parse(spec: &str) -> Option<RedisTarget> {
        if let Some(nodes) = spec.strip_prefix("redis+cluster://") {
            let nodes = nodes
                .split(',')
                .map(str::trim)
                .filter(|node| !node.is_empty())
                .map(|node| format!("redis://{node}"))
                .collect();
            return Some(RedisTarget::Cluster(nodes));
        }
        if spec.starts_with("redis://") || spec.starts_with("rediss://") {
            return Some(RedisTarget::Single(spec.to_owned()));
        }
        None
    }
}

/// How the store talks to Redis.
#[derive(Clone, Debug)]
pub struct RedisStoreConfig {
    /// The longest a command may take before it fails.
    pub response_timeout: Duration,
    /// The longest connecting may take.
    pub connection_timeout: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> RedisStoreConfig {
        RedisStoreConfig {
            response_timeout: Duration::from_millis(250),
            connection_timeout: Duration::from_secs(1),
        }
    }
}

/// A circuit breaker: after `TRIP_AFTER` failures in a row, calls fail at once for
/// `COOL_DOWN`, so a Redis that is down or slow costs requests nothing while it recovers; the
/// first calls after the cool-down try Redis again, and one success closes the breaker.
#[derive(Debug, Default)]
struct Breaker {
    failures: AtomicU32,
    /// Local ns until which calls fail at once.
    open_until: AtomicU64,
}

const TRIP_AFTER: u32 = 3;
const COOL_DOWN: Duration = Duration::from_millis(500);

impl Breaker {
    fn admits(&self, now: Timestamp) -> bool {
        now.as_nanos() >= self.open_until.load(Ordering::Relaxed)
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self, now: Timestamp) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= TRIP_AFTER {
            let until = now.saturating_add(COOL_DOWN).as_nanos();
            self.open_until.store(until, Ordering::Relaxed);
        }
    }

    fn is_failing(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }
}

/// Counters (and records) in Redis or a Redis Cluster, over one multiplexed connection per
/// runtime that calls it.
pub struct RedisStore {
    connections: Connections,
    script: Script,
    announce: Script,
    /// Tests decide at this clock's instants; otherwise the server's clock decides.
    clock: Option<Arc<dyn Clock>>,
    /// The local clock, for estimating the server's instant (window bounds sent with a call).
    local: SystemClock,
    /// The server's clock minus the local one, in ns, as of the last reply.
    offset: AtomicI64,
    breaker: Breaker,
    /// Gateways that announced themselves within their lease, as of the last announcement.
    instances: AtomicU64,
    /// Blocks taken for limits counted in blocks ([`sluice_core::Limit::in_blocks`]), by
    /// counter key.
    blocks: Mutex<HashMap<Vec<u8>, Held>>,
}

/// What this gateway holds for one counter of a limit counted in blocks.
#[derive(Clone, Copy, Debug)]
enum Held {
    /// `left` units taken from Redis and not yet spent, spendable until `until` (the server's
    /// instant); `state` is the counter in Redis just after the take.
    Block {
        left: u64,
        state: CounterState,
        until: Timestamp,
    },
    /// Redis refused a block when the counter was `state`: until `until`, when the block
    /// could be taken, requests are refused here against that state.
    Refused {
        state: CounterState,
        until: Timestamp,
    },
}

impl Held {
    fn until(&self) -> Timestamp {
        match self {
            Held::Block { until, .. } | Held::Refused { until, .. } => *until,
        }
    }
}

/// What one counter of a request decided in blocks does.
#[derive(Clone, Copy)]
enum Plan {
    /// Spends from the block taken when the counter was this.
    Spend(CounterState),
    /// Refused, as the last take was against this state.
    Refused(CounterState),
    /// Takes a block from Redis.
    Take,
}

/// Whether a transition is decided in blocks: an acquisition that fits its limit's block.
fn in_blocks(transition: &Transition<'_>) -> bool {
    let block = transition.limit.block();
    block > 0 && matches!(transition.op, Op::Acquire { cost } if cost >= 1 && cost <= block)
}

fn cost_of(transition: &Transition<'_>) -> u64 {
    match transition.op {
        Op::Acquire { cost } => cost,
        _ => 0,
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "cluster",
                &matches!(*self.connections.opener, Opener::Cluster(_)),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Either connection, so that commands, scripts and pipelines are written once.
impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// How a connection is opened.
enum Opener {
    Single(redis::Client, ConnectionManagerConfig),
    Cluster(ClusterClient),
}

impl Opener {
    async fn open(&self) -> Result<Connection, StoreError> {
        match self {
            Opener::Single(client, config) => Ok(Connection::Single(
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map_err(unavailable)?,
            )),
            Opener::Cluster(client) => Ok(Connection::Cluster(
                client.get_async_connection().await.map_err(unavailable)?,
            )),
        }
    }
}

/// A runtime's connection, and on one server its batch queue (see [`batch`]).
#[derive(Clone)]
struct Local {
    connection: Connection,
    batches: Option<Batches>,
}

/// A runtime's connection, once opened.
type Opened = (RuntimeId, Arc<OnceCell<Local>>);

/// One multiplexed connection per tokio runtime that calls the store.
///
/// A connection's task runs on the runtime that opened it. The gateway serves from one
/// runtime per core; through a connection opened elsewhere, every call would wake that other
/// thread to write the command and again to hand back the reply. So each runtime opens its own
/// on its first call (concurrent first calls share the opening), its calls are written
/// together in one write (and on one server, decided together in one script call), and it
/// forgets its connection when it shuts down.
struct Connections {
    opener: Box<Opener>,
    open: Arc<Mutex<Vec<Opened>>>,
}

impl Connections {
    /// The calling runtime's connection, opened on its first call.
    async fn get(&self) -> Result<Connection, StoreError> {
        Ok(self.local().await?.connection)
    }

    /// The calling runtime's connection and batch queue, opened on its first call.
    async fn local(&self) -> Result<Local, StoreError> {
        let runtime = Handle::current();
        let id = runtime.id();
        let (cell, first) = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            match open.iter().find(|(owner, _)| *owner == id) {
                Some((_, cell)) => match cell.get() {
                    Some(connection) => return Ok(connection.clone()),
                    None => (Arc::clone(cell), false),
                },
                None => {
                    let cell = Arc::new(OnceCell::new());
                    open.push((id, Arc::clone(&cell)));
                    (cell, true)
                }
            }
        };
        if first {
            // The first call on this runtime. A runtime drops its tasks when it shuts down,
            // and this one's guard then forgets the connection, whose own task has gone too:
            // a later runtime given the same id opens a fresh one. (Spawned outside the lock:
            // on a runtime already shutting down the guard is dropped at once.)
            let guard = Forget {
                open: Arc::downgrade(&self.open),
                cell: Arc::downgrade(&cell),
            };
            drop(runtime.spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            }));
        }
        cell.get_or_try_init(|| async {
            let connection = self.opener.open().await?;
            let batches = matches!(connection, Connection::Single(_))
                .then(|| Batches::start(connection.clone()));
            Ok(Local {
                connection,
                batches,
            })
        })
        .await
        .cloned()
    }
}

/// Forgets one runtime's connection when dropped.
struct Forget {
    open: Weak<Mutex<Vec<Opened>>>,
    cell: Weak<OnceCell<Local>>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(open) = self.open.upgrade() {
            open.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(_, cell)| !std::ptr::eq(Arc::as_ptr(cell), self.cell.as_ptr()));
        }
    }
}

/// How often a call is sent again when the server's instant fell outside the windows sent.
const STALE_RETRIES: usize = 3;
const SCRIPT: &str = include_str!("decide.lua");

/// The sorted set of live gateways: member the gateway's id, score the end of its lease in the
/// server's Unix ms. One slot, in a cluster too.
const INSTANCES: &str = "sluice:v1:i:{instances}";

/// Renews one gateway's lease, drops expired ones, counts the rest; the set itself expires
/// when every gateway has gone.
const ANNOUNCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], lease)
return redis.call('ZCARD', KEYS[1])
";

impl RedisStore {
    /// Connects to `target`; fails when no server answers within the connection timeout.
    pub async fn connect(
        target: &RedisTarget,
        config: &RedisStoreConfig,
    ) -> Result<RedisStore, StoreError> {
        let opener = match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                let manager = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(config.response_timeout))
                    .set_connection_timeout(Some(config.connection_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Opener::Single(client, manager)
            }
            RedisTarget::Cluster(nodes) => Opener::Cluster(
                ClusterClientBuilder::new(nodes.clone())
                    .response_timeout(config.response_timeout)
                    .connection_timeout(config.connection_timeout)
                    .retries(3)
                    .build()
                    .map_err(unavailable)?,
            ),
        };
        let store = RedisStore {
            connections: Connections {
                opener: Box::new(opener),
                open: Arc::default(),
            },
            script: Script::new(SCRIPT),
            announce: Script::new(ANNOUNCE),
            clock: None,
            local: SystemClock::new(),
            offset: AtomicI64::new(0),
            breaker: Breaker::default(),
            instances: AtomicU64::new(1),
            blocks: Mutex::default(),
        };
        // Opens this runtime's connection, loads the script (on every primary of a cluster)
        // and proves the server answers.
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(SCRIPT);
        store.query::<Value>(&load).await?;
        Ok(store)
    }

    /// Decides at `clock`'s instants instead of the server's: for tests, which move time by
    /// hand.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> RedisStore {
        self.clock = Some(clock);
        self
    }

    /// A number that changes whenever any gateway changes a record: a gateway polls it and
    /// reloads keys and overrides when it moves.
    pub async fn records_version(&self) -> Result<u64, StoreError> {
        let mut command = redis::cmd("GET");
        command.arg(RECORDS_VERSION);
        let version: Option<u64> = self.query(&command).await?;
        Ok(version.unwrap_or(0))
    }

    /// Announces gateway `id` as live for `lease`, forgets those whose lease ran out (by the
    /// server's clock), and returns how many are live. A gateway calls it more often than
    /// `lease`; the count is kept for [`RedisStore::live_instances`], and stays as it was while
    /// Redis is down.
    pub async fn announce(&self, id: &str, lease: Duration) -> Result<u64, StoreError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.announce.key(INSTANCES);
        invocation.arg(id).arg(lease_ms);
        let live: u64 = invocation
            .invoke_async(&mut self.connections.get().await?)
            .await
            .map_err(unavailable)?;
        let live = live.max(1);
        self.instances.store(live, Ordering::Relaxed);
        Ok(live)
    }

    /// How many gateways were live at the last announcement (1 before any).
    pub fn live_instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Whether the counters are in a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.connections.opener, Opener::Cluster(_))
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StoreError> {
        command
            .query_async(&mut self.connections.get().await?)
            .await
            .map_err(unavailable)
    }

    /// Sends one request's script call, with its runtime's batch on one server: its line of
    /// the reply.
    async fn invoke(&self, call: Call) -> Result<Vec<u8>, StoreError> {
        let now = self.local.now();
        if !self.breaker.admits(now) {
            return Err(StoreError::Unavailable(
                "Redis failed repeatedly; waiting before trying again".to_owned(),
            ));
        }
        let result = match self.connections.local().await {
            Ok(Local {
                batches: Some(batches),
                ..
            }) => batches.call(call).await,
            Ok(Local {
                mut connection,
                batches: None,
            }) => call.invoke(&self.script, &mut connection).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(value) => {
                self.breaker.succeeded();
                Ok(value)
            }
            Err(error) => {
                self.breaker.failed(self.local.now());
                Err(error)
            }
        }
    }

    /// Whether the last calls to Redis failed (it is down, unreachable or too slow).
    pub fn is_degraded(&self) -> bool {
        self.breaker.is_failing()
    }

    /// The instant a call will probably be decided at: the test clock's, or the local clock
    /// corrected by the server's offset.
    fn estimate(&self) -> Timestamp {
        match &self.clock {
            Some(clock) => clock.now(),
            None => shift(self.local.now(), self.offset.load(Ordering::Relaxed)),
        }
    }

    /// Applies one request's transitions atomically and reports them as the engine would.
    ///
    /// On one server (and on a cluster when every counter has the same scope) this is one
    /// script call: atomic, at the server's instant. On a cluster, counters of several scopes
    /// live on several nodes: they are applied scope by scope at the instant of the first
    /// scope's server, each step atomic; once a step denies, the later steps only count for
    /// limits that count rejected requests, and what the earlier steps took is given back. A
    /// concurrent request may then be denied by a unit that is given back an instant later,
    /// but no limit ever admits more than its capacity.
    pub async fn apply(&self, transitions: &[Transition<'_>]) -> Result<Decision, StoreError> {
        if transitions.is_empty() {
            return Ok(decide(self.estimate(), transitions, &mut []));
        }
        for (index, transition) in transitions.iter().enumerate() {
            if transitions
                .get(..index)
                .is_some_and(|earlier| earlier.iter().any(|t| t.key == transition.key))
            {
                return Err(StoreError::DuplicateKey(transition.key.clone()));
            }
        }
        if transitions.iter().all(in_blocks) {
            return self.apply_in_blocks(transitions).await;
        }
        let (now, mut states, allowed) = self.exchange(transitions).await?;
        self.forget_reset(transitions);
        Self::explain(now, transitions, &mut states, allowed)
    }

    /// Drops what this gateway holds for counters a request reset: their blocks were counted
    /// in what the reset erased, and a refusal held against the old count would outlast it.
    fn forget_reset(&self, transitions: &[Transition<'_>]) {
        let mut reset = transitions
            .iter()
            .filter(|transition| transition.op == Op::Reset && transition.limit.block() > 0)
            .peekable();
        if reset.peek().is_none() {
            return;
        }
        let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
        for transition in reset {
            blocks.remove(&counter_key(transition));
        }
    }

    /// Applies transitions in Redis: the instant, every counter's state before, and whether
    /// the request was admitted.
    async fn exchange(
        &self,
        transitions: &[Transition<'_>],
    ) -> Result<(Timestamp, Vec<CounterState>, bool), StoreError> {
        let now = self.clock.as_ref().map(|clock| clock.now());
        Ok(match self.steps(transitions) {
            None => {
                let reply = self.call(transitions, now, true).await?;
                (reply.now, reply.states, reply.admitted)
            }
            Some(steps) => self.apply_in_steps(transitions, &steps, now).await?,
        })
    }

    /// The engine's decision over the states Redis read (left as the request left them),
    /// which must agree with what Redis did.
    fn explain(
        now: Timestamp,
        transitions: &[Transition<'_>],
        states: &mut [CounterState],
        allowed: bool,
    ) -> Result<Decision, StoreError> {
        let decision = decide(now, transitions, states);
        if decision.allowed() != allowed {
            tracing::error!(
                allowed,
                ?transitions,
                "the Redis script and the engine disagree about a request"
            );
            return Err(StoreError::Storage(
                "the Redis script and the engine disagree about a request".to_owned(),
            ));
        }
        Ok(decision)
    }

    /// A request whose every counter is counted in blocks ([`sluice_core::Limit::in_blocks`]):
    /// spent from this gateway's blocks when each has enough left, refused here while a
    /// refused take stands, and otherwise one script call takes a block for each counter
    /// without one (the request's cost included) while the others spend locally.
    async fn apply_in_blocks(
        &self,
        transitions: &[Transition<'_>],
    ) -> Result<Decision, StoreError> {
        let now = self.estimate();
        let keys: SmallVec<[Vec<u8>; 4]> = transitions.iter().map(counter_key).collect();
        let plan: SmallVec<[Plan; 4]> = {
            let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
            let plan: SmallVec<[Plan; 4]> = transitions
                .iter()
                .zip(&keys)
                .map(|(transition, key)| match blocks.get(key) {
                    Some(Held::Block { left, state, until })
                        if now < *until && *left >= cost_of(transition) =>
                    {
                        Plan::Spend(*state)
                    }
                    Some(Held::Refused { state, until }) if now < *until => Plan::Refused(*state),
                    _ => Plan::Take,
                })
                .collect();
            if !plan.iter().any(|step| matches!(step, Plan::Refused(_))) {
                // Reserved now, so that concurrent requests never spend a unit twice; given
                // back if the request is refused.
                for ((transition, key), step) in transitions.iter().zip(&keys).zip(&plan) {
                    if let (Plan::Spend(_), Some(Held::Block { left, .. })) =
                        (step, blocks.get_mut(key))
                    {
                        *left -= cost_of(transition);
                    }
                }
            }
            plan
        };
        // Every counter spends locally, or one refusal refuses the request: no call.
        if plan.iter().any(|step| matches!(step, Plan::Refused(_)))
            || !plan.iter().any(|step| matches!(step, Plan::Take))
        {
            return Ok(Self::in_blocks_decision(now, transitions, &plan, &[]));
        }
        let takes: SmallVec<[Transition<'_>; 4]> = transitions
            .iter()
            .zip(&plan)
            .filter(|(_, step)| matches!(step, Plan::Take))
            .map(|(transition, _)| Transition {
                key: transition.key.clone(),
                limit: transition.limit,
                op: Op::Acquire {
                    cost: transition.limit.block(),
                },
            })
            .collect();
        let exchanged = self.exchange(&takes).await;
        let (server_now, before, allowed) = match exchanged {
            Ok(exchanged) => exchanged,
            Err(error) => {
                self.give_back_spent(transitions, &keys, &plan);
                return Err(error);
            }
        };
        let mut after = before.clone();
        let taken = Self::explain(server_now, &takes, &mut after, allowed)?;
        let gateways = self.live_instances();
        {
            let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
            let taken_keys = keys
                .iter()
                .zip(transitions)
                .zip(&plan)
                .filter(|(_, step)| matches!(step, Plan::Take));
            for (index, ((key, transition), _)) in taken_keys.enumerate() {
                let limit = transition.limit;
                let lifetime = limit
                    .block_lifetime(server_now, gateways)
                    .unwrap_or(server_now);
                let held = if allowed {
                    let left = limit.block() - cost_of(transition);
                    let state = after.get(index).copied().unwrap_or(CounterState::EMPTY);
                    match blocks.get(key) {
                        // Concurrent requests took blocks at once: their units add up, to be
                        // spent by the earlier block's end, rather than one replacing another.
                        Some(Held::Block {
                            left: held, until, ..
                        }) if *until > server_now => Held::Block {
                            left: held.saturating_add(left),
                            state,
                            until: (*until).min(lifetime),
                        },
                        _ => Held::Block {
                            left,
                            state,
                            until: lifetime,
                        },
                    }
                } else {
                    if let Some(Held::Block { left, until, .. }) = blocks.get(key)
                        && *left > 0
                        && *until > server_now
                    {
                        // A concurrent take landed: spend that first.
                        continue;
                    }
                    let status = taken.limits().get(index);
                    if !status.is_some_and(|status| status.denied()) {
                        continue;
                    }
                    let until = match status.and_then(|status| status.retry()) {
                        Some(Retry::After(wait)) => server_now.saturating_add(wait),
                        _ => lifetime,
                    };
                    Held::Refused {
                        state: before.get(index).copied().unwrap_or(CounterState::EMPTY),
                        until,
                    }
                };
                blocks.insert(key.clone(), held);
            }
        }
        if !allowed {
            self.give_back_spent(transitions, &keys, &plan);
        }
        Ok(Self::in_blocks_decision(
            server_now,
            transitions,
            &plan,
            &before,
        ))
    }

    /// The decision for a request decided in blocks, as the engine explains it: a take at the
    /// state Redis read (`taken_before`, in order of the takes), a refusal as the refused take
    /// against its state, a spend as a look (cost 0) at the counter just after its take.
    fn in_blocks_decision(
        now: Timestamp,
        transitions: &[Transition<'_>],
        plan: &[Plan],
        taken_before: &[CounterState],
    ) -> Decision {
        let mut takes = taken_before.iter();
        let mut states: SmallVec<[CounterState; 4]> = SmallVec::new();
        let explained: SmallVec<[Transition<'_>; 4]> = transitions
            .iter()
            .zip(plan)
            .map(|(transition, step)| {
                let (state, cost) = match step {
                    Plan::Spend(state) => (*state, 0),
                    Plan::Refused(state) => (*state, transition.limit.block()),
                    // No take when a refusal refused the request first: a look at nothing.
                    Plan::Take => match takes.next() {
                        Some(state) => (*state, transition.limit.block()),
                        None => (CounterState::EMPTY, 0),
                    },
                };
                states.push(state);
                Transition {
                    key: transition.key.clone(),
                    limit: transition.limit,
                    op: Op::Acquire { cost },
                }
            })
            .collect();
        decide(now, &explained, &mut states)
    }

    /// Gives the units a refused (or failed) request reserved back to their blocks.
    fn give_back_spent(&self, transitions: &[Transition<'_>], keys: &[Vec<u8>], plan: &[Plan]) {
        let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
        for ((transition, key), step) in transitions.iter().zip(keys).zip(plan) {
            if let (Plan::Spend(reserved), Some(Held::Block { left, state, .. })) =
                (step, blocks.get_mut(key))
                && state == reserved
            {
                *left += cost_of(transition);
            }
        }
    }

    /// Forgets blocks and refusals that ran out; a server calls it on a timer.
    pub fn sweep(&self) {
        let now = self.estimate();
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, held| held.until() > now);
    }

    /// The transitions' indices grouped by scope, when one script call cannot take them all:
    /// `None` on one server, or on a cluster when they share a scope (and so a slot).
    fn steps(&self, transitions: &[Transition<'_>]) -> Option<Vec<SmallVec<[usize; 4]>>> {
        if !self.is_cluster() {
            return None;
        }
        let mut steps: Vec<SmallVec<[usize; 4]>> = Vec::new();
        for (index, transition) in transitions.iter().enumerate() {
            let scope = transition.key.scope();
            let found = steps.iter_mut().find(|step| {
                step.first()
                    .and_then(|&first| transitions.get(first))
                    .is_some_and(|first| first.key.scope() == scope)
            });
            match found {
                Some(step) => step.push(index),
                None => steps.push(SmallVec::from_elem(index, 1)),
            }
        }
        (steps.len() > 1).then_some(steps)
    }

    /// A cluster request spanning scopes, one script call per scope (see [`RedisStore::apply`]):
    /// the instant, every counter's state before, and whether every step admitted.
    async fn apply_in_steps(
        &self,
        transitions: &[Transition<'_>],
        steps: &[SmallVec<[usize; 4]>],
        mut now: Option<Timestamp>,
    ) -> Result<(Timestamp, Vec<CounterState>, bool), StoreError> {
        let mut states = vec![CounterState::EMPTY; transitions.len()];
        let mut allowed = true;
        let mut taken: Vec<Transition<'_>> = Vec::new();
        for step in steps {
            let part = part(transitions, step);
            let reply = self.call(&part, now, allowed).await?;
            now = Some(reply.now);
            for (&index, state) in step.iter().zip(&reply.states) {
                if let Some(slot) = states.get_mut(index) {
                    *slot = *state;
                }
            }
            if allowed && reply.admitted {
                if part.iter().any(|transition| transition.limit.is_shadow()) {
                    // A shadow limit that would have denied took nothing to give back.
                    let mut moved = reply.states;
                    let decision = decide(reply.now, &part, &mut moved);
                    taken.extend(
                        part.into_iter()
                            .zip(decision.limits())
                            .filter(|(_, status)| !status.would_deny())
                            .map(|(transition, _)| transition),
                    );
                } else {
                    taken.extend(part);
                }
            } else {
                allowed = false;
            }
        }
        let now = now.unwrap_or_else(|| self.estimate());
        if !allowed {
            self.give_back(&taken, now).await?;
        }
        Ok((now, states, allowed))
    }

    /// Gives back what the admitted steps of a request that a later step denied took. Limits
    /// that count rejected requests keep the attempt, as they would have on one server.
    async fn give_back(&self, taken: &[Transition<'_>], now: Timestamp) -> Result<(), StoreError> {
        let releases: Vec<Transition<'_>> = taken
            .iter()
            .filter_map(|transition| match transition.op {
                Op::Acquire { cost } if cost > 0 && !transition.limit.counts_rejected() => {
                    Some(Transition {
                        key: transition.key.clone(),
                        limit: transition.limit,
                        op: Op::Release {
                            cost,
                            acquired_at: now,
                        },
                    })
                }
                _ => None,
            })
            .collect();
        if releases.is_empty() {
            return Ok(());
        }
        // Releases always succeed, so each step stands alone.
        match self.steps(&releases) {
            None => {
                self.call(&releases, Some(now), true).await?;
            }
            Some(steps) => {
                for step in &steps {
                    self.call(&part(&releases, step), Some(now), true).await?;
                }
            }
        }
        Ok(())
    }

    /// One script call over transitions that share a slot, retried when the server's instant
    /// fell outside the windows sent (a window boundary passed, or the clocks differ).
    async fn call(
        &self,
        transitions: &[Transition<'_>],
        now: Option<Timestamp>,
        apply: bool,
    ) -> Result<Reply, StoreError> {
        let mut estimate = now.unwrap_or_else(|| self.estimate());
        for _ in 0..STALE_RETRIES {
            let mut call = Call::with_keys(transitions.len());
            match now {
                Some(now) => call.arg(now.as_nanos()),
                None => call.arg(""),
            }
            .arg(if apply { "a" } else { "d" })
            .arg(transitions.len());
            for transition in transitions {
                call.key(&counter_key(transition));
                push_args(&mut call, transition, estimate);
            }
            let line = self.invoke(call).await?;
            let reply = Reply::parse(&line, transitions.len())?;
            if now.is_none() {
                let local = self.local.now().as_nanos();
                let offset = i128::from(reply.now.as_nanos()) - i128::from(local);
                self.offset
                    .store(i64::try_from(offset).unwrap_or_default(), Ordering::Relaxed);
            }
            if !reply.stale {
                return Ok(reply);
            }
            estimate = reply.now;
        }
        Err(StoreError::Storage(
            "the Redis server's clock kept moving outside the windows sent".to_owned(),
        ))
    }
}

/// The transitions of one step, by index.
fn part<'a>(transitions: &[Transition<'a>], step: &[usize]) -> SmallVec<[Transition<'a>; 4]> {
    step.iter()
        .filter_map(|&index| transitions.get(index).cloned())
        .collect()
}

/// What one script call said.
struct Reply {
    stale: bool,
    admitted: bool,
    now: Timestamp,
    states: Vec<CounterState>,
}

impl Reply {
    /// One request's line of the script's reply: `STATUS,INSTANT,BEFORE,…`.
    fn parse(line: &[u8], keys: usize) -> Result<Reply, StoreError> {
        fn number<T: std::str::FromStr>(field: Option<&[u8]>) -> Option<T> {
            std::str::from_utf8(field?).ok()?.parse().ok()
        }
        let mut fields = line.split(|&byte| byte == b',');
        let status: i64 = number(fields.next()).ok_or_else(malformed)?;
        let now = number(fields.next())
            .map(Timestamp::from_nanos)
            .ok_or_else(malformed)?;
        if status < 0 {
            return Ok(Reply {
                stale: true,
                admitted: false,
                now,
                states: Vec::new(),
            });
        }
        let states: Vec<CounterState> = fields.map(parse_state).collect();
        if states.len() != keys {
            return Err(malformed());
        }
        Ok(Reply {
            stale: false,
            admitted: status == 1,
            now,
            states,
        })
    }
}

/// A stored `window value aux expires_at`; anything else reads as empty, as in the script.
fn parse_state(text: &[u8]) -> CounterState {
    let parsed = std::str::from_utf8(text).ok().and_then(|text| {
        let mut fields = text.split(' ').map(|field| field.parse::<u64>().ok());
        let state = CounterState {
            window: fields.next()??,
            value: fields.next()??,
            aux: fields.next()??,
            expires_at: Timestamp::from_nanos(fields.next()??),
        };
        fields.next().is_none().then_some(state)
    });
    parsed.unwrap_or(CounterState::EMPTY)
}

/// `sluice:v1:c:{SCOPE}NAME`, the scope escaped so that it holds no brace (the hash tag ends at
/// the first `}`) and is never empty (an empty tag would not be a tag).
fn counter_key(transition: &Transition<'_>) -> Vec<u8> {
    let scope = transition.key.scope();
    let name = transition.key.name();
    let mut key = Vec::with_capacity(16 + scope.len() + name.len());
    key.extend_from_slice(b"sluice:v1:c:{");
    if scope.is_empty() {
        key.push(b'%');
    }
    for &byte in scope {
        if byte == b'{' || byte == b'}' || byte == b'%' || !byte.is_ascii_graphic() {
            key.extend_from_slice(format!("%{byte:02X}").as_bytes());
        } else {
            key.push(byte);
        }
    }
    key.push(b'}');
    key.extend_from_slice(name);
    key
}

/// Record tables live in one hash each, beside a version that every change increments; one
/// hash tag keeps them in one slot, so a change and its version move together.
fn record_key(table: RecordTable) -> &'static str {
    match table {
        RecordTable::Keys => "sluice:v1:r:{records}:keys",
        RecordTable::Overrides => "sluice:v1:r:{records}:overrides",
    }
}

const RECORDS_VERSION: &str = "sluice:v1:r:{records}:version";

/// The script's 11 values for one transition, with windows computed around `estimate`.
fn push_args(call: &mut Call, transition: &Transition<'_>, estimate: Timestamp) {
    let limit = transition.limit;
    let (op, cost, acquired_at) = match transition.op {
        // Clamped as the engine clamps them, which also keeps them below 2^53 in the script.
        Op::Acquire { cost } => ("a", clamp_cost(cost), estimate),
        Op::Release { cost, acquired_at } => ("r", clamp_cost(cost), acquired_at),
        Op::Renew { cost, acquired_at } => ("n", clamp_cost(cost), acquired_at),
        Op::Reset => ("x", 0, estimate),
    };
    let algorithm = match limit.algorithm() {
        Algorithm::FixedWindow => "f",
        Algorithm::SlidingWindow => "s",
        Algorithm::TokenBucket { .. } => "g",
        Algorithm::Concurrency => "c",
    };
    call.arg(algorithm)
        .arg(op)
        .arg(cost)
        .arg(limit.capacity())
        .arg(match (limit.counts_rejected(), limit.is_shadow()) {
            (false, false) => "0",
            (true, false) => "1",
            (false, true) => "s",
            (true, true) => "S",
        });
    let span = match limit.period() {
        Period::Span(span) => (*span).max(1),
        Period::Monthly(_) => 1,
    };
    let mut extra: [u64; 6] = [0; 6];
    match limit.algorithm() {
        Algorithm::FixedWindow => {
            let first = limit.period().window_at(estimate);
            let second = limit.period().window_at(first.end);
            let acquired = limit.period().window_at(acquired_at);
            extra = [
                first.index,
                first.start.as_nanos(),
                first.end.as_nanos(),
                second.index,
                second.end.as_nanos(),
                acquired.index,
            ];
        }
        Algorithm::SlidingWindow | Algorithm::Concurrency => {
            let index = estimate.as_nanos() / span;
            extra[..4].copy_from_slice(&[
                index,
                index.saturating_mul(span),
                span,
                acquired_at.as_nanos() / span,
            ]);
        }
        Algorithm::TokenBucket { .. } => {
            let terms = limit.bucket_terms(cost);
            extra[..5].copy_from_slice(&[
                terms.weight.0,
                terms.weight.1,
                terms.tolerance.0,
                terms.tolerance.1,
                terms.denominator,
            ]);
        }
    }
    for value in extra {
        call.arg(value);
    }
}

fn shift(at: Timestamp, offset: i64) -> Timestamp {
    let nanos = i128::from(at.as_nanos()).saturating_add(i128::from(offset));
    Timestamp::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

fn unavailable(error: RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl crate::CounterStore for RedisStore {
    async fn apply(&self, transitions: &[Transition<'_>]) -> Result<Decision, StoreError> {
        RedisStore::apply(self, transitions).await
    }

    fn is_degraded(&self) -> bool {
        RedisStore::is_degraded(self)
    }

    fn live_instances(&self) -> u64 {
        RedisStore::live_instances(self)
    }
}

impl RecordStore for RedisStore {
    async fn put_record(
        &self,
        table: RecordTable,
        id: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        match value {
            Some(value) => pipeline.hset(record_key(table), id, value),
            None => pipeline.hdel(record_key(table), id),
        };
        pipeline.incr(RECORDS_VERSION, 1);
        pipeline
            .query_async::<Value>(&mut self.connections.get().await?)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn records(&self, table: RecordTable) -> Result<Vec<Record>, StoreError> {
        let mut command = redis::cmd("HGETALL");
        command.arg(record_key(table));
        let mut records: Vec<Record> = self.query(&command).await?;
        records.sort();
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{CounterKey, Limit};

    fn key_of(scope: &[u8]) -> Vec<u8> {
        let limit = Limit::concurrency(1, Duration::from_secs(1)).expect("a valid limit");
        counter_key(&Transition {
            key: CounterKey::new(scope, b"n/0"),
            limit: &limit,
            op: Op::Reset,
        })
    }

    #[test]
    fn keys_are_tagged_by_an_escaped_scope() {
        assert_eq!(key_of(b"user:42"), b"sluice:v1:c:{user:42}n/0");
        assert_eq!(key_of(b""), b"sluice:v1:c:{%}n/0");
        assert_eq!(key_of(b"a}b{c%"), b"sluice:v1:c:{a%7Db%7Bc%25}n/0");
        assert_eq!(key_of(b"a b"), b"sluice:v1:c:{a%20b}n/0");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379"),
            Some(RedisTarget::Single("redis://127.0.0.1:6379".into()))
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:1, b:2"),
            Some(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert_eq!(RedisTarget::parse("./data"), None);
    }

    #[test]
    fn stored_states_parse_or_read_as_empty() {
        assert_eq!(
            parse_state(b"1 2 3 4"),
            CounterState {
                window: 1,
                value: 2,
                aux: 3,
                expires_at: Timestamp::from_nanos(4)
            }
        );
        assert_eq!(parse_state(b"1 2 3"), CounterState::EMPTY);
        assert_eq!(parse_state(b"1 2 3 4 5"), CounterState::EMPTY);
        assert_eq!(parse_state(b"x"), CounterState::EMPTY);
    }
}
