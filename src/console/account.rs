//! Signing up, in and out, and the profile with its billing details.

use actix_web::{HttpRequest, HttpResponse, web};
use maud::{Markup, html};
use serde::Deserialize;

use super::page::{self, PageError, PageResult, Signed};
use super::session;
use crate::actions;
use crate::app::AppState;
use crate::auth::{AuthError, Purpose};
use crate::domain::text::{BillingText, CountryCode, Email, Name, Password, clearable};
use crate::error::ApiError;
use crate::models::User;
use crate::models::user::ProfileChanges;

/// Where to go after signing in: a console path only (never another site),
/// in plain URL characters (so it is a valid `Location` as it is).
fn next_or_home(next: Option<&str>) -> &str {
    let safe = |n: &str| {
        (n == "/console" || n.starts_with("/console/") || n.starts_with("/console?"))
            && n.len() <= 512
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/?=&-_.~%+".contains(&b))
            && !n.split(['/', '?']).any(|segment| segment == "." || segment == "..")
    };
    match next {
        Some(n) if safe(n) => n,
        _ => "/console",
    }
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

fn anonymous_page(title: &str, main: Markup) -> HttpResponse {
    page::html_response(page::document(title, None, main))
}

fn sign_in_markup(csrf: &str, email: &str, error: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        main.narrow {
            h1 { "Sign in" }
            (page::notice(error, "error"))
            form.stack method="post" action="/console/sign-in" {
                (page::csrf_field(csrf))
                @if let Some(next) = next { input type="hidden" name="next" value=(next); }
                label for="email" { "Email" }
                input #email type="email" name="email" value=(email) autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            p { "New here? " a href="/console/sign-up" { "Create an account" } }
        }
    }
}

/// `GET /console/sign-in`.
pub async fn sign_in_form(state: web::Data<AppState>, req: HttpRequest, query: web::Query<Next>) -> HttpResponse {
    let csrf = session::csrf_token(&state, &req);
    anonymous_page("Sign in", sign_in_markup(&csrf, "", None, query.next.as_deref()))
}

#[derive(Deserialize)]
pub struct SignInForm {
    email: String,
    password: String,
    next: Option<String>,
}

/// `POST /console/sign-in`: the API's login (lockout, hashing bound), its
/// session kept in cookies.
pub async fn sign_in(state: web::Data<AppState>, req: HttpRequest, form: web::Form<SignInForm>) -> HttpResponse {
    let SignInForm { email, password, next } = form.into_inner();
    match actions::log_in(&state, &req, &email, password).await {
        Ok(issued) => {
            end_previous_session(&state, &req).await;
            session::renew_csrf(&state, &req);
            session::keep_session(&state, &req, issued);
            page::see_other(next_or_home(next.as_deref()))
        }
        Err(err) => {
            let csrf = session::csrf_token(&state, &req);
            page::form_failed(
                &err,
                page::document(
                    "Sign in",
                    None,
                    sign_in_markup(&csrf, &email, Some(err.message()), next.as_deref()),
                ),
            )
        }
    }
}

/// Signing in over a session this browser still holds ends that one: its
/// cookies are about to be replaced, and nothing else could end it. Best
/// effort: a failure (logged) does not stand in the way of the new session.
async fn end_previous_session(state: &AppState, req: &HttpRequest) {
    if let Some(previous) = session::refresh_cookie(req)
        && let Err(err) = actions::end_session_by_refresh_token(state, &previous).await
    {
        tracing::warn!(
            code = err.code(),
            "could not end the session this browser held before signing in"
        );
    }
}

fn sign_up_markup(csrf: &str, email: &str, name: &str, error: Option<&str>) -> Markup {
    html! {
        main.narrow {
            h1 { "Create an account" }
            (page::notice(error, "error"))
            form.stack method="post" action="/console/sign-up" {
                (page::csrf_field(csrf))
                label for="name" { "Name" }
                input #name type="text" name="name" value=(name) autocomplete="name" required maxlength="200";
                label for="email" { "Email" }
                input #email type="email" name="email" value=(email) autocomplete="username" required;
                label for="password" { "Password " span.muted { "(at least 12 characters)" } }
                input #password type="password" name="password" autocomplete="new-password" required minlength="12";
                button type="submit" { "Create account" }
            }
            p { "Have an account? " a href="/console/sign-in" { "Sign in" } }
        }
    }
}

/// `GET /console/sign-up`.
pub async fn sign_up_form(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let csrf = session::csrf_token(&state, &req);
    anonymous_page("Create an account", sign_up_markup(&csrf, "", "", None))
}

#[derive(Deserialize)]
pub struct SignUpForm {
    email: String,
    password: String,
    name: String,
}

/// `POST /console/sign-up`: registers as `POST /auth/register` does, then
/// signs in.
pub async fn sign_up(state: web::Data<AppState>, req: HttpRequest, form: web::Form<SignUpForm>) -> HttpResponse {
    let SignUpForm { email, password, name } = form.into_inner();
    let outcome = async {
        let checked: (Email, Password, Name) = (email.parse()?, password.parse()?, name.parse()?);
        let user = actions::register(&state, &req, checked.0, checked.1, checked.2).await?;
        actions::start_session(&state, &user).await
    }
    .await;
    match outcome {
        Ok(issued) => {
            end_previous_session(&state, &req).await;
            session::renew_csrf(&state, &req);
            session::keep_session(&state, &req, issued);
            page::see_other("/console")
        }
        Err(err) => {
            let csrf = session::csrf_token(&state, &req);
            page::form_failed(
                &err,
                page::document(
                    "Create an account",
                    None,
                    sign_up_markup(&csrf, &email, &name, Some(err.message())),
                ),
            )
        }
    }
}

/// `POST /console/sign-out`: ends the session on every instance, as
/// `POST /auth/logout` does (an expired access token's session is ended by
/// its refresh token), then clears the cookies. When the session cannot be
/// ended (the database or Redis is down), the error page says so and the
/// cookies stay, so signing out again finishes the job.
pub async fn sign_out(state: web::Data<AppState>, req: HttpRequest) -> PageResult {
    let refresh = session::refresh_cookie(&req);
    let access = req.cookie(session::SESSION_COOKIE).map(|c| c.value().to_owned());
    let caller = match &access {
        Some(token) => {
            state
                .authenticator
                .authenticate_access_token(token, Purpose::EndSession)
                .await
        }
        None => Err(AuthError::Unauthenticated),
    };
    match caller {
        Ok(caller) => actions::end_session(&state, &caller, refresh.as_deref()).await?,
        Err(AuthError::InvalidToken | AuthError::Unauthenticated | AuthError::Suspended) => {
            if let Some(refresh) = &refresh {
                actions::end_session_by_refresh_token(&state, refresh).await?;
            }
        }
        Err(other) => return Err(ApiError::from(other).into()),
    }
    session::forget_session(&state, &req);
    Ok(page::see_other("/console/sign-in"))
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /console/profile`.
pub async fn profile(signed: Signed, query: web::Query<Done>) -> PageResult {
    let me = &signed.account;
    let field = |id: &'static str, label: &'static str, value: &Option<String>, auto: &'static str| {
        html! {
            label for=(id) { (label) }
            input id=(id) type="text" name=(id) value=(value.as_deref().unwrap_or("")) autocomplete=(auto) maxlength="200";
        }
    };
    let saved = query.done.as_deref().map(|_| "Saved.");
    let main = html! {
        main {
            h1 { "Profile and billing details" }
            (page::notice(saved, "ok"))
            dl.facts {
                dt { "Email" } dd { (me.email) }
                dt { "Role" } dd { (me.role) }
                dt { "Member since" } dd { (signed.when(me.created_at)) }
            }
            form.stack method="post" action="/console/profile" {
                (signed.csrf_field())
                p.muted { "Invoices show these details as they are when the month is closed." }
                label for="name" { "Name" }
                input #name type="text" name="name" value=(me.name) autocomplete="name" required maxlength="200";
                (field("company", "Company", &me.company, "organization"))
                (field("address_line1", "Address", &me.address_line1, "address-line1"))
                (field("address_line2", "Address (line 2)", &me.address_line2, "address-line2"))
                (field("city", "City", &me.city, "address-level2"))
                (field("postal_code", "Postal code", &me.postal_code, "postal-code"))
                label for="country" { "Country " span.muted { "(two letters, e.g. NO)" } }
                input #country type="text" name="country" value=(me.country.as_deref().unwrap_or("")) autocomplete="country" maxlength="2" pattern="[A-Za-z]{2}";
                (field("tax_id", "Tax id", &me.tax_id, "off"))
                button type="submit" { "Save" }
            }
        }
    };
    Ok(signed.page("Profile", "/console/profile", main))
}

/// The profile form: every field is sent; a blank one clears it (as the
/// API's `PATCH /me` clears a blank billing field).
#[derive(Deserialize)]
pub struct ProfileForm {
    name: Name,
    #[serde(default, deserialize_with = "clearable")]
    company: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    address_line1: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    address_line2: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    city: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    postal_code: Option<Option<BillingText>>,
    #[serde(default, deserialize_with = "clearable")]
    country: Option<Option<CountryCode>>,
    #[serde(default, deserialize_with = "clearable")]
    tax_id: Option<Option<BillingText>>,
}

/// `POST /console/profile`.
pub async fn update_profile(signed: Signed, form: web::Form<ProfileForm>) -> PageResult {
    let f = form.into_inner();
    let text = |v: Option<Option<BillingText>>| v.map(|v| v.map(BillingText::into_inner));
    let changes = ProfileChanges {
        name: Some(f.name.into_inner()),
        company: text(f.company),
        address_line1: text(f.address_line1),
        address_line2: text(f.address_line2),
        city: text(f.city),
        postal_code: text(f.postal_code),
        country: f.country.map(|v| v.map(CountryCode::into_inner)),
        tax_id: text(f.tax_id),
    };
    let mut conn = signed.conn().await?;
    User::update_profile(&mut conn, signed.user.id(), &changes)
        .await
        .map_err(PageError::from)?;
    Ok(page::see_other("/console/profile?done=saved"))
}
