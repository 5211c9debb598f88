//! DTLS 1.2 with pre-shared keys for CoAP (`coaps`, RFC 7252 §9.1.3.1), on rtc-dtls's
//! sans-IO endpoint: datagrams in, decrypted CoAP messages with the session's identity out.
//!
//! - The PSK identity is the meter id; the key is the secret's bytes from the credential store,
//!   as given (so libcoap's `-u METER -k SECRET` works). An unknown or revoked identity fails
//!   the handshake as a wrong key does (a dummy key, RFC 4279 §2: the alert does not tell
//!   which ids exist). Cipher suites: TLS_PSK_WITH_AES_128_CCM_8 (LwM2M's mandatory one),
//!   TLS_PSK_WITH_AES_128_GCM_SHA256 and TLS_PSK_WITH_AES_128_CCM.
//! - A new session begins only with an epoch-0 ClientHello; every other datagram from an
//!   address without a session is dropped unread. The server answers a ClientHello without a
//!   cookie with a HelloVerifyRequest (RFC 6347 §4.2.1), smaller than the ClientHello, so a
//!   spoofed source gets no amplified answer.
//! - Bounded: `coap.dtls_max_sessions` in total and `coap.dtls_max_sessions_per_address` per
//!   IP address (handshakes included); a handshake not done within
//!   `coap.dtls_handshake_timeout_s` and a session idle for `coap.dtls_idle_timeout_s` are
//!   dropped. A revoked or changed credential ends its sessions within a second.
//! - Sessions are keyed by address and port. There is no Connection ID (RFC 9146; no Rust
//!   DTLS library offers it to a server): after a NAT rebinding the device's records arrive
//!   from a new port, are dropped, and its DTLS stack must handshake again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::ConfigBuilder;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};

use crate::credentials::{CredentialStore, SharedCredentials};
use crate::error::IngestError;

/// Panics caught in the DTLS library (the fuzz regressions assert none).
pub static DTLS_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The cipher suites offered, in order of preference.
pub const CIPHER_SUITES: [CipherSuiteId; 3] = [
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
    CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
    CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
];

/// The limits of [`Sessions`], from `[coap]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_per_address: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Who is behind a DTLS session, once its handshake is done.
struct Session {
    /// Numbers sessions apart (an LwM2M registration belongs to one).
    id: u64,
    started: Instant,
    heard: Instant,
    /// The PSK identity, set when the handshake completes.
    identity: Option<Arc<str>>,
    /// Bytes of handshake records received: the library buffers them without a bound of its
    /// own, so past [`MAX_HANDSHAKE_BYTES`] the session ends.
    handshake_bytes: usize,
}

/// Handshake bytes one session may send (a PSK handshake is well under 1 KiB; retransmitted
/// flights included, 64 KiB is generous).
const MAX_HANDSHAKE_BYTES: usize = 64 * 1024;

/// Decrypted CoAP messages of one datagram, with who sent them.
pub struct Received {
    pub identity: Arc<str>,
    pub session: u64,
    pub messages: Vec<BytesMut>,
}

/// Every DTLS session of one listener.
pub struct Sessions {
    endpoint: Endpoint,
    sessions: HashMap<SocketAddr, Session>,
    per_address: HashMap<IpAddr, usize>,
    limits: Limits,
    next_id: u64,
    credentials: Arc<SharedCredentials>,
    /// The store the live sessions were checked against, and its generation.
    store: (Arc<CredentialStore>, u64),
}

