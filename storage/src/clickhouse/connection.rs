//! How every ClickHouse client of meterflow reaches the server: the URL without the login it
//! may carry (moved into `clickhouse.user` / `clickhouse.password`, which go as ClickHouse's
//! `X-ClickHouse-User` / `X-ClickHouse-Key` headers: a login left in the URL would never be
//! sent), and for `https://` a rustls connector (ring) that trusts `clickhouse.tls_ca` or,
//! without it, the system's roots.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::ClickHouseConfig;
use crate::StorageError;

/// Where the clients connect and as whom.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `clickhouse.url` without userinfo and without `user` / `password` parameters.
    pub url: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &"(not shown)")
            .finish()
    }
}

/// The login of the config: `clickhouse.user` / `clickhouse.password`, or the URL's
/// (`http://USER:PASSWORD@host:8123`, percent-encoded, or ClickHouse's own `?user=&password=`
/// parameters). Given in both places and different, it is an error naming the key.
pub fn endpoint(config: &ClickHouseConfig) -> Result<Endpoint, StorageError> {
    let as_configured = || Endpoint {
        url: config.url.clone(),
        user: config.user.clone(),
        password: config.password.clone(),
    };
    if config.url.is_empty() {
        return Ok(as_configured());
    }
    let mut url = url::Url::parse(&config.url).map_err(|e| {
        StorageError::config(
            "clickhouse.url",
            format!("is not a URL ({e}); e.g. http://127.0.0.1:8123"),
        )
    })?;
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|t| t.into_owned())
            .map_err(|_| {
                StorageError::config(
                    "clickhouse.url",
                    "its user or password is not UTF-8 once percent-decoded",
                )
            })
    };
    let mut user = decode(url.username())?;
    let mut password = url.password().map(decode).transpose()?.unwrap_or_default();
    let mut kept = Vec::new();
    let mut in_query = false;
    for (name, value) in url.query_pairs() {
        let slot = match &*name {
            "user" => &mut user,
            "password" => &mut password,
            _ => {
                kept.push((name.into_owned(), value.into_owned()));
                continue;
            }
        };
        if !slot.is_empty() && *slot != value {
            return Err(StorageError::config(
                "clickhouse.url",
                format!("gives the {name} twice (before the host and as ?{name}=)"),
            ));
        }
        *slot = value.into_owned();
        in_query = true;
    }
    if user.is_empty() && password.is_empty() && !in_query {
        return Ok(as_configured());
    }
    if !user.is_empty()
        && !config.user.is_empty()
        && config.user != "default"
        && config.user != user
    {
        return Err(StorageError::config(
            "clickhouse.user",
            "clickhouse.url names another user: give the login in one place (the keys keep it out of the URL)",
        ));
    }
    if !password.is_empty() && !config.password.is_empty() && config.password != password {
        return Err(StorageError::config(
            "clickhouse.password",
            "clickhouse.url carries another password: give it in one place (the key keeps it out of the URL)",
        ));
    }
    // Cannot fail for http(s) URLs, which have a host.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(Endpoint {
        url: url.to_string(),
        user: if user.is_empty() {
            config.user.clone()
        } else {
            user
        },
        password: if password.is_empty() {
            config.password.clone()
        } else {
            password
        },
    })
}

