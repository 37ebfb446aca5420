//! `loadgen`: a closed-loop HTTP/1.1 load generator for the payg benchmark.
//!
//! This is a benchmark tool, not a test. It opens `--connections` keep-alive
//! connections (one tokio task each, hyper 1 client directly over a
//! `TcpStream`), mints one HS256 access token per user from `--users-file`
//! itself (so no login and no argon2 cost), and sends `GET --path` as fast
//! as each connection allows. Connection `i` cycles over the users
//! `(i + k * connections) % n`, k = 0, 1, 2, …
//!
//! With `--auth api-key` it first creates one API key per user through
//! `POST /api/v1/api-keys` (authenticated with that user's minted token, so
//! the keys are made and hashed by payg itself, not metered) and then sends
//! every call with `X-API-Key` instead of the JWT.
//!
//! With `--auth none` it sends no credential (a plain upstream, or nginx).
//! With `--rate R` it sends R requests per second in all, each connection
//! on its own fixed schedule, and measures each latency from the moment the
//! request was due (so a stall is not hidden by the requests it delayed);
//! without it, each connection sends as fast as it is answered.
//! `--print-api-key` creates one API key for the first user, prints it and
//! exits (for the benchmark's download through the gateway).
//! `--logout-latency N --url-b URL` measures how long a logout on one
//! instance (`--url`) takes to be refused on another (`--url-b`): N times,
//! it mints a fresh token for the first user, makes sure B accepts it, logs
//! it out on A, and polls B with it until B answers 401. Prints
//! `{samples, p50_us, p99_us, max_us}` and exits.
//!
//! It counts its own successful (2xx) responses per user. Every 2xx counts
//! for that exactness tally, warm-up included; only requests sent after the
//! warm-up and answered before the end of the measured window count for
//! throughput and latency.
//!
//! Prints one JSON line on stdout:
//! `{requests_per_sec, p50_us, p99_us, ok, measured_ok, non_2xx,
//!   non_2xx_by_status: {status: n}, errors, …,
//!   per_user_ok: {uuid: n}}` — with `--tally-file F`, `per_user_ok` is
//! written to F (a JSON object) instead of stdout.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:18080 \
//!     --users-file users.txt --jwt-secret "$JWT_SECRET" --duration-secs 10
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;
use tokio::net::TcpStream;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "loadgen", about = "Closed-loop load generator for the payg benchmark")]
struct Args {
    /// Base URL of the server, e.g. http://127.0.0.1:18080 (plain HTTP only).
    #[arg(long)]
    url: String,
    /// Path (and query) to request with GET.
    #[arg(long, default_value = "/api/v1/tools/uuid")]
    path: String,
    /// Concurrent keep-alive connections, one task each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Load before the measured window (counted for exactness, not throughput).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// One user id (uuid) per line.
    #[arg(long)]
    users_file: PathBuf,
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[arg(long, default_value = "payg")]
    jwt_issuer: String,
    #[arg(long, default_value = "payg-api")]
    jwt_audience: String,
    /// Write per_user_ok ({uuid: n}) to this file instead of stdout.
    #[arg(long)]
    tally_file: Option<PathBuf>,
    /// Tokio worker threads for the generator (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// How each call authenticates.
    #[arg(long, value_enum, default_value_t = Auth::Jwt)]
    auth: Auth,
    /// Requests per second in all (open loop); default: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Create an API key for the first user, print it, and exit.
    #[arg(long)]
    print_api_key: bool,
    /// Measure logout propagation from --url to --url-b this many times, print, exit.
    #[arg(long)]
    logout_latency: Option<usize>,
    /// The second instance for --logout-latency.
    #[arg(long)]
    url_b: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Auth {
    /// `Authorization: Bearer <access token>`, minted here.
    Jwt,
    /// `X-API-Key: <key>`, one key per user created through the API first.
    ApiKey,
    /// No credential.
    None,
}

/// The claims payg's `JwtKeys::verify` expects (see src/auth/jwt.rs).
#[derive(Serialize)]
struct Claims<'a> {
    sub: Uuid,
    role: &'static str,
    iat: i64,
    exp: i64,
    iss: &'a str,
    aud: &'a str,
    jti: Uuid,
}

