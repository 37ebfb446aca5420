//! Checked text: each rule a request field must meet, written once with its
//! OpenAPI schema. A value of one of these types has passed its rule, so a
//! handler that holds one never checks it again. Request bodies deserialize
//! straight into them (a failure is 400 `validation_failed`, see
//! `error::ApiError::from_json`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// Why a value was refused; its text names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidText(pub Cow<'static, str>);

/// The characters no text field takes, as a regex class body: control
/// characters (Unicode Cc) and the format characters (Cf) of the Basic
/// Multilingual Plane — the soft hyphen, zero-width spaces and joiners, bidi
/// embeddings, overrides and isolates, the byte-order mark — which render
/// as nothing and so let two different names look alike (or reorder what an
/// invoice shows). [`REFUSED`] is the same set for the code; a test keeps
/// the two equal. (The few Cf characters beyond the BMP — tag characters,
/// musical formatting — are left alone: a pattern cannot name them in a way
/// every JSON Schema dialect reads alike.)
macro_rules! refused {
    () => {
        r"\u0000-\u001F\u007F-\u009F\u00AD\u0600-\u0605\u061C\u06DD\u070F\u0890-\u0891\u08E2\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\uFEFF\uFFF9-\uFFFB"
    };
}

const REFUSED: &[(char, char)] = &[
    ('\u{0000}', '\u{001F}'),
    ('\u{007F}', '\u{009F}'),
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
];

/// A control or format character (see [`refused!`]).
fn is_refused(c: char) -> bool {
    REFUSED.iter().any(|&(from, to)| (from..=to).contains(&c))
}

/// Text without refused characters.
const NO_CONTROL: &str = concat!("^[^", refused!(), "]*$");
/// The same, with at least one character that is not white space.
const NOT_BLANK: &str = concat!("^[^", refused!(), "]*[^\\s", refused!(), "][^", refused!(), "]*$");

/// Unicode NFC: one spelling of `é`, whether sent composed or decomposed.
fn nfc(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfc().collect()
}

/// A plain-text rule: no control or format characters, at most `max`
/// characters (Unicode scalar values, as the OpenAPI spec counts them) and
/// at least `min`, and for a `not_blank` field something besides white
/// space. The checks read the value as sent — what its schema describes; a
/// `trim`med value is then stored without its surrounding white space, and
/// text people read (`nfc`) in Unicode NFC. Text a payment provider sends
/// is kept exactly as sent, to match what the provider holds.
struct TextRule {
    what: &'static str,
    min: usize,
    max: usize,
    not_blank: bool,
    trim: bool,
    nfc: bool,
}

impl TextRule {
    fn check(&self, raw: &str) -> Result<String, InvalidText> {
        let chars = raw.chars().count();
        let blank = raw.trim().is_empty();
        if (self.not_blank && blank) || chars < self.min || chars > self.max || raw.chars().any(is_refused) {
            let size = match (self.min, self.max) {
                (0, usize::MAX) => {
                    return Err(InvalidText(Cow::Owned(format!(
                        "{} must not contain control or format characters",
                        self.what
                    ))));
                }
                (min, usize::MAX) => format!(" at least {min} characters"),
                (0, max) => format!(" at most {max} characters"),
                (min, max) => format!(" {min} to {max} characters"),
            };
            let blank = if self.not_blank { ", not blank," } else { "" };
            return Err(InvalidText(Cow::Owned(format!(
                "{} must be{size}{blank} without control or format characters",
                self.what
            ))));
        }
        let kept = if self.trim { raw.trim() } else { raw };
        Ok(if self.nfc { nfc(kept) } else { kept.to_owned() })
    }

    fn schema(&self, description: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .min_length((self.min > 0).then_some(self.min))
            .max_length((self.max != usize::MAX).then_some(self.max))
            .pattern(Some(if self.not_blank { NOT_BLANK } else { NO_CONTROL }))
            .into()
    }
}

