//! The order status machine: which action moves which status where, who may ask for it, and
//! the events each move produces.

use serde::{Deserialize, Serialize};

/// What a move tells subscribers: one kind per event the move produces (the hub maps each to
/// its client method name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    OrderPlaced,
    PaymentSucceeded,
    PaymentFailed,
    StatusChanged,
}

/// The eight status names of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrderStatus {
    AwaitingPayment,
    Placed,
    Accepted,
    Preparing,
    ReadyForDelivery,
    Delivered,
    Cancelled,
    Rejected,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        OrderStatus::AwaitingPayment,
        OrderStatus::Placed,
        OrderStatus::Accepted,
        OrderStatus::Preparing,
        OrderStatus::ReadyForDelivery,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::AwaitingPayment => "AwaitingPayment",
            OrderStatus::Placed => "Placed",
            OrderStatus::Accepted => "Accepted",
            OrderStatus::Preparing => "Preparing",
            OrderStatus::ReadyForDelivery => "ReadyForDelivery",
            OrderStatus::Delivered => "Delivered",
            OrderStatus::Cancelled => "Cancelled",
            OrderStatus::Rejected => "Rejected",
        }
    }

    /// Parses a status name; case-insensitive, as query parameters often are.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// Stable small integer, used as an index key.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Option<OrderStatus> {
        OrderStatus::ALL.get(c as usize).copied()
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::Rejected
        )
    }
}

/// What a caller asks to happen to an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    PaymentSucceeded,
    PaymentFailed,
    Accept,
    Reject,
    Preparing,
    Ready,
    Delivered,
    Cancel,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::PaymentSucceeded,
        Action::PaymentFailed,
        Action::Accept,
        Action::Reject,
        Action::Preparing,
        Action::Ready,
        Action::Delivered,
        Action::Cancel,
    ];

    /// The name used in problem titles: `Order.InvalidStatusFor<Name>`.
    pub fn name(self) -> &'static str {
        match self {
            Action::PaymentSucceeded => "PaymentSucceeded",
            Action::PaymentFailed => "PaymentFailed",
            Action::Accept => "Accept",
            Action::Reject => "Reject",
            Action::Preparing => "Preparing",
            Action::Ready => "Ready",
            Action::Delivered => "Delivered",
            Action::Cancel => "Cancel",
        }
    }

    /// The status this action leads to.
    pub fn target(self) -> OrderStatus {
        match self {
            Action::PaymentSucceeded => OrderStatus::Placed,
            Action::PaymentFailed => OrderStatus::Cancelled,
            Action::Accept => OrderStatus::Accepted,
            Action::Reject => OrderStatus::Rejected,
            Action::Preparing => OrderStatus::Preparing,
            Action::Ready => OrderStatus::ReadyForDelivery,
            Action::Delivered => OrderStatus::Delivered,
            Action::Cancel => OrderStatus::Cancelled,
        }
    }
}

/// The capacity in which a caller acts on one particular order (derived from the stored order
/// and the caller's claims by `auth`). `Stranger` cannot even see the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    Customer,
    RestaurantStaff,
    Administrator,
    OrderService,
    Stranger,
}

/// The outcome of asking for an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The order moves to `to`; publish `events` in this order.
    Move {
        to: OrderStatus,
        events: Vec<EventKind>,
    },
    /// The order already has the action's target status: nothing changes, no event.
    AlreadyThere,
}

/// Why an action was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not see the order: answer exactly as for a missing order.
    Hidden,
    /// The caller may see the order but not do this.
    Forbidden,
    /// Not a legal transition from the current status.
    InvalidStatus,
    /// A customer may only cancel from `Placed` or `Accepted`.
    CustomerCannotCancel,
}

fn may_request(actor: Actor, action: Action) -> bool {
    match action {
        Action::PaymentSucceeded | Action::PaymentFailed => actor == Actor::OrderService,
        Action::Accept | Action::Reject | Action::Preparing | Action::Ready | Action::Delivered => {
            actor == Actor::RestaurantStaff
        }
        Action::Cancel => matches!(
            actor,
            Actor::Customer | Actor::RestaurantStaff | Actor::Administrator
        ),
    }
}

