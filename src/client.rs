//! A small client for a running ordertrack server, used by the operator commands (`watch`,
//! `demo`, `db backup`/`db stats`): plain HTTP/1.1 requests over hyper and a SignalR JSON-protocol
//! session on the customer hub over tokio-tungstenite, written with the hub codec's client side
//! (`hub/protocol/client.rs`). `https://` URLs go over TLS (`crate::tls`'s client configuration:
//! a given CA file or the system's trust store), and the hub then over `wss://`.

use crate::hub::protocol::{
    client_invocation, encode_handshake_request, encode_ping, split_json_records, Protocol,
};
use crate::tls::ClientStream;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tokio_tungstenite::WebSocketStream;

/// How long one HTTP exchange or hub step may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The hub's client timeout is 30 s: send a ping well within it.
const PING_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("bad server URL '{0}': {1}")]
    Url(String, &'static str),
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("the request to {0} failed: {1}")]
    Http(String, String),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("the hub refused: {0}")]
    Hub(String),
    #[error("{what} answered {status}{}", .title.as_deref().map(|t| format!(" {t}")).unwrap_or_default())]
    Refused {
        what: &'static str,
        status: u16,
        title: Option<String>,
    },
    #[error("the hub connection closed{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    HubClosed(Option<String>),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Where a server is: `http[s]://host[:port][/prefix]`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// A path prefix without a trailing slash ("" for none).
    pub prefix: String,
    /// For `https://`: the TLS configuration (whom to trust).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// An `http://` or `https://` URL (no scheme means `http://`); `https://` trusts the CAs
    /// in `cacert`, or the system's store without it.
    pub fn parse(url: &str, cacert: Option<&Path>) -> Result<Endpoint, ClientError> {
        let bad = |why| ClientError::Url(url.to_string(), why);
        let (rest, https) = if let Some(r) = url.strip_prefix("http://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, true)
        } else if url.contains("://") {
            return Err(bad("only http:// and https:// URLs are supported"));
        } else {
            (url, false)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let split = match authority.strip_prefix('[') {
            Some(_) => authority
                .find("]:")
                .map(|i| (&authority[..=i], &authority[i + 2..])),
            None => authority.rsplit_once(':'),
        };
        let (host, port) = match split {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (authority, if https { 443 } else { 80 }),
        };
        let tls = match https {
            true => Some(crate::tls::client_config(cacert)?),
            false => None,
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
            tls,
        })
    }

    /// The same server over TLS, trusting the CAs in `cacert` or the system's store.
    pub fn with_tls(mut self, cacert: Option<&Path>) -> Result<Endpoint, ClientError> {
        self.tls = Some(crate::tls::client_config(cacert)?);
        Ok(self)
    }

    fn scheme(&self) -> &'static str {
        match self.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    /// Opens a connection (TCP, then TLS for `https://`) within [`TIMEOUT`].
    pub(crate) async fn open(&self) -> Result<ClientStream, ClientError> {
        let connect = async {
            let tcp = TcpStream::connect(self.addr()).await?;
            let _ = tcp.set_nodelay(true);
            ClientStream::open(tcp, &self.addr().0, self.tls.as_ref()).await
        };
        tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout(self.base(), TIMEOUT))?
            .map_err(|e| ClientError::Connect(self.base(), e.to_string()))
    }

    /// The endpoint of a server listening on `listen`, as seen from this host (a wildcard
    /// address is reached over loopback).
    pub fn local(listen: std::net::SocketAddr) -> Endpoint {
        let ip = match listen.ip() {
            ip if !ip.is_unspecified() => ip,
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        let host = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        Endpoint {
            host,
            port: listen.port(),
            prefix: String::new(),
            tls: None,
        }
    }

    /// `http[s]://host:port/prefix`
    pub fn base(&self) -> String {
        format!(
            "{}://{}:{}{}",
            self.scheme(),
            self.host,
            self.port,
            self.prefix
        )
    }

    pub(crate) fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn addr(&self) -> (String, u16) {
        (self.host.trim_matches(['[', ']']).to_string(), self.port)
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem title of an error answer, or the status code.
    pub fn describe(&self) -> String {
        match self.json()["title"].as_str() {
            Some(t) => format!("{} {t}", self.status),
            None => self.status.to_string(),
        }
    }
}

/// A keep-alive HTTP/1.1 connection that reconnects when the server dropped it.
pub struct Http {
    ep: Endpoint,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Http {
    pub fn new(ep: &Endpoint) -> Http {
        Http {
            ep: ep.clone(),
            sender: None,
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, ClientError> {
        let stream = self.ep.open().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Connect(self.ep.base(), e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request; `path` is below the endpoint's prefix and may carry a query.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{path}", self.ep.base());
        let fut = self.send_inner(method, path, token, headers, body);
        match tokio::time::timeout(TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.sender = None;
                Err(ClientError::Timeout(url, TIMEOUT))
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{path}", self.ep.base());
        let http_err = |e: &dyn std::fmt::Display| ClientError::Http(url.clone(), e.to_string());
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|e| http_err(&e))?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.ep.prefix))
            .header("host", self.ep.authority())
            .header(
                "user-agent",
                concat!("ordertrack/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http_err(&e))?
            .to_bytes();
        self.sender = Some(sender);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(
        &mut self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        self.send(Method::GET, path, token, headers, None).await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send(Method::POST, path, Some(token), headers, Some(bytes))
            .await
    }
}

/// What arrives on a hub session.
#[derive(Debug)]
pub enum HubMessage {
    /// A server invocation such as `ReceiveOrderStatusChanged` with its first argument.
    Event {
        target: String,
        arg: serde_json::Value,
    },
    /// The server closed the session (SignalR Close or WebSocket close).
    Closed {
        error: Option<String>,
        allow_reconnect: bool,
    },
}

/// A SignalR session (JSON protocol) on one hub.
pub struct HubSession {
    ws: WebSocketStream<ClientStream>,
    pending: std::collections::VecDeque<serde_json::Value>,
    next_invocation: u64,
    last_sent: tokio::time::Instant,
}

impl HubSession {
    /// Negotiates, opens the WebSocket and completes the handshake on `hub`
    /// (e.g. `customer-orders`).
    pub async fn connect(ep: &Endpoint, hub: &str, token: &str) -> Result<HubSession, ClientError> {
        tokio::time::timeout(TIMEOUT, Self::connect_inner(ep, hub, token))
            .await
            .map_err(|_| ClientError::Timeout(ep.base(), TIMEOUT))?
    }

    async fn connect_inner(
        ep: &Endpoint,
        hub: &str,
        token: &str,
    ) -> Result<HubSession, ClientError> {
        let mut http = Http::new(ep);
        let path = format!("/hubs/{hub}/negotiate?negotiateVersion=1");
        let r = http
            .send(Method::POST, &path, Some(token), &[], None)
            .await?;
        if r.status != 200 {
            return Err(ClientError::Refused {
                what: "negotiate",
                status: r.status,
                title: r.json()["title"].as_str().map(str::to_string),
            });
        }
        let v = r.json();
        if let Some(e) = v["error"].as_str() {
            return Err(ClientError::Hub(e.to_string()));
        }
        let Some(conn_token) = v["connectionToken"].as_str() else {
            return Err(ClientError::Protocol(
                "negotiate gave no connectionToken".into(),
            ));
        };
        let id: String =
            percent_encoding::utf8_percent_encode(conn_token, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let ws_scheme = if ep.tls.is_some() { "wss" } else { "ws" };
        let url = format!(
            "{ws_scheme}://{}{}/hubs/{hub}?id={id}",
            ep.authority(),
            ep.prefix
        );
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|_| ClientError::Url(url.clone(), "not a valid WebSocket URL"))?;
        let auth = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Protocol("the token is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", auth);
        let stream = ep.open().await?;
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| ClientError::Hub(format!("WebSocket upgrade failed: {e}")))?;
        ws.send(text_frame(encode_handshake_request(Protocol::Json)))
            .await
            .map_err(|e| ClientError::Hub(e.to_string()))?;
        let mut session = HubSession {
            ws,
            pending: Default::default(),
            next_invocation: 1,
            last_sent: tokio::time::Instant::now(),
        };
        // The handshake answer is the first record: `{}` or `{"error": …}`.
        let first = session.read_record().await?;
        if let Some(e) = first["error"].as_str() {
            return Err(ClientError::Hub(format!("handshake refused: {e}")));
        }
        Ok(session)
    }

    /// Reads the next record, from what was already received or from the socket.
    async fn read_record(&mut self) -> Result<serde_json::Value, ClientError> {
        loop {
            if let Some(v) = self.pending.pop_front() {
                return Ok(v);
            }
            let msg = match self.ws.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(ClientError::HubClosed(Some(e.to_string()))),
                None => return Err(ClientError::HubClosed(None)),
            };
            match msg {
                Message::Text(t) => {
                    for rec in split_json_records(t.as_str()) {
                        let v = serde_json::from_str(rec)
                            .map_err(|e| ClientError::Protocol(format!("bad hub record: {e}")))?;
                        self.pending.push_back(v);
                    }
                }
                Message::Close(_) => {
                    self.pending
                        .push_back(serde_json::json!({"type": 7, "error": null}));
                }
                _ => {}
            }
        }
    }

    async fn send_frame(&mut self, frame: Bytes) -> Result<(), ClientError> {
        self.last_sent = tokio::time::Instant::now();
        self.ws
            .send(text_frame(frame))
            .await
            .map_err(|e| ClientError::HubClosed(Some(e.to_string())))
    }

    /// Invokes `target(arg)` and waits for its completion; events that arrive meanwhile are
    /// kept for `next`. Returns the completion's result, or the hub's error text.
    pub async fn invoke(
        &mut self,
        target: &str,
        arg: &str,
    ) -> Result<Result<serde_json::Value, String>, ClientError> {
        let id = self.next_invocation.to_string();
        self.next_invocation += 1;
        self.send_frame(client_invocation(Protocol::Json, Some(&id), target, &[arg]))
            .await?;
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let outcome = loop {
            let rec = tokio::time::timeout_at(deadline, self.read_record())
                .await
                .map_err(|_| ClientError::Hub(format!("no answer to {target}")))??;
            if rec["type"] == 3 && rec["invocationId"] == id.as_str() {
                break match rec["error"].as_str() {
                    Some(e) => Err(e.to_string()),
                    None => Ok(rec["result"].clone()),
                };
            }
            if rec["type"] == 7 {
                let e = rec["error"].as_str().map(str::to_string);
                return Err(ClientError::HubClosed(e));
            }
            held.push(rec);
        };
        for rec in held.into_iter().rev() {
            self.pending.push_front(rec);
        }
        Ok(outcome)
    }

    /// The next event or close; answers nothing else, and keeps the session alive with pings.
    pub async fn next(&mut self) -> Result<HubMessage, ClientError> {
        loop {
            let ping_at = self.last_sent + PING_EVERY;
            let rec = tokio::select! {
                r = self.read_record() => r?,
                _ = tokio::time::sleep_until(ping_at) => {
                    self.send_frame(encode_ping(Protocol::Json)).await?;
                    continue;
                }
            };
            match rec["type"].as_u64() {
                Some(1) => {
                    return Ok(HubMessage::Event {
                        target: rec["target"].as_str().unwrap_or("").to_string(),
                        arg: rec["arguments"][0].clone(),
                    })
                }
                Some(7) => {
                    return Ok(HubMessage::Closed {
                        error: rec["error"].as_str().map(str::to_string),
                        allow_reconnect: rec["allowReconnect"].as_bool().unwrap_or(false),
                    })
                }
                _ => {}
            }
        }
    }
}

/// A JSON-protocol frame as a TEXT message (the codec writes UTF-8).
fn text_frame(frame: Bytes) -> Message {
    Message::text(String::from_utf8_lossy(&frame).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8080, "")
        );
        let e = Endpoint::parse("localhost:9000/ot/", None).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("localhost", 9000, "/ot")
        );
        let e = Endpoint::parse("http://example.org", None).unwrap();
        assert_eq!(e.port, 80);
        let e = Endpoint::parse("http://[::1]:81", None).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("[::1]", 81));
        assert!(Endpoint::parse("ftp://x", None).is_err());
        assert!(Endpoint::parse("http://x:notaport", None).is_err());
        assert!(Endpoint::parse("http://", None).is_err());
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            Endpoint::parse("https://x", Some(missing)),
            Err(ClientError::Tls(_))
        ));
        let e = Endpoint::local("0.0.0.0:8080".parse().unwrap());
        assert_eq!(e.base(), "http://127.0.0.1:8080");
        let e = Endpoint::local("[::]:81".parse().unwrap());
        assert_eq!(e.base(), "http://[::1]:81");
    }
}
