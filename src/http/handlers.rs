//! The REST handlers: reads (status, details, history) and writes (place, payment outcomes,
//! restaurant actions, cancel). Each turns a request into a store call and the store's answer
//! into JSON or a problem.

use super::problem::Problem;
use super::{json_response, read_body, App, Resp};
use crate::domain::order::ActionDetails;
use crate::domain::order_body::{parse_reason, parse_time_field};
use crate::domain::{Action, FieldErrors, NewOrder, Order, OrderStatus, Principal, Timestamp};
use crate::store::heads::Rendered;
use crate::store::{ActRequest, Acted, PlaceRequest, Placed, StoreError};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, ETAG, IF_MATCH, IF_NONE_MATCH, LOCATION,
};
use hyper::{Request, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use uuid::Uuid;

pub const MAX_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_NUMBER: u32 = 1_000_000;

fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::Unavailable(_) | StoreError::ShuttingDown | StoreError::Dir(_) => {
            Problem::unavailable()
        }
        StoreError::Corrupt(_) => Problem::internal(),
        StoreError::Cluster(_) => Problem::not_primary(),
    }
}

/// Parses a path segment as an order id; anything else is answered like an unknown order.
fn order_id(segment: &str) -> Option<Uuid> {
    if segment.len() != 36 {
        return None;
    }
    Uuid::parse_str(segment).ok()
}

/// Entity tags listed in a conditional header; `None` means `*`.
fn listed_tags(
    headers: &HeaderMap,
    name: hyper::header::HeaderName,
) -> Option<Option<Vec<String>>> {
    let mut tags = Vec::new();
    let mut any = false;
    for v in headers.get_all(name) {
        any = true;
        let Ok(s) = v.to_str() else { continue };
        for t in s.split(',') {
            let t = t.trim();
            if t == "*" {
                return Some(None);
            }
            if !t.is_empty() {
                tags.push(t.to_string());
            }
        }
    }
    any.then_some(Some(tags))
}

fn with_etag(resp: Resp, order: &Order) -> Resp {
    match HeaderValue::from_str(&order.etag()) {
        Ok(v) => with_tag(resp, v),
        Err(_) => resp,
    }
}

fn with_tag(mut resp: Resp, etag: HeaderValue) -> Resp {
    resp.headers_mut().insert(ETAG, etag);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(PRIVATE_REVALIDATE));
    resp
}

/// Answers that name a customer's order: only the caller's own cache may keep them, and only
/// to revalidate with the ETag (shared caches must not store them at all).
const PRIVATE_REVALIDATE: &str = "private, no-cache";
/// Private answers without an ETag (the history pages): stored nowhere.
const PRIVATE_NO_STORE: &str = "private, no-store";

/// Whether `If-None-Match` names `etag` (weakly) or is `*`; read in place, nothing allocated.
fn none_match_hits(headers: &HeaderMap, etag: &[u8]) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == etag)
        })
    })
}

