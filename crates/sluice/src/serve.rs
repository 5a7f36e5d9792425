//! `sluice serve`: loads the policy (and its keys file), opens the store, binds the listener,
//! installs the signal handlers and runs the gateway until SIGTERM or Ctrl-C, reloading the
//! policy on SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_core::{Clock, SystemClock};
use sluice_gateway::{Admin, Gateway, GatewayConfig, HttpProbe, ServerTls, Upstream};
use sluice_policy::Policy;
use sluice_service::{KeyRing, LiveService, Service};
use sluice_store::{
    AnyStore, EmbeddedStore, EmbeddedStoreConfig, MemoryStore, RedisStore, RedisStoreConfig,
    RedisTarget,
};

/// Flags of `sluice serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The policy file (YAML) to enforce.
    #[arg(long, env = "SLUICE_POLICY", value_name = "FILE")]
    policy: PathBuf,
    /// Address to listen on. Without --upstream, the listener serves the decision API
    /// (POST /v1/check) and health checks only.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The API to proxy admitted requests to, e.g. http://127.0.0.1:9000 (a base path is kept).
    /// An https:// upstream's certificate is checked against Mozilla's roots for its name.
    #[arg(long, env = "SLUICE_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Certificates (PEM) to trust besides Mozilla's roots for an https:// upstream: a private
    /// CA's.
    #[arg(
        long,
        env = "SLUICE_UPSTREAM_CA",
        value_name = "FILE",
        requires = "upstream"
    )]
    upstream_ca: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, the server's own first), for a gateway that
    /// is the edge. SIGHUP reads it and --tls-key again (a renewed certificate needs no restart).
    #[arg(
        long,
        env = "SLUICE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "SLUICE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Address of the admin API (usage, resets, overrides, keys, metrics). Keep it on loopback
    /// or a private network.
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    admin_listen: SocketAddr,
    /// Also serve Envoy's rate limit service (gRPC `envoy.service.ratelimit.v3`, plaintext
    /// HTTP/2) on this address, deciding descriptors by the policy's `envoy:` section: point
    /// Envoy's or Istio's rate limit cluster here.
    #[arg(long, env = "SLUICE_RLS_LISTEN", value_name = "ADDR")]
    rls_listen: Option<SocketAddr>,
    /// The admin API's bearer token. Without one, a token is generated and written with the
    /// admin address to DIR/admin.json (readable by this user only), where `sluice keys` finds
    /// it; on `--store memory` the admin API is then off.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Also reload the policy whenever the policy file, or the keys file it names, changes
    /// (looked at once a second), as SIGHUP does: for a file another process updates, such as
    /// a Kubernetes ConfigMap.
    #[arg(long, env = "SLUICE_WATCH_POLICY")]
    watch_policy: bool,
    #[command(flatten)]
    options: GatewayOptions,
}

