//! Payloads: the values that travel as invocation arguments and completion results, each
//! written straight into an output buffer in both protocols (no intermediate tree).

use super::json::json_str;
use super::msgpack::{mp_int, mp_map_len, mp_str, mp_timestamp, mp_uint};
use crate::domain::{OrderStatusBroadcast, Timestamp};
use uuid::Uuid;

/// A value that can travel as an argument or a result in both protocols.
pub trait HubPayload {
    fn write_json(&self, out: &mut Vec<u8>);
    fn write_msgpack(&self, out: &mut Vec<u8>);
}

impl<T: HubPayload + ?Sized> HubPayload for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out)
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        (**self).write_msgpack(out)
    }
}

impl<T: HubPayload> HubPayload for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_msgpack(out),
            None => out.push(0xc0),
        }
    }
}

impl HubPayload for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_str(out, self)
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_str(out, self)
    }
}

impl HubPayload for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_str(out, self)
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_str(out, self)
    }
}

impl HubPayload for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" })
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        out.push(if *self { 0xc3 } else { 0xc2 })
    }
}

impl HubPayload for i64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes())
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_int(out, *self)
    }
}

impl HubPayload for u64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes())
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_uint(out, *self)
    }
}

impl HubPayload for Uuid {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut buf = Uuid::encode_buffer();
        json_str(out, self.hyphenated().encode_lower(&mut buf))
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        let mut buf = Uuid::encode_buffer();
        mp_str(out, self.hyphenated().encode_lower(&mut buf))
    }
}

/// JSON: RFC 3339 string; MessagePack: timestamp extension (type -1).
impl HubPayload for Timestamp {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_str(out, &self.rfc3339())
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_timestamp(out, *self)
    }
}

/// The `OrderStatusBroadcastDto`: camelCase keys in both protocols, status as its name.
impl HubPayload for OrderStatusBroadcast {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut first = true;
        out.push(b'{');
        self.for_each_field(&mut |key, value| {
            if !first {
                out.push(b',');
            }
            first = false;
            json_str(out, key);
            out.push(b':');
            value.write_json(out);
        });
        out.push(b'}');
    }
    fn write_msgpack(&self, out: &mut Vec<u8>) {
        mp_map_len(out, DTO_FIELDS);
        self.for_each_field(&mut |key, value| {
            mp_str(out, key);
            value.write_msgpack(out);
        });
    }
}

const DTO_FIELDS: usize = 12;

trait DtoFields {
    fn for_each_field(&self, f: &mut dyn FnMut(&str, &dyn HubPayload));
}

impl DtoFields for OrderStatusBroadcast {
    fn for_each_field(&self, f: &mut dyn FnMut(&str, &dyn HubPayload)) {
        f("orderId", &self.order_id);
        f("orderNumber", &self.order_number);
        f("status", &self.status.as_str());
        f("restaurantId", &self.restaurant_id);
        f("lastUpdateTimestamp", &self.last_update);
        f("estimatedDeliveryTime", &self.estimated_delivery);
        f("actualDeliveryTime", &self.actual_delivery);
        f("deliveredAt", &self.delivered_at);
        f("occurredOnUtc", &self.occurred_on);
        f("eventId", &self.event_id);
        f("version", &self.version);
        f("sequence", &self.sequence);
    }
}
