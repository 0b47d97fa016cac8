//! SIP over the legacy TLS listener (`services::legacy_tls`): a connection OpenSSL accepted, handed to
//! rsipstack's transport layer as a TLS connection.
//!
//! rsipstack builds its stream connections from its own rustls streams, or, through its platform
//! TLS connector, from a stream the connector returns. The connector registered here returns the
//! stream OpenSSL accepted for the peer asked for, so that rsipstack frames and sends SIP over it
//! like any other TLS connection. Written by hand: no crate joins OpenSSL streams to rsipstack. On
//! this build (tokio and rustls) rsipstack dials TLS itself and never asks the connector to dial.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use rsipstack::platform::tls::{TlsClientConfig, TlsConnector, TlsStream, set_client_connector};
use rsipstack::sip::Transport;
use rsipstack::transport::tls_platform::PlatformTlsConnection;
use rsipstack::transport::{SipAddr, SipConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_util::sync::CancellationToken;

/// Bytes read at once; rsipstack frames the messages.
const READ_CHUNK: usize = 16 * 1024;

/// An accepted OpenSSL stream as rsipstack's platform TLS stream.
struct OpensslStream {
    reader: tokio::sync::Mutex<ReadHalf<SslStream<TcpStream>>>,
    writer: tokio::sync::Mutex<WriteHalf<SslStream<TcpStream>>>,
    local: SocketAddr,
}

#[async_trait::async_trait]
impl TlsStream for OpensslStream {
    async fn recv(&self) -> rsipstack::Result<Vec<u8>> {
        let mut chunk = vec![0u8; READ_CHUNK];
        let read = self.reader.lock().await.read(&mut chunk).await.map_err(|e| rsipstack::Error::Error(e.to_string()))?;
        chunk.truncate(read);
        Ok(chunk)
    }

    async fn send_all(&self, data: Vec<u8>) -> rsipstack::Result<()> {
        self.writer.lock().await.write_all(&data).await.map_err(|e| rsipstack::Error::Error(e.to_string()))
    }

    async fn shutdown(&self) -> rsipstack::Result<()> {
        self.writer.lock().await.shutdown().await.map_err(|e| rsipstack::Error::Error(e.to_string()))
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The connector: hands out each accepted stream once, to the connection made for its peer.
#[derive(Default)]
struct HandOver {
    accepted: Mutex<HashMap<SocketAddr, Box<dyn TlsStream>>>,
}

#[async_trait::async_trait]
impl TlsConnector for HandOver {
    async fn connect(&self, _config: &TlsClientConfig, peer: SocketAddr) -> rsipstack::Result<Box<dyn TlsStream>> {
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer)
            .ok_or_else(|| rsipstack::Error::Error(format!("no legacy TLS connection accepted from {peer}")))
    }
}

fn hand_over() -> &'static Arc<HandOver> {
    static HAND_OVER: OnceLock<Arc<HandOver>> = OnceLock::new();
    HAND_OVER.get_or_init(|| {
        let connector = Arc::new(HandOver::default());
        set_client_connector(connector.clone());
        connector
    })
}

/// `stream`, accepted from `peer` on our listener `local`, as a SIP-TLS connection.
pub async fn connection(
    stream: SslStream<TcpStream>,
    local: SocketAddr,
    peer: SocketAddr,
    cancel: CancellationToken,
) -> rsipstack::Result<SipConnection> {
    let (reader, writer) = tokio::io::split(stream);
    let stream = OpensslStream { reader: tokio::sync::Mutex::new(reader), writer: tokio::sync::Mutex::new(writer), local };
    hand_over().accepted.lock().unwrap_or_else(|e| e.into_inner()).insert(peer, Box::new(stream));
    let remote = SipAddr { r#type: Some(Transport::Tls), addr: peer.into() };
    let connected = PlatformTlsConnection::connect(&remote, None, Some(cancel)).await;
    // Never left behind, whatever happened.
    hand_over().accepted.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
    Ok(SipConnection::TlsPlatform(connected?))
}
