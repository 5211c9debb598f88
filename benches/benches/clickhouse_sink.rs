//! The ClickHouse sink and `meterflow import` beside `clickhouse-client` loading the same rows,
//! in one run on one server (not criterion: each side is one timed bulk load).
//!
//! `benches/clickhouse_sink.sh` starts a private server and runs this with
//! `METERFLOW_BENCH_CLICKHOUSE_URL`, `METERFLOW_BENCH_CLICKHOUSE_PORT` (native TCP),
//! `METERFLOW_BENCH_CLICKHOUSE_DIR` (the server's folder: its pid, to count its CPU),
//! `METERFLOW_BIN` (a release `meterflow`, for the import) and `METERFLOW_BENCH_ROWS` (row
//! counts, e.g. `2000000,10000000`). Under `cargo test` (no `--bench` argument) it does nothing.
//!
//! Each load is reported with its wall time, rows/s, the CPU seconds of the loader and of the
//! server (from /proc: on a shared 2-core machine CPU per row says more than wall time), and
//! the parts of the table after it (active, and level-0: one per insert per partition).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench fails loudly

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};
use meterflow_storage::clickhouse::{
    apply_schema, ClickHouseConfig, ClickHouseWriter, InsertCompression, InsertFormat, SideRows,
};

const BATCH_ROWS: usize = 100_000;

/// A change to the sink's config, for one variant.
type Tune = Box<dyn Fn(&mut ClickHouseConfig)>;
const CHANNELS: [&str; 4] = ["1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1", "1-0:2.8.2"];

struct Env {
    url: String,
    port: String,
    /// The private server's folder (its pid file; kill and start for the backlog).
    dir: Option<PathBuf>,
    bin: Option<String>,
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_s(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

impl Env {
    fn client(&self, sql: &str) -> String {
        let out = Command::new("clickhouse-client")
            .args(["--port", &self.port, "--query", sql])
            .output()
            .expect("clickhouse-client runs");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn server_cpu(&self) -> f64 {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("pid")).ok())
            .map_or(0.0, |p| cpu_s(p.trim()))
    }

    fn server(&self, command: &str) {
        let dir = self.dir.as_ref().expect("METERFLOW_BENCH_CLICKHOUSE_DIR");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/clickhouse-test.sh");
        let status = Command::new(script)
            .arg(command)
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "clickhouse-test.sh {command}");
    }

