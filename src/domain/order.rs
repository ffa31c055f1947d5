//! Orders: the stored shape and the priced snapshot the order service submits. Reading and
//! validating request bodies into these is `order_body.rs`.

use super::money::{format_amount, minor_digits};
use super::status::{initial_status, Action, OrderStatus};
use super::time::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Validation failures: camelCase field path → messages.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customization {
    pub group_name: String,
    pub choice_name: String,
    pub price_adjustment: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub id: Uuid,
    pub menu_item_id: Uuid,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Decimal,
    pub customizations: Vec<Customization>,
    pub line_total: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub street: String,
    pub city: String,
    pub state: Option<String>,
    pub zip_code: Option<String>,
    pub country: Option<String>,
}

/// A stored order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    pub number: String,
    pub customer_id: Uuid,
    pub restaurant_id: Uuid,
    pub restaurant_name: String,
    pub status: OrderStatus,
    pub version: u64,
    pub placed_at: Timestamp,
    pub updated_at: Timestamp,
    pub estimated_delivery: Option<Timestamp>,
    pub actual_delivery: Option<Timestamp>,
    pub currency: String,
    pub items: Vec<OrderItem>,
    pub subtotal: Decimal,
    pub discount: Decimal,
    pub delivery_fee: Decimal,
    pub tip: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub payment_method: String,
    pub note: Option<String>,
    pub delivery_address: Option<Address>,
    pub applied_coupon_id: Option<Uuid>,
    pub source_team_cart_id: Option<Uuid>,
    pub cancellation_reason: Option<String>,
}

/// What a history page shows of an order, decoded straight from the stored order: the fields
/// the page does not show (items' details, address, the other amounts) are skipped, not built.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OrderSummary {
    pub id: Uuid,
    pub number: String,
    pub restaurant_id: Uuid,
    pub restaurant_name: String,
    pub status: OrderStatus,
    pub placed_at: Timestamp,
    pub currency: String,
    pub total: Decimal,
    items: Vec<ItemQuantity>,
}

/// An item of an [`OrderSummary`]: only its quantity is read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct ItemQuantity {
    quantity: u32,
}

impl OrderSummary {
    /// An amount of this order rendered with its currency's digits.
    pub fn fmt(&self, d: Decimal) -> String {
        format_amount(d, minor_digits(&self.currency).unwrap_or(2))
    }

    pub fn item_count(&self) -> u32 {
        self.items.iter().map(|i| i.quantity).sum()
    }
}

impl Order {
    pub fn digits(&self) -> u32 {
        minor_digits(&self.currency).unwrap_or(2)
    }

    /// An amount of this order rendered with its currency's digits.
    pub fn fmt(&self, d: Decimal) -> String {
        format_amount(d, self.digits())
    }

    pub fn item_count(&self) -> u32 {
        self.items.iter().map(|i| i.quantity).sum()
    }

    /// Applies a decided move to `to` at `now`: one more version, an update time never earlier
    /// than the last one, and the fields the action carries. Returns the previous status.
    pub fn advance(
        &mut self,
        action: Action,
        to: OrderStatus,
        now: Timestamp,
        details: &ActionDetails,
    ) -> OrderStatus {
        let now = now.max(self.updated_at);
        let old = self.status;
        self.status = to;
        self.version += 1;
        self.updated_at = now;
        match action {
            Action::Accept => self.estimated_delivery = details.estimated_delivery,
            Action::Delivered => self.actual_delivery = Some(details.delivered_at.unwrap_or(now)),
            Action::Cancel | Action::Reject | Action::PaymentFailed => {
                self.cancellation_reason = details.reason.clone()
            }
            _ => {}
        }
        old
    }

    /// The HTTP entity tag of this version.
    pub fn etag(&self) -> String {
        format!("\"order-{}-v{}\"", self.id, self.version)
    }
}

/// What an action may carry besides its name: the ETA of an accept, the time of a delivery,
/// the reason of a reject or cancel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionDetails {
    pub estimated_delivery: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub reason: Option<String>,
}

/// A validated, priced order snapshot, ready to be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: Uuid,
    pub restaurant_id: Uuid,
    pub restaurant_name: String,
    pub currency: String,
    pub items: Vec<NewItem>,
    pub delivery_fee: Decimal,
    pub tip: Decimal,
    pub tax: Decimal,
    pub discount: Decimal,
    pub payment_method: String,
    pub note: Option<String>,
    pub delivery_address: Option<Address>,
    pub applied_coupon_id: Option<Uuid>,
    pub source_team_cart_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewItem {
    pub menu_item_id: Uuid,
    pub name: String,
    pub quantity: u32,
    pub unit_price: Decimal,
    pub customizations: Vec<Customization>,
}

impl NewItem {
    /// (unit + Σ adjustments) × quantity.
    pub fn line_total(&self) -> Decimal {
        let adj: Decimal = self.customizations.iter().map(|c| c.price_adjustment).sum();
        (self.unit_price + adj) * Decimal::from(self.quantity)
    }
}

impl NewOrder {
    pub fn subtotal(&self) -> Decimal {
        self.items.iter().map(NewItem::line_total).sum()
    }

    /// subtotal − discount + fee + tip + tax.
    pub fn total(&self) -> Decimal {
        self.subtotal() - self.discount + self.delivery_fee + self.tip + self.tax
    }

    /// Builds the stored order; ids, number and times come from the store's writer.
    pub fn into_order(
        self,
        id: Uuid,
        number: String,
        now: Timestamp,
        item_ids: &mut dyn FnMut() -> Uuid,
    ) -> Order {
        let subtotal = self.subtotal();
        let total = self.total();
        let items = self
            .items
            .into_iter()
            .map(|i| OrderItem {
                id: item_ids(),
                line_total: i.line_total(),
                menu_item_id: i.menu_item_id,
                name: i.name,
                quantity: i.quantity,
                unit_price: i.unit_price,
                customizations: i.customizations,
            })
            .collect();
        Order {
            id,
            number,
            customer_id: self.customer_id,
            restaurant_id: self.restaurant_id,
            restaurant_name: self.restaurant_name,
            status: initial_status(&self.payment_method),
            version: 1,
            placed_at: now,
            updated_at: now,
            estimated_delivery: None,
            actual_delivery: None,
            currency: self.currency,
            items,
            subtotal,
            discount: self.discount,
            delivery_fee: self.delivery_fee,
            tip: self.tip,
            tax: self.tax,
            total,
            payment_method: self.payment_method,
            note: self.note,
            delivery_address: self.delivery_address,
            applied_coupon_id: self.applied_coupon_id,
            source_team_cart_id: self.source_team_cart_id,
            cancellation_reason: None,
        }
    }
}
