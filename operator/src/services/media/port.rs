//! A UDP port read in batches (recvmmsg through quinn-udp) into a buffer made once: the relay's legs,
//! and the generator of `bench media`. The relay writes its datagrams in trains ([`Train`]: one
//! sendmsg with UDP GSO for a run of datagrams to one destination); the generator one at a time.

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::unix::AsyncFd;

/// Largest datagram relayed; RTP over Ethernet stays well under it.
pub const MAX_DATAGRAM: usize = 2048;
/// Datagrams read at once per port: 32 KiB of buffer a port.
pub const BATCH: usize = 16;

pub struct Port {
    /// Through `AsyncFd` rather than tokio's `UdpSocket`, whose reads end only on `WouldBlock`: a
    /// read that filled less than the batch emptied the queue, and marks the port not readable
    /// without a second, empty recvmmsg (one system call less per wake-up).
    socket: AsyncFd<std::net::UdpSocket>,
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
        without_ancillary_data(&socket);
        let buffer = crate::services::udp_listener::RECEIVE_BUFFER;
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), buffer);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), buffer);
        // SAFETY: the `std::net::UdpSocket` owns its descriptor, and the `AsyncFd` owns the socket
        // until it is dropped: the descriptor stays open and the same for as long as required.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(|e| e.to_string())?;
        Ok(Port { socket, state })
    }

    /// The socket's inode, as `/proc/net/udp` lists it with what the kernel dropped on its way in.
    pub fn inode(&self) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", self.socket.get_ref().as_raw_fd())).ok()?;
        link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    }

    pub fn address(&self) -> SocketAddr {
        self.socket.get_ref().local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Waits for datagrams and reads up to [`BATCH`] of them into `batch`; how many.
    pub async fn receive(&self, batch: &mut Batch) -> std::io::Result<usize> {
        let mut chunks = batch.storage.chunks_mut(MAX_DATAGRAM);
        let mut slices: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        loop {
            // `AsyncFd` readiness does not count against the task's budget, as tokio's sockets do:
            // without this, a port that always has datagrams would never let the runtime's other
            // tasks run.
            tokio::task::consume_budget().await;
            let mut ready = self.socket.readable().await?;
            match ready.try_io(|socket| self.state.recv(UdpSockRef::from(socket.get_ref()), &mut slices, &mut batch.meta)) {
                Ok(Ok(count)) => {
                    // recvmmsg stops short only when the queue is empty. A datagram that came
                    // since is a new readiness event, which `clear_ready` does not clear.
                    if count < BATCH {
                        ready.clear_ready();
                    }
                    return Ok(count);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one datagram now; a full send buffer is an error (`WouldBlock`), as UDP would drop it.
    pub fn try_send(&self, destination: SocketAddr, contents: &[u8]) -> std::io::Result<()> {
        self.try_send_segments(destination, contents, None)
    }

    /// Sends `contents` now, cut by the kernel into datagrams of `segment_size` bytes (the last may
    /// be shorter) when given; as [`Port::try_send`] otherwise.
    fn try_send_segments(&self, destination: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> std::io::Result<()> {
        let transmit = Transmit { destination, ecn: None, contents, segment_size, src_ip: None };
        self.state.try_send(UdpSockRef::from(self.socket.get_ref()), &transmit)
    }

    /// Datagrams one send may carry: more than 1 where the kernel segments them (UDP GSO).
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends one datagram, waiting while the send buffer is full.
    pub async fn send(&self, destination: SocketAddr, contents: &[u8]) -> std::io::Result<()> {
        loop {
            let mut ready = self.socket.writable().await?;
            if let Ok(sent) = ready.try_io(|_| self.try_send(destination, contents)) {
                return sent;
            }
        }
    }
}

/// Datagrams gathered for one send from one port to one destination: the relay forwards a batch
/// read from one end, which goes on to one place, in one sendmsg instead of one per datagram (UDP
/// GSO through quinn-udp). A train is as the kernel segments it: every datagram as long as the
/// first, but the last, which may be shorter; and at most [`BATCH`] of them (32 KiB), under GSO's
/// 64 KiB.
pub struct Train<'p> {
    buffer: Vec<u8>,
    port: Option<&'p Port>,
    destination: SocketAddr,
    segment: usize,
    datagrams: usize,
    /// A shorter datagram ended the train: the next one starts another.
    closed: bool,
}

/// What one send of a train did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    /// The send buffer was full (or the send failed): UDP drops the train, as the network would.
    pub dropped: bool,
}

impl Default for Train<'_> {
    fn default() -> Self {
        Train {
            // Grown by the first trains, to what this port's packets need (RTP: a few KiB), then
            // kept: every port of every call has one, and 32 KiB each would double a call's memory.
            buffer: Vec::new(),
            port: None,
            destination: SocketAddr::from(([0, 0, 0, 0], 0)),
            segment: 0,
            datagrams: 0,
            closed: false,
        }
    }
}

impl<'p> Train<'p> {
    /// Adds `datagram` for `destination` from `port`. When it cannot join the train, the train is
    /// sent first, and what that send did is returned.
    pub fn push(&mut self, port: &'p Port, destination: SocketAddr, datagram: &[u8]) -> Option<Sent> {
        let joins = self.port.is_some_and(|current| std::ptr::eq(current, port))
            && self.destination == destination
            && !self.closed
            && datagram.len() <= self.segment
            && self.datagrams < BATCH.min(port.max_segments());
        let sent = if joins { None } else { self.send() };
        if self.datagrams == 0 {
            self.port = Some(port);
            self.destination = destination;
            self.segment = datagram.len();
        }
        self.buffer.extend_from_slice(datagram);
        self.datagrams += 1;
        self.closed = datagram.len() < self.segment || datagram.is_empty();
        sent
    }

    /// Sends the train, if it holds any datagram, and empties it.
    pub fn send(&mut self) -> Option<Sent> {
        let port = self.port.take()?;
        let dropped = port.try_send_segments(self.destination, &self.buffer, Some(self.segment)).is_err();
        let sent = Sent { datagrams: self.datagrams as u64, bytes: self.buffer.len() as u64, dropped };
        self.buffer.clear();
        self.datagrams = 0;
        self.closed = false;
        Some(sent)
    }
}

/// Turns off what quinn-udp asks the kernel to attach to every datagram read, and the relay never
/// looks at: the TOS byte, the address it was sent to, a receive timestamp (which also has the
/// kernel stamp every packet the machine receives while any socket asks for it), and UDP GRO (see
/// [`Port::bind`]). Each is a control message written per datagram read: 5% of the relay thread's
/// samples in a profile at 440,000 packets/s. An option that cannot be turned off stays on, and
/// quinn-udp reads it as before.
fn without_ancillary_data(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    const OPTIONS: [(libc::c_int, libc::c_int); 6] = [
        (libc::SOL_UDP, libc::UDP_GRO),
        (libc::IPPROTO_IP, libc::IP_RECVTOS),
        (libc::IPPROTO_IP, libc::IP_PKTINFO),
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS),
        (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
    ];
    let off: libc::c_int = 0;
    for (level, name) in OPTIONS {
        // SAFETY: setsockopt reads `off` for the length given. An IPv6 option on an IPv4 socket
        // fails and changes nothing.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        socket
    }

    fn read(socket: &std::net::UdpSocket) -> Vec<u8> {
        let mut buffer = [0u8; MAX_DATAGRAM];
        let (len, _) = socket.recv_from(&mut buffer).expect("a datagram");
        buffer[..len].to_vec()
    }

    /// Datagrams of one length to one place leave in one send and arrive one by one; a shorter one
    /// ends the train, and another destination or a longer datagram starts a new one.
    #[tokio::test]
    async fn a_train_sends_what_goes_to_one_place_in_one_send_and_arrives_datagram_by_datagram() {
        let port = Port::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (first, second) = (receiver(), receiver());
        let (to_first, to_second) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        let mut train = Train::default();
        let sends: Vec<Option<Sent>> = vec![
            train.push(&port, to_first, &[1; 100]),
            train.push(&port, to_first, &[2; 100]),
            train.push(&port, to_first, &[3; 60]),
            // After a shorter datagram: a new train, though to the same place.
            train.push(&port, to_first, &[4; 100]),
            train.push(&port, to_second, &[5; 100]),
            // Longer than the train's first: a new train.
            train.push(&port, to_second, &[6; 120]),
            train.send(),
            train.send(),
        ];
        let sent = |datagrams, bytes| Some(Sent { datagrams, bytes, dropped: false });
        assert_eq!(sends, vec![None, None, None, sent(3, 260), sent(1, 100), sent(1, 100), sent(1, 120), None]);
        assert_eq!([read(&first), read(&first), read(&first), read(&first)], [vec![1; 100], vec![2; 100], vec![3; 60], vec![4; 100]]);
        assert_eq!([read(&second), read(&second)], [vec![5; 100], vec![6; 120]]);
    }

    /// The options quinn-udp turned on, which would attach a control message to every datagram
    /// read, are off again.
    #[tokio::test]
    async fn a_port_asks_for_no_control_message_with_its_datagrams() {
        use std::os::fd::AsRawFd;
        let port = Port::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let option = |level, name| {
            let (mut value, mut len): (libc::c_int, libc::socklen_t) = (-1, std::mem::size_of::<libc::c_int>() as libc::socklen_t);
            // SAFETY: getsockopt writes at most `len` bytes into `value`, and `len` back.
            let status = unsafe {
                libc::getsockopt(port.socket.get_ref().as_raw_fd(), level, name, (&mut value as *mut libc::c_int).cast(), &mut len)
            };
            assert_eq!(status, 0, "getsockopt({level}, {name})");
            value
        };
        let options = [
            ("UDP_GRO", option(libc::SOL_UDP, libc::UDP_GRO)),
            ("IP_RECVTOS", option(libc::IPPROTO_IP, libc::IP_RECVTOS)),
            ("IP_PKTINFO", option(libc::IPPROTO_IP, libc::IP_PKTINFO)),
            ("SO_TIMESTAMPNS", option(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)),
        ];
        assert_eq!(options, [("UDP_GRO", 0), ("IP_RECVTOS", 0), ("IP_PKTINFO", 0), ("SO_TIMESTAMPNS", 0)]);
    }
}
