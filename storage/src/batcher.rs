//! The batcher: one growing Arrow batch of readings, flushed when it holds enough rows or
//! bytes, or when its oldest row has waited long enough.

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use meterflow_proto::ReadingBatchBuilder;
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// When a batch is handed to the sinks: whichever limit is reached first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Flush at this many rows.
    pub max_rows: usize,
    /// Flush at about this many bytes of row data in memory.
    pub max_bytes: usize,
    /// Flush when the oldest row has waited this many milliseconds.
    pub max_age_ms: u64,
}

impl BatchConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), StorageError> {
        StorageError::positive("batch.max_rows", self.max_rows as u64)?;
        StorageError::positive("batch.max_bytes", self.max_bytes as u64)
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 100_000,
            max_bytes: 32 * 1024 * 1024,
            max_age_ms: 1_000,
        }
    }
}

/// Collects rows; the caller appends through [`Batcher::builder`] and asks
/// [`Batcher::take_if_due`] after each message.
pub struct Batcher {
    config: BatchConfig,
    builder: ReadingBatchBuilder,
    first_row_at: Option<Instant>,
    oldest_lsn: Option<u64>,
}

impl Batcher {
    pub fn new(config: BatchConfig) -> Self {
        let capacity = config.max_rows.clamp(1, 1 << 20);
        Batcher {
            builder: ReadingBatchBuilder::with_capacity(capacity),
            config,
            first_row_at: None,
            oldest_lsn: None,
        }
    }

    /// Notes that rows of the WAL record `lsn` are in the batch (call with the builder).
    pub fn note_lsn(&mut self, lsn: u64) {
        if lsn == 0 {
            return; // not in the WAL
        }
        self.oldest_lsn = Some(self.oldest_lsn.map_or(lsn, |o| o.min(lsn)));
    }

    /// The oldest WAL record with rows in the batch.
    pub fn oldest_lsn(&self) -> Option<u64> {
        self.oldest_lsn
    }

    /// The builder to append rows to; the age clock starts with the first row.
    pub fn builder(&mut self, now: Instant) -> &mut ReadingBatchBuilder {
        if self.first_row_at.is_none() {
            self.first_row_at = Some(now);
        }
        &mut self.builder
    }

    pub fn rows(&self) -> usize {
        self.builder.len()
    }

    /// Whether a limit is reached.
    pub fn is_due(&self, now: Instant) -> bool {
        if self.builder.is_empty() {
            return false;
        }
        self.builder.len() >= self.config.max_rows
            || self.builder.approx_bytes() >= self.config.max_bytes
            || self.time_left(now) == Some(Duration::ZERO)
    }

    /// How long until the age limit flushes the batch; `None` when it is empty.
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        if self.builder.is_empty() {
            return None;
        }
        let first = self.first_row_at?;
        let max_age = Duration::from_millis(self.config.max_age_ms);
        Some(max_age.saturating_sub(now.saturating_duration_since(first)))
    }

    /// The batch and the oldest WAL record in it, if a limit is reached.
    pub fn take_if_due(&mut self, now: Instant) -> Option<(RecordBatch, Option<u64>)> {
        if self.is_due(now) {
            self.take()
        } else {
            None
        }
    }

    /// The batch as it is (on shutdown) and the oldest WAL record in it (`None` when no row
    /// came from the WAL); `None` when empty.
    pub fn take(&mut self) -> Option<(RecordBatch, Option<u64>)> {
        self.first_row_at = None;
        if self.builder.is_empty() {
            return None;
        }
        let oldest = self.oldest_lsn.take();
        Some((self.builder.finish(), oldest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_proto::{Format, RowMeta, Source};

    const META: RowMeta<'static> = RowMeta {
        meter_id: "m",
        received_at_ms: 1,
        source: Source::Mqtt,
        format: Format::Pb,
    };

    fn push(b: &mut Batcher, now: Instant, n: usize) {
        for i in 0..n {
            b.builder(now).append(&META, "c", i as i64, 1.0, "kWh", 0);
            b.note_lsn(10 + i as u64);
        }
    }

    #[test]
    fn an_empty_batch_never_comes_due() {
        let mut b = Batcher::new(BatchConfig {
            max_age_ms: 1,
            ..Default::default()
        });
        let t0 = Instant::now();
        let _ = b.builder(t0); // touched, but no row appended
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.time_left(later), None);
        assert!(!b.is_due(later));
        assert!(b.take().is_none());
    }

    #[test]
    fn the_oldest_wal_record_travels_with_the_batch() {
        let mut b = Batcher::new(BatchConfig::default());
        let now = Instant::now();
        assert_eq!(b.oldest_lsn(), None);
        push(&mut b, now, 3);
        b.note_lsn(7);
        assert_eq!(b.oldest_lsn(), Some(7));
        assert_eq!(b.take().map(|(_, lsn)| lsn), Some(Some(7)));
        assert_eq!(b.oldest_lsn(), None);
    }

    #[test]
    fn flushes_on_rows() {
        let mut b = Batcher::new(BatchConfig {
            max_rows: 3,
            ..Default::default()
        });
        let now = Instant::now();
        push(&mut b, now, 2);
        assert!(b.take_if_due(now).is_none());
        push(&mut b, now, 1);
        assert_eq!(b.take_if_due(now).map(|(b, _)| b.num_rows()), Some(3));
        assert_eq!(b.rows(), 0);
        assert!(b.take().is_none());
    }

    #[test]
    fn flushes_on_bytes() {
        let mut b = Batcher::new(BatchConfig {
            max_bytes: 200,
            ..Default::default()
        });
        let now = Instant::now();
        push(&mut b, now, 3);
        assert!(!b.is_due(now));
        push(&mut b, now, 3);
        assert!(b.is_due(now));
    }

    #[test]
    fn flushes_on_age_of_the_first_row() {
        let mut b = Batcher::new(BatchConfig {
            max_age_ms: 500,
            ..Default::default()
        });
        let t0 = Instant::now();
        assert_eq!(b.time_left(t0), None);
        push(&mut b, t0, 1);
        push(&mut b, t0 + Duration::from_millis(400), 1);
        assert_eq!(
            b.time_left(t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(100))
        );
        assert!(!b.is_due(t0 + Duration::from_millis(499)));
        assert!(b.is_due(t0 + Duration::from_millis(500)));
        assert_eq!(b.take().map(|(b, _)| b.num_rows()), Some(2));
        assert_eq!(b.time_left(t0 + Duration::from_secs(9)), None);
    }
}