impl Sessions {
    pub fn new(
        local: SocketAddr,
        limits: Limits,
        credentials: Arc<SharedCredentials>,
    ) -> Result<Sessions, IngestError> {
        let config = server_config(credentials.clone())?;
        let store = credentials.current_with_generation();
        Ok(Sessions {
            endpoint: Endpoint::new(local, rtc_shared::TransportProtocol::UDP, Some(config)),
            sessions: HashMap::new(),
            per_address: HashMap::new(),
            limits,
            next_id: 0,
            credentials,
            store,
        })
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Takes one datagram from `peer`. What it carries for the CoAP server comes back; what
    /// must be sent waits in [`Sessions::transmits`].
    pub fn receive(&mut self, datagram: &[u8], peer: SocketAddr, now: Instant) -> Option<Received> {
        if !self.sessions.contains_key(&peer) {
            if !is_client_hello(datagram) {
                metrics::counter!("meterflow_coaps_dropped_total", "why" => "no_session")
                    .increment(1);
                return None;
            }
            if !self.admit(peer, now) {
                return None;
            }
        }
        if datagram.first() == Some(&22) {
            if let Some(session) = self.sessions.get_mut(&peer) {
                session.handshake_bytes += datagram.len();
                if session.handshake_bytes > MAX_HANDSHAKE_BYTES {
                    metrics::counter!("meterflow_coaps_sessions_ended_total", "why" => "handshake_bytes")
                        .increment(1);
                    self.end(peer, now);
                    return None;
                }
            }
        }
        // The serve loop sends everything queued after each call, so the endpoint's queue is
        // empty here: what this read queues is this read's.
        // rtc-dtls parses what the network sent: a panic in it ends that session, not the
        // server (as the MQTT codec's guard does).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.endpoint
                .read(now, peer, None, BytesMut::from(datagram))
        }));
        let mut messages = Vec::new();
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                self.library_failed(peer, now);
                return None;
            }
        };
        let events = match result {
            Ok(events) => events,
            Err(e) => {
                let established = self
                    .sessions
                    .get(&peer)
                    .is_some_and(|s| s.identity.is_some());
                if established && self.endpoint.get_connection_state(peer).is_some() {
                    // A record that does not authenticate (forged, replayed): dropped, the
                    // session goes on. The library queues a fatal alert for it, encrypted
                    // with the session's keys: a spoofed datagram would end the device's
                    // session. Not sent (RFC 6347 §4.1.2.7: invalid records are discarded).
                    while self.endpoint.poll_transmit().is_some() {}
                    tracing::debug!(%peer, error = %e, "coaps: record dropped");
                    metrics::counter!("meterflow_coaps_dropped_total", "why" => "bad_record")
                        .increment(1);
                } else {
                    if crate::edge::note::log_allowed() {
                        tracing::warn!(%peer, error = %e, "coaps: handshake failed (an unknown PSK identity or a wrong key among the causes: the error says which)");
                    }
                    metrics::counter!("meterflow_coaps_handshakes_total", "result" => "failed")
                        .increment(1);
                    self.end(peer, now);
                }
                return None;
            }
        };
        for event in events {
            match event {
                EndpointEvent::HandshakeComplete => self.established(peer, now),
                EndpointEvent::ApplicationData(data) => messages.push(data),
                EndpointEvent::PeerClosed => {
                    metrics::counter!("meterflow_coaps_sessions_ended_total", "why" => "peer_closed")
                        .increment(1);
                    // What came before the close_notify still counts.
                    let identity = self.sessions.get(&peer).and_then(|s| s.identity.clone());
                    let session = self.sessions.get(&peer).map_or(0, |s| s.id);
                    self.forget(peer);
                    return identity
                        .filter(|_| !messages.is_empty())
                        .map(|identity| Received {
                            identity,
                            session,
                            messages,
                        });
                }
                _ => {}
            }
        }
        let session = self.sessions.get_mut(&peer)?;
        // Only authenticated data keeps a session alive (a replayed or repeated handshake
        // record must not).
        if !messages.is_empty() {
            session.heard = now;
        }
        let identity = session.identity.clone()?;
        (!messages.is_empty()).then(|| Received {
            identity,
            session: session.id,
            messages,
        })
    }

    /// Encrypts a CoAP message for `peer` in session `session`; false when that session is
    /// gone (another one at the same address must not get it).
    pub fn send(&mut self, peer: SocketAddr, session: u64, message: &[u8], now: Instant) -> bool {
        if self
            .sessions
            .get(&peer)
            .is_none_or(|s| s.identity.is_none() || s.id != session)
        {
            return false;
        }
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.endpoint.write(now, peer, message)
        }));
        match written {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "coaps: cannot send");
                false
            }
            Err(_) => {
                self.library_failed(peer, now);
                false
            }
        }
    }

    /// After a panic in the library: the connection's state is not to be trusted, so it is
    /// removed (guarded again) and nothing it queued is sent.
    fn library_failed(&mut self, peer: SocketAddr, now: Instant) {
        DTLS_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("meterflow_coaps_library_panics_total").increment(1);
        tracing::warn!(%peer, "coaps: the DTLS library failed; session dropped");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.endpoint.stop(now, peer)
        }));
        while self.endpoint.poll_transmit().is_some() {}
        self.forget(peer);
    }

    /// Datagrams to send.
    pub fn transmits(&mut self) -> impl Iterator<Item = (SocketAddr, BytesMut)> + '_ {
        std::iter::from_fn(|| {
            self.endpoint
                .poll_transmit()
                .map(|t| (t.transport.peer_addr, t.message))
        })
    }

    /// Handshake retransmissions and timeouts, idle sessions, credential changes. Called a few
    /// times a second.
    pub fn housekeeping(&mut self, now: Instant) {
        let (store, generation) = self.credentials.current_with_generation();
        let withdrawn: Vec<String> = if generation != self.store.1 {
            let gone = self
                .store
                .0
                .withdrawn_in(&store)
                .into_iter()
                .map(str::to_string)
                .collect();
            self.store = (store, generation);
            gone
        } else {
            Vec::new()
        };
        let mut ending = Vec::new();
        let mut retransmit = Vec::new();
        for (peer, session) in &self.sessions {
            let why = match &session.identity {
                None if now.saturating_duration_since(session.started)
                    >= self.limits.handshake_timeout =>
                {
                    Some("handshake_timeout")
                }
                None => None,
                Some(id) if withdrawn.iter().any(|w| **w == **id) => Some("revoked"),
                Some(_)
                    if now.saturating_duration_since(session.heard) >= self.limits.idle_timeout =>
                {
                    Some("idle")
                }
                Some(_) => None,
            };
            if let Some(why) = why {
                ending.push((*peer, why));
            } else if session.identity.is_none()
                && self.endpoint.poll_timeout(peer).is_some_and(|t| t <= now)
            {
                retransmit.push(*peer);
            }
        }
        for peer in retransmit {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.endpoint.handle_timeout(peer, now)
            }));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(_)) => ending.push((peer, "handshake_timeout")),
                Err(_) => self.library_failed(peer, now),
            }
        }
        for (peer, why) in ending {
            metrics::counter!("meterflow_coaps_sessions_ended_total", "why" => why).increment(1);
            if why == "handshake_timeout" {
                metrics::counter!("meterflow_coaps_handshakes_total", "result" => "timeout")
                    .increment(1);
            }
            if why == "revoked" {
                tracing::info!(%peer, "coaps: session closed, its credential was revoked or changed");
            }
            self.end(peer, now);
        }
        let established = self
            .sessions
            .values()
            .filter(|s| s.identity.is_some())
            .count();
        metrics::gauge!("meterflow_coaps_sessions", "state" => "established")
            .set(established as f64);
        metrics::gauge!("meterflow_coaps_sessions", "state" => "handshake")
            .set((self.sessions.len() - established) as f64);
    }

    /// Whether a new session from `peer` fits the limits (counted when it does not).
    fn admit(&mut self, peer: SocketAddr, now: Instant) -> bool {
        let why = if self.sessions.len() >= self.limits.max_sessions {
            Some("sessions")
        } else if self.per_address.get(&peer.ip()).copied().unwrap_or(0)
            >= self.limits.max_per_address
        {
            Some("per_address")
        } else {
            None
        };
        if let Some(why) = why {
            metrics::counter!("meterflow_coaps_refused_total", "why" => why).increment(1);
            return false;
        }
        self.next_id += 1;
        self.sessions.insert(
            peer,
            Session {
                id: self.next_id,
                started: now,
                heard: now,
                identity: None,
                handshake_bytes: 0,
            },
        );
        *self.per_address.entry(peer.ip()).or_default() += 1;
        true
    }

    fn established(&mut self, peer: SocketAddr, now: Instant) {
        let identity = self
            .endpoint
            .get_connection_state(peer)
            .and_then(|state| std::str::from_utf8(&state.identity_hint).ok())
            .filter(|id| self.credentials.current().get(id).is_some())
            .map(Arc::<str>::from);
        match (identity, self.sessions.get_mut(&peer)) {
            (Some(identity), Some(session)) => {
                tracing::debug!(%peer, identity = %identity, "coaps: session established");
                metrics::counter!("meterflow_coaps_handshakes_total", "result" => "ok")
                    .increment(1);
                session.identity = Some(identity);
                session.heard = now;
            }
            _ => {
                metrics::counter!("meterflow_coaps_handshakes_total", "result" => "failed")
                    .increment(1);
                self.end(peer, now);
            }
        }
    }

    /// Ends a session with a close_notify (an alert smaller than any ClientHello: no
    /// amplification when the source was spoofed).
    fn end(&mut self, peer: SocketAddr, now: Instant) {
        let _ = self.endpoint.stop(now, peer);
        self.forget(peer);
    }

    fn forget(&mut self, peer: SocketAddr) {
        if self.sessions.remove(&peer).is_some() {
            if let Some(n) = self.per_address.get_mut(&peer.ip()) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&peer.ip());
                }
            }
        }
    }
}

