//! Usage alerts and outbound webhook endpoints: a consumer's page for their
//! alerts and the endpoints that receive their own events, and an admin's
//! for the endpoints that receive every user's (as the API's
//! `/billing/alerts`, `/webhooks` and `/admin/webhooks`). One set of pages
//! serves both, told apart by the [`Side`] each handler names; the admin's
//! side asks for the admin role before anything else.
//!
//! A signing secret is shown only on the answer to the form that made it
//! (creation, rotation): never redirected to, never kept (`no-store`).

use actix_web::web;
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use super::page::{self, PageError, PageResult, Signed, money};
use crate::actions;
use crate::billing::alerts::Alerts;
use crate::domain::currency::parse_decimal_string;
use crate::domain::text::Description;
use crate::domain::webhook::EventType;
use crate::error::ApiError;
use crate::webhooks::Owner;
use crate::webhooks::endpoints::{DeliveryPage, DeliveryView, EndpointView, EndpointWithSecret, NewEndpoint};

const PER_PAGE: i64 = 50;

/// Whose endpoints a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The signed-in user's, for their own events (and their alerts).
    Mine,
    /// The admins', for every user's events.
    Admin,
}

impl Side {
    fn base(self) -> &'static str {
        match self {
            Side::Mine => "/console/webhooks",
            Side::Admin => "/console/admin/webhooks",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Side::Mine => "Webhooks",
            Side::Admin => "Admin webhooks",
        }
    }

    /// The owner the actions are asked for: the admin's side is refused
    /// (403, as the API's `/admin/webhooks`) to anyone but an admin.
    fn owner(self, signed: &Signed) -> Result<Owner, PageError> {
        match self {
            Side::Mine => Ok(Owner::User(signed.user.id())),
            Side::Admin => {
                signed.user.0.require_admin().map_err(ApiError::from)?;
                Ok(Owner::Admin {
                    acting: signed.user.id(),
                })
            }
        }
    }
}

/// A malformed id is "not found", as in the API.
fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("webhook endpoint not found"))
}

/// "all", or the event types an endpoint receives.
fn event_types_text(types: &[String]) -> Markup {
    html! {
        @if types.is_empty() { "all" } @else {
            @for (i, t) in types.iter().enumerate() { @if i > 0 { ", " } code { (t) } }
        }
    }
}

fn state_badge(endpoint: &EndpointView, signed: &Signed) -> Markup {
    html! {
        @if endpoint.enabled { span.badge.paid { "enabled" } } @else {
            span.badge.issued { "disabled" }
            @if let Some(at) = endpoint.disabled_at { br; span.muted { "since " (signed.when(at)) } }
        }
    }
}

/// The disable or enable button; `back` says which page it returns to.
fn enabled_form(side: Side, endpoint: &EndpointView, signed: &Signed, back: &str) -> Markup {
    let action = format!("{}/{}/enabled", side.base(), endpoint.id);
    html! {
        form.inline method="post" action=(action) data-confirm=[endpoint.enabled.then_some("Disable this endpoint? Its deliveries wait until it is enabled again.")] {
            (signed.csrf_field())
            input type="hidden" name="back" value=(back);
            @if endpoint.enabled {
                input type="hidden" name="enabled" value="no";
                button.danger type="submit" { "Disable" }
            } @else {
                input type="hidden" name="enabled" value="yes";
                button type="submit" { "Enable" }
            }
        }
    }
}

fn rotate_form(side: Side, endpoint: &EndpointView, signed: &Signed) -> Markup {
    html! {
        form.inline method="post" action={(side.base()) "/" (endpoint.id) "/rotate"}
            data-confirm="Rotate the signing secret? The new one is shown once; the old one keeps signing beside it for 24 hours." {
            (signed.csrf_field())
            button type="submit" { "Rotate secret" }
        }
    }
}

