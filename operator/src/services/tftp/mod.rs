//! The TFTP service that serves phones their configuration, trust lists and firmware (the Cisco TFTP
//! service, P.1-5; docs/wire-formats.md §3.1 and §6.2: UDP 69), read-only.
//!
//! `packet` is the wire format (RFC 1350, 2347, 2348, 2349, 7440), `source` where files come from and
//! `server` the UDP server, with one socket per transfer or, in single-port mode, every transfer on
//! the listening port, and the bounds it keeps against hostile and forged requests (its module docs).

pub mod packet;
pub mod server;
pub mod source;

pub use packet::{ErrorCode, Mode, Opcode, Packet, PacketError, Reply, Request, TransferOptions};
pub use server::{
    CounterSnapshot, Counters, FailureKind, MAX_FILENAME_LEN, MAX_UNCONFIRMED_SENDS, NameRejection, REPLY_QUEUE, ServerConfig, TftpServer,
    TftpServerError, TransferPort, check_filename,
};
pub use source::{FileSource, MemoryFiles, SwappableSource};