/// Flags shared by `serve` and `demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayOptions {
    /// Where counters, API keys and overrides live: a directory (the embedded store: counters in
    /// memory, quota counts, keys and overrides durable in DIR/sluice.redb; created if missing),
    /// `memory` (nothing survives a restart), `redis://HOST:PORT[/DB]` (one Redis server shared
    /// by every gateway), or `redis+cluster://HOST:PORT,HOST:PORT,…` (a Redis Cluster).
    #[arg(
        long,
        env = "SLUICE_STORE",
        default_value = "sluice-data",
        value_name = "DIR|memory|redis://…|redis+cluster://…"
    )]
    pub(crate) store: String,
    /// Also serve the decision API (POST /v1/check) on the proxy's listener.
    #[arg(long, env = "SLUICE_DECISION_API")]
    decision_api: bool,
    /// How long the upstream may take to start answering before the client gets a 504, and to
    /// send each next part of a response's body before the client's connection is closed.
    #[arg(long, env = "SLUICE_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = duration)]
    upstream_timeout: Duration,
    /// How long a client may take to send a request's headers before it is disconnected.
    #[arg(long, env = "SLUICE_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    header_timeout: Duration,
    /// How long a client may leave a response unread, taking none of it, before it is
    /// disconnected.
    #[arg(long, env = "SLUICE_SEND_TIMEOUT", default_value = "60s", value_parser = duration)]
    send_timeout: Duration,
    /// How long a client may take to send a body the policy reads before it gets a 408.
    #[arg(long, env = "SLUICE_BODY_TIMEOUT", default_value = "10s", value_parser = duration)]
    body_timeout: Duration,
    /// How long probing a linked resource's size (an image by URL) may take.
    #[arg(long, env = "SLUICE_PROBE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub(crate) probe_timeout: Duration,
    /// Threads serving requests, each with its own event loop (default: one per core); with
    /// --rls-listen, as many again serve Envoy's calls.
    #[arg(long, env = "SLUICE_THREADS")]
    threads: Option<usize>,
    /// `auto`: when there is one serving thread per CPU this process may run on, pin each to a
    /// CPU of its own (left to the kernel, a thread is sometimes woken onto a busy CPU and its
    /// requests wait a scheduler tick); `off`: let the kernel place them.
    #[arg(
        long,
        env = "SLUICE_PIN_THREADS",
        default_value = "auto",
        value_name = "auto|off"
    )]
    pin_threads: PinThreads,
    /// On SIGTERM, how long requests in flight may take to finish before they are cut.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    drain_timeout: Duration,
    /// `on`: HTTP/2 for clients that ask for it — by ALPN `h2` over TLS, as browsers do, or with
    /// prior knowledge on a plain listener (h2c, as load balancers and service meshes speak to
    /// their backends) — and HTTP/1.1 for the others; `off`: HTTP/1.1 only. The upstream is
    /// spoken to in HTTP/1.1.
    #[arg(
        long,
        env = "SLUICE_HTTP2",
        default_value = "on",
        value_name = "on|off"
    )]
    http2: OnOff,
    /// The protocols an HTTP/1.1 client may switch to through the proxy (`Upgrade:`), or `off`.
    /// The opening handshake (a WebSocket's) is decided by the policy like any request; once the
    /// upstream agrees (101), bytes are copied both ways, and the request is settled when the
    /// tunnel closes, so a concurrency limit counts open tunnels. Any other `Upgrade` header is
    /// dropped as hop-by-hop. Never list `h2c`: the client would speak HTTP/2 to the upstream
    /// past the policy.
    #[arg(
        long,
        env = "SLUICE_UPGRADES",
        default_value = "websocket",
        value_name = "PROTOCOL,…|off",
        value_delimiter = ',',
        value_parser = upgrade_protocol
    )]
    upgrades: Vec<String>,
    /// A tunnel (an upgraded connection) that carries nothing either way for this long is closed
    /// (within twice this).
    #[arg(
        long,
        env = "SLUICE_TUNNEL_IDLE_TIMEOUT",
        default_value = "5m",
        value_parser = duration
    )]
    tunnel_idle_timeout: Duration,
}

/// `--http2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// `--pin-threads`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PinThreads {
    Auto,
    Off,
}

/// One protocol of `--upgrades`: a token, and not `h2c`.
fn upgrade_protocol(text: &str) -> Result<String, String> {
    let protocol = text.trim();
    if protocol.eq_ignore_ascii_case("h2c") {
        return Err(
            "h2c cannot be passed through: a client would speak HTTP/2 to the upstream \
                    past the policy (h2c smuggling)"
                .to_owned(),
        );
    }
    if protocol.is_empty() || !protocol.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(format!("`{text}` is not a protocol name"));
    }
    Ok(protocol.to_owned())
}

fn duration(text: &str) -> Result<Duration, String> {
    sluice_policy::parse_duration(text)
}

/// A policy and its keys, read from disk and validated.
pub(crate) struct Deployment {
    pub(crate) policy: Arc<Policy>,
    pub(crate) keys: KeyRing,
}

