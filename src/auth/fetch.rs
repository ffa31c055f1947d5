//! The one HTTP(S) GET the server makes as a client: fetching the identity provider's JWK set
//! (`--jwks-url`). One HTTP/1.1 connection per fetch (a fetch happens at most every few
//! seconds, so no pool), with a time limit over the whole exchange and a cap on the body.
//! https goes through rustls (ring) and trusts the system's roots (`rustls-native-certs`) or,
//! with `--jwks-cacert`, only the CAs in that PEM file. Kept apart from the server's own TLS.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;

/// Largest key set accepted (a real one is a few KiB).
const MAX_BODY: usize = 1024 * 1024;
/// Time allowed for connecting, the TLS handshake, the request and the whole body.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a key-set URL or CA file cannot be used (start-up errors, one line each).
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("--jwks-url must be an http:// or https:// URL with a host, not '{0}'")]
    Url(String),
    #[error("--jwks-cacert: {0}")]
    CaFile(String),
    #[error("--jwks-cacert needs an https:// --jwks-url")]
    CaWithoutTls,
    #[error("no trusted root certificates found on this system for the https --jwks-url (give --jwks-cacert)")]
    NoRoots,
    #[error("TLS client setup failed: {0}")]
    Tls(String),
}

/// Why one fetch failed (logged, counted; the last good set stays in use).
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("the provider answered {0}")]
    Status(StatusCode),
    #[error("the body is larger than {MAX_BODY} bytes or broken: {0}")]
    Body(String),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
}

/// A key-set answer: its body and the `Cache-Control: max-age` it carried, if any.
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// Where the key set lives, resolved once at start.
pub struct Source {
    uri: Uri,
    /// `host[:port]` for the Host header.
    authority: String,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Source {
    pub fn new(url: &str, cacert_pem: Option<&[u8]>) -> Result<Source, SourceError> {
        let bad = || SourceError::Url(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?.clone();
        if authority.as_str().contains('@') {
            return Err(bad());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match (https, cacert_pem) {
            (false, Some(_)) => return Err(SourceError::CaWithoutTls),
            (false, None) => None,
            (true, ca) => {
                let name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
                Some((connector(ca)?, name))
            }
        };
        Ok(Source {
            authority: authority.as_str().to_string(),
            uri,
            host,
            port,
            tls,
        })
    }

    /// The host, for log lines (the URL's path or query could carry a credential).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// GETs the key set once, within [`TIMEOUT`].
    pub async fn get(&self) -> Result<Fetched, FetchError> {
        tokio::time::timeout(TIMEOUT, self.exchange())
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn exchange(&self) -> Result<Fetched, FetchError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.over(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(FetchError::Tls)?;
                self.over(tls).await
            }
        }
    }

    async fn over<S>(&self, stream: S) -> Result<Fetched, FetchError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let http = |e: hyper::Error| FetchError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(conn);
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = Request::get(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "ordertrack-jwks")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(http)?;
        if resp.status() != StatusCode::OK {
            driver.abort();
            return Err(FetchError::Status(resp.status()));
        }
        let max_age = resp
            .headers()
            .get_all(hyper::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok(Fetched { body, max_age })
    }
}

/// The `max-age` of one `Cache-Control` value; `no-cache`/`no-store` count as 0.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|d| {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        let (k, v) = d.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        v.trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

/// A TLS 1.2+ client trusting `cacert_pem`'s CAs, or the system's roots without it.
fn connector(cacert_pem: Option<&[u8]>) -> Result<tokio_rustls::TlsConnector, SourceError> {
    let mut roots = rustls::RootCertStore::empty();
    match cacert_pem {
        Some(pem) => {
            let ca_err = SourceError::CaFile;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("holds no certificate".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(SourceError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=x"), None);
    }

    #[test]
    fn urls() {
        assert!(Source::new("http://127.0.0.1:9/jwks", None).is_ok());
        assert!(Source::new("ftp://x/jwks", None).is_err());
        assert!(Source::new("/jwks", None).is_err());
        assert!(matches!(
            Source::new("http://x/jwks", Some(b"x")),
            Err(SourceError::CaWithoutTls)
        ));
    }
}
