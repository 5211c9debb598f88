//! The runtime of `meterflow serve`: [`start`] builds every part from a [`ValidConfig`] and
//! returns them [`Running`]; [`Running::shutdown`] stops them, in the one order written here.
//!
//! Start, in this order (each step needs the ones before it):
//! 1. the data folder, the device state, the WAL (recovery: torn tail cut, damage set aside)
//!    and its checkpoint; new LSNs begin after everything the checkpoint and the device
//!    state remember;
//! 2. the credential store, and the anonymous rule of every listener;
//! 3. the sinks ([`SinkSet`]: Parquet, the ClickHouse writer, the dead-letter files);
//! 4. the pipeline thread (it replays what the checkpoint does not cover first), then the
//!    WAL writer thread;
//! 5. the edges: MQTT, each CoAP listener, the DLMS wrapper listener, each bridge (a port in
//!    use stops start-up, naming it);
//! 6. HTTP and the device-state saver; then "meterflow ready".
//!
//! Stop, in this order, driven by one [`Shutdown`] whose deadline is
//! `pipeline.shutdown_max_ms` away:
//! 1. the shutdown begins: `/ready` says so, every edge stops taking messages and answers
//!    what it took once the WAL has it (by the deadline), the ClickHouse writer stops
//!    waiting for room and retrying;
//! 2. the edges end, dropping their senders; the WAL writer takes what is left, syncs and
//!    ends, closing the pipeline's queue;
//! 3. the pipeline reads what the queue did not carry from the WAL, flushes the batch,
//!    completes every Parquet file, lets ClickHouse take what it can, saves the checkpoint;
//! 4. the device state is saved; 5. HTTP stops.
//!
//! The pipeline stopping on its own (a sink error) starts the same order, and `serve` then
//! returns an error: meterflow must not go on acknowledging what nobody reads.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meterflow_storage::clickhouse::{ClickHouseWriter, SpoolConfig};
use meterflow_storage::wal::{self, Checkpoint};
use meterflow_storage::{Batcher, DeadLetterStore, ParquetSink, Shutdown, SinkSet, Wal};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;

use crate::config::{Config, ValidConfig};
use crate::credentials::{CredentialStore, SharedCredentials};
use crate::devices::DeviceRegistry;
use crate::dlms_profiles::PushProfiles;
use crate::dlms_replay::ReplayGuard;
use crate::edge::bridge::{self, Bridge};
use crate::edge::coap::{self, CoapSummary};
use crate::edge::dlms::{self, DlmsServer};
use crate::edge::mqtt::{self, MqttServer};
use crate::edge::{RawMessage, Submission};
use crate::error::IngestError;
use crate::pipeline::{Pipeline, PipelineSummary};
use crate::progress::LsnMarks;
use crate::wal_writer::{self, WriterSummary};
use crate::{edge, http};

/// What a run did, reported when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeSummary {
    /// Messages taken by the WAL writer from every edge.
    pub received: u64,
    /// MQTT connections that completed CONNECT.
    pub mqtt_sessions: u64,
    /// CoAP requests answered.
    pub coap_requests: u64,
    /// DLMS wrapper frames read (TCP and UDP).
    pub dlms_frames: u64,
    pub wal_overflow: u64,
    pub pipeline: PipelineSummary,
}

/// Runs meterflow until `stop` completes (or the pipeline stops on its own), then shuts it
/// down in order.
pub async fn serve(
    config: ValidConfig,
    stop: impl Future<Output = ()>,
) -> Result<ServeSummary, IngestError> {
    let mut running = start(config).await?;
    let on_its_own = tokio::select! {
        () = stop => false,
        () = running.pipeline_stopped() => true,
    };
    running.shutdown(on_its_own).await
}

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