    /// Waits until the server merges nothing, so one load's merges do not bill the next.
    fn settle(&self) {
        for _ in 0..600 {
            if self.client("SELECT count() FROM system.merges") == "0" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn fresh(&self, runtime: &tokio::runtime::Runtime, db: &str) -> ClickHouseConfig {
        self.client(&format!("DROP DATABASE IF EXISTS {db}"));
        let config = ClickHouseConfig {
            url: self.url.clone(),
            database: db.into(),
            ..Default::default()
        };
        runtime
            .block_on(apply_schema(&config, false))
            .expect("schema");
        config
    }

    fn parts(&self, db: &str) -> (String, String) {
        let q = |extra: &str| {
            self.client(&format!(
                "SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'readings' {extra}"
            ))
        };
        (q("AND active"), q("AND level = 0"))
    }
}

/// One timed load.
struct Load {
    what: String,
    rows: usize,
    seconds: f64,
    loader_cpu: f64,
    server_cpu: f64,
    parts: (String, String),
}

impl Load {
    fn row(&self, reference: Option<&Load>) -> String {
        let ratio = reference.map_or(String::from("—"), |r| {
            format!(
                "{:.2}",
                (self.rows as f64 / self.seconds) / (r.rows as f64 / r.seconds)
            )
        });
        format!(
            "| {} | {} | {:.2} | {:.0} | {ratio} | {:.2} | {:.2} | {:.2} | {} / {} |",
            self.what,
            self.rows,
            self.seconds,
            self.rows as f64 / self.seconds,
            self.loader_cpu,
            self.server_cpu,
            (self.loader_cpu + self.server_cpu) * 1e6 / self.rows as f64,
            self.parts.0,
            self.parts.1
        )
    }
}

/// `rows` readings: meters × quarter-hours × 4 registers, in batches as the batcher makes them.
fn batches(rows: usize) -> Vec<RecordBatch> {
    let per_meter = 800;
    let meters = rows.div_ceil(per_meter);
    let ids: Vec<String> = (0..meters).map(|m| format!("bench-{m:07}")).collect();
    let mut out = Vec::new();
    let mut builder = ReadingBatchBuilder::with_capacity(BATCH_ROWS);
    let mut made = 0;
    'outer: for k in 0..per_meter {
        for (m, id) in ids.iter().enumerate() {
            let meta = RowMeta {
                meter_id: id,
                received_at_ms: 1_719_900_000_000,
                source: Source::Mqtt,
                format: Format::Pb,
            };
            let ts = 1_719_792_000_000 + (k / 4) as i64 * 900_000;
            let value = (m * 1000 + k) as f64 / 4.0;
            builder.append(&meta, CHANNELS[k % 4], ts, value, "kWh", 0);
            made += 1;
            if builder.len() == BATCH_ROWS {
                out.push(builder.finish());
            }
            if made == rows {
                break 'outer;
            }
        }
    }
    if !builder.is_empty() {
        out.push(builder.finish());
    }
    out
}

/// The live sink: the writer `serve` uses, fed batch by batch; timed until all is confirmed.
fn sink_load(
    env: &Env,
    runtime: &tokio::runtime::Runtime,
    what: &str,
    db: &str,
    batches: &[RecordBatch],
    url: Option<&str>,
    tune: impl FnOnce(&mut ClickHouseConfig),
) -> Load {
    env.settle();
    let mut config = env.fresh(runtime, db);
    if let Some(url) = url {
        config.url = url.into();
    }
    tune(&mut config);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut writer =
        ClickHouseWriter::start(config, None, meterflow_storage::ShutdownSignal::never()).unwrap();
    // The schema is applied by the writer's first insert: warm it with an empty job.
    writer
        .send(
            RecordBatch::new_empty(meterflow_proto::reading_schema()),
            SideRows::default(),
            0,
        )
        .unwrap();
    while writer.pending() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (cpu0, server0) = (cpu_s("self"), env.server_cpu());
    let started = Instant::now();
    for (i, batch) in batches.iter().enumerate() {
        writer
            .send(batch.clone(), SideRows::default(), i as u64 + 1)
            .unwrap();
    }
    while writer.pending() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let seconds = started.elapsed().as_secs_f64();
    let (cpu1, server1) = (cpu_s("self"), env.server_cpu());
    writer.close();
    assert!(writer.take_rejected().is_empty());
    assert_eq!(
        env.client(&format!("SELECT count() FROM {db}.readings")),
        rows.to_string()
    );
    Load {
        what: what.into(),
        rows,
        seconds,
        loader_cpu: cpu1 - cpu0,
        server_cpu: server1 - server0,
        parts: env.parts(db),
    }
}

/// A command timed with /usr/bin/time (its CPU), and the server's CPU meanwhile.
fn command_load(env: &Env, what: &str, db: &str, rows: usize, command: Command) -> Load {
    env.settle();
    let times = std::env::temp_dir().join("meterflow-bench-time");
    let server0 = env.server_cpu();
    let started = Instant::now();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%U %S", "-o"])
        .arg(&times)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        }
    }
    let status = timed.stdout(Stdio::null()).status().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let server1 = env.server_cpu();
    assert!(status.success(), "{what}");
    let text = std::fs::read_to_string(&times).unwrap();
    let cpu: f64 = text
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        env.client(&format!("SELECT count() FROM {db}.readings")),
        rows.to_string(),
        "{what}"
    );
    Load {
        what: what.into(),
        rows,
        seconds,
        loader_cpu: cpu,
        server_cpu: server1 - server0,
        parts: env.parts(db),
    }
}

/// clickhouse-client inserting a file (through a shell, for the redirect).
fn client_load(
    env: &Env,
    runtime: &tokio::runtime::Runtime,
    what: &str,
    db: &str,
    rows: usize,
    (file, format): (&Path, &str),
    port: &str,
) -> Load {
    env.fresh(runtime, db);
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!(
            "clickhouse-client --port {port} --query 'INSERT INTO {db}.readings FORMAT {format}' < {}",
            file.display()
        ),
    ]);
    command_load(env, what, db, rows, command)
}

