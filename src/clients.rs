//! Who the client is before anyone has authenticated, and how fast it may
//! knock: its address (the peer's, or `X-Forwarded-For` behind a trusted
//! proxy) and per-address token buckets for the routes anyone can call.
//!
//! The buckets live in this instance's memory, not Redis: they are what
//! still holds when Redis is slow or gone, they cost no round trip, and
//! each instance admitting its own share is enough to keep a flood from
//! reaching argon2, PostgreSQL or the webhook's HMAC.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;

/// A bucket: `per_minute` requests sustained, `burst` at once (the shape
/// of the per-user limit); a `per_minute` of 0 switches it off.
pub use crate::redis_store::RateLimit;

/// An IP network: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

impl IpCidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |addr: IpAddr| -> (u128, u8) {
            match addr {
                IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
                IpAddr::V6(a) => (u128::from(a), 128),
            }
        };
        // An IPv4 client may arrive as an IPv4-mapped IPv6 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((net, width), (addr, addr_width)) = (bits(self.addr), bits(ip));
        if width != addr_width {
            return false;
        }
        let host_bits = u32::from(width - self.prefix);
        let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
        (net & mask) == (addr & mask)
    }
}

impl std::str::FromStr for IpCidr {
    type Err = String;

    /// `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// The buckets (see `config::Config::client_limits`); `None` switches one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub credentials: Option<RateLimit>,
    pub unknown_keys: Option<RateLimit>,
    pub webhooks: Option<RateLimit>,
}

/// Addresses tracked per bucket at most. A full bucket is the same as none,
/// so idle addresses are dropped first; past this many busy ones a new
/// address is refused rather than growing memory without bound.
const MAX_CLIENTS: usize = 100_000;

/// How far past its burst [`Throttle::charge`] can put a client.
const MAX_DEBT: Duration = Duration::from_secs(24 * 3600);

/// A request refused by a client bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests from this client address")]
pub struct Throttled {
    pub retry_after_secs: u64,
}

/// GCRA over a map of client → theoretical arrival time: the same
/// algorithm as the per-user limit in Redis, in memory.
pub struct Throttle {
    interval: Duration,
    tolerance: Duration,
    started: Instant,
    /// Client → theoretical arrival time, as time since `started`.
    arrivals: Mutex<HashMap<ClientKey, Duration>>,
}

/// IPv4 addresses count one by one; IPv6 ones by their /64, the smallest
/// block a single subscriber is usually given (one host can pick any
/// address inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
    Unknown,
}

impl From<Option<IpAddr>> for ClientKey {
    fn from(ip: Option<IpAddr>) -> Self {
        match ip {
            Some(IpAddr::V4(v4)) => ClientKey::V4(v4.to_bits()),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.to_bits()),
                None => ClientKey::V6(u64::try_from(Ipv6Addr::to_bits(v6) >> 64).unwrap_or(u64::MAX)),
            },
            None => ClientKey::Unknown,
        }
    }
}

