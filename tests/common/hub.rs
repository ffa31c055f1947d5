//! A raw WebSocket SignalR client for the hub tests: negotiate, upgrade, handshake, JSON
//! records split on `0x1E`, and a tiny MessagePack reader (varint framing, ext -1 timestamps).
//! Well-formed client messages are written with the server crate's own client-side codec
//! (`testing::protocol`); malformed ones are built by hand where a test needs them. Every wait has a timeout, so a misbehaving server fails a test instead of
//! hanging it.

use super::{Cast, Server};
use futures_util::{SinkExt, StreamExt};
use ordertrack::testing::protocol::{self, Protocol};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{client_async, WebSocketStream};
use uuid::Uuid;

/// The SignalR record separator.
pub const RS: char = '\u{1e}';
/// Default wait for anything the server should do promptly.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

pub type Ws = WebSocketStream<TcpStream>;

pub const JSON_HANDSHAKE: &str = "{\"protocol\":\"json\",\"version\":1}\u{1e}";
pub const MSGPACK_HANDSHAKE: &str = "{\"protocol\":\"messagepack\",\"version\":1}\u{1e}";

/// Runs blocking harness code (process spawning, `reqwest::blocking`) from an async test.
/// Needs the multi-threaded runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A fresh server and cast.
pub fn setup() -> (Server, Cast) {
    blocking(|| (Server::start(), Cast::new()))
}

// ---- HTTP side -------------------------------------------------------------------------------

/// `POST /hubs/{hub}/negotiate{query}`; returns (status, content-type, body as JSON or Null).
pub async fn negotiate(
    port: u16,
    hub: &str,
    query: &str,
    token: Option<&str>,
) -> (u16, String, Value) {
    let client = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client");
    let mut req = client.post(format!(
        "http://127.0.0.1:{port}/hubs/{hub}/negotiate{query}"
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("negotiate request");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        ctype,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Negotiates (version 1) and returns the connection token.
pub async fn negotiate_token(port: u16, hub: &str, token: &str) -> String {
    let (status, _, body) = negotiate(port, hub, "?negotiateVersion=1", Some(token)).await;
    assert_eq!(status, 200, "negotiate failed: {body}");
    body["connectionToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no connectionToken in {body}"))
        .to_string()
}

// ---- WebSocket side ----------------------------------------------------------------------------

/// Opens a WebSocket to `path_query` (e.g. `/hubs/customer-orders?id=...`), with an optional
/// `Authorization: Bearer` header.
pub async fn ws_connect(
    port: u16,
    path_query: &str,
    bearer: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    ws_connect_with(port, path_query, bearer, false).await
}

/// Advertises a 536-byte MSS (`setsockopt(IPPROTO_TCP, TCP_MAXSEG)` before connect).
#[cfg(target_os = "linux")]
fn set_small_mss(s: &TcpSocket) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            value: *const std::ffi::c_void,
            len: u32,
        ) -> i32;
    }
    const IPPROTO_TCP: i32 = 6;
    const TCP_MAXSEG: i32 = 2;
    let mss: i32 = 536;
    // SAFETY: a valid socket fd and a pointer to a live i32 of the stated length.
    let rc = unsafe {
        setsockopt(
            s.as_raw_fd(),
            IPPROTO_TCP,
            TCP_MAXSEG,
            (&mss as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt(TCP_MAXSEG) failed");
}

#[cfg(not(target_os = "linux"))]
fn set_small_mss(_: &TcpSocket) {}

/// Like [`ws_connect`], optionally as a "narrow" client: a small TCP receive buffer and (on
/// Linux) a small advertised MSS, both set before connecting. The server's send buffer is
/// sized from the peer's MSS, so a narrow client that stops reading backs the server up after
/// a few hundred events instead of several thousand.
pub async fn ws_connect_with(
    port: u16,
    path_query: &str,
    bearer: Option<&str>,
    narrow: bool,
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{port}{path_query}").into_client_request()?;
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
        );
    }
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let tcp = if narrow {
        let s = TcpSocket::new_v4()?;
        s.set_recv_buffer_size(4096)?;
        set_small_mss(&s);
        s.connect(addr).await?
    } else {
        TcpStream::connect(addr).await?
    };
    let (ws, _resp) = timeout(WAIT, client_async(req, tcp))
        .await
        .expect("WebSocket upgrade timed out")?;
    Ok(ws)
}