/// The secret of an endpoint just made or rotated, with its one warning.
fn secret_shown(shown: &EndpointWithSecret, signed: &Signed, rotated: bool) -> Markup {
    html! {
        section.created role="status" {
            h2 { @if rotated { "New signing secret" } @else { "Endpoint added" } }
            p { "For " code { (shown.endpoint.url) } }
            p { strong { "Copy it now: it is not shown again." }
                " Verify each delivery's " code { "webhook-signature" } " with it (Standard Webhooks)." }
            div.copy {
                input #webhook-secret type="text" readonly value=(shown.secret) aria-label="The endpoint's signing secret";
                button type="button" data-copy="webhook-secret" { "Copy" }
            }
            @if rotated {
                @if let Some(until) = shown.endpoint.previous_secret_expires_at {
                    p.muted { "The previous secret signs beside it until " (signed.when(until)) "." }
                }
            }
        }
    }
}

/// What the alerts form was sent with (shown again when it is refused).
struct AlertsDraft<'a> {
    thresholds: &'a str,
    credits_low_below: &'a str,
}

fn alerts_section(signed: &Signed, alerts: &Alerts, draft: Option<&AlertsDraft<'_>>, error: Option<&str>) -> Markup {
    let code = alerts.currency.code();
    let thresholds = match draft {
        Some(d) => d.thresholds.to_owned(),
        None => alerts.thresholds.join(", "),
    };
    let below = match draft {
        Some(d) => d.credits_low_below.to_owned(),
        None => alerts.credits_low_below.map(|b| b.to_string()).unwrap_or_default(),
    };
    html! {
        section #alerts {
            h2 { "Usage alerts" }
            (page::notice(error, "error"))
            p.muted { "Your endpoints receive " code { "usage.threshold_reached" } " once a month for each threshold the month's charge reaches, and "
                code { "credits.low" } " when your calls take your prepaid credit below the amount set (once per credit added)." }
            dl.facts {
                dt { "Thresholds" } dd #alert-thresholds {
                    @if alerts.thresholds.is_empty() { span.muted { "none" } } @else {
                        @for (i, t) in alerts.thresholds.iter().enumerate() { @if i > 0 { ", " } span.money { (t) " " (code) } }
                    }
                }
                dt { "Credits low below" } dd #alert-credits-low {
                    @match alerts.credits_low_below { Some(b) => (money(b, code)), None => span.muted { "never" } }
                }
            }
            form.stack method="post" action="/console/webhooks/alerts" {
                (signed.csrf_field())
                label for="thresholds" { "Thresholds (" (code) " a month) " span.muted { "(up to 10, separated by commas or new lines; empty removes them)" } }
                textarea #thresholds name="thresholds" rows="3" placeholder="5.00, 20.00" { (thresholds) }
                label for="credits_low_below" { "Credits low below (" (code) ") " span.muted { "(empty: never)" } }
                input #credits_low_below type="text" name="credits_low_below" inputmode="decimal" placeholder="2.00" value=(below);
                button type="submit" { "Save alerts" }
            }
        }
    }
}

/// What the new-endpoint form was sent with.
#[derive(Default)]
struct EndpointDraft {
    url: String,
    event_types: Vec<String>,
    description: String,
}

impl EndpointDraft {
    /// The form's fields as sent; each ticked box is one `event_types` pair.
    fn from_fields(fields: Vec<(String, String)>) -> Self {
        let mut draft = EndpointDraft::default();
        for (name, value) in fields {
            match name.as_str() {
                "url" => draft.url = value.trim().to_owned(),
                "event_types" => draft.event_types.push(value),
                "description" => draft.description = value,
                _ => {}
            }
        }
        draft
    }

    fn checked(&self, t: EventType) -> bool {
        self.event_types.iter().any(|s| s == t.as_str())
    }

    fn to_new(&self) -> Result<NewEndpoint, ApiError> {
        let event_types = self
            .event_types
            .iter()
            .map(|s| EventType::parse(s).ok_or_else(|| ApiError::validation(format!("{s:?} is not an event type"))))
            .collect::<Result<Vec<_>, _>>()?;
        let description = match self.description.trim() {
            "" => None,
            _ => Some(self.description.parse::<Description>()?),
        };
        Ok(NewEndpoint {
            url: self.url.clone(),
            event_types,
            description,
        })
    }
}

/// Everything the list page may show besides its endpoints.
#[derive(Default)]
struct ListExtras<'a> {
    alerts: Option<&'a Alerts>,
    alerts_draft: Option<&'a AlertsDraft<'a>>,
    alerts_error: Option<&'a str>,
    created: Option<&'a EndpointWithSecret>,
    draft: Option<&'a EndpointDraft>,
    error: Option<&'a str>,
    done: Option<&'a str>,
}

