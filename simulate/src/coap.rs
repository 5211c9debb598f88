//! `simulate --coap`: each meter is a UDP socket of its own (its own address, as a modem has)
//! posting its reports to `/r/{meter_id}` as confirmable requests, one at a time (RFC 7252
//! NSTART = 1), with the Content-Format of the plan's format.
//!
//! Retransmission follows RFC 7252 §4.2 (ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5,
//! MAX_RETRANSMIT 4, doubling); a 5.03 is obeyed by waiting its Max-Age and sending the report
//! again as a new request; a body larger than one block goes in Block1 blocks of
//! `--block-size` bytes (1024 by default; NB-IoT modules often use 256 or 512).
//! Every request's time from first transmission to its answer is recorded for the summary's
//! latency percentiles.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;

use crate::counters::Counters;
use crate::{Plan, SimulateError, Target};

const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;

/// How a report (all its blocks) was answered.
enum Answer {
    Stored,
    /// 5.03: wait this long, then send the report again.
    Busy(Duration),
}

/// Sends every report of meter `m`, from report `from` on.
pub(super) async fn run_meter(
    plan: &Plan,
    m: usize,
    target: &Target,
    counters: &Counters,
    acked_here: &AtomicU64,
) -> Result<(), SimulateError> {
    let server = crate::resolve(&target.host, target.port, "CoAP host").await?;
    let local = if server.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(SimulateError::BindUdp)?;
    socket.connect(server).await?;
    let meter_id = plan.meter_id(m);
    let link = if target.coap_dtls {
        let secret = target
            .mqtt
            .credentials
            .as_ref()
            .and_then(|c| c.get(&meter_id))
            .ok_or_else(|| SimulateError::NoDtlsSecret(meter_id.clone()))?;
        let started = Instant::now();
        let link = crate::dtls::DtlsLink::connect(
            socket,
            server,
            &meter_id,
            secret.as_bytes(),
            target.meter_timeout,
        )
        .await?;
        counters.note_connect(started.elapsed(), true, false);
        Link::Dtls(Box::new(link))
    } else {
        Link::Plain(socket)
    };
    let block_size = target.coap_block_size;
    if !(16..=1024).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(SimulateError::Invalid(
            "--block-size must be 16, 32, 64, 128, 256, 512 or 1024",
        ));
    }
    let mut meter = Meter {
        block_size,
        link,
        meter_id,
        content_format: plan.format.coap_content_format(),
        // Message IDs and tokens start somewhere different for every meter.
        next_mid: (m as u16).wrapping_mul(7919),
        next_token: (m as u32) << 16,
        jitter: (m as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    };
    for k in acked_here.load(Ordering::Relaxed) as usize..plan.messages {
        let payload = crate::report(plan, target, m, k)?;
        loop {
            counters.sent.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            match meter.report(&payload, counters).await? {
                Answer::Stored => break,
                Answer::Busy(max_age) => {
                    counters.busy.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(max_age).await;
                }
            }
        }
        acked_here.fetch_add(1, Ordering::Relaxed);
        counters.acked.fetch_add(1, Ordering::Relaxed);
        if !target.pause.is_zero() {
            tokio::time::sleep(target.pause).await;
        }
    }
    Ok(())
}

/// How a meter's requests travel.
enum Link {
    Plain(UdpSocket),
    Dtls(Box<crate::dtls::DtlsLink>),
}

impl Link {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), SimulateError> {
        match self {
            Link::Plain(socket) => {
                socket.send(bytes).await?;
            }
            Link::Dtls(link) => link.send(bytes).await?,
        }
        Ok(())
    }

    async fn recv(&mut self, buf: &mut [u8]) -> Result<usize, SimulateError> {
        match self {
            Link::Plain(socket) => Ok(socket.recv(buf).await?),
            Link::Dtls(link) => link.recv(buf).await,
        }
    }
}

struct Meter {
    /// Block1 block size, bytes (a power of two from 16 to 1024).
    block_size: usize,
    link: Link,
    meter_id: String,
    content_format: u16,
    next_mid: u16,
    next_token: u32,
    jitter: u64,
}

