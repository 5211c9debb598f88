//! The pipeline: takes raw messages off the queue, routes them by topic, decodes them into
//! the batcher, hands full batches to the Parquet sink, keeps what does not decode as a
//! dead letter, and tells the device registry what it heard. Runs on one thread: decoding
//! and Parquet writing are CPU and blocking work, and one thread keeps the order.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use meterflow_decoders::{decode, decode_status, DecodeContext, DecodeError, Decoded, Format};
use meterflow_proto::{is_valid_meter_id, RowMeta};
use meterflow_storage::{Batcher, DeadLetter, DeadLetterStore, ParquetSink};

use crate::devices::{DeviceRegistry, Observation};
use crate::link::RawMessage;
use crate::IngestError;

/// Where a topic sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Report { meter_id: &'a str, format: Format },
    Status { meter_id: &'a str },
}

/// Parses `meters/{meter_id}/{format}` and `meters/{meter_id}/status`.
pub fn parse_topic(topic: &str) -> Result<Route<'_>, String> {
    let mut parts = topic.split('/');
    let (Some("meters"), Some(meter_id), Some(last), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "topic {topic:?} is not meters/{{meter_id}}/{{format}} or meters/{{meter_id}}/status"
        ));
    };
    if !is_valid_meter_id(meter_id) {
        return Err(format!(
            "meter_id {meter_id:?} must be 1 to 64 characters of [A-Za-z0-9._-]"
        ));
    }
    if last == "status" {
        return Ok(Route::Status { meter_id });
    }
    let format = last.parse::<Format>().map_err(|e| e.to_string())?;
    Ok(Route::Report { meter_id, format })
}

/// Counts for the shutdown summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineSummary {
    pub messages: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub files: u64,
}

pub struct Pipeline {
    pub batcher: Batcher,
    pub parquet: ParquetSink,
    pub dead_letters: DeadLetterStore,
    pub devices: DeviceRegistry,
    summary: PipelineSummary,
}

impl Pipeline {
    pub fn new(
        batcher: Batcher,
        parquet: ParquetSink,
        dead_letters: DeadLetterStore,
        devices: DeviceRegistry,
    ) -> Self {
        Pipeline {
            batcher,
            parquet,
            dead_letters,
            devices,
            summary: PipelineSummary::default(),
        }
    }