/// What one connection task saw.
#[derive(Default)]
struct TaskStats {
    /// 2xx per user index, warm-up included.
    per_user_ok: Vec<u64>,
    /// 2xx sent after warm-up and answered inside the window.
    measured_ok: u64,
    /// Latencies (µs) of the measured requests, whatever their status.
    latencies_us: Vec<u32>,
    measured_requests: u64,
    non_2xx: u64,
    /// Non-2xx responses by status.
    non_2xx_by_status: BTreeMap<u16, u64>,
    errors: u64,
    reconnects: u64,
    first_error: Option<String>,
}

struct Plan {
    addr: SocketAddr,
    host: HeaderValue,
    path: String,
    /// The credential header of each user.
    auth: Vec<(HeaderName, HeaderValue)>,
    connections: usize,
    /// Per connection: the time between two requests (open loop).
    interval: Option<Duration>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (addr, host) = parse_url(&args.url)?;

    let users: Vec<Uuid> = std::fs::read_to_string(&args.users_file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.users_file.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().map_err(|e| anyhow::anyhow!("bad user id {l:?}: {e}")))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!users.is_empty(), "{} holds no user ids", args.users_file.display());
    anyhow::ensure!(args.connections > 0, "--connections must be > 0");

    let key = EncodingKey::from_secret(args.jwt_secret.as_bytes());
    let mint = |sub: Uuid| -> anyhow::Result<HeaderValue> {
        let iat = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub,
            role: "consumer",
            iat,
            // Within payg's default JWT_TTL (15 min): it refuses a token
            // that lives longer than it would issue one.
            exp: iat + 600,
            iss: &args.jwt_issuer,
            aud: &args.jwt_audience,
            jti: Uuid::new_v4(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &key)?;
        Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
    };
    let bearers = users.iter().map(|&sub| mint(sub)).collect::<anyhow::Result<Vec<_>>>()?;

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;

    if let Some(samples) = args.logout_latency {
        let url_b = args
            .url_b
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--logout-latency needs --url-b"))?;
        let (addr_b, host_b) = parse_url(url_b)?;
        let tokens = (0..samples)
            .map(|_| mint(users[0]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut micros = runtime.block_on(logout_latencies(addr, host, addr_b, host_b, tokens))?;
        micros.sort_unstable();
        let pct = |p: f64| micros[(((p / 100.0) * micros.len() as f64).ceil() as usize).clamp(1, micros.len()) - 1];
        println!(
            "{}",
            serde_json::json!({
                "samples": micros.len(),
                "p50_us": pct(50.0),
                "p99_us": pct(99.0),
                "max_us": micros.last().copied().unwrap_or(0),
            })
        );
        return Ok(());
    }
    if args.print_api_key {
        let bearer = bearers.into_iter().next().ok_or_else(|| anyhow::anyhow!("no user"))?;
        let key = runtime.block_on(create_api_key(addr, &host, bearer))?;
        println!("{key}");
        return Ok(());
    }
    let interval = match args.rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            Some(Duration::from_secs_f64(args.connections as f64 / rate))
        }
        None => None,
    };

    let stats = runtime.block_on(async {
        let auth = match args.auth {
            Auth::Jwt => bearers.into_iter().map(|b| (AUTHORIZATION, b)).collect(),
            Auth::None => bearers
                .into_iter()
                .map(|_| (HeaderName::from_static("x-bench"), HeaderValue::from_static("1")))
                .collect(),
            Auth::ApiKey => {
                let x_api_key = HeaderName::from_static("x-api-key");
                let mut auth = Vec::with_capacity(bearers.len());
                for bearer in bearers {
                    let key = create_api_key(addr, &host, bearer).await?;
                    auth.push((x_api_key.clone(), HeaderValue::from_str(&key)?));
                }
                auth
            }
        };
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(args.warmup_secs);
        let plan = Arc::new(Plan {
            addr,
            host,
            path: args.path.clone(),
            auth,
            connections: args.connections,
            interval,
            start,
            measure_from,
            end: measure_from + Duration::from_secs(args.duration_secs),
        });
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| tokio::spawn(run_connection(i, plan.clone())))
            .collect();
        let mut all = Vec::with_capacity(tasks.len());
        for t in tasks {
            all.push(t.await?);
        }
        anyhow::Ok(all)
    })?;

    // Merge.
    let mut per_user = vec![0u64; users.len()];
    let mut latencies: Vec<u32> = Vec::new();
    let (mut measured_ok, mut measured_requests, mut non_2xx, mut errors, mut reconnects) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut non_2xx_by_status: BTreeMap<String, u64> = BTreeMap::new();
    for s in stats {
        for (status, n) in &s.non_2xx_by_status {
            *non_2xx_by_status.entry(status.to_string()).or_default() += n;
        }
        for (total, n) in per_user.iter_mut().zip(&s.per_user_ok) {
            *total += n;
        }
        latencies.extend_from_slice(&s.latencies_us);
        measured_ok += s.measured_ok;
        measured_requests += s.measured_requests;
        non_2xx += s.non_2xx;
        errors += s.errors;
        reconnects += s.reconnects;
        if first_error.is_none() {
            first_error = s.first_error;
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    let ok: u64 = per_user.iter().sum();
    let secs = args.duration_secs.max(1) as f64;

    let per_user_ok: BTreeMap<String, u64> = users.iter().zip(&per_user).map(|(u, n)| (u.to_string(), *n)).collect();
    let mut out = serde_json::json!({
        "requests_per_sec": (measured_ok as f64 / secs).round(),
        "p50_us": pct(50.0),
        "p99_us": pct(99.0),
        "max_us": latencies.last().copied().unwrap_or(0),
        "ok": ok,
        "measured_ok": measured_ok,
        "measured_requests": measured_requests,
        "non_2xx": non_2xx,
        "non_2xx_by_status": non_2xx_by_status,
        "errors": errors,
        "reconnects": reconnects,
        "first_error": first_error,
        "connections": args.connections,
        "users": users.len(),
        "duration_secs": args.duration_secs,
        "warmup_secs": args.warmup_secs,
        "threads": threads,
        "auth": format!("{:?}", args.auth),
        "rate": args.rate,
    });
    match &args.tally_file {
        Some(path) => std::fs::write(path, serde_json::to_string(&per_user_ok)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
        None => out["per_user_ok"] = serde_json::to_value(&per_user_ok)?,
    }
    println!("{out}");
    Ok(())
}

/// `http://host:port[/…]` → socket address and Host header value.
fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, HeaderValue)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--url must start with http:// (got {url:?})"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{authority} does not resolve"))?;
    Ok((addr, HeaderValue::from_str(authority)?))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect<B>(addr: SocketAddr) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes the connection;
        // request errors surface through `send_request`.
        let _ = conn.await;
    });
    Ok(sender)
}