/// Deserialize through `FromStr`, serialize as the string, and name the
/// schema: the parts every checked type shares.
macro_rules! checked_string {
    ($name:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Cow::<'de, str>::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Declares a newtype over `String` checked by a [`TextRule`].
macro_rules! plain_text {
    ($desc:literal $name:ident { what: $what:literal, min: $min:literal, max: $max:expr, not_blank: $not_blank:literal, trim: $trim:literal, nfc: $nfc:literal }) => {
        #[doc = $desc]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            const RULE: TextRule = TextRule {
                what: $what,
                min: $min,
                max: $max,
                not_blank: $not_blank,
                trim: $trim,
                nfc: $nfc,
            };

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidText;

            fn from_str(s: &str) -> Result<Self, InvalidText> {
                Self::RULE.check(s).map(Self)
            }
        }

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                Self::RULE.schema($desc)
            }
        }

        checked_string!($name);
    };
}

plain_text! {
    "A person's, company's or API's name: 1 to 200 characters, not blank, no control or format characters; stored without surrounding spaces."
    Name { what: "name", min: 1, max: 200, not_blank: true, trim: true, nfc: true }
}

plain_text! {
    "An API key's label, for telling keys apart: 1 to 100 characters, not blank, no control or format characters; stored without surrounding spaces."
    KeyName { what: "name", min: 1, max: 100, not_blank: true, trim: true, nfc: true }
}

plain_text! {
    "A payment provider's reference: 1 to 200 characters, not blank, no control or format characters; stored without surrounding spaces."
    Reference { what: "reference", min: 1, max: 200, not_blank: true, trim: true, nfc: false }
}

plain_text! {
    "How money was paid, e.g. `bank_transfer`: 1 to 50 characters, not blank, no control or format characters; stored without surrounding spaces."
    PaymentMethod { what: "method", min: 1, max: 50, not_blank: true, trim: true, nfc: true }
}

plain_text! {
    "Free text: at most 2000 characters, no control or format characters."
    Description { what: "description", min: 0, max: 2000, not_blank: false, trim: false, nfc: true }
}

plain_text! {
    "A billing detail (company, address, tax id): at most 200 characters, no control or format characters; stored without surrounding spaces, and blank clears it."
    BillingText { what: "a billing field", min: 0, max: 200, not_blank: false, trim: true, nfc: true }
}

plain_text! {
    "A payment provider's event id: 1 to 200 characters, no control or format characters."
    EventId { what: "event id", min: 1, max: 200, not_blank: false, trim: false, nfc: false }
}

plain_text! {
    "Text a payment provider sends (an invoice number, a reference): no control or format characters."
    ProviderText { what: "invoice_number and reference", min: 0, max: usize::MAX, not_blank: false, trim: false, nfc: false }
}

plain_text! {
    "Part of an email address to look for, in any case: at most 254 characters, no control or format characters; surrounding spaces are ignored, and an empty one matches every address."
    EmailPart { what: "email", min: 0, max: 254, not_blank: false, trim: true, nfc: true }
}

// `plain_text!` derives no `Default` (an empty `Name` would skip its
// rule); an empty description is valid, and the default of an absent one.
#[allow(clippy::derivable_impls)]
impl Default for Description {
    fn default() -> Self {
        Self(String::new())
    }
}

/// A lower-cased email address in Unicode NFC. Deliberately simple: one
/// `@`, 1 to 64 characters before it, a dotted domain after it, no spaces,
/// control or format characters, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// The email rule as a pattern (what [`Email::from_str`] accepts, as sent
/// but for surrounding spaces).
macro_rules! email_pattern {
    () => {
        concat!(
            r"[^@\s",
            refused!(),
            r"]{1,64}@[^@\s.",
            refused!(),
            r"]+(\.[^@\s.",
            refused!(),
            r"]+)+"
        )
    };
}

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl Email {
    /// The one spelling of what a client typed as an email, valid or not:
    /// trimmed, lower-cased, NFC. What the login lockout counts under, so
    /// case, spaces or composition cannot open a fresh budget.
    pub fn canonical(raw: &str) -> String {
        nfc(&raw.trim().to_lowercase())
    }
}

impl FromStr for Email {
    type Err = InvalidText;

