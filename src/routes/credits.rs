//! Prepaid credit: a user's balance and ledger (their own, or any user's
//! for finance), and finance's top-ups.

use actix_web::{HttpResponse, web};
use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::actions::{self, CreditLedger};
use crate::app::AppState;
use crate::billing::credits::{TopUp, TopUpInput, ToppedUp};
use crate::domain::Currency;
use crate::domain::currency::DecimalString;
use crate::domain::text::Reference;
use crate::error::{ApiResult, ErrorBody};
use crate::models::credit::MovementSource;
use crate::routes::extract::{AuthUser, FinanceUser};
use crate::routes::json::Json;

#[derive(Deserialize, IntoParams)]
pub struct PageQuery {
    /// From 1 (default 1).
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<i64>,
}

impl PageQuery {
    fn page(&self) -> (i64, i64) {
        (self.page.unwrap_or(1), self.per_page.unwrap_or(50))
    }
}

/// The caller's prepaid credit: balance and movements (top-ups, what each
/// period's usage drew, adjustments), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/credits",
    tag = "billing",
    params(PageQuery),
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses(
        (status = 200, description = "Balance and one page of movements", body = CreditLedger),
        (status = 400, description = "`validation_failed`: a bad page or per_page", body = ErrorBody),
    )
)]
pub async fn my_credits(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let (page, per_page) = query.page();
    let ledger = actions::credit_ledger(&state, user.id(), page, per_page).await?;
    Ok(HttpResponse::Ok().json(ledger))
}

/// A user's prepaid credit, as finance sees it.
#[utoipa::path(
    get,
    path = "/api/v1/finance/users/{id}/credits",
    tag = "finance",
    params(("id" = Uuid, Path, description = "The user's id"), PageQuery),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Balance and one page of movements", body = CreditLedger),
        (status = 400, description = "`validation_failed`: a bad page or per_page", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such user, or `id` is not a UUID", body = ErrorBody),
    )
)]
pub async fn user_credits(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    id: web::Path<Uuid>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let (page, per_page) = query.page();
    let ledger = actions::credit_ledger(&state, *id, page, per_page).await?;
    Ok(HttpResponse::Ok().json(ledger))
}

/// Credit bought, in the billing currency. The same reference again with
/// the same amount for the same user is a no-op (200).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    // Positive, with at most the currency's minor-unit decimals.
    #[serde(with = "crate::domain::currency::decimal_string")]
    #[schema(value_type = DecimalString, inline)]
    amount: Decimal,
    // The idempotency key: e.g. the bank transfer's reference.
    #[schema(inline)]
    reference: Reference,
    /// Must be the billing currency when given.
    #[schema(value_type = Option<Currency>)]
    currency: Option<String>,
}

/// Adds prepaid credit to a user; idempotent on `reference`.
#[utoipa::path(
    post,
    path = "/api/v1/finance/users/{id}/credits",
    tag = "finance",
    params(("id" = Uuid, Path, description = "The user's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "Added", body = TopUp),
        (status = 200, description = "Already added with this reference and amount: nothing changed", body = TopUp),
        (status = 400, description = "`validation_failed`: a bad amount or reference", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such user, or `id` is not a UUID", body = ErrorBody),
        (status = 409, description = "`reference_reused`: the reference was used for a different top-up",
            body = ErrorBody),
        (status = 422, description = "`currency_mismatch`: not the billing currency", body = ErrorBody),
    )
)]
pub async fn top_up(
    state: web::Data<AppState>,
    finance: FinanceUser,
    id: web::Path<Uuid>,
    body: Json<TopUpRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let input = TopUpInput {
        amount: body.amount,
        currency: body.currency.as_deref().map(str::parse::<Currency>).transpose()?,
        reference: body.reference.into_inner(),
        source: MovementSource::Finance,
        recorded_by: Some(finance.id()),
    };
    Ok(match actions::top_up_credit(&state, *id, input).await? {
        ToppedUp::Created(top_up) => HttpResponse::Created().json(top_up),
        ToppedUp::Duplicate(top_up) => HttpResponse::Ok().json(top_up),
    })
}
