//! The resources, one file per family, and the way a request reaches them: the checks every
//! request passes (proxying, critical options, UTF-8 paths), Block1 reassembly, then the
//! method and the path.
//!
//! - [`report`]: `POST /r/{meter_id}`, and the two ways a request is stored (a message, or a
//!   refusal for the dead letters);
//! - [`registration`]: LwM2M 1.1 registration (`POST /rd`, `POST /rd/{id}`,
//!   `DELETE /rd/{id}`) and Send (`POST /dp`), on the registry of [`super::lwm2m`];
//! - [`discovery`]: `GET /.well-known/core`.

mod discovery;
mod registration;
mod report;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use coap_lite::{CoapOption, Packet, RequestType, ResponseType};

use super::block1::{Block, BlockRefusal, Next};
use super::message::{request_type, strings, uint, unsupported_critical_option, with_code};
use super::server::{Caller, Handling, Server};

const WHAT_IS_HERE: &str =
    "no such resource: POST /r/{meter_id}, LwM2M /rd and /dp, GET /.well-known/core";

impl Server {
    /// A request that is not a retransmission, to its resource: what to answer now, or what
    /// to store first.
    pub(in crate::edge::coap) fn request(
        &mut self,
        packet: &Packet,
        peer: SocketAddr,
        caller: &Caller,
        mut reply: Packet,
        now: Instant,
    ) -> Handling {
        let fail = |reply: Packet, code: ResponseType, why: &str| {
            Handling::Reply(with_code(reply, code, Some(why)))
        };
        if packet.get_option(CoapOption::ProxyUri).is_some()
            || packet.get_option(CoapOption::ProxyScheme).is_some()
        {
            return fail(
                reply,
                ResponseType::ProxyingNotSupported,
                "this is not a proxy",
            );
        }
        if let Some(problem) = unsupported_critical_option(packet) {
            return fail(reply, ResponseType::BadOption, &problem);
        }
        let (Some(path), Some(queries)) = (
            strings(packet, CoapOption::UriPath),
            strings(packet, CoapOption::UriQuery),
        ) else {
            return fail(
                reply,
                ResponseType::BadRequest,
                "Uri-Path and Uri-Query must be UTF-8",
            );
        };
        let RequestType::Post = request_type(packet) else {
            return self.other_method(packet, &path, peer, caller, reply);
        };
        let mut body: Cow<'_, [u8]> = Cow::Borrowed(&packet.payload);
        let mut first_block_format = None;
        if let Some(option) = packet.get_first_option(CoapOption::Block1) {
            let Some(block) = Block::parse(option) else {
                return fail(
                    reply,
                    ResponseType::BadOption,
                    "Block1 is longer than 3 bytes",
                );
            };
            let uri = format!("{}?{}", path.join("/"), queries.join("&"));
            let size1 = packet.get_first_option(CoapOption::Size1).map(|v| uint(v));
            let format = packet
                .get_first_option(CoapOption::ContentFormat)
                .map(|v| uint(v));
            match self
                .blocks
                .block(peer, &uri, block, &packet.payload, size1, format, now)
            {
                Next::Continue(block) => {
                    reply.add_option(CoapOption::Block1, block.to_bytes());
                    return Handling::Reply(with_code(reply, ResponseType::Continue, None));
                }
                Next::Complete(whole, block, format) => {
                    reply.add_option(CoapOption::Block1, block.to_bytes());
                    body = Cow::Owned(whole);
                    // A client may state the Content-Format with the first block only.
                    first_block_format = format;
                }
                Next::Refuse(BlockRefusal::TooLarge { limit }) => {
                    return self.too_large(reply, limit)
                }
                Next::Refuse(BlockRefusal::Incomplete(why)) => {
                    return fail(reply, ResponseType::RequestEntityIncomplete, why)
                }
                Next::Refuse(BlockRefusal::BadBlock(why)) => {
                    return fail(reply, ResponseType::BadRequest, why)
                }
                Next::Refuse(BlockRefusal::Busy) => {
                    metrics::counter!("meterflow_coap_busy_total", "why" => "block_transfers")
                        .increment(1);
                    return Handling::Reply(self.busy(reply, "too many block transfers under way"));
                }
            }
        } else if body.len() > self.max_payload_bytes {
            return self.too_large(reply, self.max_payload_bytes);
        }
        let content_format = packet
            .get_first_option(CoapOption::ContentFormat)
            .map(|v| uint(v))
            .or(first_block_format);
        match path.as_slice() {
            ["r", meter_id] => self.report(
                meter_id,
                content_format,
                body.into_owned(),
                peer,
                caller,
                reply,
            ),
            ["rd"] => self.register(&queries, body.into_owned(), peer, caller, reply, now),
            ["rd", id] => self.update(id, &queries, &body, peer, caller, reply, now),
            ["dp"] => {
                self.send_operation(content_format, body.into_owned(), peer, caller, reply, now)
            }
            [".well-known", "core"] => fail(reply, ResponseType::MethodNotAllowed, "use GET"),
            _ => fail(reply, ResponseType::NotFound, WHAT_IS_HERE),
        }
    }

    /// GET and DELETE (and anything else that is not POST).
    fn other_method(
        &mut self,
        packet: &Packet,
        path: &[&str],
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
    ) -> Handling {
        match (request_type(packet), path) {
            (RequestType::Get, [".well-known", "core"]) => {
                discovery::well_known_core(packet, reply)
            }
            (RequestType::Delete, ["rd", id]) => self.deregister(id, peer, caller, reply),
            (_, ["r", _] | ["rd", ..] | ["dp"] | [".well-known", "core"]) => {
                Handling::Reply(with_code(
                    reply,
                    ResponseType::MethodNotAllowed,
                    Some("method not allowed on this resource"),
                ))
            }
            _ => Handling::Reply(with_code(reply, ResponseType::NotFound, Some(WHAT_IS_HERE))),
        }
    }
}
