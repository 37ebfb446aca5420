//! Admin pages (admin role, as in the API): the catalog — entries, gateway
//! upstreams, prices and their history, scheduling a price, adding a
//! gateway API — and users (find by email, change role or status).

use actix_web::web;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{self, PageError, PageResult, Signed, money};
use crate::actions;
use crate::catalog::{self, UpstreamSettings};
use crate::domain::currency::parse_decimal_string;
use crate::domain::gateway as gw;
use crate::domain::pricing::{PriceStart, PriceVersion, Tier};
use crate::domain::text::{Description, EmailPart, HttpMethod, Name, RoutePattern, Slug, UpstreamUrl};
use crate::error::ApiError;
use crate::models::Api;
use crate::models::api::{ApiChanges, UpstreamChanges, UpstreamUpdate};
use crate::models::price::{PriceBook, PriceStatus};
use crate::models::user::{Role, StandingChange, UserStatus};

fn admin_only(signed: &Signed) -> Result<(), PageError> {
    signed.user.0.require_admin().map_err(ApiError::from)?;
    Ok(())
}

fn version_text(v: &PriceVersion) -> Markup {
    let code = v.currency.code();
    html! {
        @if v.tiers.is_empty() { (money(v.unit_price, code)) " per call" } @else {
            @for (i, t) in v.tiers.iter().enumerate() {
                @if i > 0 { "; " }
                (money(t.unit_price, code)) @match t.up_to { Some(n) => { " to " (n) }, None => { " beyond" } }
            }
        }
        @if v.free_calls > 0 { ", " (v.free_calls) " free" }
    }
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /console/admin`: every catalog entry with its price now.
pub async fn show_catalog(signed: Signed, query: web::Query<Done>) -> PageResult {
    admin_only(&signed)?;
    let mut conn = signed.conn().await?;
    let all = Api::all_with_upstreams(&mut conn).await.map_err(PageError::from)?;
    let book = PriceBook::load(&mut conn, None).await.map_err(PageError::from)?;
    drop(conn);
    let now = signed.state.now();
    let main = html! {
        main {
            h1 { "Admin" }
            (page::notice((query.done.as_deref() == Some("added")).then_some("API added."), "ok"))
            p.actions { a href="/console/admin/users" { "Users →" } a href="/console/admin/webhooks" { "Webhooks →" } }
            h2 { "Catalog" }
            div.scroll { table #catalog {
                thead { tr {
                    th scope="col" { "API" } th scope="col" { "Route" } th scope="col" { "Upstream" }
                    th scope="col" { "Price now" } th scope="col" { "State" }
                } }
                tbody { @for (api, upstream) in &all { tr {
                    td { a href={"/console/admin/apis/" (api.id)} { (api.name) } br; code.muted { (api.slug) } }
                    td data-label="Route" { code { (api.method) " " (api.route) } }
                    td data-label="Upstream" { @match upstream { Some(u) => code { (u.url) }, None => span.muted { "built in" } } }
                    td data-label="Price" {
                        @match book.in_force_at(api.id, now) { Some(e) => (version_text(&e.version)), None => "free" }
                        @if let Some(next) = book.next_after(api.id, now) { br; span.muted { "from " (signed.when(next.effective_from)) ": " (version_text(&next.version)) } }
                    }
                    td data-label="State" { @if api.active { span.badge.paid { "active" } } @else { span.badge.void { "inactive" } } }
                } } }
            } }
            section {
                h2 { "Add a gateway API" }
                p.muted { "Calls to the route (a path prefix) are counted, priced and forwarded to the upstream. It starts at the default price." }
                form.stack method="post" action="/console/admin/apis" {
                    (signed.csrf_field())
                    label for="slug" { "Slug" } input #slug type="text" name="slug" required pattern="[a-z0-9][a-z0-9-]*" maxlength="64";
                    label for="name" { "Name" } input #name type="text" name="name" required maxlength="200";
                    label for="method" { "Method " span.muted { "(or * for any)" } } input #method type="text" name="method" value="*" required maxlength="10";
                    label for="route" { "Route prefix" } input #route type="text" name="route" placeholder="/weather" required;
                    label for="url" { "Upstream URL" } input #url type="url" name="url" placeholder="https://api.internal.example" required;
                    label for="description" { "Description" } input #description type="text" name="description" maxlength="1000";
                    button type="submit" { "Add API" }
                }
            }
        }
    };
    Ok(signed.page("Admin", "/console/admin", main))
}

#[derive(Deserialize)]
pub struct NewApiForm {
    slug: Slug,
    name: Name,
    method: HttpMethod,
    route: RoutePattern,
    url: UpstreamUrl,
    #[serde(default)]
    description: Description,
}

/// `POST /console/admin/apis`: a gateway API, as `POST /admin/apis` with an
/// upstream makes it. The signing secret is shown once, on the next page.
pub async fn create_api(signed: Signed, form: web::Form<NewApiForm>) -> PageResult {
    admin_only(&signed)?;
    let f = form.into_inner();
    let settings = UpstreamSettings {
        url: f.url,
        timeout_ms: gw::DEFAULT_TIMEOUT_MS,
        connect_timeout_ms: gw::DEFAULT_CONNECT_TIMEOUT_MS,
        max_body_bytes: gw::DEFAULT_MAX_BODY_BYTES,
        preserve_host: false,
    };
    let (new, upstream) = catalog::new_entry(f.slug, f.method, &f.route, f.name, f.description, Some(&settings))
        .map_err(PageError::from)?;
    let (api, upstream) = actions::create_api(&signed.state, &new, upstream.as_ref()).await?;
    let main = html! {
        main {
            h1 { "Added " (api.name) }
            @if let Some(u) = upstream {
                section.created role="status" {
                    p { strong { "The upstream's signing secret, shown this once:" } " payg signs every forwarded call with it (" code { "Payg-Signature" } ")." }
                    div.copy {
                        input #signing-secret type="text" readonly value=(u.signing_secret) aria-label="Signing secret";
                        button type="button" data-copy="signing-secret" { "Copy" }
                    }
                }
            }
            p { a href={"/console/admin/apis/" (api.id)} { "Its page →" } " · " a href="/console/admin?done=added" { "Catalog" } }
        }
    };
    Ok(signed.page("API added", "/console/admin", main))
}

/// `GET /console/admin/apis/{id}`: the entry, its upstream, its price
/// history, and forms to change it and to schedule a price.
pub async fn show_api(signed: Signed, id: web::Path<String>, query: web::Query<Done>) -> PageResult {
    admin_only(&signed)?;
    let id: i32 = id.parse().map_err(|_| ApiError::not_found("no such API"))?;
    let mut conn = signed.conn().await?;
    let (api, upstream) = Api::find_with_upstream(&mut conn, id)
        .await
        .map_err(PageError::from)?
        .ok_or_else(|| ApiError::not_found("no such API"))?;
    let book = PriceBook::load(&mut conn, Some(&[id])).await.map_err(PageError::from)?;
    drop(conn);
    let now = signed.state.now();
    let zone = signed.zone();
    let in_force = book.in_force_at(id, now);
    let done = query.done.as_deref().map(|d| match d {
        "price" => "Price scheduled: calls that arrive before it starts keep the price they arrived under.",
        "cancelled" => "Scheduled price cancelled.",
        _ => "Saved.",
    });
    let currency = signed.state.config.billing.currency;
    let main = html! {
        main {
            p { a href="/console/admin" { "← Catalog" } }
            h1 { (api.name) " " code.muted { (api.slug) } }
            (page::notice(done, "ok"))
            dl.facts {
                dt { "Route" } dd { code { (api.method) " " (api.route) } }
                dt { "State" } dd { @if api.active { "active" } @else { "inactive" } }
                @if let Some(u) = &upstream {
                    dt { "Upstream" } dd { code { (u.url) } }
                    dt { "Timeouts" } dd { (u.timeout_ms) " ms (connect " (u.connect_timeout_ms) " ms)" }
                    dt { "Largest body" } dd { (u.max_body_bytes) " bytes" }
                }
            }
            section {
                h2 { "Change" }
                form.stack method="post" action={"/console/admin/apis/" (api.id)} {
                    (signed.csrf_field())
                    label for="name" { "Name" } input #name type="text" name="name" value=(api.name) required maxlength="200";
                    label for="description" { "Description" } input #description type="text" name="description" value=(api.description) maxlength="1000";
                    label.check { input type="checkbox" name="active" value="yes" checked[api.active]; " Active (inactive APIs are not metered or served)" }
                    button type="submit" { "Save" }
                }
            }
            @if let Some(u) = &upstream {
                section {
                    h2 { "Upstream" }
                    form.stack method="post" action={"/console/admin/apis/" (api.id) "/upstream"} {
                        (signed.csrf_field())
                        label for="url" { "URL" } input #url type="url" name="url" value=(u.url) required;
                        label for="timeout_ms" { "Timeout (ms, 1 to 3600000)" } input #timeout_ms type="number" name="timeout_ms" min="1" max="3600000" value=(u.timeout_ms) required;
                        label for="connect_timeout_ms" { "Connect timeout (ms, 1 to 600000)" } input #connect_timeout_ms type="number" name="connect_timeout_ms" min="1" max="600000" value=(u.connect_timeout_ms) required;
                        label for="max_body_bytes" { "Largest request body (bytes)" } input #max_body_bytes type="number" name="max_body_bytes" min="0" value=(u.max_body_bytes) required;
                        label.check { input type="checkbox" name="preserve_host" value="yes" checked[u.preserve_host]; " Send the client's Host header upstream" }
                        button type="submit" { "Save upstream" }
                    }
                    form method="post" action={"/console/admin/apis/" (api.id) "/signing-secret"} data-confirm="Rotate the signing secret? The old one keeps signing beside the new one for 24 hours." {
                        (signed.csrf_field())
                        p.muted { "payg signs every forwarded call (" code { "Payg-Signature" } "). "
                            @if let Some(until) = u.previous_secret_expires_at { "The previous secret signs too until " (signed.when(until)) ". " } }
                        button type="submit" { "Rotate signing secret" }
                    }
                }
            }
            section {
                h2 { "Prices" }
                div.scroll { table #prices {
                    thead { tr { th scope="col" { "From" } th scope="col" { "Price" } th scope="col" { "State" } } }
                    tbody { @for entry in book.history(id).iter().rev() { tr {
                        td { (price_start_text(entry.effective_from, zone)) }
                        td data-label="Price" { (version_text(&entry.version)) }
                        td data-label="State" { @match entry.status(in_force, now) {
                            PriceStatus::Scheduled => {
                                span.badge { "scheduled" } " "
                                form.inline method="post" action={"/console/admin/apis/" (api.id) "/prices/" (entry.id) "/cancel"} data-confirm="Cancel this scheduled price?" {
                                    (signed.csrf_field())
                                    button type="submit" { "Cancel" }
                                }
                            }
                            PriceStatus::InForce => span.badge.paid { "in force" },
                            PriceStatus::Superseded => span.muted { "superseded" },
                        } }
                    } } }
                } }
                h3 { "Schedule a price" }
                p.muted { "Calls are priced by the version in force when they arrive: a new price never changes what calls already made cost. Free calls and tiers count the whole month, across versions." }
                form.stack method="post" action={"/console/admin/apis/" (api.id) "/prices"} {
                    (signed.csrf_field())
                    label for="unit_price" { "Price per call (" (currency) ")" }
                    input #unit_price type="text" name="unit_price" inputmode="decimal" required placeholder="0.001";
                    label for="free_calls" { "Free calls each month" }
                    input #free_calls type="number" name="free_calls" min="0" value="0";
                    label for="effective_from" { "From " span.muted { "(an instant such as 2027-01-01T00:00:00Z, or a month YYYY-MM from its first instant in " (zone) "; empty: in about 2 seconds)" } }
                    input #effective_from type="text" name="effective_from" placeholder="now";
                    button type="submit" { "Schedule price" }
                }
            }
        }
    };
    Ok(signed.page(&api.name, "/console/admin", main))
}

#[derive(Deserialize)]
pub struct ApiForm {
    name: Name,
    #[serde(default)]
    description: Description,
    active: Option<String>,
}

/// `POST /console/admin/apis/{id}`.
pub async fn update_api(signed: Signed, id: web::Path<String>, form: web::Form<ApiForm>) -> PageResult {
    admin_only(&signed)?;
    let id: i32 = id.parse().map_err(|_| ApiError::not_found("no such API"))?;
    let f = form.into_inner();
    let changes = ApiChanges {
        name: Some(f.name.into_inner()),
        description: Some(f.description.into_inner()),
        active: Some(f.active.as_deref() == Some("yes")),
    };
    actions::update_api(&signed.state, id, &changes, &UpstreamUpdate::Keep).await?;
    Ok(page::see_other(&format!("/console/admin/apis/{id}?done=saved")))
}

#[derive(Deserialize)]
pub struct UpstreamForm {
    url: UpstreamUrl,
    timeout_ms: i32,
    connect_timeout_ms: i32,
    max_body_bytes: i64,
    preserve_host: Option<String>,
}

/// `POST /console/admin/apis/{id}/upstream`: as `PATCH /admin/apis/{id}`
/// with `upstream`; every instance follows within about a second.
pub async fn update_upstream(signed: Signed, id: web::Path<String>, form: web::Form<UpstreamForm>) -> PageResult {
    admin_only(&signed)?;
    let id: i32 = id.parse().map_err(|_| ApiError::not_found("no such API"))?;
    let f = form.into_inner();
    let mut conn = signed.conn().await?;
    let found = Api::find_with_upstream(&mut conn, id).await.map_err(PageError::from)?;
    drop(conn);
    match found {
        None => return Err(ApiError::not_found("no such API").into()),
        Some((_, None)) => {
            return Err(ApiError::conflict("no_upstream", "this API has no upstream to change").into());
        }
        Some(_) => {}
    }
    gw::check_limits(f.timeout_ms, f.connect_timeout_ms, f.max_body_bytes).map_err(ApiError::validation)?;
    let change = UpstreamUpdate::Change(UpstreamChanges {
        url: Some(f.url.into_inner()),
        timeout_ms: Some(f.timeout_ms),
        connect_timeout_ms: Some(f.connect_timeout_ms),
        max_body_bytes: Some(f.max_body_bytes),
        preserve_host: Some(f.preserve_host.as_deref() == Some("yes")),
    });
    let unchanged = ApiChanges {
        name: None,
        description: None,
        active: None,
    };
    actions::update_api(&signed.state, id, &unchanged, &change).await?;
    Ok(page::see_other(&format!("/console/admin/apis/{id}?done=saved")))
}

/// `POST /console/admin/apis/{id}/signing-secret`: the new secret is shown
/// once, on this answer (never redirected to, never cached).
pub async fn rotate_signing_secret(signed: Signed, id: web::Path<String>) -> PageResult {
    admin_only(&signed)?;
    let id: i32 = id.parse().map_err(|_| ApiError::not_found("no such API"))?;
    let (api, upstream) = actions::rotate_signing_secret(&signed.state, id).await?;
    let main = html! {
        main {
            h1 { "New signing secret for " (api.name) }
            @if let Some(u) = upstream {
                section.created role="status" {
                    p { strong { "Shown this once:" } " give it to the upstream. The previous secret signs beside it until "
                        @if let Some(until) = u.previous_secret_expires_at { (signed.when(until)) } "." }
                    div.copy {
                        input #signing-secret type="text" readonly value=(u.signing_secret) aria-label="Signing secret";
                        button type="button" data-copy="signing-secret" { "Copy" }
                    }
                }
            }
            p { a href={"/console/admin/apis/" (api.id)} { "← " (api.name) } }
        }
    };
    Ok(signed.page("Signing secret", "/console/admin", main))
}

#[derive(Deserialize)]
pub struct PriceForm {
    unit_price: String,
    free_calls: Option<String>,
    effective_from: Option<String>,
}

/// `POST /console/admin/apis/{id}/prices`: a flat price (tiers are set
/// through the API or the catalog file).
pub async fn schedule_price(signed: Signed, id: web::Path<String>, form: web::Form<PriceForm>) -> PageResult {
    admin_only(&signed)?;
    let id: i32 = id.parse().map_err(|_| ApiError::not_found("no such API"))?;
    let f = form.into_inner();
    let unit_price = parse_decimal_string(f.unit_price.trim()).map_err(ApiError::validation)?;
    let free_calls: i64 = match f.free_calls.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(n) => n
            .parse()
            .map_err(|_| ApiError::validation("free calls must be a whole number"))?,
        None => 0,
    };
    let start = f
        .effective_from
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse::<PriceStart>)
        .transpose()
        .map_err(ApiError::from)?
        .map(|s| s.instant(signed.zone()));
    let version = PriceVersion {
        currency: signed.state.config.billing.currency,
        unit_price,
        free_calls,
        tiers: Vec::<Tier>::new(),
    };
    actions::schedule_price(&signed.state, id, &version, start).await?;
    Ok(page::see_other(&format!("/console/admin/apis/{id}?done=price")))
}

/// `POST /console/admin/apis/{id}/prices/{price_id}/cancel`.
pub async fn cancel_price(signed: Signed, path: web::Path<(String, String)>) -> PageResult {
    admin_only(&signed)?;
    let (id, price_id) = path.into_inner();
    let not_found = || ApiError::not_found("no such price version");
    let id: i32 = id.parse().map_err(|_| not_found())?;
    let price_id: i32 = price_id.parse().map_err(|_| not_found())?;
    actions::cancel_price(&signed.state, id, price_id).await?;
    Ok(page::see_other(&format!("/console/admin/apis/{id}?done=cancelled")))
}

/// A price version's first instant, to the second, in the billing zone.
fn price_start_text(at: DateTime<Utc>, zone: Tz) -> String {
    at.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z").to_string()
}

#[derive(Deserialize)]
pub struct UsersQuery {
    email: Option<String>,
    page: Option<i64>,
    done: Option<String>,
}

const USERS_PER_PAGE: i64 = 50;

/// `GET /console/admin/users?email=&page=`: find users by part of their
/// email (as `GET /api/v1/admin/users`), change a role or status.
pub async fn list_users(signed: Signed, query: web::Query<UsersQuery>) -> PageResult {
    admin_only(&signed)?;
    let q = query.into_inner();
    let email = q.email.as_deref().unwrap_or("").trim().to_owned();
    let part = (!email.is_empty())
        .then(|| email.parse::<EmailPart>())
        .transpose()
        .map_err(PageError::from)?;
    let page_no = page::page_number(q.page)?;
    let (found, total) = actions::find_users(&signed.state, part.as_ref(), page_no, USERS_PER_PAGE).await?;
    let done = (q.done.as_deref() == Some("saved")).then_some("Saved.");
    let me = signed.user.id();
    let main = html! {
        main {
            p { a href="/console/admin" { "← Admin" } }
            h1 { "Users" }
            (page::notice(done, "ok"))
            form.inline method="get" action="/console/admin/users" {
                label for="email" { "Email contains" }
                input #email type="text" name="email" value=(email) maxlength="254";
                button type="submit" { "Find" }
            }
            p.muted { (total) " users" }
            @if found.is_empty() { (page::empty("No user matches.")) } @else {
                div.scroll { table #users {
                    thead { tr {
                        th scope="col" { "User" } th scope="col" { "Since" } th.num scope="col" { "Cost so far" }
                        th scope="col" { "Role and status" }
                    } }
                    tbody { @for u in &found { tr {
                        td { (u.email) br; span.muted { (u.name) } @if u.overdue { " " span.badge.issued { "overdue" } } }
                        td data-label="Since" { (signed.when(u.created_at)) }
                        td.num data-label="Cost so far" { (money(u.total_cost, signed.state.config.billing.currency.code())) }
                        td data-label="Role and status" {
                            @if u.id == me {
                                (u.role) ", " (u.status) br; span.muted { "your own account: another admin changes it" }
                            } @else {
                                form.inline method="post" action={"/console/admin/users/" (u.id)} {
                                    (signed.csrf_field())
                                    label.sr-only for={"role-" (u.id)} { "Role of " (u.email) }
                                    select id={"role-" (u.id)} name="role" {
                                        @for r in [Role::Consumer, Role::Finance, Role::Admin] { option value=(r) selected[u.role == r] { (r) } }
                                    }
                                    label.sr-only for={"status-" (u.id)} { "Status of " (u.email) }
                                    select id={"status-" (u.id)} name="status" {
                                        @for st in [UserStatus::Active, UserStatus::Suspended] { option value=(st) selected[u.status == st] { (st) } }
                                    }
                                    button type="submit" { "Save" }
                                }
                            }
                        }
                    } } }
                } }
                (page::pager(&format!("/console/admin/users?email={}", page::query_value(&email)), page_no, USERS_PER_PAGE, total))
            }
        }
    };
    Ok(signed.page("Users", "/console/admin", main))
}

#[derive(Deserialize)]
pub struct UserForm {
    role: Role,
    status: UserStatus,
}

/// `POST /console/admin/users/{id}`: as `PATCH /api/v1/admin/users/{id}`
/// (an admin cannot demote or suspend their own account: 409).
pub async fn update_user(signed: Signed, id: web::Path<String>, form: web::Form<UserForm>) -> PageResult {
    admin_only(&signed)?;
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::not_found("no such user"))?;
    let f = form.into_inner();
    let change = StandingChange {
        role: Some(f.role),
        status: Some(f.status),
    };
    let user = actions::change_user(&signed.state, signed.user.id(), id, change).await?;
    let email = page::query_value(&user.email);
    Ok(page::see_other(&format!(
        "/console/admin/users?email={email}&done=saved"
    )))
}
