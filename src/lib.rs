//! ordertrack: an order-tracking edge server. REST reads and writes over hyper, SignalR hubs over
//! raw WebSockets, orders in an embedded redb file. The layers, ground up (an import only points
//! down; `docs/architecture.md` walks through them, `tests/architecture.rs` checks them):
//!
//! - `domain/`: orders, money, the status machine, events, the access rule. Pure.
//! - `store/`: the redb file, the single writer, the commit log. `auth/`: token → principal
//!   (static keys or the identity provider's JWK set).
//!   `tls.rs`: certificates, keys and rustls configurations (a leaf).
//! - `metrics.rs`: the counters behind `/metrics`.
//! - `hub/`: the SignalR engine (protocol codecs, subscriptions, connections, fan-out).
//!   `cluster/`: cluster mode over NATS JetStream (the log, the lease; only with `--nats`).
//! - `http/`: the HTTP adapter for REST and for the hub endpoints. `client.rs`: the operator
//!   commands' client.
//! - `cli.rs` (flags), `config.rs` (settings), then the commands: `run.rs` (`serve`, `token`),
//!   `demo.rs`, `watch.rs`, `db.rs`. `main.rs` parses and calls one.
//!
//! Every module is private. The surface is the list below, plus [`testing`], the one door for
//! benches, fuzz targets, the load tool and integration tests.

mod auth;
mod cli;
mod client;
mod cluster;
mod config;
mod db;
mod demo;
mod domain;
mod http;
mod hub;
mod metrics;
mod run;
mod store;
mod tls;
mod watch;

pub use cli::{Cli, Command};
pub use db::{run as db, DbError};
pub use demo::{demo, DemoError};
pub use run::{serve, token, RunError};
pub use watch::{watch, WatchError};

#[doc(hidden)]
pub mod testing;