impl Meter {
    /// One report: a single request, or Block1 blocks for a large body.
    async fn report(
        &mut self,
        payload: &[u8],
        counters: &Counters,
    ) -> Result<Answer, SimulateError> {
        let size = self.block_size;
        if payload.len() <= size {
            let answer = self.request(payload, None, counters).await?;
            return self.outcome(&answer, false);
        }
        // SZX: size = 2^(SZX + 4).
        let szx = size.trailing_zeros() - 4;
        let blocks = payload.len().div_ceil(size);
        for (num, chunk) in payload.chunks(size).enumerate() {
            let more = num + 1 < blocks;
            let block = ((num as u32) << 4) | (u32::from(more) << 3) | szx;
            let answer = self.request(chunk, Some(block), counters).await?;
            match self.outcome(&answer, more)? {
                Answer::Stored if more => continue,
                other => return Ok(other),
            }
        }
        Ok(Answer::Stored)
    }

    /// What an answer means: 2.04 (or 2.31 for a block that is not the last) is progress,
    /// 5.03 is a wait, anything else is an error of the simulator or the server.
    fn outcome(&self, answer: &Packet, more_blocks: bool) -> Result<Answer, SimulateError> {
        match answer.header.code {
            MessageClass::Response(ResponseType::Changed) if !more_blocks => Ok(Answer::Stored),
            MessageClass::Response(ResponseType::Continue) if more_blocks => Ok(Answer::Stored),
            MessageClass::Response(ResponseType::ServiceUnavailable) => {
                let secs = answer
                    .get_first_option(CoapOption::MaxAge)
                    .map_or(60, |v| v.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
                Ok(Answer::Busy(Duration::from_secs(secs.min(3600))))
            }
            _ => Err(SimulateError::CoapAnswer {
                meter_id: self.meter_id.clone(),
                code: answer.header.get_code(),
                body: String::from_utf8_lossy(&answer.payload).into_owned(),
            }),
        }
    }

    /// Sends one CON and waits for its ACK, retransmitting as RFC 7252 says.
    async fn request(
        &mut self,
        body: &[u8],
        block1: Option<u32>,
        counters: &Counters,
    ) -> Result<Packet, SimulateError> {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_token = self.next_token.wrapping_add(1);
        let mid = self.next_mid;
        let mut request = Packet::new();
        request.header.set_version(1);
        request.header.set_type(MessageType::Confirmable);
        request.header.code = MessageClass::Request(RequestType::Post);
        request.header.message_id = mid;
        request.set_token(self.next_token.to_be_bytes().to_vec());
        request.add_option(CoapOption::UriPath, b"r".to_vec());
        request.add_option(CoapOption::UriPath, self.meter_id.as_bytes().to_vec());
        request.add_option(
            CoapOption::ContentFormat,
            uint(u32::from(self.content_format)),
        );
        if let Some(block) = block1 {
            request.add_option(CoapOption::Block1, uint(block));
        }
        request.payload = body.to_vec();
        let bytes = request.to_bytes().map_err(SimulateError::CoapEncode)?;
        // The first timeout is random in [ACK_TIMEOUT, ACK_TIMEOUT × 1.5].
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let mut timeout = ACK_TIMEOUT + ACK_TIMEOUT.mul_f64((self.jitter % 1000) as f64 / 2000.0);
        let started = Instant::now();
        let mut buf = vec![0u8; 2048];
        for transmission in 0..=MAX_RETRANSMIT {
            if transmission > 0 {
                counters.retransmissions.fetch_add(1, Ordering::Relaxed);
            }
            self.link.send(&bytes).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let received = tokio::time::timeout_at(deadline, self.link.recv(&mut buf)).await;
                let n = match received {
                    Err(_) => break, // retransmit
                    Ok(Ok(n)) => n,
                    // ICMP port unreachable (nobody listens yet, or any more): wait it out.
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                };
                let Ok(answer) = Packet::from_bytes(&buf[..n]) else {
                    continue;
                };
                if answer.header.message_id != mid {
                    continue; // a late answer to an earlier transmission
                }
                match answer.header.get_type() {
                    MessageType::Acknowledgement => {
                        counters.acks.record(started.elapsed());
                        return Ok(answer);
                    }
                    MessageType::Reset => {
                        return Err(SimulateError::CoapReset {
                            meter_id: self.meter_id.clone(),
                        })
                    }
                    _ => continue,
                }
            }
            timeout *= 2;
        }
        Err(SimulateError::CoapNoAnswer {
            meter_id: self.meter_id.clone(),
            transmissions: MAX_RETRANSMIT + 1,
        })
    }
}

fn uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}
