//! The console's session and its CSRF protection.
//!
//! A console session is an ordinary payg login session (an access token
//! and a refresh token, `auth::sessions`) kept in two cookies instead of a
//! client's memory: `HttpOnly` (no script can read them), `SameSite=Strict`
//! (no other site's page sends them), `Path=/console` (so they never even
//! reach `/api/v1` or a gateway route, which ignore cookies anyway), and
//! `Secure` when the request came over TLS through a trusted proxy. They
//! are session cookies: closing the browser ends them. The access token
//! gives the console exactly its rights (`ConsoleUser` is a `Caller` with an
//! access-token credential); when it expires, the refresh token renews the
//! pair in place, and signing out ends the session everywhere as
//! `POST /auth/logout` does (the same `actions::end_session`; with an
//! expired access token, `actions::end_session_by_refresh_token`).
//!
//! CSRF: every form carries a token that is the keyed hash of a random
//! value held in a third `HttpOnly` cookie (a signed double-submit cookie)
//! and of the session the form was rendered in: another site can neither
//! read the cookie nor compute the hash, and a token from one session does
//! not fit another. The value is replaced at sign-in and sign-out. On every
//! POST, before any handler runs ([`csrf_ok`], called by the console's
//! `guard`), the browser must also say the request is the site's own:
//! `Origin` equal to the console's own origin, or, where a browser sends no
//! `Origin`, `Sec-Fetch-Site: same-origin`; a request with neither is
//! refused. That also stops a site that managed to plant cookies (a sibling
//! subdomain) from posting with them.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, web};

use crate::actions;
use crate::app::AppState;
use crate::auth::sessions::IssuedSession;
use crate::auth::{AuthError, Caller, Credential, Purpose, tokens};
use crate::error::ApiError;

pub const SESSION_COOKIE: &str = "payg_session";
pub const REFRESH_COOKIE: &str = "payg_refresh";
pub const CSRF_COOKIE: &str = "payg_csrf";
/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// Where the cookies are sent: the console only.
pub const COOKIE_PATH: &str = "/console";
/// Where a request without a session is sent.
pub const SIGN_IN: &str = "/console/sign-in";

