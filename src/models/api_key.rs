use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

use crate::models::User;
use crate::schema::api_keys;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKey {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub name: String,
    /// The key's first characters, for recognising it; never the key.
    pub prefix: String,
    #[serde(skip)]
    pub key_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// At most this many active keys per user.
pub const MAX_ACTIVE_KEYS: i64 = 25;

impl ApiKey {
    pub async fn insert(conn: &mut AsyncPgConnection, key: &ApiKey) -> QueryResult<()> {
        diesel::insert_into(api_keys::table)
            .values(key)
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Inserts `key` unless its user already has [`MAX_ACTIVE_KEYS`] active
    /// keys (false then). The user's row is locked first: locking the keys
    /// alone would not serialise two creations (a new row is invisible to
    /// the other transaction, and with no keys there is nothing to lock).
    pub async fn insert_within_limit(conn: &mut AsyncPgConnection, key: &ApiKey) -> QueryResult<bool> {
        conn.transaction(async |conn| {
            User::lock(conn, key.user_id).await?;
            let active: i64 = api_keys::table
                .filter(api_keys::user_id.eq(key.user_id))
                .filter(api_keys::revoked_at.is_null())
                .count()
                .get_result(conn)
                .await?;
            if active >= MAX_ACTIVE_KEYS {
                return Ok(false);
            }
            Self::insert(conn, key).await?;
            Ok(true)
        })
        .await
    }

    pub async fn active_for_user(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<ApiKey>> {
        api_keys::table
            .filter(api_keys::user_id.eq(user_id))
            .filter(api_keys::revoked_at.is_null())
            .order(api_keys::created_at.desc())
            .select(ApiKey::as_select())
            .load(conn)
            .await
    }

    /// The active key with this hash: (key id, user id).
    pub async fn find_active_by_hash(conn: &mut AsyncPgConnection, hash: &str) -> QueryResult<Option<(Uuid, Uuid)>> {
        api_keys::table
            .filter(api_keys::key_hash.eq(hash))
            .filter(api_keys::revoked_at.is_null())
            .select((api_keys::id, api_keys::user_id))
            .first(conn)
            .await
            .optional()
    }

    /// Of these hashes, the ones whose key is still active.
    pub async fn still_active(conn: &mut AsyncPgConnection, hashes: &[String]) -> QueryResult<Vec<String>> {
        api_keys::table
            .filter(api_keys::key_hash.eq_any(hashes))
            .filter(api_keys::revoked_at.is_null())
            .select(api_keys::key_hash)
            .load(conn)
            .await
    }

    /// Revokes one of the user's keys; false when it is not theirs or gone.
    pub async fn revoke(conn: &mut AsyncPgConnection, id: Uuid, user_id: Uuid) -> QueryResult<Option<String>> {
        diesel::update(
            api_keys::table
                .filter(api_keys::id.eq(id))
                .filter(api_keys::user_id.eq(user_id))
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(diesel::dsl::now))
        .returning(api_keys::key_hash)
        .get_result(conn)
        .await
        .optional()
    }

    pub async fn touch(conn: &mut AsyncPgConnection, id: Uuid, at: DateTime<Utc>) -> QueryResult<()> {
        diesel::update(api_keys::table.find(id))
            .set(api_keys::last_used_at.eq(Some(at)))
            .execute(conn)
            .await
            .map(|_| ())
    }
}