/// Whether the URL asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// The TLS settings for `https://`: the server's certificate must chain to `ca` (PEM), or to
/// the system's roots without it (`SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere, as for
/// OpenSSL). An error names `clickhouse.tls_ca`.
pub fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, StorageError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let key = "clickhouse.tls_ca";
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| StorageError::config(key, format!("{}: {e}", ca.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| StorageError::config(key, format!("{}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| StorageError::config(key, format!("{}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(StorageError::config(
                    key,
                    format!("{}: no PEM certificate in it", ca.display()),
                ));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(StorageError::config(
                    key,
                    "the system has no CA certificates for https://: set clickhouse.tls_ca",
                ));
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StorageError::config(key, e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// As the clickhouse crate's own client: TCP keep-alive, idle connections closed before the
/// server's keep-alive timeout (3 s on ClickHouse) would close them under a request.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of `config`'s server with its login; over TLS for `https://` (only: no fallback
/// to plain HTTP).
pub fn client(config: &ClickHouseConfig) -> Result<clickhouse::Client, StorageError> {
    let endpoint = endpoint(config)?;
    let client = if is_https(&endpoint.url) {
        let tls = tls_config(config.tls_ca.as_deref())?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_keepalive(Some(TCP_KEEPALIVE));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .build(connector);
        clickhouse::Client::with_http_client(hyper)
    } else {
        clickhouse::Client::default()
    };
    Ok(client
        .with_url(endpoint.url)
        .with_user(endpoint.user)
        .with_password(endpoint.password))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, user: &str, password: &str) -> ClickHouseConfig {
        ClickHouseConfig {
            url: url.into(),
            user: user.into(),
            password: password.into(),
            ..ClickHouseConfig::default()
        }
    }

    #[test]
    fn the_urls_login_moves_into_user_and_password() {
        let e = endpoint(&config(
            "http://ingest:s%40cr%3At@ch.example:8123",
            "default",
            "",
        ))
        .unwrap();
        assert_eq!(e.url, "http://ch.example:8123/");
        assert_eq!((e.user.as_str(), e.password.as_str()), ("ingest", "s@cr:t"));
        let e = endpoint(&config(
            "https://ch.example:8443/?user=u&password=p%26q&database=x",
            "default",
            "",
        ))
        .unwrap();
        assert_eq!(e.url, "https://ch.example:8443/?database=x");
        assert_eq!((e.user.as_str(), e.password.as_str()), ("u", "p&q"));
        // The keys alone, and the URL without a login, stay as they are.
        let e = endpoint(&config("http://127.0.0.1:8123", "ingest", "pw")).unwrap();
        assert_eq!(e.url, "http://127.0.0.1:8123");
        assert_eq!((e.user.as_str(), e.password.as_str()), ("ingest", "pw"));
        // Only a user in the URL: the password key still counts.
        let e = endpoint(&config("http://ingest@h:8123", "default", "pw")).unwrap();
        assert_eq!((e.user.as_str(), e.password.as_str()), ("ingest", "pw"));
        // Moved once, the same again (idempotent).
        let moved = config(&e.url, &e.user, &e.password);
        assert_eq!(endpoint(&moved).unwrap(), e);
        assert!(!format!("{e:?}").contains("pw"));
    }

    #[test]
    fn a_login_given_twice_names_the_key() {
        let e = endpoint(&config(
            "http://a:Pw-first-1@h:8123",
            "default",
            "Pw-second-2",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("clickhouse.password"), "{e}");
        assert!(
            !e.contains("Pw-first-1") && !e.contains("Pw-second-2"),
            "{e}"
        );
        let e = endpoint(&config("http://a:Pw-first-1@h:8123", "b", "")).unwrap_err();
        assert!(e.to_string().contains("clickhouse.user"), "{e}");
        // The same values in both places are one login.
        endpoint(&config("http://a:Pw-first-1@h:8123", "a", "Pw-first-1")).unwrap();
        let e = endpoint(&config(
            "http://a:Pw-first-1@h:8123/?password=Pw-second-2",
            "default",
            "",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("clickhouse.url") && !e.contains("Pw-"), "{e}");
        let e = endpoint(&config("not a url", "default", "")).unwrap_err();
        assert!(e.to_string().contains("clickhouse.url"), "{e}");
    }

    #[test]
    fn a_ca_file_without_certificates_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = tls_config(Some(&empty)).unwrap_err().to_string();
        assert!(
            e.contains("clickhouse.tls_ca") && e.contains("ca.pem"),
            "{e}"
        );
        let e = tls_config(Some(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("clickhouse.tls_ca"), "{e}");
        assert!(is_https("HTTPS://x") && !is_https("http://x"));
    }
}
