//! Checking the size of a resource a request links to (an image by URL), which needs the
//! network: the service asks a [`ResourceProbe`] that the front supplies.

use std::future::Future;
use std::pin::Pin;

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The resource is at most the size asked about.
    Within,
    /// The resource is larger.
    TooLarge,
    /// The resource could not be checked; the reason is shown to the client.
    Unavailable(String),
}

/// Finds out whether the resource at a URL is within a size.
pub trait ResourceProbe: Send + Sync {
    /// Whether the resource at `url` is at most `max` bytes. Private, loopback and link-local
    /// addresses must be refused unless `allow_private`.
    fn check<'a>(
        &'a self,
        url: &'a str,
        max: u64,
        allow_private: bool,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>>;
}
