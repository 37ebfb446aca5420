//! Sending the outbox: each instance claims due deliveries (a claim lapses
//! after [`HOLD`], so a killed instance's are sent by another, or by it
//! after a restart), signs each per the Standard Webhooks spec and POSTs it,
//! then records the attempt and schedules the retry (`domain::webhook::retry_after`).
//!
//! Deliveries to one endpoint do not wait on another's: each is its own
//! task, at most [`MAX_IN_FLIGHT`] per instance and [`PER_ENDPOINT`] per
//! endpoint (counted across instances by their claims), so a slow or dead
//! endpoint holds its own slots and no one else's.
//!
//! A consumer's endpoint is reached only on public addresses: the resolver
//! drops every other address a name resolves to, so the address checked is
//! the address connected to (DNS rebinding cannot slip past), and no
//! redirect is followed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::db::DbPool;
use crate::domain::webhook::{EventType, MAX_ATTEMPTS, NewEvent, UrlPolicy, is_public, retry_after, signature_header};
use crate::gateway::TlsSettings;
use crate::models::webhook::{AttemptOutcome, Claimed, Delivery, Endpoint, Outbox, invoice_facts};

/// How long a claim lasts: longer than an attempt can take.
pub const HOLD: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// One attempt, connection to last byte of the answer's head.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deliveries in flight from one instance.
pub const MAX_IN_FLIGHT: usize = 64;
/// Deliveries in flight to one endpoint.
pub const PER_ENDPOINT: i64 = 4;
/// How often the outbox is polled (sooner when woken).
const POLL_EVERY: Duration = Duration::from_millis(500);
const OVERDUE_EVERY: Duration = Duration::from_secs(30);
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// The delivery metrics, registered by `telemetry::metrics`.
#[derive(Clone)]
pub struct DeliveryMetrics {
    /// Attempts by event type and outcome (`delivered`, `failed`).
    pub attempts: IntCounterVec,
    /// Deliveries given up after every retry, by event type.
    pub given_up: IntCounterVec,
    /// Pending deliveries, by event type.
    pub backlog: IntGaugeVec,
    /// Age in seconds of the oldest pending delivery, by event type.
    pub backlog_age: IntGaugeVec,
}

pub struct Dispatcher {
    db: DbPool,
    policy: UrlPolicy,
    /// For admins' endpoints: any address.
    admin_client: reqwest::Client,
    /// For consumers' endpoints: public addresses only.
    consumer_client: reqwest::Client,
    wake: Notify,
    metrics: DeliveryMetrics,
    /// Invoices unpaid this long past their due date are overdue.
    overdue_after: chrono::TimeDelta,
    /// Claims this instance holds (delivery, claimed until), given back at
    /// shutdown.
    in_flight: Mutex<Vec<(Uuid, DateTime<Utc>)>>,
}

/// Resolves a consumer endpoint's host to its public addresses only (or
/// to any, for a host the admin allow-listed).
struct PublicOnly {
    policy: UrlPolicy,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let private_allowed = self.policy.private_allowed(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| private_allowed || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err("the host resolves to no public address".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn client(tls: &TlsSettings, resolver: Option<PublicOnly>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls.client_config())
        .redirect(reqwest::redirect::Policy::none())
        // Never through a proxy from the environment: it would resolve the
        // host itself, past the public-only resolver.
        .no_proxy()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("payg-webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(resolver) = resolver {
        builder = builder.dns_resolver(Arc::new(resolver));
    }
    Ok(builder.build()?)
}

impl Dispatcher {
    pub fn new(
        db: DbPool,
        policy: UrlPolicy,
        tls: &TlsSettings,
        metrics: DeliveryMetrics,
        overdue_after: chrono::TimeDelta,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            admin_client: client(tls, None)?,
            consumer_client: client(tls, Some(PublicOnly { policy: policy.clone() }))?,
            db,
            policy,
            wake: Notify::new(),
            metrics,
            overdue_after,
            in_flight: Mutex::new(Vec::new()),
        })
    }

    pub fn policy(&self) -> &UrlPolicy {
        &self.policy
    }

