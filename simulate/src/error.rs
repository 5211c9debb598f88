//! The one error type of the simulator. A meter's error ends that meter (it is counted in
//! `meters_failed` and logged with its text); the others stop the run before it starts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A plan or target the simulator cannot run (a format, shape, start or block size).
    #[error("{0}")]
    Invalid(&'static str),

    /// The `--credentials` file cannot be read as CSV.
    #[error("reading {path}")]
    CredentialsFile {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },

    /// The `--credentials` file has no column of this name.
    #[error("{path}: no {column} column")]
    CredentialsColumn { path: PathBuf, column: &'static str },

    /// The `--credentials` file has a record that is not CSV.
    #[error(transparent)]
    CredentialsRecord(csv::Error),

    /// A value of the `--credentials` file that cannot be used; `reason` names the column,
    /// never a key's text.
    #[error("{path} line {line}: {reason}")]
    CredentialsValue {
        path: PathBuf,
        line: u64,
        reason: String,
    },

    /// The `--tls-ca` file cannot be read.
    #[error("reading {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// The `--tls-ca` file holds something that is not a PEM certificate.
    #[error("{path}: a PEM certificate")]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// The TLS client cannot be set up (a CA certificate rustls refuses, ...).
    #[error(transparent)]
    Tls(#[from] rustls::Error),

    /// The host is neither a DNS name nor an address a certificate can name.
    #[error("{host:?} is not a server name or address")]
    ServerName {
        host: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },

    #[error("resolving {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },

    /// The name resolves to no address; `what` is "host" or "CoAP host".
    #[error("the {what} has no address")]
    NoAddress { what: &'static str },

    /// A task of a meter panicked (a defect of the simulator).
    #[error("a simulated meter panicked")]
    MeterPanicked(#[source] tokio::task::JoinError),

    /// `--credentials` has no secret for this meter (MQTT login).
    #[error("--credentials has no secret for {0}")]
    NoSecret(String),

    /// `--credentials` has no secret for this meter (its DTLS pre-shared key).
    #[error("--dtls: no secret for {0} in --credentials")]
    NoDtlsSecret(String),

    #[error("binding to {addr}")]
    Bind {
        addr: IpAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("binding a UDP socket")]
    BindUdp(#[source] std::io::Error),

    #[error("connecting to {server}")]
    Connect {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The TLS handshake failed; shown with the cause in words (see [`tls_words`]).
    #[error("TLS handshake: {}", handshake_words(.0))]
    TlsHandshake(std::io::Error),

    /// Sending or receiving on a meter's connection or socket (a TLS 1.3 server's alert
    /// arrives here, after the handshake: said in words as a handshake's).
    #[error("{}", handshake_words(.0))]
    Io(#[from] std::io::Error),

    /// An MQTT packet that could not be written.
    #[error(transparent)]
    MqttEncode(rumqttc::mqttbytes::Error),

    #[error("the server sent a bad packet: {0}")]
    MqttBadPacket(rumqttc::mqttbytes::Error),

    #[error("the server closed the connection")]
    ServerClosed,

    #[error("the server disconnected")]
    ServerDisconnected,

    /// CONNACK with a refusal: not tried again (a meter without valid credentials stays
    /// refused).
    #[error("connection refused: {}", refusal_words(.0))]
    Refused(rumqttc::mqttbytes::v4::ConnectReturnCode),

    /// The packet (as Debug shows it) that came instead of the CONNACK.
    #[error("expected CONNACK, got {0}")]
    NotConnAck(String),

    #[error("no CONNACK within {0:?}")]
    NoConnAck(Duration),

    #[error("no acknowledgement for {0:?}")]
    NoAck(Duration),

    /// A meter lost its connection too often; `last` is why the last one ended.
    #[error("gave up after {losses} connection losses, last: {}", with_causes(last.as_ref()))]
    GaveUp {
        losses: u64,
        last: Box<SimulateError>,
    },

    #[error("encoding the CoAP request")]
    CoapEncode(#[source] coap_lite::error::MessageError),

    /// The server answered a report with a code other than 2.04, 2.31 or 5.03.
    #[error("meter {meter_id} was answered {code}{}: {body}", coap_words(code))]
    CoapAnswer {
        meter_id: String,
        code: String,
        body: String,
    },

    #[error("meter {meter_id}: the server reset the request")]
    CoapReset { meter_id: String },

    #[error("meter {meter_id}: no answer after {transmissions} transmissions")]
    CoapNoAnswer {
        meter_id: String,
        transmissions: u32,
    },

    /// A DTLS step failed; `what` names it (`handshake as meter-1`, `write`, ...) and
    /// `reason` is rtc-dtls's text.
    #[error("DTLS {what}: {reason}")]
    Dtls { what: String, reason: String },

    #[error("DTLS handshake as {identity}: no answer in {timeout:?}")]
    DtlsTimeout { identity: String, timeout: Duration },

    #[error("the server closed the DTLS session")]
    DtlsClosed,

    #[error("sending a DTLS record")]
    DtlsSend(#[source] std::io::Error),

    /// AES-GCM refused to cipher a push (it cannot at a push's length: a defect).
    #[error("meter {meter_id}: ciphering report {report} failed")]
    DlmsCipher { meter_id: String, report: usize },

    /// The wrapper listener reset the TCP connection: a push refused (a key or system title
    /// the server does not have), the WAL full or failing, a frame too large; none of the
    /// connection's frames is counted as acknowledged.
    #[error("meter {meter_id}: the DLMS listener reset the connection after {frames} frame(s) were written (refused: see meterflow_dlms_refused_total)")]
    DlmsReset {
        meter_id: String,
        frames: usize,
        #[source]
        source: std::io::Error,
    },

    /// The listener closed the connection before the meter had written all its frames (its
    /// shutdown, its idle timeout, or at accept past its connection limits): not counted.
    #[error("meter {meter_id}: the DLMS listener closed the connection after {frames} of {messages} frame(s) were written (its shutdown, idle timeout, or [dlms] connection limits)")]
    DlmsClosedEarly {
        meter_id: String,
        frames: usize,
        messages: usize,
    },

    /// The listener sent bytes; it never answers.
    #[error("meter {meter_id}: the DLMS listener sent {bytes} byte(s), where it never answers")]
    DlmsAnswered { meter_id: String, bytes: usize },

    /// A datagram to the listener could not be sent (an ICMP port unreachable from an earlier
    /// one shows here: nothing listens).
    #[error("meter {meter_id}: sending DLMS datagram {report}")]
    DlmsUdpSend {
        meter_id: String,
        report: usize,
        #[source]
        source: std::io::Error,
    },
}

impl SimulateError {
    /// Whether trying again cannot help: the server refused the meter's login, or the TLS
    /// handshake failed on a certificate (either side's) or an alert, not on the network.
    pub(crate) fn is_final(&self) -> bool {
        match self {
            SimulateError::Refused(_) => true,
            SimulateError::TlsHandshake(e) | SimulateError::Io(e) => e
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
            _ => false,
        }
    }

    pub(crate) fn dtls(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        SimulateError::Dtls {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// A CONNACK refusal in words, with its MQTT 3.1.1 code and what to do.
pub fn refusal_words(code: &rumqttc::mqttbytes::v4::ConnectReturnCode) -> String {
    use rumqttc::mqttbytes::v4::ConnectReturnCode as C;
    let (n, words) = match code {
        C::Success => (0, "accepted"),
        C::RefusedProtocolVersion => (1, "unacceptable protocol version"),
        C::BadClientId => (2, "client identifier rejected"),
        C::ServiceUnavailable => (3, "server unavailable"),
        C::BadUserNamePassword => (
            4,
            "bad user name or password (does the credential store have this meter with this secret? --credentials)",
        ),
        C::NotAuthorized => (
            5,
            "not authorised (no or wrong credentials for this meter: give --credentials with its secret, or `meterflow credentials import` it on the server)",
        ),
    };
    format!("{words} (CONNACK {n})")
}

/// What a CoAP answer code means for a meter, in words (empty for codes without advice).
fn coap_words(code: &str) -> &'static str {
    match code {
        "4.01" => " Unauthorized (plain CoAP serves devices only on a loopback listener while the credential store is empty: use --dtls with --credentials, or `meterflow credentials` the meter)",
        "4.03" => " Forbidden (this identity may not post for this meter: its own id, or a gateway's publish_for)",
        "4.04" => " Not Found (the path is /r/{meter_id} with a valid meter id)",
        "4.13" => " Request Entity Too Large (coap.max_payload_bytes)",
        "4.15" => " Unsupported Content-Format",
        "4.00" => " Bad Request (the payload did not decode; it is kept as a dead letter)",
        _ => "",
    }
}

/// An error with the causes under it: `connecting to 127.0.0.1:1883: Connection refused`.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// Why a TLS handshake failed, in words: rustls' errors as a person setting up certificates
/// needs them, anything else as the system says it.
fn handshake_words(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls_words(tls),
        None => e.to_string(),
    }
}

/// A rustls error in words, with what to check.
pub fn tls_words(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => "the server's certificate is not signed by the CA given with --tls-ca (unknown issuer)".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "the server's certificate does not name the host connected to: its subjectAltName must hold that DNS name or IP address".into()
            }
            C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (are the clocks right?)".into()
            }
            C::BadEncoding => "the server's certificate does not parse".into(),
            C::BadSignature => "the server's certificate has a bad signature".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the server's certificate is not for TLS servers (extendedKeyUsage)".into()
            }
            C::Other(other) if format!("{other:?}").contains("UnsupportedCertVersion") => {
                "the server's certificate is X.509 v1, and TLS needs v3: make it with extensions (subjectAltName), as the README's TLS recipe does".into()
            }
            other => format!("the server's certificate is refused: {other}"),
        },
        E::AlertReceived(alert) => {
            let what = match alert {
                A::BadCertificate => "bad certificate",
                A::UnknownCA => "unknown CA",
                A::CertificateRequired => "certificate required",
                A::CertificateExpired => "certificate expired",
                A::CertificateUnknown => "certificate unknown",
                A::HandshakeFailure => "handshake failure",
                A::ProtocolVersion => "protocol version",
                A::AccessDenied => "access denied",
                _ => "refused",
            };
            format!(
                "the server sent TLS alert {} ({what}): it refused this connection, most likely because it wants a client certificate (this simulator sends none: log in with --credentials) or does not take this TLS version",
                u8::from(*alert)
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_tls_failures_are_words() {
        use rumqttc::mqttbytes::v4::ConnectReturnCode;
        let refused = SimulateError::Refused(ConnectReturnCode::NotAuthorized).to_string();
        assert!(
            refused.starts_with("connection refused: not authorised"),
            "{refused}"
        );
        assert!(
            refused.ends_with("(CONNACK 5)") || refused.contains("(CONNACK 5)"),
            "{refused}"
        );
        let alert = std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        ));
        let said = SimulateError::TlsHandshake(alert).to_string();
        assert!(said.contains("TLS alert 42 (bad certificate)"), "{said}");
        let issuer = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let said = SimulateError::TlsHandshake(issuer).to_string();
        assert!(
            said.contains("not signed by the CA given with --tls-ca"),
            "{said}"
        );
        for said in [
            said,
            SimulateError::NoConnAck(Duration::from_secs(5)).to_string(),
        ] {
            assert!(
                !said.contains("Some(") && !said.contains("Other("),
                "{said}"
            );
        }
    }
}
