//! The console's page shell and the small pieces every page shares: how
//! money, instants and days are written, notices, empty states, and the
//! HTML face of an [`ApiError`].
//!
//! Templates are `maud` macros, checked when payg compiles; every value is
//! escaped (nothing here is `PreEscaped`).

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use maud::{DOCTYPE, Markup, html};
use rust_decimal::Decimal;

use super::assets;
use super::session::{self, CSRF_FIELD, SIGN_IN};
use crate::app::AppState;
use crate::auth::{Caller, Purpose};
use crate::error::ApiError;
use crate::models::user::{Role, User};

/// A failure on a console page: the error the JSON API would give, shown
/// as a page (a 401 sends the browser to sign in, and back to `back_to`
/// afterwards when that is known).
#[derive(Debug)]
pub struct PageError {
    pub err: ApiError,
    back_to: Option<String>,
}

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(err: E) -> Self {
        PageError {
            err: err.into(),
            back_to: None,
        }
    }
}

impl PageError {
    /// For a page asked for without a session: signing in leads back to it.
    fn returning_to(err: ApiError, req: &HttpRequest) -> Self {
        let back_to = (req.method() == actix_web::http::Method::GET).then(|| req.uri().to_string());
        PageError { err, back_to }
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.err.fmt(f)
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.err.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let sign_in = match &self.back_to {
            Some(path) => format!("{SIGN_IN}?next={}", query_value(path)),
            None => SIGN_IN.to_owned(),
        };
        self.err.console_response(Some(&sign_in), error_page)
    }
}

pub type PageResult = Result<HttpResponse, PageError>;

/// The console's 404 page, for paths under `/console` (and `/assets`) that
/// name nothing.
pub fn not_found_page() -> HttpResponse {
    error_response(&ApiError::not_found("there is no such page"))
}

/// The error page for `err`, for answers built outside a handler (the CSRF
/// guard).
pub fn error_response(err: &ApiError) -> HttpResponse {
    err.console_response(Some(SIGN_IN), error_page)
}

fn error_page(status: u16, err: &ApiError) -> String {
    let title = match status {
        403 => "Not allowed",
        404 => "Not found",
        409 => "Conflict",
        429 => "Too many attempts",
        s if s >= 500 => "Unavailable",
        _ => "Something is wrong",
    };
    document(
        title,
        None,
        html! {
            main.narrow {
                h1 { (title) }
                p.notice.error role="alert" { (err.message()) }
                p.muted { "Error " (status) " · " code { (err.code()) } }
                p { a href="/console" { "Back to the console" } }
            }
        },
    )
    .into_string()
}

/// What the shell shows of the signed-in person.
pub struct Viewer {
    pub email: String,
    pub role: Role,
}

/// The whole document: head, the header with the navigation for `viewer`'s
/// role, the page, the footer.
pub fn document(title: &str, chrome: Option<(&Viewer, &str, &str, &str)>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · payg" }
                link rel="icon" type="image/svg+xml" href=(assets::icon_url());
                link rel="stylesheet" href=(assets::css_url());
                script src=(assets::js_url()) defer {}
            }
            body {
                header.top {
                    a.brand href="/console" { "payg" }
                    @if let Some((viewer, active, csrf, _)) = chrome {
                        nav aria-label="Main" {
                            (nav_link("/console", "This month", active))
                            (nav_link("/console/usage", "Usage", active))
                            (nav_link("/console/invoices", "Invoices", active))
                            (nav_link("/console/credit", "Credit", active))
                            (nav_link("/console/keys", "API keys", active))
                            (nav_link("/console/webhooks", "Webhooks", active))
                            (nav_link("/console/apis", "APIs", active))
                            (nav_link("/console/profile", "Profile", active))
                            @if viewer.role.can_do_finance() {
                                (nav_link("/console/finance", "Finance", active))
                            }
                            @if viewer.role == Role::Admin {
                                (nav_link("/console/admin", "Admin", active))
                                (nav_link("/console/admin/webhooks", "Admin webhooks", active))
                            }
                        }
                        form.signout method="post" action="/console/sign-out" {
                            input type="hidden" name=(CSRF_FIELD) value=(csrf);
                            span.who { (viewer.email) }
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                (main)
                footer {
                    @if let Some((_, _, _, zone)) = chrome {
                        p.muted { "Dates and periods are in the billing time zone, " strong { (zone) } "." }
                    }
                }
            }
        }
    }
}

fn nav_link(href: &str, label: &str, active: &str) -> Markup {
    let current = href == active;
    html! {
        a href=(href) aria-current=[current.then_some("page")] { (label) }
    }
}

/// The signed-in person on a console page: a [`Caller`] with an access
/// token's rights, from the session cookie — renewed with the refresh
/// cookie when the access token has expired. No session → 401, which the
/// console answers with a redirect to sign in.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleUser(pub Caller);

impl ConsoleUser {
    pub fn id(&self) -> uuid::Uuid {
        self.0.user_id
    }
}

