//! `POST /r/{meter_id}`: a report in the format its Content-Format names. Also the two ways
//! a resource hands a request to the WAL, which LwM2M Send and registration use too:
//! [`Server::ingest`] (a message, decoded once to choose the answer) and
//! [`Server::forbidden`] (a refusal, kept as an `unauthorized` dead letter).

use std::net::SocketAddr;

use bytes::Bytes;
use coap_lite::{Packet, ResponseType};
use meterflow_decoders::{decode, DecodeContext};
use meterflow_proto::{is_valid_meter_id, now_ms, Format, Source};

use crate::edge::coap::message::with_code;
use crate::edge::coap::server::{Caller, Handling, Server};
use crate::edge::{policy, EdgeNote, EdgeNoteKind, RawMessage};

const REPORT_FORMATS: &str = "Content-Format must be 50 (json), 60 (cbor), 110 (senml+json), 112 (senml+cbor), 65000 (meterflow protobuf) or 65001 (dsmr)";

impl Server {
    /// `POST /r/{meter_id}`.
    pub(super) fn report(
        &self,
        meter_id: &str,
        content_format: Option<u64>,
        body: Vec<u8>,
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
    ) -> Handling {
        if !is_valid_meter_id(meter_id) {
            return Handling::Reply(with_code(
                reply,
                ResponseType::NotFound,
                Some("meter_id must be 1 to 64 characters of [A-Za-z0-9._-]"),
            ));
        }
        if let Some(identity) = caller.identity() {
            let allowed =
                policy::device_may_publish_for(&self.credentials.current(), identity, meter_id);
            if !allowed {
                return self.forbidden(
                    caller,
                    peer,
                    format!("/r/{meter_id}"),
                    format!("may not post for meter {meter_id:?}"),
                    body,
                    reply,
                );
            }
        }
        let format = match content_format {
            None => None,
            Some(cf) => u16::try_from(cf)
                .ok()
                .and_then(Format::from_coap_content_format),
        };
        let Some(format) = format.filter(|f| *f != Format::Lwm2m) else {
            return Handling::Reply(with_code(
                reply,
                ResponseType::UnsupportedContentFormat,
                Some(REPORT_FORMATS),
            ));
        };
        let via = caller.identity().filter(|id| *id != meter_id);
        self.ingest(meter_id, format, body, reply, via)
    }

    /// Decodes to choose the answer, and hands the raw message on for storage either way;
    /// `via`: the gateway that sent it for `meter_id` (heard too).
    pub(super) fn ingest(
        &self,
        meter_id: &str,
        format: Format,
        body: Vec<u8>,
        reply: Packet,
        via: Option<&str>,
    ) -> Handling {
        let received_at_ms = now_ms();
        let ctx = DecodeContext {
            meter_id,
            received_at_ms,
        };
        // A DLMS push is opened with its meter's keys and checked against the replay
        // counters by the pipeline, which the edge does not hold: it is stored and answered
        // 2.04, and what the pipeline refuses is a dead letter with its reason.
        let decoded = match format {
            Format::Dlms => Ok(Default::default()),
            _ => decode(format, &body, &ctx),
        };
        let (code, diagnostic) = match decoded {
            Ok(decoded) if decoded.rejected.is_empty() => (ResponseType::Changed, None),
            Ok(decoded) => (
                ResponseType::Changed,
                Some(format!(
                    "{} part(s) rejected, first: {}: {}",
                    decoded.rejected.len(),
                    decoded.rejected[0].position,
                    decoded.rejected[0].reason
                )),
            ),
            Err(e) => (ResponseType::BadRequest, Some(e.to_string())),
        };
        Handling::Ingest {
            message: RawMessage {
                received_at_ms,
                via: via.map(Box::from),
                ..RawMessage::new(
                    Source::Coap,
                    format!("meters/{meter_id}/{format}"),
                    Bytes::from(body),
                )
            },
            reply,
            code,
            diagnostic,
        }
    }

    /// 4.03 for a request outside the caller's identity, answered once its `unauthorized`
    /// dead letter (with identity, address and the body) is durable.
    pub(super) fn forbidden(
        &self,
        caller: &Caller,
        peer: SocketAddr,
        resource: String,
        reason: String,
        body: Vec<u8>,
        reply: Packet,
    ) -> Handling {
        metrics::counter!("meterflow_coap_denied_total", "reason" => "forbidden").increment(1);
        let identity = caller.identity().map(str::to_string);
        tracing::info!(identity = identity.as_deref().unwrap_or("anonymous"), %peer, %reason, "CoAP: request refused");
        let refusal = EdgeNote {
            kind: EdgeNoteKind::Unauthorized,
            identity,
            client_id: None,
            peer: peer.to_string(),
            reason,
        };
        Handling::Ingest {
            message: RawMessage {
                edge_note: Some(Box::new(refusal)),
                ..RawMessage::new(Source::Coap, resource, Bytes::from(body))
            },
            reply,
            code: ResponseType::Forbidden,
            diagnostic: Some("not this identity's to send".into()),
        }
    }
}
