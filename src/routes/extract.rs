//! Who is calling, as handlers take it: the [`AuthUser`], [`SessionUser`],
//! [`FinanceUser`] and [`AdminUser`] extractors, and the
//! [`authenticate_first`] middleware.
//! The checks themselves are `auth`'s; this is the web glue around them.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use uuid::Uuid;

use crate::auth::{AuthError, Authenticator, Caller, Purpose};
use crate::error::ApiError;

/// Extractor for handlers that need an authenticated caller. Reuses the
/// caller the metering middleware (or [`authenticate_first`]) already
/// authenticated, if any.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Caller);

impl AuthUser {
    pub fn id(&self) -> Uuid {
        self.0.user_id
    }
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        if let Some(caller) = req.extensions().get::<Caller>().copied() {
            return Box::pin(async move { Ok(AuthUser(caller)) });
        }
        let pre = req.extensions_mut().remove::<PreAuthenticated>();
        if let Some(PreAuthenticated(outcome)) = pre {
            if let Ok(caller) = &outcome {
                req.extensions_mut().insert(*caller);
            }
            return Box::pin(async move { outcome.map(AuthUser).map_err(ApiError::from) });
        }
        let req = req.clone();
        Box::pin(async move { authenticate_now(&req, Purpose::Plain).await.map(AuthUser) })
    }
}

/// Authenticates `req` for `purpose` and leaves the caller in its
/// extensions, for the extractors that found nothing authenticated yet.
async fn authenticate_now(req: &HttpRequest, purpose: Purpose) -> Result<Caller, ApiError> {
    let authenticator = req
        .app_data::<web::Data<Authenticator>>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the Authenticator is not registered as app data")))?;
    let caller = authenticator.authenticate(req, purpose).await?;
    req.extensions_mut().insert(caller);
    Ok(caller)
}

/// An [`AuthUser`] signed in with an access token (an API key gets 401
/// `access_token_required`): for managing keys, sessions and the profile.
/// Plain [`AuthUser`] — which takes a key too — is for metered calls and for
/// reading the caller's own usage, cost and invoices, and nothing else.
#[derive(Debug, Clone, Copy)]
pub struct SessionUser(pub AuthUser);

/// An [`AuthUser`] with the finance or admin role, signed in with an access
/// token. Checked as the handler's arguments are extracted, so a caller
/// without the role gets 403 whatever the body holds.
#[derive(Debug, Clone, Copy)]
pub struct FinanceUser(pub AuthUser);

/// An [`AuthUser`] with the admin role, signed in with an access token.
#[derive(Debug, Clone, Copy)]
pub struct AdminUser(pub AuthUser);

macro_rules! role_extractor {
    ($name:ident, $check:ident) => {
        impl std::ops::Deref for $name {
            type Target = AuthUser;

            fn deref(&self) -> &AuthUser {
                &self.0
            }
        }

        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

            fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
                let user = AuthUser::from_request(req, payload);
                Box::pin(async move {
                    let user = user.await?;
                    user.0.$check()?;
                    Ok($name(user))
                })
            }
        }
    };
}
role_extractor!(SessionUser, require_access_token);

/// The caller of `POST /auth/logout`: an access token, accepted even while
/// Redis cannot say whether its session already ended, and when it did
/// (see `auth::Purpose::EndSession`), so a logout during an outage still
/// revokes the session's refresh tokens and its retry finishes the job.
#[derive(Debug, Clone, Copy)]
pub struct EndingSession(pub AuthUser);

impl FromRequest for EndingSession {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // What `authenticate_first` found stands, except a refusal for not
        // knowing the deny-list or for being on it, which ending a session
        // does not care about: only then ask again, for this purpose.
        let pre = req.extensions_mut().remove::<PreAuthenticated>();
        let req = req.clone();
        Box::pin(async move {
            let caller = match pre {
                Some(PreAuthenticated(Ok(caller))) => caller,
                None | Some(PreAuthenticated(Err(AuthError::RevocationsUnknown | AuthError::InvalidToken))) => {
                    authenticate_now(&req, Purpose::EndSession).await?
                }
                Some(PreAuthenticated(Err(err))) => return Err(err.into()),
            };
            caller.require_access_token()?;
            Ok(EndingSession(AuthUser(caller)))
        })
    }
}
role_extractor!(FinanceUser, require_finance);
role_extractor!(AdminUser, require_admin);

/// What [`authenticate_first`] found, for the [`AuthUser`] extractor.
struct PreAuthenticated(Result<Caller, AuthError>);

/// Middleware for the API routes that are not metered (the metering
/// middleware authenticates those): authenticates a request that carries a
/// credential before any extractor runs. actix polls a handler's extractors
/// together, so otherwise a malformed body (400) could be answered before a
/// bad token (401), telling a stranger about the request's shape.
pub async fn authenticate_first(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let has_credential = req.headers().contains_key(header::AUTHORIZATION) || req.headers().contains_key("x-api-key");
    if has_credential && let Some(authenticator) = req.app_data::<web::Data<Authenticator>>().cloned() {
        let outcome = authenticator.authenticate(req.request(), Purpose::Plain).await;
        req.extensions_mut().insert(PreAuthenticated(outcome));
    }
    next.call(req).await
}
