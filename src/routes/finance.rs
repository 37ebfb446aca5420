//! Finance routes (role finance or admin): close periods, list, export,
//! record payments, void.

use actix_web::{HttpResponse, web};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::actions;
use crate::app::AppState;
use crate::billing::close::{self, CloseOutcome, Reconciliation};
use crate::billing::export::{ExportFormat, ExportJsonRow};
use crate::billing::payments::{PaymentInput, PaymentRecorded, PaymentSource};
use crate::domain::currency::DecimalString;
use crate::domain::text::{PaymentMethod, Reference, UserRef};
use crate::domain::{Currency, Period};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::models::Invoice;
use crate::models::invoice::{InvoiceDetail, InvoiceFilter, InvoiceStatus};
use crate::routes::conn;
use crate::routes::extract::FinanceUser;
use crate::routes::json::Json;

/// Closes a past period: issues one invoice per user with usage, numbered
/// without gaps. Closing a closed period again issues nothing.
#[utoipa::path(
    post,
    path = "/api/v1/finance/periods/{period}/close",
    tag = "finance",
    params(("period" = Period, Path, description = "`YYYY-MM`")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Closed (now or before: see `already_closed`)", body = CloseOutcome),
        (status = 400, description = "`validation_failed`: `period` is not `YYYY-MM`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 409, description = "`period_open`: the period has not ended yet", body = ErrorBody),
    )
)]
pub async fn close_period(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    period: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let period: Period = period.parse()?;
    let outcome = state.close_period(period).await?;
    Ok(HttpResponse::Ok().json(outcome))
}

/// Compares a period's usage records, priced now, with what was invoiced.
#[utoipa::path(
    get,
    path = "/api/v1/finance/periods/{period}/reconciliation",
    tag = "finance",
    params(("period" = Period, Path, description = "`YYYY-MM`")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Totals and any discrepancies", body = Reconciliation),
        (status = 400, description = "`validation_failed`: `period` is not `YYYY-MM`", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
    )
)]
pub async fn reconciliation(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    period: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let period: Period = period.parse()?;
    let mut conn = conn(&state.db).await?;
    let report = close::reconcile(&mut conn, period, state.config.billing.currency, state.now()).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// `YYYY-MM`.
    period: Option<Period>,
    /// `issued`, `paid` or `void`.
    status: Option<InvoiceStatus>,
    /// A user id, or an email (case-insensitive).
    user: Option<UserRef>,
    /// From 1 (default 1).
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<i64>,
}

#[derive(ToSchema)]
pub struct InvoicePage {
    pub invoices: Vec<Invoice>,
    pub page: i64,
    pub per_page: i64,
    /// Invoices matching the filters, on all pages.
    pub total: i64,
}

/// Every user's invoices, filtered and paged, newest period first.
#[utoipa::path(
    get,
    path = "/api/v1/finance/invoices",
    tag = "finance",
    operation_id = "finance_list_invoices",
    params(ListQuery),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "One page of invoices", body = InvoicePage),
        (status = 400, description = "`validation_failed`: a bad period, status, page or per_page", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
    )
)]
pub async fn list_invoices(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let q = query.into_inner();
    let mut filter = InvoiceFilter {
        period: q.period.map(Period::first_day),
        status: q.status,
        ..InvoiceFilter::default()
    };
    match q.user {
        Some(UserRef::Id(id)) => filter.user_id = Some(id),
        Some(UserRef::Email(email)) => filter.user_email = Some(email.into_inner()),
        None => {}
    }
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(50);
    actions::check_paging(page, per_page)?;
    let mut conn = conn(&state.db).await?;
    let (invoices, total) = Invoice::search(&mut conn, &filter, page, per_page).await?;
    Ok(HttpResponse::Ok().json(json!({
        "invoices": invoices, "page": page, "per_page": per_page, "total": total,
    })))
}

