//! Finance pages (finance or admin role, as in the API): periods and their
//! reconciliation, closing a past month, invoice search and detail,
//! recording a payment, voiding, and the export download.

use actix_web::web;
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use super::invoice::{invoice_document, version_note};
use super::page::{self, PageError, PageResult, Signed, money};
use crate::actions;
use crate::billing::close;
use crate::billing::export::ExportFormat;
use crate::billing::payments::{PaymentInput, PaymentSource};
use crate::domain::Period;
use crate::domain::currency::parse_decimal_string;
use crate::domain::text::{PaymentMethod, Reference, UserRef};
use crate::error::ApiError;
use crate::models::Invoice;
use crate::models::invoice::{ClosedPeriod, InvoiceDetail, InvoiceFilter, InvoiceStatus};

/// Periods the periods page lists (the current one and those before it).
const PERIODS: u32 = 13;
const PER_PAGE: i64 = 50;

fn finance_only(signed: &Signed) -> Result<(), PageError> {
    signed.user.0.require_finance().map_err(ApiError::from)?;
    Ok(())
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /console/finance`: the last periods, closed or not.
pub async fn list_periods(signed: Signed, query: web::Query<Done>) -> PageResult {
    finance_only(&signed)?;
    let current = signed.state.current_period();
    let mut rows = Vec::new();
    let mut conn = signed.conn().await?;
    let mut period = current;
    for _ in 0..PERIODS {
        let closed = ClosedPeriod::find(&mut conn, period).await.map_err(PageError::from)?;
        rows.push((period, closed));
        period = period.previous();
    }
    drop(conn);
    // Only a period is echoed: a link cannot make the page say anything else.
    let done = query
        .done
        .as_deref()
        .and_then(|p| p.parse::<Period>().ok())
        .map(|p| format!("{p} is closed."));
    let main = html! {
        main {
            h1 { "Finance" }
            (page::notice(done.as_deref(), "ok"))
            p { a href="/console/finance/invoices" { "Search invoices →" } " · " a href="/console/finance/credit" { "Prepaid credit →" } }
            h2 { "Periods" }
            div.scroll { table #periods {
                thead { tr {
                    th scope="col" { "Period" } th scope="col" { "State" } th.num scope="col" { "Invoices" } th scope="col" { "Export" }
                } }
                tbody {
                    @for (p, closed) in &rows {
                        tr {
                            td { a href={"/console/finance/periods/" (p)} { (p) } }
                            td data-label="State" {
                                @match closed {
                                    Some(c) => { span.badge.paid { "closed" } " " span.muted { (signed.when(c.closed_at)) } },
                                    None if *p == current => span.badge { "open (this month)" },
                                    None => span.badge.issued { "not closed" },
                                }
                            }
                            td.num data-label="Invoices" { @if let Some(c) = closed { (c.invoices_issued) } @else { "—" } }
                            td data-label="Export" {
                                @if closed.is_some() {
                                    a href={"/console/finance/export?period=" (p) "&format=csv"} download { "CSV" } " · "
                                    a href={"/console/finance/export?period=" (p) "&format=json"} download { "JSON" }
                                }
                            }
                        }
                    }
                }
            } }
        }
    };
    Ok(signed.page("Finance", "/console/finance", main))
}

/// `GET /console/finance/periods/{period}`: its reconciliation, and the
/// close form for a past month not closed yet.
pub async fn show_period(signed: Signed, period: web::Path<String>) -> PageResult {
    finance_only(&signed)?;
    let period: Period = period.parse().map_err(PageError::from)?;
    let state = &signed.state;
    let mut conn = signed.conn().await?;
    let report = close::reconcile(&mut conn, period, state.config.billing.currency, state.now())
        .await
        .map_err(PageError::from)?;
    drop(conn);
    let ended = period < state.current_period();
    let code = report.currency.code();
    let period_start = period.starts_at(signed.zone());
    let when = |at| signed.when(at);
    let main = html! {
        main {
            p { a href="/console/finance" { "← Periods" } }
            h1 { "Period " (period) }
            dl.facts #reconciliation {
                dt { "State" } dd { @if report.closed { "closed" } @else if ended { "ended, not closed" } @else { "open" } }
                @if let Some(at) = report.closed_at { dt { "Closed" } dd { (signed.when(at)) } }
                dt { "Invoices" } dd { (report.invoices) }
                dt { "Invoiced" } dd #invoiced-total { (money(report.invoiced_total, code)) }
                dt { "Recorded usage, priced now" } dd { (money(report.recorded_total, code)) }
                dt { "Not billed (arrived after the close)" } dd { (money(report.unbilled_total, code)) }
            }
            @if !report.discrepancies.is_empty() {
                h2 { "Discrepancies" }
                p.muted { "Usage recorded (priced now) that differs from what was invoiced: calls that arrived after the close, or a user without an invoice." }
                div.scroll { table #discrepancies {
                    thead { tr {
                        th scope="col" { "User" } th scope="col" { "Invoice" } th scope="col" { "API" }
                        th.num scope="col" { "Calls recorded" } th.num scope="col" { "Calls invoiced" }
                        th.num scope="col" { "Recorded" } th.num scope="col" { "Invoiced" }
                    } }
                    tbody { @for d in &report.discrepancies { tr {
                        td { (d.email) }
                        td data-label="Invoice" { (d.invoice_number.as_deref().unwrap_or("none")) }
                        td data-label="API" { code { (d.slug) } (version_note(d.price_effective_from, period_start, &when)) }
                        td.num data-label="Calls recorded" { (d.recorded.calls) }
                        td.num data-label="Calls invoiced" { (d.invoiced.as_ref().map_or(0, |l| l.calls)) }
                        td.num data-label="Recorded" { (money(d.recorded.amount, code)) }
                        td.num data-label="Invoiced" { (money(d.invoiced.as_ref().map_or(Decimal::ZERO, |l| l.amount), code)) }
                    } } }
                } }
            }
            @if ended && !report.closed {
                section.danger-zone {
                    h2 { "Close " (period) }
                    p { "Closing issues one invoice per user with usage in " (period) ", numbered without gaps. Issued invoices never change." }
                    form.stack method="post" action={"/console/finance/periods/" (period) "/close"} data-confirm={"Close " (period) " and issue its invoices? This cannot be undone."} {
                        (signed.csrf_field())
                        label.check { input type="checkbox" name="confirm" value="yes" required; " I understand: close " (period) " and issue its invoices." }
                        button.danger type="submit" { "Close " (period) }
                    }
                }
            }
            @if report.closed {
                p { a href={"/console/finance/invoices?period=" (period)} { "This period's invoices →" } }
            }
        }
    };
    Ok(signed.page(&format!("Period {period}"), "/console/finance", main))
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    confirm: Option<String>,
}

/// `POST /console/finance/periods/{period}/close`: needs the confirmation box.
pub async fn close_period(signed: Signed, period: web::Path<String>, form: web::Form<ConfirmForm>) -> PageResult {
    finance_only(&signed)?;
    let period: Period = period.parse().map_err(PageError::from)?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(ApiError::validation("tick the confirmation box to close a period").into());
    }
    let outcome = signed.state.close_period(period).await.map_err(PageError::from)?;
    tracing::info!(period = %period, issued = outcome.invoices_issued, "period closed from the console");
    Ok(page::see_other(&format!("/console/finance?done={period}")))
}

#[derive(Deserialize)]
pub struct SearchQuery {
    period: Option<String>,
    status: Option<String>,
    user: Option<String>,
    page: Option<i64>,
}

/// `GET /console/finance/invoices`: search by period, status, user.
pub async fn list_invoices(signed: Signed, query: web::Query<SearchQuery>) -> PageResult {
    finance_only(&signed)?;
    let q = query.into_inner();
    let blank = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let period = blank(&q.period)
        .map(|p| p.parse::<Period>())
        .transpose()
        .map_err(PageError::from)?;
    let status = blank(&q.status)
        .map(|s| {
            s.parse::<InvoiceStatus>()
                .map_err(|_| ApiError::validation("unknown status"))
        })
        .transpose()?;
    let user = blank(&q.user)
        .map(|u| u.parse::<UserRef>())
        .transpose()
        .map_err(PageError::from)?;
    let page_no = page::page_number(q.page)?;
    let mut filter = InvoiceFilter {
        period: period.map(Period::first_day),
        status,
        ..InvoiceFilter::default()
    };
    match user {
        Some(UserRef::Id(id)) => filter.user_id = Some(id),
        Some(UserRef::Email(email)) => filter.user_email = Some(email.into_inner()),
        None => {}
    }
    let mut conn = signed.conn().await?;
    let (found, total) = Invoice::search(&mut conn, &filter, page_no, PER_PAGE)
        .await
        .map_err(PageError::from)?;
    drop(conn);
    let keep = format!(
        "period={}&status={}&user={}",
        page::query_value(q.period.as_deref().unwrap_or("")),
        page::query_value(q.status.as_deref().unwrap_or("")),
        page::query_value(q.user.as_deref().unwrap_or(""))
    );
    let main = html! {
        main {
            p { a href="/console/finance" { "← Finance" } }
            h1 { "Invoices" }
            form.inline method="get" action="/console/finance/invoices" {
                label for="period" { "Period" }
                input #period type="text" name="period" placeholder="YYYY-MM" pattern="[0-9]{4}-[0-9]{2}" value=(q.period.as_deref().unwrap_or(""));
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "any" }
                    @for s in ["issued", "paid", "void"] { option value=(s) selected[q.status.as_deref() == Some(s)] { (s) } }
                }
                label for="user" { "User (email or id)" }
                input #user type="text" name="user" value=(q.user.as_deref().unwrap_or(""));
                button type="submit" { "Search" }
            }
            p.muted { (total) " invoices" }
            @if found.is_empty() { (page::empty("No invoices match.")) } @else {
                div.scroll { table #finance-invoices {
                    thead { tr {
                        th scope="col" { "Number" } th scope="col" { "Period" } th scope="col" { "Billed to" }
                        th.num scope="col" { "Total" } th.num scope="col" { "Paid" } th.num scope="col" { "Due" } th scope="col" { "Status" }
                    } }
                    tbody { @for inv in &found { tr {
                        td { a href={"/console/finance/invoices/" (inv.id)} { (inv.number) } }
                        td data-label="Period" { (Period::from_first_day(inv.period).map(|p| p.to_string()).unwrap_or_default()) }
                        td data-label="Billed to" { (inv.billing_email) }
                        td.num data-label="Total" { (money(inv.total, &inv.currency)) }
                        td.num data-label="Paid" { (money(inv.amount_paid, &inv.currency)) }
                        td.num data-label="Due" { (money(inv.amount_due, &inv.currency)) }
                        td data-label="Status" { span class={"badge " (inv.status)} { (inv.status) } }
                    } } }
                } }
                (page::pager(&format!("/console/finance/invoices?{keep}"), page_no, PER_PAGE, total))
            }
        }
    };
    Ok(signed.page("Invoices", "/console/finance", main))
}

fn invoice_actions(signed: &Signed, detail: &InvoiceDetail) -> Markup {
    let inv = &detail.invoice;
    let due = inv.amount_due;
    // Paid by prepaid credit alone: voidable (its credit comes back).
    let voidable =
        inv.status == InvoiceStatus::Issued || (inv.status == InvoiceStatus::Paid && inv.amount_paid.is_zero());
    html! {
        @if inv.status == InvoiceStatus::Issued {
            section {
                h2 { "Record a payment" }
                form.stack method="post" action={"/console/finance/invoices/" (inv.id) "/payments"} {
                    (signed.csrf_field())
                    label for="amount" { "Amount (" (inv.currency) ")" }
                    input #amount type="text" name="amount" inputmode="decimal" required value=(due.max(Decimal::ZERO));
                    label for="reference" { "Reference " span.muted { "(recording the same reference again changes nothing)" } }
                    input #reference type="text" name="reference" required maxlength="200";
                    label for="method" { "Method" }
                    input #method type="text" name="method" required value="bank_transfer" maxlength="50";
                    button type="submit" { "Record payment" }
                }
            }
        }
        @if voidable {
            section.danger-zone {
                h2 { "Void" }
                form method="post" action={"/console/finance/invoices/" (inv.id) "/void"} data-confirm={"Void invoice " (inv.number) "? It stays numbered but is owed no more; prepaid credit it applied goes back to the balance."} {
                    (signed.csrf_field())
                    label.check { input type="checkbox" name="confirm" value="yes" required; " I understand: void " (inv.number) "." }
                    button.danger type="submit" { "Void invoice" }
                }
            }
        }
    }
}

/// `GET /console/finance/invoices/{id}`: any user's invoice.
pub async fn show_invoice(signed: Signed, id: web::Path<String>, query: web::Query<Done>) -> PageResult {
    finance_only(&signed)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("invoice not found"))?;
    let mut conn = signed.conn().await?;
    let invoice = Invoice::find(&mut conn, id)
        .await
        .map_err(PageError::from)?
        .ok_or_else(|| ApiError::not_found("invoice not found"))?;
    let detail = InvoiceDetail::load(&mut conn, invoice).await.map_err(PageError::from)?;
    drop(conn);
    let zone = signed.zone();
    let when = |at| page::instant(at, zone);
    let done = query.done.as_deref().and_then(|d| match d {
        "void" => Some("Invoice voided."),
        "duplicate" => Some("That payment was already recorded; nothing changed."),
        "payment" => Some("Payment recorded."),
        _ => None,
    });
    let main = html! {
        main {
            p { a href="/console/finance/invoices" { "← Invoices" } }
            (page::notice(done, "ok"))
            (invoice_document(&detail, &when, zone))
            (invoice_actions(&signed, &detail))
        }
    };
    Ok(signed.page(&format!("Invoice {}", detail.invoice.number), "/console/finance", main))
}

#[derive(Deserialize)]
pub struct PaymentForm {
    amount: String,
    reference: Reference,
    method: PaymentMethod,
}

/// `POST /console/finance/invoices/{id}/payments`.
pub async fn record_payment(signed: Signed, id: web::Path<String>, form: web::Form<PaymentForm>) -> PageResult {
    finance_only(&signed)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("invoice not found"))?;
    let f = form.into_inner();
    let amount = parse_decimal_string(f.amount.trim()).map_err(ApiError::validation)?;
    let input = PaymentInput {
        amount,
        currency: None,
        reference: f.reference.into_inner(),
        method: f.method.into_inner(),
        source: PaymentSource::Finance,
        recorded_by: Some(signed.user.id()),
    };
    let recorded = actions::record_payment(&signed.state, id, input).await?;
    let done = if recorded.is_new() { "payment" } else { "duplicate" };
    Ok(page::see_other(&format!("/console/finance/invoices/{id}?done={done}")))
}

/// `POST /console/finance/invoices/{id}/void`: needs the confirmation box.
pub async fn void_invoice(signed: Signed, id: web::Path<String>, form: web::Form<ConfirmForm>) -> PageResult {
    finance_only(&signed)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("invoice not found"))?;
    if form.confirm.as_deref() != Some("yes") {
        return Err(ApiError::validation("tick the confirmation box to void an invoice").into());
    }
    actions::void_invoice(&signed.state, id).await?;
    Ok(page::see_other(&format!("/console/finance/invoices/{id}?done=void")))
}

#[derive(Deserialize)]
pub struct ExportQuery {
    period: String,
    format: Option<String>,
}

/// `GET /console/finance/export?period=YYYY-MM&format=csv|json`: the same
/// streamed export as `GET /api/v1/finance/invoices/export`, as a download.
pub async fn export_invoices(signed: Signed, query: web::Query<ExportQuery>) -> PageResult {
    finance_only(&signed)?;
    let period: Period = query.period.parse().map_err(PageError::from)?;
    let format = match query.format.as_deref() {
        None | Some("csv") => ExportFormat::Csv,
        Some("json") => ExportFormat::Json,
        Some(_) => return Err(ApiError::validation("format must be csv or json").into()),
    };
    Ok(actions::export_download(&signed.state, period, format).await?)
}
