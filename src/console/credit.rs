//! Prepaid credit pages: the consumer's balance and ledger, and finance's
//! view of a user's credit with the form that adds to it (as the API's
//! `GET /credits`, `GET/POST /finance/users/{id}/credits`).

use actix_web::web;
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::page::{self, PageError, PageResult, Signed, money};
use crate::actions::{self, CreditLedger};
use crate::billing::credits::{TopUpInput, ToppedUp};
use crate::domain::currency::parse_decimal_string;
use crate::domain::text::{Reference, UserRef};
use crate::error::ApiError;
use crate::models::User;
use crate::models::credit::{MovementKind, MovementSource};

const PER_PAGE: i64 = 50;

#[derive(Deserialize)]
pub struct LedgerQuery {
    page: Option<i64>,
}

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

/// `GET /console/credit?page=`: the caller's balance and ledger.
pub async fn my_credit(signed: Signed, query: web::Query<LedgerQuery>) -> PageResult {
    let page_no = page::page_number(query.page)?;
    let ledger = actions::credit_ledger(&signed.state, signed.user.id(), page_no, PER_PAGE).await?;
    let code = ledger.currency.code();
    let main = html! {
        main {
            h1 { "Prepaid credit" }
            dl.facts {
                dt { "Balance" } dd #credit-balance { (money(ledger.balance, code)) }
            }
            p.muted { "Your calls draw on this balance as they are counted; each month's invoice applies what the month drew, and you pay the rest. To add credit, contact the provider's finance team." }
            (ledger_table(&ledger, &signed, "/console/credit?"))
        }
    };
    Ok(signed.page("Prepaid credit", "/console/credit", main))
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
            Some((user, ledger))
        }
    };
    let done = match q.done.as_deref() {
        Some("added") => Some("Credit added."),
        Some("duplicate") => Some("This reference was recorded before, for this amount: nothing changed."),
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
            @if let Some((user, ledger)) = &found {
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