/// Every part of a running meterflow, as [`start`] made them.
pub struct Running {
    config: Config,
    shutdown: Shutdown,
    devices: DeviceRegistry,
    edges: Edges,
    writer: std::thread::JoinHandle<WriterSummary>,
    pipeline: PipelineThread,
    device_saver: JoinHandle<()>,
    /// Keeps the meter registry current and the fleet gauges set.
    fleet_watch: JoinHandle<()>,
    http: JoinHandle<()>,
    /// HTTP stops last: `/ready` answers "stopping" through the whole shutdown.
    http_stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts every part, in the order of the module's doc.
pub async fn start(valid: ValidConfig) -> Result<Running, IngestError> {
    let (config, bridges) = valid.into_parts();
    for key in config.deprecated_keys() {
        tracing::warn!(key, "this config key no longer has any effect (the embedded broker it tuned is gone): remove it");
    }
    // First: the parts below take their metric handles as they start.
    let metrics = metrics_handle();
    let shutdown = Shutdown::new();

    // 1. State on disk.
    meterflow_storage::data_dir::prepare(&config.data_dir)?;
    let devices = DeviceRegistry::load(&config.data_dir, config.devices.clone())?;
    tracing::info!(meters = devices.len(), "device state loaded");
    let (wal, checkpoint, last_lsn) = recover_wal(&config, &devices)?;
    let marks = Arc::new(LsnMarks::default());
    marks.committed.store(last_lsn, Ordering::Release);

    // 2. Identities.
    let credentials = Arc::new(SharedCredentials::load(&config.data_dir)?);
    let store_empty = credentials.current().is_empty();
    let store_path = CredentialStore::path(&config.data_dir);
    mqtt::check_anonymous_rule(&config.mqtt, store_empty, &store_path)?;
    coap::check_anonymous_rule(&config.coap, store_empty, &store_path)?;
    dlms::check_plaintext_rule(&config.dlms, store_empty);
    dlms::check_keys(&config.dlms, &credentials.current());
    let push_profiles = config.dlms.push_profiles()?;
    check_profiles_named(&push_profiles, &credentials.current());

    // 3. Sinks, and the pipeline on them (not running yet).
    if config.clickhouse.enabled() {
        tokio::spawn(
            devices
                .clone()
                .top_up_from_clickhouse(config.clickhouse.clone()),
        );
    }
    let sinks = open_sinks(&config, &shutdown)?;
    let clickhouse_failing_since = sinks.clickhouse_failing_since();
    let pipeline = Pipeline::new(
        Batcher::new(config.batch.clone()),
        sinks,
        devices.clone(),
        config.data_dir.clone(),
        marks.clone(),
        checkpoint,
    )
    .with_dlms(
        credentials.clone(),
        ReplayGuard::load(&config.data_dir, checkpoint.all)?,
        push_profiles,
    );
    // The listener's own copy of the counters, fed by the pipeline with every push it
    // accepts (the WAL's replay at start-up included): a captured push sent again is refused
    // before it takes any storage.
    let listener_counters: dlms::SharedCounters = Arc::new(std::sync::Mutex::new(
        ReplayGuard::load(&config.data_dir, checkpoint.all)?,
    ));
    let pipeline = pipeline.with_listener_counters(listener_counters.clone());

    // 4. The ports: a port in use stops start-up before anything runs. MQTT starts taking
    // connections here; what it takes waits in its channel until the WAL writer runs. Each
    // edge submits through a channel of its own; the bridges are MQTT inputs and share the
    // MQTT edge's.
    raise_open_files_limit(&config);
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| IngestError::Bind {
            what: "HTTP",
            addr: config.http.listen,
            source,
        })?;
    let coap_listeners = bind_coap(&config, &credentials)?;
    let dlms_listener = config
        .dlms
        .listen
        .map(|addr| dlms::bind(addr, config.dlms.udp_buffer_bytes))
        .transpose()?;
    let (mqtt_tx, mqtt_rx) = edge::channel(edge::SUBMISSIONS);
    let (coap_tx, coap_rx) = edge::channel(config.coap.max_inflight.max(1));
    // One frame per TCP connection waits at most (it is not read further meanwhile), and
    // datagrams.
    let (dlms_tx, dlms_rx) = edge::channel(
        config.dlms.max_connections + config.dlms.max_pending_connections + dlms::UDP_QUEUE,
    );
    let mqtt = MqttServer::start(
        config.mqtt.clone(),
        credentials.clone(),
        mqtt_tx.clone(),
        shutdown.signal(),
    )
    .await?;

