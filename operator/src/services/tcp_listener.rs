//! TCP listeners for the data-plane services, with an accept queue deep enough for a burst. When
//! every phone of a cluster is told to install an LSC at once, or comes back after an outage, they
//! all connect within a moment while the workers are busy signing; with the usual backlog of 128
//! the kernel drops the excess SYNs and each of those phones waits a one-second retransmission
//! (`callguard bench capf` showed 71 such drops for 400 phones).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Asked of `listen(2)`; the kernel caps it at `net.core.somaxconn` (4096 on current kernels).
pub const BACKLOG: u32 = 4096;

/// Binds `address` (port 0 picks a free port) with [`BACKLOG`], reusing the address as
/// `TcpListener::bind` does. Must run inside a tokio runtime.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More connections than the usual backlog of 128 wait, complete, in the queue while nobody
    /// accepts, and each is then accepted.
    #[tokio::test]
    async fn a_burst_larger_than_128_waits_in_the_queue() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..300 {
            let connect = tokio::net::TcpStream::connect(address);
            clients.push(tokio::time::timeout(std::time::Duration::from_millis(500), connect).await.expect("connected at once").unwrap());
        }
        for _ in 0..300 {
            tokio::time::timeout(std::time::Duration::from_secs(5), listener.accept()).await.expect("queued").unwrap();
        }
    }
}
