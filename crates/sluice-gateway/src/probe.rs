//! The resource probe for image-by-URL size limits: `HEAD`, then (when that gives no length) a
//! `GET` read no further than the limit, each within a timeout. Names resolve only to public
//! addresses unless the rule allows private ones, redirects are followed only to acceptable URLs,
//! so a client cannot make the gateway reach into its own network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Client, StatusCode, Url, header};
use sluice_service::{ProbeOutcome, ResourceProbe, is_public};

/// Most redirects a probe follows.
const MAX_REDIRECTS: usize = 5;

/// Probes resources over HTTP(S).
#[derive(Debug)]
pub struct HttpProbe {
    /// Public addresses only.
    public: Client,
    /// Any address: for rules with `allow_private`.
    private: Client,
}

impl HttpProbe {
    /// A probe giving up on a resource after `timeout`.
    pub fn new(timeout: Duration) -> Result<HttpProbe, reqwest::Error> {
        let build = |allow_private: bool| {
            let builder = Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .user_agent(concat!(
                    "sluice/",
                    env!("CARGO_PKG_VERSION"),
                    " (size probe)"
                ))
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= MAX_REDIRECTS {
                        attempt.error("too many redirects")
                    } else if acceptable(attempt.url(), allow_private) {
                        attempt.follow()
                    } else {
                        attempt.error("redirected to a private or non-web address")
                    }
                }));
            if allow_private {
                builder.build()
            } else {
                builder.dns_resolver(Arc::new(PublicOnly)).build()
            }
        };
        Ok(HttpProbe {
            public: build(false)?,
            private: build(true)?,
        })
    }

    async fn size_check(&self, url: Url, max: u64, allow_private: bool) -> ProbeOutcome {
        let client = if allow_private {
            &self.private
        } else {
            &self.public
        };
        if let Ok(response) = client.head(url.clone()).send().await
            && response.status().is_success()
            && let Some(length) = declared_length(&response)
        {
            return within(length, max);
        }
        let mut response = match client.get(url).send().await {
            Ok(response) => response,
            Err(error) => return unavailable(&error),
        };
        let status = response.status();
        if !status.is_success() {
            return ProbeOutcome::Unavailable(format!(
                "could not be fetched (HTTP {})",
                status.as_u16()
            ));
        }
        if let Some(length) = declared_length(&response) {
            return within(length, max);
        }
        // No length declared: count the bytes, and stop as soon as they pass the limit.
        let mut seen: u64 = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    seen = seen.saturating_add(chunk.len() as u64);
                    if seen > max {
                        return ProbeOutcome::TooLarge;
                    }
                }
                Ok(None) => return ProbeOutcome::Within,
                Err(error) => return unavailable(&error),
            }
        }
    }
}

impl ResourceProbe for HttpProbe {
    fn check<'a>(
        &'a self,
        url: &'a str,
        max: u64,
        allow_private: bool,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>> {
        Box::pin(async move {
            match Url::parse(url) {
                Ok(url) if acceptable(&url, allow_private) => {
                    self.size_check(url, max, allow_private).await
                }
                _ => ProbeOutcome::Unavailable("is not an acceptable URL".to_owned()),
            }
        })
    }
}

fn declared_length(response: &reqwest::Response) -> Option<u64> {
    if response.status() == StatusCode::PARTIAL_CONTENT {
        return None;
    }
    response
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn within(length: u64, max: u64) -> ProbeOutcome {
    if length > max {
        ProbeOutcome::TooLarge
    } else {
        ProbeOutcome::Within
    }
}

fn unavailable(error: &reqwest::Error) -> ProbeOutcome {
    ProbeOutcome::Unavailable(if error.is_timeout() {
        "could not be fetched in time".to_owned()
    } else {
        "could not be fetched".to_owned()
    })
}

/// An https URL (http too when private hosts are allowed) whose host, when written as an
/// address, is public unless private ones are allowed. Names are checked when they resolve.
fn acceptable(url: &Url, allow_private: bool) -> bool {
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        _ => return false,
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => allow_private || is_public(ip.into()),
        Some(url::Host::Ipv6(ip)) => allow_private || is_public(ip.into()),
        Some(url::Host::Domain(_)) => true,
        None => false,
    }
}

/// Resolves names to their public addresses only; a name with none fails to resolve.
#[derive(Debug)]
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| is_public(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("`{host}` has no public address").into());
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}
