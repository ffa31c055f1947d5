//! Who may see and act on what: the [`Principal`] (who is calling, as `auth` proves it from a
//! token), the capacities it holds on an order, the one visibility rule of contract section 2,
//! and the act decision (capacities, then the status machine, then If-Match precedence) that
//! the store's writer applies inside its transaction. Pure: no token, no I/O.

use super::order::Order;
use super::status::{can_cancel, decide_any, Action, Actor, Refusal, Step};
use uuid::Uuid;

/// Who is calling, as proven by a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub sub: Uuid,
    pub administrator: bool,
    pub order_service: bool,
    /// Restaurants where the principal is staff (owners included: an owner has every staff right).
    pub staff_of: Vec<Uuid>,
    pub owner_of: Vec<Uuid>,
    /// Token expiry, seconds since the epoch.
    pub expires_at: i64,
}

impl Principal {
    pub fn is_staff_of(&self, restaurant: Uuid) -> bool {
        self.staff_of.contains(&restaurant) || self.owner_of.contains(&restaurant)
    }

    /// The capacities in which this principal acts on an order of `customer` at `restaurant`.
    /// Empty means the order does not exist for this principal.
    pub fn capacities(&self, customer: Uuid, restaurant: Uuid) -> Vec<Actor> {
        let mut caps = Vec::with_capacity(2);
        if self.sub == customer {
            caps.push(Actor::Customer);
        }
        if self.is_staff_of(restaurant) {
            caps.push(Actor::RestaurantStaff);
        }
        if self.administrator {
            caps.push(Actor::Administrator);
        }
        if self.order_service {
            caps.push(Actor::OrderService);
        }
        caps
    }

    /// The visibility rule of contract section 2, from an order's customer and restaurant:
    /// a principal sees an order in which it holds some capacity.
    pub fn visible(&self, customer: Uuid, restaurant: Uuid) -> bool {
        self.sub == customer
            || self.is_staff_of(restaurant)
            || self.administrator
            || self.order_service
    }

    /// [`Principal::visible`] for a stored order.
    pub fn may_see(&self, order: &Order) -> bool {
        self.visible(order.customer_id, order.restaurant_id)
    }

    /// Who may follow a whole restaurant: its staff and owners, and administrators.
    pub fn may_watch_restaurant(&self, restaurant: Uuid) -> bool {
        self.administrator || self.is_staff_of(restaurant)
    }

    /// Who may place orders: the order service alone.
    pub fn may_place_orders(&self) -> bool {
        self.order_service
    }

    /// Whether this principal could cancel `order` right now (the details' `cancellable`).
    pub fn may_cancel_now(&self, order: &Order) -> bool {
        self.capacities(order.customer_id, order.restaurant_id)
            .into_iter()
            .any(|a| can_cancel(order.status, a))
    }
}

/// Why an action on an order is refused, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActRefusal {
    /// The order does not exist for this principal: answered like an unknown id.
    Hidden,
    /// The principal may see the order but not ask for this action.
    Forbidden,
    /// `If-Match` named versions and the order's is not among them.
    PreconditionFailed,
    /// Not a legal transition from the current status.
    InvalidStatus,
    /// A customer may only cancel from `Placed` or `Accepted`.
    CustomerCannotCancel,
}

