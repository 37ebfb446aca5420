//! Which headers cross the gateway, in each direction.
//!
//! Both ways: the hop-by-hop headers of RFC 9110 §7.6.1 (`Connection` and
//! every header it names, `Keep-Alive`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`, `Proxy-*`) describe one connection, not
//! the message, and never cross; `Content-Length` is set again from the
//! body that is actually sent.
//!
//! Towards the upstream, also removed: the consumer's credentials
//! (`Authorization`, `X-API-Key`, payg's own cookies), anything that could
//! pass for payg (`X-Payg-*`, `Payg-Signature`, in any case, however often
//! repeated), the forwarding headers payg sets itself (`X-Forwarded-*`,
//! `Forwarded`), `Host` (unless the API preserves it) and `Expect` (payg
//! answered the `100-continue` itself).

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Cookies whose names start with these are payg's (its console session),
/// never the upstream's.
const PAYG_COOKIE_PREFIXES: [&str; 3] = ["payg", "__host-payg", "__secure-payg"];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.as_str().starts_with("proxy-")
}

/// The header names a `Connection` header lists (they are hop-by-hop too).
fn named_by_connection(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether a request asks to switch protocols (a WebSocket upgrade).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

/// The request headers that go to the upstream (repeats kept, in order).
pub fn to_upstream(headers: &HeaderMap, preserve_host: bool) -> Vec<(HeaderName, HeaderValue)> {
    let connection = named_by_connection(headers);
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        let dropped = is_hop_by_hop(name)
            || connection.iter().any(|c| c == n)
            || n == "content-length"
            || n == "expect"
            || (n == "host" && !preserve_host)
            || n == "authorization"
            || n == "x-api-key"
            || n.starts_with("x-payg-")
            || n == "payg-signature"
            || n.starts_with("x-forwarded-")
            || n == "forwarded";
        if dropped {
            continue;
        }
        if n == "cookie" {
            if let Some(kept) = without_payg_cookies(value) {
                out.push((name.clone(), kept));
            }
            continue;
        }
        out.push((name.clone(), value.clone()));
    }
    out
}

/// A `Cookie` header without payg's own cookies; `None` if none is left.
fn without_payg_cookies(value: &HeaderValue) -> Option<HeaderValue> {
    let Ok(text) = value.to_str() else {
        // Not text: no cookie of payg's can be in it intact; pass it on.
        return Some(value.clone());
    };
    let kept: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !PAYG_COOKIE_PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join("; ")).ok()
}

/// The response headers that go back to the client.
pub fn to_client(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let connection = named_by_connection(headers);
    headers.iter().filter(move |(name, _)| {
        !is_hop_by_hop(name) && name.as_str() != "content-length" && !connection.iter().any(|c| c == name.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        m
    }

    /// Sorted: actix's header map does not keep the order of names.
    fn names(out: &[(HeaderName, HeaderValue)]) -> Vec<&str> {
        let mut names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn credentials_spoofed_payg_headers_and_hop_by_hop_headers_never_reach_the_upstream() {
        let incoming = map(&[
            ("authorization", "Bearer secret"),
            ("x-api-key", "payg_secret"),
            ("x-payg-user-id", "someone-else"),
            ("x-payg-user-id", "again"),
            ("payg-signature", "t=1,v1=00"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("expect", "100-continue"),
            ("content-length", "3"),
            ("host", "payg.example"),
            ("accept", "application/json"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ]);
        let out = to_upstream(&incoming, false);
        assert_eq!(names(&out), ["accept", "x-custom", "x-custom"]);
        let kept = to_upstream(&incoming, true);
        assert!(names(&kept).contains(&"host"));
    }

    #[test]
    fn only_payg_cookies_are_removed() {
        let incoming = map(&[("cookie", "a=1; payg_session=s; __Host-payg-csrf=c; b=2")]);
        let out = to_upstream(&incoming, false);
        assert_eq!(out[0].1, "a=1; b=2");
        assert!(to_upstream(&map(&[("cookie", "payg_session=s")]), false).is_empty());
    }

    #[test]
    fn hop_by_hop_headers_do_not_come_back() {
        let upstream = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("content-type", "text/plain"),
            ("set-cookie", "u=1"),
        ]);
        let mut back: Vec<&str> = to_client(&upstream).map(|(n, _)| n.as_str()).collect();
        back.sort_unstable();
        assert_eq!(back, ["content-type", "set-cookie"]);
    }
}
