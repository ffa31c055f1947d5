//! The domain model: orders, money, the status machine and the events a change produces.
//! Pure code: no hyper, no redb, no tokio, no clock reads (callers pass `now`).

pub mod event;
pub mod money;
pub mod order;
pub mod status;
pub mod time;

pub use event::{EventKind, OrderEvent, OrderStatusBroadcast};
pub use order::{ActionDetails, FieldErrors, NewOrder, Order, OrderItem};
pub use status::{Action, Actor, OrderStatus, Refusal, Step};
pub use time::Timestamp;
