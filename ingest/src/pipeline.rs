//! The pipeline: takes raw messages off the queue, routes them by topic, decodes them into
//! the batcher, hands full batches to the sinks (through their seam, [`SinkSet`]), keeps what
//! does not decode as a dead letter, and tells the device registry what it heard. Runs on one
//! thread: decoding and Parquet writing are CPU and blocking work, and one thread keeps the
//! order.
//!
//! It handles WAL records strictly in LSN order. A record the queue skipped (the queue was
//! full), or that was in the WAL before start-up and not confirmed, is read from the WAL. What
//! the sinks have confirmed is [`crate::progress`]'s business: the pipeline tells it what each
//! holder (batcher, Parquet, side rows, ClickHouse writer) still holds.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterflow_decoders::dlms::{self, KeyLookup};
use meterflow_decoders::events::{self, Event, EventKind};
use meterflow_decoders::{
    decode, decode_status, DecodeContext, DecodeError, Decoded, Format, Refusal,
};
use meterflow_proto::{is_valid_meter_id, RowMeta};
use meterflow_storage::clickhouse::StatusRow;
use meterflow_storage::events::EventRow;
use meterflow_storage::wal::Checkpoint;
use meterflow_storage::{Batcher, DeadLetter, Hold, SinkBatch, SinkSet, WalReader};

use crate::credentials::SharedCredentials;
use crate::devices::{DeadLetterNote, DeviceRegistry, Observation};
use crate::dlms_profiles::PushProfiles;
use crate::dlms_replay::{Replay, ReplayGuard};
use crate::edge::{EdgeNoteKind, RawMessage};
use crate::error::IngestError;
use crate::meter_memory::{MeterMemory, Saved};
use crate::progress::{LsnMarks, Progress};

/// Where a topic sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Report { meter_id: &'a str, format: Format },
    Status { meter_id: &'a str },
}

impl Route<'_> {
    /// The meter the message is for.
    pub fn meter_id(&self) -> &str {
        match self {
            Route::Report { meter_id, .. } | Route::Status { meter_id } => meter_id,
        }
    }
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
    /// Messages read back from the WAL (replayed at start-up or skipped by the queue).
    pub from_wal: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub files: u64,
}

pub struct Pipeline {
    batcher: Batcher,
    /// Where the rows, status reports and dead letters go (Parquet, ClickHouse, the
    /// dead-letter files).
    sinks: SinkSet,
    devices: DeviceRegistry,
    data_dir: PathBuf,
    /// The next LSN to handle.
    next_lsn: u64,
    /// What the sinks confirmed; owns the checkpoint file.
    progress: Progress,
    /// Whether the rows in the batcher go to the local sinks too (false while a restart
    /// replays records that Parquet already has, for ClickHouse alone).
    batch_local: bool,
    /// For [`Pipeline::row_key`]: when this run started (Unix ms), and side rows without a
    /// WAL position so far.
    started_ms: u64,
    unlogged_rows: u64,
    summary: PipelineSummary,
    counters: Counters,
    /// The keys and system titles of DLMS meters (`None`: no store, as in some tests: a
    /// ciphered push is refused as `no_key`).
    credentials: Option<Arc<SharedCredentials>>,
    /// The highest invocation counter accepted per DLMS system title, kept with the
    /// checkpoint.
    dlms_replay: ReplayGuard,
    /// What each meter's events need remembered in this run (its conditions, its log, its
    /// counters): so that only news is written.
    memory: MeterMemory,
    /// What DLMS bodies are read with: push profiles, the zone of meter clocks.
    dlms_profiles: PushProfiles,
    /// The wrapper listener's copy of the counters, told each authenticated push accepted.
    listener_counters: Option<crate::edge::dlms::SharedCounters>,
}

/// Handles of the per-message counters, looked up in the metrics registry once per label set
/// (the registry's lookup hashes every label, for every message).
#[derive(Default)]
struct Counters {
    messages: std::collections::HashMap<(&'static str, &'static str), metrics::Counter>,
    decoded: std::collections::HashMap<&'static str, (metrics::Counter, metrics::Counter)>,
}

impl Counters {
    /// `meterflow_messages_total{source, format}`.
    fn messages(&mut self, source: &'static str, format: &'static str) -> &metrics::Counter {
        self.messages.entry((source, format)).or_insert_with(|| {
            metrics::counter!("meterflow_messages_total", "source" => source, "format" => format)
        })
    }

    /// `meterflow_decoded_total{format}` and `meterflow_rows_decoded_total{format}`.
    fn decoded(&mut self, format: &'static str) -> &(metrics::Counter, metrics::Counter) {
        self.decoded.entry(format).or_insert_with(|| {
            (
                metrics::counter!("meterflow_decoded_total", "format" => format),
                metrics::counter!("meterflow_rows_decoded_total", "format" => format),
            )
        })
    }
}