/// Reads and validates the policy at `path` and the keys file it names.
pub(crate) fn load(path: &Path) -> anyhow::Result<Deployment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    let keys_text = |policy: &Policy| -> anyhow::Result<Option<(String, String)>> {
        let Some(keys_path) = keys_path(path, policy) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&keys_path)
            .with_context(|| format!("cannot read keys file {}", keys_path.display()))?;
        Ok(Some((keys_path.display().to_string(), text)))
    };
    from_text(&path.display().to_string(), &text, keys_text)
}

/// The keys file the policy at `path` names, if it names one: relative to the policy's directory.
fn keys_path(path: &Path, policy: &Policy) -> Option<PathBuf> {
    let file = policy.authentication.as_ref()?.keys_file.as_ref()?;
    Some(path.parent().unwrap_or(Path::new(".")).join(file))
}

/// Validates a policy given as text, and the keys file `keys_text` finds for it.
pub(crate) fn from_text(
    name: &str,
    text: &str,
    keys_text: impl FnOnce(&Policy) -> anyhow::Result<Option<(String, String)>>,
) -> anyhow::Result<Deployment> {
    let policy = sluice_policy::load(name, text).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let keys = match keys_text(&policy)? {
        Some((keys_name, keys_text)) => KeyRing::new(
            sluice_policy::load_keys(&keys_name, &keys_text, &policy)
                .map_err(|errors| anyhow::anyhow!("{errors}"))?,
        ),
        None => KeyRing::default(),
    };
    Ok(Deployment {
        policy: Arc::new(policy),
        keys,
    })
}

impl GatewayOptions {
    /// The gateway's configuration with `upstream`.
    pub(crate) fn config(&self, upstream: Option<Upstream>) -> GatewayConfig {
        GatewayConfig {
            upstream,
            decision_api: self.decision_api,
            upstream_timeout: self.upstream_timeout,
            header_read_timeout: self.header_timeout,
            send_timeout: self.send_timeout,
            body_read_timeout: self.body_timeout,
            drain_timeout: self.drain_timeout,
            pin_threads: matches!(self.pin_threads, PinThreads::Auto),
            http2: self.http2 == OnOff::On,
            upgrades: self
                .upgrades
                .iter()
                .map(|protocol| protocol.trim().to_owned())
                .filter(|protocol| !protocol.is_empty() && !protocol.eq_ignore_ascii_case("off"))
                .collect(),
            tunnel_idle_timeout: self.tunnel_idle_timeout,
            ..GatewayConfig::default()
        }
    }

    /// The service for `deployment` over the store the flags name, with what the store keeps
    /// (keys, overrides) loaded.
    pub(crate) async fn service(
        &self,
        deployment: Deployment,
        clock: &Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<LiveService<Arc<AnyStore>>>> {
        let store = self.store(Arc::clone(clock)).await?;
        let redis = matches!(*store, AnyStore::Redis(_));
        let service = service_over(deployment, store, self.probe_timeout, clock).await?;
        let services = Arc::new(LiveService::new(service));
        if redis {
            watch_records(Arc::downgrade(&services));
        }
        Ok(services)
    }

    /// Listeners on `address`, one per serving thread.
    pub(crate) fn listeners(
        &self,
        address: SocketAddr,
    ) -> anyhow::Result<Vec<std::net::TcpListener>> {
        let threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        sluice_gateway::bind_listeners(address, threads)
            .with_context(|| format!("cannot listen on {address}"))
    }

    /// The store the flags name, with a task that reclaims expired counters.
    pub(crate) async fn store(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<AnyStore>> {
        let store = Arc::new(open_store(&self.store, clock).await?);
        let sweeper = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                match sweeper.upgrade() {
                    Some(store) => store.sweep(),
                    None => break,
                }
            }
        });
        Ok(store)
    }
}

