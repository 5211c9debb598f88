//! Block1 reassembly (RFC 7959 §2.5): a large request body arrives in numbered blocks, each
//! answered with 2.31 Continue, and the last one completes the request.
//!
//! Bounded on every side, because anyone can send blocks: a body may not exceed
//! `max_payload_bytes` (4.13 with Size1 telling the limit), at most `max_transfers` bodies are
//! being assembled at once (5.03 with Max-Age past that) and at most [`PER_PEER`] per peer, a
//! transfer nobody continues for `timeout` is dropped, and blocks must come in order (4.08
//! Request Entity Incomplete otherwise). coap-lite's `BlockHandler` has no bound on a body's
//! total size nor on the number of transfers, hence this module.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bodies one peer may be sending at once (one per resource is the usual case).
pub const PER_PEER: usize = 4;

/// A Block1 option value: block number, more flag, size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    /// Parses the option's unsigned integer (0 to 3 bytes).
    pub fn parse(bytes: &[u8]) -> Option<Block> {
        if bytes.len() > 3 {
            return None;
        }
        let v = bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        Some(Block {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx: (v & 0x7) as u8,
        })
    }

    pub fn to_bytes(self) -> Vec<u8> {
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx);
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        bytes[skip..].to_vec()
    }

    /// Block size in bytes (szx 7 is BERT, for CoAP over TCP only).
    pub fn size(self) -> usize {
        1 << (usize::from(self.szx) + 4)
    }
}

/// What to do with a block.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Stored: answer 2.31 Continue with this Block1 option.
    Continue(Block),
    /// The body is complete: handle it as the request, and echo this Block1 in the answer;
    /// with the Content-Format the first block stated, if it did.
    Complete(Vec<u8>, Block, Option<u64>),
    /// Refused; the transfer (if any) is dropped.
    Refuse(BlockRefusal),
}

