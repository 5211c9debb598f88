//! Replayed DLMS pushes refused: per system title, the highest invocation counter accepted so
//! far; a ciphered push whose counter is not above it is a replay. Kept durably with the WAL
//! checkpoint, so that it survives kill -9 and a restart:
//!
//! - the pipeline decides in WAL order, so the counters after record N depend only on the
//!   counters at the checkpoint and the records after it;
//! - before the checkpoint through N is written, the counters as of N (the base, and the
//!   accepted pushes up to N folded in) are written to `{data_dir}/wal/dlms-counters-N`
//!   (temporary file, fsync, rename, folder fsync);
//! - at start-up the file of the checkpoint's N is read, and the records after N, replayed
//!   from the WAL, are decided again exactly as before.
//!
//! A record read again (the same LSN) is not a replay of itself. Files older than the
//! checkpoint on disk are removed.
//!
//! A counter belongs to a key: a meter given a new encryption key counts again from 0 (the
//! Green Book's rule), so a counter is kept per system title *and* key, by the key's check
//! value ([`Keys::check_value`](meterflow_decoders::dlms::Keys::check_value): not the key). A
//! push under a new key starts a count of its own; under a key used before (a key rolled
//! back) it must be above that key's count, so pushes recorded under the old key stay
//! replays. A file line is `TITLE COUNTER CHECK` (hex, decimal, hex); a line without the
//! check value (written before it was kept) stands for whatever key the title has next.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::IngestError;

const PREFIX: &str = "dlms-counters-";

/// Whose counter: a system title under the key of a check value (`None`: not known, a line
/// of an older file).
type Owner = ([u8; 8], Option<u32>);

/// The counters of the accepted ciphered pushes.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    /// Highest counter accepted per system title and key, and the LSN of its record.
    current: HashMap<Owner, (u32, u64)>,
    /// The counters as of `base_lsn` (what the file of that checkpoint holds).
    base: HashMap<Owner, u32>,
    base_lsn: u64,
    /// Accepted since the base: (lsn, system title, key, counter), in LSN order.
    pending: Vec<(u64, [u8; 8], u32, u32)>,
}

/// A counter the listener reserved for a push on its way to the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    system_title: [u8; 8],
    key: u32,
    counter: u32,
    /// What the title's counters were before (under this key; of an older file).
    own: Option<u32>,
    legacy: Option<u32>,
}

/// Why a push is refused: the last counter accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub last: u32,
}