/// The HTTP status of a refused upgrade.
pub fn refused_status(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Ok(_) => panic!("the upgrade was accepted, expected a refusal"),
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// One WebSocket message as the tests see it.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<CloseFrame>),
    /// The stream ended or failed (no Close frame).
    End(String),
}

/// The next data or close frame within `wait` (WebSocket pings/pongs skipped); None on timeout.
pub async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Frame> {
    let deadline = Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return Some(Frame::End("stream ended".into())),
            Ok(Some(Err(e))) => return Some(Frame::End(e.to_string())),
            Ok(Some(Ok(m))) => match m {
                Message::Text(t) => return Some(Frame::Text(t.as_str().to_owned())),
                Message::Binary(b) => return Some(Frame::Binary(b.to_vec())),
                Message::Close(c) => return Some(Frame::Close(c)),
                _ => continue,
            },
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    timeout(WAIT, ws.send(Message::text(text.to_owned())))
        .await
        .expect("send timed out")
        .expect("send text frame");
}

pub async fn send_binary(ws: &mut Ws, bytes: &[u8]) {
    timeout(WAIT, ws.send(Message::binary(bytes.to_vec())))
        .await
        .expect("send timed out")
        .expect("send binary frame");
}

/// The close code of a Close frame, if any.
pub fn close_code(c: &Option<CloseFrame>) -> Option<u16> {
    c.as_ref().map(|f| u16::from(f.code))
}

// ---- JSON hub client ---------------------------------------------------------------------------

/// What waiting for a JSON hub message produced.
#[derive(Debug)]
pub enum Got {
    Msg(Value),
    Closed(Option<CloseFrame>),
    Ended(String),
    Timeout,
}

/// A connection speaking the JSON hub protocol after a successful handshake.
pub struct JsonHub {
    pub ws: Ws,
    /// Records parsed from received frames, not yet consumed.
    queue: VecDeque<Value>,
    /// Non-ping messages skipped while waiting for a completion (events, mostly).
    held: VecDeque<Value>,
    next_id: u32,
}

impl JsonHub {
    /// Negotiates (v1), upgrades with the Authorization header and shakes hands.
    pub async fn connect(port: u16, hub: &str, token: &str) -> JsonHub {
        let id = negotiate_token(port, hub, token).await;
        let ws = ws_connect(port, &format!("/hubs/{hub}?id={id}"), Some(token))
            .await
            .expect("upgrade");
        JsonHub::handshake(ws).await
    }

    /// Sends the JSON handshake in a TEXT frame and checks the `{}` answer.
    pub async fn handshake(mut ws: Ws) -> JsonHub {
        send_text(&mut ws, JSON_HANDSHAKE).await;
        JsonHub::expect_handshake_ok(ws).await
    }

    /// Reads the handshake answer: a TEXT frame starting with `{}` + 0x1E; anything after it in
    /// the same frame is kept as hub messages.
    pub async fn expect_handshake_ok(ws: Ws) -> JsonHub {
        let mut h = JsonHub::raw(ws);
        match next_frame(&mut h.ws, WAIT).await {
            Some(Frame::Text(t)) => {
                let rest = t
                    .strip_prefix("{}\u{1e}")
                    .unwrap_or_else(|| panic!("handshake answer is not {{}}+0x1E: {t:?}"));
                h.push_records(rest);
            }
            other => panic!("expected the handshake answer in a TEXT frame, got {other:?}"),
        }
        h
    }

    /// Wraps a socket without a handshake.
    pub fn raw(ws: Ws) -> JsonHub {
        JsonHub {
            ws,
            queue: VecDeque::new(),
            held: VecDeque::new(),
            next_id: 0,
        }
    }

