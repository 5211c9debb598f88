//! What a running fleet counts, shared by every meter's task: reports sent and acknowledged,
//! bytes, reconnects, retransmissions, the latencies of acknowledgements and connections, and
//! the moments the summary's `all_connected_s` and `recovery_s` come from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct Counters {
    pub(crate) started: Instant,
    pub(crate) meters: usize,
    pub(crate) reconnects: AtomicU64,
    pub(crate) retransmissions: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Why the first meter that failed did.
    pub(crate) first_failure: std::sync::Mutex<Option<String>>,
    pub(crate) connects: AtomicU64,
    /// Every acknowledgement's latency.
    pub(crate) acks: Latencies,
    /// Every CONNECT's time to its CONNACK.
    pub(crate) connect_latencies: Latencies,
    pub(crate) moments: Moments,
}

/// Latencies of one kind, microseconds.
#[derive(Default)]
pub(crate) struct Latencies(std::sync::Mutex<Vec<u32>>);

impl Latencies {
    pub(crate) fn record(&self, latency: Duration) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        if let Ok(mut all) = self.0.lock() {
            all.push(us);
        }
    }

    /// The latency at quantile `q` (0..=1), milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        let Ok(mut all) = self.0.lock() else {
            return 0.0;
        };
        if all.is_empty() {
            return 0.0;
        }
        all.sort_unstable();
        let i = ((all.len() - 1) as f64 * q).round() as usize;
        f64::from(all[i]) / 1000.0
    }
}

/// When things happened, microseconds since the fleet started.
#[derive(Default)]
pub(crate) struct Moments {
    pub(crate) first_connects: AtomicU64,
    pub(crate) all_connected_us: AtomicU64,
    pub(crate) first_loss_us: AtomicU64,
    pub(crate) last_recovery_us: AtomicU64,
}

impl Counters {
    /// Counters of a fleet of `meters`, starting now.
    pub(crate) fn new(meters: usize) -> Counters {
        Counters {
            started: Instant::now(),
            meters,
            reconnects: AtomicU64::new(0),
            retransmissions: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_failure: std::sync::Mutex::new(None),
            connects: AtomicU64::new(0),
            acks: Latencies::default(),
            connect_latencies: Latencies::default(),
            moments: Moments::default(),
        }
    }

    fn since_start_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub(crate) fn note_connect(&self, latency: Duration, first: bool, recovering: bool) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.connect_latencies.record(latency);
        let now = self.since_start_us();
        if first {
            let n = self.moments.first_connects.fetch_add(1, Ordering::AcqRel) + 1;
            if n == self.meters as u64 {
                self.moments.all_connected_us.store(now, Ordering::Release);
                eprintln!(
                    "simulate: all {n} meters connected after {:.2} s",
                    now as f64 / 1e6
                );
            }
        }
        if recovering {
            self.moments
                .last_recovery_us
                .fetch_max(now, Ordering::AcqRel);
        }
    }

    pub(crate) fn note_loss(&self) {
        let now = self.since_start_us().max(1);
        let _ = self.moments.first_loss_us.compare_exchange(
            0,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}
