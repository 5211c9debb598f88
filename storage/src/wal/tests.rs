//! The WAL end to end on real files: round trips across segments and reopen, the checkpoint,
//! torn tails, flipped bits, damaged earlier segments, failed rolls, read errors (injected
//! through [`FailingReader`]) and the disk budget.

use std::io::Read;

use meterflow_proto::Source;

use super::*;

fn cfg(segment_bytes: u64) -> WalConfig {
    WalConfig {
        segment_bytes,
        fsync: FsyncPolicy::Always,
        ..Default::default()
    }
}

fn append_n(wal: &mut Wal, n: usize) -> Vec<u64> {
    let lsns = (0..n)
        .map(|i| {
            wal.append(&NewRecord {
                received_at_ms: 1_700_000_000_000 + i as i64,
                source: Source::Mqtt,
                topic: &format!("meters/m{i}/json"),
                content_type: (i % 2 == 0).then_some("application/json"),
                edge_note: (i == 5).then_some("identity A may not publish for m5"),
                payload: format!("payload {i}").as_bytes(),
            })
            .unwrap()
        })
        .collect();
    wal.commit(false).unwrap();
    lsns
}

thread_local! {
    /// A read fault to inject: reads of this segment fail with EIO from this offset on.
    static READ_FAULT: std::cell::RefCell<Option<(PathBuf, u64)>> = const { std::cell::RefCell::new(None) };
}

pub(super) fn read_fault_at(path: &Path) -> Option<u64> {
    READ_FAULT.with(|f| {
        f.borrow()
            .as_ref()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
    })
}

/// A file whose reads fail with EIO from `fail_at` on, as a failing disk's do.
pub(super) struct FailingReader {
    file: File,
    at: u64,
    fail_at: u64,
}

impl FailingReader {
    pub(super) fn new(file: File, fail_at: u64) -> Self {
        FailingReader {
            file,
            at: 0,
            fail_at,
        }
    }
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.fail_at {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        let room = (self.fail_at - self.at).min(buf.len() as u64) as usize;
        let n = self.file.read(&mut buf[..room])?;
        self.at += n as u64;
        Ok(n)
    }
}

fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_read_error_at_open_stops_it_and_cuts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
    for _ in 0..10 {
        append_n(&mut wal, 1); // a commit each: segments roll at 200 bytes
    }
    let first_segment = wal.segments.values().next().unwrap().path.clone();
    let last_segment = wal.segments.values().last().unwrap().path.clone();
    drop(wal);
    let before = segment_files(dir.path());
    for (segment, offset) in [(&first_segment, 40), (&last_segment, 0)] {
        READ_FAULT.with(|f| *f.borrow_mut() = Some((segment.clone(), offset)));
        let error = Wal::open(dir.path(), cfg(200))
            .err()
            .expect("a read error fails the open");
        READ_FAULT.with(|f| *f.borrow_mut() = None);
        let text = error.to_string();
        assert!(text.contains(&segment.display().to_string()), "{text}");
        assert!(matches!(error, StorageError::WalRead { .. }), "{text}");
        assert!(error.is_retryable());
        assert_eq!(
            segment_files(dir.path()),
            before,
            "nothing cut, nothing made"
        );
    }
    // The disk is well again: every record is there.
    let (wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(wal.reader(0).count(), 10);
}

#[test]
fn a_read_error_while_replaying_is_an_error_not_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
    for _ in 0..10 {
        append_n(&mut wal, 1); // a commit each: segments roll at 200 bytes
    }
    // A segment that is a folder: open works, every read fails (EISDIR), for real.
    let second = wal.segments.values().nth(1).unwrap().path.clone();
    fs::rename(&second, second.with_extension("moved")).unwrap();
    fs::create_dir(&second).unwrap();
    let read: Vec<Result<WalRecord, StorageError>> = wal.reader(0).collect();
    let error = read
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("an error");
    assert!(
        error.to_string().contains(&second.display().to_string()),
        "{error}"
    );
    assert!(
        read.last().unwrap().is_err(),
        "no record after the unreadable segment is handed out as if it came next"
    );
}