impl FromRequest for ConsoleUser {
    type Error = PageError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            session::signed_in(&req, Purpose::Plain)
                .await
                .map(ConsoleUser)
                .map_err(|err| PageError::returning_to(err, &req))
        })
    }
}

/// A signed-in page's context: the caller, their account, the form token.
pub struct Signed {
    pub user: ConsoleUser,
    pub account: User,
    pub csrf: String,
    pub state: web::Data<AppState>,
    pub req: HttpRequest,
}

impl FromRequest for Signed {
    type Error = PageError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, PageError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let user = ConsoleUser::from_request(req, payload);
        let req = req.clone();
        Box::pin(async move {
            let user = user.await?;
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not registered")))?;
            let mut conn = state.db.get().await?;
            let account = User::find(&mut conn, user.id())
                .await?
                .ok_or_else(ApiError::unauthenticated)?;
            let csrf = session::csrf_token(&state, &req);
            Ok(Signed {
                user,
                account,
                csrf,
                state,
                req,
            })
        })
    }
}

impl Signed {
    pub fn zone(&self) -> Tz {
        self.state.config.billing_tz
    }

    /// A page in the shell, `active` naming its navigation entry.
    pub fn page(&self, title: &str, active: &str, main: Markup) -> HttpResponse {
        html_response(self.document(title, active, main))
    }

    /// The same page as a document, for an answer built elsewhere (a form
    /// shown again under its error's status).
    pub fn document(&self, title: &str, active: &str, main: Markup) -> Markup {
        let viewer = Viewer {
            email: self.account.email.clone(),
            role: self.user.0.role,
        };
        let zone = self.zone().name().to_owned();
        document(title, Some((&viewer, active, &self.csrf, &zone)), main)
    }

    /// The hidden CSRF field every form carries.
    pub fn csrf_field(&self) -> Markup {
        csrf_field(&self.csrf)
    }

    pub fn when(&self, at: DateTime<Utc>) -> String {
        instant(at, self.zone())
    }

    /// payg's address as the browser reached it (the first proxy's view,
    /// when a trusted proxy forwarded the request).
    pub fn base_url(&self) -> String {
        let forwarded = self.state.clients.forwarded(&self.req);
        let host = forwarded.host.unwrap_or_else(|| "localhost".to_owned());
        format!("{}://{host}", forwarded.proto)
    }

    pub async fn conn(&self) -> Result<crate::db::DbConn, PageError> {
        Ok(self.state.db.get().await.map_err(ApiError::from)?)
    }
}

pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(token); }
}

pub fn html_response(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// 303 to `location`: the answer to a form that worked (post, redirect, get).
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location))
        .finish()
}

/// The highest page number a pager takes (so page arithmetic cannot
/// overflow, whatever `?page=` says).
pub const MAX_PAGE: i64 = 1_000_000;

/// `?page=` checked: from 1 to [`MAX_PAGE`], 1 when absent.
pub fn page_number(page: Option<i64>) -> Result<i64, ApiError> {
    let page = page.unwrap_or(1);
    if (1..=MAX_PAGE).contains(&page) {
        Ok(page)
    } else {
        Err(ApiError::validation(format!("page must be from 1 to {MAX_PAGE}")))
    }
}

/// Previous and next links for page `page` of `total` rows, `per_page` a
/// page, `base` the page's URL with its query so far.
pub fn pager(base: &str, page: i64, per_page: i64, total: i64) -> Markup {
    let has_next = page.checked_mul(per_page).is_some_and(|seen| seen < total);
    html! {
        nav.pager aria-label="Pages" {
            @if page > 1 { a href={(base) "&page=" (page - 1)} { "← Previous" } }
            span { "Page " (page) }
            @if has_next { a href={(base) "&page=" (page + 1)} { "Next →" } }
        }
    }
}

/// A value for a query string, percent-encoded (the page escapes it for
/// HTML besides).
pub fn query_value(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)])
        .map(|s| s.trim_start_matches("v=").to_owned())
        .unwrap_or_default()
}

/// An amount exactly as the API writes it, with its currency.
pub fn money(amount: Decimal, currency: &str) -> Markup {
    html! { span.money { (amount) " " (currency) } }
}

/// An instant in the billing zone, minutes precision, zone abbreviation.
pub fn instant(at: DateTime<Utc>, zone: Tz) -> String {
    at.with_timezone(&zone).format("%Y-%m-%d %H:%M %Z").to_string()
}

pub fn day(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// A form shown again with its error, under the status (and headers, such
/// as `Retry-After`) the API gives that error.
pub fn form_failed(err: &ApiError, page: Markup) -> HttpResponse {
    err.console_response(None, |_, _| page.into_string())
}

/// A notice after an action (`?done=…` on the page it redirected to).
pub fn notice(text: Option<&str>, kind: &str) -> Markup {
    html! {
        @if let Some(text) = text {
            p class={"notice " (kind)} role=(if kind == "error" { "alert" } else { "status" }) { (text) }
        }
    }
}

/// What an empty list says.
pub fn empty(text: &str) -> Markup {
    html! { p.empty { (text) } }
}
