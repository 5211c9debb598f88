//! One bridge's connection loop ([`Link`]): it connects and reconnects, subscribes, hands
//! every message to the WAL writer, and acknowledges to the broker, in order, only what the
//! WAL made durable ([`await_durability`] brings the WAL's word back); and its metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flume::Sender;
use meterflow_proto::{now_ms, Source};
use meterflow_storage::ShutdownSignal;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::config::TopicPattern;
use super::BridgeSummary;
use crate::edge::{Durability, RawMessage, Submission};

/// A link's metric handles, labelled with the bridge's name (looked up once).
pub(super) struct BridgeMetrics {
    connected: metrics::Gauge,
    subscribed: metrics::Gauge,
    received: metrics::Counter,
    acked: metrics::Counter,
    not_acked: metrics::Counter,
    pending_acks: metrics::Gauge,
    reconnects: metrics::Counter,
    unmatched: metrics::Counter,
}

impl BridgeMetrics {
    pub(super) fn new(name: &str) -> BridgeMetrics {
        let name = name.to_string();
        BridgeMetrics {
            connected: metrics::gauge!("meterflow_bridge_connected", "bridge" => name.clone()),
            subscribed: metrics::gauge!("meterflow_bridge_subscribed", "bridge" => name.clone()),
            received: metrics::counter!("meterflow_received_total", "source" => "bridge"),
            acked: metrics::counter!("meterflow_bridge_acked_total", "bridge" => name.clone()),
            not_acked: metrics::counter!("meterflow_bridge_not_acked_total", "bridge" => name.clone()),
            pending_acks: metrics::gauge!("meterflow_bridge_pending_acks", "bridge" => name.clone()),
            reconnects: metrics::counter!("meterflow_bridge_reconnects_total", "bridge" => name.clone()),
            unmatched: metrics::counter!("meterflow_bridge_unmatched_topics_total", "bridge" => name),
        }
    }
}

/// A message handed to the WAL, waiting for the WAL's word.
struct AwaitingWal {
    /// The connection it came on: only that connection may acknowledge it (a later one gets
    /// it again from the broker).
    connection: u64,
    /// The message without its topic and payload: an acknowledgement needs its packet id.
    publish: Publish,
    durable: oneshot::Receiver<Durability>,
}

/// The WAL's word on a message, in the order the messages came.
struct Verdict {
    connection: u64,
    publish: Publish,
    durable: bool,
}

