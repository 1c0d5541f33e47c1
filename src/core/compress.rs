//! COMPRESS (spec 4.38): a connection switches both directions to DEFLATE after its `OK`; and what
//! happens when a client's DEFLATE stream cannot be inflated (spec 8.4).
//!
//! The bytes themselves are compressed and inflated by the connection's reader and writer
//! (`proto::deflate`); the core decides, counts the connections compressed against their limit,
//! and places the switch in the connection's output right after the `OK` (`Chunk::StartDeflate`),
//! so that everything after it, pushes included, goes out compressed.

use super::out::Out;
use super::{ConnId, Core, Req};
use crate::outbox::Chunk;
use crate::proto::code::{ByeCode, Code};
use crate::proto::server_line::{OkReply, ServerLine};

impl Core {
    /// COMPRESS DEFLATE. A barrier (see the command table): every earlier command of the
    /// connection is answered, so the switch comes after all of their answers.
    pub(super) fn compress(&mut self, req: Req) {
        let Some(c) = self.conns.get(&req.conn) else {
            return;
        };
        if c.compressed {
            return self.refuse(
                req,
                Code::COMPRESSION_ACTIVE,
                "this connection is compressed already",
            );
        }
        let limit = self.settings.limits.max_compressed;
        if self.compressed >= limit {
            let key = c.peer.key();
            self.tally.count("COMPRESS refused, at the limit", key);
            let text = if limit == 0 {
                "compression is turned off on this server; carry on uncompressed"
            } else {
                "the server compresses as many connections as it may; carry on uncompressed or try later"
            };
            return self.refuse(req, Code::SERVER_BUSY, text);
        }
        if let Some(c) = self.conns.get_mut(&req.conn) {
            c.compressed = true;
        }
        self.compressed += 1;
        let mut out = Out::new();
        out.ok(&req, OkReply::Compress);
        self.finish_then_deflate(req, out);
    }

    /// The reader could not inflate what the client sent: `BYE BAD_DEFLATE` (compressed, as
    /// everything after the switch) and the connection closes. Commands not yet answered get no
    /// answer (spec 5.6), and nothing of the bad stream was run.
    pub(super) fn close_bad_deflate(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.closing = true;
        log::debug!(
            "connection {conn} from {} sent a DEFLATE stream that does not inflate; closing it",
            c.peer
        );
        self.tally
            .count("connections closed for a bad DEFLATE stream", c.peer.key());
        let bye = ServerLine::Bye {
            code: ByeCode::BAD_DEFLATE,
            text: "your compressed stream could not be inflated; connect again",
        };
        c.outbox.push_unbounded(Chunk::Owned(bye.to_bytes()));
        self.disconnected(conn);
    }

    /// Connections compressed now.
    pub fn compressed_connections(&self) -> usize {
        self.compressed
    }
}