    /// Looks at the outbox now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends until `shutdown` flips; then gives back the claims of the
    /// deliveries still in flight (their receivers may get them twice:
    /// delivery is at least once, and the event id is the same).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        let mut last_overdue: Option<Instant> = None;
        let mut last_backlog: Option<Instant> = None;
        loop {
            while tasks.try_join_next().is_some() {}
            if last_overdue.is_none_or(|at| at.elapsed() >= OVERDUE_EVERY) {
                last_overdue = Some(Instant::now());
                self.emit_overdue(Utc::now()).await;
            }
            if last_backlog.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
                last_backlog = Some(Instant::now());
                self.measure_backlog(Utc::now()).await;
            }
            let free = MAX_IN_FLIGHT.saturating_sub(tasks.len());
            if free > 0 {
                for (claimed, endpoint) in self.claim(free).await {
                    let me = self.clone();
                    tasks.spawn(async move { me.deliver(claimed, endpoint).await });
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = self.wake.notified() => {}
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.changed() => break,
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let held: Vec<(Uuid, DateTime<Utc>)> =
            std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()));
        if !held.is_empty()
            && let Ok(mut conn) = self.db.get().await
            && let Err(e) = Delivery::release(&mut conn, &held).await
        {
            tracing::warn!(error = %e, "giving back webhook claims failed; they lapse in a minute");
        }
    }

    /// Claims up to `limit` due deliveries, with their endpoints.
    async fn claim(&self, limit: usize) -> Vec<(Claimed, Endpoint)> {
        let claimed = async {
            let mut conn = self.db.get().await.map_err(|e| anyhow::anyhow!(e))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let claimed = Delivery::claim_due(&mut conn, Utc::now(), HOLD, limit, PER_ENDPOINT).await?;
            let mut ids: Vec<Uuid> = claimed.iter().map(|c| c.endpoint_id).collect();
            ids.sort_unstable();
            ids.dedup();
            let endpoints: HashMap<Uuid, Endpoint> = if ids.is_empty() {
                HashMap::new()
            } else {
                Endpoint::by_ids(&mut conn, &ids)
                    .await?
                    .into_iter()
                    .map(|e| (e.id, e))
                    .collect()
            };
            anyhow::Ok((claimed, endpoints))
        }
        .await;
        match claimed {
            Ok((claimed, endpoints)) => {
                let mut held = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                held.extend(claimed.iter().map(|c| (c.id, c.locked_until)));
                drop(held);
                claimed
                    .into_iter()
                    .filter_map(|c| endpoints.get(&c.endpoint_id).cloned().map(|e| (c, e)))
                    .collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "claiming webhook deliveries failed");
                Vec::new()
            }
        }
    }

    /// One attempt, recorded (if recording fails the claim lapses and the
    /// delivery is attempted again: at least once).
    async fn deliver(&self, claimed: Claimed, endpoint: Endpoint) {
        let outcome = self.attempt(&claimed, &endpoint).await;
        let label = claimed.event_type.as_str();
        let result = if outcome.retry.is_none() { "delivered" } else { "failed" };
        self.metrics.attempts.with_label_values(&[label, result]).inc();
        let recorded = async {
            let mut conn = self.db.get().await.map_err(|e| anyhow::anyhow!(e))?;
            anyhow::Ok(Delivery::finish_attempt(&mut conn, &claimed, &outcome).await?)
        }
        .await;
        match recorded {
            // Given up only when this attempt decided it (not one a
            // redelivery superseded).
            Ok(true) if matches!(outcome.retry, Some(None)) => {
                self.metrics.given_up.with_label_values(&[label]).inc();
                tracing::warn!(delivery = %claimed.id, endpoint = %endpoint.id, event_type = label,
                    "webhook delivery given up after {} attempts", claimed.attempts);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, delivery = %claimed.id, "recording a webhook attempt failed; it is retried");
            }
        }
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|held| *held != (claimed.id, claimed.locked_until));
    }

    async fn attempt(&self, claimed: &Claimed, endpoint: &Endpoint) -> AttemptOutcome {
        let started = Instant::now();
        let now = Utc::now();
        let for_admin = endpoint.user_id.is_none();
        let result = match self.policy.check(&endpoint.url, for_admin) {
            Err(e) => Err(e.to_string()),
            Ok(_) => {
                let body = serde_json::to_vec(&claimed.payload).unwrap_or_default();
                let id = claimed.event_id.to_string();
                let timestamp = now.timestamp();
                let signature = signature_header(&endpoint.signing_secrets(now), &id, timestamp, &body);
                let client = if for_admin {
                    &self.admin_client
                } else {
                    &self.consumer_client
                };
                client
                    .post(&endpoint.url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .map(|res| res.status().as_u16())
                    .map_err(describe)
            }
        };
        let duration_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (status, error) = match result {
            Ok(status) if (200..300).contains(&status) => (Some(i32::from(status)), None),
            Ok(status) => (Some(i32::from(status)), Some(format!("the endpoint answered {status}"))),
            Err(e) => (None, Some(e)),
        };
        let retry = if error.is_none() {
            None
        } else if claimed.attempts >= MAX_ATTEMPTS {
            Some(None)
        } else {
            Some(
                retry_after(claimed.attempts)
                    .and_then(|wait| chrono::TimeDelta::from_std(wait).ok())
                    .map(|wait| Utc::now() + wait),
            )
        };
        AttemptOutcome {
            at: now,
            status,
            error,
            duration_ms,
            retry,
        }
    }

    /// Emits `invoice.overdue` for invoices overdue `as_of` (the job: now)
    /// and not yet announced (the dedupe key makes it once, whichever
    /// instance finds them first).
    pub async fn emit_overdue(&self, as_of: DateTime<Utc>) {
        let emitted = async {
            let mut conn = self.db.get().await.map_err(|e| anyhow::anyhow!(e))?;
            let invoices = Outbox::newly_overdue(&mut conn, as_of - self.overdue_after, 500).await?;
            let events: Vec<NewEvent> = invoices
                .iter()
                .map(|i| NewEvent::invoice(EventType::InvoiceOverdue, &invoice_facts(i)))
                .collect();
            anyhow::Ok(Outbox::emit(&mut conn, &events, Utc::now()).await?)
        }
        .await;
        match emitted {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(invoices = n, "invoices became overdue");
                self.wake();
            }
            Err(e) => tracing::debug!(error = %e, "looking for overdue invoices failed"),
        }
    }

    async fn measure_backlog(&self, now: DateTime<Utc>) {
        let backlog = async {
            let mut conn = self.db.get().await.map_err(|e| anyhow::anyhow!(e))?;
            anyhow::Ok(Delivery::backlog(&mut conn).await?)
        }
        .await;
        let Ok(backlog) = backlog else { return };
        for event_type in EventType::ALL {
            let label = event_type.as_str();
            let row = backlog.iter().find(|b| b.event_type == label);
            self.metrics
                .backlog
                .with_label_values(&[label])
                .set(row.map_or(0, |b| b.pending));
            let age = row
                .and_then(|b| b.oldest)
                .map_or(0, |oldest| (now - oldest).num_seconds().max(0));
            self.metrics.backlog_age.with_label_values(&[label]).set(age);
        }
    }
}

/// What went wrong, without the URL (it may carry a token in its query).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        let mut message = String::from("could not connect");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("could not connect: {s}");
            source = s.source();
        }
        message
    } else {
        e.to_string()
    }
}