/// Waits for the WAL's word on each message, in order, and hands it to the link's loop, which
/// alone acknowledges (so that no acknowledgement is queued for a connection the loop has
/// already given up).
async fn await_durability(
    mut pending: mpsc::UnboundedReceiver<AwaitingWal>,
    verdicts: mpsc::UnboundedSender<Verdict>,
) {
    while let Some(next) = pending.recv().await {
        let durable = matches!(next.durable.await, Ok(Durability::Durable(_)));
        let outcome = Verdict {
            connection: next.connection,
            publish: next.publish,
            durable,
        };
        if verdicts.send(outcome).is_err() {
            return;
        }
    }
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After a message the WAL could not take (at its budget until the sinks catch up): how long
/// the bridge stays away before the broker sends it again. MQTT 5 has no way to refuse one
/// message and have it later (a PUBACK with an error code discards it), so the session is
/// resumed, as a meter at the edge comes back after MQTT 5's 0x97.
const WAL_FULL_PAUSE: Duration = Duration::from_secs(5);

/// The one task of a bridge that polls the connection: it takes messages, and it alone
/// queues acknowledgements, each only while the connection its message came on is up.
pub(super) struct Link {
    pub(super) name: String,
    pub(super) metrics: BridgeMetrics,
    pub(super) client: AsyncClient,
    pub(super) pattern: TopicPattern,
    pub(super) subscription: String,
    pub(super) qos: QoS,
    pub(super) wal: Sender<Submission>,
    /// Counts connections (CONNACKs).
    pub(super) connection: u64,
    /// Whether `connection` is up: its CONNACK seen and not lost since. Messages rumqttc
    /// still hands out from a lost connection are not taken (the broker sends them again).
    pub(super) connected: bool,
    /// Acknowledgements for the current connection that rumqttc's request channel had no
    /// room for yet (should never hold any: see REQUEST_CAPACITY).
    pub(super) to_ack: VecDeque<Publish>,
    /// Messages handed to the WAL whose outcome has not come back: what the broker has
    /// unacknowledged, at most `receive_maximum` while it keeps to it.
    pub(super) awaiting: usize,
    pub(super) receive_maximum: usize,
    /// Whether this connection was warned about a broker that sends more than
    /// `receive_maximum`.
    pub(super) warned: bool,
    /// Unix ms since when the bridge has been without its subscription; 0 while it holds it.
    pub(super) unsubscribed_since: Arc<AtomicI64>,
    pub(super) summary: BridgeSummary,
}

impl Link {
    pub(super) async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut shutdown: ShutdownSignal,
    ) -> BridgeSummary {
        // Both unbounded, and never awaited by this loop: it must keep polling the event loop,
        // which sends the acknowledgements. Entries are small (a packet id and a channel; the
        // payload is the WAL's), and the broker's flow control bounds them; Mosquitto 2.0.11
        // keeps to the Receive Maximum but sends a resumed session everything it holds at
        // once (`meterflow_bridge_pending_acks` shows it).
        let (to_wait, pending) = mpsc::unbounded_channel::<AwaitingWal>();
        let (outcomes_tx, mut verdicts) = mpsc::unbounded_channel::<Verdict>();
        tokio::spawn(await_durability(pending, outcomes_tx));
        let mut backoff = Duration::from_millis(500);
        // A refused subscription is asked for again on the same connection (what the session
        // still sends is taken and acknowledged meanwhile), with its own backoff.
        let mut subscribe_backoff = Duration::from_millis(500);
        let mut resubscribe_at: Option<Instant> = None;
        'run: loop {
            // One poll of the connection at a time, never cancelled by a WAL outcome or the
            // subscription timer: rumqttc may be connecting or writing a PUBACK inside it.
            let polled = {
                let mut poll = std::pin::pin!(eventloop.poll());
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.stopping() => break 'run,
                        Some(outcome) = verdicts.recv(), if self.connected => {
                            if !self.settle(outcome) {
                                break None;
                            }
                        }
                        () = tokio::time::sleep_until(resubscribe_at.unwrap_or_else(Instant::now)),
                            if resubscribe_at.is_some() && self.connected =>
                        {
                            resubscribe_at = None;
                            self.subscribe();
                        }
                        event = &mut poll => break Some(event),
                    }
                }
            };
            let Some(event) = polled else {
                // The WAL refused a message of this connection: drop it, stay away a while,
                // and the resumed session brings the message again.
                self.disconnected(&mut eventloop);
                tracing::warn!(bridge = %self.name, retry_in_ms = WAL_FULL_PAUSE.as_millis() as u64, "the WAL did not take a message: reconnecting later so that the broker sends it again");
                if sleep_or_stop(WAL_FULL_PAUSE, &mut shutdown).await {
                    break;
                }
                continue;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    self.connection += 1;
                    self.connected = true;
                    self.warned = false;
                    self.metrics.connected.set(1.0);
                    backoff = Duration::from_millis(500);
                    tracing::info!(bridge = %self.name, session_present = connack.session_present, "bridge connected");
                    // The session may hold the subscription already; subscribing again is
                    // harmless and covers a session the broker dropped.
                    resubscribe_at = None;
                    self.subscribe();
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let refused = suback
                        .return_codes
                        .iter()
                        .find(|code| !matches!(code, SubscribeReasonCode::Success(_)));
                    match refused {
                        None => {
                            self.set_subscribed(true);
                            subscribe_backoff = Duration::from_millis(500);
                            tracing::info!(bridge = %self.name, subscription = %self.subscription, "bridge subscribed");
                        }
                        Some(reason) => {
                            self.set_subscribed(false);
                            tracing::error!(bridge = %self.name, subscription = %self.subscription, reason = ?reason, retry_in_ms = subscribe_backoff.as_millis() as u64, "the broker refused the subscription (check the bridge's ACL at the broker, and that it has shared subscriptions): asking again");
                            resubscribe_at = Some(Instant::now() + subscribe_backoff);
                            subscribe_backoff = (subscribe_backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !self.connected {
                        // Read on a connection already given up: the broker sends it again.
                        continue;
                    }
                    if !self.take(publish, &to_wait).await {
                        tracing::error!(bridge = %self.name, "the WAL writer is gone; the bridge stops");
                        break;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acked(),
                Ok(_) => {}
                Err(e) => {
                    self.disconnected(&mut eventloop);
                    tracing::warn!(bridge = %self.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "bridge connection failed");
                    if sleep_or_stop(backoff, &mut shutdown).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            self.flush_acks();
        }
        // Stop taking messages, and release the WAL channel. What was handed to the WAL is
        // acknowledged as its outcome comes back, while the connection is polled (the
        // acknowledgements go out through it); then disconnect, the DISCONNECT queued behind
        // them; all by the deadline of the stop. Messages that arrive meanwhile are not
        // acknowledged: the broker keeps them for the session.
        drop(to_wait);
        drop(std::mem::replace(&mut self.wal, flume::bounded(0).0));
        let deadline = shutdown
            .deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(2));
        let finish = async {
            while self.awaiting > 0 && self.connected {
                let polled = {
                    let mut poll = std::pin::pin!(eventloop.poll());
                    loop {
                        tokio::select! {
                            biased;
                            Some(outcome) = verdicts.recv() => {
                                if !self.settle(outcome) {
                                    break None;
                                }
                            }
                            event = &mut poll => break Some(event),
                        }
                    }
                };
                match polled {
                    Some(Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_)))) => self.acked(),
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => self.disconnected(&mut eventloop),
                }
                self.flush_acks();
            }
            if self.connected && self.client.try_disconnect().is_ok() {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::PubAck(_))) => self.acked(),
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, finish).await;
        self.metrics.connected.set(0.0);
        self.set_subscribed(false);
        tracing::info!(bridge = %self.name, received = self.summary.received, acked = self.summary.acked, "bridge stopped");
        self.summary
    }

    fn subscribe(&mut self) {
        if let Err(e) = self
            .client
            .try_subscribe(self.subscription.clone(), self.qos)
        {
            tracing::error!(bridge = %self.name, error = %e, "cannot queue the subscription");
        }
    }

    /// Takes the WAL's word on a message: queues its acknowledgement if it is durable and its
    /// connection still up. `false` when the WAL refused a message of the current connection:
    /// the caller then drops the connection, so that the broker sends it again later.
    fn settle(&mut self, outcome: Verdict) -> bool {
        self.awaiting = self.awaiting.saturating_sub(1);
        self.metrics.pending_acks.set(self.awaiting as f64);
        let current = self.connected && outcome.connection == self.connection;
        if outcome.durable && current {
            self.to_ack.push_back(outcome.publish);
            self.flush_acks();
            return true;
        }
        self.metrics.not_acked.increment(1);
        // Here, a message of the connection that is up is one the WAL refused.
        !current
    }

    /// Queues the waiting acknowledgements in rumqttc's request channel, which the event loop
    /// sends in order (or drops, should the connection go first).
    fn flush_acks(&mut self) {
        while let Some(publish) = self.to_ack.front() {
            if self.client.try_ack(publish).is_err() {
                return;
            }
            self.to_ack.pop_front();
        }
    }

    /// A PUBACK went out to the broker.
    fn acked(&mut self) {
        self.summary.acked += 1;
        self.metrics.acked.increment(1);
    }

    fn set_subscribed(&self, subscribed: bool) {
        if subscribed {
            self.unsubscribed_since.store(0, Ordering::Release);
        } else {
            let _ = self.unsubscribed_since.compare_exchange(
                0,
                now_ms(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        self.metrics
            .subscribed
            .set(if subscribed { 1.0 } else { 0.0 });
    }

    /// The connection is lost or given up: rumqttc drops it and the acknowledgements it had
    /// not sent, and so does the link; the next poll connects again.
    fn disconnected(&mut self, eventloop: &mut EventLoop) {
        eventloop.clean();
        // Packets read before the loss and not yet handed out.
        eventloop.state.events.clear();
        self.to_ack.clear();
        if self.connected {
            self.metrics.reconnects.increment(1);
        }
        self.connected = false;
        self.metrics.connected.set(0.0);
        self.set_subscribed(false);
    }

    /// Hands one message to the WAL writer and, for QoS 1, to the durability waiter; `false`
    /// when the writer is gone.
    async fn take(
        &mut self,
        publish: Publish,
        to_wait: &mpsc::UnboundedSender<AwaitingWal>,
    ) -> bool {
        let wants_ack = publish.qos != QoS::AtMostOnce;
        self.summary.received += 1;
        self.metrics.received.increment(1);
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let topic = match self.pattern.canonical(&topic) {
            Some(canonical) => canonical,
            None => {
                self.metrics.unmatched.increment(1);
                topic
            }
        };
        let content_type = publish
            .properties
            .as_ref()
            .and_then(|p| p.content_type.clone());
        let (notify, durable) = if wants_ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let submission = Submission {
            message: RawMessage {
                content_type,
                ..RawMessage::new(Source::Bridge, topic, publish.payload.clone())
            },
            notify,
            budget: None,
        };
        if self.wal.send_async(submission).await.is_err() {
            return false;
        }
        if let Some(durable) = durable {
            let pending = AwaitingWal {
                connection: self.connection,
                publish: Publish {
                    topic: bytes::Bytes::new(),
                    payload: bytes::Bytes::new(),
                    properties: None,
                    ..publish
                },
                durable,
            };
            self.awaiting += 1;
            self.metrics.pending_acks.set(self.awaiting as f64);
            if to_wait.send(pending).is_err() {
                return false;
            }
            if self.awaiting > 4 * self.receive_maximum && !self.warned {
                self.warned = true;
                tracing::warn!(bridge = %self.name, awaiting = self.awaiting, receive_maximum = self.receive_maximum, "the broker sends far more unacknowledged messages than receive_maximum (a resumed session's backlog at once): they wait for the WAL in memory");
            }
        }
        true
    }
}

/// Sleeps `pause`; `true` if the shutdown began meanwhile.
async fn sleep_or_stop(pause: Duration, shutdown: &mut ShutdownSignal) -> bool {
    tokio::select! {
        _ = shutdown.stopping() => true,
        () = tokio::time::sleep(pause) => shutdown.is_stopping(),
    }
}
