//! The `payg` command: serve, migrate, and operator tasks.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use payg::auth::password;
use payg::domain::text::{Email, Password};
use std::io::Write;

use chrono::Utc;
use futures_util::StreamExt;
use payg::auth::accounts;
use payg::billing::close;
use payg::billing::export::{self, ExportFormat};
use payg::catalog;
use payg::config::Config;
use payg::db;
use payg::domain::{Period, SystemClock};
use payg::models::user::{NewUser, Role, StandingChange, User, UserStatus};
use payg::startup::{Application, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "payg",
    version,
    about = "Self-hosted usage-metering, pay-as-you-go API platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve HTTP (the default).
    Serve {
        /// Do not apply pending migrations at startup.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Month close.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// Invoice export.
    #[command(subcommand)]
    Invoices(InvoicesCommand),
    /// The API catalog as code (TOML).
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Create or update the entries and prices a TOML file describes
    /// (idempotent; running instances follow within about a second).
    Apply {
        /// The catalog file (see `payg catalog export` for its shape).
        file: std::path::PathBuf,
    },
    /// Print the whole catalog, with each entry's latest price, as TOML
    /// (never a signing secret).
    Export,
}

#[derive(Subcommand)]
enum BillingCommand {
    /// Close a past period: issue its invoices (idempotent).
    Close {
        /// The period, YYYY-MM.
        #[arg(long)]
        period: Period,
    },
}

#[derive(Subcommand)]
enum InvoicesCommand {
    /// Write one row per invoice line of a period to stdout.
    Export {
        #[arg(long)]
        period: Period,
        #[arg(long, default_value = "csv")]
        format: ExportFormat,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user. The password comes from PAYG_PASSWORD, or a prompt on a TTY.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "consumer")]
        role: Role,
        #[arg(long)]
        name: Option<String>,
    },
    /// Change a user's role (consumer, finance, admin).
    Role { email: String, role: Role },
    /// Suspend or reactivate a user (active, suspended).
    Status { email: String, status: UserStatus },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    payg::telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve { no_migrate: false }) {
        Command::Serve { no_migrate } => {
            if !no_migrate {
                migrate(&config).await?;
            }
            let app = Application::build(config.clone(), Arc::new(SystemClock)).await?;
            tracing::info!(bind = %config.bind, port = app.port(), meter = ?config.meter.mode, "payg listening");
            let handle = app.handle();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested: draining in-flight calls");
                handle.stop(true).await;
            });
            app.run_until_stopped().await
        }
        Command::Migrate => migrate(&config).await,
        Command::User(cmd) => user_command(&config, cmd).await,
        Command::Billing(BillingCommand::Close { period }) => {
            let pool = db::build_pool(config.database_url.expose(), 1)?;
            let mut conn = pool.get().await?;
            let outcome =
                close::close_period(&mut conn, period, Utc::now(), config.billing_tz, &config.billing).await?;
            if outcome.already_closed {
                println!(
                    "{period} was already closed at {}; {} invoices",
                    outcome.closed_at, outcome.invoices_issued
                );
            } else {
                println!("closed {period}: {} invoices issued", outcome.invoices_issued);
            }
            Ok(())
        }
        Command::Catalog(cmd) => catalog_command(&config, cmd).await,
        Command::Invoices(InvoicesCommand::Export { period, format }) => {
            let pool = db::build_pool(config.database_url.expose(), 1)?;
            let mut chunks = std::pin::pin!(export::stream(pool, period, format).await?);
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = chunks.next().await {
                out.write_all(&chunk?)?;
            }
            if format == ExportFormat::Json {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
    }
}

