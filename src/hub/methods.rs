//! The hub methods (`SubscribeToOrder`, `UnsubscribeFromOrder`, `SubscribeToRestaurant`,
//! `UnsubscribeFromRestaurant`, `ResumeRestaurant`): which names a hub answers, how an invocation's arguments bind,
//! and what each method does to the connection's groups. The socket loop (`connection.rs`)
//! decodes and answers; this file decides. Group changes go through the hub's one door
//! ([`Hubs::subscribe`] / [`Hubs::unsubscribe`]), which keeps the subscription gauge right.

use super::outbound::Outbound;
use super::protocol::{self as proto, Arg};
use super::{catchup, client_method, Group, HubKind, Hubs, Who};
use crate::domain::{OrderStatusBroadcast, Principal, Timestamp};
use crate::metrics::HubRefusal;
use crate::store::Store;
use std::sync::Arc;
use uuid::Uuid;

/// A hub method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    SubscribeToOrder,
    UnsubscribeFromOrder,
    SubscribeToRestaurant,
    UnsubscribeFromRestaurant,
    ResumeRestaurant,
}

/// Hub method lookup, case-insensitive as ASP.NET does it.
pub(super) fn method_of(kind: HubKind, target: &str) -> Option<Method> {
    let t = target.to_ascii_lowercase();
    match (kind, t.as_str()) {
        (HubKind::CustomerOrders, "subscribetoorder") => Some(Method::SubscribeToOrder),
        (HubKind::CustomerOrders, "unsubscribefromorder") => Some(Method::UnsubscribeFromOrder),
        (HubKind::RestaurantOrders, "subscribetorestaurant") => Some(Method::SubscribeToRestaurant),
        (HubKind::RestaurantOrders, "unsubscribefromrestaurant") => {
            Some(Method::UnsubscribeFromRestaurant)
        }
        (HubKind::RestaurantOrders, "resumerestaurant") => Some(Method::ResumeRestaurant),
        _ => None,
    }
}

/// Binds an invocation: the method, its id argument (an order or restaurant id) and, for
/// `ResumeRestaurant`, the cursor (a non-negative integer, or a string of digits); or the
/// error text the completion carries.
pub(super) fn bind(
    kind: HubKind,
    target: &str,
    args: &[Arg],
) -> Result<(Method, Uuid, u64), String> {
    let Some(method) = method_of(kind, target) else {
        return Err(proto::unknown_method_error(target));
    };
    let uuid = |a: &Arg| match a {
        Arg::Str(s) => Uuid::parse_str(s.trim()).ok(),
        _ => None,
    };
    let bound = match (method, args) {
        (Method::ResumeRestaurant, [id, cursor]) => {
            let cursor = match cursor {
                Arg::UInt(n) => Some(*n),
                Arg::Str(s) => s.trim().parse::<u64>().ok(),
                Arg::Other => None,
            };
            uuid(id).zip(cursor)
        }
        (Method::ResumeRestaurant, _) => None,
        (_, [id]) => uuid(id).map(|id| (id, 0)),
        _ => None,
    };
    match bound {
        Some((id, cursor)) => Ok((method, id, cursor)),
        None => Err(proto::invocation_failed_error(target)),
    }
}

/// The error text for a StreamInvocation (type 4) of `target`: none of our methods stream.
pub(super) fn stream_invocation_error(kind: HubKind, target: &str) -> String {
    if method_of(kind, target).is_some() {
        proto::streaming_invocation_of_plain_method_error(target)
    } else {
        proto::unknown_method_error(target)
    }
}

/// One connection's side of the hub methods: who calls, where orders are read, and the groups
/// the connection is in (the table is the truth; these lists let it leave them all at the end).
pub(super) struct Session<'a> {
    pub hubs: &'a Hubs,
    pub orders: &'a Store,
    pub principal: &'a crate::domain::Principal,
    pub who: &'a Who,
    pub out: Arc<Outbound>,
    joined_orders: Vec<Uuid>,
    joined_restaurants: Vec<Uuid>,
}

impl<'a> Session<'a> {
    pub fn new(
        hubs: &'a Hubs,
        orders: &'a Store,
        principal: &'a Principal,
        who: &'a Who,
        out: Arc<Outbound>,
    ) -> Self {
        Session {
            hubs,
            orders,
            principal,
            who,
            out,
            joined_orders: Vec::new(),
            joined_restaurants: Vec::new(),
        }
    }

    /// Runs a hub method. `Ok(Some)` completes with a value, `Ok(None)` is a void completion.
    /// A client's invocation on any transport: the hub has no streaming methods, so one that
    /// names client streams fails as ASP.NET's would.
    pub fn invoke_from_client(
        &mut self,
        target: &str,
        args: &[Arg],
        stream_ids: &[String],
    ) -> Result<Option<OrderStatusBroadcast>, String> {
        if stream_ids.is_empty() {
            self.invoke(target, args)
        } else {
            Err(proto::invocation_failed_error(target))
        }
    }

