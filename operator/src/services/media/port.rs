//! A UDP port read in batches (recvmmsg through quinn-udp) into a buffer made once, and written one
//! datagram at a time: the relay's legs, and the generator of `bench media`.

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest datagram relayed; RTP over Ethernet stays well under it.
pub const MAX_DATAGRAM: usize = 2048;
/// Datagrams read at once per port: 32 KiB of buffer a port.
pub const BATCH: usize = 16;

pub struct Port {
    socket: UdpSocket,
    state: UdpSocketState,
}

/// Where a port's reads land, made once and reused for every read.
pub struct Batch {
    storage: Box<[u8]>,
    meta: [RecvMeta; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Batch { storage: vec![0u8; MAX_DATAGRAM * BATCH].into_boxed_slice(), meta: [RecvMeta::default(); BATCH] }
    }
}

impl Batch {
    /// The first `count` datagrams read, each with its source.
    pub fn datagrams(&self, count: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.storage
            .chunks(MAX_DATAGRAM)
            .zip(&self.meta)
            .take(count)
            .flat_map(|(buffer, meta)| buffer[..meta.len].chunks(meta.stride.max(1)).map(move |packet| (meta.addr, packet)))
    }
}

impl Port {
    /// Binds `address` (port 0: any), with deep buffers both ways as for SIP
    /// (`services::udp_listener`), so that a burst waits rather than drops, and without UDP GRO,
    /// which quinn-udp turns on: phones send one packet at a time, so it would coalesce little, and
    /// a buffer for its 64-segment trains would take 4 MiB a port. Inside a tokio runtime.
    pub fn bind(address: SocketAddr) -> Result<Port, String> {
        let socket = std::net::UdpSocket::bind(address).map_err(|e| format!("port {}: {e}", address.port()))?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket)).map_err(|e| e.to_string())?;
        without_gro(&socket);
        let buffer = crate::services::udp_listener::RECEIVE_BUFFER;
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), buffer);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), buffer);
        Ok(Port { socket: UdpSocket::from_std(socket).map_err(|e| e.to_string())?, state })
    }

    pub fn address(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Waits for datagrams and reads up to [`BATCH`] of them into `batch`; how many.
    pub async fn receive(&self, batch: &mut Batch) -> std::io::Result<usize> {
        let mut chunks = batch.storage.chunks_mut(MAX_DATAGRAM);
        let mut slices: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let meta = &mut batch.meta;
        self.socket.async_io(Interest::READABLE, || self.state.recv(UdpSockRef::from(&self.socket), &mut slices, meta)).await
    }

    /// Sends one datagram now; a full send buffer is an error (`WouldBlock`), as UDP would drop it.
    pub fn try_send(&self, destination: SocketAddr, contents: &[u8]) -> std::io::Result<()> {
        let transmit = Transmit { destination, ecn: None, contents, segment_size: None, src_ip: None };
        self.state.try_send(UdpSockRef::from(&self.socket), &transmit)
    }

    /// Sends one datagram, waiting while the send buffer is full.
    pub async fn send(&self, destination: SocketAddr, contents: &[u8]) -> std::io::Result<()> {
        self.socket.async_io(Interest::WRITABLE, || self.try_send(destination, contents)).await
    }
}

fn without_gro(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let off: libc::c_int = 0;
    // SAFETY: setsockopt reads `off` for the length given; a failure leaves GRO on, and the reads
    // then split coalesced datagrams by their stride (truncated past the buffer).
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