/// The service for `deployment` over `store`, with what the store keeps (keys, overrides) loaded.
async fn service_over(
    deployment: Deployment,
    store: Arc<AnyStore>,
    probe_timeout: Duration,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Arc<Service<Arc<AnyStore>>>> {
    let service = Service::new(deployment.policy, store, deployment.keys)
        .with_probe(Arc::new(HttpProbe::new(probe_timeout)?))
        .with_clock(Arc::clone(clock));
    service
        .reload()
        .await
        .context("cannot read the stored API keys and overrides")?;
    Ok(Arc::new(service))
}

/// How often a gateway on Redis looks whether another changed the shared keys or overrides,
/// and announces itself.
const RECORDS_POLL: Duration = Duration::from_secs(1);

/// How long an announcement keeps a gateway counted among the live ones: three missed polls.
const INSTANCE_LEASE: Duration = Duration::from_secs(3);

/// Reloads keys and overrides whenever any gateway sharing the Redis store changes them, and
/// announces this gateway as live, so that routes falling back to local counters know how many
/// gateways share each limit.
fn watch_records(services: std::sync::Weak<LiveService<Arc<AnyStore>>>) {
    let id = generate_token().unwrap_or_else(|_| std::process::id().to_string());
    tokio::spawn(async move {
        let mut seen = None;
        let mut tick = tokio::time::interval(RECORDS_POLL);
        loop {
            tick.tick().await;
            let Some(service) = services.upgrade().map(|services| services.current()) else {
                break;
            };
            let AnyStore::Redis(redis) = &**service.store() else {
                break;
            };
            if let Err(error) = redis.announce(&id, INSTANCE_LEASE).await {
                tracing::debug!(%error, "cannot announce this gateway");
            }
            match redis.records_version().await {
                Ok(version) if seen != Some(version) => {
                    if seen.is_some()
                        && let Err(error) = service.reload().await
                    {
                        tracing::warn!(%error, "cannot reload the shared keys and overrides");
                        continue;
                    }
                    seen = Some(version);
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "cannot read the records' version"),
            }
        }
    });
}

/// Whether `spec` names a data directory (the embedded store), rather than memory or Redis.
pub(crate) fn is_directory(spec: &str) -> bool {
    spec != "memory" && RedisTarget::parse(spec).is_none()
}

/// Opens the store `spec` names (see `--store`).
pub(crate) async fn open_store(spec: &str, clock: Arc<dyn Clock>) -> anyhow::Result<AnyStore> {
    if spec == "memory" {
        return Ok(AnyStore::Memory(MemoryStore::new(clock)));
    }
    if let Some(target) = RedisTarget::parse(spec) {
        let store = RedisStore::connect(&target, &RedisStoreConfig::default())
            .await
            .with_context(|| format!("cannot connect to the Redis store at {spec}"))?;
        return Ok(AnyStore::Redis(store));
    }
    let store = EmbeddedStore::open(Path::new(spec), clock, EmbeddedStoreConfig::default())
        .with_context(|| format!("cannot open the store in {spec}"))?;
    Ok(AnyStore::Embedded(store))
}

/// Parses `--upstream`, trusting the certificates `ca_pem` (`--upstream-ca`) too.
pub(crate) fn upstream(text: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<Upstream> {
    let uri: http::Uri = text
        .parse()
        .with_context(|| format!("--upstream `{text}` is not a URL"))?;
    Upstream::trusting(&uri, ca_pem).map_err(|message| anyhow::anyhow!(message))
}

/// Concurrency limits count requests in flight, and the decision API cannot know when a call it
/// answered ends: it gives each slot back at once, unless the check holds it (`hold: true`) and
/// the caller settles it (`POST /v1/settle`). Says so once, for a policy that has any, so that
/// such a limit is not mistaken for one every check enforces.
fn warn_of_concurrency_limits(policy: &Policy) {
    let names: Vec<&str> = policy
        .routes
        .iter()
        .flat_map(|route| &route.limits)
        .chain(policy.plans.values().flat_map(|plan| &plan.limits))
        .filter(|limit| limit.algorithm == sluice_policy::AlgorithmName::Concurrency)
        .map(|limit| limit.name.as_str())
        .collect();
    if !names.is_empty() {
        tracing::warn!(
            limits = ?names,
            "concurrency limits hold a slot through the decision API only for checks that hold \
             it (\"hold\": true) until POST /v1/settle; any other check gives it back as soon \
             as it answers"
        );
    }
}

/// Resolves when the process is asked to stop (SIGTERM, or Ctrl-C).
pub(crate) async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before anything else: a SIGHUP that found no handler would end the process.
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP: the policy reloads only if watched");
            None
        }
    };
    crate::metrics::install()?;
    let (deployment, seen) = load_watched(&args.policy)?;
    let ca = match &args.upstream_ca {
        Some(file) => Some(
            std::fs::read(file)
                .with_context(|| format!("cannot read --upstream-ca {}", file.display()))?,
        ),
        None => None,
    };
    let upstream = args
        .upstream
        .as_deref()
        .map(|text| upstream(text, ca.as_deref()))
        .transpose()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let (chain, private) = read_tls(cert, key)?;
            let server = ServerTls::from_pem(&chain, &private).map_err(|why| {
                anyhow::anyhow!(
                    "--tls-cert {} / --tls-key {}: {why}",
                    cert.display(),
                    key.display()
                )
            })?;
            Some(TlsFiles {
                server: Arc::new(server),
                cert: cert.clone(),
                key: key.clone(),
            })
        }
        _ => None,
    };
    let decision_api = upstream.is_none() || args.options.decision_api;
    if decision_api {
        warn_of_concurrency_limits(&deployment.policy);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let services = args.options.service(deployment, &clock).await?;
    let listeners = args.options.listeners(args.listen)?;
    let mode = if upstream.is_some() {
        "proxy"
    } else {
        "decision API"
    };
    let address = listeners
        .first()
        .map(std::net::TcpListener::local_addr)
        .transpose()?;
    tracing::info!(
        listen = ?address,
        threads = listeners.len(),
        mode,
        tls = tls.is_some(),
        "sluice is serving"
    );
    let admin = start_admin(&args, &services).await?;
    let rls = start_rls(&args, &services).await?;
    let reloads = tokio::spawn(reload_policy(
        Arc::clone(&services),
        Reload {
            hangups,
            seen,
            path: args.policy.clone(),
            watch: args.watch_policy,
            probe_timeout: args.options.probe_timeout,
            clock: Arc::clone(&clock),
            decision_api,
            tls: tls.clone(),
        },
    ));
    let config = GatewayConfig {
        tls: tls.map(|files| files.server),
        ..args.options.config(upstream)
    };
    let gateway = Arc::new(Gateway::live(services, config, clock));
    gateway.serve_threads(listeners, stop_signal()).await?;
    if let Some(rls) = rls {
        rls.stop().await?;
    }
    reloads.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// How a running server reloads its policy.
struct Reload {
    /// SIGHUP, when it could be listened for.
    hangups: Option<tokio::signal::unix::Signal>,
    /// The files' contents when the policy in force was read ([`contents`]).
    seen: Vec<Option<u64>>,
    path: PathBuf,
    /// Also when the files change, not only on SIGHUP.
    watch: bool,
    probe_timeout: Duration,
    clock: Arc<dyn Clock>,
    decision_api: bool,
    /// The listener's certificate, read again with the policy.
    tls: Option<TlsFiles>,
}

/// The listener's TLS and the files it was read from.
#[derive(Clone)]
struct TlsFiles {
    server: Arc<ServerTls>,
    cert: PathBuf,
    key: PathBuf,
}

/// The certificate chain and key files' contents.
fn read_tls(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let chain = std::fs::read(cert)
        .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?;
    let private =
        std::fs::read(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?;
    Ok((chain, private))
}

/// Puts the certificate files' contents in force for new connections; on an error, the
/// certificate in force stays.
fn reload_tls(files: &TlsFiles) {
    let loaded = read_tls(&files.cert, &files.key).and_then(|(chain, private)| {
        files
            .server
            .reload(&chain, &private)
            .map_err(|why| anyhow::anyhow!(why))
    });
    match loaded {
        Ok(()) => tracing::info!(cert = %files.cert.display(), "certificate reloaded"),
        Err(error) => tracing::error!(
            cert = %files.cert.display(),
            "certificate not reloaded, the one in force stays: {error:#}"
        ),
    }
}

/// How often `--watch-policy` looks at the files.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the policy again on every SIGHUP (and, with `--watch-policy`, whenever the policy file
/// or the keys file it names changes) and puts it in force over the same store: counters carry
/// over by their limits' names, requests in flight finish under the policy they began under, and
/// connections stay open. A policy that does not load (a syntax error, a keys file gone, a file
/// caught half written) is reported with its file, line and column, and the one in force stays.
async fn reload_policy(services: Arc<LiveService<Arc<AnyStore>>>, mut reload: Reload) {
    let mut hangups = reload.hangups.take();
    // What `--watch-policy` compares: the policy's files, then the certificate's.
    let with_tls = |mut seen: Vec<Option<u64>>, tls: &Option<TlsFiles>| {
        if let Some(tls) = tls {
            seen.extend(contents(&[tls.cert.clone(), tls.key.clone()]));
        }
        seen
    };
    let watched = |services: &LiveService<Arc<AnyStore>>| {
        let mut files = vec![reload.path.clone()];
        files.extend(keys_path(&reload.path, services.current().policy()));
        with_tls(contents(&files), &reload.tls)
    };
    let mut seen = with_tls(std::mem::take(&mut reload.seen), &reload.tls);
    // 0 while the last reload failed, so that a policy left out is seen on a dashboard, not
    // only in a log line.
    metrics::gauge!("sluice_policy_last_reload_successful").set(1.0);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hangup = async {
            match &mut hangups {
                Some(hangups) => hangups.recv().await,
                None => std::future::pending().await,
            }
        };
        let cause = tokio::select! {
            received = hangup => match received {
                Some(()) => "SIGHUP",
                None => return,
            },
            _ = tick.tick(), if reload.watch => {
                let now = watched(&services);
                if now == seen {
                    continue;
                }
                seen = now;
                "a file changed"
            }
        };
        if let Some(tls) = &reload.tls {
            reload_tls(tls);
        }
        let path = &reload.path;
        let store = Arc::clone(services.current().store());
        let loaded = async {
            let (deployment, read) = load_watched(path)?;
            if reload.decision_api {
                warn_of_concurrency_limits(&deployment.policy);
            }
            let routes = deployment.policy.routes.len();
            let service =
                service_over(deployment, store, reload.probe_timeout, &reload.clock).await?;
            anyhow::Ok((service, routes, read))
        };
        match loaded.await {
            Ok((service, routes, read)) => {
                seen = with_tls(read, &reload.tls);
                services.replace(service);
                metrics::counter!("sluice_policy_reloads_total", "result" => "loaded").increment(1);
                metrics::gauge!("sluice_policy_last_reload_successful").set(1.0);
                tracing::info!(policy = %path.display(), routes, cause, "policy reloaded");
            }
            Err(error) => {
                metrics::counter!("sluice_policy_reloads_total", "result" => "failed").increment(1);
                metrics::gauge!("sluice_policy_last_reload_successful").set(0.0);
                tracing::error!(
                    policy = %path.display(),
                    cause,
                    "policy not reloaded, the one in force stays: {error:#}"
                );
            }
        }
    }
}

/// [`load`], and what `--watch-policy` compares from then on: the policy file as it was before
/// it was read (so a change made while it is read shows as a change), and the keys file it names.
fn load_watched(path: &Path) -> anyhow::Result<(Deployment, Vec<Option<u64>>)> {
    let mut seen = contents(&[path.to_path_buf()]);
    let deployment = load(path)?;
    seen.extend(contents(keys_path(path, &deployment.policy).as_slice()));
    Ok((deployment, seen))
}

/// What `files` hold now (a hash each, `None` for one that cannot be read): what
/// `--watch-policy` compares from one look to the next. Contents rather than modification
/// times, which some file systems keep to the second.
fn contents(files: &[PathBuf]) -> Vec<Option<u64>> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).ok()?;
            Some(BuildHasherDefault::<DefaultHasher>::default().hash_one(bytes))
        })
        .collect()
}