fn legal_sources(actor: Actor, action: Action) -> &'static [OrderStatus] {
    use OrderStatus::*;
    match action {
        Action::PaymentSucceeded | Action::PaymentFailed => &[AwaitingPayment],
        Action::Accept | Action::Reject => &[Placed],
        Action::Preparing => &[Accepted],
        Action::Ready => &[Preparing],
        Action::Delivered => &[ReadyForDelivery],
        Action::Cancel if actor == Actor::Customer => &[Placed, Accepted],
        Action::Cancel => &[Placed, Accepted, Preparing, ReadyForDelivery],
    }
}

fn events_for(action: Action) -> Vec<EventKind> {
    match action {
        Action::PaymentSucceeded => vec![EventKind::PaymentSucceeded, EventKind::OrderPlaced],
        Action::PaymentFailed => vec![EventKind::PaymentFailed, EventKind::StatusChanged],
        _ => vec![EventKind::StatusChanged],
    }
}

/// Decides what `action` by `actor` does to an order in status `current`.
/// Checks run in the contract's order: visibility, permission, idempotent repeat, legality.
pub fn decide(current: OrderStatus, action: Action, actor: Actor) -> Result<Step, Refusal> {
    if actor == Actor::Stranger {
        return Err(Refusal::Hidden);
    }
    if !may_request(actor, action) {
        return Err(Refusal::Forbidden);
    }
    if current == action.target() {
        return Ok(Step::AlreadyThere);
    }
    if legal_sources(actor, action).contains(&current) {
        return Ok(Step::Move {
            to: action.target(),
            events: events_for(action),
        });
    }
    if action == Action::Cancel && actor == Actor::Customer {
        Err(Refusal::CustomerCannotCancel)
    } else {
        Err(Refusal::InvalidStatus)
    }
}

/// Like [`decide`] for a principal holding several capacities: the first capacity that may
/// perform the action wins; otherwise the most specific refusal is reported.
pub fn decide_any(
    current: OrderStatus,
    action: Action,
    actors: &[Actor],
) -> Result<(Actor, Step), Refusal> {
    let mut refusal = Refusal::Hidden;
    for &actor in actors {
        match decide(current, action, actor) {
            Ok(step) => return Ok((actor, step)),
            Err(r) => {
                refusal = match (refusal, r) {
                    (Refusal::Hidden, r) | (Refusal::Forbidden, r) => r,
                    (kept, _) => kept,
                }
            }
        }
    }
    Err(refusal)
}

/// The status an order starts in, from its payment method.
pub fn initial_status(payment_method: &str) -> OrderStatus {
    if payment_method == "CashOnDelivery" {
        OrderStatus::Placed
    } else {
        OrderStatus::AwaitingPayment
    }
}

