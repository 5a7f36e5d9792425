//! `sluice demo`: the README's first command. The gateway enforcing Streampixel's policy (the
//! bundled example, or any `--policy`) in front of a built-in echo upstream. It sends a few
//! requests through itself — an admitted upload, the same upload again (429), a wrong key (401),
//! a wrong content type (415) — printing each as a `curl` line with the answer it got, then keeps
//! serving until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_core::{Clock, SystemClock};
use sluice_gateway::{Gateway, serve_echo};
use tokio::net::TcpListener;

use crate::serve::{self, Deployment, GatewayOptions};

/// Flags of `sluice demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A policy to enforce instead of the bundled Streampixel example (no sample requests are
    /// sent then).
    #[arg(long, env = "SLUICE_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    options: GatewayOptions,
}

const POLICY: &str = include_str!("../../../examples/streampixel/policy.yaml");
const KEYS: &str = include_str!("../../../examples/streampixel/keys.yaml");

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let bundled = args.policy.is_none();
    let Deployment { policy, keys } = match &args.policy {
        Some(path) => serve::load(path)?,
        None => serve::from_text("examples/streampixel/policy.yaml", POLICY, |_| {
            Ok(Some((
                "examples/streampixel/keys.yaml".to_owned(),
                KEYS.to_owned(),
            )))
        })?,
    };
    let service_name = policy.service.name.clone();

    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_address = echo.local_addr()?;
    tokio::spawn(serve_echo(echo, std::future::pending()));

    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let service = args
        .options
        .service(Deployment { policy, keys }, &clock)
        .await?;
    let upstream = serve::upstream(&format!("http://{echo_address}"), None)?;
    let listeners = args.options.listeners(args.listen)?;
    let address = listeners.first().context("no listener")?.local_addr()?;
    let gateway = Arc::new(Gateway::live(
        service,
        args.options.config(Some(upstream)),
        clock,
    ));
    let serving = tokio::spawn(gateway.serve_threads(listeners, serve::stop_signal()));

    println!("sluice demo: {service_name}'s API behind sluice at http://{address}");
    println!("(a built-in echo upstream answers admitted requests at http://{echo_address})");
    if bundled {
        samples(address).await?;
        println!();
        println!(
            "Your turn: the same upload with another userId is admitted once every 2 minutes."
        );
        println!("Policy: examples/streampixel/policy.yaml; keys: examples/streampixel/keys.yaml.");
        println!();
        println!("A client that retries as the API's page says, each attempt shown:");
        println!(
            "$ sluice call POST http://{address}/projects/upload-file --json '{UPLOAD}' --deadline 10s"
        );
    }
    println!("Press Ctrl-C to stop.");
    serving.await.context("the gateway task failed")??;
    Ok(())
}

/// One sample request: what it shows, its content type and its JSON body.
struct Sample {
    title: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const UPLOAD: &str = r#"{"apiKey":"sp_live_alice_demo_key","userId":"alice","projectId":"proj_1","fileUrl":"https://downloads.example.com/build.zip"}"#;

const SAMPLES: [Sample; 4] = [
    Sample {
        title: "An upload: admitted and forwarded, with the rate-limit headers",
        content_type: "application/json",
        body: UPLOAD,
    },
    Sample {
        title: "The same upload again: 1 request per 2 minutes per userId",
        content_type: "application/json",
        body: UPLOAD,
    },
    Sample {
        title: "A key the API does not know",
        content_type: "application/json",
        body: r#"{"apiKey":"sp_live_not_a_key","userId":"alice","projectId":"proj_1","fileUrl":"https://downloads.example.com/build.zip"}"#,
    },
    Sample {
        title: "Not JSON",
        content_type: "text/plain",
        body: "apiKey=sp_live_alice_demo_key",
    },
];

/// Sends the samples through the gateway at `address`, printing each with its answer.
async fn samples(address: SocketAddr) -> anyhow::Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let url = format!("http://{address}/projects/upload-file");
    for (number, sample) in SAMPLES.iter().enumerate() {
        println!();
        println!("# {}. {}", number + 1, sample.title);
        println!(
            "$ curl -i {url} -H 'content-type: {}' -d '{}'",
            sample.content_type, sample.body
        );
        let request = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, sample.content_type)
            .body(Full::new(Bytes::from_static(sample.body.as_bytes())))?;
        let response = client
            .request(request)
            .await
            .context("the demo could not reach its own gateway")?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        println!("HTTP/1.1 {}", parts.status);
        for (name, value) in &parts.headers {
            let shown = matches!(
                name.as_str(),
                "content-type" | "ratelimit-policy" | "ratelimit" | "retry-after" | "x-request-id"
            );
            if shown {
                println!("{name}: {}", value.to_str().unwrap_or("?"));
            }
        }
        println!("{}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
