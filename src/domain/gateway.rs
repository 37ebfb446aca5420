//! The pure rules of the gateway: which public path a prefix matches and
//! what is left to forward, and the signature that tells an upstream a call
//! came through payg.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A request path that could reach outside an upstream's base path (a `.`
/// or `..` segment, plain or percent-encoded, or followed by `;` as Java
/// servers read `..;`; an encoded `/` or `\`; a NUL) or whose
/// percent-encoding is broken or not UTF-8. Refused (400), never resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the path has '.' or '..' segments, an encoded '/' or '\\', or percent-encoding that is not UTF-8")]
pub struct PathEscape;

/// One segment of a request path: as sent, and decoded (for matching).
#[derive(Debug)]
pub struct Segment<'a> {
    pub raw: &'a str,
    pub decoded: std::borrow::Cow<'a, str>,
}

/// Splits a raw request path (as sent, without the query) into segments,
/// refusing any that could step outside the base path. `/a/b` → `a`, `b`;
/// `/` → one empty segment.
pub fn segments(raw_path: &str) -> Result<Vec<Segment<'_>>, PathEscape> {
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Err(PathEscape);
    };
    rest.split('/')
        .map(|raw| {
            let decoded = percent_decode(raw)?;
            // `..;jsessionid=x` is `..` to servlet containers.
            let dots = decoded.split(';').next().unwrap_or_default();
            if dots == "." || dots == ".." || decoded.contains(['/', '\\', '\0']) {
                return Err(PathEscape);
            }
            Ok(Segment { raw, decoded })
        })
        .collect()
}

fn percent_decode(raw: &str) -> Result<std::borrow::Cow<'_, str>, PathEscape> {
    if !raw.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or(PathEscape)?;
            // Two hex digits exactly (`from_str_radix` alone takes `+a`).
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(PathEscape);
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| PathEscape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| PathEscape)
}

/// If `prefix` (its segments) matches the start of `path`, the raw rest to
/// append to the upstream's base: `""` for the prefix itself, `/<rest>` as
/// sent otherwise. Segments compare decoded, so `/weath%65r` is `/weather`.
pub fn rest_after<'a>(prefix: &[String], raw_path: &'a str, path: &[Segment<'a>]) -> Option<&'a str> {
    if path.len() < prefix.len() || !prefix.iter().zip(path).all(|(p, s)| *p == s.decoded) {
        return None;
    }
    // Byte offset of the rest: one '/' plus the raw segment for each matched one.
    let consumed: usize = path[..prefix.len()].iter().map(|s| s.raw.len() + 1).sum();
    Some(&raw_path[consumed..])
}

/// After a rotation the previous signing secret keeps signing (beside the
/// new one) this long, so upstreams can switch secrets without a gap.
pub const ROTATION_GRACE: chrono::Duration = chrono::Duration::hours(24);

/// An upstream's limits, as an admin sets them.
pub const DEFAULT_TIMEOUT_MS: i32 = 30_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: i32 = 2_000;
pub const DEFAULT_MAX_BODY_BYTES: i64 = 10 * 1024 * 1024;
pub const MAX_TIMEOUT_MS: i32 = 3_600_000;
pub const MAX_CONNECT_TIMEOUT_MS: i32 = 600_000;

/// Whether an upstream's limits are acceptable: timeouts of 1 ms up to an
/// hour (connect: ten minutes), a body limit that is not negative.
pub fn check_limits(timeout_ms: i32, connect_timeout_ms: i32, max_body_bytes: i64) -> Result<(), &'static str> {
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err("upstream.timeout_ms must be 1 to 3600000");
    }
    if !(1..=MAX_CONNECT_TIMEOUT_MS).contains(&connect_timeout_ms) {
        return Err("upstream.connect_timeout_ms must be 1 to 600000");
    }
    if max_body_bytes < 0 {
        return Err("upstream.max_body_bytes must not be negative");
    }
    Ok(())
}

/// The header carrying payg's signatures to an upstream.
pub const SIGNATURE_HEADER: &str = "payg-signature";

/// What is signed, one field a line: the Unix time in seconds, the method,
/// the path and query exactly as the upstream receives them, the user id.
/// None of the fields can hold a newline, so the string is unambiguous.
pub fn signed_string(timestamp: i64, method: &str, path_and_query: &str, user_id: &str) -> String {
    format!("{timestamp}\n{method}\n{path_and_query}\n{user_id}")
}

/// Lower-case hex HMAC-SHA256 of `message`, keyed with the whole secret.
pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => return String::new(),
    };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `t=<timestamp>,v1=<hex>[,v1=<hex>]`: one `v1` per secret in force (two
/// during a rotation's grace period), so an upstream holding either secret
/// accepts the call.
pub fn signature_header(timestamp: i64, message: &str, secrets: &[&str]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&sign(secret, message));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest<'a>(prefix: &str, raw: &'a str) -> Result<Option<&'a str>, PathEscape> {
        let prefix: Vec<String> = prefix[1..].split('/').map(str::to_owned).collect();
        let segs = segments(raw)?;
        Ok(rest_after(&prefix, raw, &segs))
    }

    #[test]
    fn a_prefix_matches_itself_and_what_lies_under_it_segment_by_segment() {
        assert_eq!(rest("/weather", "/weather"), Ok(Some("")));
        assert_eq!(rest("/weather", "/weather/"), Ok(Some("/")));
        assert_eq!(rest("/weather", "/weather/today/x%20y"), Ok(Some("/today/x%20y")));
        assert_eq!(rest("/weather", "/weath%65r/today"), Ok(Some("/today")));
        assert_eq!(rest("/weather", "/weatherx"), Ok(None));
        assert_eq!(rest("/maps/v2", "/maps"), Ok(None));
        assert_eq!(rest("/maps/v2", "/maps/v2/tiles"), Ok(Some("/tiles")));
    }

    #[test]
    fn paths_that_could_leave_the_base_path_are_refused() {
        for bad in [
            "/weather/../admin",
            "/weather/%2e%2e/admin",
            "/weather/%2E%2e",
            "/weather/.",
            "/weather/a%2fb",
            "/weather/a%5Cb",
            "/weather/%00",
            "/weather/%zz",
            "/weather/%+a",
            "/weather/..;/admin",
            "/weather/%2e%2e;x/admin",
            "/weather/%e9",
            "weather",
        ] {
            assert_eq!(rest("/weather", bad), Err(PathEscape), "{bad}");
        }
        assert_eq!(rest("/weather", "/weather/a..b/.x"), Ok(Some("/a..b/.x")));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_documented_string() {
        let message = signed_string(1_700_000_000, "GET", "/v2/today?city=Oslo", "u-1");
        assert_eq!(message, "1700000000\nGET\n/v2/today?city=Oslo\nu-1");
        let header = signature_header(1_700_000_000, &message, &["new", "old"]);
        assert_eq!(
            header,
            format!("t=1700000000,v1={},v1={}", sign("new", &message), sign("old", &message))
        );
        assert_eq!(sign("k", &message).len(), 64);
        assert_ne!(sign("k", &message), sign("other", &message));
    }
}
