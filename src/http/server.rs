//! The accept loop and its limits: total connections, connections per client address, a guard
//! against connections that never send a byte, header and idle timeouts, and graceful drain on
//! shutdown. Refused connections get a one-line 503 problem and are closed. With TLS on, the
//! handshake happens here too, after the first-byte guard (`tls.rs`).

use super::problem::raw_refusal;
use super::App;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// A connection that sends nothing for this long after accept is dropped.
    pub first_byte: Duration,
    /// Time allowed for a request's headers (also bounds idle keep-alive).
    pub header_read: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 19_000,
            max_per_ip: 19_000,
            first_byte: Duration::from_secs(10),
            header_read: Duration::from_secs(15),
            drain: Duration::from_secs(8),
        }
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// Decrements its address's count when the connection ends.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A connection's places under the total and per-address caps. A hub request carries a clone
/// in its extensions, and the WebSocket it upgrades to keeps it until it closes, so open
/// WebSockets count against both caps like any other connection.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<(OwnedSemaphorePermit, IpSlot)>);

async fn refuse(mut stream: TcpStream, detail: &str) {
    let bytes = raw_refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "Server.TooManyConnections",
        detail,
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Refuses a connection over a cap: a 503 line on plain HTTP; on the TLS port a close (a
/// plain-text answer would reach a TLS client as a garbled record, and a handshake just to
/// refuse would spend the CPU the cap is there to save).
fn refuse_over(stream: TcpStream, tls: bool, detail: &'static str) {
    if !tls {
        tokio::spawn(refuse(stream, detail));
    }
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests for at most
/// `limits.drain`. With `tls`, every connection is a TLS one.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        // No `max_headers`: hyper's default cap (100 headers) is parsed into inline buffers,
        // while any configured cap builds and copies ~3 KiB of header slots per request. The
        // header block stays bounded by `max_buf_size`.
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            app.metrics
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            refuse_over(
                stream,
                tls.is_some(),
                "The server is at its connection limit.",
            );
            continue;
        };
        let Some(slot) = per_ip.take(peer.ip(), limits.max_per_ip) else {
            app.metrics
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            refuse_over(
                stream,
                tls.is_some(),
                "Too many connections from this address.",
            );
            continue;
        };
        let watcher = graceful.watcher();
        let app = app.clone();
        let builder = builder.clone();
        let first_byte = limits.first_byte;
        let stop = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            serve_one(
                stream, peer, app, builder, watcher, first_byte, stop, permit, slot, tls,
            )
            .await;
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    first_byte: Duration,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
    slot: IpSlot,
    tls: Option<TlsAcceptor>,
) {
    let mut probe = [0u8; 1];
    // A connection that has not sent its first byte has nothing to drain on shutdown.
    let first = tokio::select! {
        _ = stop.cancelled() => return,
        r = tokio::time::timeout(first_byte, stream.peek(&mut probe)) => r,
    };
    match first {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let held = ConnectionSlot(Arc::new((permit, slot)));
    match tls {
        None => serve_io(stream, peer, app, &builder, watcher, held).await,
        Some(acceptor) => {
            let handshake = super::tls::accept(&acceptor, stream, probe[0], &app.metrics);
            // Shutdown during a handshake: nothing to drain yet.
            let tls_stream = tokio::select! {
                _ = stop.cancelled() => return,
                s = handshake => s,
            };
            if let Some(s) = tls_stream {
                serve_io(s, peer, app, &builder, watcher, held).await;
            }
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (and hub upgrades) on one connection, plain or TLS, until it ends.
async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    app: Arc<App>,
    builder: &Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    held: ConnectionSlot,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let for_requests = held.clone();
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if req.uri().path().starts_with("/hubs/") {
            req.extensions_mut().insert(for_requests.clone());
        }
        let answer = super::handle(&app, req, peer);
        async move {
            let resp = answer.await;
            Ok::<_, std::convert::Infallible>(super::transports::attach(resp))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    // An upgraded (hub) connection still holds a clone until the WebSocket closes.
    drop(held);
}
