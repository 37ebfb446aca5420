//! The API catalog as an admin changes it: what a new entry must be (one
//! rule for the admin routes and the catalog file), and catalog as code —
//! `payg catalog apply FILE` and `payg catalog export`, in TOML:
//!
//! ```toml
//! [[api]]
//! slug = "weather"
//! name = "Weather"
//! description = "Forecasts by city"
//! method = "*"                  # or one method
//! route = "/weather"            # a path prefix for a gateway API
//! active = true                 # default true
//!
//! [api.upstream]                # absent: a built-in API
//! url = "http://127.0.0.1:9000/v2"
//! timeout_ms = 30000            # defaults as shown
//! connect_timeout_ms = 2000
//! max_body_bytes = 10485760
//! preserve_host = false
//!
//! [api.price]                   # absent: left as it is (new entries: 0.001 a call)
//! unit_price = "0.002"
//! free_calls = 100
//! tiers = [{ up_to = 1000, unit_price = "0.002" }, { unit_price = "0.001" }]
//! ```
//!
//! Entries are matched by slug. Apply creates what is missing and changes
//! what differs, all in one transaction (a bad entry changes nothing); a
//! second apply of the same file changes nothing. A price that differs from
//! the latest one scheduled is scheduled from the first whole second
//! [`PRICE_NOTICE`] after it is written (as `POST …/prices` without
//! `effective_from` does), and the apply fails, changing nothing, if its
//! transaction would commit less than a second before such a start: calls
//! that arrive before the start keep the
//! price they arrived under. A file entry without a price leaves the API's
//! prices as they are. Entries the file does not name are left alone; method and route
//! are an entry's identity and never change; an upstream is never removed.

use std::borrow::Cow;
use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::auth::tokens;
use crate::config::Secret;
use crate::domain::Clock;
use crate::domain::Currency;
use crate::domain::gateway as gw;
use crate::domain::pricing::{InvalidPrice, PriceVersion, Tier, start_from_now};
use crate::domain::text::{Description, GatewayPrefix, HttpMethod, InvalidText, Name, RoutePattern, Slug, UpstreamUrl};
use crate::models::Api;
use crate::models::api::{ApiChanges, NewApi, NewUpstream, Upstream, UpstreamChanges, UpstreamUpdate};
use crate::models::price::{PriceBook, PriceRow};

/// What a new entry costs until an admin prices it: 0.001 a call.
pub fn default_price(currency: Currency) -> PriceVersion {
    PriceVersion {
        currency,
        unit_price: Decimal::new(1, 3),
        free_calls: 0,
        tiers: vec![],
    }
}

fn default_timeout_ms() -> i32 {
    gw::DEFAULT_TIMEOUT_MS
}
fn default_connect_timeout_ms() -> i32 {
    gw::DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_max_body_bytes() -> i64 {
    gw::DEFAULT_MAX_BODY_BYTES
}
fn yes() -> bool {
    true
}

/// A gateway API's upstream, as an admin sends it (request body and
/// catalog file alike; defaults as shown).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    #[schema(inline)]
    pub url: UpstreamUrl,
    /// Milliseconds from the start of the call (connecting and sending the
    /// body included) to the response head (default 30000).
    #[serde(default = "default_timeout_ms")]
    #[schema(minimum = 1, maximum = 3600000, default = 30000)]
    pub timeout_ms: i32,
    /// Milliseconds to connect (default 2000).
    #[serde(default = "default_connect_timeout_ms")]
    #[schema(minimum = 1, maximum = 600000, default = 2000)]
    pub connect_timeout_ms: i32,
    /// Largest request body forwarded, in bytes (default 10485760).
    #[serde(default = "default_max_body_bytes")]
    #[schema(minimum = 0, default = 10485760)]
    pub max_body_bytes: i64,
    /// Send the client's `Host` upstream instead of the upstream's own.
    #[serde(default)]
    pub preserve_host: bool,
}

impl UpstreamSettings {
    /// Checked, with a fresh signing secret.
    pub fn checked(&self) -> Result<NewUpstream, InvalidText> {
        gw::check_limits(self.timeout_ms, self.connect_timeout_ms, self.max_body_bytes)
            .map_err(|why| InvalidText(Cow::Borrowed(why)))?;
        Ok(NewUpstream {
            url: self.url.clone(),
            timeout_ms: self.timeout_ms,
            connect_timeout_ms: self.connect_timeout_ms,
            max_body_bytes: self.max_body_bytes,
            preserve_host: self.preserve_host,
            signing_secret: new_signing_secret(),
        })
    }

    fn of(up: &Upstream) -> Result<Self, InvalidText> {
        Ok(Self {
            url: up.url.parse()?,
            timeout_ms: up.timeout_ms,
            connect_timeout_ms: up.connect_timeout_ms,
            max_body_bytes: up.max_body_bytes,
            preserve_host: up.preserve_host,
        })
    }

