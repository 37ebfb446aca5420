//! The background loops, all in one place: the meter flush (in durable mode:
//! the group commit, and the settlement of given-up groups), the scheduled
//! month close, the catalog refresh, the API-key revalidation, the listener
//! for pushed revocations, the rate-limit lease sweeper and the webhook
//! dispatcher. Each runs
//! until `shutdown` flips; `startup::Application::run_until_stopped` starts
//! and joins them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::auth::Authenticator;
use crate::auth::key_cache::REVALIDATE_EVERY;
use crate::auth::revocations::PING_EVERY;
use crate::billing::close::{CloseOutcome, periods_due_for_close};
use crate::metering::Meter;
use crate::metering::rate_limit::{RateLimiter, SWEEP_EVERY};
use crate::metering::spend::{self, SpendLimiter};
use crate::redis_store::{Event, RedisStore};
use crate::webhooks::Dispatcher;

/// How often the listener forgets expired deny-list entries and standings.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Flushes every `interval` until `shutdown` flips, backing off (up to
/// 5 s) while the database refuses. Prunes old flush ids hourly. In durable
/// mode a flush settles a given-up group (`Meter::flush`).
pub fn spawn_flusher(meter: Arc<Meter>, interval: Duration, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = interval;
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            delay = match meter.flush().await {
                Ok(_) => interval,
                Err(_) => (delay * 2).clamp(interval, Duration::from_secs(5)),
            };
            if last_prune.elapsed() > Duration::from_secs(3600) {
                last_prune = Instant::now();
                meter.prune_flush_log().await;
            }
        }
    })
}

/// Durable mode: commits a group as soon as a call waits for one, and the
/// next as soon as that one is answered (calls arriving meanwhile form it,
/// joined by the answered calls' clients for up to `GATHER_AT_MOST`).
/// One group in flight: consecutive groups touch the same hot rows, so a
/// second concurrent transaction would mostly wait for the first one's row
/// locks, and one writer keeps the retry-before-newer order of batched mode.
/// Stops when `shutdown` flips, which `run_until_stopped` does only after the
/// server has answered its in-flight calls.
pub fn spawn_group_committer(meter: Arc<Meter>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut expected = 0;
        loop {
            tokio::select! {
                _ = meter.calls_waiting() => {}
                _ = shutdown.changed() => return,
            }
            meter.gather(expected).await;
            expected = meter.commit_group().await;
        }
    })
}

/// Closes ended periods `PAYG_CLOSE_GRACE` after they end, checking every
/// minute. Safe on every instance at once: closing is locked and idempotent.
pub fn spawn_close_scheduler(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = close_due_periods(&state).await {
                tracing::warn!(error = %e, "scheduled period close failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Closes every period that is due (see [`spawn_close_scheduler`]).
pub async fn close_due_periods(state: &AppState) -> anyhow::Result<Vec<CloseOutcome>> {
    let due = {
        let mut conn = state.db.get().await?;
        periods_due_for_close(
            &mut conn,
            state.now(),
            state.config.billing_tz,
            state.config.billing.close_grace,
        )
        .await?
    };
    let mut outcomes = Vec::new();
    for period in due {
        outcomes.push(state.close_period(period).await?);
    }
    Ok(outcomes)
}

/// Picks up catalog changes made through other instances, every
/// `PAYG_CATALOG_REFRESH_MS` (one small query; an unchanged catalog is not
/// rebuilt).
pub fn spawn_catalog_refresh(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(state.config.catalog_refresh) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = state.reload_catalog().await {
                tracing::warn!(error = %e, "catalog refresh failed");
            }
        }
    })
}

/// Re-confirms the cached API keys every [`REVALIDATE_EVERY`] on a
/// connection of its own: were it to wait on a starved pool, every cached key
/// would outlive its trust at once and all calls would go to the database.
pub fn spawn_key_revalidation(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = None;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REVALIDATE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
            let outcome = match conn.as_mut() {
                Some(c) => state
                    .authenticator
                    .revalidate_keys(c)
                    .await
                    .map_err(anyhow::Error::from),
                None => match crate::db::connect(state.config.database_url.expose()).await {
                    Ok(c) => {
                        conn = Some(c);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                },
            };
            match outcome {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("API key revalidation works again");
                }
                Ok(()) => {}
                Err(e) => {
                    // Reconnect next round; cached keys meanwhile age out
                    // and calls look their keys up themselves.
                    conn = None;
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "API key revalidation failed");
                    }
                }
            }
        }
    })
}

