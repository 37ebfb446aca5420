//! The pure core: what a period, a currency, an instant and a price are,
//! and the checked text types that request bodies parse into. Nothing here
//! knows about HTTP or the database; everything above imports it.
//!
//! - [`period`]: a calendar month, and a calendar day, in the billing time zone;
//! - [`currency`]: ISO 4217 codes with their minor units;
//! - [`clock`]: the one source of "now";
//! - [`pricing`]: the one pricing function, usage → money;
//! - [`spend`]: what a spending cap allows: the charge bound, a lease's size;
//! - [`text`]: names, references, slugs, emails — each rule written once;
//! - [`gateway`]: which path a gateway prefix matches, and payg's signature;
//! - [`webhook`]: outbound events, their Standard Webhooks signature, retries.

pub mod clock;
pub mod currency;
pub mod gateway;
pub mod period;
pub mod pricing;
pub mod spend;
pub mod text;
pub mod webhook;

pub use clock::{Clock, ManualClock, SystemClock};
pub use currency::Currency;
pub use period::{Day, DayRange, Period};
