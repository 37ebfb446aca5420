use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use crate::domain::Period;
use crate::domain::pricing::PriceVersion;
use crate::domain::text::{Description, HttpMethod, Name, RoutePattern, Slug};
use crate::models::price::PriceRow;
use crate::schema::apis;

/// A catalog entry: one metered endpoint (method + actix route pattern).
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Serialize, utoipa::ToSchema)]
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

/// A new catalog entry, every field checked.
pub struct NewApi {
    pub slug: Slug,
    pub method: HttpMethod,
    pub route: RoutePattern,
    pub name: Name,
    pub description: Description,
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
    pub async fn create(conn: &mut AsyncPgConnection, new: &NewApi, first_price: &PriceVersion) -> QueryResult<Api> {
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
            PriceRow::upsert(conn, api.id, Period::EPOCH, first_price).await?;
            Ok(api)
        })
        .await
    }

    /// Applies `changes` (all absent: reads the entry unchanged).
    pub async fn update(conn: &mut AsyncPgConnection, id: i32, changes: &ApiChanges) -> QueryResult<Api> {
        if changes.name.is_none() && changes.description.is_none() && changes.active.is_none() {
            return apis::table.find(id).select(Api::as_select()).first(conn).await;
        }
        diesel::update(apis::table.find(id))
            .set(changes)
            .returning(Api::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn all(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Api>> {
        apis::table.order(apis::id).select(Api::as_select()).load(conn).await
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