impl Pipeline {
    /// `checkpoint` says through which LSN every record is in every sink, and in the local
    /// ones (Parquet, dead-letter files): records between the two go to ClickHouse only.
    pub fn new(
        batcher: Batcher,
        sinks: SinkSet,
        devices: DeviceRegistry,
        data_dir: PathBuf,
        marks: Arc<LsnMarks>,
        checkpoint: Checkpoint,
    ) -> Self {
        let memory = MeterMemory::new(devices.config().max_devices);
        Pipeline {
            batcher,
            sinks,
            devices,
            progress: Progress::new(data_dir.clone(), marks, checkpoint),
            data_dir,
            next_lsn: checkpoint.all + 1,
            batch_local: true,
            started_ms: meterflow_proto::now_ms().max(0) as u64,
            unlogged_rows: 0,
            summary: PipelineSummary::default(),
            counters: Counters::default(),
            credentials: None,
            dlms_replay: ReplayGuard::default(),
            memory,
            dlms_profiles: PushProfiles::default(),
            listener_counters: None,
        }
    }

    /// The wrapper listener's copy of the DLMS counters, to tell of every authenticated push
    /// accepted (over any way in, and as the WAL is replayed at start-up).
    pub fn with_listener_counters(mut self, counters: crate::edge::dlms::SharedCounters) -> Self {
        self.listener_counters = Some(counters);
        self
    }

    /// The credential store DLMS pushes are opened with (keys by system title), the DLMS
    /// counters as of the checkpoint ([`ReplayGuard::load`]), and the push profiles and zones
    /// their bodies are read with.
    pub fn with_dlms(
        mut self,
        credentials: Arc<SharedCredentials>,
        replay: ReplayGuard,
        profiles: PushProfiles,
    ) -> Self {
        self.credentials = Some(credentials);
        self.dlms_replay = replay;
        self.dlms_profiles = profiles;
        self
    }

