//! Events: what a committed change tells hub subscribers, shaped as the user's
//! `OrderStatusBroadcastDto`. The status machine (`status.rs`) says which kinds a move
//! produces; the hub names the client method for each kind and encodes these.

use super::order::Order;
use super::status::{EventKind, OrderStatus};
use super::time::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `OrderStatusBroadcastDto`: an immutable snapshot of an order's tracking state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatusBroadcast {
    pub order_id: Uuid,
    pub order_number: String,
    pub status: OrderStatus,
    pub restaurant_id: Uuid,
    pub last_update: Timestamp,
    pub estimated_delivery: Option<Timestamp>,
    pub actual_delivery: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub occurred_on: Timestamp,
    /// `None` for a snapshot that is not an event (the `SubscribeToOrder` answer).
    pub event_id: Option<Uuid>,
    pub version: u64,
    /// The event's outbox position (`OrderEvent::seq`); `None` for a snapshot. Events stored
    /// before the field existed decode without it.
    #[serde(default)]
    pub sequence: Option<u64>,
}

impl OrderStatusBroadcast {
    /// A snapshot of `order` as it is now; `event_id` is set for real events.
    pub fn of(order: &Order, occurred_on: Timestamp, event_id: Option<Uuid>) -> Self {
        OrderStatusBroadcast {
            order_id: order.id,
            order_number: order.number.clone(),
            status: order.status,
            restaurant_id: order.restaurant_id,
            last_update: order.updated_at,
            estimated_delivery: order.estimated_delivery,
            actual_delivery: order.actual_delivery,
            delivered_at: if order.status == OrderStatus::Delivered {
                order.actual_delivery
            } else {
                None
            },
            occurred_on,
            event_id,
            version: order.version,
            sequence: None,
        }
    }
}

/// One committed event, as stored in the outbox and handed to the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// Position in the outbox: strictly increasing in commit order.
    pub seq: u64,
    pub kind: EventKind,
    pub customer_id: Uuid,
    pub dto: OrderStatusBroadcast,
}

impl OrderEvent {
    pub fn order_id(&self) -> Uuid {
        self.dto.order_id
    }
    pub fn restaurant_id(&self) -> Uuid {
        self.dto.restaurant_id
    }
    pub fn is_terminal(&self) -> bool {
        self.dto.status.is_terminal()
    }
}
