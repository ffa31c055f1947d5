//! TLS material, for both ends: loading a PEM certificate chain and its key into a checked
//! rustls `CertifiedKey`, the server's swappable current key (so a renewed certificate is served
//! without a restart), the server and client rustls configurations (TLS 1.2+ with the `ring`
//! provider only) and the client's stream that is TLS or plain. A leaf: it imports nothing of
//! the crate, so the HTTP server and the operator client both build on it.
//!
//! No error or log line made here carries key material: PEM parse errors are reported without
//! the library's detail (which can quote the file).

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("no certificate in {0} (expected PEM blocks '-----BEGIN CERTIFICATE-----')")]
    NoCertificate(PathBuf),
    #[error("{0} is not valid PEM")]
    Pem(PathBuf),
    #[error("no private key in {0} (expected a PEM block '-----BEGIN PRIVATE KEY-----', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY')")]
    NoKey(PathBuf),
    #[error(
        "the private key in {0} is of a kind not supported (use RSA, ECDSA P-256/P-384 or Ed25519)"
    )]
    UnsupportedKey(PathBuf),
    #[error("the private key in {key} does not match the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("no trusted certificate authority: the system store is empty or unreadable; give --cacert PATH")]
    NoRoots,
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// The certificate and key files a server is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What identifies one version of the files on disk: (modified time, length, inode) of each.
/// Renewal tools replace files (certbot re-points symlinks, others rename or rewrite), and every
/// way changes one of these.
pub type FilesStamp = [(Option<std::time::SystemTime>, u64, u64); 2];

impl TlsFiles {
    /// The files' current stamp (a missing file counts as a state of its own).
    pub fn stamp(&self) -> FilesStamp {
        [stamp_of(&self.cert), stamp_of(&self.key)]
    }

    /// Reads and checks the pair: a chain with at least one certificate, a key the `ring`
    /// provider can sign with, and that key matching the first certificate.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let chain = read_certificates(&self.cert)?;
        let pem = std::fs::read(&self.key).map_err(|e| TlsError::Read(self.key.clone(), e))?;
        let key = match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(k) => k,
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoKey(self.key.clone()))
            }
            Err(_) => return Err(TlsError::Pem(self.key.clone())),
        };
        let signer = provider::sign::any_supported_type(&key)
            .map_err(|_| TlsError::UnsupportedKey(self.key.clone()))?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            // `Unknown`: the key cannot tell its public half; rustls itself accepts that.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(_) => Err(TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            }),
        }
    }
}

fn stamp_of(path: &Path) -> (Option<std::time::SystemTime>, u64, u64) {
    match std::fs::metadata(path) {
        Ok(m) => {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            (m.modified().ok(), m.len(), inode)
        }
        Err(_) => (None, 0, 0),
    }
}

/// Every certificate in a PEM file, in order.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Read(path.into(), e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem(path.into()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.into()));
    }
    Ok(certs)
}

/// The SHA-256 fingerprint of a key's leaf certificate, as uppercase hex pairs joined by `:`
/// (what `openssl x509 -fingerprint -sha256` prints): public, so fit for logs.
pub fn fingerprint(key: &CertifiedKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.end_entity_cert().map(|c| c.as_ref()).unwrap_or(&[]));
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The key the server presents, replaced whole on reload: handshakes in flight keep the `Arc`
/// they took, open connections are not touched (their keys were agreed at handshake).
#[derive(Debug)]
pub struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    pub fn new(key: CertifiedKey) -> Arc<CurrentCert> {
        Arc::new(CurrentCert(RwLock::new(Arc::new(key))))
    }

    pub fn replace(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    pub fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// TLS 1.3 and 1.2; nothing older.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The server's configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, the key from `cert`.
pub fn server_config(cert: Arc<CurrentCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Room for resumption by a reconnect storm's worth of clients (a few hundred bytes each).
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(Arc::new(config))
}

/// The operator client's configuration: trusts the CA certificates in `cacert` when given,
/// else the system's store (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the OS bundle); offers only
/// `http/1.1` (the client and its WebSocket speak HTTP/1.1).
pub fn client_config(cacert: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match cacert {
        Some(path) => {
            for cert in read_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Setup(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client connection, over TLS or not.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Wraps `tcp` in TLS when `config` is given, checking the certificate against `host`
    /// (a DNS name or an IP address, without brackets).
    pub async fn open(
        tcp: TcpStream,
        host: &str,
        config: Option<&Arc<ClientConfig>>,
    ) -> std::io::Result<ClientStream> {
        let Some(config) = config else {
            return Ok(ClientStream::Plain(tcp));
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await?;
        Ok(ClientStream::Tls(Box::new(tls)))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
