use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

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

impl Api {
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
