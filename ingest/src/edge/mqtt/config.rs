//! The MQTT edge's settings (`[mqtt]`): their defaults, their checks, the listeners they
//! name, and the start-up check that a listener reachable from the network lets devices
//! authenticate.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::session::Limits;
use crate::error::positive;
use crate::error::IngestError;

/// The MQTT edge (`[mqtt]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Plain MQTT listener (3.1.1 and 5). Loopback by default: off loopback, devices must
    /// authenticate (see `allow_anonymous`).
    pub listen: SocketAddr,
    /// A second plain listener, kept for clients set up for meterflow's former MQTT 5 port;
    /// it serves both versions too. `None`: off.
    pub listen_v5: Option<SocketAddr>,
    /// MQTT over TLS (usually port 8883); needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// Server certificate chain, PEM.
    pub tls_cert: Option<PathBuf>,
    /// Server private key, PEM.
    pub tls_key: Option<PathBuf>,
    /// CA whose client certificates identify meters (the subject CN is the meter id), PEM.
    pub tls_client_ca: Option<PathBuf>,
    /// Accept devices without credentials on every listener (they may publish for any
    /// meter). Without it, anonymous devices are accepted only while the credential store is
    /// empty, and only on loopback listeners.
    pub allow_anonymous: bool,
    /// Logged-in connections at most (all listeners); a CONNECT past it is refused (CONNACK
    /// 3 / 0x89). Connections that have not logged in yet count in
    /// `max_pending_connections` instead.
    pub max_connections: usize,
    /// Connections that have not logged in yet (TLS handshake and CONNECT) at most, over all
    /// listeners. Each has `connect_timeout_ms`. When full, a newcomer takes the place of the
    /// oldest pending connection of the address that holds the most, if that one holds at
    /// least two more than the newcomer's; else that of the oldest pending connection of all,
    /// if it has been pending for half of `connect_timeout_ms`; else the newcomer is closed
    /// at once.
    pub max_pending_connections: usize,
    /// Of those, from one address at most (an IPv6 /64 counts as one address); more from it
    /// are closed at once. Logged-in connections are not capped per address: many meters
    /// share one address behind a carrier-grade NAT.
    pub max_pending_per_address: usize,
    /// Largest packet accepted, bytes (MQTT 5 clients are told).
    pub max_payload_bytes: usize,
    /// Publishes of one connection waiting for the WAL at most (Receive Maximum); the
    /// connection is not read further until one is answered.
    pub max_inflight: usize,
    /// Sessions one identity may hold at once; a new one beyond closes its oldest (a meter
    /// needs one; a gateway a few).
    pub max_sessions_per_identity: usize,
    /// A client must complete TLS and send CONNECT within this time: the deadline of a
    /// pending connection. 10 s: TLS 1.2 takes two and a half round trips after the accept,
    /// and NB-IoT in extended coverage has round trips of seconds.
    pub connect_timeout_ms: u64,
    /// Longest keep-alive granted, seconds; a client asking for none (0) or more gets this one.
    pub max_keep_alive_s: u16,
    /// A client that does not take its acknowledgements within this time is disconnected.
    pub write_timeout_ms: u64,
    /// A packet must arrive whole within this time of its first byte.
    pub packet_timeout_ms: u64,
    /// Payload bytes handed to the WAL and not yet written, over all connections, at most;
    /// past it connections wait (and are not read).
    pub max_inflight_bytes: usize,
    /// Bytes of partial packets buffered over all connections at most; a connection that
    /// would go past it is closed. Connections that have not authenticated yet may use a
    /// quarter of it.
    pub max_read_buffer_bytes: usize,
    /// No longer used (the former embedded broker's log); accepted with a warning.
    #[serde(skip_serializing)]
    pub router_segment_bytes: Option<u64>,
    /// No longer used; accepted with a warning.
    #[serde(skip_serializing)]
    pub router_segment_count: Option<u64>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            listen_v5: Some(SocketAddr::from(([127, 0, 0, 1], 1884))),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            allow_anonymous: false,
            max_connections: 100_000,
            max_pending_connections: 4096,
            max_pending_per_address: 256,
            max_payload_bytes: 256 * 1024,
            max_inflight: 64,
            max_sessions_per_identity: 16,
            connect_timeout_ms: 10_000,
            max_keep_alive_s: 3600,
            write_timeout_ms: 30_000,
            packet_timeout_ms: 30_000,
            max_inflight_bytes: 64 * 1024 * 1024,
            max_read_buffer_bytes: 256 * 1024 * 1024,
            router_segment_bytes: None,
            router_segment_count: None,
        }
    }
}