/// Cookies a handler or extractor wants set (or cleared) on its response;
/// the console's `guard` middleware adds them.
#[derive(Default)]
pub struct CookieJar(pub Vec<Cookie<'static>>);

fn queue(req: &HttpRequest, cookie: Cookie<'static>) {
    let mut ext = req.extensions_mut();
    match ext.get_mut::<CookieJar>() {
        Some(jar) => jar.0.push(cookie),
        None => {
            ext.insert(CookieJar(vec![cookie]));
        }
    }
}

/// Whether the browser reached payg over TLS (through a trusted proxy:
/// payg itself listens on plain HTTP).
pub fn over_tls(state: &AppState, req: &HttpRequest) -> bool {
    state.clients.forwarded(req).proto.eq_ignore_ascii_case("https")
}

fn cookie(state: &AppState, req: &HttpRequest, name: &'static str, value: String) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_tls(state, req))
        .finish()
}

fn removal(state: &AppState, req: &HttpRequest, name: &'static str) -> Cookie<'static> {
    let mut c = cookie(state, req, name, String::new());
    c.make_removal();
    c
}

/// Sets the cookies of a session just started or renewed.
pub fn keep_session(state: &AppState, req: &HttpRequest, session: IssuedSession) {
    queue(req, cookie(state, req, SESSION_COOKIE, session.access.token));
    queue(req, cookie(state, req, REFRESH_COOKIE, session.refresh_token));
}

/// Clears the session's cookies, and replaces the CSRF value, so a form
/// rendered before (by anyone) cannot be posted after.
pub fn forget_session(state: &AppState, req: &HttpRequest) {
    queue(req, removal(state, req, SESSION_COOKIE));
    queue(req, removal(state, req, REFRESH_COOKIE));
    new_csrf_seed(state, req);
}

/// The CSRF value of this request: the cookie's, or one made for it.
#[derive(Clone)]
struct CsrfSeed(String);

fn new_csrf_seed(state: &AppState, req: &HttpRequest) -> String {
    let seed = tokens::generate("");
    queue(req, cookie(state, req, CSRF_COOKIE, seed.clone()));
    req.extensions_mut().insert(CsrfSeed(seed.clone()));
    seed
}

/// The token of the forms rendered for `seed` in `session` (`None`: signed
/// out).
fn csrf_for(state: &AppState, seed: &str, session: Option<uuid::Uuid>) -> String {
    let session = session.map_or_else(|| "-".to_owned(), |s| s.to_string());
    state
        .authenticator
        .hasher()
        .hash(&format!("console-csrf\0{seed}\0{session}"))
}

/// The session this request's forms belong to: the one signed in for it
/// (after a renewal, too), else the one its session cookie names, expired
/// or not.
fn form_session(state: &AppState, req: &HttpRequest) -> Option<uuid::Uuid> {
    let signed_in = req.extensions().get::<Caller>().map(|caller| caller.credential);
    match signed_in {
        Some(Credential::AccessToken { session, .. }) => session,
        _ => req
            .cookie(SESSION_COOKIE)
            .and_then(|c| state.authenticator.jwt().session_of(c.value())),
    }
}

/// The token this request's forms must carry.
pub fn csrf_token(state: &AppState, req: &HttpRequest) -> String {
    let known = req.extensions().get::<CsrfSeed>().cloned();
    let seed = match known {
        Some(CsrfSeed(seed)) => seed,
        None => match req.cookie(CSRF_COOKIE).map(|c| c.value().to_owned()) {
            Some(seed) if plausible_seed(&seed) => seed,
            _ => new_csrf_seed(state, req),
        },
    };
    csrf_for(state, &seed, form_session(state, req))
}

/// Replaces the CSRF value (at sign-in: a value planted before cannot
/// follow the new session).
pub fn renew_csrf(state: &AppState, req: &HttpRequest) {
    new_csrf_seed(state, req);
}

fn plausible_seed(seed: &str) -> bool {
    (16..=128).contains(&seed.len())
        && seed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Constant-time equality of two tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Is this state-changing request the console's own? The browser says the
/// request came from the console's own origin (`Origin`, compared with the
/// scheme and host the browser used, through a trusted proxy if any; or,
/// without `Origin`, `Sec-Fetch-Site: same-origin`), and the body's CSRF
/// field is the keyed hash of the CSRF cookie and the session.
pub fn csrf_ok(state: &AppState, req: &HttpRequest, body: &[u8]) -> bool {
    let fetch_site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| site != "same-origin") {
        return false;
    }
    match req.headers().get(header::ORIGIN).map(|o| o.to_str()) {
        Some(Ok(origin)) => {
            let expected = own_origin(state, req);
            if expected.is_none_or(|expected| normal_origin(origin) != expected) {
                tracing::warn!(origin, expected = ?own_origin(state, req), "console form from another origin");
                return false;
            }
        }
        Some(Err(_)) => return false,
        None if fetch_site.is_none() => return false,
        None => {}
    }
    let Some(seed) = req.cookie(CSRF_COOKIE).map(|c| c.value().to_owned()) else {
        return false;
    };
    let sent = form_urlencoded_field(body, CSRF_FIELD);
    plausible_seed(&seed) && sent.is_some_and(|sent| same(&sent, &csrf_for(state, &seed, form_session(state, req))))
}

/// The console's origin as the browser reached it: the scheme and host a
/// trusted proxy forwarded, else payg's own (`Host`, or the request's
/// authority under HTTP/2), normalised.
fn own_origin(state: &AppState, req: &HttpRequest) -> Option<String> {
    let ours = state.clients.forwarded(req);
    let host = ours
        .host
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    Some(normal_origin(&format!("{}://{host}", ours.proto)))
}

/// An origin in one spelling: lower case, without the scheme's default port
/// (browsers never send `:443` or `:80` in `Origin`; a proxy may forward
/// them in the host).
fn normal_origin(origin: &str) -> String {
    let origin = origin.trim().to_ascii_lowercase();
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if origin.starts_with(scheme)
            && let Some(bare) = origin.strip_suffix(port)
        {
            return bare.to_owned();
        }
    }
    origin
}

/// One field of an `application/x-www-form-urlencoded` body.
/// (actix's `web::Form` parses with serde_urlencoded too.)
fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The signed-in caller behind this request's session cookies, renewing
/// an expired access token with the refresh cookie (the new pair is queued
/// for the response). No session → 401.
pub async fn signed_in(req: &HttpRequest, purpose: Purpose) -> Result<Caller, ApiError> {
    if let Some(caller) = req.extensions().get::<Caller>().copied() {
        return Ok(caller);
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState is not registered")))?;
    let access = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
    let refresh = req.cookie(REFRESH_COOKIE).map(|c| c.value().to_owned());
    let first = match &access {
        Some(token) => state.authenticator.authenticate_access_token(token, purpose).await,
        None => Err(AuthError::Unauthenticated),
    };
    let caller = match first {
        Ok(caller) => caller,
        // Expired, or ended: the refresh token says which (a session ended
        // anywhere has its refresh tokens revoked).
        Err(AuthError::InvalidToken | AuthError::Unauthenticated) if refresh.is_some() => {
            let renewed = actions::refresh(&state, req, refresh.as_deref().unwrap_or_default()).await;
            let session = match renewed {
                Ok(session) => session,
                // The session is over (revoked, expired, reused, or the
                // account suspended): its cookies go.
                Err(err) if matches!(err.code(), "unauthorized" | "account_suspended") => {
                    forget_session(&state, req);
                    return Err(err);
                }
                // Throttled, or the database is away: the session may be
                // fine, so its cookies stay for the next try.
                Err(err) => return Err(err),
            };
            let token = session.access.token.clone();
            keep_session(&state, req, session);
            state.authenticator.authenticate_access_token(&token, purpose).await?
        }
        Err(err) => {
            if matches!(err, AuthError::InvalidToken | AuthError::Unauthenticated) && access.is_some() {
                forget_session(&state, req);
            }
            return Err(err.into());
        }
    };
    req.extensions_mut().insert(caller);
    Ok(caller)
}

/// The signed-in caller's session tokens as the browser holds them, for
/// signing out.
pub fn refresh_cookie(req: &HttpRequest) -> Option<String> {
    req.cookie(REFRESH_COOKIE).map(|c| c.value().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_in_one_spelling() {
        assert_eq!(
            normal_origin("HTTPS://Billing.Example.com:443"),
            "https://billing.example.com"
        );
        assert_eq!(normal_origin("http://example.com:80"), "http://example.com");
        assert_eq!(normal_origin("http://example.com:8080"), "http://example.com:8080");
        assert_eq!(normal_origin("https://[::1]:443"), "https://[::1]");
        assert_eq!(normal_origin("https://[::1]:8443"), "https://[::1]:8443");
        assert_eq!(
            normal_origin("http://example.com:443"),
            "http://example.com:443",
            "not http's default"
        );
    }
}