#[derive(Debug, PartialEq, Eq)]
pub enum BlockRefusal {
    /// 4.13, with Size1 = the limit.
    TooLarge { limit: usize },
    /// 4.08: a block out of order, or one of a transfer that is not (or no longer) known.
    Incomplete(&'static str),
    /// 4.00: a malformed block.
    BadBlock(&'static str),
    /// 5.03: too many transfers at once.
    Busy,
}

struct Transfer {
    body: Vec<u8>,
    next_num: u32,
    szx: u8,
    last_seen: Instant,
    content_format: Option<u64>,
}

/// A transfer is identified by the peer and the request's URI (RFC 7959 §2.4: not by token).
type TransferKey = (SocketAddr, String);

pub struct Assembler {
    max_payload_bytes: usize,
    max_transfers: usize,
    timeout: Duration,
    transfers: HashMap<TransferKey, Transfer>,
}

impl Assembler {
    pub fn new(max_payload_bytes: usize, max_transfers: usize, timeout: Duration) -> Self {
        Assembler {
            max_payload_bytes,
            max_transfers,
            timeout,
            transfers: HashMap::new(),
        }
    }

    /// Transfers under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.transfers.len()
    }

    /// Bytes held in unfinished bodies.
    pub fn buffered_bytes(&self) -> usize {
        self.transfers.values().map(|t| t.body.capacity()).sum()
    }

    /// Takes one block of the request to `uri` from `peer`. `size1` is the total size the
    /// client announced, `content_format` what this block states, if they did.
    #[allow(clippy::too_many_arguments)]
    pub fn block(
        &mut self,
        peer: SocketAddr,
        uri: &str,
        block: Block,
        payload: &[u8],
        size1: Option<u64>,
        content_format: Option<u64>,
        now: Instant,
    ) -> Next {
        if block.szx == 7 {
            return Next::Refuse(BlockRefusal::BadBlock(
                "block size 7 (BERT) is for CoAP over TCP",
            ));
        }
        let key = (peer, uri.to_string());
        if size1.is_some_and(|s| s > self.max_payload_bytes as u64) {
            self.transfers.remove(&key);
            return self.too_large();
        }
        if block.more && payload.len() != block.size() {
            self.transfers.remove(&key);
            return Next::Refuse(BlockRefusal::BadBlock(
                "a block other than the last must be exactly the block size",
            ));
        }
        if block.num == 0 {
            if !self.transfers.contains_key(&key) && !self.make_room(peer, now) {
                return Next::Refuse(BlockRefusal::Busy);
            }
            if !block.more {
                // A one-block body: nothing to hold.
                self.transfers.remove(&key);
                return self.finish(payload.to_vec(), block, content_format);
            }
            self.transfers.insert(
                key.clone(),
                Transfer {
                    body: Vec::with_capacity(block.size() * 2),
                    next_num: 0,
                    szx: block.szx,
                    last_seen: now,
                    content_format,
                },
            );
        }
        let Some(transfer) = self.transfers.get_mut(&key) else {
            return Next::Refuse(BlockRefusal::Incomplete(
                "no transfer under way for this block (it timed out or never started)",
            ));
        };
        if now.duration_since(transfer.last_seen) > self.timeout {
            self.transfers.remove(&key);
            return Next::Refuse(BlockRefusal::Incomplete("the transfer timed out"));
        }
        // The offset the block stands for; a client may lower its block size mid-way.
        let offset = block.num as usize * block.size();
        let have = transfer.body.len();
        if block.szx > transfer.szx || offset != have {
            let previous = transfer
                .next_num
                .checked_sub(1)
                .map(|n| n as usize * block.size());
            if offset + payload.len() == have && previous == Some(offset) {
                // The previous block again (its 2.31 was lost and the client re-sent it
                // with a new message ID): already stored, continue.
                return Next::Continue(block);
            }
            self.transfers.remove(&key);
            return Next::Refuse(BlockRefusal::Incomplete("block out of order"));
        }
        if have + payload.len() > self.max_payload_bytes {
            self.transfers.remove(&key);
            return self.too_large();
        }
        transfer.body.extend_from_slice(payload);
        transfer.szx = block.szx;
        transfer.next_num = block.num + 1;
        transfer.last_seen = now;
        if block.more {
            return Next::Continue(block);
        }
        let (body, first_format) = self
            .transfers
            .remove(&key)
            .map(|t| (t.body, t.content_format))
            .unwrap_or_default();
        self.finish(body, block, content_format.or(first_format))
    }

    fn finish(&self, body: Vec<u8>, block: Block, content_format: Option<u64>) -> Next {
        if body.len() > self.max_payload_bytes {
            return self.too_large();
        }
        Next::Complete(body, block, content_format)
    }

    fn too_large(&self) -> Next {
        Next::Refuse(BlockRefusal::TooLarge {
            limit: self.max_payload_bytes,
        })
    }

    /// Whether a new transfer from `peer` fits, after dropping the timed-out ones.
    fn make_room(&mut self, peer: SocketAddr, now: Instant) -> bool {
        if self.transfers.len() >= self.max_transfers {
            self.expire(now);
        }
        let from_peer = self.transfers.keys().filter(|(p, _)| *p == peer).count();
        self.transfers.len() < self.max_transfers && from_peer < PER_PEER
    }

    /// Drops the transfers nobody continued within the timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.transfers
            .retain(|_, t| now.duration_since(t.last_seen) <= timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn b(num: u32, more: bool) -> Block {
        Block { num, more, szx: 2 } // 64-byte blocks
    }

    #[test]
    fn block_options_round_trip() {
        for block in [
            b(0, true),
            b(5, false),
            Block {
                num: 70_000,
                more: true,
                szx: 6,
            },
        ] {
            assert_eq!(Block::parse(&block.to_bytes()), Some(block));
        }
        assert_eq!(
            Block::parse(&[]),
            Some(Block {
                num: 0,
                more: false,
                szx: 0
            })
        );
        assert_eq!(Block::parse(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn a_body_in_blocks_is_reassembled() {
        let mut a = Assembler::new(1024, 8, Duration::from_secs(60));
        let body: Vec<u8> = (0..150u8).collect();
        let t = Instant::now();
        assert_eq!(
            a.block(peer(1), "/r/m", b(0, true), &body[..64], None, None, t),
            Next::Continue(b(0, true))
        );
        // The same block again (a lost 2.31): still fine.
        assert_eq!(
            a.block(peer(1), "/r/m", b(0, true), &body[..64], None, None, t),
            Next::Continue(b(0, true))
        );
        assert_eq!(
            a.block(peer(1), "/r/m", b(1, true), &body[64..128], None, None, t),
            Next::Continue(b(1, true))
        );
        assert_eq!(a.len(), 1);
        assert_eq!(
            a.block(peer(1), "/r/m", b(2, false), &body[128..], None, None, t),
            Next::Complete(body, b(2, false), None)
        );
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn limits_hold() {
        let t = Instant::now();
        let mut a = Assembler::new(100, 2, Duration::from_secs(60));
        let block = [0u8; 64];
        assert_eq!(
            a.block(peer(1), "/r/m", b(0, true), &block, None, None, t),
            Next::Continue(b(0, true))
        );
        assert_eq!(
            a.block(peer(1), "/r/m", b(1, true), &block, None, None, t),
            Next::Refuse(BlockRefusal::TooLarge { limit: 100 })
        );
        assert_eq!(a.len(), 0, "a refused transfer is dropped");
        assert_eq!(
            a.block(peer(1), "/r/m", b(0, true), &block, Some(5000), None, t),
            Next::Refuse(BlockRefusal::TooLarge { limit: 100 }),
            "Size1 over the limit is refused at once"
        );
        // Out of order, unknown transfer.
        assert!(matches!(
            a.block(peer(1), "/r/m", b(3, true), &block, None, None, t),
            Next::Refuse(BlockRefusal::Incomplete(_))
        ));
        // At most max_transfers at once; timed-out ones make room.
        a.block(peer(1), "/r/a", b(0, true), &block, None, None, t);
        a.block(peer(2), "/r/b", b(0, true), &block, None, None, t);
        assert_eq!(
            a.block(peer(3), "/r/c", b(0, true), &block, None, None, t),
            Next::Refuse(BlockRefusal::Busy)
        );
        let later = t + Duration::from_secs(61);
        assert_eq!(
            a.block(peer(3), "/r/c", b(0, true), &block, None, None, later),
            Next::Continue(b(0, true))
        );
        assert!(matches!(
            a.block(peer(1), "/r/a", b(1, true), &block, None, None, later),
            Next::Refuse(BlockRefusal::Incomplete(_))
        ));
        // A short block that claims more follows.
        assert!(matches!(
            a.block(peer(4), "/r/d", b(0, true), &block[..10], None, None, t),
            Next::Refuse(BlockRefusal::BadBlock(_))
        ));
    }

    #[test]
    fn one_peer_cannot_take_every_slot() {
        let t = Instant::now();
        let mut a = Assembler::new(1000, 100, Duration::from_secs(60));
        let block = [0u8; 64];
        for i in 0..PER_PEER {
            assert!(matches!(
                a.block(
                    peer(1),
                    &format!("/r/{i}"),
                    b(0, true),
                    &block,
                    None,
                    None,
                    t
                ),
                Next::Continue(_)
            ));
        }
        assert_eq!(
            a.block(peer(1), "/r/x", b(0, true), &block, None, None, t),
            Next::Refuse(BlockRefusal::Busy)
        );
        assert!(matches!(
            a.block(peer(2), "/r/x", b(0, true), &block, None, None, t),
            Next::Continue(_)
        ));
    }

    #[test]
    fn the_first_blocks_content_format_holds_for_the_body() {
        let mut a = Assembler::new(1024, 8, Duration::from_secs(60));
        let t = Instant::now();
        let block = [b'x'; 64];
        assert!(matches!(
            a.block(peer(1), "/r/m", b(0, true), &block, None, Some(50), t),
            Next::Continue(_)
        ));
        match a.block(peer(1), "/r/m", b(1, false), b"end", None, None, t) {
            Next::Complete(body, _, format) => assert_eq!((body.len(), format), (67, Some(50))),
            other => panic!("{other:?}"),
        }
    }
}