/// Decides `action` by `principal` on `order`, with the versions an `If-Match` header named
/// (`None`: no header or `*`; an empty list never matches). The checks run in the contract's
/// order: visibility, permission, then the version precondition, which wins over a status
/// refusal as over a success.
pub fn may_act(
    principal: &Principal,
    order: &Order,
    action: Action,
    if_match: Option<&[u64]>,
) -> Result<Step, ActRefusal> {
    let caps = principal.capacities(order.customer_id, order.restaurant_id);
    let decided = decide_any(order.status, action, &caps);
    let refusal = match decided {
        Err(Refusal::Hidden) => return Err(ActRefusal::Hidden),
        Err(Refusal::Forbidden) => return Err(ActRefusal::Forbidden),
        Err(Refusal::CustomerCannotCancel) => ActRefusal::CustomerCannotCancel,
        Err(Refusal::InvalidStatus) => ActRefusal::InvalidStatus,
        Ok(_) => ActRefusal::PreconditionFailed,
    };
    if if_match.is_some_and(|v| !v.contains(&order.version)) {
        return Err(ActRefusal::PreconditionFailed);
    }
    match decided {
        Ok((_, step)) => Ok(step),
        Err(_) => Err(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NewOrder, OrderStatus, Timestamp};

    fn principal(sub: Uuid) -> Principal {
        Principal {
            sub,
            administrator: false,
            order_service: false,
            staff_of: vec![],
            owner_of: vec![],
            expires_at: 0,
        }
    }

    fn order(customer: Uuid, restaurant: Uuid, status: OrderStatus) -> Order {
        let body = format!(
            r#"{{"customerId":"{customer}","restaurantId":"{restaurant}","restaurantName":"R",
            "currency":"USD","items":[{{"menuItemId":"{item}","name":"Soup","quantity":1,"unitPrice":4.50}}],
            "deliveryFee":0,"tip":0,"tax":0,"discount":0,"paymentMethod":"CashOnDelivery"}}"#,
            item = Uuid::new_v4()
        );
        let new = NewOrder::parse(body.as_bytes()).expect("valid body");
        let mut o = new.into_order(
            Uuid::now_v7(),
            "ORD-1".into(),
            Timestamp(0),
            &mut Uuid::new_v4,
        );
        o.status = status;
        o
    }

    #[test]
    fn capacities_follow_the_stored_order() {
        let (c, r) = (Uuid::new_v4(), Uuid::new_v4());
        let p = principal(c);
        assert_eq!(p.capacities(c, r), vec![Actor::Customer]);
        assert!(p.capacities(Uuid::new_v4(), r).is_empty());
        assert!(!p.may_watch_restaurant(r));
        let staff = Principal {
            staff_of: vec![r],
            ..principal(Uuid::new_v4())
        };
        assert_eq!(staff.capacities(c, r), vec![Actor::RestaurantStaff]);
        assert!(staff.may_watch_restaurant(r));
    }

    #[test]
    fn visible_means_some_capacity() {
        let (c, r) = (Uuid::new_v4(), Uuid::new_v4());
        let people = [
            principal(c),
            principal(Uuid::new_v4()),
            Principal {
                owner_of: vec![r],
                ..principal(Uuid::new_v4())
            },
            Principal {
                administrator: true,
                ..principal(Uuid::new_v4())
            },
            Principal {
                order_service: true,
                ..principal(Uuid::new_v4())
            },
            Principal {
                staff_of: vec![Uuid::new_v4()],
                ..principal(Uuid::new_v4())
            },
        ];
        for p in &people {
            assert_eq!(p.visible(c, r), !p.capacities(c, r).is_empty(), "{p:?}");
        }
    }

    #[test]
    fn if_match_wins_over_status_refusals_but_not_over_hiding() {
        let (c, r) = (Uuid::new_v4(), Uuid::new_v4());
        let o = order(c, r, OrderStatus::Delivered);
        let customer = principal(c);
        let stale: &[u64] = &[o.version + 1];
        assert_eq!(
            may_act(&customer, &o, Action::Cancel, None),
            Err(ActRefusal::CustomerCannotCancel)
        );
        assert_eq!(
            may_act(&customer, &o, Action::Cancel, Some(stale)),
            Err(ActRefusal::PreconditionFailed)
        );
        assert_eq!(
            may_act(&customer, &o, Action::Accept, Some(stale)),
            Err(ActRefusal::Forbidden)
        );
        assert_eq!(
            may_act(&principal(Uuid::new_v4()), &o, Action::Cancel, Some(stale)),
            Err(ActRefusal::Hidden)
        );
    }

    #[test]
    fn a_matching_version_lets_the_move_through() {
        let (c, r) = (Uuid::new_v4(), Uuid::new_v4());
        let o = order(c, r, OrderStatus::Placed);
        let staff = Principal {
            staff_of: vec![r],
            ..principal(Uuid::new_v4())
        };
        let now: &[u64] = &[o.version];
        assert!(matches!(
            may_act(&staff, &o, Action::Accept, Some(now)),
            Ok(Step::Move {
                to: OrderStatus::Accepted,
                ..
            })
        ));
        assert_eq!(
            may_act(&staff, &o, Action::Accept, Some(&[])),
            Err(ActRefusal::PreconditionFailed),
            "an empty list never matches"
        );
        let moved = order(c, r, OrderStatus::Accepted);
        assert_eq!(
            may_act(&staff, &moved, Action::Accept, None),
            Ok(Step::AlreadyThere)
        );
    }
}
