//! The server side of TLS: the handshake on an accepted connection (with its own timeout, and a
//! plain-HTTP request on the TLS port answered with one 400 line instead of a TLS alert nobody
//! reads), and the reloader that swaps in a renewed certificate on SIGHUP or when the files
//! change on disk, without touching open connections. The key material itself is `crate::tls`.

use super::problem::raw_refusal;
use crate::metrics::{Metrics, TlsEvent};
use crate::tls::{fingerprint, CurrentCert, TlsFiles};
use hyper::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Time a client has to complete the handshake once it sent its first byte.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate and key files are checked for a change.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// A TLS record of type handshake starts with this byte; HTTP starts with a method's letter.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Completes the server handshake on `stream`, whose first byte is `first`. `None` when the
/// client spoke plain HTTP (answered 400 and closed), failed the handshake or was too slow.
pub async fn accept(
    acceptor: &TlsAcceptor,
    mut stream: TcpStream,
    first: u8,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    if first != TLS_HANDSHAKE_RECORD {
        metrics.tls_event(TlsEvent::PlainHttp);
        let bytes = raw_refusal(
            StatusCode::BAD_REQUEST,
            "Server.TlsRequired",
            "This port speaks HTTPS: use https://.",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        })
        .await;
        return None;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            metrics.tls_event(TlsEvent::HandshakeFailure);
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.tls_event(TlsEvent::HandshakeFailure);
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Reloads the certificate on SIGHUP and whenever the files' stamp changes, until `stop`. A pair
/// that does not load (half written, mismatched, unreadable) is logged and the current one kept;
/// the next change or SIGHUP tries again.
pub async fn reload_loop(
    files: TlsFiles,
    current: Arc<CurrentCert>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut seen = files.stamp();
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let mut hup: Option<()> = None;
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL_EVERY) => "files changed",
            _ = hangup(&mut hup) => "SIGHUP",
        };
        let stamp = files.stamp();
        if why != "SIGHUP" && stamp == seen {
            continue;
        }
        seen = stamp;
        // Reading two small files: short enough for the runtime, and rare.
        match files.load() {
            Ok(key) => {
                let fp = fingerprint(&key);
                current.replace(key);
                metrics.tls_event(TlsEvent::Reload);
                tracing::info!(trigger = why, sha256 = %fp, "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_event(TlsEvent::ReloadFailure);
                tracing::warn!(trigger = why, error = %e, "TLS certificate not reloaded; still serving the previous one");
            }
        }
    }
}

#[cfg(unix)]
async fn hangup(hup: &mut Option<tokio::signal::unix::Signal>) {
    match hup {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn hangup(_: &mut Option<()>) {
    std::future::pending().await
}
