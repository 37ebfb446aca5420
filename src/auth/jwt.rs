//! Access tokens: HS256 only, with exp, iss and aud always checked.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::JwtSettings;
use crate::models::Role;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: Uuid,
    /// Issued, never trusted: authentication reads the role from the
    /// database (cached briefly), so a role change applies on the next call
    /// rather than at token expiry. It stays because instances of earlier
    /// releases require the claim to decode a token at all: without it a
    /// rolling upgrade would have old instances refuse every token the new
    /// ones issue. Optional here, so it can be dropped once no such
    /// instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: Uuid,
    /// The login session (refresh-token family) the token belongs to, so
    /// logout can end the session from the access token alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 5;

/// Tokens remembered as verified (see [`JwtKeys::verified`]); at this many
/// the cache is cut to three quarters.
const VERIFIED_CAPACITY: usize = 65_536;

/// What authentication needs of a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub sub: Uuid,
    pub jti: Uuid,
    pub sid: Option<Uuid>,
    pub exp: i64,
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    issuer: String,
    audience: String,
    /// Token text → what its verification found. A client sends the same
    /// token on every call for minutes; decoding base64 and JSON and
    /// checking the HMAC each time was the largest cost of a metered call
    /// after Redis left the hot path.
    verified: RwLock<HashMap<Box<str>, Verified>>,
}

pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    pub claims: Claims,
}

