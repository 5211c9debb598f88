//! A DTLS 1.2 PSK client link for `simulate --coap --dtls` (rtc-dtls's sans-IO endpoint on a
//! connected UDP socket): the meter's id is the PSK identity, its secret's bytes the key, as a
//! device configured with `meterflow credentials` would be. One session per meter, kept for
//! all its reports.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_dtls::cipher_suite::CipherSuiteId;
use rtc_dtls::config::ConfigBuilder;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use tokio::net::UdpSocket;

use crate::SimulateError;

/// The cipher suite offered: LwM2M's mandatory one.
const SUITE: CipherSuiteId = CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8;

pub struct DtlsLink {
    socket: UdpSocket,
    server: SocketAddr,
    endpoint: Endpoint,
    /// Decrypted messages not yet asked for.
    inbox: VecDeque<BytesMut>,
    raw: Vec<u8>,
}

impl DtlsLink {
    /// Handshakes over `socket` (connected to `server`) as `identity` with `secret`, within
    /// `timeout` (retransmitting flights as RFC 6347 says).
    pub async fn connect(
        socket: UdpSocket,
        server: SocketAddr,
        identity: &str,
        secret: &[u8],
        timeout: Duration,
    ) -> Result<DtlsLink, SimulateError> {
        let provider = rtc_dtls::crypto_provider::default_provider()
            .map_err(|e| SimulateError::dtls("crypto provider", e))?;
        let key = secret.to_vec();
        let config = ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_cipher_suites(vec![SUITE])
            .with_psk(Some(Arc::new(move |_hint: &[u8]| Ok(key.clone()))))
            .with_psk_identity_hint(Some(identity.as_bytes().to_vec()))
            .build(true, Some(server))
            .map_err(|e| SimulateError::dtls("client configuration", e))?;
        let local = socket.local_addr()?;
        let mut link = DtlsLink {
            socket,
            server,
            endpoint: Endpoint::new(local, rtc_shared::TransportProtocol::UDP, None),
            inbox: VecDeque::new(),
            raw: vec![0; 2048],
        };
        link.endpoint
            .connect(Instant::now(), server, Arc::new(config), None)
            .map_err(|e| SimulateError::dtls("connect", e))?;
        link.flush().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let wake = link
                .endpoint
                .poll_timeout(&server)
                .map(tokio::time::Instant::from_std)
                .unwrap_or(deadline)
                .min(deadline);
            match tokio::time::timeout_at(wake, link.socket.recv(&mut link.raw)).await {
                Ok(Ok(n)) => {
                    let datagram = BytesMut::from(&link.raw[..n]);
                    let events = link
                        .endpoint
                        .read(Instant::now(), server, None, datagram)
                        .map_err(|e| SimulateError::dtls(format!("handshake as {identity}"), e))?;
                    link.flush().await?;
                    let mut done = false;
                    for event in events {
                        match event {
                            EndpointEvent::HandshakeComplete => done = true,
                            EndpointEvent::ApplicationData(data) => link.inbox.push_back(data),
                            _ => {}
                        }
                    }
                    if done {
                        return Ok(link);
                    }
                }
                // ICMP port unreachable (nobody listens yet): wait for the next flight.
                Ok(Err(_)) => tokio::time::sleep_until(wake).await,
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SimulateError::DtlsTimeout {
                    identity: identity.to_string(),
                    timeout,
                });
            }
            link.endpoint
                .handle_timeout(server, Instant::now())
                .map_err(|e| SimulateError::dtls(format!("handshake as {identity}"), e))?;
            link.flush().await?;
        }
    }

    /// Sends one CoAP message in the session.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), SimulateError> {
        self.endpoint
            .write(Instant::now(), self.server, message)
            .map_err(|e| SimulateError::dtls("write", e))?;
        self.flush().await
    }

    /// The next CoAP message from the server, into `buf`; its length.
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<usize, SimulateError> {
        loop {
            if let Some(message) = self.inbox.pop_front() {
                let n = message.len().min(buf.len());
                buf[..n].copy_from_slice(&message[..n]);
                return Ok(n);
            }
            let n = self.socket.recv(&mut self.raw).await?;
            let datagram = BytesMut::from(&self.raw[..n]);
            let events = self
                .endpoint
                .read(Instant::now(), self.server, None, datagram)
                .map_err(|e| SimulateError::dtls("read", with_causes(&e)))?;
            for event in events {
                match event {
                    EndpointEvent::ApplicationData(data) => self.inbox.push_back(data),
                    EndpointEvent::PeerClosed => return Err(SimulateError::DtlsClosed),
                    _ => {}
                }
            }
            self.flush().await?;
        }
    }

    async fn flush(&mut self) -> Result<(), SimulateError> {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.socket
                .send(&t.message)
                .await
                .map_err(SimulateError::DtlsSend)?;
        }
        Ok(())
    }
}

/// An error with its causes, `: `-separated (the text of `DTLS read` errors, as before).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}