    /// The fields of `current` this differs in.
    fn changes_from(&self, current: &Upstream) -> UpstreamChanges {
        UpstreamChanges {
            url: (self.url.as_str() != current.url).then(|| self.url.as_str().to_owned()),
            timeout_ms: (self.timeout_ms != current.timeout_ms).then_some(self.timeout_ms),
            connect_timeout_ms: (self.connect_timeout_ms != current.connect_timeout_ms)
                .then_some(self.connect_timeout_ms),
            max_body_bytes: (self.max_body_bytes != current.max_body_bytes).then_some(self.max_body_bytes),
            preserve_host: (self.preserve_host != current.preserve_host).then_some(self.preserve_host),
        }
    }
}

/// `pgs_` + 43 base62 characters (about 256 bits).
pub fn new_signing_secret() -> Secret {
    Secret::new(tokens::generate("pgs_"))
}

/// The one rule for a new entry: a gateway API's route is a path prefix
/// (`GatewayPrefix`: never `/` nor under a path payg serves); a built-in
/// API's is an actix route pattern, and only a gateway API takes `*`.
pub fn new_entry(
    slug: Slug,
    method: HttpMethod,
    route: &RoutePattern,
    name: Name,
    description: Description,
    upstream: Option<&UpstreamSettings>,
) -> Result<(NewApi, Option<NewUpstream>), InvalidText> {
    let route = match upstream {
        Some(_) => route.as_str().parse::<GatewayPrefix>()?.as_str().to_owned(),
        None if method.is_any() => {
            return Err(InvalidText(Cow::Borrowed(
                "method * (any) is only for an API with an upstream",
            )));
        }
        None => route.as_str().to_owned(),
    };
    let upstream = upstream.map(UpstreamSettings::checked).transpose()?;
    Ok((
        NewApi {
            slug,
            method,
            route,
            name,
            description,
        },
        upstream,
    ))
}

/// A catalog file: `[[api]]` tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    #[serde(default, rename = "api")]
    pub apis: Vec<EntryFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryFile {
    pub slug: Slug,
    pub name: Name,
    #[serde(default)]
    pub description: Description,
    pub method: HttpMethod,
    pub route: RoutePattern,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceFile>,
}

/// A price in the billing currency.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    #[serde(with = "crate::domain::currency::decimal_string")]
    pub unit_price: Decimal,
    #[serde(default)]
    pub free_calls: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
}

impl PriceFile {
    fn version(&self, currency: Currency) -> Result<PriceVersion, InvalidPrice> {
        let version = PriceVersion {
            currency,
            unit_price: self.unit_price,
            free_calls: self.free_calls,
            tiers: self.tiers.clone(),
        };
        version.validate()?;
        Ok(version)
    }