    fn from_str(raw: &str) -> Result<Self, InvalidText> {
        // Checked as sent (trimmed), as the schema counts: lower-casing and
        // NFC can both lengthen a string.
        let sent = raw.trim();
        let valid = sent.chars().count() <= 254
            && !sent.chars().any(|c| c.is_whitespace() || is_refused(c))
            && match sent.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.chars().count() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains("..")
                }
                None => false,
            };
        // Stored lower-cased and in NFC, so `josé@` sent composed and
        // decomposed, or in any case, is one account.
        let stored = Email::canonical(sent);
        if valid && stored.chars().count() <= MAX_STORED_EMAIL_CHARS {
            Ok(Self(stored))
        } else {
            Err(InvalidText(Cow::Borrowed("email is not a valid address")))
        }
    }
}

/// What the database's check allows (`users.email`): room for an address
/// of 254 characters as sent to grow in lower-casing and NFC.
const MAX_STORED_EMAIL_CHARS: usize = 1024;

impl PartialSchema for Email {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An email address, case-insensitive: one `@`, at most 64 characters before it, \
                 a dotted domain after it, no spaces.",
            ))
            .max_length(Some(254))
            .pattern(Some(concat!("^", email_pattern!(), "$")))
            .examples([json!("ada@example.com")])
            .into()
    }
}

checked_string!(Email);

/// Passwords are counted in characters, not bytes.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A new password: 8 to 128 characters. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl FromStr for Password {
    type Err = InvalidText;

    fn from_str(raw: &str) -> Result<Self, InvalidText> {
        let n = raw.chars().count();
        if (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidText(Cow::Owned(format!(
                "password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long"
            ))))
        }
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<'de, str>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl PartialSchema for Password {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("8 to 128 characters."))
            .min_length(Some(MIN_PASSWORD_CHARS))
            .max_length(Some(MAX_PASSWORD_CHARS))
            .into()
    }
}

impl ToSchema for Password {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Password")
    }
}

/// A catalog slug: 1 to 64 of `a-z`, `0-9` and `-`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Slug {
    type Err = InvalidText;

    fn from_str(s: &str) -> Result<Self, InvalidText> {
        let ok = s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidText(Cow::Borrowed("slug must be 1–64 of a-z, 0-9 and '-'")))
        }
    }
}

impl PartialSchema for Slug {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "1 to 64 of `a-z`, `0-9` and `-`, starting with a letter or digit.",
            ))
            .pattern(Some("^[a-z0-9][a-z0-9-]{0,63}$"))
            .examples([json!("tools-uuid")])
            .into()
    }
}

checked_string!(Slug);

/// The HTTP methods a catalog entry can meter, upper-cased (any case
/// accepted), or `*`: any method (only for an entry with an upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMethod(&'static str);

const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"];

impl HttpMethod {
    /// `*`: a gateway entry that takes every method.
    pub const ANY: &'static str = "*";

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    pub fn is_any(&self) -> bool {
        self.0 == Self::ANY
    }
}

impl FromStr for HttpMethod {
    type Err = InvalidText;

    fn from_str(s: &str) -> Result<Self, InvalidText> {
        METHODS
            .iter()
            .find(|m| m.eq_ignore_ascii_case(s))
            .map(|m| Self(m))
            .ok_or(InvalidText(Cow::Borrowed(
                "method must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, or * (any)",
            )))
    }
}

impl PartialSchema for HttpMethod {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS (any case), or `*` for any method \
                 (only with an `upstream`).",
            ))
            .pattern(Some(
                r"^([Gg][Ee][Tt]|[Hh][Ee][Aa][Dd]|[Pp][Oo][Ss][Tt]|[Pp][Uu][Tt]|[Pp][Aa][Tt][Cc][Hh]|[Dd][Ee][Ll][Ee][Tt][Ee]|[Oo][Pp][Tt][Ii][Oo][Nn][Ss]|\*)$",
            ))
            .examples([json!("GET")])
            .into()
    }
}

checked_string!(HttpMethod);

/// The public path prefix of a gateway API, such as `/weather` or
/// `/maps/v2`: one or more segments of `a-z 0-9 - _ .` (not `.` or `..`), at
/// most 200 bytes, neither `/` nor under a path payg serves itself
/// ([`RESERVED_PREFIXES`]; compared segment by segment, so `/apis` is free
/// while `/api/x` is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPrefix(String);

