//! What a person can do, whichever door they come through: the JSON API
//! (`routes/`) and the web console (`console/`) both call these, so a rule
//! — the login lockout, the key limit, what ending a session revokes — has
//! one home. Each takes the state and checked input and returns a typed
//! result or an [`ApiError`]; neither door adds rules of its own.

use std::time::Duration;

use actix_web::HttpRequest;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::sessions::{self, IssuedSession, Rotation};
use crate::auth::{API_KEY_PREFIX, Caller, Credential, tokens};
use crate::clients::lockout_label;
use crate::domain::text::{Email, KeyName, Name, Password};
use crate::error::ApiError;
use crate::models::UserStatus;
use crate::models::api_key::{ApiKey, MAX_ACTIVE_KEYS};
use crate::models::user::{NewUser, Role, User};
use crate::redis_store::{DeniedId, LoginLimits};

/// A database connection from the pool, or 503.
/// The paging every listing takes: `page` from 1, `per_page` from 1 to 500.
pub fn check_paging(page: i64, per_page: i64) -> Result<(), ApiError> {
    if page < 1 || !(1..=500).contains(&per_page) {
        return Err(ApiError::validation("page must be ≥ 1 and per_page between 1 and 500"));
    }
    Ok(())
}

async fn conn(state: &AppState) -> Result<crate::db::DbConn, ApiError> {
    Ok(state.db.get().await?)
}

fn issuer(state: &AppState) -> sessions::Issuer<'_> {
    sessions::Issuer {
        jwt: state.authenticator.jwt(),
        hasher: state.authenticator.hasher(),
        refresh_ttl: state.config.refresh_ttl,
        retry_grace: state.config.refresh_retry_grace,
    }
}