    fn of(version: &PriceVersion) -> Self {
        Self {
            unit_price: version.unit_price,
            free_calls: version.free_calls,
            tiers: version.tiers.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{slug}: {why}")]
    Invalid { slug: String, why: String },
    /// The transaction took so long that a price it scheduled would become
    /// visible too close to its start (see [`apply`]); nothing was changed.
    #[error("the apply took too long to schedule its prices safely; nothing was changed: run it again")]
    TooSlow,
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

fn invalid(slug: &str, why: impl ToString) -> ApplyError {
    ApplyError::Invalid {
        slug: slug.to_owned(),
        why: why.to_string(),
    }
}

/// What an apply did: one line per change, and the signing secrets it
/// generated (shown once, like the admin route's answer).
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Vec<String>,
    pub new_secrets: Vec<(String, Secret)>,
    /// The earliest start of a price this apply scheduled.
    first_price_start: Option<DateTime<Utc>>,
}

/// Applies `file` in one transaction (see the module's documentation).
pub async fn apply(
    conn: &mut AsyncPgConnection,
    file: &CatalogFile,
    clock: &dyn Clock,
    currency: Currency,
) -> Result<Applied, ApplyError> {
    let mut slugs = HashSet::new();
    for entry in &file.apis {
        if !slugs.insert(entry.slug.as_str()) {
            return Err(invalid(entry.slug.as_str(), "named twice in the file"));
        }
    }
    conn.transaction(async |conn| {
        let mut applied = Applied::default();
        for entry in &file.apis {
            apply_entry(conn, entry, clock, currency, &mut applied).await?;
        }
        // A price becomes visible at the commit: at least a second before it
        // starts, or instances could flush calls of its first second without
        // it (the notice is [`PRICE_NOTICE`]; the rest covers clock skew).
        if applied
            .first_price_start
            .is_some_and(|first| clock.now() + TimeDelta::seconds(1) > first)
        {
            return Err(ApplyError::TooSlow);
        }
        Ok(applied)
    })
    .await
}

async fn apply_entry(
    conn: &mut AsyncPgConnection,
    entry: &EntryFile,
    clock: &dyn Clock,
    currency: Currency,
    applied: &mut Applied,
) -> Result<(), ApplyError> {
    let slug = entry.slug.as_str();
    let (new, new_upstream) = new_entry(
        entry.slug.clone(),
        entry.method.clone(),
        &entry.route,
        entry.name.clone(),
        entry.description.clone(),
        entry.upstream.as_ref(),
    )
    .map_err(|e| invalid(slug, e))?;
    let price = entry
        .price
        .as_ref()
        .map(|p| p.version(currency))
        .transpose()
        .map_err(|e| invalid(slug, e))?;

    let Some((api, upstream)) = Api::find_by_slug_with_upstream(conn, slug).await? else {
        let first = price.clone().unwrap_or_else(|| default_price(currency));
        let (api, created_upstream) =
            Api::create(conn, &new, &first, new_upstream.as_ref())
                .await
                .map_err(|e| match e {
                    diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => {
                        invalid(slug, "another API already has this method and route")
                    }
                    other => other.into(),
                })?;
        if !entry.active {
            let off = ApiChanges {
                active: Some(false),
                ..ApiChanges::default()
            };
            Api::update(conn, api.id, &off, &UpstreamUpdate::Keep).await?;
        }
        applied.changes.push(format!("created {slug}"));
        if let Some(up) = created_upstream {
            applied
                .new_secrets
                .push((slug.to_owned(), Secret::new(up.signing_secret)));
        }
        return Ok(());
    };

    if api.method != new.method.as_str() || api.route != new.route {
        return Err(invalid(
            slug,
            format!(
                "is {} {} in the catalog; method and route never change (add an entry with a new slug)",
                api.method, api.route
            ),
        ));
    }
    let changes = ApiChanges {
        name: (api.name != entry.name.as_str()).then(|| entry.name.as_str().to_owned()),
        description: (api.description != entry.description.as_str()).then(|| entry.description.as_str().to_owned()),
        active: (api.active != entry.active).then_some(entry.active),
    };
    let upstream_update = match (&entry.upstream, upstream) {
        (None, None) => UpstreamUpdate::Keep,
        (None, Some(_)) => {
            return Err(invalid(
                slug,
                "has an upstream in the catalog and none in the file; upstreams are never removed",
            ));
        }
        (Some(settings), Some(current)) => UpstreamUpdate::Change(settings.changes_from(&current)),
        (Some(_), None) => match new_upstream {
            Some(new) => UpstreamUpdate::Add(new),
            None => UpstreamUpdate::Keep,
        },
    };
    let mut what: Vec<&str> = Vec::new();
    for (field, changed) in [
        ("name", changes.name.is_some()),
        ("description", changes.description.is_some()),
        ("active", changes.active.is_some()),
    ] {
        if changed {
            what.push(field);
        }
    }
    let added_upstream = match &upstream_update {
        UpstreamUpdate::Change(c) if c.is_empty() => false,
        UpstreamUpdate::Change(_) => {
            what.push("upstream");
            false
        }
        UpstreamUpdate::Add(_) => {
            what.push("upstream (new)");
            true
        }
        UpstreamUpdate::Keep => false,
    };
    if !what.is_empty() {
        let updated = Api::update(conn, api.id, &changes, &upstream_update).await?;
        if added_upstream && let Some((_, Some(up))) = updated {
            applied
                .new_secrets
                .push((slug.to_owned(), Secret::new(up.signing_secret)));
        }
        applied.changes.push(format!("updated {slug}: {}", what.join(", ")));
    }
    if let Some(version) = price {
        let book = PriceBook::load(conn, Some(&[api.id])).await?;
        if book.latest(api.id).map(|e| &e.version) != Some(&version) {
            let start = start_from_now(clock.now());
            PriceRow::upsert(conn, api.id, start, &version).await?;
            applied.first_price_start = Some(applied.first_price_start.map_or(start, |first| first.min(start)));
            applied
                .changes
                .push(format!("priced {slug} from {}", start.to_rfc3339()));
        }
    }
    Ok(())
}

/// The whole catalog as a file: every entry with its latest price; no
/// signing secret.
pub async fn export(conn: &mut AsyncPgConnection) -> Result<CatalogFile, ApplyError> {
    let rows = Api::all_with_upstreams(conn).await?;
    let book = PriceBook::load(conn, None).await?;
    let mut apis = Vec::with_capacity(rows.len());
    for (api, upstream) in rows {
        let slug = api.slug.clone();
        let parse = |e: InvalidText| invalid(&slug, e);
        apis.push(EntryFile {
            slug: api.slug.parse().map_err(parse)?,
            name: api.name.parse().map_err(parse)?,
            description: api.description.parse().map_err(parse)?,
            method: api.method.parse().map_err(parse)?,
            route: api.route.parse().map_err(parse)?,
            active: api.active,
            upstream: upstream.as_ref().map(UpstreamSettings::of).transpose().map_err(parse)?,
            price: book.latest(api.id).map(|e| PriceFile::of(&e.version)),
        });
    }
    Ok(CatalogFile { apis })
}
