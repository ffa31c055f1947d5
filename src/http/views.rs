//! The JSON shapes of the REST answers (status, details, history page, action answer).
//! Money goes out as JSON numbers with the currency's minor digits, written from decimals.

use crate::domain::{Order, Principal, Timestamp};
use crate::store::heads::OrderHead;
use crate::store::{BoardPage, HistoryPage};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A decimal amount already rendered with its currency's digits; emitted as a JSON number.
pub struct Amount(String);

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match RawValue::from_string(self.0.clone()) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_str(&self.0),
        }
    }
}

/// A timestamp as RFC 3339 UTC text.
pub struct Ts(pub Timestamp);

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.rfc3339())
    }
}

fn ts(t: Option<Timestamp>) -> Option<Ts> {
    t.map(Ts)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView<'a> {
    order_id: Uuid,
    status: &'a str,
    last_update_timestamp: Ts,
    estimated_delivery_time: Option<Ts>,
    version: u64,
}

pub fn status(o: &OrderHead) -> StatusView<'_> {
    StatusView {
        order_id: o.id,
        status: o.status.as_str(),
        last_update_timestamp: Ts(o.updated_at),
        estimated_delivery_time: ts(o.estimated_delivery),
        version: o.version,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CustomizationView<'a> {
    group_name: &'a str,
    choice_name: &'a str,
    price_adjustment_amount: Amount,
    price_adjustment_currency: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ItemView<'a> {
    order_item_id: Uuid,
    menu_item_id: Uuid,
    name: &'a str,
    quantity: u32,
    unit_price_amount: Amount,
    unit_price_currency: &'a str,
    line_item_total_amount: Amount,
    line_item_total_currency: &'a str,
    customizations: Vec<CustomizationView<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AddressView<'a> {
    street: &'a str,
    city: &'a str,
    state: Option<&'a str>,
    zip_code: Option<&'a str>,
    country: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetailsView<'a> {
    order_id: Uuid,
    order_number: &'a str,
    customer_id: Uuid,
    restaurant_id: Uuid,
    restaurant_name: &'a str,
    status: &'a str,
    version: u64,
    placement_timestamp: Ts,
    last_update_timestamp: Ts,
    estimated_delivery_time: Option<Ts>,
    actual_delivery_time: Option<Ts>,
    subtotal_amount: Amount,
    subtotal_currency: &'a str,
    discount_amount: Amount,
    discount_currency: &'a str,
    delivery_fee_amount: Amount,
    delivery_fee_currency: &'a str,
    tip_amount: Amount,
    tip_currency: &'a str,
    tax_amount: Amount,
    tax_currency: &'a str,
    total_amount: Amount,
    total_currency: &'a str,
    applied_coupon_id: Option<Uuid>,
    source_team_cart_id: Option<Uuid>,
    payment_method: &'a str,
    note: Option<&'a str>,
    delivery_address: Option<AddressView<'a>>,
    cancellable: bool,
    items: Vec<ItemView<'a>>,
}

#[derive(Serialize)]
pub struct Details<'a> {
    order: DetailsView<'a>,
}

