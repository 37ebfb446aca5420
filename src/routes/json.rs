//! Request bodies: JSON objects only.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Like `web::Json<T>` (and named alike so utoipa infers request bodies), but the body must be a JSON object: serde would
/// otherwise also accept a struct written as an array of its field values
/// (`[null, null]` for a body of optional fields), which no client means.
/// Errors are the same as `web::Json`'s (see `error::json_error`).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, actix_web::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // `RawValue` keeps `web::Json`'s content-type, size and syntax checks
        // without building a value tree; the text is then read straight into
        // `T`, so duplicate fields are still refused.
        let raw = web::Json::<Box<RawValue>>::from_request(req, payload);
        Box::pin(async move {
            let web::Json(raw) = raw.await?;
            if !raw.get().starts_with('{') {
                return Err(ApiError::validation("the body must be a JSON object").into());
            }
            serde_json::from_str(raw.get())
                .map(Json)
                .map_err(|e| ApiError::from_json(&e).into())
        })
    }
}