    // 5. The pipeline, then the WAL writer that feeds it.
    let (queue, pipeline) = PipelineThread::spawn(pipeline, config.pipeline.queue_capacity)?;
    let inputs = wal_writer::Inputs {
        mqtt: mqtt_rx,
        coap: coap_rx,
        dlms: dlms_rx,
    };
    let writer = wal_writer::spawn(wal, marks.clone(), inputs, queue)
        .map_err(|e| IngestError::Runtime(format!("spawning the WAL writer thread: {e}")))?;

    // 6. The other edges. The edges hold the only senders: the WAL writer ends when they do.
    let edges = Edges {
        coap: spawn_coap(coap_listeners, &config, &credentials, &coap_tx, &shutdown),
        dlms: dlms_listener.map(|bound| {
            DlmsServer::start(
                bound,
                config.dlms.clone(),
                credentials.clone(),
                listener_counters,
                dlms_tx.clone(),
                shutdown.signal(),
            )
        }),
        bridges: start_bridges(bridges, &config.node.id, &mqtt_tx, &shutdown),
        mqtt,
    };
    drop((mqtt_tx, coap_tx, dlms_tx));

    // 7. HTTP and the device state.
    let readiness = http::Readiness {
        marks,
        wal_max_bytes: config.wal.max_bytes,
        clickhouse_failing_since,
        clickhouse: config
            .clickhouse
            .enabled()
            .then(|| config.clickhouse.clone()),
        pipeline_running: pipeline.running.clone(),
        shutdown: shutdown.signal(),
        bridges: edges
            .bridges
            .iter()
            .map(|b| (b.name().to_string(), b.unsubscribed_since()))
            .collect(),
        clickhouse_asked: Arc::default(),
    };
    let fleet = crate::fleet::Fleet::default();
    let fleet_watch = tokio::spawn(crate::fleet::watch(
        fleet.clone(),
        config
            .clickhouse
            .enabled()
            .then(|| config.clickhouse.clone()),
        config.data_dir.clone(),
    ));
    let app = http::router(http::HttpState {
        devices: devices.clone(),
        metrics,
        readiness,
        token: (!config.http.token.is_empty()).then(|| Arc::from(config.http.token.as_str())),
        data_dir: config.data_dir.clone(),
        fleet,
    });
    let (http, http_stop) = serve_http(http_listener, app, &config.http);
    let device_saver = tokio::spawn(devices.clone().save_every(
        config.data_dir.clone(),
        Duration::from_secs(config.devices.save_interval_s),
    ));
    tracing::info!(
        node = %config.node.id,
        mqtt = %config.mqtt.listen,
        mqtt_tls = %crate::config::listener_shown(&config.mqtt.tls_listen),
        coap = %crate::config::listener_shown(&config.coap.listen),
        coaps = %crate::config::listener_shown(&config.coap.dtls_listen),
        dlms = %crate::config::listener_shown(&config.dlms.listen),
        bridges = config.bridge.len(),
        http = %config.http.listen,
        data_dir = %config.data_dir.display(),
        "meterflow ready"
    );
    if config.clickhouse.enabled() {
        tokio::spawn(warn_if_clickhouse_unreachable(config.clickhouse.clone()));
    }
    Ok(Running {
        config,
        shutdown,
        devices,
        edges,
        writer,
        pipeline,
        device_saver,
        fleet_watch,
        http,
        http_stop,
    })
}

