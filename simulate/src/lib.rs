//! `meterflow simulate`: a fleet of meters publishing over MQTT with QoS 1 ([`mqtt`]), posting
//! over CoAP ([`coap`]), or pushing DLMS/COSEM DataNotifications to the wrapper listener over
//! TCP or UDP (`wrapper.rs`).
//!
//! Each meter is its own MQTT connection (client id = meter id), TCP connection or UDP socket,
//! as in the field. Meter `m`
//! sends `messages` reports; report `k` is either five register readings stamped
//! `start + k × interval_s` (`--shape readings`) or one day of 96 quarter-hour consumption
//! values starting at `start + k × 1 day` (`--shape series`). Every value is a function of
//! (m, k) with at most three decimals, so the readings that must arrive are known exactly:
//! [`Plan::expected_rows`]. The summary counts what was sent and what the broker acknowledged.
//! A meter whose connection drops reconnects and resends what was not acknowledged, as a real
//! one does; the summary counts those reconnects, since each can deliver a report twice.
//!
//! With `--format dlms` a report is a DLMS push ([`dlms`]): a self-describing DataNotification,
//! ciphered with the meter's keys from `--credentials` when it has them; over MQTT
//! (`meters/{id}/dlms`), CoAP (Content-Format 65002) or the wrapper listener.
//!
//! The files: [`Plan`] and its payload generator (`plan.rs`, with the DLMS pushes in
//! [`dlms`]), the fleet and its summary (here), `--credentials` ([`credentials`]), the
//! per-meter clients (`mqtt.rs`, `coap.rs` with [`dtls`] under it, `wrapper.rs`), the counters
//! they share (`counters.rs`) and [`SimulateError`] (`error.rs`).

mod coap;
mod counters;
pub mod credentials;
pub mod dlms;
pub mod dtls;
mod error;
pub mod mqtt;
mod plan;
pub mod theft;
mod wrapper;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use counters::Counters;
pub use error::SimulateError;
pub use plan::{ExpectedRow, Plan, Shape};

/// How meters reach meterflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MQTT 3.1.1, QoS 1, one connection per meter.
    Mqtt,
    /// CoAP confirmable POSTs to `/r/{meter_id}`, one socket per meter.
    Coap,
    /// DLMS pushes in wrapper frames to the wrapper listener, one TCP connection per meter.
    #[serde(rename = "dlms-tcp")]
    DlmsTcp,
    /// DLMS pushes in wrapper frames to the wrapper listener, one datagram each.
    #[serde(rename = "dlms-udp")]
    DlmsUdp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Mqtt => "MQTT",
            Protocol::Coap => "CoAP",
            Protocol::DlmsTcp => "DLMS over TCP",
            Protocol::DlmsUdp => "DLMS over UDP",
        })
    }
}

impl Protocol {
    /// Whether meterflow answers what a meter sends over this protocol (not DLMS over UDP).
    pub fn answers(self) -> bool {
        self != Protocol::DlmsUdp
    }

    /// What `messages_acked` counts over this protocol.
    pub fn acked_means(self) -> &'static str {
        match self {
            Protocol::Mqtt => "reports meterflow answered with a PUBACK (QoS 1)",
            Protocol::Coap => "reports meterflow answered 2.04 Changed",
            Protocol::DlmsTcp => {
                "pushes of connections meterflow closed in order (no reset) after the meter's last frame: each read, so durable, before the next was read"
            }
            Protocol::DlmsUdp => {
                "none: UDP pushes have no answer, they are counted as sent only"
            }
        }
    }
}

