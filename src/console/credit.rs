//! Prepaid credit pages: the consumer's balance and ledger with their
//! spending cap, and finance's view of a user's credit with the forms that
//! add to it and cap it (as the API's `GET /credits`, `GET/PUT
//! /billing/cap`, `GET/POST /finance/users/{id}/credits`, `GET/PUT
//! /finance/users/{id}/cap`).

use actix_web::web;
use maud::{Markup, html};
use rust_decimal::Decimal;
use serde::Deserialize;
use uuid::Uuid;

use super::page::{self, PageError, PageResult, Signed, money};
use crate::actions::{self, CapChange, CreditLedger};
use crate::billing::caps::SpendingCap;
use crate::billing::credits::{TopUpInput, ToppedUp};
use crate::domain::currency::parse_decimal_string;
use crate::domain::text::{Reference, UserRef};
use crate::error::ApiError;
use crate::models::User;
use crate::models::credit::{MovementKind, MovementSource};

const PER_PAGE: i64 = 50;

/// The ledger as a table: newest first, with the pager under it.
fn ledger_table(ledger: &CreditLedger, signed: &Signed, base: &str) -> Markup {
    let code = ledger.currency.code();
    html! {
        @if ledger.movements.is_empty() {
            (page::empty("No movements yet."))
        } @else {
            div.scroll { table #ledger {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Movement" } th scope="col" { "Reference" }
                    th.num scope="col" { "Amount" }
                } }
                tbody { @for m in &ledger.movements { tr {
                    td { (signed.when(m.created_at)) }
                    td data-label="Movement" { @match m.kind {
                        MovementKind::TopUp => { "Credit added" @if m.source == MovementSource::Webhook { span.muted { " (payment)" } } }
                        MovementKind::Usage => {
                            "Usage " (m.period.map(|d| d.format("%Y-%m").to_string()).unwrap_or_default())
                            br; span.muted { "last drawn " (signed.when(m.updated_at)) }
                        }
                        MovementKind::Adjustment => { "Adjustment" @if m.source == MovementSource::Void { span.muted { " (invoice voided)" } } }
                    } }
                    td data-label="Reference" { @if let Some(r) = &m.reference { code { (r) } } }
                    td.num data-label="Amount" { (money(m.amount, code)) }
                } } }
            } }
            (page::pager(base, ledger.page, ledger.per_page, ledger.total))
        }
    }
}

/// A cap amount as written, or what its absence means.
fn cap_amount(amount: Option<Decimal>, code: &str, none: &str) -> Markup {
    html! {
        @match amount { Some(a) => (money(a, code)), None => span.muted { (none) } }
    }
}

/// Whose cap is the one in force: the lower of the user's and finance's.
fn cap_set_by(cap: &SpendingCap, own: &str) -> String {
    match (cap.user_cap, cap.finance_cap) {
        (None, None) => "nobody".to_owned(),
        (Some(_), None) => own.to_owned(),
        (None, Some(_)) => "finance".to_owned(),
        (Some(u), Some(f)) if u < f => own.to_owned(),
        (Some(u), Some(f)) if u > f => "finance".to_owned(),
        (Some(_), Some(_)) => format!("{own} and finance (the same amount)"),
    }
}

/// The cap in force, this period's charge under it, and prepaid-only.
fn cap_facts(cap: &SpendingCap, own: &str) -> Markup {
    let code = cap.currency.code();
    html! {
        dl.facts #spending-cap-facts {
            dt { "Cap in force" } dd #cap-amount { (cap_amount(cap.amount, code, "no cap")) }
            dt { "Set by" } dd #cap-set-by { (cap_set_by(cap, own)) }
            dt { "Charged in " (cap.period) } dd #cap-charged { (money(cap.charged, code)) }
            dt { "Remaining" } dd #cap-remaining { (cap_amount(cap.remaining, code, "no limit")) }
            dt { "Prepaid only" } dd #cap-prepaid-only {
                @if cap.prepaid_only { "yes: calls stop when the prepaid credit is spent" } @else { "no" }
            }
        }
    }
}

