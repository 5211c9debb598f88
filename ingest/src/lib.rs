//! The network edge and the runtime of `meterflow serve`.
//!
//! - [`config`]: the configuration and its validation.
//! - [`broker`]: the embedded MQTT broker (rumqttd).
//! - [`link`]: the consumer that moves messages from the broker into the pipeline queue.
//! - [`pipeline`]: routing by topic, decoding, batching, sinks and dead letters.
//! - [`devices`]: the last-heard state of every meter.
//! - [`http`]: health, metrics and the device API.
//!
//! [`serve`] wires them: broker -> link thread -> bounded queue -> pipeline thread -> Parquet.

pub mod broker;
pub mod config;
pub mod devices;
mod error;
pub mod http;
pub mod link;
pub mod pipeline;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use meterflow_storage::{Batcher, DeadLetterStore, ParquetSink};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use config::Config;
pub use error::IngestError;
pub use pipeline::PipelineSummary;

/// The process-wide Prometheus recorder (installed once, on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// What a run did, reported when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeSummary {
    pub received: u64,
    pub router_drops: u64,
    pub pipeline: PipelineSummary,
}

/// Runs meterflow until `shutdown` completes, then stops accepting, drains the broker,
/// flushes every sink and saves the device state.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<ServeSummary, IngestError> {
    config.validate()?;
    let metrics = metrics_handle();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| IngestError::Io {
        action: "creating data_dir",
        path: config.data_dir.clone(),
        source,
    })?;
    let devices = devices::DeviceRegistry::load(&config.data_dir)?;
    let pipeline = pipeline::Pipeline::new(
        Batcher::new(config.batch.clone()),
        ParquetSink::open(&config.data_dir, config.parquet.clone())?,
        DeadLetterStore::open(&config.data_dir)?,
        devices.clone(),
    );

    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| IngestError::Bind {
            what: "HTTP",
            addr: config.http.listen,
            source,
        })?;
    let (link_tx, link_rx) = broker::start(&config.mqtt)?;

    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(config.pipeline.queue_capacity);
    let pipeline_thread = std::thread::Builder::new()
        .name("pipeline".into())
        .spawn(move || pipeline.run(queue_rx))
        .map_err(|e| IngestError::Broker(format!("spawning the pipeline thread: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let link_thread = link::spawn(
        link_tx,
        link_rx,
        queue_tx,
        stop.clone(),
        config.pipeline.clone(),
    )
    .map_err(|e| IngestError::Broker(format!("spawning the link thread: {e}")))?;

    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = http::router(http::HttpState {
        devices: devices.clone(),
        metrics,
    });
    let http_task = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stop_rx.await;
            })
            .await
    });
    tracing::info!(
        mqtt = %config.mqtt.listen,
        http = %config.http.listen,
        data_dir = %config.data_dir.display(),
        "meterflow ready"
    );

    shutdown.await;
    tracing::info!("shutting down: draining the broker and flushing every sink");
    stop.store(true, Ordering::Relaxed);
    let joined = tokio::task::spawn_blocking(move || {
        let link = link_thread.join();
        let pipeline = pipeline_thread.join();
        (link, pipeline)
    })
    .await
    .map_err(|e| IngestError::Broker(format!("joining the pipeline: {e}")))?;
    let link_summary = joined
        .0
        .map_err(|_| IngestError::Broker("the link thread panicked".into()))?;
    let pipeline_summary = joined
        .1
        .map_err(|_| IngestError::Broker("the pipeline thread panicked".into()))??;
    devices.save(&config.data_dir)?;
    let _ = http_stop_tx.send(());
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "HTTP server ended with an error");
    }
    Ok(ServeSummary {
        received: link_summary.messages,
        router_drops: link_summary.router_drops,
        pipeline: pipeline_summary,
    })
}