/// How to reach meterflow.
#[derive(Debug, Clone)]
pub struct Target {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    /// Unacknowledged publishes per connection (MQTT; CoAP sends one request at a time).
    pub inflight: u16,
    /// CoAP: reports larger than this go in Block1 blocks of this size.
    pub coap_block_size: usize,
    /// CoAP: over DTLS with each meter's pre-shared key (from `mqtt.credentials`).
    pub coap_dtls: bool,
    /// Connections opened at the same time at most (the rest wait their turn).
    pub concurrency: usize,
    /// Pause between two reports of one meter.
    pub pause: Duration,
    /// Give up on a meter whose reports are not all acknowledged in this time.
    pub meter_timeout: Duration,
    /// MQTT: credentials, TLS, reconnecting, source addresses (the DLMS TCP connections'
    /// too), holding connections.
    pub mqtt: mqtt::MqttSetup,
    /// `--format dlms`: each meter's keys and the invocation counters.
    pub dlms: dlms::DlmsSetup,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub protocol: Option<Protocol>,
    /// What `messages_acked` counts (see [`Protocol::acked_means`]).
    pub acked_means: String,
    pub meters: usize,
    pub format: String,
    pub shape: String,
    pub messages_sent: u64,
    pub messages_acked: u64,
    pub rows_sent: u64,
    pub rows_acked: u64,
    pub bytes_sent: u64,
    pub meters_failed: u64,
    /// Why the first meter that failed did (`E1: connection refused: not authorised ...`).
    pub first_failure: Option<String>,
    /// MQTT connections lost and re-established; each may deliver an acknowledged report twice.
    pub reconnects: u64,
    /// MQTT connections made (CONNACK received), planned ones (`--reconnect-every`) included.
    pub connections: u64,
    /// Time from CONNECT to CONNACK, milliseconds.
    pub connect_ms_p50: f64,
    pub connect_ms_p99: f64,
    /// Connections made per second over the run.
    pub connects_per_s: f64,
    /// Seconds from the start until every meter had its first connection.
    pub all_connected_s: f64,
    /// Seconds from the first connection loss to the last meter back (a reconnect storm).
    pub recovery_s: f64,
    /// CoAP requests sent again because their ACK did not come in time.
    pub retransmissions: u64,
    /// CoAP 5.03 answers obeyed (waited Max-Age, then sent again).
    pub busy_answers: u64,
    /// Time from sending a report (each CoAP request, each MQTT publish) to its
    /// acknowledgement, milliseconds: median, 99th percentile, maximum.
    pub ack_ms_p50: f64,
    pub ack_ms_p99: f64,
    pub ack_ms_max: f64,
    pub elapsed_s: f64,
    pub acked_per_s: f64,
    pub first_ts_ms: i64,
    pub last_ts_ms: i64,
    /// `--format dlms`: meters whose pushes were ciphered (the others went in clear).
    pub dlms_ciphered_meters: usize,
    /// `--format dlms`: the invocation counters of the first and the last report of each
    /// ciphered meter.
    pub dlms_invocation_counters: Option<(u32, u32)>,
}

