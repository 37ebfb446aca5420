//! Route → API map, held in memory so the hot path never asks the database
//! which API a call belongs to. Built-in APIs are found by their actix route
//! pattern; gateway APIs by the longest path prefix that matches the call
//! (at an equal prefix, an exact method before `*`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use actix_web::http::Method;

use crate::domain::gateway::{Segment, rest_after};
use crate::gateway::{UpstreamMetrics, UpstreamTarget};
use crate::models::Api;
use crate::models::api::Upstream;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::route_label;

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub api_id: i32,
    /// `payg_metered_calls_total{api="<slug>"}`, resolved once here so the
    /// hot path only does an atomic add.
    pub calls: prometheus::IntCounter,
    /// The route as the HTTP metrics label it (`/random/:max`, or a
    /// gateway's prefix), so telemetry need not match and format it again.
    pub route_label: Arc<str>,
    /// An admin switched the API off: calls to it are refused (404).
    pub active: bool,
    /// A gateway API's upstream; `None` for a built-in API.
    pub upstream: Option<Arc<UpstreamTarget>>,
}

/// Keyed by the actix route pattern (`/api/v1/tools/random/{max}`), never
/// the raw path, so `/random/7` and `/random/8` are one API.
type RouteMap = HashMap<String, Vec<(Method, CatalogEntry)>>;

/// A gateway API: its prefix's segments, its method (`None`: any).
struct GatewayRoute {
    prefix: Vec<String>,
    method: Option<Method>,
    entry: CatalogEntry,
}

#[derive(Default)]
struct Maps {
    by_route: RouteMap,
    /// Longest prefix first; at an equal prefix, an exact method first.
    gateway: Vec<GatewayRoute>,
    /// What these maps were built from, to skip rebuilding them unchanged.
    rows: Vec<(Api, Option<Upstream>)>,
}

#[derive(Default)]
pub struct Catalog {
    maps: RwLock<Maps>,
}

impl Catalog {
    pub fn new(apis: &[(Api, Option<Upstream>)], metrics: &Metrics) -> Self {
        let catalog = Self::default();
        catalog.replace(apis, metrics);
        catalog
    }

    /// Swaps in a new catalog (after an admin changes it, here or through
    /// another instance). Rows equal to the current ones change nothing.
    pub fn replace(&self, apis: &[(Api, Option<Upstream>)], metrics: &Metrics) {
        if self.maps.read().unwrap_or_else(|e| e.into_inner()).rows == apis {
            return;
        }
        let mut maps = Maps {
            rows: apis.to_vec(),
            ..Maps::default()
        };
        // Inactive entries stay in the maps: their routes must answer 404,
        // not pass through as if they were not metered (and be free).
        for (api, upstream) in apis {
            let method = if api.method == "*" {
                None
            } else {
                match Method::from_bytes(api.method.as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        tracing::warn!(slug = %api.slug, method = %api.method, "catalog entry has an unknown method; skipped");
                        continue;
                    }
                }
            };
            let mut entry = CatalogEntry {
                api_id: api.id,
                calls: metrics.metered_calls.with_label_values(&[&api.slug]),
                route_label: Arc::from(route_label(&api.route)),
                active: api.active,
                upstream: None,
            };
            match (upstream, method) {
                (Some(up), method) => {
                    entry.upstream = Some(Arc::new(UpstreamTarget::new(
                        &api.slug,
                        up,
                        upstream_metrics(metrics, &api.slug),
                    )));
                    maps.gateway.push(GatewayRoute {
                        prefix: api
                            .route
                            .trim_start_matches('/')
                            .split('/')
                            .map(str::to_owned)
                            .collect(),
                        method,
                        entry,
                    });
                }
                (None, Some(method)) => maps
                    .by_route
                    .entry(api.route.clone())
                    .or_default()
                    .push((method, entry)),
                (None, None) => {
                    tracing::warn!(slug = %api.slug, "a built-in catalog entry cannot take any method; skipped");
                }
            }
        }
        maps.gateway
            .sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.method.is_none()));
        *self.maps.write().unwrap_or_else(|e| e.into_inner()) = maps;
    }

    /// A built-in API by its route pattern.
    pub fn lookup(&self, method: &Method, route_pattern: &str) -> Option<CatalogEntry> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        maps.by_route
            .get(route_pattern)?
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, entry)| entry.clone())
    }

    /// A gateway API by the call's path (`segments` of `raw_path`), with the
    /// raw rest of the path after its prefix.
    pub fn lookup_gateway<'a>(
        &self,
        method: &Method,
        raw_path: &'a str,
        segments: &[Segment<'a>],
    ) -> Option<(CatalogEntry, &'a str)> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        // Routes come longest prefix first, exact methods before `*`; a
        // HEAD may also take a GET entry (HEAD is GET without the body),
        // after HEAD and `*` entries of the same prefix.
        let mut head_as_get: Option<(&GatewayRoute, &'a str)> = None;
        for route in &maps.gateway {
            if let Some((found, _)) = head_as_get
                && found.prefix.len() > route.prefix.len()
            {
                break;
            }
            let Some(rest) = rest_after(&route.prefix, raw_path, segments) else {
                continue;
            };
            match &route.method {
                None => return Some((route.entry.clone(), rest)),
                Some(m) if m == method => return Some((route.entry.clone(), rest)),
                Some(m) if *method == Method::HEAD && *m == Method::GET && head_as_get.is_none() => {
                    head_as_get = Some((route, rest));
                }
                Some(_) => {}
            }
        }
        head_as_get.map(|(route, rest)| (route.entry.clone(), rest))
    }
}

fn upstream_metrics(metrics: &Metrics, slug: &str) -> UpstreamMetrics {
    let class = |c: &str| metrics.upstream_responses.with_label_values(&[slug, c]);
    UpstreamMetrics {
        responses: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
        duration: metrics.upstream_duration.with_label_values(&[slug]),
        connect_errors: metrics.upstream_connect_errors.with_label_values(&[slug]),
        timeouts: metrics.upstream_timeouts.with_label_values(&[slug]),
    }
}
