//! The embedded MQTT broker (rumqttd), configured in code from [`MqttConfig`].
//!
//! rumqttd acknowledges a QoS 1 publish once it is in the router's in-memory log; meterflow
//! reads that log through one local link subscribed to `#` (see [`crate::link`]).
//! The log for that filter is `router_segment_bytes × router_segment_count` bytes at most:
//! that is the broker's burst buffer and the bound of its memory.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::MqttConfig;
use crate::IngestError;

/// The topic filter of the ingest link: every topic. rumqttd acknowledges a publish to a
/// topic no filter matches and then drops it, so the link takes everything and the pipeline
/// keeps what is not `meters/...` as a `bad_topic` dead letter.
pub const INGEST_FILTER: &str = "#";

/// Starts the broker on its own thread and returns the ingest link, already subscribed.
pub fn start(config: &MqttConfig) -> Result<(LinkTx, LinkRx), IngestError> {
    // rumqttd binds inside its own threads and only logs a failure; check first so that a
    // port in use stops start-up with a clear message.
    check_bindable("MQTT 3.1.1", config.listen)?;
    if let Some(v5) = config.listen_v5 {
        check_bindable("MQTT 5", v5)?;
    }

    let connections = ConnectionSettings {
        connection_timeout_ms: config.connect_timeout_ms,
        max_payload_size: config.max_payload_bytes,
        max_inflight_count: config.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen: SocketAddr| {
        HashMap::from([(
            name.to_string(),
            ServerSettings {
                name: name.to_string(),
                listen,
                tls: None,
                next_connection_delay_ms: 0,
                connections: connections.clone(),
            },
        )])
    };
    let broker_config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: config.router_segment_bytes,
            max_segment_count: config.router_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(server("mqtt-v4", config.listen)),
        v5: config.listen_v5.map(|addr| server("mqtt-v5", addr)),
        ..Default::default()
    };

    let mut broker = Broker::new(broker_config);
    let (mut link_tx, link_rx) = broker
        .link("meterflow-ingest")
        .map_err(|e| IngestError::Broker(format!("creating the ingest link: {e}")))?;
    link_tx
        .subscribe(INGEST_FILTER)
        .map_err(|e| IngestError::Broker(format!("subscribing to {INGEST_FILTER}: {e}")))?;
    let meters = broker
        .meters()
        .map_err(|e| IngestError::Broker(format!("creating the meters link: {e}")))?;
    std::thread::Builder::new()
        .name("mqtt-meters".into())
        .spawn(move || count_connections(&meters))
        .map_err(|e| IngestError::Broker(format!("spawning the meters thread: {e}")))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            // Blocks for the life of the process; rumqttd has no shutdown call.
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| IngestError::Broker(format!("spawning the broker thread: {e}")))?;
    tracing::info!(
        listen = %config.listen,
        listen_v5 = ?config.listen_v5,
        segment_bytes = config.router_segment_bytes,
        segments = config.router_segment_count,
        "MQTT broker started"
    );
    Ok((link_tx, link_rx))
}

/// Keeps `meterflow_mqtt_connections` at the router's connection count (less meterflow's own
/// link). The router reports it along with its traffic, so the gauge moves when messages flow.
fn count_connections(meters: &rumqttd::meters::MetersLink) {
    loop {
        match meters.recv() {
            Ok(batch) => {
                for meter in batch {
                    if let rumqttd::Meter::Router(_, router) = meter {
                        metrics::gauge!("meterflow_mqtt_connections")
                            .set(router.total_connections.saturating_sub(1) as f64);
                    }
                }
            }
            Err(rumqttd::meters::LinkError::TryRecv(flume::TryRecvError::Empty)) => {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(_) => return, // the router is gone
        }
    }
}

fn check_bindable(what: &'static str, addr: SocketAddr) -> Result<(), IngestError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| IngestError::Bind { what, addr, source })
}