/// The first datagram of a session: a DTLS 1.x handshake record of epoch 0 whose message is a
/// ClientHello (RFC 6347 §4.1, §4.2.2).
fn is_client_hello(datagram: &[u8]) -> bool {
    matches!(
        datagram,
        [22, 0xFE, 0xFD | 0xFF, 0, 0, _, _, _, _, _, _, _, _, 1, ..]
    )
}

/// The server's handshake configuration: PSK only, keys from the credential store.
fn server_config(
    credentials: Arc<SharedCredentials>,
) -> Result<Arc<rtc_dtls::config::HandshakeConfig>, IngestError> {
    let provider = rtc_dtls::crypto_provider::default_provider()
        .map_err(|e| IngestError::Runtime(format!("DTLS crypto provider: {e}")))?;
    // An identity the store does not hold (unknown, revoked) gets a dummy key (RFC 4279 §2):
    // its handshake then fails at the Finished check exactly as a wrong key does, so the
    // answer does not tell which meter ids exist. The dummy key is a keyed hash of the
    // identity under a key drawn at start-up: the same identity gets the same dummy each time.
    let dummy =
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| {
                IngestError::Runtime("DTLS: no randomness for the dummy PSK key".into())
            })?;
    let psk = move |identity: &[u8]| -> rtc_shared::error::Result<Vec<u8>> {
        let store = credentials.current();
        let known = std::str::from_utf8(identity)
            .ok()
            .and_then(|id| store.get(id))
            .map(|c| c.secret.as_bytes().to_vec());
        Ok(known.unwrap_or_else(|| {
            metrics::counter!("meterflow_coaps_unknown_identity_total").increment(1);
            ring::hmac::sign(&dummy, identity).as_ref().to_vec()
        }))
    };
    let config = ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_cipher_suites(CIPHER_SUITES.to_vec())
        .with_psk(Some(Arc::new(psk)))
        .build(false, None)
        .map_err(|e| IngestError::Runtime(format!("DTLS configuration: {e}")))?;
    Ok(Arc::new(config))
}

