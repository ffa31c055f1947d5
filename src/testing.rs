//! The one door for code outside the server that drives its internals: the benches
//! (`benches/`), the fuzz targets (`fuzz/harness.rs`), the load tool (`src/bin/ordertrack-load`)
//! and the integration tests (`tests/`). Hidden from the docs and no part of the server's
//! surface: the modules stay private, and what those callers need is re-exported here, by name.
//! Add to this list rather than making a module public.

pub use crate::auth::{parse_algorithm, AuthSettings, Authenticator, TokenMinter};
pub use crate::domain::{
    may_act, ActRefusal, Action, ActionDetails, EventKind, NewOrder, Order, OrderEvent,
    OrderStatus, OrderStatusBroadcast, Principal, Step, Timestamp,
};
pub use crate::http::views::details;
pub use crate::hub::protocol;
pub use crate::hub::{
    client_method, negotiate_body, query_value, ConnectionTokens, Counts, Group, HubSettings, Hubs,
    Outbound, SubscriptionTable,
};
pub use crate::metrics::Metrics;
pub use crate::store::schema::{CLOCK, META, ORDERS};
pub use crate::store::writer::spawn as spawn_writer;

pub use crate::store::{
    ActRequest, Acted, EventSink, PlaceRequest, Placed, Store, StoreSettings, WriterHandle,
    WriterSettings, QUICK_REPAIR,
};

/// The commit log, for tests that damage or replay it.
pub mod wal {
    pub use crate::store::wal::{db_id, db_log_seq, CommitLog, LOG_FILE};
}
