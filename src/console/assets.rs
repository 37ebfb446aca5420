//! The console's stylesheet, script and icon, compiled into the binary and served
//! under `/assets`. Their URLs carry a hash of their content, so a browser
//! may keep them for a year and still never runs an old script with a new
//! page.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use actix_web::http::header;
use sha2::{Digest, Sha256};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");
const ICON: &str = include_str!("assets/favicon.svg");

fn versioned(name: &str, body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("/assets/{name}?v={}", &hex::encode(digest)[..12])
}

static CSS_URL: LazyLock<String> = LazyLock::new(|| versioned("console.css", CSS));
static JS_URL: LazyLock<String> = LazyLock::new(|| versioned("console.js", JS));
static ICON_URL: LazyLock<String> = LazyLock::new(|| versioned("favicon.svg", ICON));

pub fn css_url() -> &'static str {
    &CSS_URL
}

pub fn js_url() -> &'static str {
    &JS_URL
}

pub fn icon_url() -> &'static str {
    &ICON_URL
}

/// `GET /assets/{name}?v=…`; `None` for a name that is not an asset. Only
/// the URL of this build's content (`v` its hash) may be kept for a year:
/// during a rolling deploy a page from a newer instance can ask an older
/// one, which must not let its old file be cached under the new URL.
pub fn serve(name: &str, version: Option<&str>) -> Option<HttpResponse> {
    let (body, content_type, url) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8", css_url()),
        "console.js" => (JS, "text/javascript; charset=utf-8", js_url()),
        "favicon.svg" => (ICON, "image/svg+xml", icon_url()),
        _ => return None,
    };
    let current = version.is_some_and(|v| url.ends_with(&format!("?v={v}")));
    let cache = if current {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let res = HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, cache))
        .body(body);
    Some(res)
}
