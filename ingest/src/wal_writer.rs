//! The WAL writer: the one owner of the write-ahead log. Each edge (the MQTT server, the CoAP
//! server, the DLMS listener) hands it [`Submission`]s through a bounded channel of its own,
//! so a flood on one cannot crowd out the others: each round takes at most a group
//! (`MAX_GROUP`) in all, first an equal share from each edge, then what the others left of the
//! group, and the edge served first turns with each round ([`take_round`]). It appends them,
//! commits them as a group (one flush, and fsync by policy, per burst; always an fsync when a
//! submission in the group waits for durability), tells the
//! edges that wait (MQTT PUBACKs and CoAP answers go out only then), and offers each message
//! to the pipeline queue without waiting: when the queue is full the message is in the WAL
//! only and the pipeline reads it from there, so a slow sink never holds an edge up.
//!
//! It also deletes the WAL segments every sink has confirmed, and owes the interval fsync
//! even when idle. It ends when every edge has dropped its sender (shutdown) or the pipeline
//! is gone, with a final fsync.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use flume::Receiver;
use std::time::Duration;

use meterflow_storage::{NewRecord, Wal};

use crate::edge::{Durability, RawMessage, Submission};
use crate::progress::LsnMarks;

/// What the writer did, for the shutdown summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterSummary {
    pub messages: u64,
    /// Messages not written because the WAL was at its disk budget.
    pub wal_overflow: u64,
}

/// Messages appended before a group commit at the latest.
const MAX_GROUP: usize = 4096;
/// How long an idle writer sleeps before its housekeeping (interval fsync, segment removal).
const IDLE_TICK: Duration = Duration::from_millis(50);

/// What the writer takes from: each edge's channel.
pub struct Inputs {
    pub mqtt: Receiver<Submission>,
    pub coap: Receiver<Submission>,
    pub dlms: Receiver<Submission>,
}

/// Takes what waits in `inputs` (those still `open`; one found disconnected is marked so), at
/// most `room` in all, handing each to `take`: first up to an equal share of `room` from each
/// open input, from `first` on; then, in the same order, what the others left of `room`. So an
/// edge that floods its channel gets its share and what the quiet ones leave, never theirs,
/// and no edge is always served first. Returns how many it took.
fn take_round<T>(
    inputs: &[&Receiver<T>],
    open: &mut [bool],
    first: usize,
    room: usize,
    mut take: impl FnMut(T),
) -> usize {
    let n = inputs.len();
    let share = (room / open.iter().filter(|o| **o).count().max(1)).max(1);
    let mut taken = 0;
    for quota in [share, room] {
        for i in (0..n).map(|k| (first + k) % n) {
            let mut from_this = 0;
            while open[i] && from_this < quota && taken < room {
                match inputs[i].try_recv() {
                    Ok(next) => {
                        take(next);
                        from_this += 1;
                        taken += 1;
                    }
                    Err(flume::TryRecvError::Empty) => break,
                    Err(flume::TryRecvError::Disconnected) => open[i] = false,
                }
            }
        }
    }
    taken
}

/// Runs the writer on its own thread until every sender is dropped or the pipeline is gone.
pub fn spawn(
    wal: Wal,
    marks: Arc<LsnMarks>,
    inputs: Inputs,
    queue: SyncSender<RawMessage>,
) -> std::io::Result<std::thread::JoinHandle<WriterSummary>> {
    std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || {
            let mut writer = Writer {
                wal,
                marks,
                queue,
                group: Vec::with_capacity(MAX_GROUP),
                summary: WriterSummary::default(),
                removed_through: 0,
            };
            writer.run(&inputs);
            writer.summary
        })
}

struct Writer {
    wal: Wal,
    marks: Arc<LsnMarks>,
    queue: SyncSender<RawMessage>,
    /// Appended, not yet committed and handed on.
    group: Vec<Submission>,
    summary: WriterSummary,
    removed_through: u64,
}

impl Writer {
    fn run(&mut self, inputs: &Inputs) {
        let inputs = [&inputs.coap, &inputs.dlms, &inputs.mqtt];
        let mut open = [true; 3];
        // The input served first this round: each round the next.
        let mut first = 0;
        while open.contains(&true) {
            // What is waiting, each input its share.
            take_round(&inputs, &mut open, first, MAX_GROUP, |s| self.accept(s));
            first = (first + 1) % inputs.len();
            if self.group.is_empty() && open.contains(&true) {
                // Nothing waiting: sleep until something comes or the idle tick.
                let mut selector = flume::Selector::new();
                for (i, rx) in inputs.iter().enumerate() {
                    if open[i] {
                        selector = selector.recv(rx, move |r| (i, r));
                    }
                }
                match selector.wait_timeout(IDLE_TICK) {
                    Ok((_, Ok(next))) => self.accept(next),
                    Ok((i, Err(_))) => open[i] = false,
                    Err(_) => {}
                }
            }
            if !self.commit() {
                return;
            }
        }
        self.commit();
        if let Err(e) = self.wal.sync() {
            tracing::error!(error = %e, "final WAL sync");
        }
    }

