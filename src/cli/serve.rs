//! `meterflow serve`: the server itself ([`meterflow_ingest::serve`]) on a runtime of its
//! own, until Ctrl-C or SIGTERM, and VEE on its schedule (`vee.schedule`,
//! [`super::vee_schedule`]); its flags are [`ListenArgs`](super::ListenArgs).

use anyhow::Context;
use meterflow_ingest::ValidConfig;

/// Runs the servers, the pipeline and the sinks of `config` until SIGTERM or Ctrl-C.
pub fn run(config: ValidConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let node = config.config().node.id.clone();
    // The recorder before the schedule's first run (a catch-up at start-up) counts anything.
    meterflow_ingest::metrics_handle();
    // Dropped when serve returns: the schedule's thread ends at its next wait.
    let (_stop_vee, vee_stop) = std::sync::mpsc::channel::<()>();
    super::vee_schedule::start(config.config().clone(), vee_stop).context("[vee] schedule")?;
    let summary = runtime.block_on(meterflow_ingest::serve(config, shutdown_signal()))?;
    tracing::info!(
        node,
        received = summary.received,
        rows = summary.pipeline.rows,
        dead_letters = summary.pipeline.dead_letters,
        files = summary.pipeline.files,
        from_wal = summary.pipeline.from_wal,
        mqtt_sessions = summary.mqtt_sessions,
        wal_overflow = summary.wal_overflow,
        coap_requests = summary.coap_requests,
        dlms_frames = summary.dlms_frames,
        "meterflow stopped cleanly"
    );
    Ok(())
}

/// Resolves at the first Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
