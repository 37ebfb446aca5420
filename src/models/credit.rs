//! Prepaid credit: the ledger (`credit_movements`) and the balance kept
//! beside it (`users.credit_balance`). Every statement here that writes a
//! movement changes the balance by the same amount, in the same transaction:
//! the balance is always the sum of the ledger.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::Period;
use crate::schema::{credit_movements, users};

text_enum!(MovementKind { TopUp => "top_up", Usage => "usage", Adjustment => "adjustment" });
text_enum!(MovementSource { Finance => "finance", Webhook => "webhook", Usage => "usage", Void => "void" });

/// One movement of a user's credit.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = credit_movements, check_for_backend(diesel::pg::Pg))]
pub struct CreditMovement {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    /// `top_up`: credit bought; `usage`: what a period's calls drew (one
    /// movement per period, growing as they are counted); `adjustment`:
    /// credit given back (an invoice voided).
    pub kind: MovementKind,
    /// Signed: positive adds credit, negative draws it.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "25.00")]
    pub amount: Decimal,
    pub currency: String,
    /// A top-up's reference (its idempotency key).
    pub reference: Option<String>,
    /// A usage movement's period.
    #[serde(serialize_with = "serialize_period")]
    #[schema(value_type = Option<crate::domain::Period>)]
    pub period: Option<NaiveDate>,
    /// An adjustment's invoice (the one whose void gave credit back).
    pub invoice_id: Option<Uuid>,
    pub source: MovementSource,
    #[serde(skip)]
    pub recorded_by: Option<Uuid>,
    /// The database's clock, as every movement's (the ledger's order).
    #[diesel(skip_insertion)]
    pub created_at: DateTime<Utc>,
    /// A usage movement's last change.
    #[diesel(skip_insertion)]
    pub updated_at: DateTime<Utc>,
}

fn serialize_period<S: serde::Serializer>(date: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
    match date {
        Some(d) => s.collect_str(&d.format("%Y-%m")),
        None => s.serialize_none(),
    }
}

/// A (user, period)'s draw on credit and its user's balance, as a flush
/// finds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawable {
    pub user_id: Uuid,
    pub period: Period,
    pub balance: Decimal,
    /// What the period's usage has drawn so far (≥ 0).
    pub drawn: Decimal,
}