/// A read answer with the order's ETag, or 304 when `If-None-Match` names it; `body` is only
/// built for a 200.
fn conditional_read(headers: &HeaderMap, etag: HeaderValue, body: impl FnOnce() -> Bytes) -> Resp {
    if none_match_hits(headers, etag.as_bytes()) {
        // No body and no Content-Type: built bare rather than a JSON answer stripped again.
        let mut resp = Resp::new(http_body_util::Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return with_tag(resp, etag);
    }
    with_tag(json_response(StatusCode::OK, body()), etag)
}

fn to_json<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Loads an order the principal may see; otherwise the masked 404 with `title`.
fn visible_order(app: &App, p: &Principal, segment: &str, title: &str) -> Result<Order, Problem> {
    let Some(id) = order_id(segment) else {
        return Err(Problem::order_not_found(title));
    };
    match app.store.get_order(id).map_err(store_problem)? {
        Some(o) if p.may_see(&o) => Ok(o),
        _ => Err(Problem::order_not_found(title)),
    }
}

pub fn get_status(
    app: &App,
    p: &Principal,
    headers: &HeaderMap,
    segment: &str,
) -> Result<Resp, Problem> {
    let title = "GetOrderStatus.NotFound";
    let Some(id) = order_id(segment) else {
        return Err(Problem::order_not_found(title));
    };
    match app.store.get_head(id).map_err(store_problem)? {
        Some(h) if p.visible(h.customer_id, h.restaurant_id) => {
            // Rendered once per committed version of the head, then shared by every poll.
            let r = h.rendered.get_or_init(|| Rendered {
                body: to_json(&super::views::status(&h)),
                etag: Bytes::from(h.etag()),
            });
            let etag =
                HeaderValue::from_maybe_shared(r.etag.clone()).map_err(|_| Problem::internal())?;
            Ok(conditional_read(headers, etag, || r.body.clone()))
        }
        _ => Err(Problem::order_not_found(title)),
    }
}

pub fn get_details(
    app: &App,
    p: &Principal,
    headers: &HeaderMap,
    segment: &str,
) -> Result<Resp, Problem> {
    let o = visible_order(app, p, segment, "GetOrderById.NotFound")?;
    let etag = HeaderValue::from_str(&o.etag()).map_err(|_| Problem::internal())?;
    Ok(conditional_read(headers, etag, || {
        to_json(&super::views::details(&o, p))
    }))
}

/// Every `key=value` pair of a query string, percent-decoded, keys lowercased, in order.
fn query_list(query: Option<&str>) -> Vec<(String, String)> {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (dec(k).to_ascii_lowercase(), dec(v))
        })
        .collect()
}

/// The query's pairs by key; a repeated key keeps its last value.
fn query_pairs(query: Option<&str>) -> HashMap<String, String> {
    query_list(query).into_iter().collect()
}

/// `pageNumber` and `pageSize` (1..max, defaults 1 and 10); bad values go to `errors`.
fn paging(q: &HashMap<String, String>, errors: &mut FieldErrors) -> (u32, u32) {
    let mut number = |key: &str, field: &str, default: u32, max: u32| -> u32 {
        match q.get(key) {
            None => default,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    errors
                        .entry(field.to_string())
                        .or_default()
                        .push(format!("must be an integer between 1 and {max}"));
                    default
                }
            },
        }
    };
    let page_number = number("pagenumber", "pageNumber", 1, MAX_PAGE_NUMBER);
    let page_size = number("pagesize", "pageSize", 10, MAX_PAGE_SIZE);
    (page_number, page_size)
}

/// The statuses named by `raws` (each a comma list), without repeats; `None` when no `status`
/// was given. Unknown names and an empty list go to `errors`.
fn status_filter<'q>(
    raws: impl Iterator<Item = &'q str>,
    errors: &mut FieldErrors,
) -> Option<Vec<OrderStatus>> {
    let mut given = false;
    let mut list = Vec::new();
    for raw in raws {
        given = true;
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match OrderStatus::parse(name) {
                Some(s) if !list.contains(&s) => list.push(s),
                Some(_) => {}
                None => errors
                    .entry("status".into())
                    .or_default()
                    .push(format!("'{name}' is not a status")),
            }
        }
    }
    if !given {
        return None;
    }
    if list.is_empty() && !errors.contains_key("status") {
        errors
            .entry("status".into())
            .or_default()
            .push("must name at least one status".into());
    }
    Some(list)
}

fn private_json(body: Bytes) -> Resp {
    let mut resp = json_response(StatusCode::OK, body);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(PRIVATE_NO_STORE));
    resp
}

pub fn get_history(app: &App, p: &Principal, query: Option<&str>) -> Result<Resp, Problem> {
    let q = query_pairs(query);
    let mut errors = FieldErrors::new();
    let (page_number, page_size) = paging(&q, &mut errors);
    let statuses = status_filter(q.get("status").map(String::as_str).into_iter(), &mut errors);
    if !errors.is_empty() {
        return Err(Problem::validation("GetMyOrders.Validation", errors));
    }
    let page = app
        .store
        .history(p.sub, statuses.as_deref(), page_number, page_size)
        .map_err(store_problem)?;
    Ok(private_json(to_json(&super::views::page(
        &page,
        page_number,
        page_size,
    ))))
}

