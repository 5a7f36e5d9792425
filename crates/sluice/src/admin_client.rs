//! `sluice keys` through a running server's admin API, for when the server holds the store.

use anyhow::{Context, bail};

use crate::keys_cmd::{Operation, Outcome};

/// Performs `operation` through the admin API at `url` with `token`.
pub(crate) async fn keys(
    url: &str,
    token: Option<&str>,
    operation: Operation,
) -> anyhow::Result<Outcome> {
    let Some(token) = token else {
        bail!("--admin-token (or SLUICE_ADMIN_TOKEN) is required with --admin");
    };
    let (method, path, body) = operation.request();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let method: reqwest::Method = method.parse()?;
    let mut request = client
        .request(method, format!("{}{path}", url.trim_end_matches('/')))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|problem| problem.get("detail")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("the admin API answered {status}: {detail}");
    }
    operation.answer(&bytes)
}
