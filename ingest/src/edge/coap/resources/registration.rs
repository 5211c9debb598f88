//! LwM2M 1.1 over CoAP: Register (`POST /rd`), Update (`POST /rd/{id}`), De-register
//! (`DELETE /rd/{id}`) and Send (`POST /dp`, stored under the meter id of the endpoint
//! registered from that address). The registry itself is [`crate::edge::coap::lwm2m`].

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use coap_lite::{CoapOption, Packet, ResponseType};
use meterflow_proto::{Format, Source};

use crate::edge::coap::lwm2m;
use crate::edge::coap::message::with_code;
use crate::edge::coap::server::{Caller, Handling, Server};
use crate::edge::{RawMessage, Submission};

impl Server {
    /// `POST /rd?ep=...`.
    pub(super) fn register(
        &mut self,
        queries: &[&str],
        body: Vec<u8>,
        peer: SocketAddr,
        caller: &Caller,
        mut reply: Packet,
        now: Instant,
    ) -> Handling {
        let params = match lwm2m::Params::parse(queries) {
            Ok(p) => p,
            Err(why) => {
                return Handling::Reply(with_code(reply, ResponseType::BadRequest, Some(&why)))
            }
        };
        if let Some(identity) = caller.identity() {
            let endpoint = params.endpoint.unwrap_or_default();
            if lwm2m::meter_id_of(endpoint).as_deref() != Some(identity) {
                return self.forbidden(
                    caller,
                    peer,
                    "/rd".into(),
                    format!("may not register endpoint {endpoint:?}"),
                    body,
                    reply,
                );
            }
        }
        let objects = String::from_utf8_lossy(&body);
        match self
            .registry
            .register(&params, &objects, peer, caller.session(), now)
        {
            Ok(id) => {
                if let Some(r) = self.registry.get(&id) {
                    tracing::info!(endpoint = %r.endpoint, meter_id = %r.meter_id, lifetime_s = r.lifetime_s, %peer, "LwM2M registration");
                    let meter_id = r.meter_id.clone();
                    self.heard_from(&meter_id);
                }
                reply.add_option(CoapOption::LocationPath, b"rd".to_vec());
                reply.add_option(CoapOption::LocationPath, id.into_bytes());
                Handling::Reply(with_code(reply, ResponseType::Created, None))
            }
            Err(lwm2m::RegisterError::Bad(why)) => {
                Handling::Reply(with_code(reply, ResponseType::BadRequest, Some(&why)))
            }
            Err(lwm2m::RegisterError::Full) => {
                Handling::Reply(self.busy(reply, "the registration table is full"))
            }
        }
    }

    /// `POST /rd/{id}`: an update.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn update(
        &mut self,
        id: &str,
        queries: &[&str],
        body: &[u8],
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
        now: Instant,
    ) -> Handling {
        let params = match lwm2m::Params::parse(queries) {
            Ok(p) => p,
            Err(why) => {
                return Handling::Reply(with_code(reply, ResponseType::BadRequest, Some(&why)))
            }
        };
        if let Some(refusal) = self.not_owner(id, caller, peer, body, &reply) {
            return refusal;
        }
        let objects = (!body.is_empty()).then(|| String::from_utf8_lossy(body));
        if self
            .registry
            .update(id, &params, objects.as_deref(), peer, caller.session(), now)
        {
            if let Some(meter_id) = self.registry.get(id).map(|r| r.meter_id.clone()) {
                self.heard_from(&meter_id);
            }
            Handling::Reply(with_code(reply, ResponseType::Changed, None))
        } else {
            Handling::Reply(with_code(
                reply,
                ResponseType::NotFound,
                Some("no such registration: register again"),
            ))
        }
    }

    /// `DELETE /rd/{id}`.
    pub(super) fn deregister(
        &mut self,
        id: &str,
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
    ) -> Handling {
        if let Some(refusal) = self.not_owner(id, caller, peer, b"", &reply) {
            return refusal;
        }
        if self.registry.remove(id) {
            Handling::Reply(with_code(reply, ResponseType::Deleted, None))
        } else {
            Handling::Reply(with_code(
                reply,
                ResponseType::NotFound,
                Some("no such registration"),
            ))
        }
    }

    /// `POST /dp`: an LwM2M Send from a registered endpoint.
    pub(super) fn send_operation(
        &self,
        content_format: Option<u64>,
        body: Vec<u8>,
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
        now: Instant,
    ) -> Handling {
        let Some(registration) = self.registry.at(peer, now) else {
            if caller.identity().is_some() {
                return self.forbidden(
                    caller,
                    peer,
                    "/dp".into(),
                    "Send without a registration in this session".into(),
                    body,
                    reply,
                );
            }
            return Handling::Reply(with_code(
                reply,
                ResponseType::Forbidden,
                Some("not registered from this address: register (POST /rd?ep=...) first"),
            ));
        };
        if registration.session != caller.session() {
            // Over DTLS a Send belongs to the session that registered (or last updated).
            return self.forbidden(
                caller,
                peer,
                "/dp".into(),
                "Send outside the session that registered: register or update first".into(),
                body,
                reply,
            );
        }
        let lwm2m = content_format
            .and_then(|cf| u16::try_from(cf).ok())
            .and_then(Format::from_coap_content_format)
            .is_some_and(|f| matches!(f, Format::Senml | Format::SenmlCbor | Format::Lwm2m));
        if !lwm2m {
            return Handling::Reply(with_code(
                reply,
                ResponseType::UnsupportedContentFormat,
                Some("Send takes SenML-CBOR (112), SenML-JSON (110) or OMA LwM2M JSON (11543)"),
            ));
        }
        let meter_id = registration.meter_id.clone();
        self.ingest(&meter_id, Format::Lwm2m, body, reply, None)
    }

    /// Over DTLS, a registration is updated or removed only by its own identity.
    fn not_owner(
        &self,
        id: &str,
        caller: &Caller,
        peer: SocketAddr,
        body: &[u8],
        reply: &Packet,
    ) -> Option<Handling> {
        let identity = caller.identity()?;
        let owner = self.registry.get(id)?;
        (owner.meter_id != identity).then(|| {
            self.forbidden(
                caller,
                peer,
                format!("/rd/{id}"),
                format!("may not change registration {id:?} of {:?}", owner.endpoint),
                body.to_vec(),
                reply.clone(),
            )
        })
    }

    /// A registration or update is the device's heartbeat: an empty status for its meter goes
    /// through the WAL like any message, so the device state (and ClickHouse `device_status`)
    /// shows it alive between Sends. Best effort: when the writer is busy it is skipped.
    fn heard_from(&self, meter_id: &str) {
        let message = RawMessage::new(
            Source::Coap,
            format!("meters/{meter_id}/status"),
            Bytes::from_static(b"{}"),
        );
        if self.wal.try_send(Submission::unanswered(message)).is_ok() {
            metrics::counter!("meterflow_received_total", "source" => "coap").increment(1);
        }
    }
}