    /// Appends one message to the WAL, or refuses it when the WAL is at its budget.
    fn accept(&mut self, mut submission: Submission) {
        self.summary.messages += 1;
        let message = &mut submission.message;
        // The refusal is JSON in the WAL only (storage keeps it as text).
        let edge_note = message.edge_note.as_ref().map(|n| n.to_wal());
        let record = NewRecord {
            received_at_ms: message.received_at_ms,
            source: message.source,
            topic: &message.topic,
            content_type: message.content_type.as_deref(),
            edge_note: edge_note.as_deref(),
            payload: &message.payload,
        };
        if !self.wal.has_room(&record) {
            self.summary.wal_overflow += 1;
            metrics::counter!("meterflow_wal_overflow_total").increment(1);
            if self.summary.wal_overflow.is_power_of_two() {
                tracing::error!(
                    dropped = self.summary.wal_overflow,
                    wal_bytes = self.wal.bytes(),
                    "WAL at its disk budget (wal.max_bytes): messages are refused until the sinks catch up"
                );
            }
            if let Some(notify) = submission.notify {
                let _ = notify.send(Durability::WalFull);
            }
            return;
        }
        match self.wal.append(&record) {
            Ok(lsn) => message.lsn = lsn,
            Err(e) => {
                metrics::counter!("meterflow_wal_errors_total").increment(1);
                self.marks
                    .wal_error_at_ms
                    .store(meterflow_proto::now_ms(), Ordering::Relaxed);
                if let Some(notify) = submission.notify {
                    tracing::error!(error = %e, topic = %message.topic, "WAL append failed; the sender is told to retry");
                    let _ = notify.send(Durability::Failed);
                    return;
                }
                tracing::error!(error = %e, topic = %message.topic, "WAL append failed; the message goes to the pipeline without it");
                message.lsn = 0;
            }
        }
        self.group.push(submission);
    }