/// Where the admin API of a server using a data directory can be reached, for `sluice keys`.
pub(crate) const ADMIN_FILE: &str = "admin.json";

/// Starts the admin API, when it has a token (given, or generated beside an embedded store).
async fn start_admin(
    args: &ServeArgs,
    services: &Arc<LiveService<Arc<AnyStore>>>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let data_dir = is_directory(&args.options.store).then(|| PathBuf::from(&args.options.store));
    let token = match (&args.admin_token, &data_dir) {
        (Some(token), _) => token.clone(),
        (None, Some(_)) => generate_token()?,
        (None, None) => {
            tracing::info!(
                "admin API off: no data directory to write a token to, and no --admin-token"
            );
            return Ok(None);
        }
    };
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API", args.admin_listen))?;
    let address = listener.local_addr()?;
    if let Some(dir) = &data_dir {
        write_private(
            &dir.join(ADMIN_FILE),
            &serde_json::to_vec(&serde_json::json!({
                "url": format!("http://{address}"),
                "token": token,
            }))?,
        )?;
    }
    let mut admin = Admin::new(Arc::clone(services), &token);
    if let Some(metrics) = crate::metrics::handle() {
        let store = Arc::clone(services.current().store());
        admin = admin.with_metrics(move || {
            // 1 while the counter store (Redis) is not answering.
            metrics::gauge!("sluice_store_degraded").set(
                if sluice_store::CounterStore::is_degraded(&*store) {
                    1.0
                } else {
                    0.0
                },
            );
            // Gateways sharing the counters, as they last announced themselves.
            metrics::gauge!("sluice_store_instances")
                .set(sluice_store::CounterStore::live_instances(&*store) as f64);
            if let AnyStore::Embedded(embedded) = &*store {
                // The group commit at work: writes carried per fsync'd commit.
                let stats = embedded.commit_stats();
                metrics::counter!("sluice_store_commits_total").absolute(stats.commits);
                metrics::counter!("sluice_store_commit_writes_total").absolute(stats.writes);
            }
            metrics.render()
        });
    }
    tracing::info!(admin = %address, "admin API is serving");
    Ok(Some(tokio::spawn(
        Arc::new(admin).serve(listener, std::future::pending()),
    )))
}

