//! The invoice as a document, shared by the consumer's and finance's
//! invoice pages and the printable page.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use maud::{Markup, html};

use super::page::money;
use crate::domain::Period;
use crate::domain::pricing::PricedLine;
use crate::models::invoice::{InvoiceDetail, InvoiceStatus};

/// Under a line's API: when its price version started, if that was during
/// the period (a month priced by two versions has a line for each), or that
/// no price was in force.
pub fn version_note(
    from: Option<DateTime<Utc>>,
    period_start: DateTime<Utc>,
    when: &dyn Fn(DateTime<Utc>) -> String,
) -> Markup {
    html! {
        @match from {
            None => { br; span.muted { "no price in force (free)" } }
            Some(at) if at > period_start => { br; span.muted { "price from " (when(at)) } }
            Some(_) => {}
        }
    }
}

/// The invoice as a document: number, dates, the billing snapshot, lines,
/// total, status, payments. The screen page and the printable page share it.
pub fn invoice_document(detail: &InvoiceDetail, when: &dyn Fn(DateTime<Utc>) -> String, zone: Tz) -> Markup {
    let inv = &detail.invoice;
    let currency = inv.currency.as_str();
    let billed = Period::from_first_day(inv.period);
    let period = billed.map(|p| p.to_string()).unwrap_or_default();
    let period_start = billed.map_or(DateTime::UNIX_EPOCH, |p| p.starts_at(zone));
    let zone = zone.name();
    html! {
        article.invoice {
            header.invoice-head {
                div {
                    h1 { "Invoice " span #invoice-number { (inv.number) } }
                    p { "Status: " span class={"badge " (inv.status)} #invoice-status { (inv.status) } }
                }
                dl.facts {
                    dt { "Period" } dd { (period) " (" (zone) ")" }
                    dt { "Issued" } dd { (when(inv.issued_at)) }
                    dt { "Due" } dd { (when(inv.due_at)) }
                    @if let Some(paid) = inv.paid_at { dt { "Paid" } dd { (when(paid)) } }
                    @if let Some(voided) = inv.voided_at { dt { "Voided" } dd { (when(voided)) } }
                }
            }
            section.billed-to {
                h2 { "Billed to" }
                address {
                    (inv.billing_name) br;
                    @if let Some(c) = &inv.billing_company { (c) br; }
                    @if let Some(a) = &inv.billing_address_line1 { (a) br; }
                    @if let Some(a) = &inv.billing_address_line2 { (a) br; }
                    @if inv.billing_postal_code.is_some() || inv.billing_city.is_some() {
                        (inv.billing_postal_code.as_deref().unwrap_or("")) " " (inv.billing_city.as_deref().unwrap_or("")) br;
                    }
                    @if let Some(c) = &inv.billing_country { (c) br; }
                    (inv.billing_email)
                    @if let Some(t) = &inv.billing_tax_id { br; "Tax id: " (t) }
                }
            }
            div.scroll {
                table.lines {
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { "API" }
                        (priced_heads())
                    } }
                    tbody {
                        @for line in &detail.lines {
                            tr {
                                td data-label="Line" { (line.position + 1) }
                                td { (line.api_name) br; code { (line.api_slug) } (version_note(line.price_effective_from, period_start, when)) }
                                (priced_cells(&line.priced, currency))
                            }
                        }
                    }
                    tfoot {
                        tr { th scope="row" colspan="8" { "Subtotal" } td.num { (money(inv.subtotal, currency)) } }
                        tr.total { th scope="row" colspan="8" { "Total" } td.num #invoice-total { (money(inv.total, currency)) } }
                        @if !inv.credit_applied.is_zero() {
                            tr { th scope="row" colspan="8" { "Prepaid credit applied" } td.num #invoice-credit { (money(inv.credit_applied, currency)) } }
                        }
                        tr { th scope="row" colspan="8" { "Paid" } td.num { (money(inv.amount_paid, currency)) } }
                        @if inv.status != InvoiceStatus::Void {
                            tr.total { th scope="row" colspan="8" { "Amount due" } td.num #invoice-due { (money(inv.amount_due, currency)) } }
                        }
                    }
                }
            }
            @if !detail.payments.is_empty() {
                section {
                    h2 { "Payments" }
                    ul {
                        @for p in &detail.payments {
                            li { (when(p.received_at)) ": " (money(p.amount, &p.currency)) " — " (p.method) ", reference " code { (p.reference) } }
                        }
                    }
                }
            }
        }
    }
}

/// The column heads of a priced line: every field the API gives, in its order.
pub fn priced_heads() -> Markup {
    html! {
        th.num scope="col" { "Calls" }
        th.num scope="col" { "Failed" }
        th.num scope="col" { "Billable" }
        th.num scope="col" { "Free" }
        th.num scope="col" { "Charged" }
        th.num scope="col" { "Unit price" }
        th.num scope="col" { "Amount" }
    }
}

/// A priced line's cells, exactly as the API gives them (this month's
/// statement and an invoice alike).
pub fn priced_cells(line: &PricedLine, currency: &str) -> Markup {
    html! {
        td.num data-label="Calls" { (line.calls) }
        td.num data-label="Failed" { (line.failed_calls) }
        td.num data-label="Billable" { (line.billable_calls) }
        td.num data-label="Free" { (line.free_calls) }
        td.num data-label="Charged" { (line.charged_calls) }
        td.num data-label="Unit price" { (money(line.unit_price, currency)) }
        td.num data-label="Amount" { (money(line.amount, currency)) }
    }
}
