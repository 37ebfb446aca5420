//! One integration-test binary: every test drives the real server over HTTP
//! against its own fresh PostgreSQL database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_users;
mod auth;
mod billing;
mod caps;
mod cli;
mod console;
mod credits;
mod durable;
mod errors;
mod export;
mod faults;
mod gateway;
mod helpers;
mod keys;
mod metering;
mod openapi;
mod operations;
mod outage;
mod prices;
mod profile;
mod push;
mod receiver;
mod upstream;
mod usage_daily;
mod webhooks;
