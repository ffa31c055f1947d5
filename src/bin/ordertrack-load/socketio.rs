//! The socket.io side of `ordertrack-load --peer socketio`: a minimal Socket.IO v5 client over
//! Engine.IO v4 on a plain WebSocket (no polling, no upgrade), enough to play the subscriber of
//! the `fanout` scenario against `scripts/peer/socketio-peer.mjs`: connect with a token in the
//! CONNECT auth payload, `subscribe` to one order and wait for the ack, answer the server's pings,
//! and record every `OrderStatusChanged` as an arrival, exactly as the SignalR subscriber does.
//!
//! Wire format used (text frames only, default namespace `/`):
//! - server → `0{"sid":…,"pingInterval":…}` (Engine.IO OPEN)
//! - client → `40{"token":"…"}` (Socket.IO CONNECT with auth); server → `40{"sid":…}` or
//!   `44{"message":…}` (CONNECT_ERROR)
//! - client → `42<ack id>["subscribe","<order id>"]`; server → `43<ack id>[…]`
//! - server → `2` (ping), client → `3` (pong)
//! - server → `42["OrderStatusChanged",{…,"version":N}]`

use super::{Arrival, Subscriber, R};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<TcpStream>;

/// The event the peer emits for a status change.
const EVENT: &str = "OrderStatusChanged";

/// Engine.IO packet types (first character of a text frame).
const EIO_OPEN: char = '0';
const EIO_PING: &str = "2";
const EIO_PONG: &str = "3";

/// The next text frame before `deadline`, answering Engine.IO pings on the way.
async fn next_packet(ws: &mut Ws, deadline: Instant) -> R<String> {
    loop {
        let m = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .map_err(|_| "socket.io handshake timeout")?;
        match m {
            Some(Ok(Message::Text(t))) if t.as_str() == EIO_PING => {
                ws.send(Message::text(EIO_PONG))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(_))) | None => {
                return Err("closed during socket.io handshake".into())
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// The version in a `42["OrderStatusChanged",{…}]` event packet, if that is what it is.
fn event_version(packet: &str) -> Option<u64> {
    let body = packet.strip_prefix("42")?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if v.get(0)?.as_str()? != EVENT {
        return None;
    }
    v.get(1)?.get("version")?.as_u64()
}

/// Connects (token checked by the server's middleware), subscribes to `sub.order` and waits for
/// the ack; then a task answers pings and records arrivals until `stop` (a drop, no close
/// handshake, like a network loss).
pub(crate) async fn open_subscriber(
    sub: Subscriber,
    arrivals: mpsc::UnboundedSender<Arrival>,
    stop: CancellationToken,
) -> R<()> {
    let Subscriber {
        addr,
        source,
        token,
        order,
        idx,
        msgpack,
    } = sub;
    if msgpack {
        return Err("the socket.io peer speaks JSON only".into());
    }
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|e| e.to_string())?;
    let stream = sock.connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);

    let open = next_packet(&mut ws, deadline).await?;
    if !open.starts_with(EIO_OPEN) {
        return Err(format!("expected an Engine.IO open packet, got {open:.40}"));
    }
    let connect = serde_json::json!({ "token": token });
    ws.send(Message::text(format!("40{connect}")))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let p = next_packet(&mut ws, deadline).await?;
        if p.starts_with("40") {
            break;
        }
        if p.starts_with("44") {
            return Err(format!("socket.io connect refused: {p:.120}"));
        }
    }

    let subscribe = serde_json::json!(["subscribe", order.to_string()]);
    ws.send(Message::text(format!("421{subscribe}")))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let p = next_packet(&mut ws, deadline).await?;
        let Some(body) = p.strip_prefix("431") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
        if v[0].get("order").is_none() {
            return Err(format!("subscribe refused: {body:.120}"));
        }
        break;
    }

    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let now = Instant::now();
                        if t.as_str() == EIO_PING {
                            if ws.send(Message::text(EIO_PONG)).await.is_err() {
                                return;
                            }
                        } else if let Some(ver) = event_version(t.as_str()) {
                            let _ = arrivals.send((idx, ver, now));
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::event_version;

    #[test]
    fn reads_the_version_of_a_status_event_only() {
        assert_eq!(
            event_version(r#"42["OrderStatusChanged",{"status":"Accepted","version":2}]"#),
            Some(2)
        );
        assert_eq!(event_version(r#"42["Other",{"version":2}]"#), None);
        assert_eq!(event_version(r#"431[{"order":{"version":2}}]"#), None);
        assert_eq!(event_version("2"), None);
    }
}