/// How long an ended session stays deny-listed: as long as any access token
/// issued in it can live (plus the verifier's skew).
fn session_denied_until(state: &AppState) -> i64 {
    let ttl = state.config.jwt.ttl + Duration::from_secs(10);
    Utc::now().timestamp_millis() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The login lockout. Attempts are counted per email *and client address*
/// (10 per 15 minutes), so a stranger guessing from elsewhere cannot lock
/// the owner out of their own address; and per email from anywhere (100 per
/// hour), a slower bound on a guesser with many addresses. Each attempt is
/// reserved before the password is checked; a success gives it back.
pub const LOGIN_LIMITS: LoginLimits = LoginLimits {
    per_client: 10,
    per_client_window: Duration::from_secs(15 * 60),
    per_email: 100,
    per_email_window: Duration::from_secs(3600),
};

/// A new consumer account. The per-address bucket of credential routes
/// and the bounded argon2 pool apply.
pub async fn register(
    state: &AppState,
    req: &HttpRequest,
    email: Email,
    password: Password,
    name: Name,
) -> Result<User, ApiError> {
    state.clients.take_credential_attempt(req)?;
    let hash = state
        .passwords
        .hash(password.into_inner())
        .await?
        .map_err(ApiError::internal)?;
    let mut conn = conn(state).await?;
    let new = NewUser {
        id: Uuid::new_v4(),
        email: email.as_str(),
        password_hash: &hash,
        role: Role::Consumer,
        name: name.as_str(),
    };
    match User::insert(&mut conn, &new).await {
        Ok(user) => {
            tracing::info!(user_id = %user.id, "user registered");
            Ok(user)
        }
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => Err(
            ApiError::conflict("email_taken", "an account with this email already exists"),
        ),
        Err(e) => Err(e.into()),
    }
}

/// Email and password → a new session, behind the lockout (which fails
/// closed without Redis) and one argon2 verification whether or not the
/// account exists.
pub async fn log_in(
    state: &AppState,
    req: &HttpRequest,
    email: &str,
    password: String,
) -> Result<IssuedSession, ApiError> {
    state.clients.take_credential_attempt(req)?;
    // The lockout counts attempts per email string whether or not an account
    // exists, so it reveals nothing about which emails are registered.
    let lockout_key = Email::canonical(email);
    let address = state.clients.address(req);
    // IPv6 clients by their /64: a host may pick any address in it.
    let client = lockout_label(address);
    match state.redis.reserve_login(&lockout_key, &client, LOGIN_LIMITS).await {
        None => return Err(ApiError::login_unavailable()),
        Some(attempt) if !attempt.allowed => {
            tracing::warn!(client = %client, "login refused by the lockout");
            return Err(ApiError::too_many_attempts(attempt.retry_after_secs));
        }
        Some(_) => {}
    }
    // A malformed email cannot belong to anyone: same answer as a wrong one.
    let user = match email.parse::<Email>() {
        Ok(email) => {
            let mut conn = conn(state).await?;
            User::find_by_email(&mut conn, email.as_str()).await?
        }
        Err(_) => None,
    };
    // Always run one argon2 verification so unknown emails take as long as
    // wrong passwords.
    let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
    let verified = state.passwords.verify(password, stored_hash).await?;
    let user = match user {
        Some(user) if verified => user,
        _ => {
            // The reserved attempt stays counted: it was a failure.
            tracing::info!(client = %client, "login failed");
            return Err(ApiError::invalid_credentials());
        }
    };
    state.redis.login_succeeded(&lockout_key, &client).await;
    if user.status == UserStatus::Suspended {
        return Err(ApiError::account_suspended());
    }
    let mut conn = conn(state).await?;
    // Token lifetimes follow the real clock (jsonwebtoken checks `exp`
    // against it), not the billing clock tests may move.
    Ok(sessions::start(&mut conn, issuer(state), &user, Utc::now()).await?)
}

/// A refresh token → the session's next pair. A retired token presented
/// again (outside the retry grace) ends the whole session on every instance.
pub async fn refresh(state: &AppState, req: &HttpRequest, presented: &str) -> Result<IssuedSession, ApiError> {
    // A refresh is a credential attempt: it spends the address's bucket,
    // whichever door it comes through.
    state.clients.take_credential_attempt(req)?;
    if !presented.starts_with(sessions::REFRESH_TOKEN_PREFIX) || presented.len() > 128 {
        return Err(ApiError::invalid_token());
    }
    let mut conn = conn(state).await?;
    let rotation = sessions::rotate(&mut conn, issuer(state), presented, Utc::now()).await?;
    match rotation {
        Rotation::Rotated(session) => Ok(session),
        Rotation::Reused { user_id, session } => {
            // A stolen refresh token came back: the thief's access tokens
            // die with the session, not at their expiry.
            if !state
                .authenticator
                .deny(DeniedId::Session(session), session_denied_until(state))
                .await
            {
                tracing::warn!(user_id = %user_id, "could not deny-list a reused session (Redis unavailable)");
            }
            Err(ApiError::invalid_token())
        }
        Rotation::Invalid => Err(ApiError::invalid_token()),
        Rotation::Suspended => Err(ApiError::account_suspended()),
    }
}

/// Ends the caller's session: its refresh tokens (and those of
/// `also_refresh_token`'s session, if it is the caller's) are revoked in
/// PostgreSQL, then every access token of the session is deny-listed on
/// every instance. `logout_incomplete` when Redis cannot take the entry; a
/// retry finishes the job.
pub async fn end_session(state: &AppState, caller: &Caller, also_refresh_token: Option<&str>) -> Result<(), ApiError> {
    let Credential::AccessToken {
        jti,
        session,
        expires_at,
    } = caller.credential
    else {
        return Err(ApiError::access_token_required());
    };
    let now = Utc::now();
    // First what lasts: the session's refresh tokens, in PostgreSQL.
    let mut conn = conn(state).await?;
    let mut families: Vec<Uuid> = session.into_iter().collect();
    if let Some(token) = also_refresh_token
        && let Some(family) =
            sessions::family_of(&mut conn, state.authenticator.hasher(), token, caller.user_id).await?
    {
        families.push(family);
    }
    for family in families {
        sessions::revoke_family(&mut conn, family, caller.user_id, now).await?;
    }
    drop(conn);
    // Then every access token issued in the session, not only the one
    // presented, on every instance.
    let denied = match session {
        Some(session) => {
            state
                .authenticator
                .deny(DeniedId::Session(session), session_denied_until(state))
                .await
        }
        // Refused until it would have expired anyway (plus the verifier's
        // skew).
        None => {
            let until_ms = expires_at.saturating_add(10).saturating_mul(1000);
            state.authenticator.deny(DeniedId::Token(jti), until_ms).await
        }
    };
    if !denied {
        // Redis cannot take the deny-list entry: say so, so the client
        // retries (the retry is accepted and finishes the job).
        tracing::warn!(user_id = %caller.user_id, "logout could not deny-list the session (Redis unavailable)");
        return Err(ApiError::logout_incomplete());
    }
    Ok(())
}

/// Ends the session a refresh token belongs to, when no live access token
/// is at hand (the console's expired one): its refresh tokens revoked, the
/// session deny-listed everywhere. An unknown token ends nothing.
pub async fn end_session_by_refresh_token(state: &AppState, presented: &str) -> Result<(), ApiError> {
    if !presented.starts_with(sessions::REFRESH_TOKEN_PREFIX) || presented.len() > 128 {
        return Ok(());
    }
    let mut conn = conn(state).await?;
    let Some((family, user_id)) =
        sessions::session_of_refresh_token(&mut conn, state.authenticator.hasher(), presented).await?
    else {
        return Ok(());
    };
    sessions::revoke_family(&mut conn, family, user_id, Utc::now()).await?;
    drop(conn);
    if !state
        .authenticator
        .deny(DeniedId::Session(family), session_denied_until(state))
        .await
    {
        tracing::warn!(user_id = %user_id, "logout could not deny-list the session (Redis unavailable)");
        return Err(ApiError::logout_incomplete());
    }
    Ok(())
}

/// Starts a session for a user who just registered (their password was
/// hashed a moment ago: no second argon2 run, no second attempt spent).
pub async fn start_session(state: &AppState, user: &User) -> Result<IssuedSession, ApiError> {
    let mut conn = conn(state).await?;
    Ok(sessions::start(&mut conn, issuer(state), user, Utc::now()).await?)
}

/// A key just created: its row and, this once, the full key.
pub struct CreatedKey {
    pub row: ApiKey,
    pub key: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("id", &self.row.id)
            .finish_non_exhaustive()
    }
}