/// Listens for pushed changes (logouts, user changes, key revocations) and
/// applies them to the authenticator's memory. Pub/sub was chosen over
/// Streams or keyspace notifications: it is one connection and no state in
/// Redis per message, delivery is immediate, and what it cannot do — keep
/// messages for an instance that was not listening — is covered by reading
/// the deny-list whole after every (re)subscription (`Revocations::resynced`);
/// keyspace notifications would need a server setting operators forget.
/// A ping every `PING_EVERY` proves the connection still carries messages;
/// when it does not, memory stops being trusted (`Revocations::hearing`)
/// and the listener reconnects, backing off up to 2 s.
pub fn spawn_revocation_listener(
    authenticator: Arc<Authenticator>,
    redis: Arc<RedisStore>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        let mut last_prune = Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Some((mut sink, mut messages)) = redis.subscribe().await {
                // Subscribed first, then read: a change published between
                // the two is both in the set and in the channel, never in
                // neither.
                if let Some(denied) = redis.denied_snapshot().await {
                    let lost_by_redis = authenticator.revocations().resynced(denied);
                    if !lost_by_redis.is_empty() {
                        // Off the listener, so it goes on hearing meanwhile.
                        let redis = redis.clone();
                        tokio::spawn(async move {
                            for (id, until_ms) in lost_by_redis {
                                redis.deny(id, until_ms).await;
                            }
                        });
                    }
                    backoff = Duration::from_millis(50);
                    tracing::info!("listening for revocations");
                    let mut ping = tokio::time::interval(PING_EVERY);
                    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => {
                                    let payload: String = message.get_payload().unwrap_or_default();
                                    authenticator.heard(&Event::decode(&payload));
                                }
                                None => break,
                            },
                            _ = ping.tick() => {
                                // A slow pong only ages what was heard (memory is
                                // trusted for HEARING_BOUND); a broken connection, or
                                // silence past the bound, means reconnecting.
                                match tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await {
                                    Ok(Ok(_)) => authenticator.revocations().heard(),
                                    Ok(Err(_)) => break,
                                    Err(_) if !authenticator.revocations().hearing() => break,
                                    Err(_) => {}
                                }
                                if last_prune.elapsed() >= PRUNE_EVERY {
                                    last_prune = Instant::now();
                                    authenticator.prune();
                                }
                            }
                            _ = shutdown.changed() => return,
                        }
                    }
                    tracing::warn!("lost the revocation channel; reconnecting");
                }
            }
            authenticator.revocations().lost();
            // Also while Redis is away: what expired must still go.
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                authenticator.prune();
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    })
}

/// Gives expired rate-limit leases' unused calls and idle spending budget
/// back every `SWEEP_EVERY`, and every lease's at shutdown (another
/// instance may serve them).
pub fn spawn_lease_sweeper(
    limiter: Arc<RateLimiter>,
    spend: Arc<SpendLimiter>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {
                    limiter.sweep(false).await;
                    spend.sweep(false).await;
                }
                _ = shutdown.changed() => {
                    limiter.sweep(true).await;
                    spend.sweep(true).await;
                    return;
                }
            }
        }
    })
}

/// Spending caps' upkeep: the price maxima read again every
/// `REFRESH_PRICES_EVERY` while capped users call, and this instance's
/// heartbeat on its leases every `HEARTBEAT_EVERY` (reclaiming those of
/// instances long silent).
pub fn spawn_spend_upkeep(spend: Arc<SpendLimiter>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_heartbeat: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(spend::REFRESH_PRICES_EVERY) => {
                    spend.refresh_prices().await;
                    if last_heartbeat.is_none_or(|at| at.elapsed() >= spend::HEARTBEAT_EVERY) {
                        last_heartbeat = Some(std::time::Instant::now());
                        spend.heartbeat().await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Sends the webhook outbox until `shutdown` flips (`webhooks::dispatch`).
pub fn spawn_webhook_dispatcher(dispatcher: Arc<Dispatcher>, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(dispatcher.run(shutdown))
}
