//! Spending caps and the budget leased against them: the cap columns of
//! `users`, and `spend_leases` (what each instance was granted for a (user,
//! period) and has not yet accounted for). Every statement about them is
//! here; what a cap allows is decided in `billing/caps.rs`.

use chrono::NaiveDate;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::Period;
use crate::schema::{credit_movements, spend_leases, users};

/// A user's caps and credit, as the cap settings and a lease read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct CapSettings {
    /// The cap the user set, if any.
    pub cap_user: Option<Decimal>,
    /// The cap finance set, if any.
    pub cap_finance: Option<Decimal>,
    pub prepaid_only: bool,
    pub credit_balance: Decimal,
}

impl CapSettings {
    /// The cap in force: the lower of the two.
    pub fn effective_cap(&self) -> Option<Decimal> {
        match (self.cap_user, self.cap_finance) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the user's calls must be admitted against a lease.
    pub fn capped(&self) -> bool {
        self.effective_cap().is_some() || self.prepaid_only
    }

    /// The user's settings (`None`: no such user).
    pub async fn find(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<CapSettings>> {
        users::table
            .find(user_id)
            .select(CapSettings::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// The user's settings, the row locked (`FOR NO KEY UPDATE`): leases of
    /// one user are granted one at a time, and wait for a flush that holds
    /// the row — but not for the key checks of usage rows being inserted.
    pub async fn lock(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Option<CapSettings>> {
        users::table
            .find(user_id)
            .select(CapSettings::as_select())
            .for_no_key_update()
            .first(conn)
            .await
            .optional()
    }

    pub async fn set_user_cap(conn: &mut AsyncPgConnection, user_id: Uuid, cap: Option<Decimal>) -> QueryResult<()> {
        diesel::update(users::table.find(user_id))
            .set((users::cap_user.eq(cap), users::updated_at.eq(diesel::dsl::now)))
            .execute(conn)
            .await?;
        Ok(())
    }

    pub async fn set_finance_cap(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        cap: Option<Decimal>,
        prepaid_only: bool,
    ) -> QueryResult<()> {
        diesel::update(users::table.find(user_id))
            .set((
                users::cap_finance.eq(cap),
                users::prepaid_only.eq(prepaid_only),
                users::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// What each of `periods`' usage has drawn on the user's credit so far.
    pub async fn drawn(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        periods: &[Period],
    ) -> QueryResult<Vec<(NaiveDate, Decimal)>> {
        let days: Vec<NaiveDate> = periods.iter().map(|p| p.first_day()).collect();
        let rows: Vec<(Option<NaiveDate>, Decimal)> = credit_movements::table
            .filter(credit_movements::user_id.eq(user_id))
            .filter(credit_movements::kind.eq(crate::models::credit::MovementKind::Usage))
            .filter(credit_movements::period.eq_any(days))
            .select((credit_movements::period, credit_movements::amount))
            .load(conn)
            .await?;
        Ok(rows.into_iter().filter_map(|(p, amount)| Some((p?, -amount))).collect())
    }
}

/// One instance's held budget for a (user, period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = spend_leases, check_for_backend(diesel::pg::Pg))]
pub struct SpendLease {
    pub period: NaiveDate,
    pub instance_id: Uuid,
    pub held: Decimal,
}

impl SpendLease {
    /// Every lease of the user (all periods, all instances), locked: a
    /// flush that released a reservation and has not committed is waited
    /// for, and one that has not released yet waits for this transaction —
    /// so what is read next (the counted usage) matches what is held.
    pub async fn lock_for_user(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<SpendLease>> {
        spend_leases::table
            .filter(spend_leases::user_id.eq(user_id))
            .order((spend_leases::period, spend_leases::instance_id))
            .select(SpendLease::as_select())
            .for_update()
            .load(conn)
            .await
    }

    /// Moves this instance's held budget by `change` (a grant less what it
    /// gave back), never below zero, and marks it renewed.
    pub async fn add_held(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        period: Period,
        instance_id: Uuid,
        change: Decimal,
    ) -> QueryResult<()> {
        diesel::sql_query(
            "INSERT INTO spend_leases (user_id, period, instance_id, held) VALUES ($1, $2, $3, GREATEST($4, 0)) \
             ON CONFLICT (user_id, period, instance_id) DO UPDATE \
             SET held = GREATEST(spend_leases.held + $4, 0), renewed_at = now()",
        )
        .bind::<diesel::sql_types::Uuid, _>(user_id)
        .bind::<diesel::sql_types::Date, _>(period.first_day())
        .bind::<diesel::sql_types::Uuid, _>(instance_id)
        .bind::<diesel::sql_types::Numeric, _>(change)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Takes `amounts` (per user and period, sorted) off this instance's
    /// held budget: reservations of calls now counted (in the flush's
    /// transaction), or unspent budget given back. Never below zero (a row
    /// reclaimed meanwhile is not recreated).
    pub async fn release(
        conn: &mut AsyncPgConnection,
        instance_id: Uuid,
        amounts: &[(Uuid, Period, Decimal)],
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, Date, Numeric};
        if amounts.is_empty() {
            return Ok(());
        }
        diesel::sql_query(
            "UPDATE spend_leases l SET held = GREATEST(l.held - r.amount, 0) \
             FROM unnest($2::uuid[], $3::date[], $4::numeric[]) AS r(u, p, amount) \
             WHERE l.instance_id = $1 AND l.user_id = r.u AND l.period = r.p",
        )
        .bind::<diesel::sql_types::Uuid, _>(instance_id)
        .bind::<Array<diesel::sql_types::Uuid>, _>(amounts.iter().map(|(u, _, _)| *u).collect::<Vec<_>>())
        .bind::<Array<Date>, _>(amounts.iter().map(|(_, p, _)| p.first_day()).collect::<Vec<_>>())
        .bind::<Array<Numeric>, _>(amounts.iter().map(|(_, _, a)| *a).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }

    /// This instance is alive: its rows that hold budget are not reclaimed
    /// (empty ones are, after a minute).
    pub async fn heartbeat(conn: &mut AsyncPgConnection, instance_id: Uuid) -> QueryResult<usize> {
        diesel::update(
            spend_leases::table
                .filter(spend_leases::instance_id.eq(instance_id))
                .filter(spend_leases::held.gt(Decimal::ZERO)),
        )
        .set(spend_leases::renewed_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
    }

    /// Deletes the rows of instances silent for `abandoned_after` (their
    /// budget returns to the pool) and empty rows not renewed for a minute.
    pub async fn reclaim(conn: &mut AsyncPgConnection, abandoned_after: chrono::Duration) -> QueryResult<usize> {
        let now = chrono::Utc::now();
        diesel::delete(
            spend_leases::table.filter(
                spend_leases::renewed_at.lt(now - abandoned_after).or(spend_leases::held
                    .eq(Decimal::ZERO)
                    .and(spend_leases::renewed_at.lt(now - chrono::Duration::minutes(1)))),
            ),
        )
        .execute(conn)
        .await
    }
}