fn list_markup(side: Side, signed: &Signed, endpoints: &[EndpointView], x: &ListExtras<'_>) -> Markup {
    let base = side.base();
    let empty_draft = EndpointDraft::default();
    let draft = x.draft.unwrap_or(&empty_draft);
    html! {
        main {
            @if side == Side::Admin { p { a href="/console/admin" { "← Admin" } } }
            h1 { (side.title()) }
            (page::notice(x.done, "ok"))
            @if let Some(created) = x.created { (secret_shown(created, signed, false)) }
            @if let Some(alerts) = x.alerts { (alerts_section(signed, alerts, x.alerts_draft, x.alerts_error)) }
            section #endpoints {
                h2 { "Endpoints" }
                p.muted {
                    @match side {
                        Side::Mine => "payg POSTs your events to each endpoint, signed with its secret, and retries a failed delivery for about 27 hours.",
                        Side::Admin => "Each admin endpoint receives every user's events, signed with its secret; a failed delivery is retried for about 27 hours.",
                    }
                }
                @if endpoints.is_empty() {
                    (page::empty("No endpoints yet."))
                } @else {
                    div.scroll { table #webhook-endpoints {
                        thead { tr {
                            th scope="col" { "URL" } th scope="col" { "Events" } th scope="col" { "State" }
                            th scope="col" { "Created" } th scope="col" { span.sr-only { "Actions" } }
                        } }
                        tbody { @for e in endpoints { tr {
                            td { a href={(base) "/" (e.id)} { code { (e.url) } }
                                @if !e.description.is_empty() { br; span.muted { (e.description) } } }
                            td data-label="Events" { (event_types_text(&e.event_types)) }
                            td data-label="State" { (state_badge(e, signed)) }
                            td data-label="Created" { (signed.when(e.created_at)) }
                            td {
                                div.actions {
                                    a href={(base) "/" (e.id)} { "Delivery log" }
                                    (enabled_form(side, e, signed, "list"))
                                    (rotate_form(side, e, signed))
                                }
                            }
                        } } }
                    } }
                }
                h3 { "Add an endpoint" }
                (page::notice(x.error, "error"))
                form.stack method="post" action=(base) {
                    (signed.csrf_field())
                    label for="webhook-url" { "URL " span.muted { "(http or https)" } }
                    input #webhook-url type="url" name="url" required maxlength="2000" placeholder="https://hooks.example.com/payg" value=(draft.url);
                    fieldset.checks {
                        legend { "Event types " span.muted { "(none ticked: every type, including those added later)" } }
                        @for t in EventType::ALL {
                            label.check { input type="checkbox" name="event_types" value=(t.as_str()) checked[draft.checked(t)]; code { (t.as_str()) } }
                        }
                    }
                    label for="webhook-description" { "Description " span.muted { "(optional)" } }
                    input #webhook-description type="text" name="description" maxlength="2000" value=(draft.description);
                    button type="submit" { "Add endpoint" }
                }
            }
        }
    }
}

/// The list page's data and the page itself, `x` saying what else it shows.
async fn list_page(side: Side, signed: &Signed, owner: Owner, x: ListExtras<'_>) -> Result<Markup, PageError> {
    let endpoints = actions::webhooks(&signed.state, owner).await?;
    let alerts = match side {
        Side::Mine => Some(actions::alerts(&signed.state, signed.user.id()).await?),
        Side::Admin => None,
    };
    let x = ListExtras {
        alerts: alerts.as_ref(),
        ..x
    };
    Ok(signed.document(side.title(), side.base(), list_markup(side, signed, &endpoints, &x)))
}

#[derive(Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

fn list_done(done: Option<&str>) -> Option<&'static str> {
    match done {
        Some("alerts") => Some("Your alerts are saved."),
        Some("disabled") => Some("Endpoint disabled: its deliveries wait until it is enabled again."),
        Some("enabled") => Some("Endpoint enabled: its waiting deliveries resume."),
        _ => None,
    }
}

