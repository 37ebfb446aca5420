//! `AppState`: everything a request needs, built once and shared by all
//! workers through `web::Data`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::auth::{Authenticator, JwtKeys};
use crate::billing::{Clock, Period};
use crate::config::Config;
use crate::db::{self, DbPool};
use crate::metering::{Catalog, Meter};
use crate::models::Api;

pub struct AppState {
    pub config: Config,
    pub db: DbPool,
    pub redis: redis::Client,
    pub authenticator: Authenticator,
    pub catalog: Catalog,
    pub meter: Arc<Meter>,
    pub clock: Arc<dyn Clock>,
}

impl AppState {
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let db = db::build_pool(config.database_url.expose(), config.db_pool_size)?;
        let redis = redis::Client::open(config.redis_url.expose())
            .map_err(|e| anyhow::anyhow!("REDIS_URL is not a valid Redis URL: {e}"))?;
        let apis = {
            let mut conn = db
                .get()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e}"))?;
            Api::all(&mut conn).await?
        };
        let authenticator = Authenticator::new(
            JwtKeys::new(&config.jwt),
            db.clone(),
            config.auth_cache_ttl,
            clock.clone(),
            config.billing.overdue_days,
        );
        let meter = Arc::new(Meter::new(
            config.meter.mode,
            config.billing.currency,
            db.clone(),
        ));
        Ok(Self {
            catalog: Catalog::new(&apis),
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

    /// Re-reads the API catalog into memory (after an admin change here, and
    /// periodically to pick up changes made through other instances).
    pub async fn reload_catalog(&self) -> Result<(), crate::error::ApiError> {
        let mut conn = self.db.get().await?;
        let apis = Api::all(&mut conn).await?;
        self.catalog.replace(&apis);
        Ok(())
    }

    /// True when Redis answers PING within a second.
    pub async fn redis_ok(&self) -> bool {
        let ping = async {
            let mut conn = self.redis.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }
}