/// The fuzz target's way in (`fuzz/fuzz_targets/coaps_datagrams.rs`): datagrams from a few
/// peers, each `[peer byte][u16 little-endian length][bytes]`, through [`Sessions::receive`]
/// with meter `m1` (secret `secret-0123456789`) in the store, the transmits drained and the
/// housekeeping run between them. Not an API.
#[doc(hidden)]
pub fn fuzz_datagrams(data: &[u8]) {
    use crate::credentials::{Credential, Secret};
    let mut store = CredentialStore::default();
    if let Ok(secret) = Secret::new("secret-0123456789") {
        let _ = store.add(
            "m1",
            Credential {
                secret,
                publish_for: Vec::new(),
                dlms: None,
            },
        );
    }
    let limits = Limits {
        max_sessions: 4,
        max_per_address: 2,
        handshake_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
    };
    let local = SocketAddr::from(([127, 0, 0, 1], 5684));
    let Ok(mut sessions) =
        Sessions::new(local, limits, Arc::new(SharedCredentials::in_memory(store)))
    else {
        return;
    };
    let start = Instant::now();
    let mut rest = data;
    let mut i = 0u64;
    while let [who, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        i += 1;
        let peer = SocketAddr::from(([10, 0, 0, who % 3], 5000 + u16::from(who % 2)));
        let now = start + Duration::from_millis(i * 700);
        if let Some(received) = sessions.receive(datagram, peer, now) {
            for message in received.messages {
                let _ = sessions.send(peer, received.session, &message, now);
            }
        }
        let _ = sessions.transmits().count();
        sessions.housekeeping(now);
        let _ = sessions.transmits().count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client endpoint of the same library, as a device: handshakes, posts, is answered.
    /// With `METERFLOW_WRITE_DTLS_SEED=FILE` it also writes what the client sent in the fuzz
    /// target's format (`fuzz/seeds/coaps_datagrams/`).
    #[test]
    fn a_device_handshakes_with_its_key_and_its_messages_come_out_with_its_identity() {
        use crate::credentials::{Credential, Secret};
        let mut store = CredentialStore::default();
        store
            .add(
                "m1",
                Credential {
                    secret: Secret::new("secret-0123456789").unwrap(),
                    publish_for: Vec::new(),
                    dlms: None,
                },
            )
            .unwrap();
        let server_addr = SocketAddr::from(([127, 0, 0, 1], 5684));
        let client_addr = SocketAddr::from(([10, 0, 0, 1], 5000));
        let limits = Limits {
            max_sessions: 4,
            max_per_address: 2,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        };
        let mut server = Sessions::new(
            server_addr,
            limits,
            Arc::new(SharedCredentials::in_memory(store)),
        )
        .unwrap();
        let run = |key: &'static [u8]| {
            let config = ConfigBuilder::default()
                .with_crypto_provider(rtc_dtls::crypto_provider::default_provider().unwrap())
                .with_cipher_suites(vec![CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256])
                .with_psk(Some(Arc::new(move |_: &[u8]| Ok(key.to_vec()))))
                .with_psk_identity_hint(Some(b"m1".to_vec()))
                .build(true, Some(server_addr))
                .unwrap();
            let mut client = Endpoint::new(client_addr, rtc_shared::TransportProtocol::UDP, None);
            client
                .connect(Instant::now(), server_addr, Arc::new(config), None)
                .unwrap();
            client
        };
        let mut sent = Vec::new();
        let mut client = run(b"secret-0123456789");
        let now = Instant::now();
        let mut established = false;
        let mut received = None;
        for round in 0..10 {
            while let Some(t) = client.poll_transmit() {
                sent.push(t.message.to_vec());
                if let Some(r) = server.receive(&t.message, client_addr, now) {
                    received = Some(r);
                }
            }
            let out: Vec<_> = server.transmits().collect();
            for (to, datagram) in out {
                assert_eq!(to, client_addr);
                for event in client.read(now, server_addr, None, datagram).unwrap() {
                    if matches!(event, EndpointEvent::HandshakeComplete) && !established {
                        established = true;
                        client.write(now, server_addr, b"\x40\x02\x00\x01").unwrap();
                    }
                }
            }
            if received.is_some() {
                break;
            }
            assert!(round < 9, "no handshake");
        }
        let received = received.unwrap();
        assert_eq!(&*received.identity, "m1");
        assert_eq!(&received.messages[0][..], b"\x40\x02\x00\x01");
        assert!(server.send(client_addr, received.session, b"\x60\x44\x00\x01", now));
        assert!(
            !server.send(client_addr, received.session + 1, b"\x60\x44\x00\x01", now),
            "not into another session"
        );
        let answer: Vec<_> = server.transmits().collect();
        assert_eq!(answer.len(), 1);
        if let Ok(path) = std::env::var("METERFLOW_WRITE_DTLS_SEED") {
            let mut seed = Vec::new();
            for datagram in &sent {
                seed.push(0u8); // peer 10.0.0.0:5000 in the target
                seed.extend_from_slice(&(datagram.len() as u16).to_le_bytes());
                seed.extend_from_slice(datagram);
            }
            std::fs::write(path, seed).unwrap();
        }

        // The wrong key: the handshake fails and the session is gone.
        let other = SocketAddr::from(([10, 0, 0, 2], 5000));
        let mut client = run(b"not-the-key-0123");
        for _ in 0..10 {
            while let Some(t) = client.poll_transmit() {
                assert!(server.receive(&t.message, other, now).is_none());
            }
            let out: Vec<_> = server.transmits().collect();
            for (_, datagram) in out {
                let _ = client.read(now, server_addr, None, datagram);
            }
        }
        assert_eq!(server.len(), 1, "only the good session is left");
    }

    #[test]
    fn only_a_client_hello_opens_a_session() {
        let mut hello = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 1];
        assert!(is_client_hello(&hello));
        hello[4] = 1; // epoch 1
        assert!(!is_client_hello(&hello));
        hello[4] = 0;
        hello[13] = 2; // ServerHello
        assert!(!is_client_hello(&hello));
        assert!(!is_client_hello(&[23, 0xFE, 0xFD]));
        assert!(!is_client_hello(&[0x40, 0x02, 0, 1]), "plain CoAP");
    }
}
