//! ordertrack: an order-tracking edge server. REST reads and writes over hyper, SignalR hubs over
//! raw WebSockets, orders in an embedded redb file. `main.rs` only parses the CLI.

pub mod domain;
