//! Builds the HTTP server: middleware order, routes, and graceful shutdown.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::ErrorHandlers;
use actix_web::{App, HttpServer, web};
use tokio::sync::watch;

use crate::app::AppState;
use crate::config::{Config, MeterMode};
use crate::domain::Clock;
use crate::error;
use crate::{console, gateway, jobs, metering, routes, telemetry};

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long graceful shutdown waits for in-flight calls, then for the meter.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A bound, not yet running, payg server (and its metrics listener).
pub struct Application {
    server: Server,
    metrics_server: Server,
    port: u16,
    metrics_port: u16,
    state: web::Data<AppState>,
    shutdown: (watch::Sender<bool>, watch::Receiver<bool>),
    revocation_listener: tokio::task::JoinHandle<()>,
}

/// How long startup waits to hear the deny-list before serving anyway
/// (signed-in routes answer 503 until it is heard; metered calls serve).
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(2);

impl Application {
    /// Binds the listener first (port 0 picks a free port, for tests), then
    /// builds the state and the server.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(config.bind).map_err(|e| anyhow::anyhow!("binding PAYG_BIND={}: {e}", config.bind))?;
        let port = listener.local_addr()?.port();
        let metrics_listener = TcpListener::bind(config.metrics_bind)
            .map_err(|e| anyhow::anyhow!("binding PAYG_METRICS_BIND={}: {e}", config.metrics_bind))?;
        let metrics_port = metrics_listener.local_addr()?.port();
        let workers = config.workers.max(1);
        let state = web::Data::new(AppState::build(config, clock).await?);

        let app_state = state.clone();
        // The authenticator, the metrics and the metering middleware's needs
        // are app data of their own, so those parts never see AppState.
        let authenticator = web::Data::from(state.authenticator.clone());
        let metrics = web::Data::from(state.metrics.clone());
        let metering = web::Data::from(state.metering.clone());
        let clients = web::Data::from(state.clients.clone());
        let upstream_tls = state.upstream_tls.clone();
        let server = HttpServer::new(move || {
            // actix runs the LAST .wrap() FIRST. Outside-in, a request meets:
            //   1. request_telemetry — request id, one log line, HTTP metrics
            //   2. DefaultHeaders    — `X-Content-Type-Options: nosniff` on every answer
            //   3. ErrorHandlers     — gives actix's own 404/405/413 the JSON envelope
            //                          (the console's HTML pages pass as they are)
            //   4. routing; the metered scope adds metered_call (auth, limits,
            //      counting), every other /api/v1 route authenticate_first;
            //      /console adds the console's guard (CSRF before any handler,
            //      cookies, security headers); any other path reaches the
            //      gateway's catch-all, inside metered_call too
            App::new()
                .app_data(app_state.clone())
                .app_data(authenticator.clone())
                .app_data(metrics.clone())
                .app_data(metering.clone())
                .app_data(clients.clone())
                // Upstream clients are per worker (awc is single-threaded).
                .app_data(web::Data::new(gateway::Pools::new(&upstream_tls)))
                .app_data(
                    web::JsonConfig::default()
                        .limit(MAX_BODY_BYTES)
                        .error_handler(error::json_error),
                )
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
                .app_data(web::QueryConfig::default().error_handler(error::query_error))
                .app_data(web::PathConfig::default().error_handler(error::path_error))
                .wrap(
                    ErrorHandlers::new()
                        .default_handler_client(error::envelope_framework_errors)
                        .default_handler_server(error::envelope_framework_errors),
                )
                .wrap(
                    actix_web::middleware::DefaultHeaders::new()
                        .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")),
                )
                .wrap(actix_web::middleware::from_fn(telemetry::request_telemetry))
                .configure(routes::configure_root)
                .service(
                    web::scope(routes::API_PREFIX)
                        .service(
                            web::scope(routes::TOOLS_SCOPE)
                                .wrap(actix_web::middleware::from_fn(metering::metered_call))
                                .configure(routes::tools::configure),
                        )
                        .service(
                            web::scope("")
                                .wrap(actix_web::middleware::from_fn(
                                    crate::routes::extract::authenticate_first,
                                ))
                                .configure(routes::configure_api),
                        ),
                )
                .configure(console::configure)
                .configure(routes::configure_gateway)
        })
        .workers(workers)
        // We handle signals ourselves so the meter is flushed after the
        // server has drained (see `run_until_stopped`).
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .listen(listener)?
        .run();

