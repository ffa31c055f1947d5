//! Request bodies: `POST /api/v1/orders` read into a [`NewOrder`] and the small bodies of the
//! status actions (a reason, a time), each validated field by field so every bad field is
//! reported at once, with amounts read exactly from the JSON text.

use super::money::{minor_digits, parse_amount};
use super::order::{Address, Customization, FieldErrors, NewItem, NewOrder};
use super::time::Timestamp;
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use uuid::Uuid;

pub const MAX_ITEMS: usize = 50;
pub const MAX_QUANTITY: i64 = 99;
pub const MAX_CUSTOMIZATIONS: usize = 20;
pub const MAX_NAME: usize = 200;
pub const MAX_NOTE: usize = 1000;
pub const MAX_REASON: usize = 500;
pub const MAX_PAYMENT_METHOD: usize = 50;

impl NewOrder {
    /// Parses and validates the JSON body of `POST /api/v1/orders`, reporting every bad field.
    pub fn parse(body: &[u8]) -> Result<NewOrder, FieldErrors> {
        let mut errors = FieldErrors::new();
        let Some(mut top) = Fields::from_bytes(body, "", &mut errors) else {
            return Err(errors);
        };
        let e = &mut errors;
        let customer_id = top.uuid("customerId", true, e);
        let restaurant_id = top.uuid("restaurantId", true, e);
        let restaurant_name = top.string("restaurantName", true, MAX_NAME, e);
        let currency = top.string("currency", true, 3, e);
        let digits = match currency.as_deref().map(minor_digits) {
            Some(Some(d)) => Some(d),
            Some(None) => {
                push(e, "currency", "must be an ISO 4217 code such as USD");
                None
            }
            None => None,
        };
        let payment_method = top.string("paymentMethod", true, MAX_PAYMENT_METHOD, e);
        if let Some(pm) = &payment_method {
            if !pm
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                push(
                    e,
                    "paymentMethod",
                    "must contain only letters, digits, '-' and '_'",
                );
            }
        }
        let delivery_fee = top.amount("deliveryFee", digits, e);
        let tip = top.amount("tip", digits, e);
        let tax = top.amount("tax", digits, e);
        let discount = top.amount("discount", digits, e);
        let note = top.string("note", false, MAX_NOTE, e);
        let applied_coupon_id = top.uuid("appliedCouponId", false, e);
        let source_team_cart_id = top.uuid("sourceTeamCartId", false, e);
        let delivery_address = top.address("deliveryAddress", e);
        let items = top.items(digits, e);
        for key in top.unknown_keys() {
            push(e, &key, "is not a known field");
        }
        if let (Some(items), Some(discount)) = (&items, discount) {
            let subtotal: Decimal = items.iter().map(NewItem::line_total).sum();
            if discount > subtotal {
                push(e, "discount", "must not exceed the subtotal");
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let (
            Some(customer_id),
            Some(restaurant_id),
            Some(restaurant_name),
            Some(currency),
            Some(payment_method),
            Some(items),
        ) = (
            customer_id,
            restaurant_id,
            restaurant_name,
            currency,
            payment_method,
            items,
        )
        else {
            push(&mut errors, "", "the order is incomplete");
            return Err(errors);
        };
        let order = NewOrder {
            customer_id,
            restaurant_id,
            restaurant_name,
            currency,
            items,
            delivery_fee: delivery_fee.unwrap_or_default(),
            tip: tip.unwrap_or_default(),
            tax: tax.unwrap_or_default(),
            discount: discount.unwrap_or_default(),
            payment_method,
            note,
            delivery_address,
            applied_coupon_id,
            source_team_cart_id,
        };
        Ok(order)
    }
}

fn push(errors: &mut FieldErrors, field: &str, msg: &str) {
    errors
        .entry(field.to_string())
        .or_default()
        .push(msg.to_string());
}

/// Why a value is not a JSON object: for text that is not JSON at all, what is wrong and where
/// (line and column, both from 1); for valid JSON of another shape, just that.
fn not_an_object(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => {
            let (line, column) = (e.line(), e.column());
            let text = e.to_string();
            let what = text
                .strip_suffix(&format!(" at line {line} column {column}"))
                .unwrap_or(&text);
            format!("is not valid JSON: {what} (line {line}, column {column})")
        }
        Category::Data | Category::Io => "must be a JSON object".to_string(),
    }
}