#[test]
fn a_corrupt_record_before_the_last_segment_sets_the_segment_aside_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
    for _ in 0..10 {
        append_n(&mut wal, 1); // a commit each: segments roll at 200 bytes
    }
    let segments: Vec<(u64, Segment)> = wal.segments.iter().map(|(f, s)| (*f, s.clone())).collect();
    assert!(segments.len() >= 3, "{segments:?}");
    drop(wal);
    // Damage the second record of the first segment.
    let (first, seg) = &segments[0];
    let mut bytes = fs::read(&seg.path).unwrap();
    let original = bytes.clone();
    let first_len = 8 + u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    bytes[first_len + 20] ^= 0xff;
    fs::write(&seg.path, &bytes).unwrap();
    let lost: Vec<u64> = (first + 1..=seg.last_lsn).collect();

    let (wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(rec.truncated_bytes, 0, "only the last segment is ever cut");
    assert_eq!(rec.set_aside, vec![seg.path.with_extension("wal.corrupt")]);
    assert_eq!(
        fs::read(seg.path.with_extension("wal.corrupt")).unwrap(),
        bytes,
        "the damaged segment is kept whole"
    );
    assert_eq!(fs::read(&seg.path).unwrap(), original[..first_len].to_vec());
    let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
    let expected: Vec<u64> = (1..=10).filter(|l| !lost.contains(l)).collect();
    assert_eq!(
        lsns, expected,
        "every record the damage did not touch replays"
    );
    assert_eq!(rec.last_lsn, 10);
}

#[test]
fn records_round_trip_in_order_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(rec, WalRecovery::default());
    assert_eq!(append_n(&mut wal, 10), (1..=10).collect::<Vec<_>>());
    let all: Vec<WalRecord> = wal.reader(0).map(Result::unwrap).collect();
    assert_eq!(all.len(), 10);
    assert_eq!(all[3].topic, "meters/m3/json");
    assert_eq!(all[3].payload, b"payload 3");
    assert_eq!(all[4].content_type.as_deref(), Some("application/json"));
    assert_eq!(all[3].content_type, None);
    assert_eq!(all[3].edge_note, None);
    assert_eq!(
        all[5].edge_note.as_deref(),
        Some("identity A may not publish for m5")
    );
    assert_eq!(all[5].payload, b"payload 5");
    assert_eq!(all[5].source, Source::Mqtt);
    assert_eq!(
        wal.reader(7).map(|r| r.unwrap().lsn).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    let from_dir: Vec<u64> = WalReader::open(dir.path(), 7)
        .unwrap()
        .map(|r| r.unwrap().lsn)
        .collect();
    assert_eq!(from_dir, vec![8, 9, 10]);
    drop(wal);

    let (mut wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(rec.last_lsn, 10);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(append_n(&mut wal, 2), vec![11, 12]);
    let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
    assert_eq!(lsns, (1..=12).collect::<Vec<_>>());
}

#[test]
fn the_checkpoint_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_checkpoint(dir.path()).unwrap(), Checkpoint::default());
    let c = Checkpoint { all: 42, local: 50 };
    write_checkpoint(dir.path(), c).unwrap();
    assert_eq!(read_checkpoint(dir.path()).unwrap(), c);
    // The one-number file of earlier versions.
    std::fs::write(dir.path().join("wal/checkpoint"), "17\n").unwrap();
    assert_eq!(
        read_checkpoint(dir.path()).unwrap(),
        Checkpoint { all: 17, local: 17 }
    );
    std::fs::write(dir.path().join("wal/checkpoint"), "x").unwrap();
    assert!(read_checkpoint(dir.path()).is_err());
}

#[test]
fn lsns_continue_after_a_checkpoint_ahead_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    append_n(&mut wal, 2);
    wal.start_after(10).unwrap();
    assert_eq!(append_n(&mut wal, 1), vec![11]);
    wal.start_after(5).unwrap();
    assert_eq!(wal.next_lsn(), 12);
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(rec.last_lsn, 11);
    let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
    assert_eq!(lsns, vec![1, 2, 11]);
}

#[test]
fn a_torn_tail_is_cut_and_the_intact_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    append_n(&mut wal, 3);
    let path = wal.segments.values().last().unwrap().path.clone();
    drop(wal);
    // A crash in the middle of the fourth record: half a header and body.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    drop(f);
    let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(rec.last_lsn, 3);
    assert_eq!(rec.truncated_bytes, 10);
    assert_eq!(wal.reader(0).count(), 3);
    assert_eq!(wal.next_lsn(), 4);
}

#[test]
fn a_flipped_bit_is_caught_by_the_crc() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    append_n(&mut wal, 2);
    let path = wal.segments.values().last().unwrap().path.clone();
    drop(wal);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, bytes).unwrap();
    let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(rec.last_lsn, 1);
    assert_eq!(wal.reader(0).count(), 1);
}

