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

use redis::{Script, ScriptInvocation, ToRedisArgs, Value};
use tokio::sync::{mpsc, oneshot};

use super::{Connection, SCRIPT};
use crate::StoreError;

/// Most requests in one batch: bounds a call's size and how long Redis is busy with it.
const MAX_BATCH: usize = 128;

/// One request's script call: its keys and its values (see `decide.lua`).
#[derive(Debug, Default)]
pub(super) struct Call {
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call {
    pub(super) fn key(&mut self, key: Vec<u8>) {
        self.keys.push(key);
    }

    pub(super) fn arg(&mut self, value: impl ToRedisArgs) -> &mut Call {
        value.write_redis_args(&mut self.args);
        self
    }

    /// The reply's length for this call: status, instant and each key's state.
    fn width(&self) -> usize {
        2 + self.keys.len()
    }

    /// This call alone, over `connection`: the reply's values.
    pub(super) async fn invoke(
        &self,
        script: &Script,
        connection: &mut Connection,
    ) -> Result<Vec<Value>, StoreError> {
        let mut invocation = script.prepare_invoke();
        self.add_keys_to(&mut invocation);
        self.add_args_to(&mut invocation);
        let reply = invocation.invoke_async(connection).await;
        split(reply, std::iter::once(self.width()))
            .next()
            .unwrap_or_else(|| Err(malformed()))
    }

    fn add_keys_to(&self, invocation: &mut ScriptInvocation<'_>) {
        for key in &self.keys {
            invocation.key(key.as_slice());
        }
    }

    fn add_args_to(&self, invocation: &mut ScriptInvocation<'_>) {
        for arg in &self.args {
            invocation.arg(arg.as_slice());
        }
    }
}

/// A runtime's queue of calls, sent in batches by a task on that runtime.
#[derive(Clone, Debug)]
pub(super) struct Batches {
    queue: mpsc::UnboundedSender<Job>,
}

struct Job {
    call: Call,
    reply: oneshot::Sender<Result<Vec<Value>, StoreError>>,
}

impl Batches {
    /// Starts the calling runtime's batch task, over `connection`.
    pub(super) fn start(connection: Connection) -> Batches {
        let (queue, jobs) = mpsc::unbounded_channel();
        drop(tokio::spawn(run(jobs, connection)));
        Batches { queue }
    }

    /// Sends `call` with the next batch: the reply's values.
    pub(super) async fn call(&self, call: Call) -> Result<Vec<Value>, StoreError> {
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
        let mut invocation = script.prepare_invoke();
        for job in &batch {
            job.call.add_keys_to(&mut invocation);
        }
        for job in &batch {
            job.call.add_args_to(&mut invocation);
        }
        let reply = invocation.invoke_async(&mut connection).await;
        let widths: Vec<usize> = batch.iter().map(|job| job.call.width()).collect();
        for (job, answer) in batch.drain(..).zip(split(reply, widths.into_iter())) {
            let _ = job.reply.send(answer);
        }
    }
}

/// Cuts a batch's reply into each call's values, `widths` long each; every call gets the
/// batch's error when it failed.
fn split(
    reply: redis::RedisResult<Value>,
    widths: impl Iterator<Item = usize>,
) -> impl Iterator<Item = Result<Vec<Value>, StoreError>> {
    let mut items = match reply {
        Ok(Value::Array(items)) => Ok(items.into_iter()),
        Ok(_) => Err(None),
        Err(error) => Err(Some(error.to_string())),
    };
    widths.map(move |width| match &mut items {
        Ok(items) => {
            let values: Vec<Value> = items.by_ref().take(width).collect();
            if values.len() == width {
                Ok(values)
            } else {
                Err(malformed())
            }
        }
        Err(None) => Err(malformed()),
        Err(Some(error)) => Err(StoreError::Unavailable(error.clone())),
    })
}

fn malformed() -> StoreError {
    StoreError::Storage("the Redis script answered in an unknown shape".into())
}
