//! UDP sockets for the data-plane services, with a receive buffer deep enough for a burst. A
//! registration storm sends faster than a moment's scheduling delay lets the service read; with the
//! kernel's default of about 200 KiB the excess is dropped, and each phone whose request was lost
//! waits its 500 ms retransmission (`callguard bench sip` counted about a hundred such drops in
//! 20,000 registrations). Kamailio probes its buffer up the same way (`maxbuffer`).

use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Asked of `SO_RCVBUF`; the kernel caps it at `net.core.rmem_max` (4 MiB where the benchmarks ran).
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// Binds `address` (port 0 picks a free port) with [`RECEIVE_BUFFER`]. Must run inside a tokio runtime.
pub async fn bind(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(address).await?;
    // What the kernel grants is its business: a smaller buffer still serves.
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::debug!(error = %e, "UDP receive buffer left at the kernel's default");
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_receive_buffer_is_raised_above_the_default() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        let default = socket2::SockRef::from(&UdpSocket::bind("127.0.0.1:0").await.unwrap()).recv_buffer_size().unwrap();
        assert!(granted > default, "granted {granted}, default {default}");
    }
}
