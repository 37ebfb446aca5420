//! A consumer's pages: this month, usage over time, invoices, API keys and
//! the catalog. Every query takes the signed-in user's id; another user's
//! invoice is "not found", as in the API.

use actix_web::web;
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use super::invoice::{invoice_document, priced_cells, priced_heads, version_note};
use super::page::{self, PageError, PageResult, Signed, form_failed, money};
use crate::actions;
use crate::billing::statement::Statement;
use crate::domain::Period;
use crate::domain::pricing::{PriceView, round_to_minor_unit};
use crate::domain::text::KeyName;
use crate::error::ApiError;
use crate::models::Api;
use crate::models::api_key::ApiKey;
use crate::models::invoice::{Invoice, InvoiceDetail};
use crate::models::price::PriceBook;

/// The month-end projection and how it was made: the cost so far, scaled
/// by the whole period's length over the part already elapsed (a straight
/// line through this month's pace), rounded like an invoice. Free calls
/// and tiers make the real figure lower or higher; the page says so.
pub fn projected_cost(statement: &Statement, now: DateTime<Utc>, tz: chrono_tz::Tz) -> Option<Decimal> {
    let start = statement.period.starts_at(tz);
    let end = statement.period.ends_at(tz);
    let elapsed = (now.min(end) - start).num_seconds();
    let whole = (end - start).num_seconds();
    if elapsed <= 0 || whole <= 0 {
        return None;
    }
    let projected = statement
        .total
        .checked_mul(Decimal::from(whole))?
        .checked_div(Decimal::from(elapsed))?;
    Some(round_to_minor_unit(projected, statement.currency))
}

fn statement_table(statement: &Statement, signed: &Signed) -> Markup {
    let currency = statement.currency.code();
    let period_start = statement.period.starts_at(signed.zone());
    let when = |at| signed.when(at);
    html! {
        @if statement.lines.is_empty() {
            (page::empty("No calls yet this period."))
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th scope="col" { "API" }
                        (priced_heads())
                    } }
                    tbody {
                        @for line in &statement.lines {
                            tr {
                                td { code { (line.slug) } br; span.muted { (line.name) } (version_note(line.price_effective_from, period_start, &when)) }
                                (priced_cells(&line.priced, currency))
                            }
                        }
                    }
                    tfoot { tr {
                        th scope="row" colspan="7" { "Total" }
                        td.num { (money(statement.total, currency)) }
                    } }
                }
            }
        }
    }
}

