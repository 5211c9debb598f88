//! TLS for the MQTT edge (rustls with the ring provider, no OpenSSL): the server certificate
//! and key from `mqtt.tls_cert` / `mqtt.tls_key` (PEM), optional client certificates that
//! chain to `mqtt.tls_client_ca` (a client without one may still log in with a secret), the
//! meter id of a client certificate (its subject CN), and reloading the files when they change
//! on disk, without a restart: new connections get the new certificate.
//!
//! Session resumption uses stateless TLS 1.3 tickets, so a meter that reconnects for every
//! report skips most of the handshake and the server keeps no per-client cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::IngestError;

/// The files a TLS listener is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The TLS settings in effect, swapped when the files change.
pub struct TlsServer {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl TlsServer {
    /// Loads the files; an error names the config key of the file at fault.
    pub fn load(files: TlsFiles) -> Result<TlsServer, IngestError> {
        let config = build(&files)?;
        let stamps = stamps(&files);
        Ok(TlsServer {
            files,
            config: RwLock::new(config),
            stamps: Mutex::new(stamps),
        })
    }

    /// What a new connection's handshake uses.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reloads the files if any changed since the last look. A file that no longer loads
    /// keeps the settings in effect, and the error is logged.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.files);
        {
            let Ok(mut seen) = self.stamps.lock() else {
                return;
            };
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match build(&self.files) {
            Ok(config) => {
                if let Ok(mut current) = self.config.write() {
                    *current = config;
                }
                metrics::counter!("meterflow_mqtt_tls_reloads_total").increment(1);
                tracing::info!(cert = %self.files.cert.display(), "MQTT TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "MQTT TLS files changed but do not load; the previous certificate stays in use");
            }
        }
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, IngestError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("mqtt.tls_cert", &files.cert)?;
    check_leaf_version(&files.cert, &certs)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        IngestError::config(
            "mqtt.tls_key",
            format!("{}: {}", files.key.display(), pem_words(&e, "private key")),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| IngestError::config("mqtt.tls_cert", e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("mqtt.tls_client_ca", ca)? {
                roots.add(cert).map_err(|e| {
                    IngestError::config("mqtt.tls_client_ca", format!("{}: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                // Devices without a certificate log in with their secret instead.
                .allow_unauthenticated()
                .build()
                .map_err(|e| {
                    IngestError::config("mqtt.tls_client_ca", format!("{}: {e}", ca.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| single_cert_error(&e, files))?;
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| IngestError::config("mqtt.tls_cert", format!("TLS tickets: {e}")))?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, IngestError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            IngestError::config(
                key,
                format!("{}: {}", path.display(), pem_words(&e, "certificate")),
            )
        })?;
    if certs.is_empty() {
        return Err(IngestError::config(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// The server's own certificate (the first of `tls_cert`'s chain) must be X.509 v3: rustls
/// refuses a v1 end-entity certificate, which OpenSSL 3's `x509 -req` makes unless given
/// extensions. (A v1 CA, in `tls_client_ca` or at the end of a chain, is accepted.)
fn check_leaf_version(path: &Path, certs: &[CertificateDer<'static>]) -> Result<(), IngestError> {
    let key = "mqtt.tls_cert";
    if let Some(cert) = certs.first() {
        match x509_parser::parse_x509_certificate(cert.as_ref()) {
            Ok((_, parsed)) if parsed.version() != x509_parser::x509::X509Version::V3 => {
                return Err(IngestError::config(
                    key,
                    format!(
                        "{}: certificate {:?} is X.509 v{}, and TLS needs v3: make it with extensions (openssl x509 -req ... -extfile with a subjectAltName; see the README's TLS recipe)",
                        path.display(),
                        parsed.subject().to_string(),
                        parsed.version().0 + 1
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(IngestError::config(
                    key,
                    format!("{}: the certificate does not parse: {e}", path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Why `with_single_cert` refused the certificate and key, naming the file at fault.
fn single_cert_error(e: &rustls::Error, files: &TlsFiles) -> IngestError {
    let (cert, key) = (files.cert.display(), files.key.display());
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            IngestError::config(
                "mqtt.tls_key",
                format!("{key} is not the private key of the certificate in {cert}"),
            )
        }
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => IngestError::config(
            "mqtt.tls_key",
            format!("{key}: this kind of key cannot be checked against {cert}"),
        ),
        rustls::Error::General(why) => IngestError::config(
            "mqtt.tls_key",
            format!("{key}: the private key cannot be used ({why}): give an RSA, ECDSA P-256/P-384 or Ed25519 key in PEM"),
        ),
        other => IngestError::config("mqtt.tls_cert", format!("{cert}: {other}")),
    }
}

/// A PEM file's error in words; `what` is the item looked for.
fn pem_words(e: &rustls_pki_types::pem::Error, what: &str) -> String {
    use rustls_pki_types::pem::Error as P;
    match e {
        P::Io(e) => format!("cannot be read: {e}"),
        P::NoItemsFound => format!("holds no PEM {what} (-----BEGIN ...-----)"),
        P::MissingSectionEnd { .. } => {
            "a PEM section has no END line (is the file cut short?)".into()
        }
        P::IllegalSectionStart { .. } => "a PEM section begins inside another".into(),
        P::Base64Decode(e) => format!("a PEM section is not valid base64 ({e})"),
        other => other.to_string(),
    }
}

/// The subject CN of a client's certificate (the first of its chain), if it sent one.
/// rustls has already checked that it chains to `mqtt.tls_client_ca`.
pub fn client_cn(connection: &rustls::ServerConnection) -> Option<Result<String, String>> {
    let cert = connection.peer_certificates()?.first()?;
    Some(match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| "the client certificate has no subject CN".to_string()),
        Err(e) => Err(format!("the client certificate does not parse: {e}")),
    })
}
