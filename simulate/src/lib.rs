//! `meterflow simulate`: a fleet of meters publishing over MQTT with QoS 1 ([`mqtt`]), or
//! posting over CoAP ([`coap`]).
//!
//! Each meter is its own MQTT connection (client id = meter id) or UDP socket, as in the field. Meter `m`
//! sends `messages` reports; report `k` is either five register readings stamped
//! `start + k × interval_s` (`--shape readings`) or one day of 96 quarter-hour consumption
//! values starting at `start + k × 1 day` (`--shape series`). Every value is a function of
//! (m, k) with at most three decimals, so the readings that must arrive are known exactly:
//! [`Plan::expected_rows`]. The summary counts what was sent and what the broker acknowledged.
//! A meter whose connection drops reconnects and resends what was not acknowledged, as a real
//! one does; the summary counts those reconnects, since each can deliver a report twice.
//!
//! The files: [`Plan`] and its payload generator (`plan.rs`), the fleet and its summary
//! (here), the per-meter clients (`mqtt.rs`, `coap.rs`, with [`dtls`] under CoAP), the
//! counters they share (`counters.rs`) and [`SimulateError`] (`error.rs`).

mod coap;
mod counters;
pub mod dtls;
mod error;
pub mod mqtt;
mod plan;

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
    /// MQTT: credentials, TLS, reconnecting, source addresses, holding connections.
    pub mqtt: mqtt::MqttSetup,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub protocol: Option<Protocol>,
    pub meters: usize,
    pub format: String,
    pub shape: String,
    pub messages_sent: u64,
    pub messages_acked: u64,
    pub rows_sent: u64,
    pub rows_acked: u64,
    pub bytes_sent: u64,
    pub meters_failed: u64,
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
}

/// Runs the fleet against the server and reports what was sent and acknowledged.
pub async fn run(plan: Arc<Plan>, target: Target) -> Result<Summary, SimulateError> {
    plan.validate()?;
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
                }
            };
            let outcome =
                tokio::time::timeout(target.meter_timeout + target.mqtt.hold, meter).await;
            let error = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!(
                    "{} of {} reports acknowledged within {:?}",
                    acked.load(Ordering::Relaxed),
                    plan.messages,
                    target.meter_timeout
                ),
            };
            counters.failed.fetch_add(1, Ordering::Relaxed);
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
    Ok(Summary {
        protocol: Some(target.protocol),
        meters: plan.meters,
        format: plan.format.to_string(),
        shape: format!("{:?}", plan.shape).to_lowercase(),
        messages_sent: sent,
        messages_acked: acked,
        rows_sent: sent * per,
        rows_acked: acked * per,
        bytes_sent: counters.bytes.load(Ordering::Relaxed),
        meters_failed: counters.failed.load(Ordering::Relaxed),
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