/// The pipeline on its thread, and how the runtime learns that it ended.
struct PipelineThread {
    thread: std::thread::JoinHandle<Result<PipelineSummary, IngestError>>,
    /// Completes when the thread ends, for whatever reason.
    done: tokio::sync::oneshot::Receiver<()>,
    /// False once it has ended (for `/ready`).
    running: Arc<AtomicBool>,
}

impl PipelineThread {
    /// Runs `pipeline` on its own thread; returns the sender of its queue with it.
    fn spawn(
        pipeline: Pipeline,
        queue_capacity: usize,
    ) -> Result<(SyncSender<RawMessage>, PipelineThread), IngestError> {
        let (queue, queue_rx) = std::sync::mpsc::sync_channel(queue_capacity);
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let running = Arc::new(AtomicBool::new(true));
        let still = running.clone();
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                let result = pipeline.run(queue_rx);
                still.store(false, Ordering::Release);
                let _ = done_tx.send(());
                result
            })
            .map_err(|e| IngestError::Runtime(format!("spawning the pipeline thread: {e}")))?;
        Ok((
            queue,
            PipelineThread {
                thread,
                done,
                running,
            },
        ))
    }
}

/// Binds the CoAP listeners (plain and DTLS); a port in use stops start-up, naming it.
fn bind_coap(
    config: &Config,
    credentials: &Arc<SharedCredentials>,
) -> Result<Vec<(tokio::net::UdpSocket, coap::Security)>, IngestError> {
    let mut listeners = Vec::new();
    if let Some(addr) = config.coap.listen {
        let socket = coap::bind(addr, config.coap.socket_buffer_bytes)?;
        let security = coap::Security::Plain {
            loopback: addr.ip().is_loopback(),
        };
        listeners.push((socket, security));
    }
    if let Some(addr) = config.coap.dtls_listen {
        let socket = coap::bind(addr, config.coap.socket_buffer_bytes)?;
        let security = coap::Security::dtls(&socket, &config.coap, credentials.clone())?;
        listeners.push((socket, security));
    }
    Ok(listeners)
}

/// Serves each bound CoAP listener on a task of its own, until the shutdown.
fn spawn_coap(
    listeners: Vec<(tokio::net::UdpSocket, coap::Security)>,
    config: &Config,
    credentials: &Arc<SharedCredentials>,
    wal: &flume::Sender<Submission>,
    shutdown: &Shutdown,
) -> Vec<JoinHandle<CoapSummary>> {
    listeners
        .into_iter()
        .map(|(socket, security)| {
            tokio::spawn(coap::serve(
                socket,
                security,
                config.coap.clone(),
                credentials.clone(),
                wal.clone(),
                shutdown.signal(),
            ))
        })
        .collect()
}

/// Starts each `[[bridge]]` with what its check prepared; they submit through the MQTT
/// edge's channel.
fn start_bridges(
    bridges: Vec<(bridge::BridgeConfig, bridge::Prepared)>,
    node_id: &str,
    wal: &flume::Sender<Submission>,
    shutdown: &Shutdown,
) -> Vec<Bridge> {
    bridges
        .into_iter()
        .enumerate()
        .map(|(index, (bridge, prepared))| {
            bridge::start(
                &bridge,
                prepared,
                node_id,
                index,
                wal.clone(),
                shutdown.signal(),
            )
        })
        .collect()
}

/// Serves `app` on `listener` within the `[http]` limits until the returned sender is used
/// (or dropped); the task ends once the open connections have.
fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &crate::config::HttpConfig,
) -> (JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    let task = tokio::spawn(async move { http::serve(listener, app, &config, stopped).await });
    (task, stop)
}

/// The running edges.
struct Edges {
    mqtt: MqttServer,
    coap: Vec<JoinHandle<CoapSummary>>,
    dlms: Option<DlmsServer>,
    bridges: Vec<Bridge>,
}