    fn push_records(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        assert!(
            text.ends_with(RS),
            "a JSON hub frame must hold complete records ending with 0x1E: {text:?}"
        );
        for rec in protocol::split_json_records(text) {
            let v: Value = serde_json::from_str(rec)
                .unwrap_or_else(|e| panic!("record is not JSON ({e}): {rec:?}"));
            self.queue.push_back(v);
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        send_text(&mut self.ws, text).await
    }

    /// Sends one message (a record, 0x1E appended) in its own TEXT frame.
    pub async fn send(&mut self, v: &Value) {
        self.send_text(&protocol::json_record(&v.to_string())).await
    }

    /// The next message of any type (pings included), ignoring held-back messages.
    pub async fn next_raw(&mut self, wait: Duration) -> Got {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(v) = self.queue.pop_front() {
                return Got::Msg(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match next_frame(&mut self.ws, left).await {
                None => return Got::Timeout,
                Some(Frame::Text(t)) => self.push_records(&t),
                Some(Frame::Binary(b)) => panic!(
                    "JSON hub message arrived in a BINARY frame: {:?}",
                    String::from_utf8_lossy(&b)
                ),
                Some(Frame::Close(c)) => return Got::Closed(c),
                Some(Frame::End(e)) => return Got::Ended(e),
            }
        }
    }

    /// The next message that is not a Ping, held-back ones first.
    pub async fn next_msg(&mut self, wait: Duration) -> Got {
        if let Some(v) = self.held.pop_front() {
            return Got::Msg(v);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_raw(left).await {
                Got::Msg(v) if v["type"] == 6 => continue,
                g => return g,
            }
        }
    }

    /// The next non-ping message; panics if none arrives within [`WAIT`].
    pub async fn msg(&mut self) -> Value {
        match self.next_msg(WAIT).await {
            Got::Msg(v) => v,
            other => panic!("expected a hub message within {WAIT:?}, got {other:?}"),
        }
    }

    /// A fresh invocation id.
    pub fn id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// Invokes `target` and returns its Completion message.
    pub async fn invoke(&mut self, target: &str, args: Value) -> Value {
        let id = self.id();
        self.send(&json!({"type": 1, "invocationId": id, "target": target, "arguments": args}))
            .await;
        self.completion(&id).await
    }

    /// Waits for the Completion of `id`, holding back other messages for [`JsonHub::msg`].
    pub async fn completion(&mut self, id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_raw(left).await {
                Got::Msg(v) if v["type"] == 3 && v["invocationId"] == id => return v,
                Got::Msg(v) if v["type"] == 6 => {}
                Got::Msg(v) => self.held.push_back(v),
                other => panic!("no Completion for invocation {id:?}: {other:?}"),
            }
        }
    }

    /// `SubscribeToOrder(order)`, which must succeed; returns the DTO it completed with.
    pub async fn subscribe(&mut self, order: Uuid) -> Value {
        let c = self.invoke("SubscribeToOrder", json!([order])).await;
        assert!(
            c.get("error").is_none(),
            "SubscribeToOrder({order}) failed: {c}"
        );
        c["result"].clone()
    }

    /// `SubscribeToRestaurant(restaurant)`, which must succeed.
    pub async fn subscribe_restaurant(&mut self, restaurant: Uuid) {
        let c = self
            .invoke("SubscribeToRestaurant", json!([restaurant]))
            .await;
        assert!(
            c.get("error").is_none(),
            "SubscribeToRestaurant({restaurant}) failed: {c}"
        );
    }

    /// The next server event: an Invocation without id and with one argument.
    pub async fn event(&mut self) -> (String, Value) {
        let v = self.msg().await;
        as_event(&v)
    }

    /// Asserts that no message other than Ping arrives for `wait`.
    pub async fn quiet(&mut self, wait: Duration) {
        match self.next_msg(wait).await {
            Got::Timeout => {}
            other => panic!("expected nothing for {wait:?}, got {other:?}"),
        }
    }

    /// Reads until the connection closes (or `wait` passes): the messages received on the way
    /// (pings left out), and how it ended.
    pub async fn until_end(&mut self, wait: Duration) -> (Vec<Value>, Got) {
        let deadline = Instant::now() + wait;
        let mut msgs: Vec<Value> = self.held.drain(..).collect();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_raw(left).await {
                Got::Msg(v) if v["type"] == 6 => {}
                Got::Msg(v) => msgs.push(v),
                end => return (msgs, end),
            }
        }
    }
}

