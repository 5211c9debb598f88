//! The network edge and the runtime of `meterflow serve`.
//!
//! - [`config`]: the configuration and its validation.
//! - [`credentials`]: the device credential store shared by every edge.
//! - [`mqtt`]: meterflow's own MQTT server (3.1.1 and 5, TLS, identities, limits).
//! - [`coap`]: the CoAP/UDP endpoint (reports and LwM2M 1.1 registration and Send).
//! - [`bridge`]: MQTT 5 clients of a broker the utility already runs (shared subscription,
//!   acknowledged to the broker once in the WAL).
//! - [`message`]: a message as accepted, and where the WAL stands.
//! - [`wal_writer`]: the one owner of the WAL: group commit, durability for the edges, and the
//!   hand-off to the pipeline queue.
//! - [`pipeline`]: routing by topic, decoding, batching, sinks and dead letters.
//! - [`devices`]: the last-heard state of every meter.
//! - [`http`]: health, metrics and the device API.
//!
//! [`serve`] wires them: MQTT server (tokio TCP/TLS, waits for durability) \
//!                                             +-> WAL writer thread (append, group commit) ->
//! CoAP server (tokio UDP, waits for durability) /    bounded queue -> pipeline thread (reading
//! the WAL for whatever the queue did not carry) -> Parquet and ClickHouse.

pub mod config;
pub mod credentials;
pub mod devices;
pub mod edge;
mod error;
pub mod http;
pub mod pipeline;
pub mod progress;
pub mod wal_writer;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use meterflow_storage::clickhouse::{ClickHouseWriter, SpoolConfig};
use meterflow_storage::{wal, Batcher, DeadLetterStore, ParquetSink, Wal};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use config::Config;
pub use edge::bridge::BridgeConfig;
pub use error::IngestError;
pub use pipeline::PipelineSummary;

/// The process-wide Prometheus recorder (installed once, on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // set_buckets refuses only an empty list; this one is not (summaries otherwise).
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Saves the device state every `every`, so a crash loses at most that much of it.
async fn save_devices_every(
    devices: devices::DeviceRegistry,
    data_dir: std::path::PathBuf,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (devices, dir) = (devices.clone(), data_dir.clone());
        match tokio::task::spawn_blocking(move || devices.save(&dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "saving the device state"),
            Err(e) => tracing::warn!(error = %e, "saving the device state"),
        }
    }
}

/// Tops up the device state from ClickHouse, in the background so start-up never waits for
/// it: meters the state file does not know, or knows older (a new disk, a kill -9 between
/// two saves). Retries while ClickHouse is away, for up to ten minutes.
fn restore_devices_from_clickhouse(
    config: meterflow_storage::clickhouse::ClickHouseConfig,
    devices: devices::DeviceRegistry,
) {
    tokio::spawn(async move {
        let mut delay = std::time::Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let (mut known, mut taken) = (0, 0);
            let read = meterflow_storage::analytics::device_snapshots(
                &config,
                devices::CLICKHOUSE_LOOKBACK_DAYS,
                |chunk| {
                    known += chunk.len();
                    taken += devices.merge_snapshots(chunk);
                },
            )
            .await;
            match read {
                Ok(()) => {
                    tracing::info!(
                        in_clickhouse = known,
                        taken,
                        "device state topped up from ClickHouse"
                    );
                    return;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "device state from ClickHouse: not yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "device state could not be read from ClickHouse; the state file's stands");
                    return;
                }
            }
        }
    });
}

/// What a run did, reported when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeSummary {
    /// Messages taken by the WAL writer from every edge.
    pub received: u64,
    /// MQTT connections that completed CONNECT.
    pub mqtt_sessions: u64,
    /// CoAP requests answered.
    pub coap_requests: u64,
    pub wal_overflow: u64,
    pub pipeline: PipelineSummary,
}