/// Runs the fleet against the server and reports what was sent and acknowledged.
pub async fn run(plan: Arc<Plan>, target: Target) -> Result<Summary, SimulateError> {
    plan.validate()?;
    let dlms_protocol = matches!(target.protocol, Protocol::DlmsTcp | Protocol::DlmsUdp);
    if dlms_protocol && plan.format != meterflow_proto::Format::Dlms {
        return Err(SimulateError::Invalid(
            "the DLMS wrapper listener takes DLMS pushes only: --format dlms",
        ));
    }
    target.dlms.validate(plan.messages)?;
    let server = resolve(&target.host, target.port, "host").await?;
    let counters = Arc::new(Counters::new(plan.meters));
    let permits = Arc::new(tokio::sync::Semaphore::new(target.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for m in 0..plan.meters {
        let (plan, target, counters, permits) = (
            plan.clone(),
            target.clone(),
            counters.clone(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let acked = AtomicU64::new(0);
            let meter = async {
                match target.protocol {
                    Protocol::Mqtt => {
                        mqtt::run_meter(&plan, m, &target, server, &counters, &acked).await
                    }
                    Protocol::Coap => coap::run_meter(&plan, m, &target, &counters, &acked).await,
                    Protocol::DlmsTcp => {
                        wrapper::run_meter_tcp(&plan, m, &target, server, &counters, &acked).await
                    }
                    Protocol::DlmsUdp => {
                        wrapper::run_meter_udp(&plan, m, &target, server, &counters).await
                    }
                }
            };
            let outcome =
                tokio::time::timeout(target.meter_timeout + target.mqtt.hold, meter).await;
            let error = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => error::with_causes(&e),
                Err(_) => format!(
                    "{} of {} reports acknowledged within {:?}",
                    acked.load(Ordering::Relaxed),
                    plan.messages,
                    target.meter_timeout
                ),
            };
            counters.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = counters.first_failure.lock() {
                first.get_or_insert_with(|| format!("{}: {error}", plan.meter_id(m)));
            }
            tracing::warn!(meter_id = %plan.meter_id(m), error, "simulated meter failed");
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(SimulateError::MeterPanicked)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = counters.sent.load(Ordering::Relaxed);
    let acked = counters.acked.load(Ordering::Relaxed);
    let per = plan.rows_per_message() as u64;
    let first = plan.expected_rows(0, 0);
    let last = plan.expected_rows(0, plan.messages.saturating_sub(1));
    let dlms_ciphered_meters = if plan.format == meterflow_proto::Format::Dlms {
        target.dlms.ciphered_meters(&plan)
    } else {
        0
    };
    Ok(Summary {
        protocol: Some(target.protocol),
        acked_means: target.protocol.acked_means().to_string(),
        dlms_ciphered_meters,
        dlms_invocation_counters: (dlms_ciphered_meters > 0 && plan.messages > 0).then(|| {
            (
                target.dlms.invocation_counter(0),
                target.dlms.invocation_counter(plan.messages - 1),
            )
        }),
        meters: plan.meters,
        format: plan.format.to_string(),
        shape: format!("{:?}", plan.shape).to_lowercase(),
        messages_sent: sent,
        messages_acked: acked,
        rows_sent: sent * per,
        rows_acked: acked * per,
        bytes_sent: counters.bytes.load(Ordering::Relaxed),
        meters_failed: counters.failed.load(Ordering::Relaxed),
        first_failure: counters.first_failure.lock().ok().and_then(|f| f.clone()),
        reconnects: counters.reconnects.load(Ordering::Relaxed),
        retransmissions: counters.retransmissions.load(Ordering::Relaxed),
        busy_answers: counters.busy.load(Ordering::Relaxed),
        connections: counters.connects.load(Ordering::Relaxed),
        connect_ms_p50: counters.connect_latencies.ms(0.5),
        connect_ms_p99: counters.connect_latencies.ms(0.99),
        connects_per_s: if elapsed > 0.0 {
            counters.connects.load(Ordering::Relaxed) as f64 / elapsed
        } else {
            0.0
        },
        all_connected_s: counters.moments.all_connected_us.load(Ordering::Acquire) as f64 / 1e6,
        recovery_s: {
            let (lost, back) = (
                counters.moments.first_loss_us.load(Ordering::Acquire),
                counters.moments.last_recovery_us.load(Ordering::Acquire),
            );
            back.saturating_sub(lost) as f64 / 1e6
        },
        ack_ms_p50: counters.acks.ms(0.5),
        ack_ms_p99: counters.acks.ms(0.99),
        ack_ms_max: counters.acks.ms(1.0),
        elapsed_s: elapsed,
        acked_per_s: if elapsed > 0.0 {
            acked as f64 / elapsed
        } else {
            0.0
        },
        first_ts_ms: first.first().map_or(0, |r| r.ts_ms),
        last_ts_ms: last.last().map_or(0, |r| r.ts_ms),
    })
}

/// Report `k` of meter `m` as sent: the plan's payload, or for DLMS the push ciphered with
/// the meter's keys.
pub(crate) fn report(
    plan: &Plan,
    target: &Target,
    m: usize,
    k: usize,
) -> Result<Vec<u8>, SimulateError> {
    if plan.format == meterflow_proto::Format::Dlms {
        dlms::push(plan, m, k, &target.dlms)
    } else {
        Ok(plan.payload(m, k))
    }
}

/// The first address of `host`; `what` names it in the error ("host", "CoAP host").
async fn resolve(
    host: &str,
    port: u16,
    what: &'static str,
) -> Result<std::net::SocketAddr, SimulateError> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| SimulateError::Resolve {
            host: host.to_string(),
            source,
        })?
        .next()
        .ok_or(SimulateError::NoAddress { what })
}
