//! The CoAP endpoint's settings (`[coap]`): their defaults, their checks, the limits of the
//! DTLS sessions they set, and the start-up check of the anonymous rule.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dtls;
use crate::error::positive;
use crate::error::IngestError;

/// The CoAP server's settings (`[coap]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    /// UDP listener for plain CoAP and LwM2M. Leave out to turn it off. Plain CoAP carries no
    /// identity: it serves anonymous devices only (see `allow_anonymous`).
    pub listen: Option<SocketAddr>,
    /// UDP listener for CoAP over DTLS 1.2 with pre-shared keys (coaps; 5684 is the usual
    /// port): PSK identity = meter id, key = the secret's bytes from the credential store.
    pub dtls_listen: Option<SocketAddr>,
    /// Serve devices without credentials on the plain listener, for any meter, even when the
    /// credential store has entries (warned at start-up). Without it, plain CoAP is served only
    /// while the store is empty and only on a loopback listener; otherwise it answers 4.01.
    pub allow_anonymous: bool,
    /// Largest request body, bytes, also when it arrives in Block1 blocks (4.13 past it).
    pub max_payload_bytes: usize,
    /// Requests waiting for the WAL at most; past that the answer is 5.03.
    pub max_inflight: usize,
    /// Memory for duplicate detection, bytes, per listener: every answer is kept per peer and
    /// message ID for 247 s (EXCHANGE_LIFETIME), about 55 to 70 bytes each. Sustained rate it holds:
    /// about bytes / 70 / 160 requests per second (the default: 48k/s); past it, 5.03.
    pub exchange_cache_bytes: usize,
    /// Replaced by `exchange_cache_bytes`; still read (as that many times 64 bytes), with a
    /// warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange_cache_entries: Option<usize>,
    /// Block1 bodies being assembled at once at most (each at most `max_payload_bytes`).
    pub block_transfers: usize,
    /// A Block1 transfer nobody continues for this long is dropped.
    pub block_timeout_s: u64,
    /// Max-Age of a 5.03 answer: how long a device should wait before trying again.
    pub busy_max_age_s: u32,
    /// The UDP socket's receive buffer (SO_RCVBUF), bytes: datagrams arriving while the
    /// server is busy wait here; when it is full the kernel drops them and devices must
    /// retransmit (seconds later). Linux caps it at `net.core.rmem_max`.
    pub socket_buffer_bytes: usize,
    /// LwM2M registrations kept at most.
    pub lwm2m_max_registrations: usize,
    /// DTLS sessions at most, handshakes included (past it a new ClientHello is dropped).
    pub dtls_max_sessions: usize,
    /// DTLS sessions from one IP address at most (meters behind one carrier NAT share it).
    pub dtls_max_sessions_per_address: usize,
    /// A DTLS handshake not done within this many seconds is dropped.
    pub dtls_handshake_timeout_s: u64,
    /// A DTLS session nothing arrived on for this many seconds is closed; the device
    /// handshakes again for its next report.
    pub dtls_idle_timeout_s: u64,
}

impl CoapConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), IngestError> {
        for (key, value) in [
            ("coap.max_payload_bytes", self.max_payload_bytes),
            ("coap.max_inflight", self.max_inflight),
            ("coap.block_transfers", self.block_transfers),
            ("coap.socket_buffer_bytes", self.socket_buffer_bytes),
            ("coap.lwm2m_max_registrations", self.lwm2m_max_registrations),
            ("coap.dtls_max_sessions", self.dtls_max_sessions),
            (
                "coap.dtls_max_sessions_per_address",
                self.dtls_max_sessions_per_address,
            ),
        ] {
            positive(key, value as u64)?;
        }
        if let Some(entries) = self.exchange_cache_entries {
            positive("coap.exchange_cache_entries", entries as u64)?;
        }
        if self.exchange_cache_bytes < MIN_EXCHANGE_CACHE_BYTES {
            return Err(IngestError::config(
                "coap.exchange_cache_bytes",
                format!("must be at least {MIN_EXCHANGE_CACHE_BYTES} (1 MiB)"),
            ));
        }
        if let (Some(plain), Some(dtls)) = (self.listen, self.dtls_listen) {
            if plain == dtls {
                return Err(IngestError::config(
                    "coap.dtls_listen",
                    format!("{dtls} is coap.listen too: give DTLS its own port (5684 is usual)"),
                ));
            }
        }
        positive("coap.block_timeout_s", self.block_timeout_s)?;
        positive(
            "coap.dtls_handshake_timeout_s",
            self.dtls_handshake_timeout_s,
        )?;
        positive("coap.dtls_idle_timeout_s", self.dtls_idle_timeout_s)
    }

    /// The duplicate-detection bound in effect (the old entry count, where given, converted).
    pub fn exchange_cache_bytes(&self) -> usize {
        match self.exchange_cache_entries {
            Some(entries) => entries.saturating_mul(64).max(MIN_EXCHANGE_CACHE_BYTES),
            None => self.exchange_cache_bytes,
        }
    }

    pub(super) fn dtls_limits(&self) -> dtls::Limits {
        dtls::Limits {
            max_sessions: self.dtls_max_sessions,
            max_per_address: self.dtls_max_sessions_per_address,
            handshake_timeout: Duration::from_secs(self.dtls_handshake_timeout_s),
            idle_timeout: Duration::from_secs(self.dtls_idle_timeout_s),
        }
    }
}

/// The smallest `coap.exchange_cache_bytes` taken.
const MIN_EXCHANGE_CACHE_BYTES: usize = 1 << 20;

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 5683))),
            dtls_listen: None,
            allow_anonymous: false,
            max_payload_bytes: 64 * 1024,
            max_inflight: 4096,
            exchange_cache_bytes: 512 << 20,
            exchange_cache_entries: None,
            block_transfers: 1024,
            block_timeout_s: 120,
            busy_max_age_s: 10,
            socket_buffer_bytes: 4 * 1024 * 1024,
            lwm2m_max_registrations: 200_000,
            dtls_max_sessions: 100_000,
            dtls_max_sessions_per_address: 1024,
            dtls_handshake_timeout_s: 30,
            dtls_idle_timeout_s: 600,
        }
    }
}

/// Start-up check, as for MQTT: plain CoAP carries no identity, so a plain listener reachable
/// from the network serves nobody unless anonymous devices are allowed. With an empty store
/// that is a mistake to stop on; with credentials it answers 4.01 (warned).
pub fn check_anonymous_rule(
    config: &CoapConfig,
    store_empty: bool,
    store_path: &std::path::Path,
) -> Result<(), IngestError> {
    if config.allow_anonymous {
        if config.listen.is_some() {
            tracing::warn!("coap.allow_anonymous = true: devices without credentials may post for any meter on the plain CoAP listener");
        }
        return Ok(());
    }
    let Some(addr) = config.listen else {
        return Ok(());
    };
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if store_empty {
        return Err(IngestError::config(
            "coap.listen",
            format!(
                "{addr} is reachable from the network but plain CoAP carries no identity and the credential store ({}) is empty. \
                 Add device credentials (`meterflow credentials import FILE.csv`) and serve devices on coap.dtls_listen (coaps, PSK), \
                 or listen on 127.0.0.1. (coap.allow_anonymous = true would let anyone post for any meter.)",
                store_path.display()
            ),
        ));
    }
    tracing::warn!(%addr, "coap.listen: plain CoAP answers 4.01 to every device while the credential store has entries; devices use coap.dtls_listen");
    Ok(())
}
