use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use crate::config::Secret;
use crate::domain::pricing::PriceVersion;
use crate::domain::text::{Description, HttpMethod, Name, Slug, UpstreamUrl};
use crate::models::price::PriceRow;
use crate::schema::{api_upstreams, apis};

/// A catalog entry: one metered endpoint (method + actix route pattern), or
/// a gateway API (method or `*` + public path prefix, with an [`Upstream`]).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Identifiable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = apis, check_for_backend(diesel::pg::Pg))]
pub struct Api {
    pub id: i32,
    pub slug: String,
    pub method: String,
    pub route: String,
    pub name: String,
    pub description: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// A new catalog entry, every field checked (`route` by `RoutePattern` for
/// a built-in API, by `GatewayPrefix` for a gateway one).
pub struct NewApi {
    pub slug: Slug,
    pub method: HttpMethod,
    pub route: String,
    pub name: Name,
    pub description: Description,
}

/// Where a gateway API's calls are forwarded, and how. (`Debug` leaves the
/// secrets out.)
#[derive(Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = api_upstreams, check_for_backend(diesel::pg::Pg))]
pub struct Upstream {
    pub api_id: i32,
    pub url: String,
    pub timeout_ms: i32,
    pub connect_timeout_ms: i32,
    pub max_body_bytes: i64,
    pub preserve_host: bool,
    pub signing_secret: String,
    pub previous_signing_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("api_id", &self.api_id)
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("preserve_host", &self.preserve_host)
            .field("previous_secret_expires_at", &self.previous_secret_expires_at)
            .finish_non_exhaustive()
    }
}

/// A new upstream's settings, checked.
#[derive(Debug, Clone)]
pub struct NewUpstream {
    pub url: UpstreamUrl,
    pub timeout_ms: i32,
    pub connect_timeout_ms: i32,
    pub max_body_bytes: i64,
    pub preserve_host: bool,
    pub signing_secret: Secret,
}

/// A partial update of an upstream: `None` leaves a field alone.
#[derive(Debug, Default, Clone, AsChangeset)]
#[diesel(table_name = api_upstreams)]
pub struct UpstreamChanges {
    pub url: Option<String>,
    pub timeout_ms: Option<i32>,
    pub connect_timeout_ms: Option<i32>,
    pub max_body_bytes: Option<i64>,
    pub preserve_host: Option<bool>,
}

/// What an update does to an entry's upstream.
#[derive(Debug, Clone)]
pub enum UpstreamUpdate {
    Keep,
    Change(UpstreamChanges),
    /// The entry becomes a gateway API.
    Add(NewUpstream),
}

impl Upstream {
    async fn insert(conn: &mut AsyncPgConnection, api_id: i32, up: &NewUpstream) -> QueryResult<Upstream> {
        diesel::insert_into(api_upstreams::table)
            .values((
                api_upstreams::api_id.eq(api_id),
                api_upstreams::url.eq(up.url.as_str()),
                api_upstreams::timeout_ms.eq(up.timeout_ms),
                api_upstreams::connect_timeout_ms.eq(up.connect_timeout_ms),
                api_upstreams::max_body_bytes.eq(up.max_body_bytes),
                api_upstreams::preserve_host.eq(up.preserve_host),
                api_upstreams::signing_secret.eq(up.signing_secret.expose()),
            ))
            .returning(Upstream::as_returning())
            .get_result(conn)
            .await
    }

    /// A new signing secret; the current one keeps signing until
    /// `previous_until`. `None` if the entry has no upstream.
    pub async fn rotate_secret(
        conn: &mut AsyncPgConnection,
        api_id: i32,
        new_secret: &Secret,
        previous_until: DateTime<Utc>,
    ) -> QueryResult<Option<Upstream>> {
        diesel::update(api_upstreams::table.find(api_id))
            .set((
                api_upstreams::previous_signing_secret.eq(api_upstreams::signing_secret.nullable()),
                api_upstreams::previous_secret_expires_at.eq(previous_until),
                api_upstreams::signing_secret.eq(new_secret.expose()),
            ))
            .returning(Upstream::as_returning())
            .get_result(conn)
            .await
            .optional()
    }
}

impl UpstreamChanges {
    pub fn is_empty(&self) -> bool {
        self.url.is_none()
            && self.timeout_ms.is_none()
            && self.connect_timeout_ms.is_none()
            && self.max_body_bytes.is_none()
            && self.preserve_host.is_none()
    }
}