/// The consumer's page: balance, spending cap with its form, ledger.
fn my_credit_markup(
    signed: &Signed,
    ledger: &CreditLedger,
    cap: &SpendingCap,
    done: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let code = ledger.currency.code();
    html! {
        main {
            h1 { "Prepaid credit" }
            (page::notice(error, "error"))
            (page::notice(done, "ok"))
            dl.facts {
                dt { "Balance" } dd #credit-balance { (money(ledger.balance, code)) }
            }
            p.muted { "Your calls draw on this balance as they are counted; each month's invoice applies what the month drew, and you pay the rest. To add credit, contact the provider's finance team." }
            section #spending-cap {
                h2 { "Spending cap" }
                p.muted { "Calls that would take a month's charge past the cap are refused (402) until the next month." }
                (cap_facts(cap, "you"))
                @if let Some(f) = cap.finance_cap {
                    p.muted { "Finance set a cap of " (money(f, code)) " on your account: you may lower it, not raise or remove it." }
                }
                form.stack method="post" action="/console/credit/cap" {
                    (signed.csrf_field())
                    label for="cap" { "Your cap (" (cap.currency) " a month) " span.muted { "(empty removes it)" } }
                    input #cap type="text" name="amount" inputmode="decimal" placeholder="25.00"
                        value=(cap.user_cap.map(|a| a.to_string()).unwrap_or_default());
                    button type="submit" { "Save cap" }
                }
                @if cap.user_cap.is_some() {
                    form method="post" action="/console/credit/cap" {
                        (signed.csrf_field())
                        input type="hidden" name="amount" value="";
                        button.link type="submit" { "Remove my cap" }
                    }
                }
            }
            h2 { "Movements" }
            (ledger_table(ledger, signed, "/console/credit?"))
        }
    }
}

#[derive(Deserialize)]
pub struct MyCreditQuery {
    page: Option<i64>,
    done: Option<String>,
}

/// `GET /console/credit?page=`: the caller's balance, spending cap and
/// ledger.
pub async fn my_credit(signed: Signed, query: web::Query<MyCreditQuery>) -> PageResult {
    let page_no = page::page_number(query.page)?;
    let ledger = actions::credit_ledger(&signed.state, signed.user.id(), page_no, PER_PAGE).await?;
    let cap = actions::spending_cap(&signed.state, signed.user.id()).await?;
    let done = match query.done.as_deref() {
        Some("cap-set") => Some("Your spending cap is set."),
        Some("cap-removed") => Some("Your spending cap is removed."),
        _ => None,
    };
    let main = my_credit_markup(&signed, &ledger, &cap, done, None);
    Ok(signed.page("Prepaid credit", "/console/credit", main))
}

#[derive(Deserialize)]
pub struct CapForm {
    amount: String,
}

/// The form's amount: empty removes the cap; otherwise exactly a decimal
/// (as the top-up's, never through a float).
fn cap_amount_field(raw: &str) -> Result<Option<Decimal>, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    parse_decimal_string(raw).map(Some).map_err(ApiError::validation)
}

/// `POST /console/credit/cap`: sets (or, empty, removes) the caller's own
/// cap; a refusal (a bad amount, or raising finance's cap) shows the page
/// again with it, under the API's status.
pub async fn set_my_cap(signed: Signed, form: web::Form<CapForm>) -> PageResult {
    let changed = match cap_amount_field(&form.amount) {
        Ok(amount) => actions::change_spending_cap(&signed.state, signed.user.id(), CapChange::Own(amount))
            .await
            .map(|_| amount),
        Err(err) => Err(err),
    };
    match changed {
        Ok(Some(_)) => Ok(page::see_other("/console/credit?done=cap-set")),
        Ok(None) => Ok(page::see_other("/console/credit?done=cap-removed")),
        Err(err) => {
            let ledger = actions::credit_ledger(&signed.state, signed.user.id(), 1, PER_PAGE).await?;
            let cap = actions::spending_cap(&signed.state, signed.user.id()).await?;
            let main = my_credit_markup(&signed, &ledger, &cap, None, Some(err.message()));
            Ok(page::form_failed(
                &err,
                signed.document("Prepaid credit", "/console/credit", main),
            ))
        }
    }
}

#[derive(Deserialize)]
pub struct FindQuery {
    user: Option<String>,
    page: Option<i64>,
    done: Option<String>,
}

fn finance_only(signed: &Signed) -> Result<(), PageError> {
    signed.user.0.require_finance().map_err(ApiError::from)?;
    Ok(())
}

