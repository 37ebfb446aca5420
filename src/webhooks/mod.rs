//! Outbound webhooks: the endpoints admins and consumers register
//! ([`endpoints`]) and the dispatcher that sends the outbox to them
//! ([`dispatch`]). Events are written by the billing services, in the
//! transactions of their causes (`models::webhook::Outbox::emit`); what
//! each carries and how it is signed is `domain::webhook`.

pub mod dispatch;
pub mod endpoints;

pub use dispatch::{DeliveryMetrics, Dispatcher};
pub use endpoints::{Owner, WebhookError};
