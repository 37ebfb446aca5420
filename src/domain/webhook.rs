//! Outbound webhooks, the pure rules: which events payg emits and what each
//! carries, the Standard Webhooks signature (<https://www.standardwebhooks.com>),
//! the retry schedule, and what an endpoint URL may be.
//!
//! An event is written to the outbox in the transaction of its cause
//! (`models::webhook::Outbox::emit`) under a `dedupe_key` that makes it
//! happen once: one threshold per period, one invoice issued, one credit
//! exhaustion per credit added (a top-up, an adjustment in the user's
//! favour, voided usage given back).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngExt;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::{Currency, Period};

/// Every event type payg emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "usage.threshold_reached")]
    UsageThresholdReached,
    #[serde(rename = "spending_cap.reached")]
    SpendingCapReached,
    #[serde(rename = "credits.low")]
    CreditsLow,
    #[serde(rename = "credits.exhausted")]
    CreditsExhausted,
    #[serde(rename = "invoice.issued")]
    InvoiceIssued,
    #[serde(rename = "invoice.paid")]
    InvoicePaid,
    #[serde(rename = "invoice.overdue")]
    InvoiceOverdue,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::UsageThresholdReached,
        EventType::SpendingCapReached,
        EventType::CreditsLow,
        EventType::CreditsExhausted,
        EventType::InvoiceIssued,
        EventType::InvoicePaid,
        EventType::InvoiceOverdue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UsageThresholdReached => "usage.threshold_reached",
            EventType::SpendingCapReached => "spending_cap.reached",
            EventType::CreditsLow => "credits.low",
            EventType::CreditsExhausted => "credits.exhausted",
            EventType::InvoiceIssued => "invoice.issued",
            EventType::InvoicePaid => "invoice.paid",
            EventType::InvoiceOverdue => "invoice.overdue",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event about to be written to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: EventType,
    /// Whose event it is: their own endpoints and every admin endpoint
    /// receive it.
    pub user_id: Uuid,
    /// The same key twice is the same event: the second changes nothing.
    pub dedupe_key: String,
    /// The payload's `data`.
    pub data: Value,
}

fn money(amount: Decimal) -> String {
    amount.to_string()
}

impl NewEvent {
    /// What makes a threshold's event happen once per period.
    pub fn threshold_key(user_id: Uuid, period: Period, threshold: Decimal) -> String {
        format!("usage.threshold_reached:{user_id}:{period}:{}", threshold.normalize())
    }

    /// The period's charge reached `threshold` (once per threshold and
    /// period).
    pub fn threshold_reached(
        user_id: Uuid,
        period: Period,
        threshold: Decimal,
        charged: Decimal,
        currency: Currency,
    ) -> Self {
        Self {
            event_type: EventType::UsageThresholdReached,
            user_id,
            dedupe_key: Self::threshold_key(user_id, period, threshold),
            data: json!({
                "user_id": user_id,
                "period": period.to_string(),
                "threshold": money(threshold),
                "charged": money(charged),
                "currency": currency.code(),
            }),
        }
    }

    /// A call was refused because it would take the period's charge past
    /// `cap` (once per period and cap amount).
    pub fn cap_reached(user_id: Uuid, period: Period, cap: Decimal, currency: Currency) -> Self {
        Self {
            event_type: EventType::SpendingCapReached,
            user_id,
            dedupe_key: format!("spending_cap.reached:{user_id}:{period}:{}", cap.normalize()),
            data: json!({
                "user_id": user_id,
                "period": period.to_string(),
                "cap": money(cap),
                "currency": currency.code(),
            }),
        }
    }

    /// The balance fell below the user's `below` (once per credit added: `since`
    /// is the latest such movement's id).
    pub fn credits_low(
        user_id: Uuid,
        since: Option<Uuid>,
        balance: Decimal,
        below: Decimal,
        currency: Currency,
    ) -> Self {
        let since = since.map_or_else(|| "never".to_owned(), |id| id.to_string());
        Self {
            event_type: EventType::CreditsLow,
            user_id,
            dedupe_key: format!("credits.low:{user_id}:{since}"),
            data: json!({
                "user_id": user_id,
                "balance": money(balance),
                "below": money(below),
                "currency": currency.code(),
            }),
        }
    }

