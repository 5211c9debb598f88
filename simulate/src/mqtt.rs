//! `simulate` over MQTT: each meter is a connection of its own (client id = meter id), speaking
//! MQTT 3.1.1 with QoS 1 through rumqttc's codec over TCP or TLS (tokio-rustls). A lean client
//! (a task, a socket and a small buffer per meter), so that one process holds a fleet of
//! 100 000 idle connections.
//!
//! - `--credentials FILE.csv`: each meter logs in as itself (username = meter id, password =
//!   its secret).
//! - `--reconnect-every N`: connect, publish N reports, wait for their PUBACKs, DISCONNECT, as
//!   battery meters do; the next N on a new connection.
//! - `--hold-s S`: after its reports, a meter keeps its connection open (pinging) for S seconds
//!   before it disconnects: idle connections. If the server drops it meanwhile, it reconnects
//!   at once (the summary's `recovery_s` says how long the whole fleet took to be back).
//! - Above the ephemeral port range, connections to a loopback server are spread over
//!   several 127.0.0.x source addresses (`--source-addrs`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, Publish};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::counters::Counters;
use crate::{Plan, SimulateError, Target};

/// The keep-alive every simulated meter asks for.
const KEEP_ALIVE_S: u16 = 60;
/// A connection whose acknowledgements stop for this long is given up and made again.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection losses a meter rides out before it gives up.
const MAX_RECONNECTS: u64 = 10;

/// How the simulated meters connect over MQTT.
#[derive(Clone, Default)]
pub struct MqttSetup {
    /// Meter id → secret: each meter logs in as itself.
    pub credentials: Option<Arc<HashMap<String, String>>>,
    /// TLS, with the name the server's certificate must carry.
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    /// Reports per connection (0: all of a meter's reports on one connection).
    pub reconnect_every: usize,
    /// Source addresses the connections are spread over (empty: the system's choice).
    pub source_addrs: Vec<IpAddr>,
    /// How long each meter keeps its connection open after its reports.
    pub hold: Duration,
}

impl std::fmt::Debug for MqttSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSetup")
            .field("credentials", &self.credentials.as_ref().map(|c| c.len()))
            .field("tls", &self.tls.is_some())
            .field("reconnect_every", &self.reconnect_every)
            .field("source_addrs", &self.source_addrs)
            .field("hold", &self.hold)
            .finish()
    }
}

/// A TLS client that trusts the CA in `ca` (PEM), for a server named `host`.
pub fn tls_setup(
    ca: &Path,
    host: &str,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    ),
    SimulateError,
> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|source| {
        SimulateError::CaFile {
            path: ca.to_path_buf(),
            source,
        }
    })?;
    for cert in certs {
        roots.add(cert.map_err(|source| SimulateError::CaCertificate {
            path: ca.to_path_buf(),
            source,
        })?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|source| {
        SimulateError::ServerName {
            host: host.to_string(),
            source,
        }
    })?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// Source addresses for a fleet of `concurrency` connections to `server`: several 127.0.0.x
/// when the server is on loopback and one address cannot hold them all.
pub fn source_addrs(server: IpAddr, concurrency: usize, asked: usize) -> Vec<IpAddr> {
    // The ephemeral port range holds about 28 000 ports per source address.
    const PER_ADDRESS: usize = 25_000;
    let n = if asked > 0 {
        asked
    } else if server.is_loopback() && server.is_ipv4() && concurrency > PER_ADDRESS {
        concurrency.div_ceil(PER_ADDRESS)
    } else {
        0
    };
    (1..=n.min(250))
        .map(|i| IpAddr::from([127, 0, 0, i as u8]))
        .collect()
}

/// Sends every report of meter `m` (then holds its connection, if asked). A lost connection
/// ends an attempt; the next one connects afresh and resends from the first report not
/// acknowledged (QoS 1 acknowledgements come in order), as a meter's firmware would.
pub(super) async fn run_meter(
    plan: &Plan,
    m: usize,
    target: &Target,
    server: SocketAddr,
    counters: &Counters,
    acked_here: &AtomicU64,
) -> Result<(), SimulateError> {
    let setup = &target.mqtt;
    let per_connection = match setup.reconnect_every {
        0 => plan.messages.max(1),
        n => n,
    };
    let mut hold_until: Option<Instant> = None;
    let mut losses = 0;
    let mut first_connect = true;
    loop {
        let from = acked_here.load(Ordering::Relaxed) as usize;
        let until = (from + per_connection).min(plan.messages);
        let last = until == plan.messages;
        let attempt = Attempt {
            plan,
            m,
            from,
            until,
            hold_until: if last && !setup.hold.is_zero() {
                Some(&mut hold_until)
            } else {
                None
            },
            first_connect: &mut first_connect,
            recovering: losses > 0,
        };
        match connection(attempt, target, server, counters, acked_here).await {
            Ok(()) if last => return Ok(()),
            Ok(()) => {}
            // Refused for its identity, or a certificate: trying again changes nothing.
            Err(e) if e.is_final() => return Err(e),
            Err(e) if losses < MAX_RECONNECTS => {
                losses += 1;
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                counters.note_loss();
                tracing::debug!(meter_id = %plan.meter_id(m), error = %e, "reconnecting");
                // Exponential back-off from 100 ms to 2 s, spread by meter, as firmware does.
                let base = (100u64 << (losses - 1).min(5)).min(2000);
                let jitter = (m as u64).wrapping_mul(0x9E37_79B9) % (base / 2 + 1);
                tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
            }
            Err(e) => {
                return Err(SimulateError::GaveUp {
                    losses: losses + 1,
                    last: Box::new(e),
                })
            }
        }
    }
}

/// One connection's work.
struct Attempt<'a> {
    plan: &'a Plan,
    m: usize,
    from: usize,
    until: usize,
    /// Hold the connection until this time (set at the first hold) after the reports.
    hold_until: Option<&'a mut Option<Instant>>,
    first_connect: &'a mut bool,
    recovering: bool,
}

async fn connection(
    attempt: Attempt<'_>,
    target: &Target,
    server: SocketAddr,
    counters: &Counters,
    acked_here: &AtomicU64,
) -> Result<(), SimulateError> {
    let setup = &target.mqtt;
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if !setup.source_addrs.is_empty() {
        let source = setup.source_addrs[attempt.m % setup.source_addrs.len()];
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| SimulateError::Bind {
                addr: source,
                source: e,
            })?;
    }
    let stream: TcpStream = socket
        .connect(server)
        .await
        .map_err(|source| SimulateError::Connect { server, source })?;
    stream.set_nodelay(true)?;
    match &setup.tls {
        Some((connector, name)) => {
            let tls = connector
                .connect(name.clone(), stream)
                .await
                .map_err(SimulateError::TlsHandshake)?;
            exchange(tls, attempt, target, counters, acked_here).await
        }
        None => exchange(stream, attempt, target, counters, acked_here).await,
    }
}