        let metrics_state = state.clone();
        let metrics_server = HttpServer::new(move || {
            App::new()
                .app_data(metrics_state.clone())
                .route("/metrics", web::get().to(serve_metrics))
        })
        .workers(1)
        .disable_signals()
        .listen(metrics_listener)?
        .run();

        // The deny-list is in memory before the first request is served.
        let shutdown = watch::channel(false);
        let revocation_listener =
            jobs::spawn_revocation_listener(state.authenticator.clone(), state.redis.clone(), shutdown.1.clone());
        let waited = tokio::time::timeout(FIRST_SYNC_WAIT, async {
            while !state.authenticator.revocations().hearing() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!("serving before the deny-list could be read from Redis");
        }

        Ok(Self {
            server,
            metrics_server,
            port,
            metrics_port,
            state,
            shutdown,
            revocation_listener,
        })
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Stops the server gracefully when called: `stop(true)`.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (by `handle().stop(true)` or a
    /// signal), then: in-flight calls finish, the flusher stops, and every
    /// pending metered call is flushed before this returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (shutdown_tx, shutdown_rx) = self.shutdown;
        let meter = self.state.meter.clone();
        let state = self.state.clone().into_inner();
        let lease_sweeper = jobs::spawn_lease_sweeper(
            state.metering.rate_limits.clone(),
            state.metering.spend.clone(),
            shutdown_rx.clone(),
        );
        let spend_upkeep = jobs::spawn_spend_upkeep(state.metering.spend.clone(), shutdown_rx.clone());
        let flusher = jobs::spawn_flusher(meter.clone(), state.config.meter.flush_interval, shutdown_rx.clone());
        let committer = (state.config.meter.mode == MeterMode::Durable)
            .then(|| jobs::spawn_group_committer(meter.clone(), shutdown_rx.clone()));
        let scheduler = jobs::spawn_close_scheduler(state.clone(), shutdown_rx.clone());
        let catalog_refresh = jobs::spawn_catalog_refresh(state.clone(), shutdown_rx.clone());
        let webhooks = jobs::spawn_webhook_dispatcher(state.webhooks.clone(), shutdown_rx.clone());
        let key_revalidation = jobs::spawn_key_revalidation(state, shutdown_rx.clone());
        let metrics_handle = self.metrics_server.handle();
        let metrics_server = tokio::spawn(self.metrics_server);
        let served = self.server.await;
        metrics_handle.stop(true).await;
        let _ = metrics_server.await;
        // Only now: in-flight durable calls waited for their group above.
        let _ = shutdown_tx.send(true);
        let _ = flusher.await;
        if let Some(committer) = committer {
            let _ = committer.await;
        }
        let _ = scheduler.await;
        let _ = catalog_refresh.await;
        let _ = key_revalidation.await;
        let _ = lease_sweeper.await;
        let _ = spend_upkeep.await;
        let _ = webhooks.await;
        let _ = self.revocation_listener.await;
        let lost = meter.drain(SHUTDOWN_GRACE).await;
        if lost == 0 {
            tracing::info!("meter flushed; shut down cleanly");
        }
        served.map_err(Into::into)
    }
}

/// `GET /metrics` in the Prometheus text format.
async fn serve_metrics(state: web::Data<AppState>) -> actix_web::HttpResponse {
    state.refresh_gauges();
    actix_web::HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.encode())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