#[test]
fn a_roll_that_fails_keeps_the_group_and_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(100)).unwrap();
    // The next segment's name is taken by a folder: creating it fails (EISDIR), for real.
    let blocker = dir.path().join(format!("wal/{:020}.wal", 4));
    fs::create_dir(&blocker).unwrap();
    let lsns = append_n(&mut wal, 3); // one commit; the segment passes 100 bytes
    assert_eq!(
        lsns,
        vec![1, 2, 3],
        "the group is committed although the roll failed"
    );
    assert!(wal.roll_failing());
    assert_eq!(wal.reader(0).count(), 3);
    fs::remove_dir(&blocker).unwrap();
    assert_eq!(append_n(&mut wal, 1), vec![4]);
    assert!(
        !wal.roll_failing(),
        "the roll is tried again at the next commit"
    );
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), cfg(100)).unwrap();
    assert_eq!(rec.last_lsn, 4);
    assert_eq!(wal.reader(0).count(), 4);
}

#[test]
fn an_empty_segment_left_by_a_failed_roll_hides_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    append_n(&mut wal, 3);
    // A roll that created segment 2 and then failed: the log went on in segment 1.
    fs::File::create(dir.path().join("wal").join(format!("{:020}.wal", 2))).unwrap();
    append_n(&mut wal, 3);
    let from_dir = |after| -> Vec<u64> {
        WalReader::open(dir.path(), after)
            .unwrap()
            .map(|r| r.unwrap().lsn)
            .collect()
    };
    assert_eq!(
        from_dir(2),
        vec![3, 4, 5, 6],
        "the reader is not led to the empty file"
    );
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(rec.last_lsn, 6);
    assert!(
        !dir.path().join(format!("wal/{:020}.wal", 2)).exists(),
        "the stray is gone"
    );
    assert_eq!(wal.reader(0).count(), 6);
}

#[test]
fn a_set_aside_interrupted_by_a_crash_is_done_again_and_an_earlier_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
    for _ in 0..6 {
        append_n(&mut wal, 1);
    }
    let first = wal.segments.values().next().unwrap().path.clone();
    drop(wal);
    let mut bytes = fs::read(&first).unwrap();
    let first_len = 8 + u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    bytes[first_len + 20] ^= 0xff;
    fs::write(&first, &bytes).unwrap();
    // A crash after the link, before the rename: the link and a stale copy are there.
    fs::hard_link(&first, first.with_extension("wal.corrupt")).unwrap();
    fs::write(first.with_extension("wal.tmp"), b"stale").unwrap();
    let (_, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(rec.set_aside, vec![first.with_extension("wal.corrupt")]);
    assert_eq!(
        fs::read(first.with_extension("wal.corrupt")).unwrap(),
        bytes
    );
    assert_eq!(fs::read(&first).unwrap(), bytes[..first_len].to_vec());
    // Damaged again later: the first copy is kept, the new one gets another name.
    let mut again = fs::read(&first).unwrap();
    again[20] ^= 0xff;
    fs::write(&first, &again).unwrap();
    let (_, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(rec.set_aside, vec![first.with_extension("wal.corrupt-2")]);
    assert_eq!(
        fs::read(first.with_extension("wal.corrupt")).unwrap(),
        bytes
    );
}

#[test]
fn confirmed_segments_are_removed_and_the_budget_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = cfg(100);
    config.max_bytes = 400;
    let (mut wal, _) = Wal::open(dir.path(), config).unwrap();
    for _ in 0..6 {
        append_n(&mut wal, 1); // one commit each: a segment rolls at 100 bytes
    }
    let before = wal.segments.len();
    assert!(before >= 3, "{before} segments");
    let record = |payload: &'static [u8]| NewRecord {
        received_at_ms: 0,
        source: Source::Mqtt,
        topic: "meters/a/json",
        content_type: None,
        edge_note: None,
        payload,
    };
    assert!(!wal.has_room(&record(&[0; 200])));
    assert_eq!(wal.remove_through(0).unwrap(), 0);
    let removed = wal.remove_through(4).unwrap();
    assert!(removed >= 1);
    let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
    assert!(lsns.contains(&5) && lsns.contains(&6), "{lsns:?}");
    assert!(
        lsns.iter().all(|l| *l >= 3),
        "segments with unconfirmed records stay: {lsns:?}"
    );
    assert!(wal.has_room(&record(&[0; 10])));
    // The content type counts too (it can be 64 KiB).
    let long_type = "x".repeat(400);
    assert!(!wal.has_room(&NewRecord {
        content_type: Some(&long_type),
        ..record(&[0; 10])
    }));
}