/// Paths payg serves (or will: the console and its assets); a gateway
/// prefix can never shadow them.
pub const RESERVED_PREFIXES: [&str; 6] = ["/api", "/console", "/assets", "/healthz", "/readyz", "/metrics"];

impl GatewayPrefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix's segments (`/maps/v2` → `maps`, `v2`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }
}

/// True when `path` is `prefix` or lies under it, segment by segment.
fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

impl FromStr for GatewayPrefix {
    type Err = InvalidText;

    fn from_str(s: &str) -> Result<Self, InvalidText> {
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        };
        let Some(rest) = s.strip_prefix('/') else {
            return Err(InvalidText(Cow::Borrowed("a gateway route must start with '/'")));
        };
        if s.len() > 200 || !rest.split('/').all(segment_ok) {
            return Err(InvalidText(Cow::Borrowed(
                "a gateway route is a path prefix such as /weather: segments of a-z, 0-9, '-', '_' and '.' \
                 (not '.' or '..'), no trailing '/', at most 200 bytes",
            )));
        }
        if let Some(reserved) = RESERVED_PREFIXES.iter().find(|r| under(s, r)) {
            return Err(InvalidText(Cow::Owned(format!(
                "a gateway route cannot lie under {reserved}: payg serves that path itself"
            ))));
        }
        Ok(Self(s.to_owned()))
    }
}

/// An upstream's base URL: `http` or `https`, a host (and port), an
/// optional base path; no user info, query or fragment. Kept without a
/// trailing `/`, so the path after a gateway prefix is appended as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl(String);

impl UpstreamUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl FromStr for UpstreamUrl {
    type Err = InvalidText;

    fn from_str(s: &str) -> Result<Self, InvalidText> {
        let refuse = |why: &'static str| Err(InvalidText(Cow::Borrowed(why)));
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        let (scheme, rest) = if lower.starts_with("https://") {
            ("https", &s[8..])
        } else if lower.starts_with("http://") {
            ("http", &s[7..])
        } else {
            return refuse("an upstream url must start with http:// or https://");
        };
        if s.len() > 2000 || s.chars().any(|c| c.is_whitespace() || is_refused(c) || !c.is_ascii()) {
            return refuse("an upstream url is at most 2000 ASCII characters without spaces or control characters");
        }
        if s.contains('#') {
            return refuse("an upstream url has no fragment (#...)");
        }
        if s.contains('?') {
            return refuse("an upstream url has no query string: a call's query is forwarded as it is");
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return refuse("an upstream url has no user info (user:password@)");
        }
        let (host_ok, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((addr, port)) => (addr.parse::<std::net::Ipv6Addr>().is_ok(), port),
                None => (false, ""),
            },
            None => {
                let (host, port) = match authority.rfind(':') {
                    Some(at) => authority.split_at(at),
                    None => (authority, ""),
                };
                let name_ok = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
                (!host.is_empty() && host.bytes().all(name_ok), port)
            }
        };
        let port_ok = port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
        if !host_ok || !port_ok {
            return refuse("an upstream url needs a host name or address, and a port of 1 to 65535 if any");
        }
        let path = path.trim_end_matches('/');
        if path.split('/').any(|seg| seg == "." || seg == "..") {
            return refuse("an upstream url's path has no '.' or '..' segments");
        }
        Ok(Self(format!("{scheme}://{authority}{path}")))
    }
}

impl PartialSchema for UpstreamUrl {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "The upstream's base URL: http or https, no user info, query or fragment. A call to \
                 `<route>/<rest>` is forwarded to `<url>/<rest>`.",
            ))
            .max_length(Some(2000))
            .pattern(Some(r"^[Hh][Tt][Tt][Pp][Ss]?://[^@/?#\s]+(/[^?#\s]*)?$"))
            .examples([json!("http://127.0.0.1:9000/v2")])
            .into()
    }
}

checked_string!(UpstreamUrl);