impl Throttle {
    /// `None` (or a zero rate): every request is admitted.
    pub fn new(limit: Option<RateLimit>) -> Option<Self> {
        let limit = limit.filter(|l| l.per_minute > 0)?;
        let interval = Duration::from_secs(60) / limit.per_minute;
        Some(Self {
            interval,
            tolerance: interval * limit.burst.max(1),
            started: Instant::now(),
            arrivals: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one request from the client's bucket, or says how long to wait.
    pub fn take(&self, client: Option<IpAddr>) -> Result<(), Throttled> {
        self.step(client.into())
    }

    /// Whether the client's bucket has room now, without taking from it.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Throttled> {
        let key = ClientKey::from(client);
        let now = self.started.elapsed();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if !has_room(&mut arrivals, key, now) {
            return Err(Throttled { retry_after_secs: 1 });
        }
        let tat = arrivals.get(&key).copied().unwrap_or(now).max(now);
        self.refusal(tat + self.interval, now).map_or(Ok(()), Err)
    }

    /// Charges one request after the fact, room or not: what parallel
    /// requests that all passed [`Throttle::check`] cost. Beyond the burst
    /// the client goes into debt and waits it off (at most a day), so a
    /// wide parallel burst buys no more than a narrow one over time.
    pub fn charge(&self, client: Option<IpAddr>) {
        let key = ClientKey::from(client);
        let now = self.started.elapsed();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if !has_room(&mut arrivals, key, now) {
            return;
        }
        let tat = arrivals.get(&key).copied().unwrap_or(now).max(now);
        let most = now + self.tolerance + MAX_DEBT;
        arrivals.insert(key, (tat + self.interval).min(most));
    }

    /// `Some` when a request whose theoretical arrival would be `next` is
    /// refused at `now`.
    fn refusal(&self, next: Duration, now: Duration) -> Option<Throttled> {
        if next - now <= self.tolerance {
            return None;
        }
        let wait = next - self.tolerance - now;
        Some(Throttled {
            retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        })
    }

    fn step(&self, key: ClientKey) -> Result<(), Throttled> {
        let now = self.started.elapsed();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        let tat = arrivals.get(&key).copied().unwrap_or(now).max(now);
        let next = tat + self.interval;
        if let Some(refused) = self.refusal(next, now) {
            return Err(refused);
        }
        if !has_room(&mut arrivals, key, now) {
            return Err(Throttled { retry_after_secs: 1 });
        }
        arrivals.insert(key, next);
        Ok(())
    }
}

/// Whether `key` has or can get an entry: a full map first drops the
/// addresses whose buckets are full again (the same as no entry); if every
/// tracked address is still busy, a new one is refused rather than let the
/// map grow.
fn has_room(arrivals: &mut HashMap<ClientKey, Duration>, key: ClientKey, now: Duration) -> bool {
    if arrivals.len() < MAX_CLIENTS || arrivals.contains_key(&key) {
        return true;
    }
    arrivals.retain(|_, tat| *tat > now);
    arrivals.len() < MAX_CLIENTS
}

/// The `X-Forwarded-*` values a gateway call sends upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub for_chain: String,
    pub proto: String,
    pub host: Option<String>,
}

/// The client-facing side of every request: its address and the buckets
/// of the unauthenticated routes.
pub struct Clients {
    trusted_proxies: Vec<IpCidr>,
    /// Logins, registrations and refreshes: what a password or token
    /// guesser spends.
    credentials: Option<Throttle>,
    /// Lookups of API keys not in the cache that turn out unknown (each
    /// costs a query): a key guesser, or a client stuck on a revoked key.
    /// A bucket of its own, so neither can block the address's logins;
    /// charged after the query, so known keys never spend it.
    unknown_keys: Option<Throttle>,
    /// Payment-provider webhooks (each verified with an HMAC of the body).
    webhooks: Option<Throttle>,
}

impl Clients {
    pub fn new(trusted_proxies: Vec<IpCidr>, limits: ClientLimits) -> Self {
        Self {
            trusted_proxies,
            credentials: Throttle::new(limits.credentials),
            unknown_keys: Throttle::new(limits.unknown_keys),
            webhooks: Throttle::new(limits.webhooks),
        }
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy
    /// — then the last `X-Forwarded-For` entry that is not a trusted proxy
    /// (each proxy appends what it saw, so entries to the left of it are the
    /// client's to forge).
    pub fn address(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_address(req, &self.trusted_proxies)
    }

    /// What a gateway tells its upstream about the client: `X-Forwarded-For`,
    /// `-Proto` and `-Host`. A chain the client sent is kept only when the
    /// peer is a trusted proxy (then the peer is appended to it, as every
    /// proxy does); otherwise the peer alone is the chain and payg's own
    /// view (plain HTTP, the `Host` asked for) is the rest.
    pub fn forwarded(&self, req: &HttpRequest) -> Forwarded {
        let peer = req.peer_addr().map(|a| a.ip());
        let trusted = peer.is_some_and(|ip| self.trusted_proxies.iter().any(|net| net.contains(ip)));
        // Every value of a header from a trusted peer, in order.
        let incoming = |name: &str| -> Vec<&str> {
            if !trusted {
                return Vec::new();
            }
            req.headers()
                .get_all(name)
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect()
        };
        let peer_text = peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        let chain = incoming("x-forwarded-for");
        Forwarded {
            for_chain: if chain.is_empty() {
                peer_text
            } else {
                format!("{}, {peer_text}", chain.join(", "))
            },
            // payg listens on plain HTTP (TLS ends at a proxy in front of
            // it); `connection_info()` would believe the client's headers.
            // Proto and host are one value each: the first proxy's, which
            // faced the client.
            proto: incoming("x-forwarded-proto")
                .first()
                .map_or_else(|| "http".to_owned(), |p| (*p).to_owned()),
            host: incoming("x-forwarded-host")
                .first()
                .map(|h| (*h).to_owned())
                .or_else(|| {
                    req.headers()
                        .get(actix_web::http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                }),
        }
    }

    /// One credential attempt (login, register, refresh) from this client.
    pub fn take_credential_attempt(&self, req: &HttpRequest) -> Result<(), Throttled> {
        self.credentials.as_ref().map_or(Ok(()), |t| t.take(self.address(req)))
    }

    /// Whether this client may look up an API key payg has not cached (it
    /// costs a query). Only keys that turn out unknown are charged
    /// ([`Clients::unknown_key_looked_up`]), after the query, so a client's
    /// known keys never spend its bucket, however many are looked up at
    /// once (a restart, a cold cache); parallel unknown ones put it into
    /// debt instead of slipping through.
    pub fn may_look_up_key(&self, req: &HttpRequest) -> Result<(), Throttled> {
        self.unknown_keys
            .as_ref()
            .map_or(Ok(()), |t| t.check(self.address(req)))
    }

    pub fn unknown_key_looked_up(&self, req: &HttpRequest) {
        if let Some(t) = &self.unknown_keys {
            t.charge(self.address(req));
        }
    }

    pub fn take_webhook(&self, req: &HttpRequest) -> Result<(), Throttled> {
        self.webhooks.as_ref().map_or(Ok(()), |t| t.take(self.address(req)))
    }
}

fn client_address(req: &HttpRequest, trusted: &[IpCidr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    // Walk the chain from the right (the nearest hop first), past trusted
    // proxies, to the first address one of them saw. An entry that does not
    // parse ends the walk: skipping it would hand the choice to whatever the
    // client wrote to its left.
    // A header line that is not text counts as an unreadable hop too.
    let hops: Vec<Option<&str>> = req
        .headers()
        .get_all("x-forwarded-for")
        .flat_map(|v| match v.to_str() {
            Ok(text) => text.split(',').map(|hop| Some(hop.trim())).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    let mut nearest_trusted = peer;
    for hop in hops.iter().rev() {
        match hop.and_then(parse_hop) {
            Some(ip) if is_trusted(ip) => nearest_trusted = ip,
            Some(ip) => return Some(ip),
            None => return Some(nearest_trusted),
        }
    }
    // Every hop was a trusted proxy: the leftmost is as far as anyone saw.
    Some(nearest_trusted)
}

/// One `X-Forwarded-For` entry: `ip`, `ip:port` or `[ipv6]:port` (some
/// proxies append the port).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// How the login lockout names a client: its address, or its /64 for IPv6
/// (as the buckets count it), so one host cannot rotate through its block
/// for fresh lockout budgets.
pub fn lockout_label(client: Option<IpAddr>) -> String {
    match ClientKey::from(client) {
        ClientKey::V4(bits) => std::net::Ipv4Addr::from_bits(bits).to_string(),
        ClientKey::V6(prefix) => format!("{}/64", Ipv6Addr::from_bits(u128::from(prefix) << 64)),
        ClientKey::Unknown => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpCidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let direct = TestRequest::default()
            .peer_addr("203.0.113.9:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "198.51.100.1"))
            .to_http_request();
        assert_eq!(
            client_address(&direct, &trusted),
            ip("203.0.113.9"),
            "a forged header is ignored"
        );
        let proxied = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.1.1.1, 198.51.100.1, 10.0.0.7"))
            .to_http_request();
        assert_eq!(
            client_address(&proxied, &trusted),
            ip("198.51.100.1"),
            "the last untrusted hop, not what the client wrote first"
        );
        assert_eq!(
            client_address(&proxied, &[]),
            ip("10.0.0.2"),
            "no trusted proxies: the peer"
        );
        let with_ports = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.1.1.1, 198.51.100.1:4711, [2001:db8::7]:443"))
            .to_http_request();
        assert_eq!(
            client_address(&with_ports, &trusted),
            ip("2001:db8::7"),
            "a port appended by the proxy is not a reason to look further left"
        );
        let garbled = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.1.1.1, not-an-address, 10.0.0.7"))
            .to_http_request();
        assert_eq!(
            client_address(&garbled, &trusted),
            ip("10.0.0.7"),
            "an unreadable hop stops the walk at the last proxy"
        );
        let not_text = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6"))
            .append_header((
                "x-forwarded-for",
                actix_web::http::header::HeaderValue::from_bytes(b"\x80, 198.51.100.1").unwrap(),
            ))
            .to_http_request();
        assert_eq!(
            client_address(&not_text, &trusted),
            ip("10.0.0.2"),
            "a line that is not text stops the walk too: 6.6.6.6 is the client's to forge"
        );
        assert_eq!(lockout_label(ip("2001:db8:1:2::9")), "2001:db8:1:2::/64");
        assert_eq!(lockout_label(ip("192.0.2.1")), "192.0.2.1");
    }

    #[test]
    fn a_bucket_admits_its_burst_then_one_per_interval_per_client() {
        let throttle = Throttle::new(Some(RateLimit {
            per_minute: 60,
            burst: 3,
        }))
        .unwrap();
        let a = Some("203.0.113.9".parse().unwrap());
        let b = Some("203.0.113.10".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(throttle.take(a), Ok(()));
        }
        assert_eq!(throttle.check(a), Err(Throttled { retry_after_secs: 1 }));
        assert_eq!(throttle.take(a), Err(Throttled { retry_after_secs: 1 }));
        // Charges after the fact go into debt: ten more, ten more seconds.
        for _ in 0..10 {
            throttle.charge(a);
        }
        assert_eq!(throttle.check(a), Err(Throttled { retry_after_secs: 11 }));
        assert_eq!(throttle.take(b), Ok(()), "another address has its own bucket");
        assert!(
            Throttle::new(Some(RateLimit {
                per_minute: 0,
                burst: 5
            }))
            .is_none()
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let throttle = Throttle::new(Some(RateLimit {
            per_minute: 1,
            burst: 1,
        }))
        .unwrap();
        assert_eq!(throttle.take(Some("2001:db8:1:2::1".parse().unwrap())), Ok(()));
        assert!(throttle.take(Some("2001:db8:1:2:ffff::9".parse().unwrap())).is_err());
        assert_eq!(throttle.take(Some("2001:db8:1:3::1".parse().unwrap())), Ok(()));
        assert!(
            throttle.take(Some("::ffff:192.0.2.1".parse().unwrap())).is_ok()
                && throttle.take(Some("192.0.2.1".parse().unwrap())).is_err(),
            "a mapped IPv4 address is that IPv4 address"
        );
    }
}