    pub fn invoke(
        &mut self,
        target: &str,
        args: &[Arg],
    ) -> Result<Option<OrderStatusBroadcast>, String> {
        let (method, id, cursor) = bind(self.who.kind, target, args)?;
        match method {
            Method::SubscribeToOrder => self.subscribe_order(target, id).map(Some),
            Method::UnsubscribeFromOrder => {
                self.leave(Group::Order, id);
                Ok(None)
            }
            Method::SubscribeToRestaurant => {
                self.may_watch(target, id)?;
                self.join(Group::Restaurant, target, id)?;
                Ok(None)
            }
            Method::ResumeRestaurant => {
                self.may_watch(target, id)?;
                self.resume(target, id, cursor)?;
                Ok(None)
            }
            Method::UnsubscribeFromRestaurant => {
                self.leave(Group::Restaurant, id);
                Ok(None)
            }
        }
    }

    /// The restaurant methods' authorization: staff, owners and administrators.
    fn may_watch(&self, target: &str, restaurant: Uuid) -> Result<(), String> {
        if self.principal.may_watch_restaurant(restaurant) {
            Ok(())
        } else {
            Err(proto::hub_exception_error(
                target,
                "The restaurant was not found.",
            ))
        }
    }

    /// `ResumeRestaurant`: subscribes, then replays the restaurant's events after `after` that
    /// the outbox holds, then live ones (`catchup.rs` explains the seam). A refused resume
    /// leaves the connection as it found it.
    fn resume(&mut self, target: &str, restaurant: Uuid, after: u64) -> Result<(), String> {
        let was_in = self.joined_restaurants.contains(&restaurant);
        let out = self.out.clone();
        catchup::begin(&out);
        let read = match self.join(Group::Restaurant, target, restaurant) {
            Ok(()) => self
                .orders
                .restaurant_events_after(restaurant, after, catchup::MAX_RESUME_SCAN)
                .map_err(|e| {
                    tracing::warn!(parent: &self.who.span(), error = %e, "store read failed during resume");
                    proto::invocation_failed_error(target)
                }),
            Err(text) => Err(text),
        };
        let started = std::time::Instant::now();
        match catchup::finish(&out, restaurant, after, read, |e| client_method(e.kind)) {
            Ok(n) => {
                tracing::debug!(parent: &self.who.span(), replayed = n, micros = started.elapsed().as_micros() as u64, "resumed");
                Ok(())
            }
            Err(text) => {
                if !was_in {
                    self.leave(Group::Restaurant, restaurant);
                }
                Err(text)
            }
        }
    }

    /// Puts this connection in `id`'s group (once), within the per-connection cap.
    fn join(&mut self, group: Group, target: &str, id: Uuid) -> Result<(), String> {
        if self.list(group).contains(&id) {
            return Ok(());
        }
        if self.subscription_count() >= self.hubs.settings.max_subscriptions_per_connection {
            self.hubs
                .metrics
                .hub_refused(HubRefusal::ConnectionSubscriptions);
            return Err(proto::hub_exception_error(
                target,
                "Too many subscriptions on this connection.",
            ));
        }
        if !self.hubs.subscribe(group, id, self.out.clone()) {
            return Err(proto::hub_exception_error(
                target,
                "Too many subscriptions for this user.",
            ));
        }
        self.list_mut(group).push(id);
        Ok(())
    }

    /// Takes this connection out of `id`'s group.
    fn leave(&mut self, group: Group, id: Uuid) {
        self.list_mut(group).retain(|g| *g != id);
        self.hubs.unsubscribe(group, id, &self.out);
    }

    /// Leaves every group (the connection has ended).
    pub fn leave_all(&mut self) {
        for id in std::mem::take(&mut self.joined_orders) {
            self.hubs.unsubscribe(Group::Order, id, &self.out);
        }
        for id in std::mem::take(&mut self.joined_restaurants) {
            self.hubs.unsubscribe(Group::Restaurant, id, &self.out);
        }
    }

    fn list(&self, group: Group) -> &Vec<Uuid> {
        match group {
            Group::Order => &self.joined_orders,
            Group::Restaurant => &self.joined_restaurants,
        }
    }

    fn list_mut(&mut self, group: Group) -> &mut Vec<Uuid> {
        match group {
            Group::Order => &mut self.joined_orders,
            Group::Restaurant => &mut self.joined_restaurants,
        }
    }

    /// Live subscriptions. Orders whose group was dropped after a terminal event no longer
    /// count (the table is the truth; the connection's list is pruned here).
    fn subscription_count(&mut self) -> usize {
        let (hubs, id) = (self.hubs, self.who.id);
        self.joined_orders
            .retain(|o| hubs.is_subscribed(Group::Order, *o, id));
        self.joined_orders.len() + self.joined_restaurants.len()
    }