impl CreditMovement {
    /// The top-up recorded under `reference`, if any.
    pub async fn find_by_reference(
        conn: &mut AsyncPgConnection,
        reference: &str,
    ) -> QueryResult<Option<CreditMovement>> {
        credit_movements::table
            .filter(credit_movements::kind.eq(MovementKind::TopUp))
            .filter(credit_movements::reference.eq(reference))
            .select(CreditMovement::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// Writes a movement and moves the user's balance by its amount; the
    /// movement as written (with its timestamps) and the balance after. The
    /// caller holds the user's row (see [`balance_for_update`]).
    pub async fn insert(
        conn: &mut AsyncPgConnection,
        movement: &CreditMovement,
    ) -> QueryResult<(CreditMovement, Decimal)> {
        let written = diesel::insert_into(credit_movements::table)
            .values(movement)
            .returning(CreditMovement::as_returning())
            .get_result(conn)
            .await?;
        let balance = diesel::update(users::table.find(movement.user_id))
            .set(users::credit_balance.eq(users::credit_balance + movement.amount))
            .returning(users::credit_balance)
            .get_result(conn)
            .await?;
        Ok((written, balance))
    }

    /// A page of the user's movements, newest first, and how many there are.
    pub async fn page_for_user(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        page: i64,
        per_page: i64,
    ) -> QueryResult<(Vec<CreditMovement>, i64)> {
        let total: i64 = credit_movements::table
            .filter(credit_movements::user_id.eq(user_id))
            .count()
            .get_result(conn)
            .await?;
        let rows = credit_movements::table
            .filter(credit_movements::user_id.eq(user_id))
            .order((credit_movements::created_at.desc(), credit_movements::id.desc()))
            .limit(per_page)
            .offset((page - 1).saturating_mul(per_page))
            .select(CreditMovement::as_select())
            .load(conn)
            .await?;
        Ok((rows, total))
    }

    /// The user's balance and a page of their movements (newest first) with
    /// their count, read in one snapshot so the page adds up to the balance
    /// it shows; `None` for an unknown user.
    pub async fn ledger_page(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        page: i64,
        per_page: i64,
    ) -> QueryResult<Option<(Decimal, Vec<CreditMovement>, i64)>> {
        conn.build_transaction()
            .read_only()
            .repeatable_read()
            .run(async |conn| {
                let Some(balance) = balance(conn, user_id).await? else {
                    return Ok(None);
                };
                let (movements, total) = CreditMovement::page_for_user(conn, user_id, page, per_page).await?;
                Ok(Some((balance, movements, total)))
            })
            .await
    }

    /// The latest movement that added credit to each of `users` (its id): a
    /// top-up, an adjustment in the user's favour, or drawn usage given back
    /// when its invoice was voided. `credits.low` and `credits.exhausted`
    /// happen once per such movement.
    pub async fn latest_added(conn: &mut AsyncPgConnection, users: &[Uuid]) -> QueryResult<Vec<(Uuid, Uuid)>> {
        credit_movements::table
            .filter(credit_movements::user_id.eq_any(users))
            .filter(credit_movements::amount.gt(Decimal::ZERO))
            .distinct_on(credit_movements::user_id)
            .order((
                credit_movements::user_id,
                credit_movements::created_at.desc(),
                credit_movements::id.desc(),
            ))
            .select((credit_movements::user_id, credit_movements::id))
            .load(conn)
            .await
    }

    /// What each user's usage in `period` drew from credit (users that drew
    /// nothing are left out).
    pub async fn drawn_in_period(
        conn: &mut AsyncPgConnection,
        period: Period,
    ) -> QueryResult<std::collections::HashMap<Uuid, Decimal>> {
        let rows: Vec<(Uuid, Decimal)> = credit_movements::table
            .filter(credit_movements::kind.eq(MovementKind::Usage))
            .filter(credit_movements::period.eq(period.first_day()))
            .select((credit_movements::user_id, credit_movements::amount))
            .load(conn)
            .await?;
        Ok(rows.into_iter().map(|(user, amount)| (user, -amount)).collect())
    }

    /// The balances of `keys`' users and what each (user, period) drew so
    /// far, for those whose user has credit or whose period drew some. The
    /// users' rows are locked already (the flush updated them).
    pub async fn drawable(conn: &mut AsyncPgConnection, keys: &[(Uuid, Period)]) -> QueryResult<Vec<Drawable>> {
        use diesel::sql_types::{Array, Date, Numeric};
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            user_id: Uuid,
            #[diesel(sql_type = Date)]
            period: NaiveDate,
            #[diesel(sql_type = Numeric)]
            balance: Decimal,
            #[diesel(sql_type = Numeric)]
            drawn: Decimal,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT k.u AS user_id, k.p AS period, u.credit_balance AS balance, \
                    coalesce(-m.amount, 0) AS drawn \
             FROM unnest($1::uuid[], $2::date[]) AS k(u, p) \
             JOIN users u ON u.id = k.u \
             LEFT JOIN credit_movements m ON m.user_id = k.u AND m.period = k.p AND m.kind = 'usage' \
             WHERE u.credit_balance > 0 OR m.amount < 0",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(keys.iter().map(|(u, _)| *u).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(keys.iter().map(|(_, p)| p.first_day()).collect::<Vec<_>>())
        .load(conn)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Drawable {
                    user_id: r.user_id,
                    period: Period::from_first_day(r.period)?,
                    balance: r.balance,
                    drawn: r.drawn,
                })
            })
            .collect())
    }

    /// Moves each (user, period)'s usage movement by `-draw` and the user's
    /// balance with it (`draws`: sorted by user; a negative draw gives
    /// credit back).
    pub async fn record_draws(
        conn: &mut AsyncPgConnection,
        draws: &[(Uuid, Period, Decimal)],
        currency: &str,
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, Date, Numeric, Text};
        if draws.is_empty() {
            return Ok(());
        }
        let users: Vec<Uuid> = draws.iter().map(|(u, _, _)| *u).collect();
        let periods: Vec<NaiveDate> = draws.iter().map(|(_, p, _)| p.first_day()).collect();
        let amounts: Vec<Decimal> = draws.iter().map(|(_, _, d)| -*d).collect();
        let ids: Vec<Uuid> = draws.iter().map(|_| Uuid::new_v4()).collect();
        diesel::sql_query(
            "INSERT INTO credit_movements (id, user_id, kind, amount, currency, period, source) \
             SELECT i, u, 'usage', a, $5, p, 'usage' \
             FROM unnest($1::uuid[], $2::uuid[], $3::date[], $4::numeric[]) AS d(i, u, p, a) \
             ON CONFLICT (user_id, period) WHERE kind = 'usage' DO UPDATE SET \
               amount = credit_movements.amount + EXCLUDED.amount, updated_at = now()",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
        .bind::<Array<diesel::sql_types::Uuid>, _>(&users)
        .bind::<Array<Date>, _>(&periods)
        .bind::<Array<Numeric>, _>(&amounts)
        .bind::<Text, _>(currency)
        .execute(conn)
        .await?;
        diesel::sql_query(
            "UPDATE users SET credit_balance = users.credit_balance + d.amount \
             FROM (SELECT u, sum(a) AS amount FROM unnest($1::uuid[], $2::numeric[]) AS x(u, a) GROUP BY u) d \
             WHERE users.id = d.u",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(&users)
        .bind::<Array<Numeric>, _>(&amounts)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Locks the user's row (until the transaction ends) and reads their
/// balance; `None` for an unknown user.
pub async fn balance_for_update(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<Decimal>> {
    users::table
        .find(user_id)
        .select(users::credit_balance)
        .for_no_key_update()
        .first(conn)
        .await
        .optional()
}

/// The user's balance (`None`: no such user).
pub async fn balance(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<Decimal>> {
    users::table
        .find(user_id)
        .select(users::credit_balance)
        .first(conn)
        .await
        .optional()
}