impl MqttConfig {
    /// Every listener with its config key and whether it is TLS.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr, bool)> {
        [
            Some(("mqtt.listen", self.listen, false)),
            self.listen_v5.map(|a| ("mqtt.listen_v5", a, false)),
            self.tls_listen.map(|a| ("mqtt.tls_listen", a, true)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Checks the values the types do not; the error names the key.
    pub fn validate(&self) -> Result<(), IngestError> {
        positive("mqtt.max_connections", self.max_connections as u64)?;
        positive(
            "mqtt.max_pending_connections",
            self.max_pending_connections as u64,
        )?;
        positive(
            "mqtt.max_pending_per_address",
            self.max_pending_per_address as u64,
        )?;
        if self.max_pending_per_address > self.max_pending_connections {
            return Err(IngestError::config(
                "mqtt.max_pending_per_address",
                "must be at most mqtt.max_pending_connections",
            ));
        }
        positive("mqtt.max_payload_bytes", self.max_payload_bytes as u64)?;
        if self.max_payload_bytes > 268_435_455 {
            return Err(IngestError::config(
                "mqtt.max_payload_bytes",
                "must be at most 268435455 (MQTT's largest packet)",
            ));
        }
        if !(1..=65_535).contains(&self.max_inflight) {
            return Err(IngestError::config(
                "mqtt.max_inflight",
                "must be 1 to 65535",
            ));
        }
        positive("mqtt.connect_timeout_ms", self.connect_timeout_ms)?;
        positive("mqtt.max_keep_alive_s", u64::from(self.max_keep_alive_s))?;
        positive("mqtt.write_timeout_ms", self.write_timeout_ms)?;
        positive("mqtt.packet_timeout_ms", self.packet_timeout_ms)?;
        positive(
            "mqtt.max_sessions_per_identity",
            self.max_sessions_per_identity as u64,
        )?;
        if self.max_inflight_bytes < self.max_payload_bytes + 1024
            || self.max_inflight_bytes > u32::MAX as usize
        {
            return Err(IngestError::config(
                "mqtt.max_inflight_bytes",
                "must be above mqtt.max_payload_bytes (by 1 KiB at least) and at most 4294967295",
            ));
        }
        if self.max_read_buffer_bytes < self.max_payload_bytes {
            return Err(IngestError::config(
                "mqtt.max_read_buffer_bytes",
                "must be at least mqtt.max_payload_bytes",
            ));
        }
        let listeners = self.listeners();
        for (i, (key, addr, _)) in listeners.iter().enumerate() {
            if listeners[..i].iter().any(|(_, other, _)| other == addr) {
                return Err(IngestError::config(
                    *key,
                    format!("{addr} is already another MQTT listener"),
                ));
            }
        }
        if self.tls_listen.is_some() {
            if self.tls_cert.is_none() {
                return Err(IngestError::config(
                    "mqtt.tls_cert",
                    "must be set (a PEM certificate chain) when mqtt.tls_listen is",
                ));
            }
            if self.tls_key.is_none() {
                return Err(IngestError::config(
                    "mqtt.tls_key",
                    "must be set (a PEM private key) when mqtt.tls_listen is",
                ));
            }
        } else {
            for (key, set) in [
                ("mqtt.tls_cert", self.tls_cert.is_some()),
                ("mqtt.tls_key", self.tls_key.is_some()),
                ("mqtt.tls_client_ca", self.tls_client_ca.is_some()),
            ] {
                if set {
                    return Err(IngestError::config(
                        key,
                        "is set but mqtt.tls_listen is not: set the TLS listener too (usually 0.0.0.0:8883)",
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            receive_maximum: self.max_inflight.min(65_535) as u16,
            max_packet: self.max_payload_bytes,
            max_keep_alive_s: self.max_keep_alive_s,
        }
    }
}

/// Start-up check: a listener reachable from the network needs a way for devices to
/// authenticate there (a credential in the store, or a client certificate on the TLS listener),
/// unless anonymous devices are allowed. The error says what to do.
pub fn check_anonymous_rule(
    config: &MqttConfig,
    store_empty: bool,
    store_path: &std::path::Path,
) -> Result<(), IngestError> {
    if config.allow_anonymous {
        tracing::warn!("mqtt.allow_anonymous = true: devices without credentials may connect on every MQTT listener and publish for any meter");
        return Ok(());
    }
    if !store_empty {
        return Ok(());
    }
    for (key, addr, tls) in config.listeners() {
        let certificates = tls && config.tls_client_ca.is_some();
        if !addr.ip().is_loopback() && !certificates {
            return Err(IngestError::config(
                key,
                format!(
                    "{addr} is reachable from the network but the credential store ({}) is empty, so no device could authenticate there. \
                     Add device credentials (`meterflow credentials import FILE.csv` or `meterflow credentials add ID`), \
                     or identify devices by client certificate on the TLS listener only (mqtt.tls_client_ca), \
                     or listen on 127.0.0.1. (mqtt.allow_anonymous = true would let anyone publish for any meter.)",
                    store_path.display()
                ),
            ));
        }
    }
    Ok(())
}
