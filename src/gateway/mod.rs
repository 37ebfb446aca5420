//! The gateway: a catalog entry with an upstream is served by forwarding the
//! call there, streaming both ways. Authentication, limits and counting are
//! the metering middleware's, exactly as for a built-in API; this module only
//! decides what crosses to the upstream and back.
//!
//! - [`target`]: an upstream as the catalog holds it in memory, its metrics;
//! - [`headers`]: which headers cross (hop-by-hop, credentials, payg's own);
//! - [`pools`]: the HTTP clients (per worker, keep-alive, rustls);
//! - [`proxy`]: one forwarded call, and how it fails.

pub mod headers;
pub mod pools;
pub mod proxy;
pub mod target;

pub use pools::{Pools, TlsSettings};
pub use proxy::{Forward, UpstreamAnswer, UpstreamError, forward};
pub use target::{GatewayCall, UpstreamMetrics, UpstreamTarget};