/// A JSON object whose values are kept as raw text, so numbers are read exactly and every
/// field can be checked on its own.
struct Fields {
    prefix: String,
    map: BTreeMap<String, Box<RawValue>>,
    seen: Vec<&'static str>,
}

impl Fields {
    fn from_bytes(body: &[u8], prefix: &str, errors: &mut FieldErrors) -> Option<Fields> {
        match serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(body) {
            Ok(map) => Some(Fields {
                prefix: prefix.to_string(),
                map,
                seen: Vec::new(),
            }),
            Err(e) => {
                let field = prefix.trim_end_matches('.');
                push(errors, field, &not_an_object(&e));
                None
            }
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// The raw value of `key`, with JSON `null` treated as absent.
    fn raw(&mut self, key: &'static str) -> Option<&RawValue> {
        self.seen.push(key);
        self.map
            .get(key)
            .map(|b| &**b)
            .filter(|r| r.get().trim() != "null")
    }

    fn unknown_keys(&self) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| !self.seen.contains(&k.as_str()))
            .map(|k| self.path(k))
            .collect()
    }

    fn string(
        &mut self,
        key: &'static str,
        required: bool,
        max: usize,
        e: &mut FieldErrors,
    ) -> Option<String> {
        let path = self.path(key);
        match self.raw(key) {
            None => {
                if required {
                    push(e, &path, "is required");
                }
                None
            }
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(s) if s.trim().is_empty() => {
                    if required {
                        push(e, &path, "must not be empty");
                    }
                    None
                }
                Ok(s) if s.chars().count() > max => {
                    push(e, &path, &format!("must be at most {max} characters"));
                    None
                }
                Ok(s) if s.chars().any(|c| c.is_control() && c != '\n') => {
                    push(e, &path, "must not contain control characters");
                    None
                }
                Ok(s) => Some(s),
                Err(_) => {
                    push(e, &path, "must be a string");
                    None
                }
            },
        }
    }

    fn uuid(&mut self, key: &'static str, required: bool, e: &mut FieldErrors) -> Option<Uuid> {
        let path = self.path(key);
        // A value that is present must be a UUID: an empty string does not mean "absent".
        let present = self.raw(key).is_some();
        let s = self.string(key, required || present, 64, e)?;
        match Uuid::parse_str(&s) {
            Ok(u) => Some(u),
            Err(_) => {
                push(e, &path, "must be a UUID");
                None
            }
        }
    }

    /// A non-negative amount with at most `digits` decimals; absent means zero.
    fn amount(
        &mut self,
        key: &'static str,
        digits: Option<u32>,
        e: &mut FieldErrors,
    ) -> Option<Decimal> {
        let path = self.path(key);
        let raw = self.raw(key)?;
        let text = raw.get().trim();
        let text = match serde_json::from_str::<String>(text) {
            Ok(s) => s,
            Err(_) => text.to_string(),
        };
        match parse_amount(&text, digits.unwrap_or(3), false) {
            Ok(d) => Some(d),
            Err(err) => {
                push(e, &path, &err.message());
                None
            }
        }
    }

    fn required_amount(
        &mut self,
        key: &'static str,
        digits: Option<u32>,
        e: &mut FieldErrors,
    ) -> Option<Decimal> {
        if self.map.get(key).is_none_or(|r| r.get().trim() == "null") {
            push(e, &self.path(key), "is required");
            self.seen.push(key);
            return None;
        }
        self.amount(key, digits, e)
    }

    fn integer(&mut self, key: &'static str, e: &mut FieldErrors) -> Option<i64> {
        let path = self.path(key);
        let Some(raw) = self.raw(key) else {
            push(e, &path, "is required");
            return None;
        };
        match serde_json::from_str::<i64>(raw.get()) {
            Ok(n) => Some(n),
            Err(_) => {
                push(e, &path, "must be an integer");
                None
            }
        }
    }

    fn array(&mut self, key: &'static str, e: &mut FieldErrors) -> Option<Vec<Box<RawValue>>> {
        let path = self.path(key);
        let raw = self.raw(key)?;
        match serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()) {
            Ok(v) => Some(v),
            Err(_) => {
                push(e, &path, "must be an array");
                None
            }
        }
    }

    fn address(&mut self, key: &'static str, e: &mut FieldErrors) -> Option<Address> {
        let path = self.path(key);
        let raw = self.raw(key)?.get().to_string();
        let mut f = Fields::from_bytes(raw.as_bytes(), &format!("{path}."), e)?;
        let street = f.string("street", true, MAX_NAME, e);
        let city = f.string("city", true, MAX_NAME, e);
        let state = f.string("state", false, MAX_NAME, e);
        let zip_code = f.string("zipCode", false, 32, e);
        let country = f.string("country", false, MAX_NAME, e);
        for k in f.unknown_keys() {
            push(e, &k, "is not a known field");
        }
        Some(Address {
            street: street?,
            city: city?,
            state,
            zip_code,
            country,
        })
    }

    fn items(&mut self, digits: Option<u32>, e: &mut FieldErrors) -> Option<Vec<NewItem>> {
        let Some(list) = self.array("items", e) else {
            if !e.contains_key("items") {
                push(e, "items", "is required");
            }
            return None;
        };
        if list.is_empty() || list.len() > MAX_ITEMS {
            push(
                e,
                "items",
                &format!("must hold between 1 and {MAX_ITEMS} items"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        for (i, raw) in list.iter().enumerate() {
            match parse_item(raw, &format!("items[{i}]."), digits, e) {
                Some(item) => out.push(item),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

fn parse_item(
    raw: &RawValue,
    prefix: &str,
    digits: Option<u32>,
    e: &mut FieldErrors,
) -> Option<NewItem> {
    let mut f = Fields::from_bytes(raw.get().as_bytes(), prefix, e)?;
    let menu_item_id = f.uuid("menuItemId", true, e);
    let name = f.string("name", true, MAX_NAME, e);
    let quantity = f.integer("quantity", e).and_then(|q| {
        if (1..=MAX_QUANTITY).contains(&q) {
            Some(q as u32)
        } else {
            push(
                e,
                &f.path("quantity"),
                &format!("must be between 1 and {MAX_QUANTITY}"),
            );
            None
        }
    });
    let unit_price = f.required_amount("unitPrice", digits, e);
    let mut customizations = Some(Vec::new());
    if let Some(list) = f.array("customizations", e) {
        if list.len() > MAX_CUSTOMIZATIONS {
            push(
                e,
                &f.path("customizations"),
                &format!("must hold at most {MAX_CUSTOMIZATIONS} entries"),
            );
            customizations = None;
        }
        for (j, c) in list.iter().enumerate().take(MAX_CUSTOMIZATIONS) {
            let p = format!("{prefix}customizations[{j}].");
            let parsed = Fields::from_bytes(c.get().as_bytes(), &p, e).and_then(|mut cf| {
                let group_name = cf.string("groupName", true, MAX_NAME, e);
                let choice_name = cf.string("choiceName", true, MAX_NAME, e);
                let price_adjustment = cf.amount("priceAdjustment", digits, e);
                for k in cf.unknown_keys() {
                    push(e, &k, "is not a known field");
                }
                Some(Customization {
                    group_name: group_name?,
                    choice_name: choice_name?,
                    price_adjustment: price_adjustment.unwrap_or_default(),
                })
            });
            match (parsed, customizations.as_mut()) {
                (Some(c), Some(v)) => v.push(c),
                _ => customizations = None,
            }
        }
    } else if f
        .map
        .get("customizations")
        .is_some_and(|r| r.get().trim() != "null")
    {
        customizations = None;
    }
    for k in f.unknown_keys() {
        push(e, &k, "is not a known field");
    }
    Some(NewItem {
        menu_item_id: menu_item_id?,
        name: name?,
        quantity: quantity?,
        unit_price: unit_price?,
        customizations: customizations?,
    })
}

/// Reads an optional free-text reason (`reject`, `cancel`) from a body that may be empty.
pub fn parse_reason(body: &[u8]) -> Result<Option<String>, FieldErrors> {
    let mut errors = FieldErrors::new();
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    let Some(mut f) = Fields::from_bytes(body, "", &mut errors) else {
        return Err(errors);
    };
    let reason = f.string("reason", false, MAX_REASON, &mut errors);
    for k in f.unknown_keys() {
        push(&mut errors, &k, "is not a known field");
    }
    if errors.is_empty() {
        Ok(reason)
    } else {
        Err(errors)
    }
}

/// Reads an optional RFC 3339 timestamp field from a body that may be empty.
pub fn parse_time_field(
    body: &[u8],
    key: &'static str,
    required: bool,
) -> Result<Option<Timestamp>, FieldErrors> {
    let mut errors = FieldErrors::new();
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        if required {
            push(&mut errors, key, "is required");
            return Err(errors);
        }
        return Ok(None);
    }
    let Some(mut f) = Fields::from_bytes(body, "", &mut errors) else {
        return Err(errors);
    };
    let text = f.string(key, required, 64, &mut errors);
    for k in f.unknown_keys() {
        push(&mut errors, &k, "is not a known field");
    }
    let ts = match text {
        Some(t) => match Timestamp::parse_rfc3339(&t) {
            Some(ts) => Some(ts),
            None => {
                push(&mut errors, key, "must be an RFC 3339 timestamp");
                None
            }
        },
        None => None,
    };
    if errors.is_empty() {
        Ok(ts)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::{dec, format_amount};
    use crate::domain::{Action, ActionDetails, OrderStatus};
    use proptest::prelude::*;

    fn body(items: &str, extra: &str) -> String {
        format!(
            r#"{{"customerId":"9f54b1a2-0000-4000-8000-000000000001","restaurantId":"a1b2c3d4-e5f6-4890-abcd-ef1234567890",
            "restaurantName":"Luigi's","currency":"USD","items":{items},
            "deliveryFee":2.99,"tip":4.00,"tax":0,"discount":0,"paymentMethod":"CashOnDelivery"{extra}}}"#
        )
    }

    const PIZZA: &str = r#"[{"menuItemId":"7d1f2c1e-0000-4000-8000-000000000002","name":"Margherita Pizza","quantity":1,"unitPrice":12.00,"customizations":[]}]"#;

    #[test]
    fn the_users_example_prices_correctly() {
        let items = r#"[{"menuItemId":"7d1f2c1e-0000-4000-8000-000000000002","name":"Margherita Pizza","quantity":1,"unitPrice":12.00},
                        {"menuItemId":"7d1f2c1e-0000-4000-8000-000000000003","name":"Calzone","quantity":1,"unitPrice":15.00,
                         "customizations":[{"groupName":"Extras","choiceName":"Olives","priceAdjustment":1.50}]}]"#;
        let o = NewOrder::parse(body(items, "").as_bytes()).unwrap();
        assert_eq!(o.subtotal(), dec("28.50"));
        assert_eq!(o.total(), dec("35.49"));
        assert_eq!(format_amount(o.total(), 2), "35.49");
    }

    #[test]
    fn lists_every_bad_field() {
        let items = r#"[{"menuItemId":"nope","name":"","quantity":100,"unitPrice":-1},
                        {"menuItemId":"7d1f2c1e-0000-4000-8000-000000000002","name":"x","quantity":1,"unitPrice":1.001,
                         "customizations":[{"groupName":"g","choiceName":"c","priceAdjustment":"abc"}]}]"#;
        let errs = NewOrder::parse(
            body(
                items,
                r#","tip":-2"#.replace(",\"tip\":-2", ",\"bogus\":1").as_str(),
            )
            .as_bytes(),
        )
        .unwrap_err();
        for f in [
            "items[0].menuItemId",
            "items[0].name",
            "items[0].quantity",
            "items[0].unitPrice",
            "items[1].unitPrice",
            "items[1].customizations[0].priceAdjustment",
            "bogus",
        ] {
            assert!(errs.contains_key(f), "missing {f} in {errs:?}");
        }
    }

    #[test]
    fn advance_bumps_version_keeps_time_monotonic_and_records_action_fields() {
        let new = NewOrder::parse(body(PIZZA, "").as_bytes()).unwrap();
        let mut ids = Uuid::new_v4;
        let mut o = new.into_order(
            Uuid::new_v4(),
            "ORD-2025-000001".into(),
            Timestamp(5_000),
            &mut ids,
        );
        let eta = Timestamp(9_000_000);
        let details = ActionDetails {
            estimated_delivery: Some(eta),
            ..ActionDetails::default()
        };
        // The clock went back: the update time stays at the order's last update.
        let old = o.advance(
            Action::Accept,
            OrderStatus::Accepted,
            Timestamp(1_000),
            &details,
        );
        assert_eq!(old, OrderStatus::Placed);
        assert_eq!(
            (o.status, o.version, o.updated_at),
            (OrderStatus::Accepted, 2, Timestamp(5_000))
        );
        assert_eq!(o.estimated_delivery, Some(eta));
        o.advance(
            Action::Delivered,
            OrderStatus::Delivered,
            Timestamp(7_000),
            &ActionDetails::default(),
        );
        assert_eq!(o.actual_delivery, Some(Timestamp(7_000)));
        assert_eq!(o.version, 3);
    }

    #[test]
    fn item_count_limits() {
        let errs = NewOrder::parse(body("[]", "").as_bytes()).unwrap_err();
        assert!(errs.contains_key("items"));
        let many = format!("[{}]", vec![&PIZZA[1..PIZZA.len() - 1]; 51].join(","));
        let errs = NewOrder::parse(body(&many, "").as_bytes()).unwrap_err();
        assert!(errs.contains_key("items"));
        let fifty = format!("[{}]", vec![&PIZZA[1..PIZZA.len() - 1]; 50].join(","));
        assert!(NewOrder::parse(body(&fifty, "").as_bytes()).is_ok());
    }

    #[test]
    fn malformed_and_non_object_bodies() {
        assert!(NewOrder::parse(b"{").is_err());
        assert!(NewOrder::parse(b"[]").is_err());
        assert!(NewOrder::parse(b"").is_err());
        let errs = NewOrder::parse(b"{}").unwrap_err();
        assert!(errs.contains_key("customerId") && errs.contains_key("items"));
    }

    #[test]
    fn currency_digits_apply() {
        let yen = body(PIZZA, "").replace("\"USD\"", "\"JPY\"");
        let errs = NewOrder::parse(yen.as_bytes()).unwrap_err();
        assert!(errs.contains_key("deliveryFee"), "{errs:?}");
    }

    #[test]
    fn reason_and_time_bodies() {
        assert_eq!(parse_reason(b""), Ok(None));
        assert_eq!(
            parse_reason(br#"{"reason":"closed"}"#),
            Ok(Some("closed".into()))
        );
        assert!(parse_reason(br#"{"reason":5}"#).is_err());
        assert!(parse_time_field(b"", "estimatedDeliveryTime", true).is_err());
        assert!(parse_time_field(
            br#"{"estimatedDeliveryTime":"soon"}"#,
            "estimatedDeliveryTime",
            true
        )
        .is_err());
        assert!(parse_time_field(
            br#"{"deliveredAt":"2025-09-27T18:25:43Z"}"#,
            "deliveredAt",
            false
        )
        .unwrap()
        .is_some());
    }

    proptest! {
        #[test]
        fn totals_are_exact(prices in proptest::collection::vec((1u32..100, 0i64..100_000, 0i64..1000), 1..20),
                            fee in 0i64..10_000, tip in 0i64..10_000) {
            let items: Vec<String> = prices.iter().map(|(q, cents, adj)| format!(
                r#"{{"menuItemId":"7d1f2c1e-0000-4000-8000-000000000002","name":"x","quantity":{q},"unitPrice":{},
                    "customizations":[{{"groupName":"g","choiceName":"c","priceAdjustment":{}}}]}}"#,
                format_amount(Decimal::new(*cents, 2), 2), format_amount(Decimal::new(*adj, 2), 2))).collect();
            let json = body(&format!("[{}]", items.join(",")), "")
                .replace("\"deliveryFee\":2.99", &format!("\"deliveryFee\":{}", format_amount(Decimal::new(fee, 2), 2)))
                .replace("\"tip\":4.00", &format!("\"tip\":{}", format_amount(Decimal::new(tip, 2), 2)));
            let o = NewOrder::parse(json.as_bytes()).unwrap();
            let expect_cents: i64 = prices.iter().map(|(q, c, a)| (c + a) * *q as i64).sum();
            prop_assert_eq!(o.subtotal(), Decimal::new(expect_cents, 2));
            prop_assert_eq!(o.total(), Decimal::new(expect_cents + fee + tip, 2));
        }
    }
}
