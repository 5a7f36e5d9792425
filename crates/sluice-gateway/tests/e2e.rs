//! The gateway end to end: the real server on a loopback port, each example policy, a real
//! upstream HTTP server behind it, and real HTTP in front. Time is a manual clock shared by the
//! store and the gateway, so windows pass without sleeping.

// A test binary has no public API: its helpers are `pub` only to be shared between modules.
#![allow(unreachable_pub)]

mod e2e {
    mod bad_input;
    mod decision_api;
    mod https_upstream;
    mod layer;
    mod pixelpatrol;
    mod proxy;
    mod reload;
    pub mod streampixel;
    pub mod support;
    mod tls_listener;
    mod websocket;
}