impl JwtKeys {
    pub fn new(settings: &JwtSettings) -> Self {
        let secret = settings.secret.expose().as_bytes();
        // Pinning the algorithm list to HS256 is what refuses `alg: none`
        // and algorithm-confusion tokens: the header's choice is never trusted.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        // `nbf` is never issued, but a token that carries one is held to it.
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl: settings.ttl,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            verified: RwLock::new(HashMap::new()),
        }
    }

    pub fn issue(
        &self,
        user_id: Uuid,
        role: Role,
        session: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        self.issue_as(user_id, role, session, Uuid::new_v4(), now.timestamp(), now)
    }

    /// Signs a token with the given id and issue time. HS256 is
    /// deterministic, so signing the same claims again yields the same
    /// token: a retried refresh receives the very token it was issued.
    pub fn issue_as(
        &self,
        user_id: Uuid,
        role: Role,
        session: Option<Uuid>,
        jti: Uuid,
        iat: i64,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let exp = iat.saturating_add_unsigned(self.ttl.as_secs());
        let claims = Claims {
            sub: user_id,
            role: Some(role),
            iat,
            exp,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti,
            sid: session,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken {
            token,
            expires_in: u64::try_from(exp - now.timestamp()).unwrap_or(0),
            claims,
        })
    }

    /// Checks signature, algorithm, expiry, issuer, audience and `nbf`;
    /// refuses any `crit` header (payg understands no extension), an `iat`
    /// in the future, and a lifetime (`exp − iat`) longer than payg issues.
    /// Each of these needs the key to forge, so each is defence in depth.
    /// [`Self::verify`], remembered: a token already verified is looked up
    /// by its exact text (so no other text can match it) and only its
    /// expiry is checked again — every other check depends on the text
    /// alone, and `nbf`, once reached, stays reached.
    pub fn verified(&self, token: &str) -> Option<Verified> {
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
        let still_valid = |v: &Verified| now <= v.exp.saturating_add(leeway);
        if let Some(known) = self.verified.read().unwrap_or_else(|e| e.into_inner()).get(token) {
            return still_valid(known).then_some(*known);
        }
        let claims = self.verify(token)?;
        let verified = Verified {
            sub: claims.sub,
            jti: claims.jti,
            sid: claims.sid,
            exp: claims.exp,
        };
        let mut cache = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERIFIED_CAPACITY {
            // Down to three quarters in one pass, so the sweep's cost is
            // spread over a quarter of the capacity's inserts rather than
            // paid by each: the expired first, then any (a token evicted
            // early is only verified again).
            cache.retain(|_, v| still_valid(v));
            let excess = cache.len().saturating_sub(VERIFIED_CAPACITY / 4 * 3);
            let evicted: Vec<Box<str>> = cache.keys().take(excess).cloned().collect();
            for token in evicted {
                cache.remove(&token);
            }
        }
        cache.insert(token.into(), verified);
        Some(verified)
    }

    /// The session a token of ours was issued in, expired or not: it binds
    /// a console form to its session across the access token's renewals.
    /// Never a reason to let anyone in (that is [`Self::verified`]).
    pub fn session_of(&self, token: &str) -> Option<Uuid> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        decode::<Claims>(token, &self.decoding, &validation).ok()?.claims.sid
    }

    pub fn verify(&self, token: &str) -> Option<Claims> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let claims = data.claims;
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(LEEWAY_SECS).unwrap_or(0);
        let longest = i64::try_from(self.ttl.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_add(leeway);
        let sound = data.header.crit.is_none()
            && claims.iat <= now.saturating_add(leeway)
            && claims.exp.saturating_sub(claims.iat) <= longest;
        sound.then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings(secret: &str) -> JwtSettings {
        JwtSettings {
            secret: Secret::new(secret),
            ttl: Duration::from_secs(900),
            issuer: "payg".into(),
            audience: "payg-api".into(),
        }
    }

    #[test]
    fn a_fresh_token_verifies_and_carries_its_claims() {
        let keys = JwtKeys::new(&settings("0123456789abcdef0123456789abcdef"));
        let user = Uuid::new_v4();
        let issued = keys.issue(user, Role::Finance, None, Utc::now()).unwrap();
        let claims = keys.verify(&issued.token).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.sub, user);
        assert_eq!(issued.expires_in, 900);
    }

    #[test]
    fn a_remembered_token_still_expires_and_no_other_text_matches_it() {
        let keys = JwtKeys::new(&settings("0123456789abcdef0123456789abcdef"));
        let issued = keys.issue(Uuid::new_v4(), Role::Consumer, None, Utc::now()).unwrap();
        let first = keys.verified(&issued.token).unwrap();
        assert_eq!(keys.verified(&issued.token), Some(first), "remembered");
        assert_eq!(
            (first.sub, first.jti, first.exp),
            (issued.claims.sub, issued.claims.jti, issued.claims.exp)
        );
        let mut tampered = issued.token.clone();
        let last = if tampered.ends_with('A') { "B" } else { "A" };
        tampered.replace_range(tampered.len() - 1.., last);
        assert_eq!(
            keys.verified(&tampered),
            None,
            "a different signature is verified, and fails"
        );
        // Time passes beyond the token's expiry (and the leeway).
        if let Some(known) = keys.verified.write().unwrap().get_mut(issued.token.as_str()) {
            known.exp = Utc::now().timestamp() - 6;
        }
        assert_eq!(keys.verified(&issued.token), None, "expired while remembered");
    }

    #[test]
    fn crit_headers_early_tokens_and_overlong_lifetimes_are_refused() {
        let keys = JwtKeys::new(&settings("0123456789abcdef0123456789abcdef"));
        let good = keys.issue(Uuid::new_v4(), Role::Consumer, None, Utc::now()).unwrap();
        assert!(keys.verify(&good.token).is_some());
        let sign = |header: &Header, claims: &serde_json::Value| encode(header, claims, &keys.encoding).unwrap();
        let base = serde_json::to_value(&good.claims).unwrap();
        let now = Utc::now().timestamp();
        let with = |field: &str, value: i64| {
            let mut c = base.clone();
            c[field] = serde_json::json!(value);
            c
        };
        let hs256 = Header::new(Algorithm::HS256);
        assert!(
            keys.verify(&sign(&hs256, &base)).is_some(),
            "the same claims re-signed verify"
        );
        let mut crit = hs256.clone();
        crit.crit = Some(vec!["exp".into()]);
        assert!(keys.verify(&sign(&crit, &base)).is_none(), "crit");
        assert!(
            keys.verify(&sign(&hs256, &with("nbf", now + 600))).is_none(),
            "nbf ahead"
        );
        assert!(
            keys.verify(&sign(&hs256, &with("nbf", now - 1))).is_some(),
            "nbf passed"
        );
        assert!(
            keys.verify(&sign(&hs256, &with("iat", now + 600))).is_none(),
            "iat ahead"
        );
        let mut long = with("exp", now + 30 * 24 * 3600);
        long["iat"] = serde_json::json!(now);
        assert!(keys.verify(&sign(&hs256, &long)).is_none(), "a month-long token");
    }

    #[test]
    fn tokens_still_carry_the_role_claim_earlier_releases_require() {
        // The claims as the previous release decodes them: `role` required.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct EarlierClaims {
            sub: Uuid,
            role: Role,
        }
        let keys = JwtKeys::new(&settings("0123456789abcdef0123456789abcdef"));
        let issued = keys.issue(Uuid::new_v4(), Role::Finance, None, Utc::now()).unwrap();
        let mut earlier = keys.validation.clone();
        earlier.validate_aud = false;
        let decoded = decode::<EarlierClaims>(&issued.token, &keys.decoding, &earlier).unwrap();
        assert_eq!(decoded.claims.role, Role::Finance);
    }

    #[test]
    fn a_token_from_another_secret_or_long_expired_is_refused() {
        let keys = JwtKeys::new(&settings("0123456789abcdef0123456789abcdef"));
        let other = JwtKeys::new(&settings("fedcba9876543210fedcba9876543210"));
        let issued = other.issue(Uuid::new_v4(), Role::Consumer, None, Utc::now()).unwrap();
        assert!(keys.verify(&issued.token).is_none());
        let old = keys
            .issue(
                Uuid::new_v4(),
                Role::Consumer,
                None,
                Utc::now() - chrono::Duration::hours(1),
            )
            .unwrap();
        assert!(keys.verify(&old.token).is_none());
    }
}
