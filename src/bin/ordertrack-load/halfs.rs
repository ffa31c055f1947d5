//! `fanout --transport sse|longpolling`: the fanout subscriber over the hub's HTTP
//! half-transports instead of a WebSocket. Long polling: one keep-alive connection that
//! negotiates, opens, sends the handshake and the subscription by POST, then polls in a loop.
//! Server-Sent Events: the event stream on one connection, the POSTs on another (closed once
//! subscribed). Arrivals are recorded as the WebSocket subscriber records them, so the same
//! table compares the transports.

use super::*;
use hyper::body::Incoming;
use ordertrack::testing::protocol::{client_invocation, encode_handshake_request, Protocol};

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect_from(addr: SocketAddr, source: IpAddr) -> R<Sender> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|e| e.to_string())?;
    let stream = sock.connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn request(
    s: &mut Sender,
    method: &str,
    path: &str,
    token: &str,
    body: Bytes,
    accept: &str,
) -> R<hyper::Response<Incoming>> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "load")
        .header("authorization", format!("Bearer {token}"))
        .header("accept", accept)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    s.ready().await.map_err(|e| e.to_string())?;
    s.send_request(req).await.map_err(|e| e.to_string())
}

async fn whole(
    s: &mut Sender,
    method: &str,
    path: &str,
    token: &str,
    body: Bytes,
) -> R<(u16, Bytes)> {
    let resp = request(s, method, path, token, body, "*/*").await?;
    let status = resp.status().as_u16();
    let body = body_of(resp).await?;
    Ok((status, body))
}

/// Negotiates, and returns the hub path with the connection token.
async fn negotiate(s: &mut Sender, token: &str) -> R<String> {
    let (st, body) = whole(
        s,
        "POST",
        "/hubs/customer-orders/negotiate?negotiateVersion=1",
        token,
        Bytes::new(),
    )
    .await?;
    if st != 200 {
        return Err(format!("negotiate answered {st}"));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let id = v["connectionToken"].as_str().ok_or("no connectionToken")?;
    Ok(format!("/hubs/customer-orders?id={id}"))
}

/// The handshake and the subscription, in one POST body.
fn opening(sub: &Subscriber) -> Bytes {
    let protocol = if sub.msgpack {
        Protocol::MessagePack
    } else {
        Protocol::Json
    };
    let mut b = encode_handshake_request(protocol).to_vec();
    b.extend_from_slice(&client_invocation(
        protocol,
        Some("1"),
        "SubscribeToOrder",
        &[&sub.order.to_string()],
    ));
    Bytes::from(b)
}

/// Records the events in a payload; true if it held the subscription's completion.
fn record(
    payload: &[u8],
    msgpack: bool,
    idx: usize,
    arrivals: &mpsc::UnboundedSender<Arrival>,
) -> bool {
    let now = Instant::now();
    let mut completed = false;
    if msgpack {
        // Past the `{}` handshake answer: VarInt-length-prefixed arrays; an Invocation starts
        // with [1, …], a Completion with [3, …].
        let mut rest = payload.strip_prefix(b"{}\x1e").unwrap_or(payload);
        while !rest.is_empty() {
            let (mut len, mut shift, mut used) = (0usize, 0, 0);
            for &b in rest.iter().take(5) {
                used += 1;
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let Some(msg) = rest.get(used..used + len) else {
                break;
            };
            match msg.get(1) {
                Some(1) => {
                    let _ = arrivals.send((idx, 0, now));
                }
                Some(3) => completed = true,
                _ => {}
            }
            rest = &rest[used + len..];
        }
        return completed;
    }
    for rec in String::from_utf8_lossy(payload).split('\u{1e}') {
        if rec.contains("\"type\":3") {
            completed = true;
        } else if rec.contains("\"type\":1") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(rec) {
                if let Some(ver) = v["arguments"][0]["version"].as_u64() {
                    let _ = arrivals.send((idx, ver, now));
                }
            }
        }
    }
    completed
}

/// A long-polling subscriber.
pub(super) async fn open_long_polling(
    sub: Subscriber,
    arrivals: mpsc::UnboundedSender<Arrival>,
    stop: CancellationToken,
) -> R<()> {
    let mut s = connect_from(sub.addr, sub.source).await?;
    let path = negotiate(&mut s, &sub.token).await?;
    let token = sub.token.clone();
    let (st, _) = whole(&mut s, "GET", &path, &token, Bytes::new()).await?;
    if st != 200 {
        return Err(format!("first poll answered {st}"));
    }
    let (st, _) = whole(&mut s, "POST", &path, &token, opening(&sub)).await?;
    if st != 200 {
        return Err(format!("send answered {st}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, body) = whole(&mut s, "GET", &path, &token, Bytes::new()).await?;
        if st != 200 || Instant::now() > deadline {
            return Err(format!(
                "poll answered {st} before the subscription completed"
            ));
        }
        if record(&body, sub.msgpack, sub.idx, &arrivals) {
            break;
        }
    }
    tokio::spawn(async move {
        loop {
            let polled = tokio::select! {
                _ = stop.cancelled() => return,
                r = whole(&mut s, "GET", &path, &token, Bytes::new()) => r,
            };
            match polled {
                Ok((200, body)) => {
                    record(&body, sub.msgpack, sub.idx, &arrivals);
                }
                _ => return,
            }
        }
    });
    Ok(())
}

/// A Server-Sent Events subscriber (JSON only: SSE carries text).
pub(super) async fn open_sse(
    sub: Subscriber,
    arrivals: mpsc::UnboundedSender<Arrival>,
    stop: CancellationToken,
) -> R<()> {
    if sub.msgpack {
        return Err("Server-Sent Events carry text only: use --protocol json".into());
    }
    let mut posts = connect_from(sub.addr, sub.source).await?;
    let path = negotiate(&mut posts, &sub.token).await?;
    let mut stream = connect_from(sub.addr, sub.source).await?;
    let resp = request(
        &mut stream,
        "GET",
        &path,
        &sub.token,
        Bytes::new(),
        "text/event-stream",
    )
    .await?;
    if resp.status() != 200 {
        return Err(format!("event stream answered {}", resp.status()));
    }
    let mut body = resp.into_body();
    let (st, _) = whole(&mut posts, "POST", &path, &sub.token, opening(&sub)).await?;
    if st != 200 {
        return Err(format!("send answered {st}"));
    }
    drop(posts);
    let mut buf = String::new();
    // Complete events only: an event ends with a blank line; its payload is its data lines.
    let drain = move |chunk: &[u8], buf: &mut String| -> bool {
        buf.push_str(&String::from_utf8_lossy(chunk));
        let mut completed = false;
        while let Some(end) = buf.find("\r\n\r\n") {
            let event: String = buf[..end]
                .split("\r\n")
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n");
            buf.drain(..end + 4);
            completed |= record(event.as_bytes(), false, sub.idx, &arrivals);
        }
        completed
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), body.frame())
            .await
            .map_err(|_| "subscribe timeout")?;
        let Some(Ok(frame)) = frame else {
            return Err("event stream ended during subscribe".into());
        };
        if let Ok(data) = frame.into_data() {
            if drain(&data, &mut buf) {
                break;
            }
        }
    }
    tokio::spawn(async move {
        let _stream = stream;
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                f = body.frame() => f,
            };
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        drain(&data, &mut buf);
                    }
                }
                _ => return,
            }
        }
    });
    Ok(())
}
