//! The HTTP clients that reach upstreams: one set per worker thread (awc's
//! client is single-threaded, like the worker), each keeping its
//! connections alive for reuse. TLS is rustls with the ring provider,
//! trusting the Mozilla roots (webpki-roots) plus an optional CA bundle for
//! private upstreams (`PAYG_UPSTREAM_CA_FILE`).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Connections one worker keeps open to upstreams, in all. Beyond it a
/// call waits for one (within its `timeout_ms`).
const MAX_CONNECTIONS_PER_WORKER: usize = 512;

/// An idle upstream connection is closed after this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The TLS settings every worker's clients share.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ClientConfig>,
}

impl TlsSettings {
    /// The public roots, plus every certificate in the PEM file `ca_file`.
    pub fn new(ca_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("PAYG_UPSTREAM_CA_FILE={}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("PAYG_UPSTREAM_CA_FILE={}: {e}", path.display()))?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                anyhow::bail!("PAYG_UPSTREAM_CA_FILE={} holds no usable certificate", path.display());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // HTTP/1.1 to upstreams: what every upstream speaks, and what the
        // streaming and header rules here are written for.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The rustls settings, for the webhook dispatcher's client.
    pub fn client_config(&self) -> ClientConfig {
        (*self.config).clone()
    }
}

/// One worker's clients, one per connect timeout in use (awc sets the
/// connect timeout per client); each pools its connections per upstream.
pub struct Pools {
    tls: Arc<ClientConfig>,
    clients: RefCell<Vec<(Duration, awc::Client)>>,
}

impl Pools {
    pub fn new(tls: &TlsSettings) -> Self {
        Self {
            tls: tls.config.clone(),
            clients: RefCell::new(Vec::new()),
        }
    }

    /// Forgets the client (and so its pooled connections, once calls in
    /// flight on them end) for this connect timeout.
    pub fn discard(&self, connect_timeout: Duration) {
        self.clients.borrow_mut().retain(|(t, _)| *t != connect_timeout);
    }

    /// The client for upstreams with this connect timeout.
    pub fn client(&self, connect_timeout: Duration) -> awc::Client {
        let mut clients = self.clients.borrow_mut();
        if let Some((_, client)) = clients.iter().find(|(t, _)| *t == connect_timeout) {
            return client.clone();
        }
        let connector = awc::Connector::new()
            .rustls_0_23(self.tls.clone())
            .timeout(connect_timeout)
            .limit(MAX_CONNECTIONS_PER_WORKER)
            .conn_keep_alive(KEEP_ALIVE);
        let client = awc::Client::builder()
            .connector(connector)
            // A proxy adds nothing of its own, and passes redirects back.
            .no_default_headers()
            .disable_redirects()
            // Each request sets its own (the API's `timeout_ms`).
            .disable_timeout()
            .finish();
        clients.push((connect_timeout, client.clone()));
        client
    }
}
