//! `GET /.well-known/core` (RFC 6690): the resources in link-format.

use coap_lite::{CoapOption, Packet, ResponseType};

use crate::edge::coap::block1::Block;
use crate::edge::coap::message::{uint, uint_bytes, with_code};
use crate::edge::coap::server::Handling;

/// Content-Format of link-format (RFC 6690), for `/.well-known/core`.
const LINK_FORMAT: u16 = 40;

const WELL_KNOWN_CORE: &str =
    "</r>;rt=\"meterflow.report\";ct=\"50 60 110 112 65000 65001\",</rd>;rt=\"core.rd\";ct=40,</dp>;ct=\"110 112\"";

/// `GET /.well-known/core` (RFC 6690), in Block2 blocks when the client asks for small ones.
pub(super) fn well_known_core(request: &Packet, mut reply: Packet) -> Handling {
    let accept = request
        .get_first_option(CoapOption::Accept)
        .map(|v| uint(v));
    if accept.is_some_and(|a| a != u64::from(LINK_FORMAT)) {
        return Handling::Reply(with_code(
            reply,
            ResponseType::NotAcceptable,
            Some("/.well-known/core is application/link-format (40) only"),
        ));
    }
    reply.add_option(
        CoapOption::ContentFormat,
        uint_bytes(u64::from(LINK_FORMAT)),
    );
    let body = WELL_KNOWN_CORE.as_bytes();
    let block2 = request
        .get_first_option(CoapOption::Block2)
        .and_then(|v| Block::parse(v))
        .filter(|b| b.szx < 7);
    match block2 {
        Some(b) if b.size() < body.len() => {
            let start = (b.num as usize).saturating_mul(b.size());
            if start >= body.len() {
                return Handling::Reply(with_code(
                    reply,
                    ResponseType::BadOption,
                    Some("Block2 past the end"),
                ));
            }
            let end = (start + b.size()).min(body.len());
            let block = Block {
                num: b.num,
                more: end < body.len(),
                szx: b.szx,
            };
            reply.add_option(CoapOption::Block2, block.to_bytes());
            reply.payload = body[start..end].to_vec();
        }
        _ => reply.payload = body.to_vec(),
    }
    Handling::Reply(with_code(reply, ResponseType::Content, None))
}