    /// The balance is used up: usage drew the last of it, or a prepaid-only
    /// call was refused (once per credit added).
    pub fn credits_exhausted(user_id: Uuid, since: Option<Uuid>, balance: Decimal, currency: Currency) -> Self {
        let since = since.map_or_else(|| "never".to_owned(), |id| id.to_string());
        Self {
            event_type: EventType::CreditsExhausted,
            user_id,
            dedupe_key: format!("credits.exhausted:{user_id}:{since}"),
            data: json!({
                "user_id": user_id,
                "balance": money(balance),
                "currency": currency.code(),
            }),
        }
    }

    /// An invoice event (`issued`, `paid`, `overdue`: once per invoice).
    pub fn invoice(event_type: EventType, invoice: &InvoiceFacts) -> Self {
        Self {
            event_type,
            user_id: invoice.user_id,
            dedupe_key: format!("{event_type}:{}", invoice.id),
            data: json!({
                "invoice_id": invoice.id,
                "number": invoice.number,
                "user_id": invoice.user_id,
                "period": invoice.period,
                "status": invoice.status,
                "currency": invoice.currency,
                "total": money(invoice.total),
                "amount_due": money(invoice.amount_due),
                "issued_at": invoice.issued_at,
                "due_at": invoice.due_at,
            }),
        }
    }
}

/// What an invoice event tells.
#[derive(Debug, Clone)]
pub struct InvoiceFacts {
    pub id: Uuid,
    pub number: String,
    pub user_id: Uuid,
    /// `YYYY-MM`.
    pub period: String,
    pub status: String,
    pub currency: String,
    pub total: Decimal,
    pub amount_due: Decimal,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

/// The body payg sends: the Standard Webhooks payload shape.
pub fn payload(event_type: &str, created_at: DateTime<Utc>, data: &Value) -> Value {
    json!({
        "type": event_type,
        "timestamp": created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": data,
    })
}

/// The prefix of a signing secret as shown (`whsec_` + base64 of the key).
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: 32 random bytes (the spec asks for 24 to 64).
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill(&mut key[..]);
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// How long the previous secret signs beside a new one after a rotation.
pub const ROTATION_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
/// secret's decoded bytes. `None` for a secret that is not `whsec_` +
/// base64 (payg makes only such secrets).
pub fn signature(secret: &str, message_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = BASE64.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header: one signature per secret in force,
/// space-separated (two during a rotation's grace), so a receiver holding
/// either secret accepts the message.
pub fn signature_header(secrets: &[&str], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| signature(s, message_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// After attempt `n` (1-based) failed, the wait before the next; `None`:
/// give up. Standard Webhooks' suggested schedule: the last retry comes
/// about 27.6 hours after the event.
pub fn retry_after(attempt: i32) -> Option<Duration> {
    const SCHEDULE: [u64; 7] = [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600];
    let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
    SCHEDULE.get(index).map(|s| Duration::from_secs(*s))
}

/// Attempts in all before a delivery is given up.
pub const MAX_ATTEMPTS: i32 = 8;

/// Why an endpoint URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUrl {
    #[error(
        "url must be an absolute http:// or https:// URL of at most 2000 characters, without credentials or a fragment"
    )]
    Malformed,
    #[error("url's host is not in the webhook allow-list (PAYG_WEBHOOK_ALLOWED_HOSTS)")]
    HostNotAllowed,
    #[error(
        "url's host is a loopback, private or link-local address: only an admin may send events into the provider's network"
    )]
    PrivateAddress,
}

/// An endpoint URL as checked: scheme, host, port and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    pub url: String,
    pub host: String,
}