/// Whether `actor` could cancel an order in `status` right now (the details' `cancellable`).
pub fn can_cancel(status: OrderStatus, actor: Actor) -> bool {
    matches!(decide(status, Action::Cancel, actor), Ok(Step::Move { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use OrderStatus::*;

    #[test]
    fn happy_path() {
        let staff = Actor::RestaurantStaff;
        let path = [
            (Placed, Action::Accept, Accepted),
            (Accepted, Action::Preparing, Preparing),
            (Preparing, Action::Ready, ReadyForDelivery),
            (ReadyForDelivery, Action::Delivered, Delivered),
        ];
        for (from, action, to) in path {
            assert_eq!(
                decide(from, action, staff),
                Ok(Step::Move {
                    to,
                    events: vec![EventKind::StatusChanged]
                })
            );
        }
    }

    #[test]
    fn payment_events_come_in_contract_order() {
        let svc = Actor::OrderService;
        assert_eq!(
            decide(AwaitingPayment, Action::PaymentSucceeded, svc),
            Ok(Step::Move {
                to: Placed,
                events: vec![EventKind::PaymentSucceeded, EventKind::OrderPlaced]
            })
        );
        assert_eq!(
            decide(AwaitingPayment, Action::PaymentFailed, svc),
            Ok(Step::Move {
                to: Cancelled,
                events: vec![EventKind::PaymentFailed, EventKind::StatusChanged]
            })
        );
    }

    #[test]
    fn customer_cancel_rule() {
        let c = Actor::Customer;
        assert!(matches!(
            decide(Placed, Action::Cancel, c),
            Ok(Step::Move { .. })
        ));
        assert!(matches!(
            decide(Accepted, Action::Cancel, c),
            Ok(Step::Move { .. })
        ));
        assert_eq!(decide(Cancelled, Action::Cancel, c), Ok(Step::AlreadyThere));
        for s in [
            AwaitingPayment,
            Preparing,
            ReadyForDelivery,
            Delivered,
            Rejected,
        ] {
            assert_eq!(
                decide(s, Action::Cancel, c),
                Err(Refusal::CustomerCannotCancel)
            );
        }
        assert_eq!(
            decide(AwaitingPayment, Action::Cancel, Actor::Administrator),
            Err(Refusal::InvalidStatus)
        );
        assert!(can_cancel(Preparing, Actor::RestaurantStaff));
        assert!(!can_cancel(Preparing, Actor::Customer));
    }

    #[test]
    fn permissions() {
        assert_eq!(
            decide(Placed, Action::Accept, Actor::Customer),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            decide(Placed, Action::Accept, Actor::Administrator),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            decide(
                AwaitingPayment,
                Action::PaymentSucceeded,
                Actor::RestaurantStaff
            ),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            decide(Placed, Action::Accept, Actor::Stranger),
            Err(Refusal::Hidden)
        );
    }

    fn status() -> impl Strategy<Value = OrderStatus> {
        (0u8..8).prop_map(|c| OrderStatus::from_code(c).unwrap_or(Placed))
    }
    fn action() -> impl Strategy<Value = Action> {
        (0usize..8).prop_map(|i| Action::ALL[i])
    }
    fn actor() -> impl Strategy<Value = Actor> {
        prop_oneof![
            Just(Actor::Customer),
            Just(Actor::RestaurantStaff),
            Just(Actor::Administrator),
            Just(Actor::OrderService),
            Just(Actor::Stranger),
        ]
    }

    proptest! {
        #[test]
        fn terminal_states_never_move(s in status(), a in action(), who in actor()) {
            if s.is_terminal() {
                let moved = matches!(decide(s, a, who), Ok(Step::Move { .. }));
                prop_assert!(!moved);
            }
        }

        #[test]
        fn moves_land_on_the_target_and_change_status(s in status(), a in action(), who in actor()) {
            if let Ok(Step::Move { to, events }) = decide(s, a, who) {
                prop_assert_eq!(to, a.target());
                prop_assert_ne!(to, s);
                prop_assert!(!events.is_empty());
            }
        }

        #[test]
        fn repeating_an_action_is_idempotent(s in status(), a in action(), who in actor()) {
            if let Ok(Step::Move { to, .. }) = decide(s, a, who) {
                prop_assert_eq!(decide(to, a, who), Ok(Step::AlreadyThere));
            }
        }

        #[test]
        fn any_walk_only_moves_forward(actions in proptest::collection::vec((action(), actor()), 0..30)) {
            let rank = |s: OrderStatus| match s {
                AwaitingPayment => 0, Placed => 1, Accepted => 2, Preparing => 3,
                ReadyForDelivery => 4, _ => 5,
            };
            let mut s = AwaitingPayment;
            for (a, who) in actions {
                if let Ok(Step::Move { to, .. }) = decide(s, a, who) {
                    prop_assert!(rank(to) > rank(s));
                    s = to;
                }
            }
        }
    }
}
