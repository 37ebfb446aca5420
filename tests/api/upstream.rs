//! A real upstream HTTP server for the gateway tests, on port 0 (hyper).
//!
//! - any path: echoes what it received as JSON (method, path and query as
//!   received, headers in order, body) and records it;
//! - `/sse`: an event stream: `data: 1`, then waits for [`Upstream::open_gate`],
//!   then `data: 2` and the end;
//! - `/big?mb=N`: N MiB in 64 KiB chunks, the first chunk before the gate
//!   opens and the rest after it, with a Content-Length;
//! - `/slow?ms=N`: the head after N ms;
//! - `/status/N`: status N with a plain-text body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct Shared {
    seen: Mutex<Vec<Seen>>,
    gate: Notify,
}

pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const CHUNK: usize = 64 * 1024;

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

/// A body of frames sent through a channel (so the handler decides when).
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

fn query_number(path: &str, key: &str) -> Option<u64> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let route = path.split('?').next().unwrap_or("").to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let seen = Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    };
    shared.seen.lock().unwrap().push(seen);

    if route.ends_with("/sse") {
        let (tx, body) = channel_body();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"data: 1\n\n")).await;
            shared.gate.notified().await;
            let _ = tx.send(Bytes::from_static(b"data: 2\n\n")).await;
        });
        let res = Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(body)
            .unwrap();
        return Ok(res);
    }
    if route.ends_with("/big") {
        let mb = query_number(&path, "mb").unwrap_or(1);
        let total = mb as usize * 1024 * 1024;
        let (tx, body) = channel_body();
        let shared = shared.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let mut sent = 0;
            let _ = tx.send(chunk.clone()).await;
            sent += CHUNK;
            shared.gate.notified().await;
            while sent < total {
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
                sent += CHUNK;
            }
        });
        let res = Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", total.to_string())
            .body(body)
            .unwrap();
        return Ok(res);
    }
    if route.ends_with("/slow") {
        let ms = query_number(&path, "ms").unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = route.rsplit_once("/status/").and_then(|(_, c)| c.parse::<u16>().ok()) {
        return Ok(full(code, "text/plain", format!("upstream says {code}")));
    }
    let echo = json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut res = full(200, "application/json", echo.to_string());
    res.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    // Hop-by-hop headers the gateway must not pass back.
    res.headers_mut().insert("connection", "x-hop".parse().unwrap());
    res.headers_mut().insert("x-hop", "1".parse().unwrap());
    Ok(res)
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::serve(None).await
    }

    /// The same server over TLS, with this certificate and key.
    pub async fn start_tls(cert: rustls_pki_types::CertificateDer<'static>, key_der: Vec<u8>) -> Upstream {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert],
                rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(key_der)),
            )
            .unwrap();
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            gate: Notify::new(),
        });
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone()));
                    let http = http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        // A client that refuses the certificate ends at the handshake.
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream { addr, shared, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Lets every waiting `/sse` and `/big` response finish.
    pub fn open_gate(&self) {
        self.shared.gate.notify_waiters();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("the upstream received a request")
    }
}

/// An address on which nothing listens (connections are refused).
pub async fn refused_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Sends `request` as raw bytes (for what an HTTP client would normalise
/// away: `..` segments, chunked uploads, `Expect`) and returns the answer,
/// read until the server closes (send `Connection: close`).
pub async fn raw(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