impl Edges {
    /// Waits, once the shutdown has begun, until every edge has answered what it took and
    /// ended (by the shutdown's deadline): the MQTT sessions, the CoAP requests and the DLMS
    /// frames they had.
    async fn stopped(self) -> EdgeCounts {
        let mqtt = self.mqtt.stopped().await;
        for bridge in self.bridges {
            bridge.finish().await;
        }
        let mut coap_requests = 0;
        for task in self.coap {
            match task.await {
                Ok(summary) => coap_requests += summary.requests,
                Err(e) => tracing::error!(error = %e, "the CoAP server failed"),
            }
        }
        let dlms_frames = match self.dlms {
            Some(dlms) => dlms.stopped().await.frames,
            None => 0,
        };
        EdgeCounts {
            mqtt_sessions: mqtt.sessions,
            coap_requests,
            dlms_frames,
        }
    }
}

/// What the edges had, for the summary.
struct EdgeCounts {
    mqtt_sessions: u64,
    coap_requests: u64,
    dlms_frames: u64,
}

/// Opens the WAL (its recovery cuts a torn tail and sets damage aside) and reads the
/// checkpoint; returns them with the last LSN in the log. New LSNs start after every position
/// the checkpoint and the device state remember.
fn recover_wal(
    config: &Config,
    devices: &DeviceRegistry,
) -> Result<(Wal, Checkpoint, u64), IngestError> {
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
    Ok((wal, checkpoint, recovery.last_lsn))
}

/// The sinks of `serve`: Parquet, the ClickHouse writer (with its spool) when
/// `clickhouse.url` is set, and the dead-letter files.
fn open_sinks(config: &Config, shutdown: &Shutdown) -> Result<SinkSet, IngestError> {
    let spool_max_bytes = config.clickhouse.spool_max_bytes;
    let spool = if config.clickhouse.enabled() && spool_max_bytes > 0 {
        Some(SpoolConfig::under(&config.data_dir, spool_max_bytes))
    } else {
        SpoolConfig::remove_leftover(&config.data_dir);
        None
    };
    let clickhouse = if config.clickhouse.enabled() {
        tracing::info!(server = %config.clickhouse.server_for_logs(), database = %config.clickhouse.database, "ClickHouse sink on");
        Some(ClickHouseWriter::start(
            config.clickhouse.clone(),
            spool,
            shutdown.signal(),
        )?)
    } else {
        None
    };
    Ok(SinkSet::new(
        Some(ParquetSink::open(
            &config.data_dir,
            config.parquet.clone(),
            &config.node.id,
        )?),
        clickhouse,
        DeadLetterStore::open(&config.data_dir, &config.node.id)?,
        "clickhouse",
    )
    .with_status_files(ParquetSink::open_status(
        &config.data_dir,
        config.parquet.clone(),
        &config.node.id,
    )?)
    .with_event_files(ParquetSink::open_events(
        &config.data_dir,
        config.parquet.clone(),
        &config.node.id,
    )?))
}

impl Running {
    /// Completes when the pipeline thread ends on its own (a sink error, a panic).
    pub async fn pipeline_stopped(&mut self) {
        let _ = (&mut self.pipeline.done).await;
    }

