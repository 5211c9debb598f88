//! The CoAP endpoint (RFC 7252 over UDP; coap-lite parses and builds the messages): the way in
//! for NB-IoT and LTE-M meters, with the same WAL and delivery promise as MQTT.
//!
//! - `POST /r/{meter_id}` takes a report in the format its Content-Format names
//!   ([`meterflow_proto::Format::from_coap_content_format`]); `POST /rd`, `POST /rd/{id}`,
//!   `DELETE /rd/{id}` and `POST /dp` are LwM2M 1.1 registration and Send ([`lwm2m`]);
//!   `GET /.well-known/core` lists the resources.
//! - A report is decoded once here to choose the answer, then submitted to the WAL writer with
//!   its raw bytes; the answer (piggybacked on the ACK of a CON) goes out only when the writer
//!   says the message is durable: 2.04, or 4.00 with a diagnostic payload when it did not
//!   decode (the pipeline makes it a dead letter). A full WAL writer queue, a WAL at its
//!   budget, or too many requests waiting for it: 5.03 with Max-Age, so devices back off.
//! - Every answer is kept per peer and message ID for EXCHANGE_LIFETIME ([`exchanges`]): a
//!   retransmission gets the same answer and is never ingested twice.
//! - Block1 bodies are reassembled with bounds ([`block1`]).
//!
//! One task owns all state; answers that wait for the WAL come back to it on a channel. Every
//! table is bounded (exchanges, block transfers, registrations, requests in flight), so a flood
//! of datagrams from many addresses cannot grow the process without limit.
//!
//! The files:
//! - `config`: the settings (`[coap]`) and the start-up check of the anonymous rule;
//! - `io`: the listener: the socket, plain or DTLS ([`dtls`]), and the task that owns the
//!   server;
//! - `server`: the sans-IO server: retransmissions, the WAL hand-off, the answers once
//!   durable, housekeeping;
//! - `resources`: the way to a resource, and one file per family: reports, LwM2M
//!   registration and Send, `/.well-known/core`;
//! - `message`: reading requests and writing answers with coap-lite;
//! - [`exchanges`], [`block1`], [`lwm2m`]: the bounded tables (answers kept for
//!   retransmissions, Block1 transfers, LwM2M registrations).

pub mod block1;
mod config;
pub mod dtls;
pub mod exchanges;
mod io;
pub mod lwm2m;
mod message;
mod resources;
mod server;

#[cfg(test)]
mod tests;

pub use config::{check_anonymous_rule, CoapConfig};
pub use io::{bind, serve, Security};
#[doc(hidden)]
pub use server::fuzz_datagrams;
pub use server::{Caller, CoapSummary};