/// Any user's invoice with its lines and payments.
#[utoipa::path(
    get,
    path = "/api/v1/finance/invoices/{id}",
    tag = "finance",
    operation_id = "finance_get_invoice",
    params(("id" = Uuid, Path, description = "The invoice's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The invoice", body = InvoiceDetail),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such invoice, or `id` is not a UUID", body = ErrorBody),
    )
)]
pub async fn get_invoice(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let mut conn = conn(&state.db).await?;
    let invoice = Invoice::find(&mut conn, *id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice not found"))?;
    let detail = InvoiceDetail::load(&mut conn, invoice).await?;
    Ok(HttpResponse::Ok().json(detail))
}

#[derive(Deserialize, IntoParams)]
pub struct ExportQuery {
    /// `YYYY-MM`.
    period: Period,
    /// `csv` (default) or `json`.
    format: Option<ExportFormat>,
}

/// Streams one row per invoice line; memory stays flat however large.
#[utoipa::path(
    get,
    path = "/api/v1/finance/invoices/export",
    tag = "finance",
    params(ExportQuery),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "An attachment: CSV (RFC 4180, with a header row) or a JSON array",
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"invoices-YYYY-MM.csv\"`")),
            content(
                (String = "text/csv"),
                (Vec<ExportJsonRow<'_>> = "application/json"),
            )),
        (status = 400, description = "`validation_failed`: `period` missing or not `YYYY-MM`, or an unknown format",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
    )
)]
pub async fn export_invoices(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    query: web::Query<ExportQuery>,
) -> ApiResult<HttpResponse> {
    let period = query.period;
    let format = query.format.unwrap_or(ExportFormat::Csv);
    actions::export_download(&state, period, format).await
}

/// Money received against an invoice, in the invoice's currency. Recording
/// the same reference again for the same amount is a no-op (200).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    // In the invoice's currency.
    #[serde(with = "crate::domain::currency::decimal_string")]
    #[schema(value_type = DecimalString, inline)]
    amount: Decimal,
    // Recording the same reference again for the same amount is a no-op (200).
    #[schema(inline)]
    reference: Reference,
    #[schema(inline)]
    method: PaymentMethod,
    /// Must be the invoice's currency when given.
    #[schema(value_type = Option<Currency>)]
    currency: Option<String>,
}

/// Records money received against an invoice; idempotent on `reference`.
#[utoipa::path(
    post,
    path = "/api/v1/finance/invoices/{id}/payments",
    tag = "finance",
    params(("id" = Uuid, Path, description = "The invoice's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 201, description = "Recorded", body = PaymentRecorded),
        (status = 200, description = "Already recorded with this reference and amount: nothing changed",
            body = PaymentRecorded),
        (status = 400, description = "`validation_failed`: a bad amount, reference or method", body = ErrorBody),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such invoice, or `id` is not a UUID", body = ErrorBody),
        (status = 409, description = "`invoice_not_payable`: the invoice is void or already paid; \
            `reference_reused`: the reference was used for a different payment", body = ErrorBody),
        (status = 422, description = "`overpayment`: more than is outstanding; \
            `currency_mismatch`: not the invoice's currency, or not a supported currency", body = ErrorBody),
    )
)]
pub async fn record_payment(
    state: web::Data<AppState>,
    user: FinanceUser,
    id: web::Path<Uuid>,
    body: Json<PaymentRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let input = PaymentInput {
        amount: body.amount,
        currency: body.currency.as_deref().map(str::parse::<Currency>).transpose()?,
        reference: body.reference.into_inner(),
        method: body.method.into_inner(),
        source: PaymentSource::Finance,
        recorded_by: Some(user.id()),
    };
    let recorded = actions::record_payment(&state, *id, input).await?;
    Ok(if recorded.is_new() {
        HttpResponse::Created().json(recorded.into_body())
    } else {
        HttpResponse::Ok().json(recorded.into_body())
    })
}

/// Voids an issued, unpaid invoice.
#[utoipa::path(
    post,
    path = "/api/v1/finance/invoices/{id}/void",
    tag = "finance",
    params(("id" = Uuid, Path, description = "The invoice's id")),
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The voided invoice", body = Invoice),
        (status = 403, description = "`forbidden`: the caller has neither the finance nor the admin role",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such invoice, or `id` is not a UUID", body = ErrorBody),
        (status = 409, description = "`invoice_not_voidable`: the invoice is paid, partly paid or already void", body = ErrorBody),
    )
)]
pub async fn void_invoice(
    state: web::Data<AppState>,
    _finance: FinanceUser,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let invoice = actions::void_invoice(&state, *id).await?;
    Ok(HttpResponse::Ok().json(invoice))
}