impl PartialSchema for GatewayPrefix {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A gateway API's public path prefix, e.g. `/weather`: segments of a-z, 0-9, `-`, `_`, `.`; \
                 not `/` nor under /api, /console, /assets, /healthz, /readyz or /metrics.",
            ))
            .max_length(Some(200))
            .pattern(Some(r"^(/[a-z0-9._-]+)+$"))
            .examples([json!("/weather")])
            .into()
    }
}

checked_string!(GatewayPrefix);

/// An actix route pattern such as `/api/v1/tools/random/{max}`: starts with
/// `/`, at most 200 bytes, no white space, control or format characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern(String);

impl RoutePattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RoutePattern {
    type Err = InvalidText;

    fn from_str(s: &str) -> Result<Self, InvalidText> {
        if s.starts_with('/') && s.len() <= 200 && !s.chars().any(|c| c.is_whitespace() || is_refused(c)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidText(Cow::Borrowed(
                "route must be an actix route pattern starting with '/'",
            )))
        }
    }
}

impl PartialSchema for RoutePattern {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An actix route pattern, e.g. `/api/v1/tools/random/{max}`: starts with `/`, \
                 at most 200 bytes, no spaces, control or format characters.",
            ))
            .max_length(Some(200))
            .pattern(Some(concat!(r"^/[^\s", refused!(), "]*$")))
            .examples([json!("/api/v1/tools/uuid")])
            .into()
    }
}

checked_string!(RoutePattern);

/// An ISO 3166-1 alpha-2 country code, any case, kept upper-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryCode(String);

impl CountryCode {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl FromStr for CountryCode {
    type Err = InvalidText;

    fn from_str(s: &str) -> Result<Self, InvalidText> {
        let upper = s.trim().to_ascii_uppercase();
        if upper.len() == 2 && upper.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(upper))
        } else {
            Err(InvalidText(Cow::Borrowed(
                "country must be an ISO 3166-1 alpha-2 code such as GB or IN",
            )))
        }
    }
}

impl PartialSchema for CountryCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("ISO 3166-1 alpha-2, any case (stored upper-case)."))
            .pattern(Some(r"^\s*[A-Za-z]{2}\s*$"))
            .examples([json!("GB")])
            .into()
    }
}

checked_string!(CountryCode);

/// A user named by id or by email (case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(Uuid),
    Email(Email),
}

impl UserRef {
    fn as_str(&self) -> Cow<'_, str> {
        match self {
            UserRef::Id(id) => Cow::Owned(id.to_string()),
            UserRef::Email(e) => Cow::Borrowed(e.as_str()),
        }
    }
}

impl FromStr for UserRef {
    type Err = InvalidText;

    fn from_str(s: &str) -> Result<Self, InvalidText> {
        match s.parse::<Uuid>() {
            Ok(id) => Ok(UserRef::Id(id)),
            Err(_) => s
                .parse()
                .map(UserRef::Email)
                .map_err(|_| InvalidText(Cow::Borrowed("user must be a user id or an email address"))),
        }
    }
}

impl PartialSchema for UserRef {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("A user id, or an email (case-insensitive)."))
            .max_length(Some(254))
            .pattern(Some(concat!(
                r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|",
                email_pattern!(),
                ")$"
            )))
            .into()
    }
}

impl<'de> Deserialize<'de> for UserRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<'de, str>::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for UserRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl ToSchema for UserRef {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UserRef")
    }
}

/// A field a partial update may clear, and which blank values clear it.
pub trait Clearable: FromStr<Err = InvalidText> {
    /// Whether `raw` (sent as the field's value) clears the field.
    fn clears(raw: &str) -> bool;
}

/// Blank text clears a billing detail only within the field's own rule (no
/// control characters, at most 200 characters), as its schema says.
impl Clearable for BillingText {
    fn clears(raw: &str) -> bool {
        raw.trim().is_empty() && Self::RULE.check(raw).is_ok()
    }
}

/// Any white space clears the country (its schema: `^\s*([A-Za-z]{2})?\s*$`).
impl Clearable for CountryCode {
    fn clears(raw: &str) -> bool {
        raw.trim().is_empty()
    }
}