/// A partial update: `None` leaves a field alone.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = apis)]
pub struct ApiChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub active: Option<bool>,
}

impl Api {
    /// Inserts the entry and its first price, in one transaction. No call
    /// can predate the API, so that price covers all time (from 1970-01).
    /// A gateway API's upstream is inserted in the same transaction.
    pub async fn create(
        conn: &mut AsyncPgConnection,
        new: &NewApi,
        first_price: &PriceVersion,
        upstream: Option<&NewUpstream>,
    ) -> QueryResult<(Api, Option<Upstream>)> {
        conn.transaction(async |conn| {
            let api: Api = diesel::insert_into(apis::table)
                .values((
                    apis::slug.eq(new.slug.as_str()),
                    apis::method.eq(new.method.as_str()),
                    apis::route.eq(new.route.as_str()),
                    apis::name.eq(new.name.as_str()),
                    apis::description.eq(new.description.as_str()),
                ))
                .returning(Api::as_returning())
                .get_result(conn)
                .await?;
            PriceRow::upsert(conn, api.id, DateTime::UNIX_EPOCH, first_price).await?;
            let upstream = match upstream {
                Some(up) => Some(Upstream::insert(conn, api.id, up).await?),
                None => None,
            };
            Ok((api, upstream))
        })
        .await
    }

    /// Applies `changes` and the upstream's, in one transaction (all absent:
    /// reads the entry unchanged). `None` if there is no such entry.
    pub async fn update(
        conn: &mut AsyncPgConnection,
        id: i32,
        changes: &ApiChanges,
        upstream: &UpstreamUpdate,
    ) -> QueryResult<Option<(Api, Option<Upstream>)>> {
        conn.transaction(async |conn| {
            if changes.name.is_some() || changes.description.is_some() || changes.active.is_some() {
                let updated = diesel::update(apis::table.find(id)).set(changes).execute(conn).await?;
                if updated == 0 {
                    return Ok(None);
                }
            }
            match upstream {
                UpstreamUpdate::Keep => {}
                UpstreamUpdate::Change(c) if c.is_empty() => {}
                UpstreamUpdate::Change(c) => {
                    diesel::update(api_upstreams::table.find(id))
                        .set(c)
                        .execute(conn)
                        .await?;
                }
                UpstreamUpdate::Add(up) => {
                    Upstream::insert(conn, id, up).await?;
                }
            }
            Self::find_with_upstream(conn, id).await
        })
        .await
    }

    pub async fn all(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Api>> {
        apis::table.order(apis::id).select(Api::as_select()).load(conn).await
    }

    /// Every entry with its upstream, if it is a gateway API (by id).
    pub async fn all_with_upstreams(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(Api, Option<Upstream>)>> {
        apis::table
            .left_join(api_upstreams::table)
            .order(apis::id)
            .select((Api::as_select(), Option::<Upstream>::as_select()))
            .load(conn)
            .await
    }

    /// One entry with its upstream.
    pub async fn find_with_upstream(
        conn: &mut AsyncPgConnection,
        id: i32,
    ) -> QueryResult<Option<(Api, Option<Upstream>)>> {
        apis::table
            .left_join(api_upstreams::table)
            .filter(apis::id.eq(id))
            .select((Api::as_select(), Option::<Upstream>::as_select()))
            .first(conn)
            .await
            .optional()
    }

    /// The id of the entry with this slug.
    pub async fn id_by_slug(conn: &mut AsyncPgConnection, slug: &str) -> QueryResult<Option<i32>> {
        apis::table
            .filter(apis::slug.eq(slug))
            .select(apis::id)
            .first(conn)
            .await
            .optional()
    }

    /// One entry, by slug, with its upstream.
    pub async fn find_by_slug_with_upstream(
        conn: &mut AsyncPgConnection,
        slug: &str,
    ) -> QueryResult<Option<(Api, Option<Upstream>)>> {
        apis::table
            .left_join(api_upstreams::table)
            .filter(apis::slug.eq(slug))
            .select((Api::as_select(), Option::<Upstream>::as_select()))
            .first(conn)
            .await
            .optional()
    }

    pub async fn active(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Api>> {
        apis::table
            .filter(apis::active.eq(true))
            .order(apis::slug)
            .select(Api::as_select())
            .load(conn)
            .await
    }
}
