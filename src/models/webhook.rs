//! Usage alerts and outbound webhooks: `usage_alerts`, `webhook_endpoints`,
//! the outbox (`outbound_events`), and each event's delivery to each
//! endpoint (`webhook_deliveries`, `webhook_attempts`). Every statement
//! about them is here; what is emitted when is decided by the billing
//! services that call [`Outbox::emit`], how a delivery is sent in
//! `webhooks::dispatch`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::webhook::{InvoiceFacts, NewEvent, payload};
use crate::models::invoice::Invoice;
use crate::schema::{usage_alerts, webhook_attempts, webhook_deliveries, webhook_endpoints};

/// A user's alert settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Queryable, Selectable)]
#[diesel(table_name = usage_alerts, check_for_backend(diesel::pg::Pg))]
pub struct AlertSettings {
    pub thresholds: Vec<Decimal>,
    pub credits_low_below: Option<Decimal>,
}

impl AlertSettings {
    pub async fn find(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<AlertSettings> {
        Ok(usage_alerts::table
            .find(user_id)
            .select(AlertSettings::as_select())
            .first(conn)
            .await
            .optional()?
            .unwrap_or_default())
    }

    pub async fn save(conn: &mut AsyncPgConnection, user_id: Uuid, settings: &AlertSettings) -> QueryResult<()> {
        diesel::insert_into(usage_alerts::table)
            .values((
                usage_alerts::user_id.eq(user_id),
                usage_alerts::thresholds.eq(&settings.thresholds),
                usage_alerts::credits_low_below.eq(settings.credits_low_below),
            ))
            .on_conflict(usage_alerts::user_id)
            .do_update()
            .set((
                usage_alerts::thresholds.eq(&settings.thresholds),
                usage_alerts::credits_low_below.eq(settings.credits_low_below),
                usage_alerts::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The settings of those of `users` who have any.
    pub async fn of_users(conn: &mut AsyncPgConnection, users: &[Uuid]) -> QueryResult<Vec<(Uuid, AlertSettings)>> {
        usage_alerts::table
            .filter(usage_alerts::user_id.eq_any(users))
            .select((usage_alerts::user_id, AlertSettings::as_select()))
            .load(conn)
            .await
    }
}

/// What an invoice event tells about `invoice`.
pub fn invoice_facts(invoice: &Invoice) -> InvoiceFacts {
    InvoiceFacts {
        id: invoice.id,
        number: invoice.number.clone(),
        user_id: invoice.user_id,
        period: invoice.period.format("%Y-%m").to_string(),
        status: invoice.status.as_str().to_owned(),
        currency: invoice.currency.clone(),
        total: invoice.total,
        amount_due: (invoice.total - invoice.credit_applied - invoice.amount_paid).max(Decimal::ZERO),
        issued_at: invoice.issued_at,
        due_at: invoice.due_at,
    }
}

/// The outbox.
pub struct Outbox;

impl Outbox {
    /// Which of `keys` are events already emitted.
    pub async fn existing_keys(
        conn: &mut AsyncPgConnection,
        keys: &[&str],
    ) -> QueryResult<std::collections::HashSet<String>> {
        use crate::schema::outbound_events;
        if keys.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let found: Vec<String> = outbound_events::table
            .filter(outbound_events::dedupe_key.eq_any(keys))
            .select(outbound_events::dedupe_key)
            .load(conn)
            .await?;
        Ok(found.into_iter().collect())
    }

    /// Writes `events` and, in the same statement, one pending delivery per
    /// enabled endpoint that wants each: the user's own, and every
    /// admin's. An event whose `dedupe_key` is already there is skipped
    /// (with no deliveries). Call it inside the transaction of the cause.
    /// Returns how many events were new.
    pub async fn emit(conn: &mut AsyncPgConnection, events: &[NewEvent], now: DateTime<Utc>) -> QueryResult<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = events.iter().map(|_| Uuid::new_v4()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let users: Vec<Uuid> = events.iter().map(|e| e.user_id).collect();
        let keys: Vec<&str> = events.iter().map(|e| e.dedupe_key.as_str()).collect();
        let bodies: Vec<serde_json::Value> = events
            .iter()
            .map(|e| payload(e.event_type.as_str(), now, &e.data))
            .collect();
        #[derive(QueryableByName)]
        struct Emitted {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let emitted: Emitted = diesel::sql_query(
            "WITH e AS ( \
               INSERT INTO outbound_events (id, event_type, user_id, dedupe_key, payload, created_at) \
               SELECT i, t, u, k, p, $6 FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::jsonb[]) \
                 AS x(i, t, u, k, p) \
               ON CONFLICT (dedupe_key) DO NOTHING \
               RETURNING id, event_type, user_id), \
             d AS ( \
               INSERT INTO webhook_deliveries (id, event_id, endpoint_id, event_type, next_attempt_at, created_at) \
               SELECT gen_random_uuid(), e.id, ep.id, e.event_type, $6, $6 \
               FROM e JOIN webhook_endpoints ep \
                 ON ep.disabled_at IS NULL \
                AND (ep.user_id IS NULL OR ep.user_id = e.user_id) \
                AND (cardinality(ep.event_types) = 0 OR e.event_type = ANY (ep.event_types)) \
               RETURNING 1) \
             SELECT count(*) AS n FROM e",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
        .bind::<Array<Text>, _>(&types)
        .bind::<Array<diesel::sql_types::Uuid>, _>(&users)
        .bind::<Array<Text>, _>(&keys)
        .bind::<Array<Jsonb>, _>(&bodies)
        .bind::<Timestamptz, _>(now)
        .get_result(conn)
        .await?;
        Ok(usize::try_from(emitted.n).unwrap_or(0))
    }

    /// Every issued invoice unpaid past `cutoff` (its due date plus the
    /// overdue grace) that has no `invoice.overdue` event yet.
    pub async fn newly_overdue(
        conn: &mut AsyncPgConnection,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> QueryResult<Vec<Invoice>> {
        use crate::schema::{invoices, outbound_events};
        let keys = outbound_events::table
            .filter(outbound_events::event_type.eq("invoice.overdue"))
            .select(outbound_events::dedupe_key);
        invoices::table
            .filter(invoices::status.eq("issued"))
            .filter(invoices::due_at.lt(cutoff))
            .filter(diesel::dsl::not(
                diesel::dsl::sql::<Text>("'invoice.overdue:' || invoices.id::text").eq_any(keys),
            ))
            .order(invoices::due_at)
            .limit(limit)
            .select(Invoice::as_select())
            .load(conn)
            .await
    }
}

/// An endpoint as stored (the secrets never leave `webhooks::`).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints, check_for_backend(diesel::pg::Pg))]
pub struct Endpoint {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

impl Endpoint {
    /// The secrets that sign at `now`: the current one, and the previous
    /// one during its grace.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && until > now
        {
            secrets.push(previous);
        }
        secrets
    }

    pub async fn insert(conn: &mut AsyncPgConnection, endpoint: &Endpoint) -> QueryResult<()> {
        diesel::insert_into(webhook_endpoints::table)
            .values((
                webhook_endpoints::id.eq(endpoint.id),
                webhook_endpoints::user_id.eq(endpoint.user_id),
                webhook_endpoints::url.eq(&endpoint.url),
                webhook_endpoints::event_types.eq(&endpoint.event_types),
                webhook_endpoints::description.eq(&endpoint.description),
                webhook_endpoints::secret.eq(&endpoint.secret),
                webhook_endpoints::created_by.eq(endpoint.created_by),
                webhook_endpoints::created_at.eq(endpoint.created_at),
            ))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// The endpoints of `owner` (`None`: the admins'), newest first.
    pub async fn list(conn: &mut AsyncPgConnection, owner: Option<Uuid>) -> QueryResult<Vec<Endpoint>> {
        let query = webhook_endpoints::table
            .select(Endpoint::as_select())
            .order((webhook_endpoints::created_at.desc(), webhook_endpoints::id))
            .limit(100);
        match owner {
            Some(user) => query.filter(webhook_endpoints::user_id.eq(user)).load(conn).await,
            None => query.filter(webhook_endpoints::user_id.is_null()).load(conn).await,
        }
    }

    /// One endpoint of `owner` (`None`: an admin's).
    pub async fn find(conn: &mut AsyncPgConnection, id: Uuid, owner: Option<Uuid>) -> QueryResult<Option<Endpoint>> {
        let query = webhook_endpoints::table
            .find(id)
            .select(Endpoint::as_select())
            .into_boxed();
        let query = match owner {
            Some(user) => query.filter(webhook_endpoints::user_id.eq(user)),
            None => query.filter(webhook_endpoints::user_id.is_null()),
        };
        query.first(conn).await.optional()
    }

    /// Endpoints by id, whoever owns them (the dispatcher's read).
    pub async fn by_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Endpoint>> {
        webhook_endpoints::table
            .filter(webhook_endpoints::id.eq_any(ids))
            .select(Endpoint::as_select())
            .load(conn)
            .await
    }

    pub async fn set_disabled(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        disabled_at: Option<DateTime<Utc>>,
    ) -> QueryResult<Endpoint> {
        diesel::update(webhook_endpoints::table.find(id))
            .set(webhook_endpoints::disabled_at.eq(disabled_at))
            .returning(Endpoint::as_returning())
            .get_result(conn)
            .await
    }

    /// A new secret; the current one signs beside it until `until`.
    pub async fn rotate(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        new_secret: &str,
        until: DateTime<Utc>,
    ) -> QueryResult<Endpoint> {
        diesel::update(webhook_endpoints::table.find(id))
            .set((
                webhook_endpoints::previous_secret.eq(webhook_endpoints::secret.nullable()),
                webhook_endpoints::previous_secret_expires_at.eq(Some(until)),
                webhook_endpoints::secret.eq(new_secret),
            ))
            .returning(Endpoint::as_returning())
            .get_result(conn)
            .await
    }
}

/// One event's delivery to one endpoint, as stored (`webhooks::endpoints`
/// shows it).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A delivery claimed for sending, with what it sends.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub event_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub endpoint_id: Uuid,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// Attempts since it was queued or last redelivered, this one included.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    /// The claim: finishing the attempt changes the delivery only while it
    /// still holds (a redelivery or another instance may have taken it).
    #[diesel(sql_type = Timestamptz)]
    pub locked_until: DateTime<Utc>,
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub at: DateTime<Utc>,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    /// `None`: delivered. `Some(Some(t))`: retry at `t`. `Some(None)`: given up.
    pub retry: Option<Option<DateTime<Utc>>>,
}

/// Per event type, the pending deliveries and the oldest one's creation.
#[derive(Debug, Clone, QueryableByName)]
pub struct Backlog {
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest: Option<DateTime<Utc>>,
}

/// Serialises claiming deliveries across instances (held for the claiming
/// transaction).
const CLAIM_LOCK_KEY: i64 = 0x7061_7967_7768_636c; // "paygwhcl"

impl Delivery {
    /// Claims up to `limit` due deliveries for `hold` (a killed instance's
    /// claims lapse then), at most `per_endpoint` in flight per endpoint
    /// counting those already claimed: one slow endpoint cannot take every
    /// slot. Claims are taken one instance at a time (an advisory lock held
    /// for the claiming transaction), so each sees the others' claims and
    /// the per-endpoint limit holds across instances; the re-check in the
    /// `UPDATE` makes two claims never take the same delivery whatever
    /// happens. The attempt is counted as it is claimed.
    pub async fn claim_due(
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
        hold: chrono::TimeDelta,
        limit: i64,
        per_endpoint: i64,
    ) -> QueryResult<Vec<Claimed>> {
        use diesel_async::AsyncConnection;
        conn.transaction(async |conn| {
            diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
                .bind::<BigInt, _>(CLAIM_LOCK_KEY)
                .execute(conn)
                .await?;
            Self::claim_due_locked(conn, now, hold, limit, per_endpoint).await
        })
        .await
    }

    async fn claim_due_locked(
        conn: &mut AsyncPgConnection,
        now: DateTime<Utc>,
        hold: chrono::TimeDelta,
        limit: i64,
        per_endpoint: i64,
    ) -> QueryResult<Vec<Claimed>> {
        diesel::sql_query(
            "WITH busy AS ( \
               SELECT endpoint_id, count(*) AS n FROM webhook_deliveries \
               WHERE state = 'pending' AND locked_until > $1 GROUP BY endpoint_id), \
             due AS ( \
               SELECT d.id, d.endpoint_id, row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS rn \
               FROM webhook_deliveries d JOIN webhook_endpoints ep ON ep.id = d.endpoint_id AND ep.disabled_at IS NULL \
               WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND (d.locked_until IS NULL OR d.locked_until <= $1)), \
             picked AS ( \
               SELECT due.id FROM due LEFT JOIN busy USING (endpoint_id) \
               WHERE due.rn + coalesce(busy.n, 0) <= $4 LIMIT $3) \
             UPDATE webhook_deliveries d SET locked_until = $2, attempts = d.attempts + 1 \
             FROM picked, outbound_events e \
             WHERE d.id = picked.id AND e.id = d.event_id AND d.state = 'pending' AND d.next_attempt_at <= $1 \
               AND (d.locked_until IS NULL OR d.locked_until <= $1) \
             RETURNING d.id, d.event_id, d.endpoint_id, d.event_type, d.attempts, e.payload, d.locked_until",
        )
        .bind::<Timestamptz, _>(now)
        .bind::<Timestamptz, _>(now + hold)
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(per_endpoint)
        .load(conn)
        .await
    }

    /// Records one attempt (numbered after every earlier one, redeliveries
    /// included) and, while the claim still holds, what follows it. If a
    /// redelivery was asked for meanwhile (the count of attempts was reset),
    /// the attempt only gives the claim back, so the redelivery goes out
    /// next. Returns whether the attempt decided the delivery's state.
    pub async fn finish_attempt(
        conn: &mut AsyncPgConnection,
        delivery: &Claimed,
        outcome: &AttemptOutcome,
    ) -> QueryResult<bool> {
        use diesel_async::AsyncConnection;
        let error = outcome
            .error
            .as_deref()
            .map(|e| e.chars().take(500).collect::<String>());
        conn.transaction(async |conn| {
            // The row lock orders two finishes of one delivery (a lapsed
            // claim's and its successor's): neither loses its log entry.
            let now: Option<(i32, Option<DateTime<Utc>>)> = webhook_deliveries::table
                .find(delivery.id)
                .select((webhook_deliveries::attempts, webhook_deliveries::locked_until))
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let Some((attempts, locked_until)) = now else {
                return Ok(false); // gone with its endpoint
            };
            diesel::sql_query(
                "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status, error, duration_ms) \
                 SELECT $1, coalesce(max(attempt), 0) + 1, $2, $3, $4, $5 FROM webhook_attempts WHERE delivery_id = $1",
            )
            .bind::<diesel::sql_types::Uuid, _>(delivery.id)
            .bind::<Timestamptz, _>(outcome.at)
            .bind::<Nullable<Integer>, _>(outcome.status)
            .bind::<Nullable<Text>, _>(&error)
            .bind::<Integer, _>(outcome.duration_ms)
            .execute(conn)
            .await?;
            if locked_until != Some(delivery.locked_until) {
                return Ok(false); // the claim lapsed and another holds it
            }
            let held = webhook_deliveries::table.find(delivery.id);
            if attempts != delivery.attempts {
                // Redelivered meanwhile: the last attempt is still what the
                // log's summary shows, but the state waits for the redelivery.
                diesel::update(held)
                    .set((
                        webhook_deliveries::locked_until.eq(None::<DateTime<Utc>>),
                        webhook_deliveries::last_attempt_at.eq(Some(outcome.at)),
                        webhook_deliveries::last_status.eq(outcome.status),
                        webhook_deliveries::last_error.eq(&error),
                    ))
                    .execute(conn)
                    .await?;
                return Ok(false);
            }
            let (state, next, delivered_at) = match outcome.retry {
                None => ("delivered", outcome.at, Some(outcome.at)),
                Some(Some(at)) => ("pending", at, None),
                Some(None) => ("failed", outcome.at, None),
            };
            diesel::update(held)
                .set((
                    webhook_deliveries::state.eq(state),
                    webhook_deliveries::next_attempt_at.eq(next),
                    webhook_deliveries::locked_until.eq(None::<DateTime<Utc>>),
                    webhook_deliveries::last_attempt_at.eq(Some(outcome.at)),
                    webhook_deliveries::last_status.eq(outcome.status),
                    webhook_deliveries::last_error.eq(&error),
                    webhook_deliveries::delivered_at.eq(delivered_at),
                ))
                .execute(conn)
                .await?;
            Ok(true)
        })
        .await
    }

    /// Gives claims back (at shutdown: another instance may send them at
    /// once), each only while it is still this claim.
    pub async fn release(conn: &mut AsyncPgConnection, claims: &[(Uuid, DateTime<Utc>)]) -> QueryResult<()> {
        let ids: Vec<Uuid> = claims.iter().map(|(id, _)| *id).collect();
        let until: Vec<DateTime<Utc>> = claims.iter().map(|(_, until)| *until).collect();
        diesel::sql_query(
            "UPDATE webhook_deliveries d SET locked_until = NULL \
             FROM unnest($1::uuid[], $2::timestamptz[]) AS c(id, until) \
             WHERE d.id = c.id AND d.locked_until = c.until AND d.state = 'pending'",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
        .bind::<Array<Timestamptz>, _>(&until)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// One page of an endpoint's deliveries, newest first.
    pub async fn page(
        conn: &mut AsyncPgConnection,
        endpoint_id: Uuid,
        offset: i64,
        limit: i64,
    ) -> QueryResult<(Vec<Delivery>, i64)> {
        let items = webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
            .order((webhook_deliveries::created_at.desc(), webhook_deliveries::id.desc()))
            .offset(offset)
            .limit(limit)
            .select(Delivery::as_select())
            .load(conn)
            .await?;
        let total = webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
            .count()
            .get_result(conn)
            .await?;
        Ok((items, total))
    }

    /// Sends a delivery again now, whatever became of it (delivered,
    /// failed, or waiting for a retry), with the same event id and a fresh
    /// retry schedule. An attempt in flight keeps its claim (the endpoint's
    /// limit counts it) and its place in the log, but no longer decides
    /// what becomes of the delivery: the redelivery goes out once it ends.
    pub async fn redeliver(
        conn: &mut AsyncPgConnection,
        endpoint_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> QueryResult<Option<Delivery>> {
        diesel::update(
            webhook_deliveries::table
                .filter(webhook_deliveries::id.eq(id))
                .filter(webhook_deliveries::endpoint_id.eq(endpoint_id)),
        )
        .set((
            webhook_deliveries::state.eq("pending"),
            webhook_deliveries::attempts.eq(0),
            webhook_deliveries::next_attempt_at.eq(now),
            webhook_deliveries::delivered_at.eq(None::<DateTime<Utc>>),
        ))
        .returning(Delivery::as_returning())
        .get_result(conn)
        .await
        .optional()
    }

    /// The attempts of each of `ids`, in order.
    pub async fn attempts_of(
        conn: &mut AsyncPgConnection,
        ids: &[Uuid],
    ) -> QueryResult<std::collections::HashMap<Uuid, Vec<Attempt>>> {
        let rows: Vec<(Uuid, Attempt)> = webhook_attempts::table
            .filter(webhook_attempts::delivery_id.eq_any(ids))
            .order((webhook_attempts::delivery_id, webhook_attempts::attempt))
            .select((webhook_attempts::delivery_id, Attempt::as_select()))
            .load(conn)
            .await?;
        let mut out: std::collections::HashMap<Uuid, Vec<Attempt>> = std::collections::HashMap::new();
        for (id, attempt) in rows {
            out.entry(id).or_default().push(attempt);
        }
        Ok(out)
    }

    /// What waits to be delivered to an enabled endpoint, per event type
    /// (a disabled endpoint's deliveries wait for it, not for payg).
    pub async fn backlog(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Backlog>> {
        diesel::sql_query(
            "SELECT d.event_type, count(*) AS pending, min(d.created_at) AS oldest \
             FROM webhook_deliveries d JOIN webhook_endpoints ep ON ep.id = d.endpoint_id AND ep.disabled_at IS NULL \
             WHERE d.state = 'pending' GROUP BY d.event_type",
        )
        .load(conn)
        .await
    }
}

/// One attempt, as the delivery log shows it.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    /// The endpoint's HTTP status; `null` when none came back.
    pub status: Option<i32>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub duration_ms: i32,
}
