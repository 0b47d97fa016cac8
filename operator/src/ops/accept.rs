//! The accept step every TCP listener of the data plane shares: the next connection, or `None` once
//! the stop signal turns; a failed accept (out of descriptors, a reset before accept) is transient,
//! so it waits a moment and tries again rather than spinning or giving up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The next connection on `listener`, or `None` when `stop` changes. `service` names it in the log.
pub async fn next_connection(listener: &TcpListener, stop: &mut watch::Receiver<bool>, service: &str) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return None,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(e) => {
                tracing::warn!(error = %e, "{service} accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