async fn list(side: Side, signed: Signed, query: DoneQuery) -> PageResult {
    let owner = side.owner(&signed)?;
    let x = ListExtras {
        done: list_done(query.done.as_deref()),
        ..ListExtras::default()
    };
    Ok(page::html_response(list_page(side, &signed, owner, x).await?))
}

/// `GET /console/webhooks`: the caller's alerts and endpoints.
pub async fn my_webhooks(signed: Signed, query: web::Query<DoneQuery>) -> PageResult {
    list(Side::Mine, signed, query.into_inner()).await
}

/// `GET /console/admin/webhooks`: the admin endpoints.
pub async fn admin_webhooks(signed: Signed, query: web::Query<DoneQuery>) -> PageResult {
    list(Side::Admin, signed, query.into_inner()).await
}

#[derive(Deserialize)]
pub struct AlertsForm {
    #[serde(default)]
    thresholds: String,
    #[serde(default)]
    credits_low_below: String,
}

/// The thresholds as typed: amounts separated by commas or new lines,
/// each exactly a decimal (never through a float); none removes them.
fn thresholds_field(raw: &str) -> Result<Vec<Decimal>, ApiError> {
    raw.split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_decimal_string(s).map_err(ApiError::validation))
        .collect()
}

fn credits_low_field(raw: &str) -> Result<Option<Decimal>, ApiError> {
    match raw.trim() {
        "" => Ok(None),
        amount => parse_decimal_string(amount).map(Some).map_err(ApiError::validation),
    }
}

/// `POST /console/webhooks/alerts`: replaces the caller's alerts (as `PUT
/// /billing/alerts`); a refusal shows the page again with the form as
/// sent, under the API's status.
pub async fn set_my_alerts(signed: Signed, form: web::Form<AlertsForm>) -> PageResult {
    let owner = Side::Mine.owner(&signed)?;
    let set = match (
        thresholds_field(&form.thresholds),
        credits_low_field(&form.credits_low_below),
    ) {
        (Ok(thresholds), Ok(below)) => actions::set_alerts(&signed.state, signed.user.id(), &thresholds, below)
            .await
            .map(|_| ()),
        (Err(err), _) | (_, Err(err)) => Err(err),
    };
    match set {
        Ok(()) => Ok(page::see_other("/console/webhooks?done=alerts")),
        Err(err) => {
            let draft = AlertsDraft {
                thresholds: &form.thresholds,
                credits_low_below: &form.credits_low_below,
            };
            let x = ListExtras {
                alerts_draft: Some(&draft),
                alerts_error: Some(err.message()),
                ..ListExtras::default()
            };
            Ok(page::form_failed(&err, list_page(Side::Mine, &signed, owner, x).await?))
        }
    }
}

/// Registers an endpoint; the answer is the list with the secret shown
/// once (no redirect), or the form again with its error.
async fn create(side: Side, signed: Signed, form: Vec<(String, String)>) -> PageResult {
    let owner = side.owner(&signed)?;
    let draft = EndpointDraft::from_fields(form);
    let created = match draft.to_new() {
        Ok(new) => actions::create_webhook(&signed.state, owner, new).await,
        Err(err) => Err(err),
    };
    match created {
        Ok(created) => {
            let x = ListExtras {
                created: Some(&created),
                ..ListExtras::default()
            };
            Ok(page::html_response(list_page(side, &signed, owner, x).await?))
        }
        Err(err) => {
            let x = ListExtras {
                draft: Some(&draft),
                error: Some(err.message()),
                ..ListExtras::default()
            };
            Ok(page::form_failed(&err, list_page(side, &signed, owner, x).await?))
        }
    }
}

/// `POST /console/webhooks`.
pub async fn create_my_webhook(signed: Signed, form: web::Form<Vec<(String, String)>>) -> PageResult {
    create(Side::Mine, signed, form.into_inner()).await
}

/// `POST /console/admin/webhooks`.
pub async fn create_admin_webhook(signed: Signed, form: web::Form<Vec<(String, String)>>) -> PageResult {
    create(Side::Admin, signed, form.into_inner()).await
}

fn delivery_badge(state: &str) -> Markup {
    let class = match state {
        "delivered" => "badge paid",
        "pending" => "badge issued",
        "failed" => "badge failed",
        _ => "badge",
    };
    html! { span class=(class) { (state) } }
}