/// Checks a URL's shape: `http` or `https`, a host, no user info, no
/// fragment, no whitespace or control characters.
pub fn parse_url(url: &str) -> Result<EndpointUrl, BadUrl> {
    if url.len() > 2000 || url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains('#') {
        return Err(BadUrl::Malformed);
    }
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else {
        return Err(BadUrl::Malformed);
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(BadUrl::Malformed);
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or(BadUrl::Malformed)?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() || !(after.is_empty() || after.starts_with(':')) {
            return Err(BadUrl::Malformed);
        }
        inside.to_owned()
    } else {
        authority.split(':').next().unwrap_or_default().to_ascii_lowercase()
    };
    if let Some((_, port)) = authority.rsplit_once(':')
        && !authority.ends_with(']')
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(BadUrl::Malformed);
    }
    // A host whose last label starts with a digit is an IPv4 address to
    // an HTTP client ("127.1", "2130706433", "0x7f.1" all mean 127.0.0.1):
    // only the canonical dotted quad is taken, so the address checked is
    // the address connected to.
    let last_label = host.trim_end_matches('.').rsplit('.').next().unwrap_or_default();
    if !host.contains(':')
        && last_label.starts_with(|c: char| c.is_ascii_digit())
        && host.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(BadUrl::Malformed);
    }
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        return Err(BadUrl::Malformed);
    }
    Ok(EndpointUrl {
        url: url.to_owned(),
        host,
    })
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local (cloud metadata lives there), shared, documentation,
/// benchmarking, reserved, multicast or unspecified. An IPv6 address that
/// carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by the
/// IPv4 address it reaches: `64:ff9b::7f00:1` is loopback behind a NAT64.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240 // reserved (class E)
                || (a == 100 && (64..128).contains(&b)) // shared address space
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19))) // benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            let [first, second, third, fourth, ..] = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated, still routed by some)
                || (first == 0x2001 && second == 0x0db8) // documentation
                || (first == 0x3fff && second < 0x1000) // documentation (3fff::/20)
                || (first == 0x2001 && second == 0) // Teredo: reaches an obfuscated IPv4 address
                || (first == 0x2001 && second == 0x0002 && third == 0) // benchmarking
                || (first == 0x0064 && second == 0xff9b && third == 1) // local-use NAT64: the IPv4 address may sit anywhere in it
                || (first == 0x0100 && [second, third, fourth] == [0, 0, 0]) // discard-only
                || first == 0) // the rest of ::/16 (compatible addresses handled above)
        }
    }
}

/// The IPv4 address an IPv6 one leads to, for the forms that carry one at
/// a fixed place: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), the well-known NAT64 prefix (`64:ff9b::/96`) and 6to4
/// (`2002:AABB:CCDD::/48`). The local-use NAT64 block `64:ff9b:1::/48`
/// may carry it at any of several places (RFC 6052), and Teredo obfuscates
/// it: `is_public` refuses both outright.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let low = |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match v6.segments() {
        // IPv4-compatible; `::` and `::1` are left to the IPv6 checks.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(low(hi, lo)),
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

/// Who may send events where. With an allow-list, every endpoint's host
/// must be in it. Without one, an admin's endpoint may be anywhere (the
/// provider's own CRM or Slack relay may well be internal), while a
/// consumer's must be on the public internet: payg sends from inside the
/// provider's network, and a consumer must not make it reach what that
/// network hides (the checked address is the one connected to, so DNS
/// rebinding cannot slip past: see `webhooks::dispatch`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    pub allowed_hosts: Vec<String>,
}

impl UrlPolicy {
    /// Whether `host` is on the allow-list (any host when there is none).
    pub fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty() || self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Whether a consumer's endpoint may reach private addresses: only a
    /// host the admin allow-listed.
    pub fn private_allowed(&self, host: &str) -> bool {
        !self.allowed_hosts.is_empty() && self.host_allowed(host)
    }

    /// Checks a URL for an endpoint of an admin (`for_admin`) or a
    /// consumer. A consumer's host given as an address must be public; a
    /// name is checked when it is resolved, at each delivery.
    pub fn check(&self, url: &str, for_admin: bool) -> Result<EndpointUrl, BadUrl> {
        let parsed = parse_url(url)?;
        if !self.host_allowed(&parsed.host) {
            return Err(BadUrl::HostNotAllowed);
        }
        if !for_admin
            && !self.private_allowed(&parsed.host)
            && let Ok(ip) = parsed.host.parse::<IpAddr>()
            && !is_public(ip)
        {
            return Err(BadUrl::PrivateAddress);
        }
        if !for_admin && !self.private_allowed(&parsed.host) && is_local_name(&parsed.host) {
            return Err(BadUrl::PrivateAddress);
        }
        Ok(parsed)
    }
}