/// The statuses a kitchen board shows when the query names none: the orders still to cook or
/// hand over.
const BOARD_STATUSES: [OrderStatus; 4] = [
    OrderStatus::Placed,
    OrderStatus::Accepted,
    OrderStatus::Preparing,
    OrderStatus::ReadyForDelivery,
];

/// `GET /api/v1/restaurants/{id}/orders`: the kitchen board, oldest first, for the
/// restaurant's staff and owners and administrators; anyone else gets the masked 404 (checked
/// before the query, so a stranger learns nothing from a 400 either). `status` may be repeated
/// and each value may be a comma list.
pub fn get_board(
    app: &App,
    p: &Principal,
    segment: &str,
    query: Option<&str>,
) -> Result<Resp, Problem> {
    let title = "GetRestaurantOrders.NotFound";
    let restaurant = match order_id(segment) {
        Some(r) if p.may_watch_restaurant(r) => r,
        _ => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                title,
                "The restaurant was not found.",
            ))
        }
    };
    let list = query_list(query);
    let q: HashMap<String, String> = list.iter().cloned().collect();
    let mut errors = FieldErrors::new();
    let (page_number, page_size) = paging(&q, &mut errors);
    let raws = list
        .iter()
        .filter(|(k, _)| k == "status")
        .map(|(_, v)| v.as_str());
    let statuses = status_filter(raws, &mut errors).unwrap_or_else(|| BOARD_STATUSES.to_vec());
    if !errors.is_empty() {
        return Err(Problem::validation(
            "GetRestaurantOrders.Validation",
            errors,
        ));
    }
    let page = app
        .store
        .board(restaurant, &statuses, page_number, page_size)
        .map_err(store_problem)?;
    Ok(private_json(to_json(&super::views::board(
        &page,
        page_number,
        page_size,
    ))))
}

fn idempotency_key(headers: &HeaderMap, p: &Principal) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().unwrap_or("");
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        let mut errors = FieldErrors::new();
        errors.insert(
            "Idempotency-Key".into(),
            vec!["must be 1 to 200 visible ASCII characters".into()],
        );
        return Err(Problem::validation("Idempotency.InvalidKey", errors));
    }
    Ok(Some(format!("{}/{}", p.sub, key)))
}

pub async fn place_order(
    app: &App,
    p: &Principal,
    req: Request<Incoming>,
) -> Result<Resp, Problem> {
    if !p.may_place_orders() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "CreateOrder.Forbidden",
            "Only the order service may place orders.",
        ));
    }
    let key = idempotency_key(req.headers(), p)?;
    let body = read_body(req, true).await?;
    let order =
        NewOrder::parse(&body).map_err(|e| Problem::validation("CreateOrder.Validation", e))?;
    let idempotency = key.map(|k| {
        let fp: [u8; 32] = Sha256::digest(&body).into();
        (k, fp)
    });
    let placed = app
        .writer
        .place(PlaceRequest { order, idempotency })
        .await
        .map_err(store_problem)?;
    let (order, replayed) = match placed {
        Placed::Created(o) => (o, false),
        Placed::Replayed(o) => (o, true),
        Placed::KeyReused => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "Idempotency.KeyReused",
                "This Idempotency-Key was already used with a different request body.",
            ))
        }
    };
    let mut resp = with_etag(
        json_response(
            StatusCode::CREATED,
            to_json(&super::views::details(&order, p)),
        ),
        &order,
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/orders/{}", order.id)) {
        resp.headers_mut().insert(LOCATION, v);
    }
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The action named by the last path segment of `POST /api/v1/orders/{id}/{action}`.
pub fn parse_action(segment: &str) -> Option<Action> {
    Some(match segment {
        "payment-succeeded" => Action::PaymentSucceeded,
        "payment-failed" => Action::PaymentFailed,
        "accept" => Action::Accept,
        "reject" => Action::Reject,
        "preparing" => Action::Preparing,
        "ready" => Action::Ready,
        "delivered" => Action::Delivered,
        "cancel" => Action::Cancel,
        _ => return None,
    })
}

