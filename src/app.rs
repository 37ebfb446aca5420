//! `AppState`: everything a request needs, built once and shared by all
//! workers through `web::Data`. It composes the layers below it (auth,
//! metering, billing, models); none of them depends on it — the
//! authenticator, the metrics and the metering middleware's `Metering` are
//! registered as app data of their own for the code that needs only them.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::password::PasswordPool;
use crate::auth::tokens::TokenHasher;
use crate::auth::{AuthSettings, Authenticator, JwtKeys};
use crate::billing::close::{self, CloseError, CloseOutcome};
use crate::billing::payments::Recorded;
use crate::clients::Clients;
use crate::config::Config;
use crate::db::{self, DbPool};
use crate::domain::{Clock, Period};
use crate::gateway::TlsSettings;
use crate::metering::rate_limit::RateLimiter;
use crate::metering::spend::SpendLimiter;
use crate::metering::{Catalog, Meter, Metering};
use crate::models::Api;
use crate::redis_store::RedisStore;
use crate::telemetry::Metrics;
use crate::webhooks::Dispatcher;

pub struct AppState {
    pub config: Config,
    pub db: DbPool,
    pub redis: Arc<RedisStore>,
    pub authenticator: Arc<Authenticator>,
    /// argon2 on threads of its own, bounded (logins and registrations).
    pub passwords: PasswordPool,
    pub catalog: Arc<Catalog>,
    pub meter: Arc<Meter>,
    /// What the metering middleware gets as its own app data.
    pub metering: Arc<Metering>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Client addresses and the per-address buckets of unauthenticated routes.
    pub clients: Arc<Clients>,
    /// TLS for https upstreams (each worker builds its clients from it).
    pub upstream_tls: TlsSettings,
    /// Sends the webhook outbox (`jobs::spawn_webhook_dispatcher` runs it).
    pub webhooks: Arc<Dispatcher>,
    /// One catalog reload at a time, so an older read never replaces a
    /// newer one (the refresh loop and an admin change can overlap).
    catalog_reload: tokio::sync::Mutex<()>,
}

impl AppState {
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new()?);
        let db = db::build_pool(config.database_url.expose(), config.db_pool_size)?;
        let client = redis::Client::open(config.redis_url.expose())
            .map_err(|e| anyhow::anyhow!("REDIS_URL is not a valid Redis URL: {e}"))?;
        let redis = Arc::new(RedisStore::new(client, config.redis_prefix.clone()));
        let apis = {
            let mut conn = db
                .get()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e}"))?;
            Api::all_with_upstreams(&mut conn).await?
        };
        let clients = Arc::new(Clients::new(config.trusted_proxies.clone(), config.client_limits));
        let authenticator = Arc::new(Authenticator::new(
            JwtKeys::new(&config.jwt),
            db.clone(),
            redis.clone(),
            TokenHasher::new(config.api_key_secret.expose().as_bytes()),
            clock.clone(),
            clients.clone(),
            AuthSettings {
                standing_ttl: config.auth_cache_ttl,
                stale_if_error: config.stale_if_error,
                overdue_days: config.billing.overdue_days,
            },
        ));
        if config.meter.sync_alias {
            tracing::warn!(
                "PAYG_METER_MODE=sync is deprecated: it now means durable (group commit, same promise); set PAYG_METER_MODE=durable"
            );
        }
        let meter = Arc::new(Meter::new(
            config.meter.mode,
            config.billing.currency,
            db.clone(),
            metrics.clone(),
        ));
        let catalog = Arc::new(Catalog::new(&apis, &metrics));
        let metering = Arc::new(Metering {
            catalog: catalog.clone(),
            meter: meter.clone(),
            authenticator: authenticator.clone(),
            rate_limits: Arc::new(RateLimiter::new(config.rate_limit, redis.clone())),
            spend: Arc::new(SpendLimiter::new(
                meter.instance_id(),
                db.clone(),
                config.billing.currency,
                config.billing_tz,
            )),
            clock: clock.clone(),
            billing_tz: config.billing_tz,
            rate_limit_refusals: metrics.rate_limit_refusals.clone(),
            spending_refusals: metrics.spending_refusals.clone(),
        });
        let upstream_tls = TlsSettings::new(config.upstream_ca_file.as_deref())?;
        let webhooks = Arc::new(Dispatcher::new(
            db.clone(),
            crate::domain::webhook::UrlPolicy {
                allowed_hosts: config.webhook_allowed_hosts.clone(),
            },
            &upstream_tls,
            metrics.webhooks.clone(),
            chrono::TimeDelta::days(i64::from(config.billing.overdue_days)),
        )?);
        let passwords = PasswordPool::new(config.password_threads, config.password_queue)
            .map_err(|e| anyhow::anyhow!("starting the password hashing threads: {e}"))?;
        Ok(Self {
            catalog_reload: tokio::sync::Mutex::new(()),
            upstream_tls,
            webhooks,
            clients,
            passwords,
            catalog,
            metering,
            metrics,
            authenticator,
            meter,
            db,
            redis,
            clock,
            config,
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The period calls arriving now belong to.
    pub fn current_period(&self) -> Period {
        Period::containing(self.clock.now(), self.config.billing_tz)
    }

    /// Closes a period (see `billing::close`) and counts what it issued.
    pub async fn close_period(&self, period: Period) -> Result<CloseOutcome, CloseError> {
        let mut conn = self.db.get().await?;
        let outcome = close::close_period(
            &mut conn,
            period,
            self.now(),
            self.config.billing_tz,
            &self.config.billing,
        )
        .await?;
        if !outcome.already_closed {
            self.metrics
                .invoices_issued
                .inc_by(u64::try_from(outcome.invoices_issued).unwrap_or(0));
            self.webhooks.wake();
        }
        Ok(outcome)
    }

    /// What follows a recorded payment: it is counted, and a now-paid
    /// invoice lifts an overdue block at once, on every instance.
    pub async fn payment_recorded(&self, recorded: &Recorded) {
        if recorded.is_new() {
            self.metrics.payments_recorded.inc();
            self.webhooks.wake();
        }
        let invoice = recorded.invoice();
        if invoice.status == crate::models::InvoiceStatus::Paid {
            self.authenticator.user_changed(invoice.user_id).await;
        }
    }

    /// Refreshes the gauges that are read rather than counted.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        let pool = self.db.status();
        m.db_pool_size.set(i64::try_from(pool.size).unwrap_or(i64::MAX));
        m.db_pool_available
            .set(i64::try_from(pool.available).unwrap_or(i64::MAX));
        m.db_pool_waiting.set(i64::try_from(pool.waiting).unwrap_or(i64::MAX));
        m.meter_pending_calls
            .set(i64::try_from(self.meter.status().pending_calls).unwrap_or(i64::MAX));
        let redis_errors = self.redis.errors();
        let counted = m.redis_errors.get();
        if redis_errors > counted {
            m.redis_errors.inc_by(redis_errors - counted);
        }
    }

    /// Re-reads the API catalog into memory (after an admin change here, and
    /// periodically to pick up changes made through other instances).
    pub async fn reload_catalog(&self) -> Result<(), crate::error::ApiError> {
        let _one_at_a_time = self.catalog_reload.lock().await;
        let mut conn = self.db.get().await?;
        let apis = Api::all_with_upstreams(&mut conn).await?;
        self.catalog.replace(&apis, &self.metrics);
        Ok(())
    }
}
