//! PostgreSQL: the connection pool, embedded migrations and database creation.

use std::time::Duration;

use anyhow::Context;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

pub type DbPool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
pub type DbConn = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serialises migrations between instances that start at the same time.
const MIGRATION_LOCK_KEY: i64 = 0x7061_7967_6d69_6772; // "paygmigr"

/// Builds the pool. Every new connection gets an `application_name` (so an
/// operator can find payg in `pg_stat_activity`) and a `statement_timeout`
/// (so one stuck query cannot hold a connection forever).
pub fn build_pool(database_url: &str, max_size: usize) -> anyhow::Result<DbPool> {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    // No `SELECT 1` on every checkout: it doubled the round trips of a cache
    // miss. A connection that broke is marked broken by diesel-async and
    // dropped by the pool; the one query that finds it out fails (503).
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(|url| connect(url).boxed());
    let manager = AsyncDieselConnectionManager::new_with_config(database_url, manager_config);
    DbPool::builder(manager)
        .max_size(max_size.max(1))
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("building the database pool")
}

/// One connection, set up like the pool's (for a task that must not wait
/// on the pool).
pub async fn connect(database_url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    conn.batch_execute("SET application_name = 'payg'; SET statement_timeout = '30s'")
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Applies pending migrations under an advisory lock, with `payg.billing_tz`
/// set on the session to the billing zone. Runs diesel's sync
/// migration harness over the async connection (no libpq).
pub async fn run_migrations(database_url: &str, billing_tz: chrono_tz::Tz) -> anyhow::Result<usize> {
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .context("connecting to PostgreSQL to migrate")?;
    // A migration that turns a period into an instant reads the billing zone
    // here: it is the server's configuration, not the database's.
    diesel::sql_query("SELECT set_config('payg.billing_tz', $1, false)")
        .bind::<Text, _>(billing_tz.name())
        .execute(&mut conn)
        .await?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let (conn, applied) = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        let applied = harness.run_pending_migrations(MIGRATIONS).map(|v| v.len());
        (harness.into_inner(), applied)
    })
    .await
    .context("migration task panicked")?;
    let mut conn = conn;
    // The lock is also released when the connection closes; unlock anyway.
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .await?;
    applied.map_err(|e| anyhow::anyhow!("applying migrations: {e}"))
}

/// Creates the database named in `database_url` if it does not exist, by
/// connecting to the `postgres` maintenance database on the same server.
pub async fn ensure_database_exists(database_url: &str) -> anyhow::Result<bool> {
    let (maintenance_url, name) = split_database_name(database_url)?;
    let mut conn = AsyncPgConnection::establish(&maintenance_url)
        .await
        .context("connecting to the PostgreSQL maintenance database `postgres`")?;
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found: Exists = diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
        .bind::<Text, _>(&name)
        .get_result(&mut conn)
        .await?;
    if found.exists {
        return Ok(false);
    }
    match conn
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
    {
        Ok(()) => Ok(true),
        // Another instance created it between our check and our CREATE.
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
        Err(e) if e.to_string().contains("already exists") => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating database {name:?}")),
    }
}

/// `postgres://u@h:5432/payg?x=y` → (`postgres://u@h:5432/postgres?x=y`, `payg`).
pub fn split_database_name(database_url: &str) -> anyhow::Result<(String, String)> {
    let (base, query) = match database_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (database_url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let slash = base[scheme_end..]
        .rfind('/')
        .map(|i| i + scheme_end)
        .context("DATABASE_URL has no database name (expected postgres://user@host:port/name)")?;
    let name = &base[slash + 1..];
    if name.is_empty() {
        anyhow::bail!("DATABASE_URL has an empty database name");
    }
    let mut maintenance = format!("{}/postgres", &base[..slash]);
    if let Some(q) = query {
        maintenance.push('?');
        maintenance.push_str(q);
    }
    Ok((maintenance, name.to_owned()))
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// True when PostgreSQL answers a trivial query through the pool.
pub async fn ping(pool: &DbPool) -> bool {
    let Ok(mut conn) = pool.get().await else {
        return false;
    };
    diesel::sql_query("SELECT 1").execute(&mut conn).await.is_ok()
}

/// Whether a database error means the connection itself failed: it was
/// closed or reset, the server is shutting down or restarting, or an
/// administrator terminated the backend. Such errors say nothing about the
/// request, and a retry on a fresh connection may well succeed (`error.rs`
/// answers 503; authentication falls back to what it trusted already).
pub fn connection_failed(err: &DieselError) -> bool {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _) => {
            true
        }
        DieselError::DatabaseError(_, info) => {
            let message = info.message();
            // SQLSTATE class 57 (operator intervention) and 08 (connection
            // exception), as PostgreSQL words them (in English, its default
            // lc_messages); diesel keeps only the text. A statement timeout
            // is not among them: it is a slow query, ours to fix (500).
            [
                "terminating connection",
                "the database system is",
                "connection closed",
                "connection reset",
                "server closed the connection",
            ]
            .iter()
            .any(|needle| message.contains(needle))
        }
        DieselError::BrokenTransactionManager => true,
        DieselError::RollbackErrorOnCommit { commit_error, .. } => connection_failed(commit_error),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_split_from_the_url() {
        let (m, n) = split_database_name("postgres://postgres@127.0.0.1:5432/payg").unwrap();
        assert_eq!(m, "postgres://postgres@127.0.0.1:5432/postgres");
        assert_eq!(n, "payg");
        let (m, n) = split_database_name("postgres://u:p@h/db_1?sslmode=disable").unwrap();
        assert_eq!(m, "postgres://u:p@h/postgres?sslmode=disable");
        assert_eq!(n, "db_1");
        assert!(split_database_name("postgres://u@h/").is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
