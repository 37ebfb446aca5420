//! Billing: periods and the clock, prices, the current month's cost, month
//! close and invoices, export, and payments.
//!
//! - [`pricing`]: the one pure function from usage to money;
//! - [`statement`]: usage records + price versions → priced lines (current cost);
//! - [`close`]: closing a period, invoice numbering;
//! - [`export`]: streamed CSV/JSON export of invoice lines;
//! - [`payments`]: recording payments, webhook signatures, voiding.

pub mod clock;
pub mod close;
pub mod currency;
pub mod export;
pub mod payments;
pub mod period;
pub mod pricing;
pub mod statement;

pub use clock::{Clock, ManualClock, SystemClock};
pub use currency::Currency;
pub use period::Period;