/// Creates an API key for `user_id`, within the active-key limit. payg
/// keeps a keyed hash and the prefix (for display), never the key.
pub async fn create_key(state: &AppState, user_id: Uuid, name: KeyName) -> Result<CreatedKey, ApiError> {
    let key = tokens::generate(API_KEY_PREFIX);
    let row = ApiKey {
        id: Uuid::new_v4(),
        user_id,
        name: name.into_inner(),
        prefix: key.chars().take(API_KEY_PREFIX.len() + 8).collect(),
        key_hash: state.authenticator.hasher().hash(&key),
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
    };
    let mut conn = conn(state).await?;
    if !ApiKey::insert_within_limit(&mut conn, &row).await? {
        return Err(ApiError::conflict(
            "too_many_keys",
            format!("at most {MAX_ACTIVE_KEYS} active API keys per user; revoke one first"),
        ));
    }
    Ok(CreatedKey { row, key })
}

/// Revokes one of `user_id`'s keys: refused at once on this instance and,
/// by push, on every other. 404 for a key that is not theirs or not active.
pub async fn revoke_key(state: &AppState, user_id: Uuid, key_id: Uuid) -> Result<(), ApiError> {
    let mut conn = conn(state).await?;
    let hash = ApiKey::revoke(&mut conn, key_id, user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key not found"))?;
    state.authenticator.key_revoked(&hash).await;
    Ok(())
}

/// Records a payment against an invoice (idempotent on its reference) and
/// lifts the payer's overdue block when it settles what was overdue.
pub async fn record_payment(
    state: &AppState,
    invoice_id: Uuid,
    input: crate::billing::payments::PaymentInput,
) -> Result<crate::billing::payments::Recorded, ApiError> {
    let mut conn = conn(state).await?;
    let recorded = crate::billing::payments::record_payment(&mut conn, invoice_id, input, state.now()).await?;
    drop(conn);
    state.payment_recorded(&recorded).await;
    Ok(recorded)
}

/// Adds prepaid credit to a user (finance, or a payment event); idempotent
/// on the reference.
pub async fn top_up_credit(
    state: &AppState,
    user_id: Uuid,
    input: crate::billing::credits::TopUpInput,
) -> Result<crate::billing::credits::ToppedUp, ApiError> {
    let mut conn = conn(state).await?;
    let currency = state.config.billing.currency;
    let outcome = crate::billing::credits::top_up(&mut conn, user_id, input, currency, state.now()).await?;
    if let crate::billing::credits::ToppedUp::Created(_) = outcome {
        // A prepaid-only user refused for want of credit is asked again.
        state.authenticator.user_changed(user_id).await;
    }
    Ok(outcome)
}

/// Who changes a spending cap, and to what.
#[derive(Debug, Clone, Copy)]
pub enum CapChange {
    /// The user's own cap (`None`: removed). Under finance's cap, only lower.
    Own(Option<rust_decimal::Decimal>),
    /// Finance's cap (`None`: removed), and prepaid-only when given.
    Finance {
        amount: Option<rust_decimal::Decimal>,
        prepaid_only: Option<bool>,
    },
}

/// Changes a spending cap, then tells every instance: a lease granted
/// before the change is renewed on its next call there (a lowered cap
/// applies at once), and a user who is now capped (or no longer) is read
/// again.
pub async fn change_spending_cap(
    state: &AppState,
    user_id: Uuid,
    change: CapChange,
) -> Result<crate::billing::caps::SpendingCap, ApiError> {
    use crate::billing::caps;
    let currency = state.config.billing.currency;
    let mut conn = conn(state).await?;
    match change {
        CapChange::Own(amount) => caps::set_own(&mut conn, user_id, caps::check_amount(amount, currency)?).await?,
        CapChange::Finance { amount, prepaid_only } => {
            let amount = caps::check_amount(amount, currency)?;
            caps::set_by_finance(&mut conn, user_id, amount, prepaid_only).await?;
        }
    }
    state.authenticator.user_changed(user_id).await;
    Ok(caps::view(&mut conn, user_id, state.current_period(), currency, state.now()).await?)
}

/// A user's spending cap and this period's charge under it.
pub async fn spending_cap(state: &AppState, user_id: Uuid) -> Result<crate::billing::caps::SpendingCap, ApiError> {
    let mut conn = conn(state).await?;
    let currency = state.config.billing.currency;
    Ok(crate::billing::caps::view(&mut conn, user_id, state.current_period(), currency, state.now()).await?)
}

/// A user's credit: balance and one page of the ledger, newest first.
pub async fn credit_ledger(
    state: &AppState,
    user_id: Uuid,
    page: i64,
    per_page: i64,
) -> Result<CreditLedger, ApiError> {
    use crate::models::credit::CreditMovement;
    check_paging(page, per_page)?;
    let mut conn = conn(state).await?;
    let (balance, movements, total) = CreditMovement::ledger_page(&mut conn, user_id, page, per_page)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(CreditLedger {
        user_id,
        balance,
        currency: state.config.billing.currency,
        movements,
        page,
        per_page,
        total,
    })
}

/// A user's prepaid credit: the balance (the sum of every movement) and a
/// page of the movements, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CreditLedger {
    pub user_id: Uuid,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "25.00")]
    pub balance: rust_decimal::Decimal,
    pub currency: crate::domain::Currency,
    pub movements: Vec<crate::models::credit::CreditMovement>,
    pub page: i64,
    pub per_page: i64,
    /// Movements on all pages.
    pub total: i64,
}

