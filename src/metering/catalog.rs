//! Route → API map, held in memory so the hot path never asks the database
//! which API a call belongs to.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use actix_web::http::Method;

use crate::models::Api;
use crate::telemetry::metrics::route_label;

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub api_id: i32,
    /// `payg_metered_calls_total{api="<slug>"}`, resolved once here so the
    /// hot path only does an atomic add.
    pub calls: prometheus::IntCounter,
    /// The route as the HTTP metrics label it (`/random/:max`), so telemetry
    /// need not match and format it again per call.
    pub route_label: Arc<str>,
    /// An admin switched the API off: calls to it are refused (404).
    pub active: bool,
}

/// Keyed by the actix route pattern (`/api/v1/tools/random/{max}`), never
/// the raw path, so `/random/7` and `/random/8` are one API.
type RouteMap = HashMap<String, Vec<(Method, CatalogEntry)>>;

#[derive(Default)]
pub struct Catalog {
    by_route: RwLock<RouteMap>,
}

impl Catalog {
    pub fn new(apis: &[Api], calls: &prometheus::IntCounterVec) -> Self {
        let catalog = Self::default();
        catalog.replace(apis, calls);
        catalog
    }

    /// Swaps in a new catalog (after an admin changes it).
    pub fn replace(&self, apis: &[Api], calls: &prometheus::IntCounterVec) {
        let mut map = RouteMap::new();
        // Inactive entries stay in the map: their routes must answer 404,
        // not pass through as if they were not metered (and be free).
        for api in apis {
            let Ok(method) = Method::from_bytes(api.method.as_bytes()) else {
                tracing::warn!(slug = %api.slug, method = %api.method, "catalog entry has an unknown method; skipped");
                continue;
            };
            map.entry(api.route.clone()).or_default().push((
                method,
                CatalogEntry {
                    api_id: api.id,
                    calls: calls.with_label_values(&[&api.slug]),
                    route_label: Arc::from(route_label(&api.route)),
                    active: api.active,
                },
            ));
        }
        *self.by_route.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    pub fn lookup(&self, method: &Method, route_pattern: &str) -> Option<CatalogEntry> {
        let map = self.by_route.read().unwrap_or_else(|e| e.into_inner());
        map.get(route_pattern)?
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, entry)| entry.clone())
    }
}
