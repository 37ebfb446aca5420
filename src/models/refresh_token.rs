use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::refresh_tokens;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = refresh_tokens, check_for_backend(diesel::pg::Pg))]
pub struct RefreshToken {
    pub id: Uuid,
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl RefreshToken {
    pub async fn insert(conn: &mut AsyncPgConnection, token: &RefreshToken) -> QueryResult<()> {
        diesel::insert_into(refresh_tokens::table)
            .values(token)
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Finds a token by hash and locks it for the rest of the transaction.
    pub async fn lock_by_hash(conn: &mut AsyncPgConnection, hash: &str) -> QueryResult<Option<RefreshToken>> {
        refresh_tokens::table
            .filter(refresh_tokens::token_hash.eq(hash))
            .select(RefreshToken::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()
    }

    pub async fn retire(conn: &mut AsyncPgConnection, id: Uuid, at: DateTime<Utc>) -> QueryResult<()> {
        diesel::update(refresh_tokens::table.find(id))
            .set(refresh_tokens::retired_at.eq(Some(at)))
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Revokes every token of a session (logout, or reuse of a retired token).
    pub async fn revoke_family(
        conn: &mut AsyncPgConnection,
        family_id: Uuid,
        user_id: Uuid,
        at: DateTime<Utc>,
    ) -> QueryResult<usize> {
        diesel::update(
            refresh_tokens::table
                .filter(refresh_tokens::family_id.eq(family_id))
                .filter(refresh_tokens::user_id.eq(user_id))
                .filter(refresh_tokens::revoked_at.is_null()),
        )
        .set(refresh_tokens::revoked_at.eq(Some(at)))
        .execute(conn)
        .await
    }
}
