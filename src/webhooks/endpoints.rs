//! Webhook endpoints as admins and consumers manage them: registered with
//! a URL the policy allows, a secret shown once, disabled and enabled,
//! rotated with a grace period, and their delivery log and redelivery.
//!
//! Every function takes the [`Owner`]: an admin's endpoints (for every
//! user's events) and a consumer's (for their own) are separate sets, and
//! one never reaches the other's.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::text::Description;
use crate::domain::webhook::{BadUrl, EventType, ROTATION_GRACE, UrlPolicy, new_secret};
use crate::models::webhook::{Attempt, Delivery, Endpoint};

/// Endpoints one owner may have.
pub const MAX_ENDPOINTS: usize = 20;

/// Whose endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// An admin (`acting`), for every user's events.
    Admin { acting: Uuid },
    /// A consumer, for their own events.
    User(Uuid),
}

impl Owner {
    fn user(self) -> Option<Uuid> {
        match self {
            Owner::Admin { .. } => None,
            Owner::User(id) => Some(id),
        }
    }

    fn acting(self) -> Uuid {
        match self {
            Owner::Admin { acting } => acting,
            Owner::User(id) => id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    BadUrl(#[from] BadUrl),
    #[error("webhook endpoint not found")]
    NotFound,
    #[error("delivery not found")]
    DeliveryNotFound,
    #[error("at most {MAX_ENDPOINTS} webhook endpoints")]
    TooMany,
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// An endpoint as its owner sees it (never its secret, but at creation and
/// rotation).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives; empty: every type.
    #[schema(value_type = Vec<String>, example = json!(["invoice.issued", "invoice.paid"]))]
    pub event_types: Vec<String>,
    pub description: String,
    pub enabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl EndpointView {
    fn of(endpoint: &Endpoint, now: DateTime<Utc>) -> Self {
        Self {
            id: endpoint.id,
            url: endpoint.url.clone(),
            event_types: endpoint.event_types.clone(),
            description: endpoint.description.clone(),
            enabled: endpoint.disabled_at.is_none(),
            disabled_at: endpoint.disabled_at,
            previous_secret_expires_at: endpoint.previous_secret_expires_at.filter(|until| *until > now),
            created_at: endpoint.created_at,
        }
    }
}

/// An endpoint with its signing secret: the answer to a creation or a
/// rotation, the only times the secret is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_` + base64 of the key (Standard Webhooks): shown once.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// What a new endpoint is.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<EventType>,
    pub description: Option<Description>,
}

pub async fn create(
    conn: &mut AsyncPgConnection,
    policy: &UrlPolicy,
    owner: Owner,
    new: NewEndpoint,
    now: DateTime<Utc>,
) -> Result<EndpointWithSecret, WebhookError> {
    let url = policy.check(&new.url, matches!(owner, Owner::Admin { .. }))?;
    if Endpoint::list(conn, owner.user()).await?.len() >= MAX_ENDPOINTS {
        return Err(WebhookError::TooMany);
    }
    let mut types: Vec<String> = new.event_types.iter().map(|t| t.as_str().to_owned()).collect();
    types.sort_unstable();
    types.dedup();
    let endpoint = Endpoint {
        id: Uuid::new_v4(),
        user_id: owner.user(),
        url: url.url,
        event_types: types,
        description: new.description.map(|d| d.as_str().to_owned()).unwrap_or_default(),
        secret: new_secret(),
        previous_secret: None,
        previous_secret_expires_at: None,
        disabled_at: None,
        created_by: owner.acting(),
        created_at: now,
    };
    Endpoint::insert(conn, &endpoint).await?;
    Ok(EndpointWithSecret {
        endpoint: EndpointView::of(&endpoint, now),
        secret: endpoint.secret,
    })
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    now: DateTime<Utc>,
) -> Result<Vec<EndpointView>, WebhookError> {
    Ok(Endpoint::list(conn, owner.user())
        .await?
        .iter()
        .map(|e| EndpointView::of(e, now))
        .collect())
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<EndpointView, WebhookError> {
    let endpoint = Endpoint::find(conn, id, owner.user())
        .await?
        .ok_or(WebhookError::NotFound)?;
    Ok(EndpointView::of(&endpoint, now))
}

/// Disables (nothing is sent to it: its pending deliveries wait, and events
/// emitted meanwhile are not queued for it) or enables it again (the
/// pending ones resume).
pub async fn set_enabled(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    id: Uuid,
    enabled: bool,
    now: DateTime<Utc>,
) -> Result<EndpointView, WebhookError> {
    let endpoint = Endpoint::find(conn, id, owner.user())
        .await?
        .ok_or(WebhookError::NotFound)?;
    let disabled_at = if enabled {
        None
    } else {
        Some(endpoint.disabled_at.unwrap_or(now))
    };
    let endpoint = Endpoint::set_disabled(conn, endpoint.id, disabled_at).await?;
    Ok(EndpointView::of(&endpoint, now))
}

/// A new secret, shown once; the one it replaces signs beside it for
/// [`ROTATION_GRACE`] (a secret older than that is dropped).
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<EndpointWithSecret, WebhookError> {
    let endpoint = Endpoint::find(conn, id, owner.user())
        .await?
        .ok_or(WebhookError::NotFound)?;
    let endpoint = Endpoint::rotate(conn, endpoint.id, &new_secret(), now + ROTATION_GRACE).await?;
    Ok(EndpointWithSecret {
        endpoint: EndpointView::of(&endpoint, now),
        secret: endpoint.secret,
    })
}

/// One delivery, as the log shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id` header: the same on every attempt and redelivery.
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending` (waiting for its next attempt), `delivered`, or `failed`
    /// (given up after every retry).
    pub state: String,
    /// Attempts since it was queued or last redelivered (the retry schedule
    /// counts them); `attempt_log` has every one.
    pub attempts: i32,
    /// When it is tried next (while pending).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<Attempt>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub page: i64,
    pub per_page: i64,
    pub total: i64,
}

fn delivery_view(delivery: Delivery, attempt_log: Vec<Attempt>) -> DeliveryView {
    DeliveryView {
        id: delivery.id,
        event_id: delivery.event_id,
        event_type: delivery.event_type,
        next_attempt_at: (delivery.state == "pending").then_some(delivery.next_attempt_at),
        state: delivery.state,
        attempts: delivery.attempts,
        delivered_at: delivery.delivered_at,
        created_at: delivery.created_at,
        attempt_log,
    }
}

/// One page of the endpoint's deliveries, newest first.
pub async fn deliveries(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    endpoint_id: Uuid,
    page: i64,
    per_page: i64,
) -> Result<DeliveryPage, WebhookError> {
    let endpoint = Endpoint::find(conn, endpoint_id, owner.user())
        .await?
        .ok_or(WebhookError::NotFound)?;
    let (rows, total) = Delivery::page(conn, endpoint.id, (page - 1).saturating_mul(per_page), per_page).await?;
    let ids: Vec<Uuid> = rows.iter().map(|d| d.id).collect();
    let mut attempts = Delivery::attempts_of(conn, &ids).await?;
    let items = rows
        .into_iter()
        .map(|d| {
            let log = attempts.remove(&d.id).unwrap_or_default();
            delivery_view(d, log)
        })
        .collect();
    Ok(DeliveryPage {
        items,
        page,
        per_page,
        total,
    })
}

/// Sends a delivery again as soon as the dispatcher can, with the same
/// event id (the receiver deduplicates on it).
pub async fn redeliver(
    conn: &mut AsyncPgConnection,
    owner: Owner,
    endpoint_id: Uuid,
    delivery_id: Uuid,
    now: DateTime<Utc>,
) -> Result<DeliveryView, WebhookError> {
    let endpoint = Endpoint::find(conn, endpoint_id, owner.user())
        .await?
        .ok_or(WebhookError::NotFound)?;
    let delivery = Delivery::redeliver(conn, endpoint.id, delivery_id, now)
        .await?
        .ok_or(WebhookError::DeliveryNotFound)?;
    let log = Delivery::attempts_of(conn, &[delivery.id]).await?.remove(&delivery.id);
    Ok(delivery_view(delivery, log.unwrap_or_default()))
}