fn folder(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

fn file_of(data_dir: &Path, lsn: u64) -> PathBuf {
    folder(data_dir).join(format!("{PREFIX}{lsn}"))
}

/// The LSNs of the counter files in the folder.
fn files(data_dir: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(folder(data_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(PREFIX)?
                .parse::<u64>()
                .ok()
        })
        .collect()
}

impl ReplayGuard {
    /// The counters as of the checkpoint `checkpoint_lsn` (empty when no DLMS push was ever
    /// accepted). A file of another LSN is used only when that one is missing (written by a
    /// version without it), the newest before it.
    pub fn load(data_dir: &Path, checkpoint_lsn: u64) -> Result<ReplayGuard, IngestError> {
        let lsns = files(data_dir);
        let Some(lsn) = lsns.iter().copied().filter(|&l| l <= checkpoint_lsn).max() else {
            return Ok(ReplayGuard::default());
        };
        if lsn != checkpoint_lsn {
            tracing::warn!(
                file_lsn = lsn,
                checkpoint_lsn,
                "no DLMS counters for the checkpoint; using the newest before it"
            );
        }
        let path = file_of(data_dir, lsn);
        let text = fs::read_to_string(&path).map_err(|source| IngestError::Io {
            action: "reading the DLMS counters",
            path: path.clone(),
            source,
        })?;
        let mut base = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = || IngestError::Io {
                action: "parsing the DLMS counters",
                path: path.clone(),
                source: std::io::Error::other(format!("line {}", i + 1)),
            };
            let mut fields = line.split(' ');
            let (Some(title), Some(counter)) = (fields.next(), fields.next()) else {
                return Err(bad());
            };
            let title = u64::from_str_radix(title, 16)
                .map_err(|_| bad())?
                .to_be_bytes();
            let counter: u32 = counter.parse().map_err(|_| bad())?;
            let key = fields
                .next()
                .map(|k| u32::from_str_radix(k, 16))
                .transpose()
                .map_err(|_| bad())?;
            base.insert((title, key), counter);
        }
        let current = base.iter().map(|(t, c)| (*t, (*c, 0))).collect();
        Ok(ReplayGuard {
            current,
            base,
            base_lsn: lsn,
            pending: Vec::new(),
        })
    }

    /// Accepts the push of `system_title` with `counter`, opened with the key of check value
    /// `key`, in the record `lsn`, or says it is a replay: not above the last counter of
    /// that title under that key (or, for a key never seen, under the unknown key of an
    /// older file).
    pub fn check(
        &mut self,
        system_title: [u8; 8],
        key: u32,
        counter: u32,
        lsn: u64,
    ) -> Result<(), Replay> {
        let last = self
            .current
            .get(&(system_title, Some(key)))
            .or_else(|| self.current.get(&(system_title, None)));
        if let Some(&(last, last_lsn)) = last {
            let again = lsn != 0 && lsn == last_lsn && counter == last;
            if again {
                return Ok(());
            }
            if counter <= last {
                return Err(Replay { last });
            }
        }
        // The unknown key's count, once a key has followed it, is that key's.
        self.current.remove(&(system_title, None));
        self.current
            .insert((system_title, Some(key)), (counter, lsn));
        self.pending.push((lsn, system_title, key, counter));
        Ok(())
    }

    /// The wrapper listener's check (its own copy of the counters, which nothing is written
    /// from): a push of `system_title` under `key` with `counter` is a replay (the last
    /// counter it is not above); else it is reserved, so that a copy sent at the same time is
    /// one, and what was there before is returned, for [`ReplayGuard::release`] should the
    /// push not be stored after all.
    pub fn reserve(
        &mut self,
        system_title: [u8; 8],
        key: u32,
        counter: u32,
    ) -> Result<Reserved, Replay> {
        let own = self.current.get(&(system_title, Some(key))).copied();
        let legacy = self.current.get(&(system_title, None)).copied();
        if let Some((last, _)) = own.or(legacy) {
            if counter <= last {
                return Err(Replay { last });
            }
        }
        self.current.remove(&(system_title, None));
        self.current.insert((system_title, Some(key)), (counter, 0));
        Ok(Reserved {
            system_title,
            key,
            counter,
            own: own.map(|(c, _)| c),
            legacy: legacy.map(|(c, _)| c),
        })
    }

    /// Gives back a reservation whose push was not stored (the WAL full, the channel full), if
    /// nothing came after it: a resend of that push is then taken.
    pub fn release(&mut self, r: Reserved) {
        let owner = (r.system_title, Some(r.key));
        if self.current.get(&owner).map(|(c, _)| *c) != Some(r.counter) {
            return;
        }
        match r.own {
            Some(c) => {
                self.current.insert(owner, (c, 0));
            }
            None => {
                self.current.remove(&owner);
            }
        }
        if let Some(c) = r.legacy {
            self.current.insert((r.system_title, None), (c, 0));
        }
    }

    /// Notes a counter the pipeline accepted (the listener's copy learns what came over
    /// MQTT, CoAP and the WAL's replay at start-up too).
    pub fn note(&mut self, system_title: [u8; 8], key: u32, counter: u32) {
        self.current.remove(&(system_title, None));
        let entry = self
            .current
            .entry((system_title, Some(key)))
            .or_insert((counter, 0));
        entry.0 = entry.0.max(counter);
    }

    /// Writes the counters as of `through` (the checkpoint about to be written) when they
    /// changed since the last file (else that file holds them: [`ReplayGuard::load`] takes the
    /// newest at or before the checkpoint), and removes the files the checkpoint on disk
    /// (`on_disk`) no longer needs: those older than the newest at or before it.
    pub fn persist(
        &mut self,
        data_dir: &Path,
        through: u64,
        on_disk: u64,
    ) -> Result<(), IngestError> {
        let on_disk_file = files(data_dir).into_iter().filter(|&l| l <= on_disk).max();
        for lsn in files(data_dir) {
            if on_disk_file.is_some_and(|keep| lsn < keep) {
                let _ = fs::remove_file(file_of(data_dir, lsn));
            }
        }
        // A temporary file a crash left before its rename is of no use.
        if let Ok(entries) = fs::read_dir(folder(data_dir)) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if !self.pending.iter().any(|&(lsn, ..)| lsn <= through) {
            return Ok(());
        }
        // Records without a WAL position (0: not written there) count at once.
        let (folded, kept): (Vec<_>, Vec<_>) = self
            .pending
            .drain(..)
            .partition(|&(lsn, ..)| lsn <= through);
        self.pending = kept;
        for (_, title, key, counter) in folded {
            self.base.remove(&(title, None));
            let c = self.base.entry((title, Some(key))).or_insert(counter);
            *c = (*c).max(counter);
        }
        self.base_lsn = through;
        let dir = folder(data_dir);
        let path = file_of(data_dir, through);
        let tmp = dir.join(format!(".{PREFIX}{through}.tmp"));
        let io = |action, source| IngestError::Io {
            action,
            path: path.clone(),
            source,
        };
        let mut lines: Vec<String> = self
            .base
            .iter()
            .map(|((t, key), counter)| {
                let title = u64::from_be_bytes(*t);
                match key {
                    Some(k) => format!("{title:016X} {counter} {k:08X}"),
                    None => format!("{title:016X} {counter}"),
                }
            })
            .collect();
        lines.sort();
        let mut file = File::create(&tmp).map_err(|e| io("creating", e))?;
        file.write_all(lines.join("\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io("writing", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the folder of", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 8] = *b"KFM\x10\x10\x00\x00\x23";
    const B: [u8; 8] = *b"LGZgsp\xB1\x77";
    /// The check value of the key every test push is opened with.
    const K: u32 = 0x66E9_4BD4;

    /// The counter a loaded guard holds for a title under the test key.
    fn base(g: &ReplayGuard, t: [u8; 8]) -> Option<u32> {
        g.base.get(&(t, Some(K))).copied()
    }

    #[test]
    fn a_counter_not_above_the_last_is_a_replay_but_a_record_read_again_is_not() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(A, K, 10, 1), Ok(()));
        assert_eq!(g.check(A, K, 10, 2), Err(Replay { last: 10 }));
        assert_eq!(g.check(A, K, 9, 3), Err(Replay { last: 10 }));
        assert_eq!(g.check(A, K, 10, 1), Ok(()), "record 1 read again");
        assert_eq!(g.check(B, K, 5, 4), Ok(()));
        assert_eq!(g.check(A, K, 11, 5), Ok(()));
    }

    #[test]
    fn the_counters_of_the_checkpoint_survive_a_restart_and_records_after_it_decide_again() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("wal")).unwrap();
        let mut g = ReplayGuard::default();
        g.check(A, K, 10, 1).unwrap();
        g.check(B, K, 5, 2).unwrap();
        g.check(A, K, 12, 3).unwrap();
        // The checkpoint moves to 2: the file holds A 10, B 5 (record 3 is after it).
        g.persist(dir.path(), 2, 0).unwrap();
        // kill -9, restart from checkpoint 2: record 3 replayed from the WAL is accepted
        // again; a network replay of A 10 or 12 is refused.
        let mut after = ReplayGuard::load(dir.path(), 2).unwrap();
        assert_eq!(after.check(A, K, 10, 9), Err(Replay { last: 10 }));
        assert_eq!(after.check(A, K, 12, 3), Ok(()));
        assert_eq!(after.check(A, K, 12, 10), Err(Replay { last: 12 }));
        assert_eq!(after.check(B, K, 5, 11), Err(Replay { last: 5 }));
        // Later checkpoints remove what the checkpoint on disk no longer needs; a checkpoint
        // with nothing new writes nothing (the newest file before it holds its counters).
        after.persist(dir.path(), 3, 2).unwrap();
        after.persist(dir.path(), 9, 3).unwrap();
        assert_eq!(files(dir.path()), [3], "nothing accepted in (3, 9]");
        assert_eq!(
            base(&ReplayGuard::load(dir.path(), 9).unwrap(), A),
            Some(12)
        );
        after.check(B, K, 6, 10).unwrap();
        after.persist(dir.path(), 11, 9).unwrap();
        let mut lsns = files(dir.path());
        lsns.sort();
        assert_eq!(lsns, [3, 11], "3 is the file of checkpoint 9, on disk");
        after.persist(dir.path(), 11, 11).unwrap();
        let again = ReplayGuard::load(dir.path(), 11).unwrap();
        assert_eq!((base(&again, A), base(&again, B)), (Some(12), Some(6)));
        // A temporary file left by a crash goes with the next checkpoint.
        let stale = dir.path().join("wal/.dlms-counters-5.tmp");
        fs::write(&stale, "4B464D1010000023 1").unwrap();
        after.persist(dir.path(), 11, 11).unwrap();
        assert!(!stale.exists());
        // No push ever: no file, an empty guard.
        let empty = tempfile::tempdir().unwrap();
        let mut none = ReplayGuard::load(empty.path(), 7).unwrap();
        none.persist(empty.path(), 8, 7).unwrap();
        assert!(files(empty.path()).is_empty());
    }

    #[test]
    fn a_new_key_starts_the_count_again_and_is_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("wal")).unwrap();
        let new_key = 0x1234_5678;
        let mut g = ReplayGuard::default();
        g.check(A, K, 1000, 1).unwrap();
        // Re-keyed: the meter counts from 1 again, and is taken.
        assert_eq!(g.check(A, new_key, 1, 2), Ok(()));
        assert_eq!(g.check(A, new_key, 1, 3), Err(Replay { last: 1 }));
        assert_eq!(g.check(A, new_key, 2, 4), Ok(()));
        g.persist(dir.path(), 4, 0).unwrap();
        let text = fs::read_to_string(file_of(dir.path(), 4)).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "4B464D1010000023 1000 66E94BD4",
                "4B464D1010000023 2 12345678"
            ]
        );
        let mut after = ReplayGuard::load(dir.path(), 4).unwrap();
        assert_eq!(after.check(A, new_key, 2, 9), Err(Replay { last: 2 }));
        assert_eq!(after.check(A, new_key, 3, 10), Ok(()));
        // The old key back (a rollback): pushes recorded under it are still replays.
        assert_eq!(after.check(A, K, 1000, 11), Err(Replay { last: 1000 }));
        assert_eq!(after.check(A, K, 1001, 12), Ok(()));
        // A file from before check values were kept: its counter holds for the next key.
        fs::write(file_of(dir.path(), 20), "4B464D1010000023 500").unwrap();
        let mut old = ReplayGuard::load(dir.path(), 20).unwrap();
        assert_eq!(old.check(A, K, 500, 21), Err(Replay { last: 500 }));
        assert_eq!(old.check(A, K, 501, 22), Ok(()));
        old.persist(dir.path(), 22, 20).unwrap();
        assert_eq!(
            fs::read_to_string(file_of(dir.path(), 22)).unwrap(),
            "4B464D1010000023 501 66E94BD4"
        );
    }

    #[test]
    fn the_listener_reserves_a_counter_and_gives_it_back_when_the_push_was_not_stored() {
        let mut g = ReplayGuard::default();
        let r = g.reserve(A, K, 10).unwrap();
        // A copy at the same time: a replay.
        assert_eq!(g.reserve(A, K, 10), Err(Replay { last: 10 }));
        // Not stored (the WAL full): given back, the resend is taken.
        g.release(r);
        let r = g.reserve(A, K, 10).unwrap();
        let later = g.reserve(A, K, 11).unwrap();
        // A release after a later push changes nothing.
        g.release(r);
        assert_eq!(g.reserve(A, K, 11), Err(Replay { last: 11 }));
        g.release(later);
        assert_eq!(g.reserve(A, K, 10), Err(Replay { last: 10 }));
        // What the pipeline accepted is known too.
        g.note(B, K, 50);
        assert_eq!(g.reserve(B, K, 50), Err(Replay { last: 50 }));
    }
}