/// Splits an event invocation into (target, dto), checking its shape.
pub fn as_event(v: &Value) -> (String, Value) {
    assert_eq!(v["type"], 1, "expected an event Invocation, got {v}");
    assert!(
        v.get("invocationId").is_none(),
        "a server event must not carry an invocationId: {v}"
    );
    let args = v["arguments"]
        .as_array()
        .unwrap_or_else(|| panic!("no arguments: {v}"));
    assert_eq!(args.len(), 1, "events carry exactly one argument: {v}");
    (
        v["target"].as_str().expect("target").to_string(),
        args[0].clone(),
    )
}

/// The OrderStatusBroadcastDto keys, in camelCase.
pub const DTO_KEYS: [&str; 11] = [
    "orderId",
    "orderNumber",
    "status",
    "restaurantId",
    "lastUpdateTimestamp",
    "estimatedDeliveryTime",
    "actualDeliveryTime",
    "deliveredAt",
    "occurredOnUtc",
    "eventId",
    "sequence",
];

/// Checks a JSON DTO: every documented key present, ids and status as expected, timestamps
/// RFC 3339 UTC with `Z`.
pub fn check_dto(dto: &Value, order: Uuid, restaurant: Uuid, status: &str) {
    for k in DTO_KEYS {
        assert!(dto.get(k).is_some(), "DTO lacks {k}: {dto}");
    }
    assert_eq!(dto["orderId"], order.to_string(), "orderId in {dto}");
    assert_eq!(
        dto["restaurantId"],
        restaurant.to_string(),
        "restaurantId in {dto}"
    );
    assert_eq!(dto["status"], status, "status in {dto}");
    let number = dto["orderNumber"].as_str().unwrap_or("");
    assert!(
        number.starts_with("ORD-") && number.len() == "ORD-YYYY-NNNNNN".len(),
        "orderNumber in {dto}"
    );
    for k in [
        "lastUpdateTimestamp",
        "estimatedDeliveryTime",
        "actualDeliveryTime",
        "deliveredAt",
        "occurredOnUtc",
    ] {
        if let Some(s) = dto[k].as_str() {
            assert!(
                s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                "{k} is not RFC 3339 UTC with Z: {dto}"
            );
        } else {
            assert!(dto[k].is_null(), "{k} is neither a string nor null: {dto}");
        }
    }
}

// ---- MessagePack -------------------------------------------------------------------------------

