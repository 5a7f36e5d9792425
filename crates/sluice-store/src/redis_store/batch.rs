//! Batches: on one Redis server, the script calls that one runtime's requests make while a
//! call is out go to Redis together, as one script call that decides them one after another.
//!
//! Most of what a script call costs is the same for one request or many: Redis parses the
//! command, finds the script and runs it, and the gateway writes, reads and parses the
//! exchange. Deciding a batch per call spends that once per batch, on both sides, at any load
//! (a request alone goes at once, as a batch of one). Each request is still decided all or
//! nothing, in the order the calls were made, and a later request of a batch sees what the
//! earlier ones did: the same counts as calls of their own, at one server instant.
//!
//! A Redis Cluster gets no batches: a script's keys must share a slot, and a batch's would not.

use redis::{Arg, Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, ToRedisArgs, Value};
use tokio::sync::{mpsc, oneshot};

use super::{Connection, SCRIPT};
use crate::StoreError;

/// Most requests in one batch: bounds a call's size and how long Redis is busy with it.
const MAX_BATCH: usize = 128;

/// A request's values before its keys': the instant, apply or not, and the number of keys.
const HEAD: usize = 3;

/// Values per key (see `decide.lua`).
const KEY_VALUES: usize = 11;

/// Sent in place of a key's values when they are the same as the last key's that were sent:
/// requests of one limit repeat them, and Redis parses every value it is sent.
const SAME: &[u8] = b"=";

/// One request's script call: its keys and its values (see `decide.lua`), each list written
/// into one buffer.
#[derive(Debug)]
pub(super) struct Call {
    keys: Cmd,
    args: Cmd,
}

impl Call {
    /// A call with room for `keys` keys and their values.
    pub(super) fn with_keys(keys: usize) -> Call {
        let values = HEAD + KEY_VALUES * keys;
        Call {
            keys: Cmd::with_capacity(keys, 64 * keys),
            args: Cmd::with_capacity(values, 12 * values),
        }
    }

    pub(super) fn key(&mut self, key: &[u8]) {
        self.keys.arg(key);
    }

    pub(super) fn arg(&mut self, value: impl ToRedisArgs) -> &mut Call {
        self.args.arg(value);
        self
    }

    /// This call alone, over `connection`: its line of the reply.
    pub(super) async fn invoke(
        &self,
        script: &Script,
        connection: &mut Connection,
    ) -> Result<Vec<u8>, StoreError> {
        let reply = eval(script, &evalsha(script, [self]), connection).await;
        split(reply, 1).next().unwrap_or_else(|| Err(malformed()))
    }
}

/// `EVALSHA` of `script` over `calls`: every call's keys, then every call's values, a key's
/// values as [`SAME`] when the last key's sent were the same.
fn evalsha<'a, I>(script: &Script, calls: I) -> Cmd
where
    I: IntoIterator<Item = &'a Call>,
    I::IntoIter: Clone,
{
    let calls = calls.into_iter();
    let (mut keys, mut args, mut bytes) = (0, 0, 64);
    for call in calls.clone() {
        keys += call.keys.args_iter().len();
        for arg in call.keys.args_iter().chain(call.args.args_iter()) {
            args += 1;
            if let Arg::Simple(arg) = arg {
                bytes += arg.len();
            }
        }
    }
    let mut command = Cmd::with_capacity(3 + args, bytes);
    command.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    for call in calls.clone() {
        append(&mut command, &call.keys);
    }
    let mut sent: Option<[&[u8]; KEY_VALUES]> = None;
    for call in calls {
        let mut values = call.args.args_iter().filter_map(simple);
        for value in values.by_ref().take(HEAD) {
            command.arg(value);
        }
        for _ in 0..call.keys.args_iter().len() {
            let mut key: [&[u8]; KEY_VALUES] = [&[]; KEY_VALUES];
            for value in &mut key {
                *value = values.next().unwrap_or_default();
            }
            if sent == Some(key) {
                command.arg(SAME);
            } else {
                for value in key {
                    command.arg(value);
                }
                sent = Some(key);
            }
        }
    }
    command
}

/// Appends every value written into `from`.
fn append(command: &mut Cmd, from: &Cmd) {
    for arg in from.args_iter().filter_map(simple) {
        command.arg(arg);
    }
}

/// A value's bytes: a `Call` writes every value whole.
fn simple(arg: Arg<&[u8]>) -> Option<&[u8]> {
    match arg {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    }
}

/// Runs a script call, loading the script first when the server does not have it (a restart,
/// a `SCRIPT FLUSH`, a failover to a replica that never saw it).
async fn eval(script: &Script, command: &Cmd, connection: &mut Connection) -> RedisResult<Value> {
    match command.query_async(connection).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(connection).await?;
            command.query_async(connection).await
        }
        reply => reply,
    }
}

/// A runtime's queue of calls, sent in batches by a task on that runtime.
#[derive(Clone, Debug)]
pub(super) struct Batches {
    queue: mpsc::UnboundedSender<Job>,
}

struct Job {
    call: Call,
    reply: oneshot::Sender<Result<Vec<u8>, StoreError>>,
}

impl Batches {
    /// Starts the calling runtime's batch task, over `connection`.
    pub(super) fn start(connection: Connection) -> Batches {
        let (queue, jobs) = mpsc::unbounded_channel();
        drop(tokio::spawn(run(jobs, connection)));
        Batches { queue }
    }

    /// Sends `call` with the next batch: its line of the reply.
    pub(super) async fn call(&self, call: Call) -> Result<Vec<u8>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the Redis connection's task has stopped".into());
        self.queue.send(Job { call, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Sends the queued calls, all that are waiting (up to [`MAX_BATCH`]) in each script call, one
/// script call at a time: calls made while one is out wait for it, and go together next.
async fn run(mut jobs: mpsc::UnboundedReceiver<Job>, mut connection: Connection) {
    let script = Script::new(SCRIPT);
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = jobs.recv().await {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A request that stopped waiting (its client left) is not decided at all.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let command = evalsha(&script, batch.iter().map(|job| &job.call));
        let reply = eval(&script, &command, &mut connection).await;
        let lines = split(reply, batch.len());
        for (job, answer) in batch.drain(..).zip(lines) {
            let _ = job.reply.send(answer);
        }
    }
}

/// Cuts a batch's reply (one text, a line per call) into `calls` lines; every call gets the
/// batch's error when it failed, and a reply of another shape fails them all.
fn split(
    reply: RedisResult<Value>,
    calls: usize,
) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> {
    // `Err(None)`: the reply has another shape; `Err(Some(error))`: the call failed.
    let mut lines = match reply {
        Ok(Value::BulkString(text)) => {
            let lines: Vec<Vec<u8>> = text
                .split(|&byte| byte == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            if lines.len() == calls {
                Ok(lines.into_iter())
            } else {
                Err(None)
            }
        }
        Ok(_) => Err(None),
        Err(error) => Err(Some(error.to_string())),
    };
    (0..calls).map(move |_| match &mut lines {
        Ok(lines) => lines.next().ok_or_else(malformed),
        Err(None) => Err(malformed()),
        Err(Some(error)) => Err(StoreError::Unavailable(error.clone())),
    })
}

/// The error for a reply that is not in the script's shape.
pub(super) fn malformed() -> StoreError {
    StoreError::Storage("the Redis script answered in an unknown shape".into())
}