    /// Stops every part in the order of the module's doc. `on_its_own`: the pipeline had
    /// stopped by itself, which makes the result an error once everything is flushed.
    pub async fn shutdown(self, on_its_own: bool) -> Result<ServeSummary, IngestError> {
        let Running {
            config,
            shutdown,
            devices,
            edges,
            writer,
            pipeline,
            device_saver,
            fleet_watch,
            http,
            http_stop,
        } = self;
        if on_its_own {
            tracing::error!("the pipeline stopped on its own; shutting down");
        } else {
            tracing::info!("shutting down: answering what was read, then flushing every sink");
        }
        // 1. Every part that takes or waits learns it at once.
        shutdown.begin(Duration::from_millis(config.pipeline.shutdown_max_ms));
        // 2. The edges end, their senders with them. Whatever became of a task, the threads
        // below must still be joined so that every sink is flushed: a failed task is logged,
        // not returned early.
        let edge_counts = edges.stopped().await;
        // 3. The WAL writer ends when every edge has, the pipeline when the writer closes its
        // queue (it flushes every sink first).
        let pipeline = pipeline.thread;
        let (writer, pipeline) =
            tokio::task::spawn_blocking(move || (writer.join(), pipeline.join()))
                .await
                .map_err(|e| IngestError::Runtime(format!("joining the pipeline: {e}")))?;
        // 4. The device state, 5. HTTP.
        device_saver.abort();
        fleet_watch.abort();
        let saved = devices.save(&config.data_dir);
        let _ = http_stop.send(());
        if let Err(e) = http.await {
            tracing::warn!(error = %e, "the HTTP server failed");
        }
        let writer =
            writer.map_err(|_| IngestError::Runtime("the WAL writer thread panicked".into()))?;
        let pipeline =
            pipeline.map_err(|_| IngestError::Runtime("the pipeline thread panicked".into()))??;
        saved?;
        if on_its_own {
            return Err(IngestError::Runtime(
                "the pipeline stopped on its own".into(),
            ));
        }
        Ok(ServeSummary {
            received: writer.messages,
            mqtt_sessions: edge_counts.mqtt_sessions,
            coap_requests: edge_counts.coap_requests,
            dlms_frames: edge_counts.dlms_frames,
            wal_overflow: writer.wal_overflow,
            pipeline,
        })
    }
}

/// Open files beyond the connections: the WAL, Parquet files, the other listeners, ClickHouse.
const OPEN_FILES_BESIDES: usize = 1024;

/// Raises the soft limit of open files to the hard limit, and warns when that is still below
/// what the connections need together: MQTT's logged-in and pending budgets and HTTP's cap
/// (each connection is a socket), the DLMS listener's when it is on, plus
/// [`OPEN_FILES_BESIDES`].
fn raise_open_files_limit(config: &Config) {
    let dlms = if config.dlms.listen.is_some() {
        config.dlms.max_connections + config.dlms.max_pending_connections
    } else {
        0
    };
    let connections = config.mqtt.max_connections
        + config.mqtt.max_pending_connections
        + config.http.max_connections
        + dlms;
    let wanted = (connections + OPEN_FILES_BESIDES) as u64;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            open_files = got,
            wanted,
            "the open-files limit is below mqtt.max_connections + mqtt.max_pending_connections + http.max_connections (+ dlms.max_connections + dlms.max_pending_connections) + 1024: raise it (LimitNOFILE= in the systemd unit, or ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the open-files limit"),
    }
}

/// Warns about meters whose credential names a push profile that is not configured: their
/// pushes become dead letters that say so until it is (the store can change while running,
/// so this is no reason to stop).
fn check_profiles_named(profiles: &PushProfiles, store: &CredentialStore) {
    let missing: Vec<(&str, &str)> = store
        .dlms_profiles()
        .filter(|(_, name)| !profiles.has(name))
        .collect();
    if let Some((meter, name)) = missing.first() {
        tracing::warn!(
            meters = missing.len(),
            first_meter = %meter,
            profile = %name,
            "credentials name DLMS push profiles that are not configured ([[dlms.profile]]): these meters' pushes become dead letters until they are"
        );
    }
}

/// Asks ClickHouse for its version once at start-up and says so, naming the server (never
/// its login), when it does not answer: meterflow runs on, and `/ready` says not ready.
async fn warn_if_clickhouse_unreachable(config: meterflow_storage::clickhouse::ClickHouseConfig) {
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        meterflow_storage::clickhouse::server_version(&config),
    )
    .await;
    let why = match answer {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    };
    tracing::warn!(
        server = %config.server_for_logs(),
        database = %config.database,
        error = %why,
        "ClickHouse is not reachable: what arrives is kept in the WAL and written once it answers; /ready says not ready until then"
    );
}