async fn catalog_command(config: &Config, cmd: CatalogCommand) -> anyhow::Result<()> {
    let pool = db::build_pool(config.database_url.expose(), 1)?;
    let mut conn = pool.get().await?;
    match cmd {
        CatalogCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let parsed: catalog::CatalogFile =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let applied = catalog::apply(&mut conn, &parsed, &SystemClock, config.billing.currency).await?;
            if applied.changes.is_empty() {
                println!("no changes: the catalog already matches {}", file.display());
            }
            for change in &applied.changes {
                println!("{change}");
            }
            for (slug, secret) in &applied.new_secrets {
                let secret = secret.expose();
                println!("{slug}: signing secret {secret} (shown this once; give it to the upstream)");
            }
        }
        CatalogCommand::Export => {
            let file = catalog::export(&mut conn).await?;
            print!("{}", toml::to_string(&file)?);
        }
    }
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let url = config.database_url.expose();
    if db::ensure_database_exists(url).await? {
        tracing::info!("created the database");
    }
    let applied = db::run_migrations(url, config.billing_tz).await?;
    tracing::info!(applied, "migrations up to date");
    Ok(())
}

async fn user_command(config: &Config, cmd: UserCommand) -> anyhow::Result<()> {
    let pool = db::build_pool(config.database_url.expose(), 1)?;
    let mut conn = pool.get().await?;
    match cmd {
        UserCommand::Create { email, role, name } => {
            let email = email.parse::<Email>()?.into_inner();
            let password = read_password()?.parse::<Password>()?;
            let hash = tokio::task::spawn_blocking(move || password::hash_password(password.as_str())).await??;
            let name = name.unwrap_or_else(|| email.clone());
            let user = User::insert(
                &mut conn,
                &NewUser {
                    id: Uuid::new_v4(),
                    email: &email,
                    password_hash: &hash,
                    role,
                    name: &name,
                },
            )
            .await
            .map_err(|e| match e {
                diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => {
                    anyhow::anyhow!("a user with email {email} already exists")
                }
                other => other.into(),
            })?;
            println!("created {} {} ({})", user.role, user.email, user.id);
        }
        UserCommand::Role { email, role } => {
            let change = StandingChange {
                role: Some(role),
                status: None,
            };
            let user = change_standing(config, &mut conn, &email, change).await?;
            println!("{} is now {}", user.email, user.role);
        }
        UserCommand::Status { email, status } => {
            let change = StandingChange {
                role: None,
                status: Some(status),
            };
            let user = change_standing(config, &mut conn, &email, change).await?;
            println!("{} is now {}", user.email, user.status);
        }
    }
    Ok(())
}

/// What `PATCH /api/v1/admin/users/{id}` does, as an operator: the same
/// function, with the running instances told through Redis.
async fn change_standing(
    config: &Config,
    conn: &mut diesel_async::AsyncPgConnection,
    email: &str,
    change: StandingChange,
) -> anyhow::Result<User> {
    let email = email.parse::<Email>()?.into_inner();
    let Some(user) = User::find_by_email(conn, &email).await? else {
        anyhow::bail!("no user with email {email}");
    };
    Ok(accounts::change_standing(conn, &Operator(config), user.id, change, None).await?)
}

/// The CLI serves nothing: it only tells the running instances.
struct Operator<'a>(&'a Config);

impl accounts::Announce for Operator<'_> {
    fn announce(&self, user_id: Uuid) -> impl std::future::Future<Output = ()> {
        tell_instances_user_changed(self.0, user_id)
    }
}

/// Running instances re-read the user's role and status on their next call
/// (within PAYG_AUTH_CACHE_MS if Redis is unreachable).
async fn tell_instances_user_changed(config: &Config, user_id: Uuid) {
    let store = redis::Client::open(config.redis_url.expose())
        .map(|client| payg::redis_store::RedisStore::new(client, config.redis_prefix.clone()));
    if let Ok(store) = store
        && store
            .publish(&payg::redis_store::Event::UserChanged { user: user_id })
            .await
    {
        return;
    }
    eprintln!("note: Redis unreachable; running instances pick the change up within PAYG_AUTH_CACHE_MS");
}

/// PAYG_PASSWORD, or a prompt when stdin is a terminal. The prompt does not
/// echo (the password would stay on screen and in terminal scrollback) and
/// asks twice, since a typo cannot be seen.
fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("PAYG_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("set PAYG_PASSWORD (no terminal to prompt on)");
    }
    let password = rpassword::prompt_password("password for the new user: ")?;
    let again = rpassword::prompt_password("the same password again: ")?;
    if password != again {
        anyhow::bail!("the two passwords differ");
    }
    Ok(password)
}
