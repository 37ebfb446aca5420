//! Request bodies: JSON objects only.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::DeserializeOwned;

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
        let value = web::Json::<serde_json::Value>::from_request(req, payload);
        Box::pin(async move {
            let web::Json(value) = value.await?;
            if !value.is_object() {
                return Err(ApiError::validation("the body must be a JSON object").into());
            }
            T::deserialize(value)
                .map(Json)
                .map_err(|e| ApiError::from_json(&e).into())
        })
    }
}
