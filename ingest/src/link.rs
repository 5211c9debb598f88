//! The link consumer: moves every message from the broker's log to the WAL writer
//! ([`crate::wal_writer`]) and nothing else, so that it keeps ahead of the broker's log.
//!
//! It answers `Notification::Unschedule` with `ready()` (else the router stops sending for
//! good), and checks that `Forward.cursor` offsets follow each other: a gap means the broker
//! dropped messages it had acknowledged (its log overran), which is counted in
//! `meterflow_router_drops_total` and logged as an error.
//!
//! On shutdown it keeps draining until the broker has been quiet for `shutdown_quiet_ms`
//! (or `shutdown_max_ms` passed), then drops its sender to the WAL writer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meterflow_proto::Source;
use meterflow_storage::WalRecord;
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::Notification;

use crate::config::PipelineConfig;
use crate::wal_writer::Submission;

/// A message as accepted from the network, before decoding.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Its place in the WAL; 0 when it could not be written there (a WAL I/O error).
    pub lsn: u64,
    /// MQTT topic (or CoAP path).
    pub topic: String,
    pub payload: Bytes,
    pub source: Source,
    /// When meterflow accepted it, Unix ms.
    pub received_at_ms: i64,
    /// MQTT 5 content-type property, where the publisher set one.
    pub content_type: Option<String>,
}

impl From<WalRecord> for RawMessage {
    fn from(r: WalRecord) -> Self {
        RawMessage {
            lsn: r.lsn,
            topic: r.topic,
            payload: Bytes::from(r.payload),
            source: r.source,
            received_at_ms: r.received_at_ms,
            content_type: r.content_type,
        }
    }
}

/// Where the WAL stands, shared by the link (writer) and the pipeline (reader).
#[derive(Debug, Default)]
pub struct LsnMarks {
    /// The last LSN committed to the WAL: readable by the pipeline.
    pub committed: AtomicU64,
    /// The last LSN every sink has confirmed: the WAL may drop it.
    pub confirmed: AtomicU64,
    /// Bytes in WAL segments (for `/ready`).
    pub wal_bytes: AtomicU64,
    /// When a WAL write last failed, Unix ms (0: never), for `/ready`.
    pub wal_error_at_ms: std::sync::atomic::AtomicI64,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Tracks `Forward.cursor` offsets; returns how many were skipped before this one.
#[derive(Debug, Default)]
pub struct CursorCheck {
    last: Option<u64>,
}

impl CursorCheck {
    pub fn skipped(&mut self, offset: u64) -> u64 {
        let skipped = match self.last {
            Some(last) if offset > last + 1 => offset - last - 1,
            _ => 0,
        };
        self.last = Some(self.last.map_or(offset, |l| l.max(offset)));
        skipped
    }
}

/// What the link consumer saw, for the shutdown summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkSummary {
    pub messages: u64,
    pub router_drops: u64,
}

/// Runs the consumer on its own thread until `stop` is set and the broker is drained.
pub fn spawn(
    link_tx: LinkTx,
    mut link_rx: LinkRx,
    wal: flume::Sender<Submission>,
    stop: Arc<AtomicBool>,
    config: PipelineConfig,
) -> std::io::Result<std::thread::JoinHandle<LinkSummary>> {
    std::thread::Builder::new()
        .name("mqtt-link".into())
        .spawn(move || {
            let _keep_subscription = link_tx;
            let mut consumer = Consumer {
                wal,
                summary: LinkSummary::default(),
                cursor: CursorCheck::default(),
            };
            consumer.run(&mut link_rx, &stop, &config);
            consumer.summary
        })
}

struct Consumer {
    wal: flume::Sender<Submission>,
    summary: LinkSummary,
    cursor: CursorCheck,
}

impl Consumer {
    fn run(&mut self, link_rx: &mut LinkRx, stop: &AtomicBool, config: &PipelineConfig) {
        let quiet = Duration::from_millis(config.shutdown_quiet_ms);
        let mut last_message = Instant::now();
        let mut stop_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if stop_at.is_none() && stop.load(Ordering::Relaxed) {
                stop_at = Some(now);
                tracing::info!("draining the broker before shutdown");
            }
            if let Some(at) = stop_at {
                let drained = now.duration_since(last_message) >= quiet;
                let out_of_time =
                    now.duration_since(at) >= Duration::from_millis(config.shutdown_max_ms);
                if drained || out_of_time {
                    if out_of_time && !drained {
                        tracing::warn!("shutdown drain stopped at shutdown_max_ms while messages were still arriving");
                    }
                    return;
                }
            }
            match link_rx.recv_deadline(now + Duration::from_millis(50)) {
                Ok(Some(Notification::Forward(forward))) => {
                    last_message = Instant::now();
                    if !self.forward(forward) {
                        tracing::error!("the WAL writer stopped; link consumer ends");
                        return;
                    }
                }
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = link_rx.ready() {
                        tracing::error!(error = %e, "re-scheduling the ingest link");
                        return;
                    }
                }
                Ok(Some(_)) | Ok(None) => {}
                Err(LinkError::RecvTimeout(_)) => {}
                Err(e) => {
                    tracing::error!(error = %e, "ingest link closed");
                    return;
                }
            }
        }
    }

    /// Checks the cursor and hands the message to the WAL writer (waiting for room: the
    /// broker's log absorbs the burst). Returns false when the writer is gone.
    fn forward(&mut self, forward: rumqttd::Forward) -> bool {
        if let Some((_, offset)) = forward.cursor {
            let skipped = self.cursor.skipped(offset);
            if skipped > 0 {
                self.summary.router_drops += skipped;
                metrics::counter!("meterflow_router_drops_total").increment(skipped);
                tracing::error!(
                    skipped,
                    offset,
                    "broker skipped acknowledged messages before the link read them: its log overran (raise mqtt.router_segment_bytes/count) or MQTT 5 messages expired (message expiry interval)"
                );
            }
        }
        self.summary.messages += 1;
        metrics::counter!("meterflow_received_total", "source" => "mqtt").increment(1);
        let topic = match String::from_utf8(forward.publish.topic.to_vec()) {
            Ok(t) => t,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let message = RawMessage {
            lsn: 0,
            topic,
            payload: forward.publish.payload,
            source: Source::Mqtt,
            received_at_ms: now_ms(),
            content_type: forward.properties.and_then(|p| p.content_type),
        };
        self.wal
            .send(Submission {
                message,
                notify: None,
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_gaps_are_counted() {
        let mut c = CursorCheck::default();
        assert_eq!(c.skipped(5), 0, "the first offset sets the start");
        assert_eq!(c.skipped(6), 0);
        assert_eq!(c.skipped(10), 3);
        assert_eq!(c.skipped(8), 0, "a retransmission is no gap");
        assert_eq!(c.skipped(11), 0);
    }
}
