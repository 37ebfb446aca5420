//! Spending caps: the caller's own (`/billing/cap`), and finance's on any
//! user (`/finance/users/{id}/cap`), with prepaid-only.

use actix_web::{HttpResponse, web};
use rust_decimal::Decimal;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::actions::{self, CapChange};
use crate::app::AppState;
use crate::billing::caps::SpendingCap;
use crate::domain::currency::DecimalString;
use crate::error::{ApiResult, ErrorBody};
use crate::routes::extract::{AuthUser, FinanceUser, SessionUser};
use crate::routes::json::Json;

/// The caller's spending cap, the cap finance set, prepaid-only, and this
/// period's charge under them.
#[utoipa::path(
    get,
    path = "/api/v1/billing/cap",
    tag = "billing",
    security(("bearerAuth" = []), ("apiKey" = [])),
    responses((status = 200, description = "The cap and this period's charge", body = SpendingCap))
)]
pub async fn my_cap(state: web::Data<AppState>, user: AuthUser) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::spending_cap(&state, user.id()).await?))
}

/// A cap on each period's charge; `null` removes it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnCapRequest {
    /// Zero or more, in the billing currency, with at most its minor-unit
    /// decimals; `null` removes the cap. Required.
    #[serde(with = "crate::domain::currency::decimal_string_option")]
    #[schema(value_type = Option<DecimalString>, required = true)]
    amount: Option<Decimal>,
}

/// Sets or removes the caller's spending cap. Calls that would take the
/// period's charge past it are refused with 402 `spending_cap_reached`.
#[utoipa::path(
    put,
    path = "/api/v1/billing/cap",
    tag = "billing",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Set", body = SpendingCap),
        (status = 400, description = "`validation_failed`: a bad amount", body = ErrorBody),
        (status = 409, description = "`cap_set_by_finance`: finance set a cap; it may be lowered, not raised or removed",
            body = ErrorBody),
    )
)]
pub async fn set_my_cap(
    state: web::Data<AppState>,
    user: SessionUser,
    body: Json<OwnCapRequest>,
) -> ApiResult<HttpResponse> {
    let change = CapChange::Own(body.into_inner().amount);
    Ok(HttpResponse::Ok().json(actions::change_spending_cap(&state, user.id(), change).await?))
}

/// A user's spending cap, as finance sees it.
#[utoipa::path(
    get,
    path = "/api/v1/finance/users/{id}/cap",
    tag = "finance",
    params(("id" = Uuid, Path, description = "The user's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The cap and this period's charge", body = SpendingCap),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such user, or `id` is not a UUID", body = ErrorBody),
    )
)]
pub async fn user_cap(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(actions::spending_cap(&state, *id).await?))
}

/// Finance's cap on a user (which the user may lower, not raise or
/// remove), and whether they are prepaid-only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinanceCapRequest {
    /// Zero or more, in the billing currency, with at most its minor-unit
    /// decimals; `null` removes finance's cap. Required.
    #[serde(with = "crate::domain::currency::decimal_string_option")]
    #[schema(value_type = Option<DecimalString>, required = true)]
    amount: Option<Decimal>,
    /// The user may not spend past their prepaid credit (402
    /// `credits_exhausted`); left as it was when absent.
    #[serde(default)]
    prepaid_only: Option<bool>,
}

/// Sets or removes finance's cap on a user, and prepaid-only.
#[utoipa::path(
    put,
    path = "/api/v1/finance/users/{id}/cap",
    tag = "finance",
    params(("id" = Uuid, Path, description = "The user's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Set", body = SpendingCap),
        (status = 400, description = "`validation_failed`: a bad amount", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such user, or `id` is not a UUID", body = ErrorBody),
    )
)]
pub async fn set_user_cap(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    id: web::Path<Uuid>,
    body: Json<FinanceCapRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let change = CapChange::Finance {
        amount: body.amount,
        prepaid_only: body.prepaid_only,
    };
    Ok(HttpResponse::Ok().json(actions::change_spending_cap(&state, *id, change).await?))
}
