//! The link consumer: appends every message from the broker's log to the WAL (group commit:
//! one flush, and fsync by policy, per burst) and then offers it to the pipeline queue. It
//! never waits for the pipeline: when the queue is full the message is in the WAL only and the
//! pipeline reads it from there, so a slow sink never holds the broker up.
//!
//! It answers `Notification::Unschedule` with `ready()` (else the router stops sending for
//! good), and checks that `Forward.cursor` offsets follow each other: a gap means the broker
//! dropped messages it had acknowledged (its log overran), which is counted in
//! `meterflow_router_drops_total` and logged as an error.
//!
//! On shutdown it keeps draining until the broker has been quiet for `shutdown_quiet_ms`
//! (or `shutdown_max_ms` passed), then closes the queue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meterflow_proto::Source;
use meterflow_storage::{Wal, WalRecord};
use rumqttd::local::{LinkError, LinkRx, LinkTx};
use rumqttd::Notification;

use crate::config::PipelineConfig;

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
    /// Messages not written to the WAL because it was at its disk budget.
    pub wal_overflow: u64,
}

/// Messages appended before a group commit at the latest.
const MAX_GROUP: usize = 4096;

/// Runs the consumer on its own thread until `stop` is set and the broker is drained.
pub fn spawn(
    link_tx: LinkTx,
    link_rx: LinkRx,
    wal: Wal,
    marks: Arc<LsnMarks>,
    queue: SyncSender<RawMessage>,
    stop: Arc<AtomicBool>,
    config: PipelineConfig,
) -> std::io::Result<std::thread::JoinHandle<LinkSummary>> {
    std::thread::Builder::new()
        .name("mqtt-link".into())
        .spawn(move || {
            let _keep_subscription = link_tx;
            let mut consumer = Consumer {
                wal,
                marks,
                queue,
                group: Vec::with_capacity(MAX_GROUP),
                summary: LinkSummary::default(),
                cursor: CursorCheck::default(),
                removed_through: 0,
            };
            consumer.run(link_rx, &stop, &config);
            consumer.summary
        })
}

struct Consumer {
    wal: Wal,
    marks: Arc<LsnMarks>,
    queue: SyncSender<RawMessage>,
    /// Appended to the WAL, not yet committed and offered to the pipeline.
    group: Vec<RawMessage>,
    summary: LinkSummary,
    cursor: CursorCheck,
    removed_through: u64,
}

impl Consumer {
    fn run(&mut self, mut link_rx: LinkRx, stop: &AtomicBool, config: &PipelineConfig) {
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
                    break;
                }
            }
            // With a group pending, take only what is already there, then commit it.
            let wait = if self.group.is_empty() {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
            match link_rx.recv_deadline(now + wait) {
                Ok(Some(Notification::Forward(forward))) => {
                    last_message = Instant::now();
                    self.accept(forward);
                    if self.group.len() < MAX_GROUP {
                        continue;
                    }
                }
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = link_rx.ready() {
                        tracing::error!(error = %e, "re-scheduling the ingest link");
                        break;
                    }
                    continue;
                }
                Ok(Some(_)) | Ok(None) => continue,
                Err(LinkError::RecvTimeout(_)) => {}
                Err(e) => {
                    tracing::error!(error = %e, "ingest link closed");
                    break;
                }
            }
            if !self.commit() {
                break;
            }
        }
        self.commit();
        if let Err(e) = self.wal.sync() {
            tracing::error!(error = %e, "final WAL sync");
        }
    }

    /// Appends one message to the WAL (or counts it when the WAL is at its budget).
    fn accept(&mut self, forward: rumqttd::Forward) {
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
        let mut message = RawMessage {
            lsn: 0,
            topic,
            payload: forward.publish.payload,
            source: Source::Mqtt,
            received_at_ms: now_ms(),
            content_type: forward.properties.and_then(|p| p.content_type),
        };
        if !self
            .wal
            .has_room(message.payload.len() + message.topic.len())
        {
            self.summary.wal_overflow += 1;
            metrics::counter!("meterflow_wal_overflow_total").increment(1);
            if self.summary.wal_overflow.is_power_of_two() {
                tracing::error!(
                    dropped = self.summary.wal_overflow,
                    wal_bytes = self.wal.bytes(),
                    "WAL at its disk budget (wal.max_bytes): messages are dropped until the sinks catch up"
                );
            }
            return;
        }
        match self.wal.append(
            message.received_at_ms,
            message.source,
            &message.topic,
            message.content_type.as_deref(),
            &message.payload,
        ) {
            Ok(lsn) => message.lsn = lsn,
            Err(e) => {
                metrics::counter!("meterflow_wal_errors_total").increment(1);
                tracing::error!(error = %e, topic = %message.topic, "WAL append failed; the message goes to the pipeline without it");
            }
        }
        self.group.push(message);
    }

    /// Commits the group to the WAL, offers it to the pipeline, and drops the segments every
    /// sink has confirmed. Returns false when the pipeline is gone.
    fn commit(&mut self) -> bool {
        // Also with nothing new: an idle link still owes the interval fsync, and the sinks'
        // confirmations free WAL room (which matters most when the WAL is at its budget).
        self.remove_confirmed();
        if let Err(e) = self.wal.commit() {
            metrics::counter!("meterflow_wal_errors_total").increment(1);
            tracing::error!(error = %e, "WAL commit failed; the group goes to the pipeline without it");
            // Not readable from the WAL: hand the messages on as not being in it.
            for message in &mut self.group {
                message.lsn = 0;
            }
        } else if !self.group.is_empty() {
            let committed = self.wal.next_lsn() - 1;
            self.marks.committed.store(committed, Ordering::Release);
        }
        for message in self.group.drain(..) {
            let result = if message.lsn == 0 {
                // Not in the WAL: the queue is its only way on, so wait for room.
                self.queue
                    .send(message)
                    .map_err(|e| TrySendError::Disconnected(e.0))
            } else {
                self.queue.try_send(message)
            };
            match result {
                Ok(()) => {}
                // The pipeline reads it from the WAL when it gets there.
                Err(TrySendError::Full(_)) => {
                    metrics::counter!("meterflow_queue_full_total").increment(1);
                }
                Err(TrySendError::Disconnected(_)) => {
                    tracing::error!("pipeline stopped; link consumer ends");
                    return false;
                }
            }
        }
        true
    }

    /// Deletes the WAL segments every sink has confirmed.
    fn remove_confirmed(&mut self) {
        let confirmed = self.marks.confirmed.load(Ordering::Acquire);
        if confirmed > self.removed_through {
            match self.wal.remove_through(confirmed) {
                Ok(_) => self.removed_through = confirmed,
                Err(e) => tracing::error!(error = %e, "removing confirmed WAL segments"),
            }
        }
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