/// The details body. `cancellable` tells whether this caller could cancel the order now.
pub fn details<'a>(o: &'a Order, viewer: &Principal) -> Details<'a> {
    let cur = o.currency.as_str();
    let amt = |d| Amount(o.fmt(d));
    let cancellable = viewer.may_cancel_now(o);
    Details {
        order: DetailsView {
            order_id: o.id,
            order_number: &o.number,
            customer_id: o.customer_id,
            restaurant_id: o.restaurant_id,
            restaurant_name: &o.restaurant_name,
            status: o.status.as_str(),
            version: o.version,
            placement_timestamp: Ts(o.placed_at),
            last_update_timestamp: Ts(o.updated_at),
            estimated_delivery_time: ts(o.estimated_delivery),
            actual_delivery_time: ts(o.actual_delivery),
            subtotal_amount: amt(o.subtotal),
            subtotal_currency: cur,
            discount_amount: amt(o.discount),
            discount_currency: cur,
            delivery_fee_amount: amt(o.delivery_fee),
            delivery_fee_currency: cur,
            tip_amount: amt(o.tip),
            tip_currency: cur,
            tax_amount: amt(o.tax),
            tax_currency: cur,
            total_amount: amt(o.total),
            total_currency: cur,
            applied_coupon_id: o.applied_coupon_id,
            source_team_cart_id: o.source_team_cart_id,
            payment_method: &o.payment_method,
            note: o.note.as_deref(),
            delivery_address: o.delivery_address.as_ref().map(|a| AddressView {
                street: &a.street,
                city: &a.city,
                state: a.state.as_deref(),
                zip_code: a.zip_code.as_deref(),
                country: a.country.as_deref(),
            }),
            cancellable,
            items: o
                .items
                .iter()
                .map(|i| ItemView {
                    order_item_id: i.id,
                    menu_item_id: i.menu_item_id,
                    name: &i.name,
                    quantity: i.quantity,
                    unit_price_amount: amt(i.unit_price),
                    unit_price_currency: cur,
                    line_item_total_amount: amt(i.line_total),
                    line_item_total_currency: cur,
                    customizations: i
                        .customizations
                        .iter()
                        .map(|c| CustomizationView {
                            group_name: &c.group_name,
                            choice_name: &c.choice_name,
                            price_adjustment_amount: amt(c.price_adjustment),
                            price_adjustment_currency: cur,
                        })
                        .collect(),
                })
                .collect(),
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryView<'a> {
    order_id: Uuid,
    order_number: &'a str,
    status: &'a str,
    placement_timestamp: Ts,
    restaurant_id: Uuid,
    restaurant_name: &'a str,
    total_amount: Amount,
    total_currency: &'a str,
    item_count: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PageView<'a> {
    items: Vec<SummaryView<'a>>,
    page_number: u32,
    page_size: u32,
    total_pages: u64,
    total_count: u64,
    has_previous_page: bool,
    has_next_page: bool,
    /// The kitchen board's cursor: the newest event sequence the page reflects.
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<u64>,
}

pub fn page(p: &HistoryPage, page_number: u32, page_size: u32) -> PageView<'_> {
    page_of(&p.orders, p.total_count, page_number, page_size)
}

/// A kitchen board page: the `/orders/my` shape plus `cursor`.
pub fn board(p: &BoardPage, page_number: u32, page_size: u32) -> PageView<'_> {
    PageView {
        cursor: Some(p.cursor),
        ..page_of(&p.orders, p.total_count, page_number, page_size)
    }
}

fn page_of(
    orders: &[crate::domain::OrderSummary],
    total_count: u64,
    page_number: u32,
    page_size: u32,
) -> PageView<'_> {
    let total_pages = total_count.div_ceil(page_size as u64);
    PageView {
        items: orders
            .iter()
            .map(|o| SummaryView {
                order_id: o.id,
                order_number: &o.number,
                status: o.status.as_str(),
                placement_timestamp: Ts(o.placed_at),
                restaurant_id: o.restaurant_id,
                restaurant_name: &o.restaurant_name,
                total_amount: Amount(o.fmt(o.total)),
                total_currency: &o.currency,
                item_count: o.item_count(),
            })
            .collect(),
        page_number,
        page_size,
        total_pages,
        total_count,
        has_previous_page: page_number > 1 && total_pages > 0,
        has_next_page: (page_number as u64) < total_pages,
        cursor: None,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionView<'a> {
    order_id: Uuid,
    order_number: &'a str,
    status: &'a str,
    placement_timestamp: Ts,
    last_update_timestamp: Ts,
    estimated_delivery_time: Option<Ts>,
    actual_delivery_time: Option<Ts>,
    version: u64,
}

pub fn action(o: &Order) -> ActionView<'_> {
    ActionView {
        order_id: o.id,
        order_number: &o.number,
        status: o.status.as_str(),
        placement_timestamp: Ts(o.placed_at),
        last_update_timestamp: Ts(o.updated_at),
        estimated_delivery_time: ts(o.estimated_delivery),
        actual_delivery_time: ts(o.actual_delivery),
        version: o.version,
    }
}
