//! `sluice demo`: the two seed APIs' limits, replayed on a simulated clock, so a newcomer sees
//! the engine decide (admit, deny with an exact wait, reset) before any server exists.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_core::{
    Clock, CounterKey, Decision, Limit, ManualClock, MonthlyCycle, Op, Period, Retry, Timestamp,
    Transition,
};
use sluice_store::MemoryStore;

/// Flags of `sluice demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Requests each simulated client sends to Pixel Patrol's /submit-media.
    #[arg(long, env = "SLUICE_DEMO_REQUESTS", default_value_t = 1_002)]
    requests: u64,
}

/// 2026-11-22T10:15:30Z: the simulated clock's start.
const START: Timestamp = Timestamp::from_secs(1_795_342_530);

pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let clock = ManualClock::new(START);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    streampixel(&store, &clock)?;
    println!();
    pixel_patrol(&store, &clock, args.requests)?;
    Ok(())
}

/// Seed 000: `POST /projects/upload-file`, 1 request per 2 minutes per userId.
fn streampixel(store: &MemoryStore, clock: &ManualClock) -> anyhow::Result<()> {
    println!("Streampixel — POST /projects/upload-file: 1 request per 2 minutes per userId");
    let upload = Limit::token_bucket(1, Duration::from_secs(120), 1)?;
    let timeline = [
        ("user-a", 0),
        ("user-a", 30),
        ("user-b", 30),
        ("user-a", 119),
        ("user-a", 120),
    ];
    let mut elapsed = 0;
    for (user, at) in timeline {
        clock.advance(Duration::from_secs(at - elapsed));
        elapsed = at;
        let request = [Transition {
            key: CounterKey::new(format!("userId:{user}").as_bytes(), b"upload-file"),
            limit: &upload,
            op: Op::Acquire { cost: 1 },
        }];
        let decision = store
            .apply_now(&request)
            .context("the memory store refused")?;
        println!("  t+{at:>3}s {user}: {}", describe(&decision, clock));
    }
    Ok(())
}

/// Seed 001: `/submit-media` at 1,000 per minute per site key, and a monthly moderation quota.
fn pixel_patrol(store: &MemoryStore, clock: &ManualClock, requests: u64) -> anyhow::Result<()> {
    println!(
        "Pixel Patrol — /submit-media: 1,000 per minute per site key, 5,000 moderations a month"
    );
    let per_minute = Limit::fixed_window(1_000, Period::Span(60_000_000_000))?;
    let utc = MonthlyCycle::time_zone("UTC")?;
    let monthly = Limit::fixed_window(5_000, Period::Monthly(MonthlyCycle::calendar_month(utc)))?;
    let site = b"site:pk_demo";
    let mut shown = 0;
    for n in 1..=requests {
        let request = [
            Transition {
                key: CounterKey::new(site, b"submit-media/minute"),
                limit: &per_minute,
                op: Op::Acquire { cost: 1 },
            },
            Transition {
                key: CounterKey::new(site, b"moderations/month"),
                limit: &monthly,
                op: Op::Acquire { cost: 1 },
            },
        ];
        let decision = store
            .apply_now(&request)
            .context("the memory store refused")?;
        if n <= 2 || n + 3 > requests {
            println!("  request {n:>5}: {}", describe(&decision, clock));
            shown += 1;
        } else if shown == 2 {
            println!("  …");
            shown += 1;
        }
    }
    Ok(())
}

fn describe(decision: &Decision, clock: &ManualClock) -> String {
    let now = clock.now();
    let limits: Vec<String> = decision
        .limits()
        .iter()
        .map(|status| {
            let reset = status.reset().saturating_duration_since(now).as_secs();
            format!(
                "{}/{} left, reset in {reset}s",
                status.remaining(),
                status.limit()
            )
        })
        .collect();
    let verdict = match decision.retry() {
        None => "admitted".to_owned(),
        Some(Retry::After(wait)) => format!("429, retry after {:.3}s", wait.as_secs_f64()),
        Some(Retry::OnRelease) => "denied until a request in flight finishes".to_owned(),
        Some(Retry::Never) => "denied: costs more than the limit can ever admit".to_owned(),
    };
    format!("{verdict:<28} [{}]", limits.join("; "))
}
