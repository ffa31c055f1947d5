//! ordertrack: an order-tracking edge server. REST reads and writes over hyper, SignalR hubs over
//! raw WebSockets, orders in an embedded redb file. `main.rs` only parses the CLI.

pub mod auth;
pub mod client;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod run;
pub mod store;
pub mod watch;