/// The last attempt's answer: its HTTP status, or why none came.
fn last_attempt(delivery: &DeliveryView, signed: &Signed) -> Markup {
    html! {
        @match delivery.attempt_log.last() {
            None => span.muted { "not tried yet" },
            Some(a) => {
                @if let Some(status) = a.status { "HTTP " (status) }
                @if let Some(error) = &a.error { @if a.status.is_some() { br; } span.muted { (error) } }
                br; span.muted { (signed.when(a.attempted_at)) " · " (a.duration_ms) " ms" }
            }
        }
    }
}

fn deliveries_table(side: Side, endpoint: &EndpointView, log: &DeliveryPage, signed: &Signed) -> Markup {
    let base = format!("{}/{}", side.base(), endpoint.id);
    html! {
        @if log.items.is_empty() {
            (page::empty("No deliveries yet. The events this endpoint receives appear here as they are sent."))
        } @else {
            div.scroll { table #webhook-deliveries {
                thead { tr {
                    th scope="col" { "Event" } th scope="col" { "State" } th.num scope="col" { "Attempts" }
                    th scope="col" { "Last attempt" } th scope="col" { "Created" } th scope="col" { span.sr-only { "Actions" } }
                } }
                tbody { @for d in &log.items { tr {
                    td { code { (d.event_type) } br; span.muted { "id " code { (d.event_id) } } }
                    td data-label="State" {
                        (delivery_badge(&d.state))
                        @if let Some(next) = d.next_attempt_at { br; span.muted { "next " (signed.when(next)) } }
                        @if let Some(at) = d.delivered_at { br; span.muted { (signed.when(at)) } }
                    }
                    td.num data-label="Attempts" { (d.attempts) }
                    td data-label="Last attempt" { (last_attempt(d, signed)) }
                    td data-label="Created" { (signed.when(d.created_at)) }
                    td {
                        form.inline method="post" action={(base) "/deliveries/" (d.id) "/redeliver"} {
                            (signed.csrf_field())
                            button type="submit" { "Redeliver" }
                        }
                    }
                } } }
            } }
            (page::pager(&format!("{base}?"), log.page, log.per_page, log.total))
        }
    }
}

#[derive(Deserialize)]
pub struct LogQuery {
    page: Option<i64>,
    done: Option<String>,
}

/// One endpoint and its delivery log, newest first.
async fn show(side: Side, signed: Signed, id: &str, query: LogQuery) -> PageResult {
    let owner = side.owner(&signed)?;
    let id = endpoint_id(id)?;
    let page_no = page::page_number(query.page)?;
    let endpoint = actions::webhook(&signed.state, owner, id).await?;
    let log = actions::webhook_deliveries(&signed.state, owner, id, page_no, PER_PAGE).await?;
    let done = match query.done.as_deref() {
        Some("redelivered") => Some("Queued to be sent again now, with the same event id."),
        other => list_done(other),
    };
    let main = html! {
        main {
            p { a href=(side.base()) { "← " (side.title()) } }
            h1 { "Endpoint" }
            (page::notice(done, "ok"))
            dl.facts #webhook-endpoint {
                dt { "URL" } dd { code { (endpoint.url) } }
                dt { "Events" } dd { (event_types_text(&endpoint.event_types)) }
                dt { "State" } dd #endpoint-state { (state_badge(&endpoint, &signed)) }
                dt { "Created" } dd { (signed.when(endpoint.created_at)) }
                @if !endpoint.description.is_empty() { dt { "Description" } dd { (endpoint.description) } }
                @if let Some(until) = endpoint.previous_secret_expires_at {
                    dt { "Previous secret" } dd { "signs beside the current one until " (signed.when(until)) }
                }
            }
            div.actions {
                (enabled_form(side, &endpoint, &signed, "endpoint"))
                (rotate_form(side, &endpoint, &signed))
            }
            h2 { "Deliveries" }
            p.muted { (log.total) @if log.total == 1 { " delivery. " } @else { " deliveries. " } "Redelivering sends one again now, with the same "
                code { "webhook-id" } ", so the receiver can tell it has seen it." }
            (deliveries_table(side, &endpoint, &log, &signed))
        }
    };
    Ok(signed.page(side.title(), side.base(), main))
}

