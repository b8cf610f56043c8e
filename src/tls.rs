//! TLS for the client port and the peer port, with rustls (its `ring` provider).
//!
//! Certificates, keys and CAs are PEM files named by flags. A server or a client made from them
//! reads them again on `reload` (the node calls it on SIGHUP): a connection opened after the
//! reload uses the new files, one already open keeps its session. A reload that fails (a missing
//! file, a key that does not match its certificate) keeps what is in use, and says why.
//!
//! Peers prove who they are. With peer TLS on, every peer connection is mutual TLS against the
//! peer CA, and a node's certificate names its node id as a DNS name, `node-<id>.raftcache`
//! (`peer_name`). A caller checks that the node it reached presents the certificate of the id it
//! means to call (the server name of the handshake); the called node checks that the caller's
//! certificate names the id its call header claims (`certificate_names`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::types::NodeId;

/// Why TLS could not be set up from the files given.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file, the first one the holder's own.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, format!("no private key: {e}")))
}

/// The CA certificates of a PEM file, as roots of trust.
fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// rustls's *ring* provider: TLS 1.2 and 1.3 with the usual suites and key exchanges, built
/// from Rust and a little C with no other toolchain. It offers no post-quantum key exchange
/// (rustls marks it deprecated for that); its aws-lc-rs provider does, at the price of a large
/// C library in the build.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The DNS name a node's peer certificate carries: `node-<id>.raftcache`.
pub fn peer_name(id: NodeId) -> String {
    format!("node-{id}.raftcache")
}

/// Whether `certificate` (an end-entity certificate, already verified against a CA by the
/// handshake) names `name` among its subject alternative names.
pub fn certificate_names(certificate: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// The files a TLS server is made from.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// This end's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// A rustls configuration built from files, and built again from them on `reload`.
struct Reloading<F, C> {
    files: F,
    build: fn(&F) -> Result<Arc<C>, TlsError>,
    current: RwLock<Arc<C>>,
}

impl<F, C> Reloading<F, C> {
    fn load(files: F, build: fn(&F) -> Result<Arc<C>, TlsError>) -> Result<Self, TlsError> {
        let current = RwLock::new(build(&files)?);
        Ok(Self {
            files,
            build,
            current,
        })
    }

    /// Reads the files again; on failure what was in use stays in use.
    fn reload(&self) -> Result<(), TlsError> {
        let config = (self.build)(&self.files)?;
        *self.current.write().expect("tls config lock") = config;
        Ok(())
    }

    /// The configuration as last read.
    fn current(&self) -> Arc<C> {
        self.current.read().expect("tls config lock").clone()
    }
}

/// The TLS side of a server, re-read on `reload`.
pub struct ServerTls(Reloading<ServerFiles, ServerConfig>);

impl ServerTls {
    pub fn load(files: ServerFiles) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(Reloading::load(files, Self::build)?)))
    }

    fn build(files: &ServerFiles) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(read_roots(ca)?, provider())
                        .build()
                        .map_err(|e| file_error(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
            .map_err(|e| {
                file_error(&files.key, format!("does not go with the certificate: {e}"))
            })?;
        // No session tickets: a ticket arriving after an answer would look, to a peer
        // connection waiting in a pool, like bytes sent unasked.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// Reads the files again; on failure what was in use stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.0.reload()
    }

    /// An acceptor for a new connection, with the files as last read.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.current())
    }
}

/// The files a TLS client is made from.
#[derive(Debug, Clone, Default)]
pub struct ClientFiles {
    /// The CA that signs the servers' certificates (PEM).
    pub ca: PathBuf,
    /// This end's certificate chain and key, when it must present one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The TLS side of a client, re-read on `reload`.
pub struct ClientTls(Reloading<ClientFiles, ClientConfig>);

impl ClientTls {
    pub fn load(files: ClientFiles) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(Reloading::load(files, Self::build)?)))
    }

    /// The configuration for a client, from its files.
    pub fn build(files: &ClientFiles) -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(read_roots(&files.ca)?);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| file_error(key, format!("does not go with the certificate: {e}")))?,
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }

    /// Reads the files again; on failure what was in use stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.0.reload()
    }

    /// A connector for a new connection, with the files as last read.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.0.current())
    }
}

/// The server name a client checks the server's certificate against: `name` if given, else
/// the host part of `addr` (an IP address or a DNS name).
pub fn server_name(addr: &str, name: Option<&str>) -> Result<ServerName<'static>, TlsError> {
    let host = match name {
        Some(name) => name,
        None => addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("{host} cannot be a TLS server name: {e}")))
}
