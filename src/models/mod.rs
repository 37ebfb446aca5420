//! Row structs, insertables and the queries that go with them.

pub mod api;
pub mod usage;
pub mod user;

pub use api::Api;
pub use user::{NewUser, Role, User, UserStatus};