/// Voids an issued invoice; every instance re-reads the user's standing
/// (a void can lift an overdue block).
pub async fn void_invoice(state: &AppState, invoice_id: Uuid) -> Result<crate::models::Invoice, ApiError> {
    let mut conn = conn(state).await?;
    let invoice = crate::billing::payments::void_invoice(&mut conn, invoice_id, state.now()).await?;
    drop(conn);
    state.authenticator.user_changed(invoice.user_id).await;
    Ok(invoice)
}

/// Schedules a new price version for an API, in the billing currency only,
/// from `start` — a whole second at least [`PRICE_NOTICE`] ahead — or, by
/// default, from the first whole second that far ahead. "Now" is read once a
/// connection is in hand, just before the write, so the notice is not spent
/// waiting for the pool. Calls that arrive before the start keep the version
/// in force then: a price change never re-prices calls already made,
/// however long they wait in a meter buffer.
///
/// [`PRICE_NOTICE`]: crate::domain::pricing::PRICE_NOTICE
pub async fn schedule_price(
    state: &AppState,
    api_id: i32,
    version: &crate::domain::pricing::PriceVersion,
    start: Option<DateTime<Utc>>,
) -> Result<crate::models::price::PriceRow, ApiError> {
    use crate::domain::pricing;
    let billing_currency = state.config.billing.currency;
    if version.currency != billing_currency {
        return Err(ApiError::currency_mismatch(format!(
            "prices must be in the billing currency {billing_currency}"
        )));
    }
    version.validate()?;
    let mut conn = conn(state).await?;
    let now = state.now();
    let start = match start {
        None => pricing::start_from_now(now),
        Some(at) => {
            pricing::check_start(at, now)?;
            at
        }
    };
    match crate::models::price::PriceRow::schedule(&mut conn, api_id, start, version).await {
        Err(diesel::result::Error::NotFound) => Err(ApiError::not_found("no API with this id")),
        other => Ok(other?),
    }
}