/// Names that mean this machine or its network whatever DNS says.
fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host == "localhost" || host.ends_with(".localhost") || host.ends_with(".local") || host.ends_with(".internal")
}

/// Alert thresholds as a user sets them: each > 0, with at most the
/// currency's decimals, at most 10, distinct; sorted.
pub fn check_thresholds(thresholds: &[Decimal], currency: Currency) -> Result<Vec<Decimal>, String> {
    let decimals = currency.minor_units();
    let mut out = Vec::with_capacity(thresholds.len());
    for t in thresholds {
        if *t <= Decimal::ZERO || t.normalize().scale() > decimals || *t > Decimal::from(1_000_000_000_000_i64) {
            return Err(format!(
                "each threshold must be more than 0, at most 1000000000000, with at most {decimals} decimal places"
            ));
        }
        let mut t = *t;
        t.rescale(decimals);
        out.push(t);
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > 10 {
        return Err("at most 10 distinct thresholds".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(secret, id, 1614265330, body).unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let two = signature_header(&[secret, &new_secret()], id, 1614265330, body);
        assert!(two.starts_with("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1,"));
    }

    #[test]
    fn new_secrets_are_whsec_and_32_bytes() {
        let s = new_secret();
        let key = BASE64.decode(s.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(s, new_secret());
    }

    #[test]
    fn retries_cover_more_than_a_day_then_stop() {
        let total: u64 = (1..MAX_ATTEMPTS).map(|n| retry_after(n).unwrap().as_secs()).sum();
        assert!(total >= 24 * 3600, "{total}");
        assert_eq!(retry_after(MAX_ATTEMPTS), None);
        assert_eq!(retry_after(0), None);
    }

    #[test]
    fn urls_are_http_or_https_with_a_host_and_consumers_stay_public() {
        let open = UrlPolicy::default();
        assert_eq!(
            open.check("https://hooks.example.com/payg?x=1", false).unwrap().host,
            "hooks.example.com"
        );
        assert_eq!(
            open.check("http://[2001:db8::1]:8080/x", true).unwrap().host,
            "2001:db8::1"
        );
        for bad in [
            "ftp://example.com/",
            "https://",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "https://exa mple.com/",
            "https://example.com:99999/",
            "javascript:alert(1)",
            "https://example.com:/x",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.0.0.1./",
            "http://010.0.0.1/",
        ] {
            assert_eq!(open.check(bad, true), Err(BadUrl::Malformed), "{bad}");
        }
        for private in [
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://localhost/",
        ] {
            assert_eq!(open.check(private, false), Err(BadUrl::PrivateAddress), "{private}");
            assert!(open.check(private, true).is_ok(), "{private}");
        }
        let listed = UrlPolicy {
            allowed_hosts: vec!["127.0.0.1".into(), "hooks.example.com".into()],
        };
        assert!(listed.check("http://127.0.0.1:9/", false).is_ok());
        assert_eq!(
            listed.check("https://other.example.com/", true),
            Err(BadUrl::HostNotAllowed)
        );
        assert!(is_public("8.8.8.8".parse().unwrap()));
        assert!(!is_public("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!is_public("100.64.0.1".parse().unwrap()));
    }

    #[test]
    fn addresses_that_carry_a_private_ipv4_one_are_not_public() {
        for private in [
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:7f00:0:100:808:808",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "3fff::1",
            "3fff:fff::1",
            "2001:2::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "::ffff:169.254.169.254",
            "fec0::1",
            "2001:db8::1",
            "100::1",
            "::2",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "192.0.2.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "2002:808:808::",
            "64:ff9b::808:808",
            "::ffff:1.1.1.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "3fff:1000::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn thresholds_are_positive_in_minor_units_sorted_and_distinct() {
        let eur: Currency = "EUR".parse().unwrap();
        let t = check_thresholds(
            &["20".parse().unwrap(), "5.00".parse().unwrap(), "5".parse().unwrap()],
            eur,
        )
        .unwrap();
        assert_eq!(t.iter().map(ToString::to_string).collect::<Vec<_>>(), ["5.00", "20.00"]);
        assert!(check_thresholds(&["0".parse().unwrap()], eur).is_err());
        assert!(check_thresholds(&["1.001".parse().unwrap()], eur).is_err());
    }
}
