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
//! repeated, and spelt with `_` for `-` too: CGI-style servers read
//! `X_Payg_User_Id` as `X-Payg-User-Id`), the forwarding headers payg sets
//! itself (`X-Forwarded-*`, `Forwarded`), `Host` (unless the API preserves
//! it) and `Expect` (payg answered the `100-continue` itself).
//!
//! Towards the client, also removed: any `Set-Cookie` for a cookie named
//! like payg's own, so an upstream can never set or clear a payg session.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// A cookie named `payg`, or starting with one of these (any case), is
/// payg's own (its console session), never the upstream's.
const PAYG_COOKIE_PREFIXES: [&str; 4] = ["payg_", "payg-", "__host-payg", "__secure-payg"];

fn is_payg_cookie(name: &[u8]) -> bool {
    let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
    name == "payg" || PAYG_COOKIE_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn is_hop_by_hop_name(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
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

/// Whether a request asks to switch to WebSocket, which the gateway does
/// not carry. Other upgrade offers (`h2c`) are optional for the server and
/// are simply not passed on, like every hop-by-hop header.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(header::UPGRADE).any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .to_ascii_lowercase()
            .contains("websocket")
    })
}

/// The request headers that go to the upstream (repeats kept, in order).
pub fn to_upstream(headers: &HeaderMap, preserve_host: bool) -> Vec<(HeaderName, HeaderValue)> {
    let connection = named_by_connection(headers);
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        // Compared with `_` read as `-`, as CGI-style upstreams read it.
        let spelt: std::borrow::Cow<'_, str> = if name.as_str().contains('_') {
            name.as_str().replace('_', "-").into()
        } else {
            name.as_str().into()
        };
        let n = spelt.as_ref();
        let dropped = is_hop_by_hop_name(n)
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
/// Read as bytes: a cookie value that is not ASCII must not let the whole
/// header (payg's cookies with it) through.
fn without_payg_cookies(value: &HeaderValue) -> Option<HeaderValue> {
    let kept: Vec<&[u8]> = value
        .as_bytes()
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| !is_payg_cookie(pair.split(|b| *b == b'=').next().unwrap_or_default()))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok()
}

/// The response headers that go back to the client.
pub fn to_client(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let connection = named_by_connection(headers);
    headers.iter().filter(move |(name, value)| {
        let n = name.as_str();
        let sets_payg_cookie =
            n == "set-cookie" && is_payg_cookie(value.as_bytes().split(|b| *b == b'=').next().unwrap_or_default());
        !is_hop_by_hop_name(n) && n != "content-length" && !sets_payg_cookie && !connection.iter().any(|c| c == n)
    })
}

/// A `Content-Length` as a number (absent or unreadable: `None`).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
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
            ("x_payg_user_id", "underscored"),
            ("payg_signature", "t=1,v1=00"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_api_key", "payg_secret"),
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
    fn only_payg_cookies_are_removed_whatever_else_the_header_holds() {
        let incoming = map(&[("cookie", "a=1; payg_session=s; __Host-payg-csrf=c; paygate=keep; b=2")]);
        let out = to_upstream(&incoming, false);
        assert_eq!(out[0].1, "a=1; paygate=keep; b=2");
        assert!(to_upstream(&map(&[("cookie", "payg_session=s")]), false).is_empty());
        // A value that is not ASCII does not let payg's cookie through.
        let mut m = HeaderMap::new();
        m.append(
            HeaderName::from_static("cookie"),
            HeaderValue::from_bytes("pref=caf\u{e9}; payg_session=s".as_bytes()).unwrap(),
        );
        let out = to_upstream(&m, false);
        assert_eq!(out[0].1.as_bytes(), "pref=caf\u{e9}".as_bytes());
    }

    #[test]
    fn only_a_websocket_upgrade_is_refused() {
        assert!(wants_websocket(&map(&[("upgrade", "WebSocket")])));
        assert!(!wants_websocket(&map(&[("upgrade", "h2c")])));
        assert!(
            to_upstream(
                &map(&[
                    ("upgrade", "h2c"),
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("http2-settings", "x")
                ]),
                false
            )
            .is_empty()
        );
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
            ("set-cookie", "payg_session=forged; Path=/"),
        ]);
        let mut back: Vec<&str> = to_client(&upstream).map(|(n, _)| n.as_str()).collect();
        back.sort_unstable();
        assert_eq!(back, ["content-type", "set-cookie"]);
    }
}
