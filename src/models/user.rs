use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::models::invoice::InvoiceStatus;
use crate::schema::{invoices, users};

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
    /// A spending cap or prepaid-only applies: metered calls must be
    /// admitted against leased budget (`metering/spend.rs`).
    #[diesel(select_expression = users::cap_user.is_not_null().or(users::cap_finance.is_not_null()).or(users::prepaid_only))]
    #[diesel(select_expression_type = diesel::dsl::Or<diesel::dsl::Or<diesel::dsl::IsNotNull<users::cap_user>, diesel::dsl::IsNotNull<users::cap_finance>>, users::prepaid_only>)]
    pub capped: bool,
}

/// A change of role and/or status (`None` leaves it alone): what
/// `auth::accounts::change_standing` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, AsChangeset)]
#[diesel(table_name = users)]
pub struct StandingChange {
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
}

impl StandingChange {
    pub fn is_empty(&self) -> bool {
        self.role.is_none() && self.status.is_none()
    }
}

/// A user as admins list them: who, their standing, and whether an
/// overdue invoice blocks their metered calls. Never the password hash.
#[derive(Debug, Clone, Queryable, Serialize, utoipa::ToSchema)]
pub struct UserSummary {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub status: UserStatus,
    /// Everything this user's usage has cost so far, all periods.
    #[schema(example = "0.42")]
    pub total_cost: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// An issued invoice is unpaid past its due date plus the overdue grace
    /// (`PAYG_OVERDUE_DAYS`): metered APIs answer this user 402.
    pub overdue: bool,
}

/// Users whose email contains `part` (already trimmed and lower-cased, as
/// emails are stored), as an `ILIKE` pattern: `%`, `_` and `\` in `part`
/// match themselves, not any text.
pub fn contains_pattern(part: &str) -> String {
    let mut pattern = String::with_capacity(part.len() + 2);
    pattern.push('%');
    for c in part.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Whether the user (`users.id` of the row at hand) has an issued invoice
/// due before `cutoff`: the overdue block, as authentication and the admin
/// list both read it.
#[diesel::dsl::auto_type]
fn has_overdue_invoice(cutoff: DateTime<Utc>) -> _ {
    let issued: InvoiceStatus = InvoiceStatus::Issued;
    diesel::dsl::exists(
        invoices::table
            .filter(invoices::user_id.eq(users::id))
            .filter(invoices::status.eq(issued))
            .filter(invoices::due_at.lt(cutoff)),
    )
}

/// The columns of a [`UserSummary`], in its order.
#[diesel::dsl::auto_type(no_type_alias)]
fn summary_columns(cutoff: DateTime<Utc>) -> _ {
    let overdue: has_overdue_invoice = has_overdue_invoice(cutoff);
    (
        users::id,
        users::email,
        users::name,
        users::role,
        users::status,
        users::total_cost,
        users::created_at,
        users::updated_at,
        overdue,
    )
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
        users::table
            .find(id)
            .select((Standing::as_select(), has_overdue_invoice(overdue_cutoff)))
            .first(conn)
            .await
            .optional()
    }

    /// Adds each amount to its user's `total_cost`, locking the users in id
    /// order first so two flushes never wait on each other's users in
    /// opposite orders. `amounts` must be sorted by user id. Returns each
    /// user's credit balance (what a draw on it may take).
    pub async fn add_to_total_cost(
        conn: &mut AsyncPgConnection,
        amounts: &[(Uuid, Decimal)],
    ) -> QueryResult<Vec<(Uuid, Decimal)>> {
        if amounts.is_empty() {
            return Ok(Vec::new());
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
        #[derive(QueryableByName)]
        struct Balance {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: Uuid,
            #[diesel(sql_type = diesel::sql_types::Numeric)]
            credit_balance: Decimal,
        }
        let balances: Vec<Balance> = diesel::sql_query(
            "UPDATE users SET total_cost = users.total_cost + d.delta \
             FROM unnest($1::uuid[], $2::numeric[]) AS d(id, delta) WHERE users.id = d.id \
             RETURNING users.id, users.credit_balance",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(&ids)
        .bind::<diesel::sql_types::Array<diesel::sql_types::Numeric>, _>(&deltas)
        .load(conn)
        .await?;
        Ok(balances.into_iter().map(|b| (b.id, b.credit_balance)).collect())
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

    /// One page of users, by email (then id), whose email contains
    /// `email_part` (trimmed and lower-cased; `None`: everyone), and how many
    /// match on all pages. `overdue_cutoff` as for [`User::standing`].
    pub async fn search(
        conn: &mut AsyncPgConnection,
        email_part: Option<&str>,
        overdue_cutoff: DateTime<Utc>,
        page: i64,
        per_page: i64,
    ) -> QueryResult<(Vec<UserSummary>, i64)> {
        let filtered = || {
            let mut q = users::table.into_boxed();
            if let Some(part) = email_part.filter(|p| !p.is_empty()) {
                q = q.filter(users::email.ilike(contains_pattern(part)).escape('\\'));
            }
            q
        };
        let total: i64 = filtered().count().get_result(conn).await?;
        let rows = filtered()
            .order((users::email, users::id))
            .limit(per_page)
            .offset((page - 1).saturating_mul(per_page))
            .select(summary_columns(overdue_cutoff))
            .load(conn)
            .await?;
        Ok((rows, total))
    }

    /// One user as [`User::search`] lists them.
    pub async fn summary(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        overdue_cutoff: DateTime<Utc>,
    ) -> QueryResult<Option<UserSummary>> {
        users::table
            .find(id)
            .select(summary_columns(overdue_cutoff))
            .first(conn)
            .await
            .optional()
    }

    /// Locks the rows of `ids` (in id order, so two transactions locking
    /// overlapping pairs never deadlock) until the transaction ends, and
    /// returns their standings.
    pub async fn lock_standings(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<(Uuid, Standing)>> {
        users::table
            .filter(users::id.eq_any(ids))
            .order(users::id)
            .select((users::id, Standing::as_select()))
            .for_no_key_update()
            .load(conn)
            .await
    }

    /// Writes a non-empty `change` (see `auth::accounts::change_standing`,
    /// which decides whether it may be made).
    pub async fn set_standing(conn: &mut AsyncPgConnection, id: Uuid, change: &StandingChange) -> QueryResult<User> {
        diesel::update(users::table.find(id))
            .set((change, users::updated_at.eq(diesel::dsl::now)))
            .returning(User::as_returning())
            .get_result(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn like_wildcards_and_the_escape_character_match_only_themselves() {
        assert_eq!(contains_pattern("ada"), "%ada%");
        assert_eq!(contains_pattern("100%"), "%100\\%%");
        assert_eq!(contains_pattern("a_b"), "%a\\_b%");
        assert_eq!(contains_pattern("a\\b"), "%a\\\\b%");
        assert_eq!(contains_pattern(""), "%%");
    }
}