    /// Commits the group, makes it durable where a sender waits for that, tells those
    /// senders, offers the messages to the pipeline and drops the segments every sink has
    /// confirmed. Returns false when the pipeline is gone.
    fn commit(&mut self) -> bool {
        // Also with nothing new: an idle writer still owes the interval fsync, and the sinks'
        // confirmations free WAL room (which matters most when the WAL is at its budget).
        self.remove_confirmed();
        let waited_for = self.group.iter().any(|s| s.notify.is_some());
        // A failed commit leaves none of the group in the log (the WAL undoes it), so
        // "failed" below means "not stored", never "stored later".
        let result = self.wal.commit(waited_for);
        if self.wal.roll_failing() {
            // Stored, but the log cannot begin its next segment: tell /ready.
            self.marks
                .wal_error_at_ms
                .store(meterflow_proto::now_ms(), Ordering::Relaxed);
        }
        let committed = match result {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("meterflow_wal_errors_total").increment(1);
                self.marks
                    .wal_error_at_ms
                    .store(meterflow_proto::now_ms(), Ordering::Relaxed);
                tracing::error!(error = %e, "WAL commit failed; waiting senders are told to retry, the rest goes to the pipeline without it");
                false
            }
        };
        self.marks
            .wal_bytes
            .store(self.wal.bytes(), Ordering::Relaxed);
        if committed && !self.group.is_empty() {
            self.marks
                .committed
                .store(self.wal.next_lsn() - 1, Ordering::Release);
        }
        for Submission {
            mut message,
            notify,
            budget,
        } in self.group.drain(..)
        {
            drop(budget);
            if let Some(notify) = notify {
                if !committed {
                    let _ = notify.send(Durability::Failed);
                    continue;
                }
                let _ = notify.send(Durability::Durable(message.lsn));
            } else if !committed {
                // Not readable from the WAL: the queue is its only way on.
                message.lsn = 0;
            }
            let result = if message.lsn == 0 {
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
                    tracing::error!("pipeline stopped; the WAL writer ends");
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
    use crate::edge::channel;
    use bytes::Bytes;
    use meterflow_proto::Source;
    use meterflow_storage::{FsyncPolicy, WalConfig};

    fn message(topic: &str) -> RawMessage {
        RawMessage {
            lsn: 0,
            topic: topic.into(),
            payload: Bytes::from_static(b"{}"),
            source: Source::Coap,
            received_at_ms: 1_700_000_000_000,
            content_type: None,
            edge_note: None,
            via: None,
        }
    }

    #[test]
    fn waiting_senders_learn_the_lsn_and_the_pipeline_gets_every_message() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 60_000,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open(dir.path(), config).unwrap();
        let marks = Arc::new(LsnMarks::default());
        let (mqtt, mqtt_rx) = channel(16);
        let (tx, coap_rx) = channel(16);
        let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(16);
        let (_, dlms_rx) = channel(1);
        let inputs = Inputs {
            mqtt: mqtt_rx,
            coap: coap_rx,
            dlms: dlms_rx,
        };
        let writer = spawn(wal, marks.clone(), inputs, queue_tx).unwrap();
        drop(mqtt);
        let (notify, told) = tokio::sync::oneshot::channel();
        tx.send(Submission {
            message: message("meters/a/json"),
            notify: None,
            budget: None,
        })
        .unwrap();
        tx.send(Submission {
            message: message("meters/b/json"),
            notify: Some(notify),
            budget: None,
        })
        .unwrap();
        assert_eq!(told.blocking_recv().unwrap(), Durability::Durable(2));
        drop(tx);
        let summary = writer.join().unwrap();
        assert_eq!(summary.messages, 2);
        let got: Vec<(u64, String)> = queue_rx.iter().map(|m| (m.lsn, m.topic)).collect();
        assert_eq!(
            got,
            vec![(1, "meters/a/json".into()), (2, "meters/b/json".into())]
        );
        assert_eq!(marks.committed.load(Ordering::Acquire), 2);
        // Durable although the interval fsync was not due: the record is in the file.
        let records: Vec<_> = meterflow_storage::WalReader::open(dir.path(), 0)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn a_full_wal_refuses_waiting_senders() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 64,
            max_bytes: 128,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open(dir.path(), config).unwrap();
        let (mqtt, mqtt_rx) = channel(16);
        let (tx, coap_rx) = channel(16);
        let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(16);
        let (_, dlms_rx) = channel(1);
        let inputs = Inputs {
            mqtt: mqtt_rx,
            coap: coap_rx,
            dlms: dlms_rx,
        };
        let writer = spawn(wal, Arc::new(LsnMarks::default()), inputs, queue_tx).unwrap();
        drop(mqtt);
        let mut answers = Vec::new();
        for i in 0..8 {
            let (notify, told) = tokio::sync::oneshot::channel();
            tx.send(Submission {
                message: message(&format!("meters/m{i}/json")),
                notify: Some(notify),
                budget: None,
            })
            .unwrap();
            answers.push(told.blocking_recv().unwrap());
        }
        drop(tx);
        let summary = writer.join().unwrap();
        let full = answers
            .iter()
            .filter(|a| **a == Durability::WalFull)
            .count();
        assert!(full > 0, "{answers:?}");
        assert_eq!(summary.wal_overflow, full as u64);
        assert_eq!(
            queue_rx.iter().count(),
            8 - full,
            "refused messages are not handed on"
        );
    }

    /// Review 22, M3: three inputs each flooded with 5000: every round takes at least a third
    /// of a group from each that still has that much (and all of one that has less), the
    /// leftover goes to the others, and the input served first turns.
    #[test]
    fn each_round_takes_its_share_from_every_flooded_input() {
        let channels: Vec<_> = (0..3).map(|_| flume::unbounded::<usize>()).collect();
        for (i, (tx, _)) in channels.iter().enumerate() {
            for _ in 0..5000 {
                tx.send(i).unwrap();
            }
        }
        let inputs: Vec<&Receiver<usize>> = channels.iter().map(|(_, rx)| rx).collect();
        let mut open = [true; 3];
        let mut left = [5000usize; 3];
        let mut first = 0;
        let mut rounds = 0;
        while left.iter().sum::<usize>() > 0 {
            let mut got = [0usize; 3];
            let mut order = Vec::new();
            let taken = take_round(&inputs, &mut open, first, MAX_GROUP, |i| {
                got[i] += 1;
                if order.last() != Some(&i) {
                    order.push(i);
                }
            });
            assert_eq!(taken, got.iter().sum::<usize>());
            assert!(taken <= MAX_GROUP, "round {rounds}: {got:?}");
            for i in 0..3 {
                assert!(
                    got[i] >= (MAX_GROUP / 3).min(left[i]),
                    "round {rounds}: input {i} got {}, {} waiting: {got:?}",
                    got[i],
                    left[i]
                );
                left[i] -= got[i];
            }
            // A full group whenever that much waited; the input served first turns.
            assert_eq!(taken, MAX_GROUP.min(taken + left.iter().sum::<usize>()));
            assert_eq!(order.first(), Some(&first), "round {rounds}: {order:?}");
            first = (first + 1) % 3;
            rounds += 1;
        }
        assert_eq!(rounds, 4, "15000 in groups of 4096");
        // One input quiet, one flooded: the flooded one gets the whole group.
        for _ in 0..5000 {
            channels[2].0.send(2).unwrap();
        }
        let mut got = [0usize; 3];
        take_round(&inputs, &mut open, 0, MAX_GROUP, |i| got[i] += 1);
        assert_eq!(got, [0, 0, MAX_GROUP]);
        // A disconnected input is marked closed.
        drop(channels);
        let (tx, rx) = flume::unbounded::<usize>();
        drop(tx);
        let mut open = [true];
        assert_eq!(take_round(&[&rx], &mut open, 0, MAX_GROUP, |_| {}), 0);
        assert_eq!(open, [false]);
    }
}
