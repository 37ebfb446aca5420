//! Billing: periods and the clock now; pricing, invoices and payments later.

pub mod clock;
pub mod period;

pub use clock::{Clock, ManualClock, SystemClock};
pub use period::Period;
