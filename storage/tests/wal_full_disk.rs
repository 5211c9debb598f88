//! The WAL on a disk that really fills up: a write that failed is not in the log, and does
//! not land later.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

#[path = "support/small_disk.rs"]
mod small_disk;

use meterflow_proto::Source;
use meterflow_storage::{FsyncPolicy, NewRecord, Wal, WalConfig, WalReader};
use small_disk::SmallDisk;

fn record<'a>(topic: &'a str, payload: &'a [u8]) -> NewRecord<'a> {
    NewRecord {
        received_at_ms: 1_700_000_000_000,
        source: Source::Mqtt,
        topic,
        content_type: None,
        edge_note: None,
        payload,
    }
}

fn topics(data_dir: &std::path::Path) -> Vec<(u64, String)> {
    WalReader::open(data_dir, 0)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.topic)).unwrap())
        .collect()
}

#[test]
fn a_write_that_failed_on_a_full_disk_never_lands_later() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path();
    let disk = SmallDisk::mount(&data_dir.join("wal"), 1 << 20);
    let config = WalConfig {
        fsync: FsyncPolicy::Interval,
        ..WalConfig::default()
    };
    let (mut wal, _) = Wal::open(data_dir, config.clone()).unwrap();
    let payload = vec![b'x'; 3000];
    for i in 1..=3 {
        wal.append(&record(&format!("meters/ok{i}/json"), &payload))
            .unwrap();
    }
    wal.commit(true).unwrap();

    disk.fill();
    // Three records that do not fit: part of the first lands in the page the segment
    // already has, then the disk is full.
    for i in 1..=3 {
        // Appends are buffered; the failure shows at the commit.
        let _ = wal.append(&record(&format!("meters/failed{i}/json"), &payload));
    }
    assert!(wal.commit(true).is_err(), "the disk is full");
    assert!(
        wal.append(&record("meters/while-full/json", &payload))
            .is_err()
            || wal.commit(true).is_err(),
        "still full"
    );

    disk.free();
    for i in 1..=2 {
        let lsn = wal
            .append(&record(&format!("meters/after{i}/json"), &payload))
            .unwrap();
        assert_eq!(lsn, 3 + i, "the LSNs of what failed are given again");
    }
    wal.commit(true).unwrap();
    let expected: Vec<(u64, String)> = vec![
        (1, "meters/ok1/json".into()),
        (2, "meters/ok2/json".into()),
        (3, "meters/ok3/json".into()),
        (4, "meters/after1/json".into()),
        (5, "meters/after2/json".into()),
    ];
    assert_eq!(
        topics(data_dir),
        expected,
        "nothing that failed is in the log"
    );
    drop(wal);
    let (_wal, recovery) = Wal::open(data_dir, config).unwrap();
    assert_eq!(recovery.last_lsn, 5);
    assert_eq!(recovery.truncated_bytes, 0);
    assert!(recovery.set_aside.is_empty(), "{recovery:?}");
    assert_eq!(topics(data_dir), expected, "and after a restart");
}
