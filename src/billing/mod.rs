//! Billing services: the current month's cost, month close and invoices,
//! export, and payments. They own their transactions and call model
//! functions for every statement; the arithmetic is `domain::pricing`.
//!
//! - [`statement`]: usage records + price versions → priced lines (current cost);
//! - [`close`]: closing a period, invoice numbering, reconciliation;
//! - [`alerts`]: usage alerts — thresholds and low credit, and the events a flush sets off;
//! - [`caps`]: spending caps — who sets them, and the budget leased against them;
//! - [`export`]: streamed CSV/JSON export of invoice lines;
//! - [`credits`]: prepaid credit — top-ups, usage drawing on it, credit given back;
//! - [`payments`]: recording payments, webhook signatures, voiding.
//! - [`usage_cost`]: a meter flush — counters and `users.total_cost` in one transaction.

pub mod alerts;
pub mod caps;
pub mod close;
pub mod credits;
pub mod export;
pub mod payments;
pub mod statement;
pub mod usage_cost;