/// `GET /console/webhooks/{id}?page=`.
pub async fn show_my_webhook(signed: Signed, id: web::Path<String>, query: web::Query<LogQuery>) -> PageResult {
    show(Side::Mine, signed, &id, query.into_inner()).await
}

/// `GET /console/admin/webhooks/{id}?page=`.
pub async fn show_admin_webhook(signed: Signed, id: web::Path<String>, query: web::Query<LogQuery>) -> PageResult {
    show(Side::Admin, signed, &id, query.into_inner()).await
}

#[derive(Deserialize)]
pub struct EnabledForm {
    /// `yes` enables, `no` disables.
    enabled: String,
    /// `endpoint`: back to the endpoint's page; otherwise to the list.
    back: Option<String>,
}

async fn set_enabled(side: Side, signed: Signed, id: &str, form: EnabledForm) -> PageResult {
    let owner = side.owner(&signed)?;
    let id = endpoint_id(id)?;
    let enabled = match form.enabled.as_str() {
        "yes" => true,
        "no" => false,
        _ => return Err(ApiError::validation("enabled must be yes or no").into()),
    };
    actions::set_webhook_enabled(&signed.state, owner, id, enabled).await?;
    let done = if enabled { "enabled" } else { "disabled" };
    let to = match form.back.as_deref() {
        Some("endpoint") => format!("{}/{id}?done={done}", side.base()),
        _ => format!("{}?done={done}", side.base()),
    };
    Ok(page::see_other(&to))
}

/// `POST /console/webhooks/{id}/enabled`.
pub async fn set_my_webhook_enabled(signed: Signed, id: web::Path<String>, form: web::Form<EnabledForm>) -> PageResult {
    set_enabled(Side::Mine, signed, &id, form.into_inner()).await
}

/// `POST /console/admin/webhooks/{id}/enabled`.
pub async fn set_admin_webhook_enabled(
    signed: Signed,
    id: web::Path<String>,
    form: web::Form<EnabledForm>,
) -> PageResult {
    set_enabled(Side::Admin, signed, &id, form.into_inner()).await
}

/// A new secret, shown once on this answer; the previous one signs beside
/// it for the grace.
async fn rotate(side: Side, signed: Signed, id: &str) -> PageResult {
    let owner = side.owner(&signed)?;
    let id = endpoint_id(id)?;
    let rotated = actions::rotate_webhook_secret(&signed.state, owner, id).await?;
    let main = html! {
        main {
            h1 { "New signing secret" }
            (secret_shown(&rotated, &signed, true))
            p { a href={(side.base()) "/" (id)} { "← The endpoint" } }
        }
    };
    Ok(signed.page("Signing secret", side.base(), main))
}

/// `POST /console/webhooks/{id}/rotate`.
pub async fn rotate_my_webhook(signed: Signed, id: web::Path<String>) -> PageResult {
    rotate(Side::Mine, signed, &id).await
}

/// `POST /console/admin/webhooks/{id}/rotate`.
pub async fn rotate_admin_webhook(signed: Signed, id: web::Path<String>) -> PageResult {
    rotate(Side::Admin, signed, &id).await
}

async fn redeliver(side: Side, signed: Signed, ids: (String, String)) -> PageResult {
    let owner = side.owner(&signed)?;
    let id = endpoint_id(&ids.0)?;
    let delivery: Uuid = ids.1.parse().map_err(|_| ApiError::not_found("delivery not found"))?;
    actions::redeliver_webhook(&signed.state, owner, id, delivery).await?;
    Ok(page::see_other(&format!("{}/{id}?done=redelivered", side.base())))
}

/// `POST /console/webhooks/{id}/deliveries/{delivery_id}/redeliver`.
pub async fn redeliver_mine(signed: Signed, ids: web::Path<(String, String)>) -> PageResult {
    redeliver(Side::Mine, signed, ids.into_inner()).await
}

/// `POST /console/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver`.
pub async fn redeliver_admin(signed: Signed, ids: web::Path<(String, String)>) -> PageResult {
    redeliver(Side::Admin, signed, ids.into_inner()).await
}
