//! The bridge's TLS client settings for `mqtts://`: the broker's CA (or the system's roots)
//! and a client certificate where the broker asks for one, read once when the config is
//! checked.

use std::sync::Arc;

use super::BridgeConfig;

/// The client's TLS settings; an error names the key at fault.
pub(super) fn tls_client(
    config: &BridgeConfig,
) -> Result<rustls::ClientConfig, (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &config.tls_ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| ("tls_ca", format!("{}: {e}", ca.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| ("tls_ca", format!("{}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ("tls_ca", format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err((
                    "tls_ca",
                    "the system has no CA certificates: set tls_ca".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ("url", e.to_string()))?
    .with_root_certificates(roots);
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ("tls_cert", format!("{}: {e}", cert.display())))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ("tls_key", format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ("tls_key", e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