/// Versions named by `If-Match` for this order; a tag naming another order matches nothing.
fn if_match_versions(headers: &HeaderMap, id: Uuid) -> Option<Vec<u64>> {
    let tags = listed_tags(headers, IF_MATCH)??;
    let prefix = format!("\"order-{id}-v");
    Some(
        tags.iter()
            .filter_map(|t| t.strip_prefix(&prefix)?.strip_suffix('"')?.parse().ok())
            .collect(),
    )
}

const MIN_ETA_MS: i64 = 5 * 60 * 1000;
const MAX_ETA_MS: i64 = 12 * 3600 * 1000;
const FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

pub async fn act(
    app: &App,
    p: &Principal,
    segment: &str,
    action: Action,
    req: Request<Incoming>,
) -> Result<Resp, Problem> {
    let not_found = || Problem::order_not_found("Order.NotFound");
    let Some(id) = order_id(segment) else {
        return Err(not_found());
    };
    let if_match = if_match_versions(req.headers(), id);
    let body = read_body(req, false).await?;
    let title = format!("Order.{}Validation", action.name());
    let invalid = |e: FieldErrors| Problem::validation(&title, e);
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let mut r = ActRequest {
        order_id: id,
        action,
        principal: p.clone(),
        if_match,
        details: ActionDetails::default(),
    };
    match action {
        Action::Accept => {
            let eta = parse_time_field(&body, "estimatedDeliveryTime", true).map_err(invalid)?;
            if let Some(eta) = eta {
                let ahead = eta.millis() - now.millis();
                if !(MIN_ETA_MS..=MAX_ETA_MS).contains(&ahead) {
                    let mut e = FieldErrors::new();
                    e.insert(
                        "estimatedDeliveryTime".into(),
                        vec!["must be between 5 minutes and 12 hours from now".into()],
                    );
                    return Err(invalid(e));
                }
            }
            r.details.estimated_delivery = eta;
        }
        Action::Delivered => {
            let at = parse_time_field(&body, "deliveredAt", false).map_err(invalid)?;
            if at.is_some_and(|t| t.millis() > now.millis() + FUTURE_SKEW_MS) {
                let mut e = FieldErrors::new();
                e.insert(
                    "deliveredAt".into(),
                    vec!["must not be in the future".into()],
                );
                return Err(invalid(e));
            }
            r.details.delivered_at = at;
        }
        Action::Reject | Action::Cancel | Action::PaymentFailed => {
            r.details.reason = parse_reason(&body).map_err(invalid)?;
        }
        Action::PaymentSucceeded | Action::Preparing | Action::Ready => {
            parse_reason(&body).map_err(invalid)?;
        }
    }
    let outcome = app.writer.act(r).await.map_err(store_problem)?;
    match outcome {
        Acted::Changed(o) | Acted::Unchanged(o) => Ok(with_etag(
            json_response(StatusCode::OK, to_json(&super::views::action(&o))),
            &o,
        )),
        Acted::NotFound => Err(not_found()),
        Acted::Forbidden => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Order.Forbidden",
            format!("You may not perform '{}' on this order.", action.name()),
        )),
        Acted::InvalidStatus(o) => Err(Problem::new(
            StatusCode::CONFLICT,
            format!("Order.InvalidStatusFor{}", action.name()),
            format!(
                "'{}' is not allowed while the order is {}.",
                action.name(),
                o.status.as_str()
            ),
        )),
        Acted::CustomerCannotCancel(o) => Err(Problem::new(
            StatusCode::CONFLICT,
            "CancelOrder.InvalidStatusForCustomer",
            format!(
                "A customer can cancel only a Placed or Accepted order; this one is {}.",
                o.status.as_str()
            ),
        )),
        Acted::PreconditionFailed(o) => Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "Order.PreconditionFailed",
            "If-Match does not name the order's current version.",
        )
        .with_header("etag", o.etag())),
    }
}