    /// Runs until the queue is closed and empty, then flushes every sink.
    pub fn run(mut self, queue: Receiver<RawMessage>) -> Result<PipelineSummary, IngestError> {
        loop {
            let now = Instant::now();
            let wait = [self.batcher.time_left(now), self.parquet.next_roll_in(now)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(Duration::from_secs(1));
            match queue.recv_timeout(wait) {
                Ok(message) => {
                    self.handle(&message)?;
                    // Take whatever else is queued before looking at the clocks again.
                    while let Ok(message) = queue.try_recv() {
                        self.handle(&message)?;
                        if self.batcher.is_due(Instant::now()) {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if let Some(batch) = self.batcher.take_if_due(now) {
                self.write(&batch, now)?;
            }
            self.summary.files += self.parquet.roll_due(now)?.len() as u64;
        }
        self.finish()
    }

    /// Flushes the batch and completes every file (shutdown).
    pub fn finish(mut self) -> Result<PipelineSummary, IngestError> {
        let now = Instant::now();
        if let Some(batch) = self.batcher.take() {
            self.write(&batch, now)?;
        }
        self.summary.files += self.parquet.close()?.len() as u64;
        self.dead_letters.close()?;
        Ok(self.summary)
    }

    fn write(&mut self, batch: &arrow_array::RecordBatch, now: Instant) -> Result<(), IngestError> {
        let started = Instant::now();
        let completed = self.parquet.write(batch, now)?;
        self.summary.files += completed.len() as u64;
        metrics::histogram!("meterflow_batch_write_seconds", "sink" => "parquet")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(rows = batch.num_rows(), "batch written to parquet");
        Ok(())
    }

    /// Decodes one message into the batch, or keeps it as a dead letter.
    pub fn handle(&mut self, message: &RawMessage) -> Result<(), IngestError> {
        self.summary.messages += 1;
        let route = match parse_topic(&message.topic) {
            Ok(route) => route,
            Err(reason) => return self.dead_letter(message, None, None, "bad_topic", reason),
        };
        match route {
            Route::Status { meter_id } => match decode_status(&message.payload) {
                Ok(status) => {
                    self.devices.observe(Observation {
                        meter_id,
                        received_at_ms: message.received_at_ms,
                        source: message.source.as_str(),
                        format: "status",
                        decode_error: false,
                        seq: None,
                        rows: 0,
                        status: Some(&status),
                        readings: &mut std::iter::empty(),
                    });
                    metrics::counter!("meterflow_status_updates_total").increment(1);
                    Ok(())
                }
                Err(e) => {
                    self.observe_error(meter_id, message, "status");
                    self.dead_letter(message, Some(meter_id), None, e.kind(), e.to_string())
                }
            },
            Route::Report { meter_id, format } => {
                // An MQTT 5 content-type, where present, wins over the topic suffix.
                let format = message
                    .content_type
                    .as_deref()
                    .and_then(Format::from_content_type)
                    .unwrap_or(format);
                let ctx = DecodeContext {
                    meter_id,
                    received_at_ms: message.received_at_ms,
                };
                match decode(format, &message.payload, &ctx) {
                    Ok(decoded) => self.accept(message, meter_id, format, &decoded),
                    Err(e) => self.reject(message, meter_id, format, &e),
                }
            }
        }
    }

    fn accept(
        &mut self,
        message: &RawMessage,
        meter_id: &str,
        format: Format,
        decoded: &Decoded<'_>,
    ) -> Result<(), IngestError> {
        let meta = RowMeta {
            meter_id,
            received_at_ms: message.received_at_ms,
            source: message.source,
            format,
        };
        let rows = decoded.append_to(self.batcher.builder(Instant::now()), &meta);
        self.summary.rows += rows as u64;
        metrics::counter!("meterflow_decoded_total", "format" => format.as_str()).increment(1);
        metrics::counter!("meterflow_rows_decoded_total", "format" => format.as_str())
            .increment(rows as u64);
        let readings = decoded
            .readings
            .iter()
            .map(|r| (r.channel.as_ref(), r.ts_ms, r.value, r.unit.as_ref()));
        let series = decoded.series.iter().filter_map(|s| {
            let last = s.values.len().checked_sub(1)?;
            Some((
                s.channel.as_ref(),
                s.ts_ms(last),
                s.values[last],
                s.unit.as_ref(),
            ))
        });
        self.devices.observe(Observation {
            meter_id,
            received_at_ms: message.received_at_ms,
            source: message.source.as_str(),
            format: format.as_str(),
            decode_error: !decoded.rejected.is_empty(),
            seq: decoded.seq,
            rows: rows as u64,
            status: decoded.status.as_ref(),
            readings: &mut readings.chain(series),
        });
        if decoded.rejected.is_empty() {
            return Ok(());
        }
        // Partly bad: the good rows are in; the payload is kept for the bad parts.
        let reasons: Vec<String> = decoded
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.position, r.reason))
            .collect();
        let reason = format!(
            "{format}: {} part(s) rejected, {rows} row(s) kept: {}",
            reasons.len(),
            reasons.join("; ")
        );
        self.dead_letter(message, Some(meter_id), Some(format), "partial", reason)
    }

    fn reject(
        &mut self,
        message: &RawMessage,
        meter_id: &str,
        format: Format,
        error: &DecodeError,
    ) -> Result<(), IngestError> {
        self.observe_error(meter_id, message, format.as_str());
        tracing::warn!(
            topic = %message.topic,
            meter_id,
            %format,
            error = %error,
            "payload did not decode; kept as a dead letter"
        );
        self.dead_letter(
            message,
            Some(meter_id),
            Some(format),
            error.kind(),
            error.to_string(),
        )
    }

    fn observe_error(&self, meter_id: &str, message: &RawMessage, format: &str) {
        self.devices.observe(Observation {
            meter_id,
            received_at_ms: message.received_at_ms,
            source: message.source.as_str(),
            format,
            decode_error: true,
            seq: None,
            rows: 0,
            status: None,
            readings: &mut std::iter::empty(),
        });
    }

    fn dead_letter(
        &mut self,
        message: &RawMessage,
        meter_id: Option<&str>,
        format: Option<Format>,
        kind: &'static str,
        reason: String,
    ) -> Result<(), IngestError> {
        metrics::counter!("meterflow_dead_letters_total", "reason" => kind).increment(1);
        self.summary.dead_letters += 1;
        let letter = DeadLetter {
            received_at_ms: message.received_at_ms,
            source: message.source.as_str().to_string(),
            topic: message.topic.clone(),
            meter_id: meter_id.map(str::to_string),
            format: format.map(|f| f.as_str().to_string()),
            kind: kind.to_string(),
            reason,
            payload: message.payload.to_vec(),
        };
        self.dead_letters.write(&letter)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_route_by_their_last_segment() {
        assert_eq!(
            parse_topic("meters/E1/pb"),
            Ok(Route::Report {
                meter_id: "E1",
                format: Format::Pb
            })
        );
        assert_eq!(
            parse_topic("meters/a.b_c-9/senml-cbor"),
            Ok(Route::Report {
                meter_id: "a.b_c-9",
                format: Format::SenmlCbor
            })
        );
        assert_eq!(
            parse_topic("meters/E1/status"),
            Ok(Route::Status { meter_id: "E1" })
        );
        assert!(parse_topic("meters/E1/xml")
            .unwrap_err()
            .contains("unknown format"));
        assert!(parse_topic("meters/E1").is_err());
        assert!(parse_topic("meters/E1/pb/extra").is_err());
        assert!(parse_topic("other/E1/pb").is_err());
        assert!(parse_topic("meters/E 1/pb")
            .unwrap_err()
            .contains("meter_id"));
        assert!(parse_topic(&format!("meters/{}/pb", "x".repeat(65))).is_err());
    }
}
