#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

//! payg: a self-hosted usage-metering, pay-as-you-go API platform.
//!
//! Where things live:
//! - calls are counted in [`metering`] (middleware, recorder, flusher);
//! - periods and the clock in [`billing`];
//! - who is calling in [`auth`];
//! - every error status in [`error`];
//! - the server and middleware order in [`startup`].

pub mod app;
pub mod auth;
pub mod billing;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod jobs;
pub mod metering;
pub mod models;
pub mod redis_store;
pub mod routes;
pub mod schema;
pub mod startup;
pub mod telemetry;