/// Cancels a price version that has not started: 404 for an unknown one,
/// 409 `price_started` once it is within [`PRICE_NOTICE`] of its start, or
/// has priced a call.
///
/// [`PRICE_NOTICE`]: crate::domain::pricing::PRICE_NOTICE
pub async fn cancel_price(state: &AppState, api_id: i32, price_id: i32) -> Result<(), ApiError> {
    let mut conn = conn(state).await?;
    let started_by = state.now() + crate::domain::pricing::PRICE_NOTICE;
    Ok(crate::models::price::PriceRow::cancel(&mut conn, api_id, price_id, started_by).await?)
}

/// Adds a catalog entry (built-in, or a gateway API with an upstream) at the
/// default price; every instance's catalog follows.
pub async fn create_api(
    state: &AppState,
    new: &crate::models::api::NewApi,
    upstream: Option<&crate::models::api::NewUpstream>,
) -> Result<(crate::models::Api, Option<crate::models::api::Upstream>), ApiError> {
    let default_price = crate::catalog::default_price(state.config.billing.currency);
    let mut conn = conn(state).await?;
    match crate::models::Api::create(&mut conn, new, &default_price, upstream).await {
        Ok(created) => {
            drop(conn);
            state.reload_catalog().await?;
            Ok(created)
        }
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            Err(ApiError::conflict(
                "api_exists",
                "an API with this slug, or this method and route, already exists",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Changes a catalog entry (and its upstream); every instance's catalog
/// follows. 404 for an unknown id.
pub async fn update_api(
    state: &AppState,
    id: i32,
    changes: &crate::models::api::ApiChanges,
    upstream: &crate::models::api::UpstreamUpdate,
) -> Result<(crate::models::Api, Option<crate::models::api::Upstream>), ApiError> {
    let mut conn = conn(state).await?;
    let updated = crate::models::Api::update(&mut conn, id, changes, upstream)
        .await?
        .ok_or_else(|| ApiError::not_found("no such API"))?;
    drop(conn);
    state.reload_catalog().await?;
    Ok(updated)
}

/// Before this instant, an unpaid invoice's due date makes its user overdue
/// (the same test authentication applies).
fn overdue_cutoff(state: &AppState) -> chrono::DateTime<Utc> {
    state.now() - chrono::Duration::days(i64::from(state.config.billing.overdue_days))
}

/// Users whose email contains `email_part` (any case; everyone without
/// it), by email, paged: `page` from 1, `per_page` 1 to 500.
pub async fn find_users(
    state: &AppState,
    email_part: Option<&crate::domain::text::EmailPart>,
    page: i64,
    per_page: i64,
) -> Result<(Vec<crate::models::user::UserSummary>, i64), ApiError> {
    check_paging(page, per_page)?;
    // Stored emails are lower-cased and in NFC: look for the same spelling.
    let email = email_part.map(|part| Email::canonical(part.as_str()));
    let mut conn = conn(state).await?;
    Ok(User::search(&mut conn, email.as_deref(), overdue_cutoff(state), page, per_page).await?)
}

/// An admin changes a user's role and/or status (`auth::accounts` decides
/// whether they may; every instance hears it).
pub async fn change_user(
    state: &AppState,
    admin_id: Uuid,
    user_id: Uuid,
    change: crate::models::user::StandingChange,
) -> Result<crate::models::user::UserSummary, ApiError> {
    let mut conn = conn(state).await?;
    let user =
        crate::auth::accounts::change_standing(&mut conn, &*state.authenticator, user_id, change, Some(admin_id))
            .await?;
    User::summary(&mut conn, user.id, overdue_cutoff(state))
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))
}

/// Rotates a gateway API's signing secret: the new one signs at once, the
/// previous one beside it for the rotation grace (24 h), so the upstream can
/// move over without refusing a call. 409 `no_upstream` for a built-in API.
pub async fn rotate_signing_secret(
    state: &AppState,
    id: i32,
) -> Result<(crate::models::Api, Option<crate::models::api::Upstream>), ApiError> {
    use crate::models::Api;
    use crate::models::api::Upstream;
    let mut conn = conn(state).await?;
    match Api::find_with_upstream(&mut conn, id).await? {
        None => return Err(ApiError::not_found("no such API")),
        Some((_, None)) => {
            return Err(ApiError::conflict(
                "no_upstream",
                "this API has no upstream, so nothing is signed; give it one with PATCH first",
            ));
        }
        Some(_) => {}
    }
    let until = state.now() + crate::domain::gateway::ROTATION_GRACE;
    Upstream::rotate_secret(&mut conn, id, &crate::catalog::new_signing_secret(), until)
        .await?
        .ok_or_else(|| ApiError::not_found("no such API"))?;
    let found = Api::find_with_upstream(&mut conn, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such API"))?;
    drop(conn);
    state.reload_catalog().await?;
    Ok(found)
}

/// The streamed CSV or JSON export of a closed period, as a download: the
/// first page is read before the answer starts (so a failure there is an
/// error answer); a later failure ends the transfer, logged, so a partial
/// file never looks complete.
pub async fn export_download(
    state: &AppState,
    period: crate::domain::Period,
    format: crate::billing::export::ExportFormat,
) -> Result<actix_web::HttpResponse, ApiError> {
    let body = crate::billing::export::stream(state.db.clone(), period, format).await?;
    Ok(actix_web::HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"invoices-{period}.{}\"", format.extension()),
        ))
        .streaming(futures_util::TryStreamExt::inspect_err(body, |e| {
            tracing::error!(error = %e, "export failed midway; aborting the transfer");
        })))
}