/// `POST /api/v1/api-keys` as the token's user; returns the key (shown once).
async fn create_api_key(addr: SocketAddr, host: &HeaderValue, bearer: HeaderValue) -> anyhow::Result<String> {
    let mut sender = connect::<Full<Bytes>>(addr).await?;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/api-keys")
        .header(HOST, host.clone())
        .header(AUTHORIZATION, bearer)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"bench"}"#)))?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == hyper::StatusCode::CREATED,
        "creating an API key: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let created: serde_json::Value = serde_json::from_slice(&body)?;
    created["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the created API key has no \"key\" field"))
}

/// One request on `sender`; its status.
async fn status_of(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: Method,
    path: &str,
    host: &HeaderValue,
    bearer: &HeaderValue,
) -> anyhow::Result<u16> {
    sender.ready().await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host.clone())
        .header(AUTHORIZATION, bearer.clone())
        .body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    res.into_body().collect().await?;
    Ok(status)
}

/// For each token: B accepts it, A logs it out, then B is polled with it
/// until it answers 401; the time from A's 204 to B's first 401, in µs.
async fn logout_latencies(
    addr_a: SocketAddr,
    host_a: HeaderValue,
    addr_b: SocketAddr,
    host_b: HeaderValue,
    tokens: Vec<HeaderValue>,
) -> anyhow::Result<Vec<u64>> {
    let mut a = connect::<Empty<Bytes>>(addr_a).await?;
    let mut b = connect::<Empty<Bytes>>(addr_b).await?;
    let mut micros = Vec::with_capacity(tokens.len());
    for bearer in tokens {
        let seen = status_of(&mut b, Method::GET, "/api/v1/me", &host_b, &bearer).await?;
        anyhow::ensure!(seen == 200, "instance B refused a fresh token: HTTP {seen}");
        let out = status_of(&mut a, Method::POST, "/api/v1/auth/logout", &host_a, &bearer).await?;
        anyhow::ensure!(out == 204, "logout on instance A: HTTP {out}");
        let logged_out = Instant::now();
        loop {
            match status_of(&mut b, Method::GET, "/api/v1/me", &host_b, &bearer).await? {
                401 => break,
                200 => anyhow::ensure!(
                    logged_out.elapsed() < Duration::from_secs(10),
                    "instance B still accepts a token logged out 10 s ago"
                ),
                other => anyhow::bail!("instance B: HTTP {other}"),
            }
        }
        micros.push(u64::try_from(logged_out.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    Ok(micros)
}

async fn run_connection(i: usize, plan: Arc<Plan>) -> TaskStats {
    let n = plan.auth.len();
    let mut stats = TaskStats {
        per_user_ok: vec![0; n],
        ..TaskStats::default()
    };
    let mut user = i % n;
    let step = plan.connections % n;
    let mut sender: Option<Sender> = None;
    let mut connected_once = false;
    // Open loop: connection i's requests are due at start + (i/connections
    // + k) * interval, k = 0, 1, …
    let mut due = plan
        .interval
        .map(|every| plan.start + every.mul_f64(i as f64 / plan.connections as f64));

    while Instant::now() < plan.end {
        if let (Some(at), Some(every)) = (due, plan.interval) {
            tokio::time::sleep_until(at.into()).await;
            due = Some(at + every);
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(plan.addr).await {
                Ok(s) => {
                    if connected_once {
                        stats.reconnects += 1;
                    }
                    connected_once = true;
                    sender.insert(s)
                }
                Err(e) => {
                    note_error(&mut stats, format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            sender = None;
            continue;
        }
        let req = match Request::builder()
            .method(Method::GET)
            .uri(plan.path.as_str())
            .header(HOST, plan.host.clone())
            .header(plan.auth[user].0.clone(), plan.auth[user].1.clone())
            .body(Empty::<Bytes>::new())
        {
            Ok(r) => r,
            Err(e) => {
                note_error(&mut stats, format!("building the request: {e}"));
                break;
            }
        };
        // Open loop: latency from when the request was due, not sent.
        let sent = due
            .zip(plan.interval)
            .map_or_else(Instant::now, |(next, every)| next - every);
        let outcome = async {
            let res = s.send_request(req).await?;
            let status = res.status();
            // Read the whole body so the connection can be reused.
            res.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        let done = Instant::now();
        let measured = sent >= plan.measure_from && done <= plan.end;
        match outcome {
            Ok(status) => {
                if status.is_success() {
                    stats.per_user_ok[user] += 1;
                    if measured {
                        stats.measured_ok += 1;
                    }
                } else {
                    stats.non_2xx += 1;
                    *stats.non_2xx_by_status.entry(status.as_u16()).or_default() += 1;
                    if stats.first_error.is_none() {
                        stats.first_error = Some(format!("HTTP {status}"));
                    }
                }
                if measured {
                    stats.measured_requests += 1;
                    let us = done.duration_since(sent).as_micros();
                    stats.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            Err(e) => {
                // The server may or may not have served (and metered) this
                // call: the exactness check will tell. Reconnect and go on.
                note_error(&mut stats, format!("request: {e}"));
                sender = None;
            }
        }
        user = (user + step) % n;
    }
    stats
}

fn note_error(stats: &mut TaskStats, message: String) {
    stats.errors += 1;
    if stats.first_error.is_none() {
        stats.first_error = Some(message);
    }
}
