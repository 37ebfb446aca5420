//! A real webhook receiver for the outbound webhook tests, on port 0
//! (hyper): records every request, and answers each with the next planned
//! (status, delay), or 200 at once when nothing is planned.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::upstream::Seen;

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    plan: Mutex<VecDeque<(u16, Duration)>>,
    /// Every answer waits this long (a slow endpoint).
    delay: Mutex<Duration>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    shared.seen.lock().unwrap().push(Seen {
        method,
        path,
        headers,
        body,
    });
    let (status, wait) = shared.plan.lock().unwrap().pop_front().unwrap_or((200, Duration::ZERO));
    let wait = wait.max(*shared.delay.lock().unwrap());
    tokio::time::sleep(wait).await;
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"ok")))
        .unwrap())
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// On a port chosen before (a receiver that comes up late).
    pub async fn start_on(port: u16) -> Receiver {
        Self::on(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap())
    }

    fn on(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, shared, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next answers, in order.
    pub fn plan(&self, answers: &[(u16, Duration)]) {
        self.shared.plan.lock().unwrap().extend(answers.iter().copied());
    }

    /// Every answer from now on waits `delay`.
    pub fn slow(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The `type` of every message received, in order.
    pub fn types(&self) -> Vec<String> {
        self.seen()
            .iter()
            .map(|s| {
                serde_json::from_slice::<Value>(&s.body).unwrap_or_default()["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

/// Verifies each message with the `standardwebhooks` npm package (an
/// implementation of the spec independent of payg's: tests/webhooks), under
/// `secret`; returns, per message, the verified payload or the error.
pub fn verify(secret: &str, messages: &[Seen]) -> Vec<Result<Value, String>> {
    use std::io::Write;
    let input: Vec<Value> = messages
        .iter()
        .map(|m| {
            let header = |name: &str| m.header(name).unwrap_or_default().to_owned();
            json!({
                "secret": secret,
                "body": String::from_utf8_lossy(&m.body),
                "headers": {
                    "webhook-id": header("webhook-id"),
                    "webhook-timestamp": header("webhook-timestamp"),
                    "webhook-signature": header("webhook-signature"),
                },
            })
        })
        .collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks");
    let mut child = std::process::Command::new("node")
        .arg("verify.mjs")
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node must be installed, and `npm ci` run in tests/webhooks (scripts/test.sh does both)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "verify.mjs failed");
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .into_iter()
        .map(|r| {
            if r["ok"] == json!(true) {
                Ok(r["payload"].clone())
            } else {
                Err(r["error"].as_str().unwrap_or_default().to_owned())
            }
        })
        .collect()
}