/// The caller's usage alerts.
pub async fn alerts(state: &AppState, user_id: Uuid) -> Result<crate::billing::alerts::Alerts, ApiError> {
    let mut conn = conn(state).await?;
    Ok(crate::billing::alerts::get(&mut conn, user_id, state.config.billing.currency).await?)
}

/// Replaces the caller's usage alerts.
pub async fn set_alerts(
    state: &AppState,
    user_id: Uuid,
    thresholds: &[rust_decimal::Decimal],
    credits_low_below: Option<rust_decimal::Decimal>,
) -> Result<crate::billing::alerts::Alerts, ApiError> {
    let mut conn = conn(state).await?;
    let currency = state.config.billing.currency;
    Ok(crate::billing::alerts::set(&mut conn, user_id, thresholds, credits_low_below, currency).await?)
}

/// Registers a webhook endpoint; its secret is in the answer, once.
pub async fn create_webhook(
    state: &AppState,
    owner: crate::webhooks::Owner,
    new: crate::webhooks::endpoints::NewEndpoint,
) -> Result<crate::webhooks::endpoints::EndpointWithSecret, ApiError> {
    let mut conn = conn(state).await?;
    let policy = state.webhooks.policy();
    Ok(crate::webhooks::endpoints::create(&mut conn, policy, owner, new, state.now()).await?)
}

