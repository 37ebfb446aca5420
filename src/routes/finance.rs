//! Finance routes (role finance or admin): close periods, list, export,
//! record payments, void.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::billing::close::{self, CloseError};
use crate::billing::export::{self, ExportFormat};
use crate::billing::payments::{self, PaymentError, PaymentInput, PaymentSource, Recorded, VoidError};
use crate::billing::{Currency, Period};
use crate::error::{ApiError, ApiResult};
use crate::models::Invoice;
use crate::models::invoice::{InvoiceFilter, InvoiceStatus};
use crate::routes::conn;
use crate::routes::invoices::invoice_detail;

fn parse_period(raw: &str) -> Result<Period, ApiError> {
    raw.parse()
        .map_err(|e: crate::billing::period::BadPeriod| ApiError::validation(e.to_string()))
}

pub async fn close_period(
    state: web::Data<AppState>,
    user: AuthUser,
    period: web::Path<String>,
) -> ApiResult<HttpResponse> {
    user.require_finance()?;
    let period = parse_period(&period)?;
    let mut conn = conn(&state.db).await?;
    match close::close_period(
        &mut conn,
        period,
        state.now(),
        state.config.billing_tz,
        &state.config.billing,
    )
    .await
    {
        Ok(outcome) => Ok(HttpResponse::Ok().json(outcome)),
        Err(CloseError::PeriodOpen(p)) => Err(ApiError::conflict(
            "period_open",
            format!("period {p} has not ended yet; only past periods can be closed"),
        )),
        Err(CloseError::Database(e)) => Err(e.into()),
    }
}

pub async fn reconciliation(
    state: web::Data<AppState>,
    user: AuthUser,
    period: web::Path<String>,
) -> ApiResult<HttpResponse> {
    user.require_finance()?;
    let period = parse_period(&period)?;
    let mut conn = conn(&state.db).await?;
    let report = close::reconcile(&mut conn, period, state.config.billing.currency, state.now()).await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Deserialize)]
pub struct ListQuery {
    period: Option<String>,
    status: Option<String>,
    user: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

pub async fn list_invoices(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    user.require_finance()?;
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
            Err(_) => filter.user_email = Some(u.trim().to_lowercase()),
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

pub async fn get_invoice(state: web::Data<AppState>, user: AuthUser, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    user.require_finance()?;
    let mut conn = conn(&state.db).await?;
    let invoice = Invoice::find(&mut conn, *id)
        .await?
        .ok_or_else(|| ApiError::not_found("invoice not found"))?;
    invoice_detail(&mut conn, invoice).await
}

#[derive(Deserialize)]
pub struct ExportQuery {
    period: String,
    format: Option<String>,
}

/// Streams one row per invoice line; memory stays flat however large.
pub async fn export_invoices(
    state: web::Data<AppState>,
    user: AuthUser,
    query: web::Query<ExportQuery>,
) -> ApiResult<HttpResponse> {
    user.require_finance()?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    reference: String,
    method: String,
    currency: Option<String>,
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

pub async fn record_payment(
    state: web::Data<AppState>,
    user: AuthUser,
    id: web::Path<Uuid>,
    body: web::Json<PaymentRequest>,
) -> ApiResult<HttpResponse> {
    user.require_finance()?;
    let body = body.into_inner();
    let reference = body.reference.trim().to_owned();
    let method = body.method.trim().to_owned();
    if reference.is_empty() || reference.len() > 200 || method.is_empty() || method.len() > 50 {
        return Err(ApiError::validation(
            "reference (1–200 chars) and method (1–50 chars) are required",
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
    if invoice.status == InvoiceStatus::Paid {
        // Lift an overdue block at once, on every instance.
        state.authenticator.user_changed(invoice.user_id).await;
    }
    HttpResponse::build(status).json(json!({ "payment": payment, "invoice": invoice }))
}

pub async fn void_invoice(state: web::Data<AppState>, user: AuthUser, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    user.require_finance()?;
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