/// `GET /console/finance/credit?user=<email or id>`: a user's credit, and
/// the form that adds to it.
pub async fn user_credit(signed: Signed, query: web::Query<FindQuery>) -> PageResult {
    finance_only(&signed)?;
    let q = query.into_inner();
    let wanted = q.user.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let found = match wanted {
        None => None,
        Some(text) => {
            let who: UserRef = text.parse().map_err(PageError::from)?;
            let mut conn = signed.conn().await?;
            let user = match &who {
                UserRef::Id(id) => User::find(&mut conn, *id).await,
                UserRef::Email(email) => User::find_by_email(&mut conn, email.as_str()).await,
            }
            .map_err(PageError::from)?
            .ok_or_else(|| ApiError::not_found("no user with this email or id"))?;
            drop(conn);
            let page_no = page::page_number(q.page)?;
            let ledger = actions::credit_ledger(&signed.state, user.id, page_no, PER_PAGE).await?;
            let cap = actions::spending_cap(&signed.state, user.id).await?;
            Some((user, ledger, cap))
        }
    };
    let done = match q.done.as_deref() {
        Some("added") => Some("Credit added."),
        Some("duplicate") => Some("This reference was recorded before, for this amount: nothing changed."),
        Some("cap") => Some("Spending cap saved."),
        _ => None,
    };
    let currency = signed.state.config.billing.currency;
    let main = html! {
        main {
            p { a href="/console/finance" { "← Finance" } }
            h1 { "Prepaid credit" }
            (page::notice(done, "ok"))
            form.inline method="get" action="/console/finance/credit" {
                label for="user" { "User (email or id)" }
                input #user type="text" name="user" value=(wanted.unwrap_or("")) required;
                button type="submit" { "Find" }
            }
            @if let Some((user, ledger, cap)) = &found {
                h2 { (user.email) }
                dl.facts { dt { "Balance" } dd #credit-balance { (money(ledger.balance, currency.code())) } }
                section {
                    h3 { "Add credit" }
                    form.stack method="post" action={"/console/finance/credit/" (user.id)} {
                        (signed.csrf_field())
                        label for="amount" { "Amount (" (currency) ")" }
                        input #amount type="text" name="amount" inputmode="decimal" required placeholder="25.00";
                        label for="reference" { "Reference " span.muted { "(e.g. the transfer's; the same one again adds nothing)" } }
                        input #reference type="text" name="reference" required maxlength="200";
                        button type="submit" { "Add credit" }
                    }
                }
                section #spending-cap {
                    h3 { "Spending cap" }
                    dl.facts {
                        dt { "The user's cap" } dd #cap-user { (cap_amount(cap.user_cap, currency.code(), "none")) }
                        dt { "Finance's cap" } dd #cap-finance { (cap_amount(cap.finance_cap, currency.code(), "none")) }
                    }
                    (cap_facts(cap, "the user"))
                    p.muted { "The user may lower finance's cap, not raise or remove it. Prepaid only: their calls are refused (402) once their credit is spent." }
                    form.stack method="post" action={"/console/finance/credit/" (user.id) "/cap"} {
                        (signed.csrf_field())
                        label for="finance-cap" { "Finance's cap (" (currency) " a month) " span.muted { "(empty removes it)" } }
                        input #finance-cap type="text" name="amount" inputmode="decimal" placeholder="100.00"
                            value=(cap.finance_cap.map(|a| a.to_string()).unwrap_or_default());
                        label.check { input type="checkbox" name="prepaid_only" value="yes" checked[cap.prepaid_only]; " Prepaid only (no spending past the credit balance)" }
                        button type="submit" { "Save cap" }
                    }
                }
                (ledger_table(ledger, &signed, &format!("/console/finance/credit?user={}", user.id)))
            }
        }
    };
    Ok(signed.page("Prepaid credit", "/console/finance", main))
}

#[derive(Deserialize)]
pub struct TopUpForm {
    amount: String,
    reference: Reference,
}

/// `POST /console/finance/credit/{user_id}`.
pub async fn top_up(signed: Signed, id: web::Path<String>, form: web::Form<TopUpForm>) -> PageResult {
    finance_only(&signed)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("no such user"))?;
    let f = form.into_inner();
    let amount = parse_decimal_string(f.amount.trim()).map_err(ApiError::validation)?;
    let input = TopUpInput {
        amount,
        currency: None,
        reference: f.reference.into_inner(),
        source: MovementSource::Finance,
        recorded_by: Some(signed.user.id()),
    };
    let done = match actions::top_up_credit(&signed.state, id, input).await? {
        ToppedUp::Created(_) => "added",
        ToppedUp::Duplicate(_) => "duplicate",
    };
    Ok(page::see_other(&format!(
        "/console/finance/credit?user={id}&done={done}"
    )))
}

#[derive(Deserialize)]
pub struct FinanceCapForm {
    amount: String,
    prepaid_only: Option<String>,
}

/// `POST /console/finance/credit/{user_id}/cap`: finance's cap on the user
/// (empty removes it) and prepaid-only (the box as ticked).
pub async fn set_user_cap(signed: Signed, id: web::Path<String>, form: web::Form<FinanceCapForm>) -> PageResult {
    finance_only(&signed)?;
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("no such user"))?;
    let f = form.into_inner();
    let change = CapChange::Finance {
        amount: cap_amount_field(&f.amount)?,
        prepaid_only: Some(f.prepaid_only.as_deref() == Some("yes")),
    };
    actions::change_spending_cap(&signed.state, id, change).await?;
    Ok(page::see_other(&format!("/console/finance/credit?user={id}&done=cap")))
}