/// A decoded MessagePack value.
#[derive(Clone, Debug, PartialEq)]
pub enum Mp {
    Nil,
    Bool(bool),
    Int(i128),
    F(f64),
    Str(String),
    Bin(Vec<u8>),
    Arr(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
    Ext(i8, Vec<u8>),
}

impl Mp {
    pub fn arr(&self) -> &[Mp] {
        match self {
            Mp::Arr(a) => a,
            other => panic!("expected an array, got {other:?}"),
        }
    }
    pub fn str(&self) -> &str {
        match self {
            Mp::Str(s) => s,
            other => panic!("expected a string, got {other:?}"),
        }
    }
    pub fn int(&self) -> i128 {
        match self {
            Mp::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }
    pub fn map(&self) -> &[(Mp, Mp)] {
        match self {
            Mp::Map(m) => m,
            other => panic!("expected a map, got {other:?}"),
        }
    }
    /// A map entry by string key.
    pub fn get(&self, key: &str) -> &Mp {
        self.map()
            .iter()
            .find(|(k, _)| matches!(k, Mp::Str(s) if s == key))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("map has no key {key:?}: {self:?}"))
    }
    /// A timestamp extension (type -1) as (seconds, nanoseconds).
    pub fn timestamp(&self) -> (i64, u32) {
        match self {
            Mp::Ext(-1, d) if d.len() == 4 => (
                i64::from(u32::from_be_bytes(d[..4].try_into().expect("4"))),
                0,
            ),
            Mp::Ext(-1, d) if d.len() == 8 => {
                let v = u64::from_be_bytes(d[..8].try_into().expect("8"));
                ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
            }
            Mp::Ext(-1, d) if d.len() == 12 => (
                i64::from_be_bytes(d[4..12].try_into().expect("8")),
                u32::from_be_bytes(d[..4].try_into().expect("4")),
            ),
            other => panic!("expected a MessagePack timestamp (ext -1), got {other:?}"),
        }
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> &'a [u8] {
    assert!(buf.len() >= n, "truncated MessagePack value");
    let (a, b) = buf.split_at(n);
    *buf = b;
    a
}

fn be(buf: &mut &[u8], n: usize) -> u64 {
    take(buf, n)
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Decodes one value from the front of `buf`.
pub fn mp_decode(buf: &mut &[u8]) -> Mp {
    use rmp::Marker as M;
    let marker = rmp::decode::read_marker(buf).expect("MessagePack marker");
    let str_of = |buf: &mut &[u8], n: usize| {
        Mp::Str(String::from_utf8(take(buf, n).to_vec()).expect("utf-8 string"))
    };
    let arr_of = |buf: &mut &[u8], n: usize| Mp::Arr((0..n).map(|_| mp_decode(buf)).collect());
    let map_of = |buf: &mut &[u8], n: usize| {
        Mp::Map(
            (0..n)
                .map(|_| {
                    let k = mp_decode(buf);
                    (k, mp_decode(buf))
                })
                .collect(),
        )
    };
    let ext_of = |buf: &mut &[u8], n: usize| {
        let ty = take(buf, 1)[0] as i8;
        Mp::Ext(ty, take(buf, n).to_vec())
    };
    match marker {
        M::Null => Mp::Nil,
        M::True => Mp::Bool(true),
        M::False => Mp::Bool(false),
        M::FixPos(v) => Mp::Int(i128::from(v)),
        M::FixNeg(v) => Mp::Int(i128::from(v)),
        M::U8 => Mp::Int(i128::from(be(buf, 1))),
        M::U16 => Mp::Int(i128::from(be(buf, 2))),
        M::U32 => Mp::Int(i128::from(be(buf, 4))),
        M::U64 => Mp::Int(i128::from(be(buf, 8))),
        M::I8 => Mp::Int(i128::from(be(buf, 1) as u8 as i8)),
        M::I16 => Mp::Int(i128::from(be(buf, 2) as u16 as i16)),
        M::I32 => Mp::Int(i128::from(be(buf, 4) as u32 as i32)),
        M::I64 => Mp::Int(i128::from(be(buf, 8) as i64)),
        M::F32 => Mp::F(f64::from(f32::from_bits(be(buf, 4) as u32))),
        M::F64 => Mp::F(f64::from_bits(be(buf, 8))),
        M::FixStr(n) => str_of(buf, usize::from(n)),
        M::Str8 => {
            let n = be(buf, 1) as usize;
            str_of(buf, n)
        }
        M::Str16 => {
            let n = be(buf, 2) as usize;
            str_of(buf, n)
        }
        M::Str32 => {
            let n = be(buf, 4) as usize;
            str_of(buf, n)
        }
        M::Bin8 | M::Bin16 | M::Bin32 => {
            let w = match marker {
                M::Bin8 => 1,
                M::Bin16 => 2,
                _ => 4,
            };
            let n = be(buf, w) as usize;
            Mp::Bin(take(buf, n).to_vec())
        }
        M::FixArray(n) => arr_of(buf, usize::from(n)),
        M::Array16 => {
            let n = be(buf, 2) as usize;
            arr_of(buf, n)
        }
        M::Array32 => {
            let n = be(buf, 4) as usize;
            arr_of(buf, n)
        }
        M::FixMap(n) => map_of(buf, usize::from(n)),
        M::Map16 => {
            let n = be(buf, 2) as usize;
            map_of(buf, n)
        }
        M::Map32 => {
            let n = be(buf, 4) as usize;
            map_of(buf, n)
        }
        M::FixExt1 => ext_of(buf, 1),
        M::FixExt2 => ext_of(buf, 2),
        M::FixExt4 => ext_of(buf, 4),
        M::FixExt8 => ext_of(buf, 8),
        M::FixExt16 => ext_of(buf, 16),
        M::Ext8 => {
            let n = be(buf, 1) as usize;
            ext_of(buf, n)
        }
        M::Ext16 => {
            let n = be(buf, 2) as usize;
            ext_of(buf, n)
        }
        M::Ext32 => {
            let n = be(buf, 4) as usize;
            ext_of(buf, n)
        }
        M::Reserved => panic!("reserved MessagePack marker 0xc1"),
    }
}

/// Prefixes `body` with its VarInt length.
pub fn mp_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Splits a BINARY frame into its length-prefixed messages and decodes each; the frame must
/// hold only complete messages.
pub fn mp_messages(frame: &[u8]) -> Vec<Mp> {
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            assert!(!rest.is_empty(), "frame ends inside a VarInt length");
            assert!(shift <= 28, "VarInt longer than 5 bytes");
            let b = rest[0];
            rest = &rest[1..];
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        assert!(
            rest.len() >= len,
            "frame holds an incomplete message ({len} bytes announced, {} present)",
            rest.len()
        );
        let (body, tail) = rest.split_at(len);
        let mut cursor = body;
        out.push(mp_decode(&mut cursor));
        assert!(
            cursor.is_empty(),
            "trailing bytes after a MessagePack message"
        );
        rest = tail;
    }
    out
}

/// A client Invocation as the JS client writes it: `[1, {}, id|nil, target, [args]]` (5 items).
pub fn mp_invocation(id: Option<&str>, target: &str, string_args: &[&str]) -> Vec<u8> {
    protocol::client_invocation(Protocol::MessagePack, id, target, string_args).to_vec()
}

/// Reads BINARY frames until one MessagePack hub message that is not a Ping is available.
pub struct MpHub {
    pub ws: Ws,
    queue: VecDeque<Mp>,
}

impl MpHub {
    /// Upgrades (no negotiate), sends the handshake in a BINARY frame (as the .NET client
    /// does) and checks the `{}` answer.
    pub async fn connect(port: u16, hub: &str, token: &str) -> MpHub {
        let mut ws = ws_connect(port, &format!("/hubs/{hub}"), Some(token))
            .await
            .expect("upgrade");
        send_binary(&mut ws, MSGPACK_HANDSHAKE.as_bytes()).await;
        match next_frame(&mut ws, WAIT).await {
            Some(Frame::Binary(b)) => assert_eq!(b, b"{}\x1e", "handshake answer"),
            Some(Frame::Text(t)) => assert_eq!(t, "{}\u{1e}", "handshake answer"),
            other => panic!("no handshake answer: {other:?}"),
        }
        MpHub {
            ws,
            queue: VecDeque::new(),
        }
    }

    pub async fn send(&mut self, framed: &[u8]) {
        send_binary(&mut self.ws, framed).await
    }

    /// The next message (pings included); panics on timeout or close.
    pub async fn next_raw(&mut self) -> Mp {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return m;
            }
            match next_frame(&mut self.ws, WAIT).await {
                Some(Frame::Binary(b)) => self.queue.extend(mp_messages(&b)),
                other => panic!("expected a BINARY MessagePack frame, got {other:?}"),
            }
        }
    }

    /// The next message that is not a Ping.
    pub async fn msg(&mut self) -> Mp {
        loop {
            let m = self.next_raw().await;
            if m.arr().first() != Some(&Mp::Int(6)) {
                return m;
            }
        }
    }
}