/// Reads the next packet, or `None` at `deadline`.
async fn next_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Option<Packet>, SimulateError> {
    loop {
        match Packet::read(buf, 1 << 20) {
            Ok(p) => return Ok(Some(p)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(SimulateError::MqttBadPacket(e)),
        }
        buf.reserve(512);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Ok(None),
            Ok(Ok(0)) => return Err(SimulateError::ServerClosed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    attempt: Attempt<'_>,
    target: &Target,
    counters: &Counters,
    acked_here: &AtomicU64,
) -> Result<(), SimulateError> {
    let Attempt {
        plan,
        m,
        from,
        until,
        hold_until,
        first_connect,
        recovering,
    } = attempt;
    let meter_id = plan.meter_id(m);
    let mut out = BytesMut::new();
    let mut buf = BytesMut::new();
    let mut connect = Connect::new(meter_id.as_str());
    connect.keep_alive = KEEP_ALIVE_S;
    if let Some(credentials) = &target.mqtt.credentials {
        let secret = credentials
            .get(&meter_id)
            .ok_or_else(|| SimulateError::NoSecret(meter_id.clone()))?;
        connect.set_login(meter_id.as_str(), secret.as_str());
    }
    let sent_at = Instant::now();
    Packet::Connect(connect)
        .write(&mut out, 1 << 20)
        .map_err(SimulateError::MqttEncode)?;
    stream.write_all(&out).await?;
    out.clear();
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    match next_packet(&mut stream, &mut buf, deadline).await? {
        Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {}
        Some(Packet::ConnAck(ack)) => return Err(SimulateError::Refused(ack.code)),
        Some(other) => return Err(SimulateError::NotConnAck(format!("{other:?}"))),
        None => return Err(SimulateError::NoConnAck(ACK_TIMEOUT)),
    }
    counters.note_connect(sent_at.elapsed(), std::mem::take(first_connect), recovering);

    // Publish reports from..until with at most `inflight` unacknowledged.
    let topic = plan.topic(m);
    let inflight = usize::from(target.inflight.max(1));
    let mut on_the_wire: VecDeque<(u16, Instant)> = VecDeque::new();
    let (mut next, mut acked) = (from, from);
    let mut pkid: u16 = 0;
    let mut next_send = tokio::time::Instant::now();
    let mut progress = tokio::time::Instant::now();
    while acked < until {
        while next < until
            && on_the_wire.len() < inflight
            && tokio::time::Instant::now() >= next_send
        {
            pkid = pkid % u16::MAX + 1;
            let payload = crate::report(plan, target, m, next)?;
            let len = payload.len() as u64;
            let mut publish = Publish::new(topic.as_str(), QoS::AtLeastOnce, payload);
            publish.pkid = pkid;
            Packet::Publish(publish)
                .write(&mut out, 1 << 20)
                .map_err(SimulateError::MqttEncode)?;
            on_the_wire.push_back((pkid, Instant::now()));
            next += 1;
            counters.sent.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(len, Ordering::Relaxed);
            if !target.pause.is_zero() {
                next_send = tokio::time::Instant::now() + target.pause;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        let wait_for_ack = progress + ACK_TIMEOUT;
        let deadline = if next < until && on_the_wire.len() < inflight {
            next_send.min(wait_for_ack)
        } else {
            wait_for_ack
        };
        match next_packet(&mut stream, &mut buf, deadline).await? {
            Some(Packet::PubAck(ack)) => {
                progress = tokio::time::Instant::now();
                if let Some(i) = on_the_wire.iter().position(|(id, _)| *id == ack.pkid) {
                    let (_, at) = on_the_wire.remove(i).unwrap_or((0, Instant::now()));
                    counters.acks.record(at.elapsed());
                }
                acked += 1;
                acked_here.fetch_add(1, Ordering::Relaxed);
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Some(Packet::Disconnect) => return Err(SimulateError::ServerDisconnected),
            Some(_) => {}
            None if tokio::time::Instant::now() >= wait_for_ack => {
                return Err(SimulateError::NoAck(ACK_TIMEOUT))
            }
            None => {}
        }
    }

    // Hold the connection open, pinging, until the hold time is over.
    if let Some(hold_until) = hold_until {
        let until = *hold_until.get_or_insert_with(|| Instant::now() + target.mqtt.hold);
        let ping_every = Duration::from_secs(u64::from(KEEP_ALIVE_S) / 2);
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let wake = tokio::time::Instant::now() + (until - now).min(ping_every);
            if next_packet(&mut stream, &mut buf, wake).await?.is_none() && Instant::now() < until {
                Packet::PingReq
                    .write(&mut out, 64)
                    .map_err(SimulateError::MqttEncode)?;
                stream.write_all(&out).await?;
                out.clear();
            }
        }
    }
    Packet::Disconnect
        .write(&mut out, 64)
        .map_err(SimulateError::MqttEncode)?;
    stream.write_all(&out).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_loopback_fleets_spread_over_source_addresses() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            source_addrs(loopback, 1000, 0).is_empty(),
            "one address holds them"
        );
        let spread = source_addrs(loopback, 100_000, 0);
        assert_eq!(spread.len(), 4);
        assert_eq!(spread[0], IpAddr::from([127, 0, 0, 1]));
        assert_eq!(spread[3], IpAddr::from([127, 0, 0, 4]));
        // Another host: the system chooses; asked for explicitly: as asked.
        assert!(source_addrs("10.0.0.1".parse().unwrap(), 100_000, 0).is_empty());
        assert_eq!(source_addrs(loopback, 10, 3).len(), 3);
    }
}
