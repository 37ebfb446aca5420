use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::schema::users;

text_enum!(Role { Consumer => "consumer", Finance => "finance", Admin => "admin" });
text_enum!(UserStatus { Active => "active", Suspended => "suspended" });

impl Role {
    /// Finance routes are open to finance staff and admins.
    pub fn can_do_finance(self) -> bool {
        matches!(self, Role::Finance | Role::Admin)
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = users, check_for_backend(Pg))]
pub struct User {
    pub id: Uuid,
    pub email: String,
    #[serde(skip_serializing)]
    pub password_hash: String,
    pub role: Role,
    pub status: UserStatus,
    pub name: String,
    pub company: Option<String>,
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub city: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
    pub tax_id: Option<String>,
    /// Everything this user's usage has cost so far, all periods.
    #[schema(example = "0.42")]
    pub total_cost: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
    pub name: &'a str,
}

/// A partial update of the billing profile: `None` leaves a field alone,
/// `Some(None)` clears a nullable one.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct ProfileChanges {
    pub name: Option<String>,
    pub company: Option<Option<String>>,
    pub address_line1: Option<Option<String>>,
    pub address_line2: Option<Option<String>>,
    pub city: Option<Option<String>>,
    pub postal_code: Option<Option<String>>,
    pub country: Option<Option<String>>,
    pub tax_id: Option<Option<String>>,
}

impl ProfileChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.company.is_none()
            && self.address_line1.is_none()
            && self.address_line2.is_none()
            && self.city.is_none()
            && self.postal_code.is_none()
            && self.country.is_none()
            && self.tax_id.is_none()
    }
}

/// What authentication needs to know about a user on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(Pg))]
pub struct Standing {
    pub role: Role,
    pub status: UserStatus,
}

impl User {
    pub async fn insert(conn: &mut AsyncPgConnection, new: &NewUser<'_>) -> QueryResult<User> {
        diesel::insert_into(users::table)
            .values(new)
            .returning(User::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<User>> {
        users::table
            .find(id)
            .select(User::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// `email` must already be normalised (see `domain::text::Email`).
    pub async fn find_by_email(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<Option<User>> {
        users::table
            .filter(users::email.eq(email))
            .select(User::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// Role, status, and whether an issued invoice was due before
    /// `overdue_cutoff` — one round trip, as authentication needs it.
    pub async fn standing(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        overdue_cutoff: DateTime<Utc>,
    ) -> QueryResult<Option<(Standing, bool)>> {
        use crate::models::invoice::InvoiceStatus;
        use crate::schema::invoices;
        users::table
            .find(id)
            .select((
                Standing::as_select(),
                diesel::dsl::exists(
                    invoices::table
                        .filter(invoices::user_id.eq(users::id))
                        .filter(invoices::status.eq(InvoiceStatus::Issued))
                        .filter(invoices::due_at.lt(overdue_cutoff)),
                ),
            ))
            .first(conn)
            .await
            .optional()
    }

    /// Adds each amount to its user's `total_cost`, locking the users in id
    /// order first so two flushes never wait on each other's users in
    /// opposite orders. `amounts` must be sorted by user id.
    pub async fn add_to_total_cost(conn: &mut AsyncPgConnection, amounts: &[(Uuid, Decimal)]) -> QueryResult<()> {
        if amounts.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = amounts.iter().map(|(id, _)| *id).collect();
        let deltas: Vec<Decimal> = amounts.iter().map(|(_, d)| *d).collect();
        users::table
            .filter(users::id.eq_any(&ids))
            .order(users::id)
            .select(users::id)
            .for_no_key_update()
            .load::<Uuid>(conn)
            .await?;
        diesel::sql_query(
            "UPDATE users SET total_cost = users.total_cost + d.delta \
             FROM unnest($1::uuid[], $2::numeric[]) AS d(id, delta) WHERE users.id = d.id",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&ids)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Numeric>, _>(&deltas)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Locks the user's row until the transaction ends, to serialise changes
    /// that span other tables (e.g. the active-key limit). `NO KEY UPDATE`:
    /// rows that reference the user (foreign keys) are not blocked.
    pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
        users::table
            .find(id)
            .select(users::id)
            .for_no_key_update()
            .first::<Uuid>(conn)
            .await
            .map(|_| ())
    }

    /// (id, email) of the users with these ids.
    pub async fn emails(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<(Uuid, String)>> {
        users::table
            .filter(users::id.eq_any(ids))
            .select((users::id, users::email))
            .load(conn)
            .await
    }

    /// The users with these ids, in no particular order.
    pub async fn find_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<User>> {
        users::table
            .filter(users::id.eq_any(ids))
            .select(User::as_select())
            .load(conn)
            .await
    }

    pub async fn update_profile(conn: &mut AsyncPgConnection, id: Uuid, changes: &ProfileChanges) -> QueryResult<User> {
        if changes.is_empty() {
            return users::table.find(id).select(User::as_select()).first(conn).await;
        }
        diesel::update(users::table.find(id))
            .set((changes, users::updated_at.eq(diesel::dsl::now)))
            .returning(User::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn set_role(conn: &mut AsyncPgConnection, email: &str, role: Role) -> QueryResult<User> {
        diesel::update(users::table.filter(users::email.eq(email)))
            .set((users::role.eq(role), users::updated_at.eq(diesel::dsl::now)))
            .returning(User::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn set_status(conn: &mut AsyncPgConnection, email: &str, status: UserStatus) -> QueryResult<User> {
        diesel::update(users::table.filter(users::email.eq(email)))
            .set((users::status.eq(status), users::updated_at.eq(diesel::dsl::now)))
            .returning(User::as_returning())
            .get_result(conn)
            .await
    }
}
