#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

//! payg: a self-hosted usage-metering, pay-as-you-go API platform.
//!
//! Where things live (ARCHITECTURE.md has the whole map):
//! - calls are counted in [`metering`] and written by [`models::usage`];
//! - prices, periods, currencies and the clock in [`domain`], the pure core;
//! - close, invoices, export and payments in [`billing`];
//! - who is calling, and with which role, in [`auth`];
//! - what a catalog entry must be, and catalog as code, in [`catalog`];
//! - forwarding a gateway API's calls to its upstream in [`gateway`];
//! - every error status in [`error`];
//! - the server and middleware order in [`startup`]; background loops in [`jobs`].

pub mod actions;
pub mod app;
pub mod auth;
pub mod billing;
pub mod catalog;
pub mod clients;
pub mod config;
pub mod console;
pub mod db;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod jobs;
pub mod metering;
pub mod models;
pub mod redis_store;
pub mod routes;
pub mod schema;
pub mod startup;
pub mod telemetry;
pub mod webhooks;