    /// Subscribes first, then reads the order: an event committed after the read is delivered,
    /// so a client that subscribes after reading the order misses nothing.
    fn subscribe_order(&mut self, target: &str, id: Uuid) -> Result<OrderStatusBroadcast, String> {
        let hidden = || proto::hub_exception_error(target, "The order was not found.");
        let order = match self.orders.get_order(id) {
            Ok(Some(o)) if self.principal.may_see(&o) => o,
            Ok(_) => return Err(hidden()),
            Err(e) => {
                tracing::warn!(parent: &self.who.span(), error = %e, "store read failed during subscribe");
                return Err(proto::invocation_failed_error(target));
            }
        };
        let now = Timestamp::from_datetime(chrono::Utc::now());
        if order.status.is_terminal() {
            return Ok(OrderStatusBroadcast::of(&order, now, None));
        }
        self.join(Group::Order, target, id)?;
        // Re-read after subscribing so the snapshot is at least as new as anything missed.
        let order = match self.orders.get_order(id) {
            Ok(Some(o)) => o,
            _ => order,
        };
        if order.status.is_terminal() {
            // It finished in between; its group may already have been dropped, so do not
            // leave a subscription that nothing would ever remove.
            self.leave(Group::Order, id);
        }
        Ok(OrderStatusBroadcast::of(&order, now, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Arg> {
        a.iter().map(|s| Arg::Str((*s).to_owned())).collect()
    }

    #[test]
    fn each_hub_answers_its_own_methods_in_any_case() {
        use HubKind::*;
        assert_eq!(
            method_of(CustomerOrders, "SubscribeToOrder"),
            Some(Method::SubscribeToOrder)
        );
        assert_eq!(
            method_of(CustomerOrders, "unsubscribefromORDER"),
            Some(Method::UnsubscribeFromOrder)
        );
        assert_eq!(
            method_of(RestaurantOrders, "SUBSCRIBETORESTAURANT"),
            Some(Method::SubscribeToRestaurant)
        );
        assert_eq!(
            method_of(RestaurantOrders, "UnsubscribeFromRestaurant"),
            Some(Method::UnsubscribeFromRestaurant)
        );
        assert_eq!(method_of(CustomerOrders, "SubscribeToRestaurant"), None);
        assert_eq!(method_of(RestaurantOrders, "SubscribeToOrder"), None);
        assert_eq!(method_of(CustomerOrders, "SubscribeToOrders"), None);
    }

    #[test]
    fn binding_wants_exactly_one_uuid_string() {
        let id = Uuid::new_v4();
        let text = id.to_string();
        assert_eq!(
            bind(HubKind::CustomerOrders, "SubscribeToOrder", &args(&[&text])),
            Ok((Method::SubscribeToOrder, id, 0))
        );
        let padded = format!(" {text} ");
        assert_eq!(
            bind(
                HubKind::CustomerOrders,
                "subscribetoorder",
                &args(&[&padded])
            ),
            Ok((Method::SubscribeToOrder, id, 0))
        );
        let failed = proto::invocation_failed_error("SubscribeToOrder");
        for bad in [
            args(&[]),
            args(&["not-a-uuid"]),
            args(&[&text, &text]),
            vec![Arg::Other],
        ] {
            assert_eq!(
                bind(HubKind::CustomerOrders, "SubscribeToOrder", &bad),
                Err(failed.clone()),
                "{bad:?}"
            );
        }
        assert_eq!(
            bind(
                HubKind::RestaurantOrders,
                "SubscribeToOrder",
                &args(&[&text])
            ),
            Err(proto::unknown_method_error("SubscribeToOrder"))
        );
    }

    #[test]
    fn resume_binds_an_id_and_a_cursor() {
        let id = Uuid::new_v4();
        let text = id.to_string();
        let r = HubKind::RestaurantOrders;
        let ok = Ok((Method::ResumeRestaurant, id, 42));
        let with = |cursor: Arg| vec![Arg::Str(text.clone()), cursor];
        assert_eq!(bind(r, "ResumeRestaurant", &with(Arg::UInt(42))), ok);
        assert_eq!(
            bind(r, "resumerestaurant", &with(Arg::Str("42".into()))),
            ok
        );
        let failed = Err(proto::invocation_failed_error("ResumeRestaurant"));
        for bad in [
            args(&[&text]),
            with(Arg::Other),
            with(Arg::Str("-1".into())),
            vec![Arg::UInt(1), Arg::UInt(1)],
            vec![Arg::Str(text.clone()), Arg::UInt(1), Arg::UInt(1)],
        ] {
            assert_eq!(bind(r, "ResumeRestaurant", &bad), failed, "{bad:?}");
        }
        assert_eq!(
            bind(
                HubKind::CustomerOrders,
                "ResumeRestaurant",
                &with(Arg::UInt(1))
            ),
            Err(proto::unknown_method_error("ResumeRestaurant"))
        );
    }

    #[test]
    fn stream_invocations_are_refused_by_kind_of_name() {
        assert_eq!(
            stream_invocation_error(HubKind::CustomerOrders, "SubscribeToOrder"),
            proto::streaming_invocation_of_plain_method_error("SubscribeToOrder")
        );
        assert_eq!(
            stream_invocation_error(HubKind::CustomerOrders, "Nope"),
            proto::unknown_method_error("Nope")
        );
    }
}
