//! Finance routes (role finance or admin): close periods, list, export,
//! record payments, void.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::FinanceUser;
use crate::billing::close::{self, CloseError, CloseOutcome, Reconciliation};
use crate::billing::export::{self, ExportFormat, ExportRow};
use crate::billing::payments::{self, PaymentError, PaymentInput, PaymentSource, Recorded, VoidError};
use crate::billing::{Currency, Period};
use crate::error::{ApiError, ApiResult};
use crate::models::Invoice;
use crate::models::invoice::Payment;
use crate::models::invoice::{InvoiceFilter, InvoiceStatus};
use crate::routes::conn;
use crate::routes::invoices::{InvoiceDetail, invoice_detail};
use crate::routes::json::Json;
use crate::routes::openapi::ErrorBody;

fn parse_period(raw: &str) -> Result<Period, ApiError> {
    raw.parse()
        .map_err(|e: crate::billing::period::BadPeriod| ApiError::validation(e.to_string()))
}

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
    let period = parse_period(&period)?;
    match state.close_period(period).await {
        Ok(outcome) => Ok(HttpResponse::Ok().json(outcome)),
        Err(CloseError::PeriodOpen(p)) => Err(ApiError::conflict(
            "period_open",
            format!("period {p} has not ended yet; only past periods can be closed"),
        )),
        Err(CloseError::Database(e)) => Err(e.into()),
        Err(CloseError::Unavailable(e)) => Err(e.into()),
    }
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
    let period = parse_period(&period)?;
    let mut conn = conn(&state.db).await?;
    let report = close::reconcile(&mut conn, period, state.config.billing.currency, state.now()).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// `YYYY-MM`.
    #[param(value_type = Option<Period>)]
    period: Option<String>,
    /// `issued`, `paid` or `void`.
    #[param(value_type = Option<InvoiceStatus>)]
    status: Option<String>,
    /// A user id, or an email (case-insensitive).
    #[param(
        max_length = 254,
        pattern = r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[^@\s\u0000-\u001F\u007F-\u009F]{1,64}@[^@\s.\u0000-\u001F\u007F-\u009F]+(\.[^@\s.\u0000-\u001F\u007F-\u009F]+)+)$"
    )]
    user: Option<String>,
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
    let mut filter = InvoiceFilter::default();
    if let Some(p) = q.period.as_deref() {
        filter.period = Some(parse_period(p)?.first_day());
    }
    if let Some(s) = q.status.as_deref() {
        filter.status = Some(s.parse::<InvoiceStatus>().map_err(ApiError::validation)?);
    }
    if let Some(u) = q.user.as_deref() {
        match u.parse::<Uuid>() {
            Ok(id) => filter.user_id = Some(id),
            Err(_) => {
                let email = crate::auth::normalize_email(u)
                    .map_err(|_| ApiError::validation("user must be a user id or an email address"))?;
                filter.user_email = Some(email);
            }
        }
    }
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(50);
    if page < 1 || !(1..=500).contains(&per_page) {
        return Err(ApiError::validation("page must be ≥ 1 and per_page between 1 and 500"));
    }
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
    invoice_detail(&mut conn, invoice).await
}