pub async fn webhooks(
    state: &AppState,
    owner: crate::webhooks::Owner,
) -> Result<Vec<crate::webhooks::endpoints::EndpointView>, ApiError> {
    let mut conn = conn(state).await?;
    Ok(crate::webhooks::endpoints::list(&mut conn, owner, state.now()).await?)
}

pub async fn webhook(
    state: &AppState,
    owner: crate::webhooks::Owner,
    id: Uuid,
) -> Result<crate::webhooks::endpoints::EndpointView, ApiError> {
    let mut conn = conn(state).await?;
    Ok(crate::webhooks::endpoints::get(&mut conn, owner, id, state.now()).await?)
}

/// Disables an endpoint (its deliveries wait) or enables it (they resume).
pub async fn set_webhook_enabled(
    state: &AppState,
    owner: crate::webhooks::Owner,
    id: Uuid,
    enabled: bool,
) -> Result<crate::webhooks::endpoints::EndpointView, ApiError> {
    let mut conn = conn(state).await?;
    let view = crate::webhooks::endpoints::set_enabled(&mut conn, owner, id, enabled, state.now()).await?;
    if enabled {
        state.webhooks.wake();
    }
    Ok(view)
}

/// A new signing secret; the old one signs beside it for the grace.
pub async fn rotate_webhook_secret(
    state: &AppState,
    owner: crate::webhooks::Owner,
    id: Uuid,
) -> Result<crate::webhooks::endpoints::EndpointWithSecret, ApiError> {
    let mut conn = conn(state).await?;
    Ok(crate::webhooks::endpoints::rotate(&mut conn, owner, id, state.now()).await?)
}

/// One page of an endpoint's delivery log.
pub async fn webhook_deliveries(
    state: &AppState,
    owner: crate::webhooks::Owner,
    id: Uuid,
    page: i64,
    per_page: i64,
) -> Result<crate::webhooks::endpoints::DeliveryPage, ApiError> {
    check_paging(page, per_page)?;
    let mut conn = conn(state).await?;
    Ok(crate::webhooks::endpoints::deliveries(&mut conn, owner, id, page, per_page).await?)
}

/// Sends a delivery again now.
pub async fn redeliver_webhook(
    state: &AppState,
    owner: crate::webhooks::Owner,
    id: Uuid,
    delivery_id: Uuid,
) -> Result<crate::webhooks::endpoints::DeliveryView, ApiError> {
    let mut conn = conn(state).await?;
    let view = crate::webhooks::endpoints::redeliver(&mut conn, owner, id, delivery_id, state.now()).await?;
    state.webhooks.wake();
    Ok(view)
}