/// Starts Envoy's rate limit service, when `--rls-listen` asks for it.
async fn start_rls(
    args: &ServeArgs,
    services: &Arc<LiveService<Arc<AnyStore>>>,
) -> anyhow::Result<Option<sluice_rls::Serving>> {
    let Some(address) = args.rls_listen else {
        return Ok(None);
    };
    if services.current().policy().envoy.is_none() {
        tracing::warn!(
            "--rls-listen is set but the policy has no `envoy:` section: every descriptor passes"
        );
    }
    // As many threads as the gateway's, each with its own listener on the one port.
    let listeners = args
        .options
        .listeners(address)
        .context("cannot listen for the rate limit service")?;
    let serving = sluice_rls::Rls::new(Arc::clone(services))
        .spawn_threads(listeners)
        .context("cannot start the rate limit service")?;
    Ok(Some(serving))
}

fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Writes `bytes` to `path`, readable and writable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{Cli, Command};

    fn serve(upgrades: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([
            "sluice",
            "serve",
            "--policy",
            "p.yaml",
            "--upgrades",
            upgrades,
        ])
    }

    #[test]
    fn upgrades_name_protocols_and_never_h2c() {
        let Ok(Cli {
            command: Command::Serve(args),
            ..
        }) = serve("websocket,Foo/2")
        else {
            panic!("two protocols");
        };
        assert_eq!(
            args.options.config(None).upgrades,
            ["websocket".to_owned(), "Foo/2".to_owned()]
        );
        let Ok(Cli {
            command: Command::Serve(off),
            ..
        }) = serve("off")
        else {
            panic!("off");
        };
        assert!(off.options.config(None).upgrades.is_empty());
        let refused = serve("websocket,h2c").expect_err("h2c refused").to_string();
        assert!(refused.contains("h2c smuggling"), "{refused}");
    }
}