    /// Decodes a DLMS push for `meter_id`: its system title (when it carries one) must be
    /// that meter's; its keys open it; its invocation counter must be higher than the last
    /// one accepted from that system title.
    fn decode_dlms(
        &mut self,
        message: &RawMessage,
        meter_id: &str,
    ) -> Result<Decoded<'static>, DecodeError> {
        let store = self.credentials.as_ref().map(|c| c.current());
        let lookup = |st: &[u8; 8]| {
            let Some(store) = &store else {
                return KeyLookup::NoKey;
            };
            match store.meter_of_system_title(st) {
                Some(owner) if owner == meter_id => store
                    .get(owner)
                    .and_then(|c| c.dlms.as_ref())
                    .and_then(|d| d.keys())
                    .map_or(KeyLookup::NoKey, KeyLookup::Keys),
                Some(owner) => KeyLookup::Forbidden(format!(
                    "system title {} is meter {owner}'s, sent for meter {meter_id}",
                    dlms::apdu::hex(st)
                )),
                None => KeyLookup::Unknown,
            }
        };
        // The meter's push profile and clock zone: the one its credential names, else its
        // manufacturer's (the start of its system title).
        let identity = store
            .as_ref()
            .and_then(|s| s.get(meter_id))
            .and_then(|c| c.dlms.as_ref());
        let chosen = self
            .dlms_profiles
            .choose(
                identity.and_then(|d| d.profile.as_deref()),
                identity.map(|d| &d.system_title),
            )
            .map_err(|reason| DecodeError::Unsupported {
                format: Format::Dlms,
                position: meterflow_decoders::Position::Whole,
                reason: format!("meter {meter_id}: {reason}"),
            })?;
        // A meter with keys sends protected pushes only: authenticated when it has an
        // authentication key, at least encrypted when it has an encryption key. Anything less
        // (a push in clear, or stripped of its tag) could be anyone's. Checked on the security
        // header before anything is deciphered (a push downgraded from 0x30 to 0x20 would
        // otherwise be deciphered and read as `malformed`, its reason naming what it held),
        // and on the push as opened (one in clear has no header).
        let keys = identity.and_then(|d| d.keys());
        // Counters are per key: a re-keyed meter counts from 0 again.
        let key_check = identity.map_or(0, |d| d.key_check());
        let required = keys.map(|keys| {
            if keys.ak.is_some() {
                (0x10, "authenticated (security control with 0x10)")
            } else {
                (0x20, "encrypted (security control with 0x20)")
            }
        });
        let unprotected = |control: u8, in_clear: bool, what: &str| {
            DecodeError::Refused {
            format: Format::Dlms,
            refusal: Refusal::Unprotected,
            reason: format!(
                "meter {meter_id} has keys, so its pushes must be {what}; this one has security control 0x{control:02X}{}",
                if in_clear { " (none: in clear)" } else { "" }
            ),
        }
        };
        if let Some((needed, what)) = required {
            // Only for a push of the meter's own system title: another's is `unauthorized`,
            // whatever it claims (decided when it is opened).
            let own = |title: &[u8; 8]| {
                store.as_ref().and_then(|s| s.meter_of_system_title(title)) == Some(meter_id)
            };
            let claimed = dlms::frame::unframe(&message.payload)
                .ok()
                .and_then(|u| dlms::security_head(&u.apdu))
                .filter(|h| own(&h.system_title))
                .and_then(|h| h.control);
            if let Some(control) = claimed.filter(|c| c & needed == 0) {
                return Err(unprotected(control, false, what));
            }
        }
        let push = dlms::decode_push_in(
            &message.payload,
            message.received_at_ms,
            &lookup,
            &chosen.context(),
        )?;
        if let Some((needed, what)) = required {
            let control = push.security.map_or(0, |s| s.control);
            if control & needed == 0 {
                return Err(unprotected(control, push.security.is_none(), what));
            }
        }
        let ctx = DecodeContext {
            meter_id,
            received_at_ms: message.received_at_ms,
        };
        let decoded = meterflow_decoders::checked(Format::Dlms, push.decoded, &ctx)?;
        if let Some(security) = push.security {
            let counter = security.invocation_counter;
            if let Err(Replay { last }) =
                self.dlms_replay
                    .check(security.system_title, key_check, counter, message.lsn)
            {
                return Err(DecodeError::Refused {
                    format: Format::Dlms,
                    refusal: Refusal::Replay,
                    reason: format!(
                        "system title {}: invocation counter {counter}, not above the last accepted {last}",
                        dlms::apdu::hex(&security.system_title)
                    ),
                });
            }
            if let Some(listener) = &self.listener_counters {
                if security.control & 0x10 != 0 {
                    listener
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .note(security.system_title, key_check, counter);
                }
            }
        }
        Ok(decoded)
    }

    /// Runs until the queue is closed and empty, then flushes every sink.
    pub fn run(mut self, queue: Receiver<RawMessage>) -> Result<PipelineSummary, IngestError> {
        loop {
            let now = Instant::now();
            let wait = [self.batcher.time_left(now), self.sinks.next_roll_in(now)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(Duration::from_secs(1));
            match queue.recv_timeout(wait.min(Duration::from_millis(200))) {
                Ok(message) => {
                    self.take(message)?;
                    // Take whatever else is queued before looking at the clocks again.
                    while let Ok(message) = queue.try_recv() {
                        self.take(message)?;
                        if self.batcher.is_due(Instant::now()) {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Records the queue never got (it was full) while the link went quiet.
                    self.catch_up(self.progress.marks().committed.load(Ordering::Acquire) + 1)?;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if let Some((batch, oldest)) = self.batcher.take_if_due(now) {
                self.write(&batch, oldest, now)?;
            } else if self.batcher.rows() == 0 && self.sinks.has_side_rows() {
                self.send_side_rows()?;
            }
            let rolled = self.sinks.roll_due(now)?;
            self.summary.files += rolled as u64;
            self.checkpoint(rolled > 0)?;
        }
        // The link has committed and synced everything: take what the queue did not carry.
        self.catch_up(self.progress.marks().committed.load(Ordering::Acquire) + 1)?;
        self.finish()
    }

    /// Handles a message from the queue in LSN order, first reading from the WAL whatever
    /// came before it and was not handled yet.
    fn take(&mut self, message: RawMessage) -> Result<(), IngestError> {
        if message.lsn == 0 {
            return self.handle(&message);
        }
        if message.lsn < self.next_lsn {
            return Ok(()); // already read from the WAL
        }
        self.catch_up(message.lsn)?;
        self.handle(&message)?;
        self.next_lsn = message.lsn + 1;
        Ok(())
    }

    /// Handles the WAL records from `next_lsn` up to (not including) `until`.
    fn catch_up(&mut self, until: u64) -> Result<(), IngestError> {
        if until <= self.next_lsn {
            return Ok(());
        }
        let from = self.next_lsn;
        for record in WalReader::open(&self.data_dir, from - 1)? {
            let record = record?;
            if record.lsn >= until {
                break;
            }
            if record.lsn < self.next_lsn {
                continue;
            }
            let message = RawMessage::from(record);
            self.handle(&message)?;
            self.next_lsn = message.lsn + 1;
            self.summary.from_wal += 1;
            // A long replay is written in batches like live traffic, not held in memory.
            let now = Instant::now();
            if let Some((batch, oldest)) = self.batcher.take_if_due(now) {
                self.write(&batch, oldest, now)?;
            }
        }
        if self.next_lsn < until {
            // The WAL lost records (corruption cut at start-up): say so, do not stall on them.
            tracing::error!(
                from = self.next_lsn,
                until,
                "WAL records missing; continuing after them"
            );
            self.next_lsn = until;
        }
        tracing::debug!(from, until, "read records from the WAL");
        Ok(())
    }

    /// Whether a record still goes to the local sinks (Parquet, dead-letter files): not when
    /// a restart replays what they had already confirmed.
    fn is_local(&self, message: &RawMessage) -> bool {
        message.lsn == 0 || message.lsn > self.progress.saved().local
    }

    /// What each holder of unconfirmed data still holds: the sinks, and the batcher (its rows
    /// bound for the local sinks too, but while a restart replays records they have). Keeps
    /// the batches ClickHouse refused as dead letters on the way ([`SinkSet::take_stock`]).
    fn holds(&mut self) -> Result<Vec<Hold>, IngestError> {
        let mut holds = self.sinks.take_stock()?.holds;
        if let Some(oldest) = self.batcher.oldest_lsn() {
            holds.push(Hold {
                oldest,
                local: self.batch_local,
            });
        }
        Ok(holds)
    }

    /// Saves the checkpoint when it moved and a file completed (or a second passed), and lets
    /// the link drop the confirmed WAL segments.
    fn checkpoint(&mut self, file_completed: bool) -> Result<(), IngestError> {
        let handled_through = self.next_lsn - 1;
        let holds = self.holds()?;
        let confirmed = self.progress.confirmed(handled_through, &holds);
        let sinks = &mut self.sinks;
        let (replay, data_dir, on_disk) = (
            &mut self.dlms_replay,
            &self.data_dir,
            self.progress.saved().all,
        );
        self.progress
            .save(confirmed, file_completed, handled_through, || {
                sinks.make_durable()?;
                // The DLMS counters as of the checkpoint, before it is written.
                replay.persist(data_dir, confirmed.all, on_disk)
            })
    }

    /// Flushes the batch, completes every file, lets ClickHouse take what it can, and saves
    /// the checkpoint (shutdown). What ClickHouse could not take stays in the WAL.
    pub fn finish(mut self) -> Result<PipelineSummary, IngestError> {
        let now = Instant::now();
        if let Some((batch, oldest)) = self.batcher.take() {
            self.write(&batch, oldest, now)?;
        }
        // The batch is out: the side rows cover everything handled.
        self.summary.files += self.sinks.close(self.next_lsn - 1)? as u64;
        self.checkpoint(true)?;
        self.sinks.make_durable()?;
        // It stopped earlier and nothing was sent since: still a sink failure.
        self.sinks.check_stopped()?;
        Ok(self.summary)
    }

    fn write(
        &mut self,
        batch: &arrow_array::RecordBatch,
        oldest_lsn: Option<u64>,
        now: Instant,
    ) -> Result<(), IngestError> {
        let local = self.batch_local;
        // Every record before next_lsn is in this batch or an earlier one. Waits only while
        // ClickHouse is away and its queue and spool are full; the WAL holds what arrives
        // meanwhile.
        let completed = self.sinks.send(
            SinkBatch {
                rows: batch,
                oldest: oldest_lsn,
                through: self.next_lsn - 1,
                local,
                file_name: None,
            },
            now,
        )?;
        if !local {
            // A replayed batch Parquet already has: ClickHouse alone needed it.
            self.batch_local = true;
            tracing::debug!(
                rows = batch.num_rows(),
                "replayed batch sent to ClickHouse only"
            );
            return self.checkpoint(false);
        }
        self.summary.files += completed as u64;
        self.checkpoint(completed > 0)?;
        tracing::debug!(rows = batch.num_rows(), "batch written to the sinks");
        Ok(())
    }

    /// Sends status reports and dead letters to ClickHouse on their own (no readings waiting
    /// to carry them, or too many of them to wait). They confirm no further than the oldest
    /// row still in the batcher.
    fn send_side_rows(&mut self) -> Result<(), IngestError> {
        let through = match self.batcher.oldest_lsn() {
            Some(oldest) => (oldest - 1).min(self.next_lsn - 1),
            None => self.next_lsn - 1,
        };
        Ok(self.sinks.send_side_rows(through)?)
    }

    /// Sends the side rows early when many wait (a burst of dead letters carries payloads).
    fn flush_side_rows_if_large(&mut self) -> Result<(), IngestError> {
        if self.sinks.side_rows_due() {
            self.send_side_rows()?;
        }
        Ok(())
    }

    /// The key that makes a side row's insert idempotent: its WAL position, or for a message
    /// that never reached the WAL (LSN 0) a stand-in no WAL position takes (top bit set, from
    /// the start time and a count), so two such rows never collapse into one.
    fn row_key(&mut self, lsn: u64) -> u64 {
        if lsn > 0 {
            return lsn;
        }
        self.unlogged_rows += 1;
        (1 << 63) | (self.started_ms << 20).wrapping_add(self.unlogged_rows) & !(1 << 63)
    }

    /// Hands a status report to the sinks (ClickHouse's `device_status`, the status files),
    /// with its own time `ts_ms` (the newest reading of its message; for a bare status
    /// report, which has none, when it was received).
    fn queue_status(
        &mut self,
        meter_id: &str,
        message: &RawMessage,
        status: &meterflow_decoders::DeviceStatus,
        ts_ms: i64,
    ) -> Result<(), IngestError> {
        if !self.sinks.takes_status() {
            return Ok(());
        }
        let key = self.row_key(message.lsn);
        let local = self.is_local(message);
        let row = StatusRow {
            meter_id: meter_id.to_string(),
            at_ms: message.received_at_ms,
            ts_ms,
            battery_pct: status.battery_pct,
            rssi_dbm: status.rssi_dbm,
            rsrp_dbm: status.rsrp_dbm,
            snr_db: status.snr_db,
            firmware: status.firmware.clone(),
            error_flags: status.error_flags,
            source: message.source.as_str().to_string(),
            lsn: key,
        };
        self.sinks.status(row, message.lsn, local)?;
        self.flush_side_rows_if_large()
    }

    /// The events of a message of `meter_id` that are news ([`MeterMemory::news`]), with the
    /// meter's saved state for a meter first seen in this run.
    fn news(&mut self, lsn: u64, message: crate::meter_memory::Message<'_>) -> Vec<Event> {
        let devices = &self.devices;
        let meter_id = message.meter_id;
        self.memory.news(message, || {
            let d = devices.get(meter_id)?;
            // A message the saved state already counted (replayed from the WAL after a
            // restart): the state is past it, so its events are judged against nothing and
            // written again with their own times (the stores keep one of each).
            if lsn != 0 && lsn <= d.last_lsn {
                return None;
            }
            Some(Saved {
                flags: d.status.error_flags,
                firmware: d.status.firmware.clone(),
                format: Some(d.flags_format()),
            })
        })
    }

    /// Hands the events of `meter_id` a message carried (or that the edge saw) to the sinks
    /// (ClickHouse's `events`, the events files), counted by kind.
    fn queue_events(
        &mut self,
        meter_id: &str,
        message: &RawMessage,
        events: impl IntoIterator<Item = Event>,
        raw: &str,
    ) -> Result<(), IngestError> {
        let rows: Vec<EventRow> = events
            .into_iter()
            .map(|e| {
                metrics::counter!("meterflow_events_total", "kind" => e.kind.as_str()).increment(1);
                EventRow {
                    meter_id: meter_id.to_string(),
                    ts_ms: e.ts_ms,
                    kind: e.kind.as_str().to_string(),
                    severity: e.kind.severity().as_str().to_string(),
                    source: message.source.as_str().to_string(),
                    code: e.code,
                    detail: e.detail,
                    raw: raw.to_string(),
                }
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let local = self.is_local(message);
        self.sinks.events(rows, message.lsn, local)?;
        self.flush_side_rows_if_large()
    }

    /// Decodes one message into the batch, or keeps it as a dead letter.
    pub fn handle(&mut self, message: &RawMessage) -> Result<(), IngestError> {
        self.summary.messages += 1;
        self.progress
            .note_received(message.lsn, message.received_at_ms);
        if let Some(refusal) = message
            .edge_note
            .as_deref()
            .filter(|r| r.kind == EdgeNoteKind::Unauthorized)
        {
            // Refused at the edge (not this identity's to publish): a dead letter, and a
            // `forged_publish` event of the meter whose topic it used.
            self.counters
                .messages(message.source.as_str(), "refused")
                .increment(1);
            self.dead_letter(
                message,
                refusal.identity.as_deref(),
                None,
                "unauthorized",
                refusal.describe(),
            )?;
            if let Some(meter_id) = claimed_meter(&message.topic) {
                let forged = Event {
                    kind: EventKind::ForgedPublish,
                    ts_ms: message.received_at_ms,
                    code: refusal
                        .identity
                        .as_deref()
                        .unwrap_or("anonymous")
                        .to_string(),
                    detail: refusal.describe(),
                    ongoing: false,
                };
                return self.queue_events(meter_id, message, [forged], &message.topic);
            }
            return Ok(());
        }
        if let Some(gateway) = message.via.as_deref() {
            // A gateway's message for one of its meters: the gateway is heard too.
            self.devices.observe(Observation {
                meter_id: gateway,
                lsn: message.lsn,
                received_at_ms: message.received_at_ms,
                source: message.source.as_str(),
                format: "gateway",
                decode_error: false,
                seq: None,
                rows: 0,
                status: None,
                readings: &mut std::iter::empty(),
            });
        }
        let route = parse_topic(&message.topic);
        let format = match &route {
            Ok(Route::Status { .. }) => "status",
            Ok(Route::Report { format, .. }) => message
                .content_type
                .as_deref()
                .and_then(Format::from_content_type)
                .unwrap_or(*format)
                .as_str(),
            Err(_) => "none",
        };
        self.counters
            .messages(message.source.as_str(), format)
            .increment(1);
        let route = match route {
            Ok(route) => route,
            // An identified device's (the edge says who sent it: `EdgeNoteKind::BadTopic`):
            // the dead letter names the sender and counts for it, as an `unauthorized` one does.
            Err(reason) => {
                let sender = message.edge_note.as_deref();
                let identity = sender.and_then(|s| s.identity.as_deref());
                let reason = match sender {
                    Some(sender) => format!("{reason} {}", sender.sender()),
                    None => reason,
                };
                return self.dead_letter(message, identity, None, "bad_topic", reason);
            }
        };
        match route {
            Route::Status { meter_id } => match decode_status(&message.payload) {
                Ok(status) => {
                    // meterflow's status bits, as in a JSON or protobuf report (news against
                    // the meter's state before this report).
                    let ts_ms = message.received_at_ms;
                    let flagged = events::status_events(Format::Json, status.error_flags, ts_ms);
                    let events = self.news(
                        message.lsn,
                        crate::meter_memory::Message {
                            meter_id,
                            format: Format::Json,
                            status: Some(&status),
                            decoded: &flagged,
                            readings: &[],
                            ts_ms,
                        },
                    );
                    self.devices.observe(Observation {
                        meter_id,
                        lsn: message.lsn,
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
                    self.queue_status(meter_id, message, &status, message.received_at_ms)?;
                    let raw = flags_text(status.error_flags);
                    self.queue_events(meter_id, message, events, &raw)
                }
                Err(e) => {
                    // The dead letter first: once the device's counts show the message, its
                    // dead letter is there too.
                    let kept =
                        self.dead_letter(message, Some(meter_id), None, e.kind(), e.to_string());
                    self.observe_error(meter_id, message, "status");
                    kept
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
                let decoded = match format {
                    Format::Dlms => self.decode_dlms(message, meter_id),
                    _ => decode(format, &message.payload, &ctx),
                };
                match decoded {
                    Ok(decoded) => self.accept(message, meter_id, format, &decoded),
                    Err(e) => {
                        if let DecodeError::Refused { refusal, .. } = &e {
                            metrics::counter!("meterflow_dlms_rejected_total", "reason" => refusal.as_str())
                                .increment(1);
                        }
                        self.reject(message, meter_id, format, &e)
                    }
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
        let rows = if decoded.row_count() > 0 {
            let local = self.is_local(message);
            if local != self.batch_local {
                // One batch, one set of sinks: finish the batch on the other side first.
                if let Some((batch, oldest)) = self.batcher.take() {
                    self.write(&batch, oldest, Instant::now())?;
                }
                self.batch_local = local;
            }
            let rows = decoded.append_to(self.batcher.builder(Instant::now()), &meta);
            if message.lsn > 0 {
                self.batcher.note_lsn(message.lsn);
            }
            rows
        } else {
            0
        };
        self.summary.rows += rows as u64;
        let (decoded_total, rows_total) = self.counters.decoded(format.as_str());
        decoded_total.increment(1);
        rows_total.increment(rows as u64);
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
        // The report's own time: its newest reading (a report of status alone: received).
        let ts_ms = decoded.report_ts(message.received_at_ms);
        if let Some(status) = &decoded.status {
            self.queue_status(meter_id, message, status, ts_ms)?;
        }
        let events = self.news(
            message.lsn,
            crate::meter_memory::Message {
                meter_id,
                format,
                status: decoded.status.as_ref(),
                decoded: &decoded.events,
                readings: &decoded.readings,
                ts_ms,
            },
        );
        if !events.is_empty() {
            let raw = flags_text(decoded.status.as_ref().and_then(|s| s.error_flags));
            self.queue_events(meter_id, message, events, &raw)?;
        }
        self.devices.observe(Observation {
            meter_id,
            lsn: message.lsn,
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
        tracing::warn!(
            topic = %message.topic,
            meter_id,
            %format,
            error = %error,
            "payload did not decode; kept as a dead letter"
        );
        // The dead letter first: once the device's counts show the message, its dead letter
        // is there too.
        let kept = self.dead_letter(
            message,
            Some(meter_id),
            Some(format),
            error.kind(),
            error.to_string(),
        );
        self.observe_error(meter_id, message, format.as_str());
        kept?;
        // A replayed or forged DLMS push is an event of its meter too.
        if let DecodeError::Refused {
            refusal, reason, ..
        } = error
        {
            let kind = match refusal {
                Refusal::Replay => Some(EventKind::ReplayRejected),
                Refusal::AuthFailed => Some(EventKind::AuthFailed),
                _ => None,
            };
            if let Some(kind) = kind {
                let event = Event {
                    kind,
                    ts_ms: message.received_at_ms,
                    code: refusal.as_str().to_string(),
                    detail: reason.clone(),
                    ongoing: false,
                };
                return self.queue_events(meter_id, message, [event], &message.topic);
            }
        }
        Ok(())
    }

    fn observe_error(&self, meter_id: &str, message: &RawMessage, format: &str) {
        self.devices.observe(Observation {
            meter_id,
            lsn: message.lsn,
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
        // The key that makes its ClickHouse row idempotent (only made for ClickHouse: a
        // stand-in for a message outside the WAL is counted).
        let key = if self.sinks.has_clickhouse() {
            self.row_key(message.lsn)
        } else {
            0
        };
        let local = self.is_local(message);
        self.sinks.dead_letter(&letter, message.lsn, key, local)?;
        self.flush_side_rows_if_large()?;
        if let Some(meter_id) = meter_id {
            let mut reason = letter.reason;
            if reason.len() > 300 {
                let mut end = 300;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            self.devices.note_dead_letter(
                meter_id,
                message.lsn,
                DeadLetterNote {
                    received_at_ms: letter.received_at_ms,
                    kind: letter.kind,
                    reason,
                    bytes: letter.payload.len(),
                },
            );
        }
        Ok(())
    }
}

/// The meter a refused message claimed to be for: its MQTT topic's `meters/{id}/...`, or a
/// CoAP report's `/r/{id}`. (An LwM2M registration names an endpoint, not always a meter.)
fn claimed_meter(topic: &str) -> Option<&str> {
    match parse_topic(topic) {
        Ok(Route::Report { meter_id, .. } | Route::Status { meter_id }) => Some(meter_id),
        Err(_) => topic.strip_prefix("/r/").filter(|id| is_valid_meter_id(id)),
    }
}

/// A status's flags as the events' `raw` text (`error_flags=0x14`; empty without flags).
fn flags_text(flags: Option<u32>) -> String {
    flags.map_or_else(String::new, |f| format!("error_flags=0x{f:x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_proto::Source;
    use meterflow_storage::{
        BatchConfig, DeadLetterStore, ParquetConfig, ParquetSink, Wal, WalConfig,
    };

    /// Appends `n` one-row JSON reports (meter `m{i}`, value `i`) to the WAL of `dir`.
    fn fill_wal(dir: &std::path::Path, n: usize) -> u64 {
        let (mut wal, _) = Wal::open(dir, WalConfig::default()).unwrap();
        let mut last = 0;
        for i in 1..=n {
            let payload = format!(
                r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":1719792000000,"value":{i},"unit":"kWh"}}]}}"#
            );
            last = wal
                .append(&meterflow_storage::NewRecord {
                    received_at_ms: 1_719_792_000_000,
                    source: Source::Mqtt,
                    topic: &format!("meters/m{i}/json"),
                    content_type: None,
                    edge_note: None,
                    payload: payload.as_bytes(),
                })
                .unwrap();
        }
        wal.commit(true).unwrap();
        last
    }

    /// A pipeline on `dir` as `serve` makes one at start-up: from the checkpoint on disk.
    fn start(dir: &std::path::Path, committed: u64) -> Pipeline {
        let marks = Arc::new(LsnMarks::default());
        marks.committed.store(committed, Ordering::Release);
        let checkpoint = meterflow_storage::wal::read_checkpoint(dir).unwrap();
        Pipeline::new(
            Batcher::new(BatchConfig {
                max_rows: 3,
                max_age_ms: 3_600_000,
                ..BatchConfig::default()
            }),
            SinkSet::new(
                Some(
                    ParquetSink::open(
                        dir,
                        ParquetConfig {
                            file_max_rows: 4,
                            file_max_age_s: 3600,
                            ..ParquetConfig::default()
                        },
                        "",
                    )
                    .unwrap(),
                ),
                None,
                DeadLetterStore::open(dir, "").unwrap(),
                "clickhouse",
            ),
            DeviceRegistry::load(dir, crate::devices::DevicesConfig::default()).unwrap(),
            dir.to_path_buf(),
            marks,
            checkpoint,
        )
    }

    /// How many rows of each meter the complete Parquet files hold.
    fn rows_per_meter(dir: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
        use arrow_array::cast::AsArray;
        let mut counts = std::collections::BTreeMap::new();
        let mut folders = vec![dir.join("readings")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "parquet") {
                    continue;
                }
                let file = std::fs::File::open(&path).unwrap();
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let meters = batch.column(0).as_string::<i32>();
                    for i in 0..batch.num_rows() {
                        *counts.entry(meters.value(i).to_string()).or_insert(0) += 1;
                    }
                }
            }
        }
        counts
    }

    /// Replay after each kind of crash point, in process: the pipeline handles the WAL up to
    /// a point and is dropped without its destructors (a kill -9), then a new one starts from
    /// the checkpoint on disk and replays. Every record's row must be there once, but in the
    /// window between a Parquet file's rename and the checkpoint's write: there the sink is
    /// at least once (DESIGN.md), and the test shows it (the file's rows come again).
    #[test]
    fn replay_after_each_crash_point_stores_every_row_once() {
        const RECORDS: usize = 10;
        // (crash point, records handled before the crash, whether the checkpoint is then
        // set back to before the last complete file: a crash between the file's rename and
        // the checkpoint's write)
        let cases: [(&str, u64, bool); 6] = [
            ("before anything was handled", 0, false),
            ("rows in the batcher", 2, false),
            ("a batch in a file not yet complete", 4, false),
            ("a file complete and the checkpoint saved", 6, false),
            (
                "every record handled, nothing flushed",
                RECORDS as u64,
                false,
            ),
            ("a file complete, the checkpoint not yet saved", 6, true),
        ];
        for (case, handled, checkpoint_lost) in cases {
            let dir = tempfile::tempdir().unwrap();
            let last = fill_wal(dir.path(), RECORDS);
            let mut first = start(dir.path(), last);
            first.catch_up(handled + 1).unwrap();
            let saved = first.progress.saved();
            if checkpoint_lost {
                assert!(saved.local > 0, "{case}: a file completed");
                meterflow_storage::wal::write_checkpoint(dir.path(), Checkpoint::default())
                    .unwrap();
            }
            std::mem::forget(first); // kill -9: no flush, no destructor

            let (_tx, queue) = std::sync::mpsc::sync_channel::<RawMessage>(1);
            drop(_tx);
            let on_disk = meterflow_storage::wal::read_checkpoint(dir.path()).unwrap();
            let summary = start(dir.path(), last).run(queue).unwrap();
            assert_eq!(
                summary.from_wal,
                last - on_disk.all,
                "{case}: the replay is every record after the checkpoint"
            );
            let counts = rows_per_meter(dir.path());
            for i in 1..=RECORDS {
                let n = counts.get(&format!("m{i}")).copied().unwrap_or(0);
                if checkpoint_lost {
                    // The documented window of the at-least-once Parquet sink: the records of
                    // a file completed just before the crash are written again.
                    assert!(n >= 1, "{case}: m{i} lost");
                } else {
                    assert_eq!(n, 1, "{case}: m{i} stored {n} times ({counts:?})");
                }
            }
            let after = meterflow_storage::wal::read_checkpoint(dir.path()).unwrap();
            assert_eq!(
                after.all, last,
                "{case}: everything confirmed after the clean stop"
            );
        }
    }

    /// A status report goes to the status files with its own time: the newest reading of its
    /// message (a bare one, which has none: when it was received), and `at` the receive time.
    #[test]
    fn status_reports_reach_their_files_with_their_own_time() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let checkpoint = meterflow_storage::wal::read_checkpoint(dir).unwrap();
        let mut pipeline = Pipeline::new(
            Batcher::new(BatchConfig::default()),
            SinkSet::new(
                Some(ParquetSink::open(dir, ParquetConfig::default(), "").unwrap()),
                None,
                DeadLetterStore::open(dir, "").unwrap(),
                "clickhouse",
            )
            .with_status_files(
                ParquetSink::open_status(dir, ParquetConfig::default(), "").unwrap(),
            ),
            DeviceRegistry::load(dir, crate::devices::DevicesConfig::default()).unwrap(),
            dir.to_path_buf(),
            Arc::new(LsnMarks::default()),
            checkpoint,
        );
        let received = 1_719_900_000_000;
        let message = |lsn: u64, topic: &str, payload: &str| RawMessage {
            lsn,
            topic: topic.into(),
            payload: bytes::Bytes::from(payload.to_string()),
            source: Source::Mqtt,
            received_at_ms: received,
            content_type: None,
            edge_note: None,
            via: None,
        };
        pipeline
            .handle(&message(
                1,
                "meters/s1/json",
                r#"{"readings": [{"channel": "1-0:1.8.0", "ts": 1719792000000, "value": 1, "unit": "kWh"},
                                 {"channel": "1-0:2.8.0", "ts": 1719795600000, "value": 2, "unit": "kWh"}],
                    "status": {"error_flags": 4, "battery_pct": 90}}"#,
            ))
            .unwrap();
        pipeline
            .handle(&message(2, "meters/s1/status", r#"{"rssi_dbm": -70}"#))
            .unwrap();
        pipeline.finish().unwrap();
        let stored = meterflow_storage::status::read_parquet(dir, &Default::default()).unwrap();
        let times: Vec<(i64, i64, Option<u32>)> = stored
            .iter()
            .map(|r| (r.at_ms, r.ts_ms, r.error_flags))
            .collect();
        assert_eq!(
            times,
            [
                (received, 1_719_795_600_000, Some(4)),
                (received, received, None)
            ]
        );
        assert_eq!(stored[0].battery_pct, Some(90));
        assert_eq!(stored[1].rssi_dbm, Some(-70));
    }

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

    /// Review 22, M4: a push downgraded to "encrypted only" (0x21) for a meter with an
    /// authentication key is refused as `unprotected` on its security header, before it is
    /// deciphered; not deciphered and read as `malformed` (the bytes after it, as its stripped
    /// tag would leave, make the notification unreadable), with a reason that names nothing
    /// of its content.
    #[test]
    fn a_downgraded_push_is_unprotected_before_it_is_deciphered() {
        use crate::credentials::{Credential, CredentialStore, DlmsIdentity, Secret};
        let text = include_str!(
            "../../decoders/tests/fixtures/dlms/fneur_smart_meter_tirol/apdu_ciphered.hex"
        );
        let digits: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(str::chars)
            .filter(char::is_ascii_hexdigit)
            .collect();
        let mut apdu: Vec<u8> = (0..digits.len() / 2)
            .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!((apdu[10], apdu[13]), (0x82, 0x21));
        apdu.extend_from_slice(&[0xA5; 12]);
        let len = u16::from_be_bytes([apdu[11], apdu[12]]) + 12;
        apdu[11..13].copy_from_slice(&len.to_be_bytes());
        let mut store = CredentialStore::default();
        store
            .add(
                "E1",
                Credential {
                    secret: Secret::new("e1-secret-0123456789").unwrap(),
                    publish_for: Vec::new(),
                    dlms: DlmsIdentity::parse(
                        "4B464D1010000023",
                        "101112131415161718191A1B1C1D1E1F",
                        "000102030405060708090A0B0C0D0E0F",
                        "",
                    )
                    .unwrap(),
                },
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut pipeline = start(dir.path(), 0).with_dlms(
            Arc::new(SharedCredentials::in_memory(store)),
            ReplayGuard::default(),
            PushProfiles::default(),
        );
        let message = RawMessage::new(
            Source::Mqtt,
            "meters/E1/dlms".into(),
            bytes::Bytes::from(apdu),
        );
        match pipeline.decode_dlms(&message, "E1") {
            Err(DecodeError::Refused {
                refusal: Refusal::Unprotected,
                reason,
                ..
            }) => assert!(reason.contains("0x21"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Review 22 (round 3), M2: the same push published for another meter (with keys of
        // its own) is `unauthorized`: the title is E1's, whatever protection it claims.
        let mut store = (*pipeline.credentials.as_ref().unwrap().current()).clone();
        store
            .add(
                "E2",
                Credential {
                    secret: Secret::new("e2-secret-0123456789").unwrap(),
                    publish_for: Vec::new(),
                    dlms: DlmsIdentity::parse(
                        "4B464D1010000099",
                        "101112131415161718191A1B1C1D1E1F",
                        "000102030405060708090A0B0C0D0E0F",
                        "",
                    )
                    .unwrap(),
                },
            )
            .unwrap();
        pipeline.credentials = Some(Arc::new(SharedCredentials::in_memory(store)));
        let message = RawMessage::new(
            Source::Mqtt,
            "meters/E2/dlms".into(),
            message.payload.clone(),
        );
        match pipeline.decode_dlms(&message, "E2") {
            Err(DecodeError::Refused {
                refusal: Refusal::Unauthorized,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