#[derive(Deserialize, IntoParams)]
pub struct ExportQuery {
    /// `YYYY-MM`.
    #[param(value_type = Period)]
    period: String,
    /// `csv` (default) or `json`.
    #[param(value_type = Option<ExportFormatName>)]
    format: Option<String>,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ExportFormatName {
    Csv,
    Json,
}

/// One row of the JSON export: an invoice line with its invoice's facts.
/// The CSV export has the same columns, in `billing::export::CSV_HEADER` order.
#[derive(Serialize, ToSchema)]
pub struct ExportJsonRow {
    pub period: Period,
    #[serde(flatten)]
    pub row: ExportRow,
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
                (Vec<ExportJsonRow> = "application/json"),
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
    let period = parse_period(&query.period)?;
    let format: ExportFormat = query
        .format
        .as_deref()
        .unwrap_or("csv")
        .parse()
        .map_err(ApiError::validation)?;
    let ext = if format == ExportFormat::Csv { "csv" } else { "json" };
    let body = export::stream(state.db.clone(), period, format);
    Ok(HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"invoices-{period}.{ext}\""),
        ))
        .streaming(futures_util::TryStreamExt::map_err(body, |e| {
            tracing::error!(error = %e, "export stream failed");
            actix_web::error::ErrorInternalServerError("export failed")
        })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// A decimal string in the invoice's currency, e.g. `"12.50"`.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(example = "12.50", pattern = r"^[0-9]{1,15}(\.[0-9]{1,10})?$")]
    amount: Decimal,
    /// The payment provider's reference: 1–200 characters, not blank;
    /// recording the same reference again for the same amount is a no-op (200).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    reference: String,
    /// e.g. `bank_transfer`: 1–50 characters, not blank.
    #[schema(
        min_length = 1,
        max_length = 50,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    method: String,
    /// Must be the invoice's currency when given.
    #[schema(value_type = Option<Currency>)]
    currency: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentRecorded {
    pub payment: Payment,
    /// The invoice after the payment (`paid` once fully paid).
    pub invoice: Invoice,
}

pub(crate) fn payment_error(err: PaymentError) -> ApiError {
    match err {
        PaymentError::NotFound => ApiError::not_found("invoice not found"),
        e @ (PaymentError::Void(_) | PaymentError::AlreadyPaid(_)) => {
            ApiError::conflict("invoice_not_payable", e.to_string())
        }
        e @ PaymentError::ReferenceReused(_) => ApiError::conflict("reference_reused", e.to_string()),
        e @ PaymentError::Overpayment { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "overpayment", e.to_string())
        }
        e @ PaymentError::CurrencyMismatch { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch", e.to_string())
        }
        e @ PaymentError::BadAmount(_) => ApiError::validation(e.to_string()),
        PaymentError::Database(e) => e.into(),
    }
}

pub(crate) fn parse_currency(raw: Option<&str>) -> Result<Option<Currency>, ApiError> {
    raw.map(|c| {
        c.parse::<Currency>()
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch", e.to_string()))
    })
    .transpose()
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
    let reference = body.reference.trim().to_owned();
    let method = body.method.trim().to_owned();
    let bad = |s: &str, max: usize| s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control);
    if bad(&reference, 200) || bad(&method, 50) {
        return Err(ApiError::validation(
            "reference (1–200 chars) and method (1–50 chars) are required, without control characters",
        ));
    }
    let input = PaymentInput {
        amount: body.amount,
        currency: parse_currency(body.currency.as_deref())?,
        reference,
        method,
        source: PaymentSource::Finance,
        recorded_by: Some(user.id()),
    };
    let mut conn = conn(&state.db).await?;
    let recorded = payments::record_payment(&mut conn, *id, input, state.now())
        .await
        .map_err(payment_error)?;
    Ok(payment_response(&state, recorded).await)
}

pub(crate) async fn payment_response(state: &AppState, recorded: Recorded) -> HttpResponse {
    let (status, payment, invoice) = match recorded {
        Recorded::Created { payment, invoice } => (StatusCode::CREATED, payment, invoice),
        Recorded::Duplicate { payment, invoice } => (StatusCode::OK, payment, invoice),
    };
    if status == StatusCode::CREATED {
        state.metrics.payments_recorded.inc();
    }
    if invoice.status == InvoiceStatus::Paid {
        // Lift an overdue block at once, on every instance.
        state.authenticator.user_changed(invoice.user_id).await;
    }
    HttpResponse::build(status).json(json!({ "payment": payment, "invoice": invoice }))
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
    let mut conn = conn(&state.db).await?;
    match payments::void_invoice(&mut conn, *id, state.now()).await {
        Ok(invoice) => {
            state.authenticator.user_changed(invoice.user_id).await;
            Ok(HttpResponse::Ok().json(invoice))
        }
        Err(VoidError::NotFound) => Err(ApiError::not_found("invoice not found")),
        Err(e @ VoidError::NotVoidable(_)) => Err(ApiError::conflict("invoice_not_voidable", e.to_string())),
        Err(VoidError::Database(e)) => Err(e.into()),
    }
}
