//! The domain model: orders, money, the status machine, the events a change produces, and the
//! access rule (who sees and acts on which order). Pure code: no hyper, no redb, no tokio, no
//! clock reads (callers pass `now`).

pub(crate) mod access;
pub(crate) mod event;
pub(crate) mod money;
pub(crate) mod order;
pub(crate) mod order_body;
pub(crate) mod status;
pub(crate) mod time;

pub use access::{may_act, ActRefusal, Principal};
pub use event::{OrderEvent, OrderStatusBroadcast};
pub use order::{ActionDetails, FieldErrors, NewOrder, Order, OrderSummary};
pub use status::{Action, EventKind, OrderStatus, Step};
pub use time::Timestamp;