/// A TCP proxy that passes at most `bytes_per_s` in each direction (a slow link).
fn slow_proxy(upstream: String, bytes_per_s: f64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    let started = Instant::now();
                    let mut sent = 0f64;
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        sent += n as f64;
                        let due = Duration::from_secs_f64(sent / bytes_per_s);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

/// Writes `batches` as a Parquet tree under `dir` (meterflow's own layout), for the import.
fn parquet_tree(dir: &Path, batches: &[RecordBatch]) -> PathBuf {
    let mut sink = meterflow_storage::ParquetSink::open(
        dir,
        meterflow_storage::ParquetConfig {
            file_max_rows: 5_000_000,
            ..Default::default()
        },
        "",
    )
    .unwrap();
    for batch in batches {
        sink.write(batch, None, Instant::now()).unwrap();
    }
    sink.close().unwrap();
    dir.join("readings")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let env = Env {
        url: var("METERFLOW_BENCH_CLICKHOUSE_URL").expect("METERFLOW_BENCH_CLICKHOUSE_URL"),
        port: var("METERFLOW_BENCH_CLICKHOUSE_PORT").expect("METERFLOW_BENCH_CLICKHOUSE_PORT"),
        dir: var("METERFLOW_BENCH_CLICKHOUSE_DIR").map(PathBuf::from),
        bin: var("METERFLOW_BIN"),
    };
    // `0` runs the backlog replay alone.
    let counts: Vec<usize> = var("METERFLOW_BENCH_ROWS")
        .unwrap_or_else(|| "2000000".into())
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .filter(|&n| n > 0)
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "ClickHouse {}, rows of 4 registers per meter and quarter-hour, batches of {BATCH_ROWS}.\n",
        env.client("SELECT version()")
    );
    let header = "| load | rows | s | rows/s | × client Native | loader CPU s | server CPU s | CPU µs/row | parts active / inserted |\n|---|---|---|---|---|---|---|---|---|";
    let import_only = var("METERFLOW_BENCH_IMPORT_ONLY").is_some();
    let work = std::env::temp_dir().join("meterflow-bench-ch");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    for &rows in &counts {
        let data = batches(rows);
        println!("### {rows} rows\n\n{header}");
        // The client's files come from the sink's table (the same rows, the server's layout).
        let sink = sink_load(
            &env,
            &runtime,
            "meterflow sink (Native, 2 in flight)",
            "mf_sink",
            &data,
            None,
            |_| {},
        );
        let native = work.join("readings.native");
        let tsv = work.join("readings.tsv");
        for (file, format) in [(&native, "Native"), (&tsv, "TabSeparated")] {
            let out = std::fs::File::create(file).unwrap();
            let status = Command::new("clickhouse-client")
                .args([
                    "--port",
                    &env.port,
                    "--query",
                    &format!("SELECT * FROM mf_sink.readings FORMAT {format}"),
                ])
                .stdout(out)
                .status()
                .unwrap();
            assert!(status.success());
        }
        if import_only {
            println!("{}", sink.row(None));
            import_side_by_side(&env, &runtime, &work, &data, rows, &native);
            continue;
        }
        let client_native = client_load(
            &env,
            &runtime,
            "clickhouse-client, Native file",
            "mf_client",
            rows,
            (&native, "Native"),
            &env.port,
        );
        let client_tsv = client_load(
            &env,
            &runtime,
            "clickhouse-client, TSV file",
            "mf_client",
            rows,
            (&tsv, "TabSeparated"),
            &env.port,
        );
        let sink2 = sink_load(
            &env,
            &runtime,
            "meterflow sink (Native, 2 in flight), again",
            "mf_sink",
            &data,
            None,
            |_| {},
        );
        let client_native2 = client_load(
            &env,
            &runtime,
            "clickhouse-client, Native file, again",
            "mf_client",
            rows,
            (&native, "Native"),
            &env.port,
        );
        let reference = if client_native2.seconds < client_native.seconds {
            &client_native2
        } else {
            &client_native
        };
        for load in [&sink, &client_native, &client_tsv, &sink2, &client_native2] {
            println!("{}", load.row(Some(reference)));
        }
        // More batches may wait, and so merge: inserts of up to 1M rows under a bulk load.
        let deep = sink_load(
            &env,
            &runtime,
            "meterflow sink, queue_batches = 10",
            "mf_sink",
            &data,
            None,
            |c| c.queue_batches = 10,
        );
        println!("{}", deep.row(Some(reference)));
        if let Some(bin) = &env.bin {
            let tree = parquet_tree(&work.join(format!("tree-{rows}")), &data);
            let load = import_load(
                &env,
                &runtime,
                bin,
                &work,
                &tree,
                rows,
                "meterflow import (Parquet tree → ClickHouse)",
            );
            println!("{}", load.row(Some(reference)));
        }
        if rows <= 2_000_000 {
            let variants: [(&str, Tune); 5] = [
                (
                    "sink: RowBinary, 1 in flight (before)",
                    Box::new(|c| {
                        c.insert_format = InsertFormat::RowBinary;
                        c.max_inflight_inserts = 1;
                    }),
                ),
                (
                    "sink: Native, 1 in flight",
                    Box::new(|c| c.max_inflight_inserts = 1),
                ),
                (
                    "sink: Native, 4 in flight",
                    Box::new(|c| c.max_inflight_inserts = 4),
                ),
                (
                    "sink: Native, lz4",
                    Box::new(|c| c.compression = InsertCompression::Lz4),
                ),
                (
                    "sink: Native, zstd",
                    Box::new(|c| c.compression = InsertCompression::Zstd),
                ),
            ];
            for (what, tune) in variants {
                let load = sink_load(&env, &runtime, what, "mf_sink", &data, None, tune);
                println!("{}", load.row(Some(reference)));
            }
            // A slow link: 100 Mbit/s each way, through a proxy, for the sink and the client.
            let rate = 100e6 / 8.0;
            let http = env.url.trim_start_matches("http://").to_string();
            let slow_http = slow_proxy(http, rate);
            let slow_tcp = slow_proxy(format!("127.0.0.1:{}", env.port), rate);
            let slow_url = format!("http://127.0.0.1:{slow_http}");
            for (what, compression) in [
                ("100 Mbit/s: sink, no compression", InsertCompression::None),
                ("100 Mbit/s: sink, lz4", InsertCompression::Lz4),
                ("100 Mbit/s: sink, zstd", InsertCompression::Zstd),
            ] {
                let load = sink_load(
                    &env,
                    &runtime,
                    what,
                    "mf_sink",
                    &data,
                    Some(&slow_url),
                    |c| c.compression = compression,
                );
                println!("{}", load.row(Some(reference)));
            }
            let load = client_load(
                &env,
                &runtime,
                "100 Mbit/s: clickhouse-client, Native (its LZ4)",
                "mf_client",
                rows,
                (&native, "Native"),
                &slow_tcp.to_string(),
            );
            println!("{}", load.row(Some(reference)));
        }
        let bytes =
            |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
        println!(
            "\nFiles: Native {:.0} MiB, TSV {:.0} MiB.\n",
            bytes(&native),
            bytes(&tsv)
        );
        for db in ["mf_sink", "mf_client", "mf_import"] {
            env.client(&format!("DROP DATABASE IF EXISTS {db}"));
        }
    }
    if let (Some(bin), false) = (&env.bin, import_only) {
        backlog(&env, &runtime, bin, &work);
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// `meterflow import` of the Parquet tree `tree` into a fresh `mf_import`, timed until the
/// command exits (it exits once ClickHouse has confirmed every row).
fn import_load(
    env: &Env,
    runtime: &tokio::runtime::Runtime,
    bin: &str,
    work: &Path,
    tree: &Path,
    rows: usize,
    what: &str,
) -> Load {
    env.fresh(runtime, "mf_import");
    let state = work.join(format!("import-state-{rows}"));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::write(
        work.join("import.toml"),
        "[clickhouse]\ndatabase = \"mf_import\"\n",
    )
    .unwrap();
    let mut command = Command::new(bin);
    command
        .args(["import", "--clickhouse-url", &env.url, "--data-dir"])
        .arg(&state)
        .arg(tree)
        .env("METERFLOW_CONFIG", work.join("import.toml"))
        .env("METERFLOW_LOG", "warn");
    command_load(env, what, "mf_import", rows, command)
}

/// `METERFLOW_BENCH_IMPORT_ONLY=1`: `meterflow import` of a Parquet tree beside
/// clickhouse-client loading the same rows from a Native file, taking turns three times, so
/// that neither side has the quieter moment of the machine. The client loads two files of
/// the same rows: in the order the import reads them (the tree's: by time, channel, meter),
/// and sorted as the table keeps them (by meter, channel, time), which the server sorts for
/// less. The first is the reference: the same rows in the same order.
fn import_side_by_side(
    env: &Env,
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    data: &[RecordBatch],
    rows: usize,
    sorted: &Path,
) {
    let bin = env.bin.as_deref().expect("METERFLOW_BIN");
    let tree = parquet_tree(&work.join(format!("tree-{rows}")), data);
    let as_read = work.join("readings-as-read.native");
    let status = Command::new("clickhouse-client")
        .args([
            "--port",
            &env.port,
            "--query",
            "SELECT * FROM mf_sink.readings ORDER BY ts, channel, meter_id FORMAT Native",
        ])
        .stdout(std::fs::File::create(&as_read).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let (mut clients, mut imports, mut clients_sorted) = (Vec::new(), Vec::new(), Vec::new());
    for turn in 1..=3 {
        clients.push(client_load(
            env,
            runtime,
            &format!("clickhouse-client, Native file in the import's order, turn {turn}"),
            "mf_client",
            rows,
            (&as_read, "Native"),
            &env.port,
        ));
        imports.push(import_load(
            env,
            runtime,
            bin,
            work,
            &tree,
            rows,
            &format!("meterflow import (Parquet tree → ClickHouse), turn {turn}"),
        ));
        clients_sorted.push(client_load(
            env,
            runtime,
            &format!("clickhouse-client, Native file sorted by the table's key, turn {turn}"),
            "mf_client",
            rows,
            (sorted, "Native"),
            &env.port,
        ));
    }
    let median = |loads: &[Load]| {
        let mut s: Vec<f64> = loads.iter().map(|l| l.seconds).collect();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let reference = clients
        .iter()
        .find(|l| l.seconds == median(&clients))
        .unwrap();
    for ((client, import), sorted) in clients.iter().zip(&imports).zip(&clients_sorted) {
        println!("{}", client.row(Some(reference)));
        println!("{}", import.row(Some(reference)));
        println!("{}", sorted.row(Some(reference)));
    }
    println!(
        "\nMedians: clickhouse-client {:.2} s (import's order), {:.2} s (sorted); meterflow import {:.2} s: import at {:.2}× the client on the same rows in the same order ({:.2}× the sorted file).\n",
        median(&clients),
        median(&clients_sorted),
        median(&imports),
        median(&clients) / median(&imports),
        median(&clients_sorted) / median(&imports)
    );
    for db in ["mf_sink", "mf_client", "mf_import"] {
        env.client(&format!("DROP DATABASE IF EXISTS {db}"));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ClickHouse is down while a fleet publishes 1000 × 1000 reports (5M rows) to `serve`: the
/// WAL holds them. Then ClickHouse comes back; timed until `readings` holds every row, beside
/// clickhouse-client loading the same rows from a Native file.
fn backlog(env: &Env, runtime: &tokio::runtime::Runtime, bin: &str, work: &Path) {
    let plan = meterflow_simulate::Plan {
        meters: 1000,
        messages: 1000,
        format: Format::Pb,
        shape: meterflow_simulate::Shape::Readings,
        start_ms: 1_719_792_000_000,
        interval_s: 900,
        prefix: "backlog-".into(),
    };
    let rows: usize = plan.expected_rows(0, 0).len() * plan.meters * plan.messages;
    env.settle();
    env.fresh(runtime, "mf_backlog");
    env.server("kill");
    let data = work.join("backlog-data");
    let _ = std::fs::remove_dir_all(&data);
    let config = work.join("backlog.toml");
    std::fs::write(&config, "[clickhouse]\ndatabase = \"mf_backlog\"\n").unwrap();
    let mqtt = free_port();
    let http = free_port();
    let mut serve = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--clickhouse-url", &env.url, "--data-dir"])
        .arg(&data)
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .args(["--mqtt-v5-listen", "off", "--coap-listen", "off"])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", mqtt)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let outage_cpu0 = cpu_s(&serve.id().to_string());
    let out = Command::new(bin)
        .args(["simulate", "--json", "--mqtt", &format!("127.0.0.1:{mqtt}")])
        .args(["--meters", "1000", "--messages", "1000", "--format", "pb"])
        .args([
            "--prefix",
            "backlog-",
            "--start",
            "2024-07-01T00:00:00Z",
            "--interval-s",
            "900",
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    // An outage lasts long beside the fleet's minute: by the time ClickHouse returns, the
    // pipeline has handled every record (Parquet written, the batches for ClickHouse in the
    // spool). Wait for that, so the time below is the replay's alone.
    let handled = format!(
        "meterflow_messages_total{{source=\"mqtt\",format=\"pb\"}} {}",
        plan.meters * plan.messages
    );
    let waited = Instant::now();
    while !metrics(http).contains(&handled) {
        assert!(
            waited.elapsed() < Duration::from_secs(900),
            "the pipeline never caught up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let outage_cpu = cpu_s(&serve.id().to_string()) - outage_cpu0;
    let spool_mib = metric_value(&metrics(http), "meterflow_clickhouse_spool_bytes") / 1048576.0;
    let wal_mib = dir_bytes(&data.join("wal")) as f64 / 1048576.0;
    // The clock starts when the server answers /ping, watched every 10 ms (serve probes every
    // 250 ms, so it cannot start before the clock), not when the start script returns.
    let http_port: u16 = env
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let starting = std::thread::scope(|scope| {
        let script = scope.spawn(|| env.server("start"));
        let begun = Instant::now();
        while !http_get(http_port, "/ping").contains("Ok.") {
            assert!(
                begun.elapsed() < Duration::from_secs(120),
                "ClickHouse did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The clock and both CPU baselines at that moment.
        let baseline = (
            Instant::now(),
            cpu_s(&serve.id().to_string()),
            env.server_cpu(),
        );
        script.join().unwrap();
        baseline
    });
    let (started, serve_cpu0, server_cpu0) = starting;
    let serve_pid = serve.id().to_string();
    // Polled over HTTP without FINAL (a cheap count; a clickhouse-client process or FINAL on
    // millions of rows every 100 ms would bill the machine for the watching), then checked
    // with FINAL once the plain count is there.
    let count = |sql: &str| {
        let page = http_get(http_port, &format!("/?query={}", sql.replace(' ', "%20")));
        page.split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    // (seconds, serve's CPU, the server's CPU) when the rows were all there.
    let mut done;
    loop {
        done = (
            started.elapsed().as_secs_f64(),
            cpu_s(&serve_pid) - serve_cpu0,
            env.server_cpu() - server_cpu0,
        );
        if count("SELECT count() FROM mf_backlog.readings") >= rows
            && count("SELECT count() FROM mf_backlog.readings FINAL") == rows
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the backlog never completed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let replayed = Load {
        what: "ClickHouse back → `readings FINAL` complete (serve sending its spool)".into(),
        rows,
        seconds: done.0,
        loader_cpu: done.1,
        server_cpu: done.2,
        parts: env.parts("mf_backlog"),
    };
    let _ = Command::new("kill").arg(serve.id().to_string()).status();
    let _ = serve.wait();
    // The reference: the same rows from a Native file, by the client.
    let native = work.join("backlog.native");
    let file = std::fs::File::create(&native).unwrap();
    let status = Command::new("clickhouse-client")
        .args([
            "--port",
            &env.port,
            "--query",
            "SELECT * FROM mf_backlog.readings FINAL FORMAT Native",
        ])
        .stdout(file)
        .status()
        .unwrap();
    assert!(status.success());
    let client = client_load(
        env,
        runtime,
        "clickhouse-client, the same rows from a Native file",
        "mf_client",
        rows,
        (&native, "Native"),
        &env.port,
    );
    println!("\n### Backlog replay: ClickHouse down while {rows} rows waited in the WAL ({wal_mib:.0} MiB) and the spool ({spool_mib:.0} MiB)\n");
    println!("During the outage serve spent {outage_cpu:.2} CPU s taking the fleet's reports (MQTT, WAL, decoding, Parquet, spool): {:.2} µs per row, outside the timed replay.\n", outage_cpu * 1e6 / rows as f64);
    println!("| load | rows | s | rows/s | × client | loader CPU s | server CPU s | CPU µs/row | parts active / inserted |\n|---|---|---|---|---|---|---|---|---|");
    println!("{}", replayed.row(Some(&client)));
    println!("{}", client.row(Some(&client)));
    for db in ["mf_backlog", "mf_client"] {
        env.client(&format!("DROP DATABASE IF EXISTS {db}"));
    }
}

/// `serve`'s `/metrics` page.
fn metrics(port: u16) -> String {
    http_get(port, "/metrics")
}

/// A GET on loopback: the whole answer, headers and body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut page = String::new();
    let _ = stream.read_to_string(&mut page);
    page
}

/// A gauge or counter without labels from a `/metrics` page; 0 when absent.
fn metric_value(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