/// For a partial update of a clearable field: absent → `None` (leave it
/// alone); `null` or a value that [`Clearable::clears`] → `Some(None)`
/// (clear it); anything else must pass the field's rule.
pub fn clearable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Clearable,
{
    match Option::<Cow<'de, str>>::deserialize(d)? {
        None => Ok(Some(None)),
        Some(text) if T::clears(&text) => Ok(Some(None)),
        Some(text) => text.parse().map(|v| Some(Some(v))).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_lower_cased_and_checked() {
        assert_eq!(
            " Ada@Example.COM ".parse::<Email>().unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
            "ada@.com",
            "ada\u{200B}@example.com",
            "ad\u{202E}moc.elpmaxe@a.io",
            "\u{FEFF}ada@example.com",
        ] {
            assert!(bad.parse::<Email>().is_err(), "{bad:?}");
        }
        let composed = "jos\u{E9}@example.com".parse::<Email>().unwrap();
        let decomposed = "JOSE\u{301}@example.com".parse::<Email>().unwrap();
        assert_eq!(composed, decomposed, "one spelling of josé");
        assert_eq!(composed.as_str(), "jos\u{E9}@example.com");
    }

    #[test]
    fn names_are_stored_in_nfc_without_format_characters() {
        assert_eq!(
            "Jose\u{301}".parse::<Name>().unwrap().as_str(),
            "Jos\u{E9}",
            "decomposed arrives composed"
        );
        for bad in [
            "Ada\u{200D}",
            "\u{202E}evil",
            "a\u{2066}b",
            "soft\u{AD}hyphen",
            "\u{180E}",
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?}");
            assert!(bad.parse::<KeyName>().is_err(), "{bad:?}");
            assert!(bad.parse::<BillingText>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "ref\u{301}".parse::<ProviderText>().unwrap().as_str(),
            "ref\u{301}",
            "what a provider sends is kept as sent"
        );
    }

    #[test]
    fn the_schema_patterns_refuse_exactly_what_the_code_refuses() {
        let mut listed = String::new();
        for &(from, to) in REFUSED {
            listed.push_str(&format!("\\u{:04X}", u32::from(from)));
            if to != from {
                listed.push_str(&format!("-\\u{:04X}", u32::from(to)));
            }
        }
        assert_eq!(listed, refused!());
        // Every Cc and every BMP Cf character (by Unicode's own table) is
        // refused, and nothing else.
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        for c in '\u{0}'..='\u{FFFF}' {
            let refused = c.is_control() || c.general_category() == GeneralCategory::Format;
            assert_eq!(is_refused(c), refused, "U+{:04X}", u32::from(c));
        }
        assert!(('\u{0}'..='\u{9F}').filter(|c| c.is_control()).all(is_refused));
    }

    #[test]
    fn password_length_counts_characters_not_bytes() {
        assert!("1234567".parse::<Password>().is_err());
        assert!("12345678".parse::<Password>().is_ok());
        assert!("é".repeat(128).parse::<Password>().is_ok());
        assert!("x".repeat(129).parse::<Password>().is_err());
        assert_eq!(
            format!("{:?}", "secret-secret".parse::<Password>().unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn names_are_trimmed_not_blank_and_free_of_control_characters() {
        assert_eq!("  Ada  ".parse::<Name>().unwrap().as_str(), "Ada");
        // Checked as sent, as the schema says: a control character or the
        // length limit count before trimming.
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "a\nb",
            "a\u{85}b",
            "Ada\n",
            &format!("{} ", "x".repeat(200)),
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?}");
        }
        assert!("é".repeat(200).parse::<Name>().is_ok());
        assert!("é".repeat(201).parse::<Name>().is_err());
        assert!("x".repeat(101).parse::<KeyName>().is_err());
    }

    #[test]
    fn provider_text_keeps_blanks_but_not_control_characters() {
        assert_eq!("  ".parse::<EventId>().unwrap().as_str(), "  ");
        assert!("".parse::<EventId>().is_err());
        assert!("x".repeat(201).parse::<EventId>().is_err());
        assert!("x".repeat(5000).parse::<ProviderText>().is_ok());
        assert!("a\u{1}".parse::<ProviderText>().is_err());
    }

    #[test]
    fn optional_text_may_be_empty_but_not_too_long_or_controlled() {
        assert_eq!("".parse::<Description>().unwrap().as_str(), "");
        assert!("x".repeat(2001).parse::<Description>().is_err());
        assert!("tab\there".parse::<Description>().is_err());
        assert_eq!("  Acme ".parse::<BillingText>().unwrap().as_str(), "Acme");
    }

    #[test]
    fn slugs_methods_routes_countries_and_user_refs() {
        assert!("tools-uuid".parse::<Slug>().is_ok());
        for bad in ["", "-a", "A", "a_b", &"a".repeat(65)] {
            assert!(bad.parse::<Slug>().is_err(), "{bad:?}");
        }
        assert_eq!("patch".parse::<HttpMethod>().unwrap().as_str(), "PATCH");
        assert!("TRACE".parse::<HttpMethod>().is_err());
        assert!("*".parse::<HttpMethod>().unwrap().is_any());
        assert_eq!("/weather".parse::<GatewayPrefix>().unwrap().as_str(), "/weather");
        assert!("/maps/v2.1/x_y".parse::<GatewayPrefix>().is_ok());
        assert!(
            "/apis".parse::<GatewayPrefix>().is_ok(),
            "only /api itself and below are reserved"
        );
        for bad in [
            "/",
            "",
            "weather",
            "/weather/",
            "/a//b",
            "/a/../b",
            "/..",
            "/Weather",
            "/a b",
            "/api",
            "/api/v1/tools",
            "/healthz",
            "/metrics/x",
            "/console",
            "/assets/app.js",
            "/readyz",
        ] {
            assert!(bad.parse::<GatewayPrefix>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "HTTP://127.0.0.1:9000/v2/".parse::<UpstreamUrl>().unwrap().as_str(),
            "http://127.0.0.1:9000/v2"
        );
        assert_eq!(
            "https://api.example.com".parse::<UpstreamUrl>().unwrap().as_str(),
            "https://api.example.com"
        );
        assert!("http://[::1]:8080/x".parse::<UpstreamUrl>().is_ok());
        for bad in [
            "ftp://h/",
            "http://",
            "http://u:p@h/",
            "http://h/#f",
            "http://h/?q=1",
            "http://h:0/",
            "http://h:99999/",
            "http://h/a/../b",
            "http://h /",
            "http://[::1/",
            "http://h:x/",
            "//h/",
        ] {
            assert!(bad.parse::<UpstreamUrl>().is_err(), "{bad:?}");
        }
        assert!("/a/{id}".parse::<RoutePattern>().is_ok());
        assert!("a/b".parse::<RoutePattern>().is_err());
        assert!("/a b".parse::<RoutePattern>().is_err());
        assert_eq!(" gb ".parse::<CountryCode>().unwrap().as_str(), "GB");
        assert!("GBR".parse::<CountryCode>().is_err());
        let id = Uuid::new_v4();
        assert_eq!(id.to_string().parse::<UserRef>().unwrap(), UserRef::Id(id));
        assert!(matches!("A@B.io".parse::<UserRef>().unwrap(), UserRef::Email(e) if e.as_str() == "a@b.io"));
        assert!("nobody".parse::<UserRef>().is_err());
    }

    #[test]
    fn blank_clears_a_billing_field_only_within_its_rule() {
        assert!(BillingText::clears(""));
        assert!(BillingText::clears("   "));
        assert!(
            !BillingText::clears("\t"),
            "a control character is refused, not a clear"
        );
        assert!(!BillingText::clears(&" ".repeat(201)), "over the limit is refused");
        assert!(CountryCode::clears(" \t "));
        assert!(!CountryCode::clears("GB"));
    }

    #[test]
    fn the_schema_describes_the_rule() {
        let RefOr::T(Schema::Object(name)) = Name::schema() else {
            panic!("an object schema")
        };
        assert_eq!(name.max_length, Some(200));
        assert_eq!(name.min_length, Some(1));
        assert_eq!(name.pattern.as_deref(), Some(NOT_BLANK));
        assert!(name.description.unwrap().starts_with("A person's"));
    }
}