/// `GET /console`: this month so far — the lines exactly as
/// `GET /api/v1/billing/current` gives them, and a projection.
pub async fn this_month(signed: Signed) -> PageResult {
    let state = &signed.state;
    let period = state.current_period();
    let currency = state.config.billing.currency;
    let now = state.now();
    let mut conn = signed.conn().await?;
    let statement = Statement::for_user(&mut conn, signed.user.id(), period, currency, now)
        .await
        .map_err(PageError::from)?;
    drop(conn);
    let calls: i64 = statement.lines.iter().map(|l| l.priced.calls).sum();
    let failed: i64 = statement.lines.iter().map(|l| l.priced.failed_calls).sum();
    let projected = projected_cost(&statement, now, signed.zone());
    let code = currency.code();
    let main = html! {
        main {
            h1 { "This month " span.muted { (period) } }
            div.cards {
                div.card { h2 { "Cost so far" } p.big #current-cost { (money(statement.total, code)) } }
                div.card { h2 { "Calls" } p.big #current-calls { (calls) } }
                div.card { h2 { "Failed calls" } p.big #current-failed { (failed) } p.muted { "never billed" } }
                div.card {
                    h2 { "Projected month end" }
                    p.big #projected-cost {
                        @match projected { Some(p) => (money(p, code)), None => "—" }
                    }
                    p.muted { "The cost so far × the month's length ÷ the time elapsed (this month's pace, \
                        kept up). Free calls and tiers can make the invoice lower or higher." }
                }
            }
            p.muted { "As of " (signed.when(statement.as_of)) ". Calls appear within a second or so of being made." }
            h2 { "By API" }
            (statement_table(&statement, &signed))
            p { a href="/console/usage" { "Usage over time →" } }
        }
    };
    Ok(signed.page("This month", "/console", main))
}

/// `GET /console/invoices`.
pub async fn list_invoices(signed: Signed) -> PageResult {
    let mut conn = signed.conn().await?;
    let invoices = Invoice::for_user(&mut conn, signed.user.id())
        .await
        .map_err(PageError::from)?;
    let main = html! {
        main {
            h1 { "Invoices" }
            @if invoices.is_empty() {
                (page::empty("No invoices yet. A month is invoiced after it ends."))
            } @else {
                div.scroll {
                    table #invoices {
                        thead { tr {
                            th scope="col" { "Number" }
                            th scope="col" { "Period" }
                            th scope="col" { "Issued" }
                            th scope="col" { "Due" }
                            th.num scope="col" { "Total" }
                            th scope="col" { "Status" }
                        } }
                        tbody {
                            @for inv in &invoices {
                                tr {
                                    td { a href={"/console/invoices/" (inv.id)} { (inv.number) } }
                                    td data-label="Period" { (Period::from_first_day(inv.period).map(|p| p.to_string()).unwrap_or_default()) }
                                    td data-label="Issued" { (signed.when(inv.issued_at)) }
                                    td data-label="Due" { (signed.when(inv.due_at)) }
                                    td.num data-label="Total" { (money(inv.total, &inv.currency)) }
                                    td data-label="Status" { span class={"badge " (inv.status)} { (inv.status) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(signed.page("Invoices", "/console/invoices", main))
}

async fn own_invoice(signed: &Signed, id: &str) -> Result<InvoiceDetail, PageError> {
    // A malformed id is "not found", as in the API.
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("invoice not found"))?;
    let mut conn = signed.conn().await?;
    let invoice = Invoice::find_for_user(&mut conn, id, signed.user.id())
        .await
        .map_err(PageError::from)?
        .ok_or_else(|| ApiError::not_found("invoice not found"))?;
    InvoiceDetail::load(&mut conn, invoice).await.map_err(PageError::from)
}

/// `GET /console/invoices/{id}`.
pub async fn show_invoice(signed: Signed, id: web::Path<String>) -> PageResult {
    let detail = own_invoice(&signed, &id).await?;
    let zone = signed.zone();
    let when = |at| page::instant(at, zone);
    let main = html! {
        main {
            p.actions {
                a href="/console/invoices" { "← Invoices" }
                a.button href={"/console/invoices/" (detail.invoice.id) "/print"} { "Printable invoice" }
            }
            (invoice_document(&detail, &when, zone))
        }
    };
    Ok(signed.page(&format!("Invoice {}", detail.invoice.number), "/console/invoices", main))
}

/// `GET /console/invoices/{id}/print`: the invoice alone, for the browser's
/// "print to PDF" (the stylesheet's print rules drop the console around it).
pub async fn print_invoice(signed: Signed, id: web::Path<String>) -> PageResult {
    let detail = own_invoice(&signed, &id).await?;
    let zone = signed.zone();
    let when = |at| page::instant(at, zone);
    let main = html! {
        main.print {
            p.actions.no-print {
                a href={"/console/invoices/" (detail.invoice.id)} { "← Back" }
                button type="button" data-print { "Print" }
            }
            (invoice_document(&detail, &when, zone))
        }
    };
    Ok(page::html_response(page::document(
        &format!("Invoice {}", detail.invoice.number),
        None,
        main,
    )))
}

#[derive(Deserialize)]
pub struct KeysQuery {
    revoked: Option<String>,
}

fn keys_markup(
    signed: &Signed,
    keys: &[ApiKey],
    created: Option<&actions::CreatedKey>,
    error: Option<&str>,
    done: Option<&str>,
) -> Markup {
    html! {
        main {
            h1 { "API keys" }
            (page::notice(error, "error"))
            (page::notice(done, "ok"))
            @if let Some(created) = created {
                section.created role="status" {
                    h2 { "Your new key “" (created.row.name) "”" }
                    p { strong { "Copy it now: it is shown this once." } " payg keeps only a keyed hash of it." }
                    div.copy {
                        input #new-key type="text" readonly value=(created.key) aria-label="The new API key";
                        button type="button" data-copy="new-key" { "Copy" }
                    }
                    p.muted { "Call an API with it: " code { "curl -H 'X-API-Key: " (created.key) "' …" } }
                }
            }
            form.inline method="post" action="/console/keys" {
                (signed.csrf_field())
                label for="key-name" { "New key's name" }
                input #key-name type="text" name="name" required maxlength="100" placeholder="e.g. production";
                button type="submit" { "Create key" }
            }
            @if keys.is_empty() {
                (page::empty("No active keys."))
            } @else {
                div.scroll {
                    table #keys {
                        thead { tr {
                            th scope="col" { "Name" }
                            th scope="col" { "Key" }
                            th scope="col" { "Created" }
                            th scope="col" { "Last used" }
                            th scope="col" { span.sr-only { "Actions" } }
                        } }
                        tbody {
                            @for key in keys {
                                tr {
                                    td { (key.name) }
                                    td data-label="Key" { code { (key.prefix) "…" } }
                                    td data-label="Created" { (signed.when(key.created_at)) }
                                    td data-label="Last used" { @match key.last_used_at { Some(at) => (signed.when(at)), None => "never" } }
                                    td {
                                        form method="post" action={"/console/keys/" (key.id) "/revoke"} data-confirm={"Revoke the key “" (key.name) "”? Calls with it will be refused at once."} {
                                            (signed.csrf_field())
                                            button.danger type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn active_keys(signed: &Signed) -> Result<Vec<ApiKey>, PageError> {
    let mut conn = signed.conn().await?;
    ApiKey::active_for_user(&mut conn, signed.user.id())
        .await
        .map_err(PageError::from)
}

/// `GET /console/keys`. Managing keys takes a signed-in session (the
/// console's always is one), as in the API.
pub async fn list_keys(signed: Signed, query: web::Query<KeysQuery>) -> PageResult {
    let keys = active_keys(&signed).await?;
    let done = query.revoked.as_deref().map(|_| "Key revoked.");
    Ok(signed.page(
        "API keys",
        "/console/keys",
        keys_markup(&signed, &keys, None, None, done),
    ))
}

#[derive(Deserialize)]
pub struct NewKeyForm {
    name: String,
}

/// `POST /console/keys`: the new key is in this response only (no
/// redirect: the page that shows it is not kept anywhere, `no-store`).
pub async fn create_key(signed: Signed, form: web::Form<NewKeyForm>) -> PageResult {
    let created = match form.into_inner().name.parse::<KeyName>() {
        Ok(name) => actions::create_key(&signed.state, signed.user.id(), name).await,
        Err(bad) => Err(ApiError::from(bad)),
    };
    let keys = active_keys(&signed).await?;
    Ok(match created {
        Ok(created) => signed.page(
            "API keys",
            "/console/keys",
            keys_markup(&signed, &keys, Some(&created), None, None),
        ),
        Err(err) => form_failed(
            &err,
            signed.document(
                "API keys",
                "/console/keys",
                keys_markup(&signed, &keys, None, Some(err.message()), None),
            ),
        ),
    })
}

/// `POST /console/keys/{id}/revoke`.
pub async fn revoke_key(signed: Signed, id: web::Path<String>) -> PageResult {
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("API key not found"))?;
    actions::revoke_key(&signed.state, signed.user.id(), id).await?;
    Ok(page::see_other("/console/keys?revoked=1"))
}

fn price_text(price: &PriceView) -> Markup {
    let code = price.currency.code();
    html! {
        @if price.tiers.is_empty() {
            (money(price.unit_price, code)) " per call"
        } @else {
            "tiered: "
            @for (i, tier) in price.tiers.iter().enumerate() {
                @if i > 0 { ", " }
                (money(tier.unit_price, code))
                @match tier.up_to { Some(n) => { " up to call " (n) }, None => { " beyond" } }
            }
        }
        @if price.free_calls > 0 { br; span.muted { (price.free_calls) " calls free each month" } }
    }
}

/// `GET /console/apis`: the catalog with the prices in force now (and the
/// next scheduled ones), and how to call each API.
pub async fn list_apis(signed: Signed) -> PageResult {
    let state = &signed.state;
    let mut conn = signed.conn().await?;
    let all = Api::all_with_upstreams(&mut conn).await.map_err(PageError::from)?;
    let active: Vec<_> = all.into_iter().filter(|(a, _)| a.active).collect();
    let ids: Vec<i32> = active.iter().map(|(a, _)| a.id).collect();
    let book = PriceBook::load(&mut conn, Some(&ids)).await.map_err(PageError::from)?;
    drop(conn);
    let now = state.now();
    let base = signed.base_url();
    let main = html! {
        main {
            h1 { "APIs" }
            p { "Call any of these with an API key (" a href="/console/keys" { "API keys" } ") in "
                code { "X-API-Key" } " or " code { "Authorization: Bearer" } ". Every call is counted; failed calls are never billed." }
            @if active.is_empty() { (page::empty("The catalog is empty.")) }
            @for (api, upstream) in &active {
                section.api {
                    h2 { (api.name) " " code.muted { (api.slug) } }
                    @if !api.description.is_empty() { p { (api.description) } }
                    p { "Price: " @match book.in_force_at(api.id, now) {
                        Some(e) => (price_text(&e.view())),
                        None => "free",
                    } }
                    @if let Some(next) = book.next_after(api.id, now) {
                        p.muted { "From " (signed.when(next.effective_from)) ": " (price_text(&next.view())) }
                    }
                    @let path = if upstream.is_some() { format!("{}/…", api.route) } else { api.route.clone() };
                    pre { code { "curl -X " (api.method.replace('*', "GET")) " -H 'X-API-Key: payg_…' '"
                        (base) (path) "'" } }
                    @if upstream.is_some() { p.muted { "A gateway API: payg forwards every path under " code { (api.route) } " to the provider." } }
                }
            }
            p.muted { "A call costs the price in force when it arrives: a price change never changes what calls already made cost. Free calls count the whole month." }
        }
    };
    Ok(signed.page("APIs", "/console/apis", main))
}