/// Runs meterflow until `shutdown` completes, then stops accepting, answers every publish
/// already read once it is durable, flushes every sink and saves the device state.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeSummary, IngestError> {
    config.validate()?;
    for key in config.deprecated_keys() {
        tracing::warn!(key, "this config key no longer has any effect (the embedded broker it tuned is gone): remove it");
    }
    let metrics = metrics_handle();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| IngestError::Io {
        action: "creating data_dir",
        path: config.data_dir.clone(),
        source,
    })?;
    let devices = devices::DeviceRegistry::load(&config.data_dir, config.devices.clone())?;
    tracing::info!(meters = devices.len(), "device state loaded");
    let (mut wal, recovery) = Wal::open(&config.data_dir, config.wal.clone())?;
    let checkpoint = wal::read_checkpoint(&config.data_dir)?;
    if checkpoint.local > recovery.last_lsn {
        tracing::warn!(
            checkpoint = checkpoint.local,
            last_lsn = recovery.last_lsn,
            "the WAL ends before the checkpoint (an unsynced tail lost with the power); new LSNs start after the checkpoint"
        );
    }
    // New messages must come after every position the checkpoint (its local part: records up
    // to it skip Parquet on replay) and the device state remember, even when the WAL lost its
    // tail with the power or its folder was deleted: else they would be taken for replays.
    wal.start_after(checkpoint.local.max(devices.max_lsn()))?;
    if recovery.last_lsn > checkpoint.all || recovery.truncated_bytes > 0 {
        tracing::info!(
            checkpoint = checkpoint.all,
            local_checkpoint = checkpoint.local,
            last_lsn = recovery.last_lsn,
            to_replay = recovery.last_lsn.saturating_sub(checkpoint.all),
            truncated_bytes = recovery.truncated_bytes,
            "replaying the WAL records that no sink confirmed before the last stop"
        );
    }
    let credentials = Arc::new(credentials::SharedCredentials::load(&config.data_dir)?);
    edge::mqtt::check_anonymous_rule(
        &config.mqtt,
        credentials.current().is_empty(),
        &credentials::CredentialStore::path(&config.data_dir),
    )?;
    edge::coap::check_anonymous_rule(
        &config.coap,
        credentials.current().is_empty(),
        &credentials::CredentialStore::path(&config.data_dir),
    )?;
    let marks = Arc::new(progress::LsnMarks::default());
    marks.committed.store(recovery.last_lsn, Ordering::Release);
    // Set at shutdown: the link drains and stops, the ClickHouse writer stops retrying.
    let stop = Arc::new(AtomicBool::new(false));
    let shutdown_signal = meterflow_storage::Shutdown::new();
    let spool_dir = config.data_dir.join("clickhouse-spool");
    if (!config.clickhouse.enabled() || config.clickhouse.spool_max_bytes == 0)
        && spool_dir.exists()
    {
        // Left by a run with the spool on: its records are in the WAL (replayed below, or
        // dropped with ClickHouse turned off), so the files are only disk.
        match std::fs::remove_dir_all(&spool_dir) {
            Ok(()) => {
                tracing::info!(dir = %spool_dir.display(), "removed the ClickHouse spool of an earlier run")
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %spool_dir.display(), "cannot remove the ClickHouse spool of an earlier run")
            }
        }
    }
    let clickhouse = if config.clickhouse.enabled() {
        tracing::info!(url = %config.clickhouse.url, database = %config.clickhouse.database, "ClickHouse sink on");
        restore_devices_from_clickhouse(config.clickhouse.clone(), devices.clone());
        let spool = (config.clickhouse.spool_max_bytes > 0).then(|| SpoolConfig {
            dir: spool_dir.clone(),
            max_bytes: config.clickhouse.spool_max_bytes,
        });
        Some(ClickHouseWriter::start(
            config.clickhouse.clone(),
            spool,
            shutdown_signal.signal(),
        )?)
    } else {
        None
    };
    let sinks = meterflow_storage::SinkSet::new(
        Some(ParquetSink::open(
            &config.data_dir,
            config.parquet.clone(),
            &config.node.id,
        )?),
        clickhouse,
        DeadLetterStore::open(&config.data_dir, &config.node.id)?,
        "clickhouse",
    );
    let clickhouse_failing_since = sinks.clickhouse_failing_since();
    let pipeline = pipeline::Pipeline::new(
        Batcher::new(config.batch.clone()),
        sinks,
        devices.clone(),
        config.data_dir.clone(),
        marks.clone(),
        checkpoint,
    );

    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| IngestError::Bind {
            what: "HTTP",
            addr: config.http.listen,
            source,
        })?;
    let mut coap_listeners = Vec::new();
    if let Some(addr) = config.coap.listen {
        let socket = edge::coap::bind(addr, config.coap.socket_buffer_bytes)?;
        let security = edge::coap::Security::Plain {
            loopback: addr.ip().is_loopback(),
        };
        coap_listeners.push((socket, security));
    }
    if let Some(addr) = config.coap.dtls_listen {
        let socket = edge::coap::bind(addr, config.coap.socket_buffer_bytes)?;
        let security = edge::coap::Security::dtls(&socket, &config.coap, credentials.clone())?;
        coap_listeners.push((socket, security));
    }
    let (mqtt_tx, mqtt_rx) = edge::channel(edge::SUBMISSIONS);
    // The bridges are MQTT inputs too: they share the MQTT edge's way into the WAL writer.
    let bridge_tx = mqtt_tx.clone();
    let mqtt =
        edge::mqtt::MqttServer::start(config.mqtt.clone(), credentials.clone(), mqtt_tx).await?;

    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(config.pipeline.queue_capacity);
    // Tells the async side when the pipeline ends, for whatever reason.
    let (pipeline_done_tx, mut pipeline_done_rx) = tokio::sync::oneshot::channel::<()>();
    let pipeline_running = Arc::new(AtomicBool::new(true));
    let running = pipeline_running.clone();
    let pipeline_thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || {
            let result = pipeline.run(queue_rx);
            running.store(false, Ordering::Release);
            let _ = pipeline_done_tx.send(());
            result
        })
        .map_err(|e| IngestError::Runtime(format!("spawning the pipeline thread: {e}")))?;
    let (coap_tx, coap_rx) = edge::channel(config.coap.max_inflight.max(1));
    let inputs = wal_writer::Inputs {
        mqtt: mqtt_rx,
        coap: coap_rx,
    };
    let writer_thread = wal_writer::spawn(wal, marks.clone(), inputs, queue_tx)
        .map_err(|e| IngestError::Runtime(format!("spawning the WAL writer thread: {e}")))?;
    let coap_tasks: Vec<_> = coap_listeners
        .into_iter()
        .map(|(socket, security)| {
            tokio::spawn(edge::coap::serve(
                socket,
                security,
                config.coap.clone(),
                credentials.clone(),
                coap_tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(coap_tx);
    let bridges = config
        .bridge
        .iter()
        .enumerate()
        .map(|(index, bridge)| {
            edge::bridge::start(bridge, &config.node.id, index, bridge_tx.clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    drop(bridge_tx);

    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = http::router(http::HttpState {
        devices: devices.clone(),
        metrics,
        readiness: http::Readiness {
            marks,
            wal_max_bytes: config.wal.max_bytes,
            clickhouse_failing_since,
            clickhouse: config
                .clickhouse
                .enabled()
                .then(|| config.clickhouse.clone()),
            pipeline_running,
            stopping: stop.clone(),
            bridges: bridges
                .iter()
                .map(|b| (b.name().to_string(), b.unsubscribed_since()))
                .collect(),
            clickhouse_asked: Arc::default(),
        },
        token: (!config.http.token.is_empty()).then(|| Arc::from(config.http.token.as_str())),
    });
    let saver = tokio::spawn(save_devices_every(
        devices.clone(),
        config.data_dir.clone(),
        std::time::Duration::from_secs(config.devices.save_interval_s),
    ));
    let http_task = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stop_rx.await;
            })
            .await
    });
    tracing::info!(
        node = %config.node.id,
        mqtt = %config.mqtt.listen,
        mqtt_tls = ?config.mqtt.tls_listen,
        coap = ?config.coap.listen,
        coaps = ?config.coap.dtls_listen,
        bridges = config.bridge.len(),
        http = %config.http.listen,
        data_dir = %config.data_dir.display(),
        "meterflow ready"
    );

    // Run until asked to stop, or until the pipeline ends by itself (a sink error, a panic,
    // the link gone): then meterflow must not go on acknowledging what nobody reads, so it
    // exits with an error and its supervisor restarts it (the WAL replays what was pending).
    let unexpected_stop = tokio::select! {
        () = shutdown => false,
        _ = &mut pipeline_done_rx => true,
    };
    if unexpected_stop {
        tracing::error!("the pipeline stopped on its own; shutting down");
    } else {
        tracing::info!("shutting down: answering what was read, then flushing every sink");
    }
    stop.store(true, Ordering::Relaxed);
    shutdown_signal.begin(std::time::Duration::from_millis(
        config.pipeline.shutdown_max_ms,
    ));
    // The bridges stop taking messages with the edges, and finish alongside them.
    let bridges_deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(config.pipeline.shutdown_max_ms);
    for bridge in &bridges {
        bridge.stop(bridges_deadline);
    }
    let mqtt_summary = mqtt
        .shutdown(std::time::Duration::from_millis(
            config.pipeline.shutdown_max_ms,
        ))
        .await;
    for bridge in bridges {
        bridge.finish().await;
    }
    // Whatever became of the CoAP server, the threads below must still be joined so that
    // every sink is flushed: a failed task is logged, not returned early.
    let mut coap_summary = edge::coap::CoapSummary::default();
    for task in coap_tasks {
        let summary = task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the CoAP server failed");
            edge::coap::CoapSummary::default()
        });
        coap_summary.requests += summary.requests;
        coap_summary.duplicates += summary.duplicates;
    }
    let joined = tokio::task::spawn_blocking(move || {
        let writer = writer_thread.join();
        let pipeline = pipeline_thread.join();
        (writer, pipeline)
    })
    .await
    .map_err(|e| IngestError::Runtime(format!("joining the pipeline: {e}")))?;
    saver.abort();
    let saved = devices.save(&config.data_dir);
    let _ = http_stop_tx.send(());
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "HTTP server ended with an error");
    }
    let writer_summary = joined
        .0
        .map_err(|_| IngestError::Runtime("the WAL writer thread panicked".into()))?;
    let pipeline_summary = joined
        .1
        .map_err(|_| IngestError::Runtime("the pipeline thread panicked".into()))??;
    saved?;
    if unexpected_stop {
        return Err(IngestError::Runtime(
            "the pipeline stopped on its own".into(),
        ));
    }
    Ok(ServeSummary {
        received: writer_summary.messages,
        mqtt_sessions: mqtt_summary.sessions,
        coap_requests: coap_summary.requests,
        wal_overflow: writer_summary.wal_overflow,
        pipeline: pipeline_summary,
    })
}
