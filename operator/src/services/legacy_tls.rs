//! TLS 1.0 for the phones of the guide's era: 79x0 and 79x1 phones speak nothing newer to CAPF and TVS
//! (docs/wire-formats.md §7.1, §8). rustls has no TLS 1.0, so these connections go to OpenSSL. Off
//! unless the cluster turns it on (`spec.legacyTls: Enabled`); then one port serves both: the first
//! bytes of the ClientHello say which stack takes the connection, and a client that offers TLS 1.2
//! or newer never meets OpenSSL.
//!
//! The version test is written by hand: no crate peeks a ClientHello without consuming it.

use std::pin::Pin;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// The OpenSSL side of a listener: TLS 1.0 and 1.1 only (anything newer goes to rustls), with the
/// certificate the rustls side presents.
#[derive(Clone)]
pub struct LegacyTls {
    context: std::sync::Arc<SslContext>,
}

impl std::fmt::Debug for LegacyTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LegacyTls(TLS 1.0-1.1)")
    }
}

impl LegacyTls {
    /// From the certificate (DER) and its PKCS#8 key (DER).
    pub fn new(certificate_der: &[u8], key_pkcs8_der: &[u8]) -> Result<LegacyTls, String> {
        let builder = Self::builder(certificate_der, key_pkcs8_der)?;
        Ok(LegacyTls { context: std::sync::Arc::new(builder.build()) })
    }

    /// For SIP-TLS: also `TLS_RSA_WITH_NULL_SHA`, which the guide's phones offer in Authenticated
    /// mode (integrity, no encryption, P.1-6), and a client certificate asked of every phone and
    /// verified against `trust` (DER CAs). A phone without one completes the handshake, so that its
    /// request is refused with a reason, as on the rustls side.
    pub fn for_sip_phones(certificate_der: &[u8], key_pkcs8_der: &[u8], trust: &[Vec<u8>]) -> Result<LegacyTls, String> {
        let mut builder = Self::builder(certificate_der, key_pkcs8_der)?;
        // DEFAULT deletes the eNULL ciphers for good; ALL leaves them out without deleting them,
        // and anonymous suites (aNULL) are dropped: the phone must see the node's certificate.
        builder.set_cipher_list("ALL:!aNULL:NULL-SHA:@SECLEVEL=0").map_err(|e| e.to_string())?;
        for der in trust {
            let ca = X509::from_der(der).map_err(|e| format!("a SIP-TLS trust anchor: {e}"))?;
            builder.cert_store_mut().add_cert(ca.clone()).map_err(|e| e.to_string())?;
            builder.add_client_ca(&ca).map_err(|e| e.to_string())?;
        }
        builder.set_verify(SslVerifyMode::PEER);
        Ok(LegacyTls { context: std::sync::Arc::new(builder.build()) })
    }

    fn builder(certificate_der: &[u8], key_pkcs8_der: &[u8]) -> Result<SslContextBuilder, String> {
        let certificate = X509::from_der(certificate_der).map_err(|e| format!("the legacy TLS listener's certificate: {e}"))?;
        let key = PKey::private_key_from_pkcs8(key_pkcs8_der).map_err(|e| format!("the legacy TLS listener's key: {e}"))?;
        let mut builder = SslContext::builder(SslMethod::tls_server()).map_err(|e| e.to_string())?;
        builder.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
        // TLS 1.0's ciphers are below OpenSSL 3's default security level: level 0, on this listener only.
        builder.set_security_level(0);
        builder.set_cipher_list("DEFAULT:@SECLEVEL=0").map_err(|e| e.to_string())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1)).map_err(|e| e.to_string())?;
        builder.set_max_proto_version(Some(SslVersion::TLS1_1)).map_err(|e| e.to_string())?;
        builder.set_certificate(&certificate).map_err(|e| e.to_string())?;
        builder.set_private_key(&key).map_err(|e| e.to_string())?;
        builder.check_private_key().map_err(|e| format!("the legacy TLS listener's key does not match its certificate: {e}"))?;
        Ok(builder)
    }

    /// The TLS handshake over `tcp`.
    pub async fn accept(&self, tcp: TcpStream) -> Result<SslStream<TcpStream>, String> {
        let ssl = Ssl::new(&self.context).map_err(|e| e.to_string())?;
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
        Pin::new(&mut stream).accept().await.map_err(|e| format!("legacy TLS handshake: {e}"))?;
        Ok(stream)
    }
}

/// The certificate the peer presented, DER.
pub fn peer_certificate_der(ssl: &SslRef) -> Option<Vec<u8>> {
    ssl.peer_certificate()?.to_der().ok()
}

/// Whether the negotiated cipher encrypts: `TLS_RSA_WITH_NULL_SHA` has no secret bits.
pub fn encrypts(ssl: &SslRef) -> bool {
    ssl.current_cipher().is_some_and(|cipher| cipher.bits().secret > 0)
}

/// Whether the client's first flight is a ClientHello offering at most TLS 1.1, waiting up to
/// `patience` for its first eleven bytes (record header, handshake header, client version). Anything
/// else (a newer hello, too few bytes in time, not TLS at all) is for the rustls side, which refuses
/// what it must.
pub async fn offers_only_legacy_tls(tcp: &TcpStream, patience: Duration) -> bool {
    let mut head = [0u8; 11];
    let peeked = tokio::time::timeout(patience, async {
        loop {
            match tcp.peek(&mut head).await {
                Ok(n) if n >= head.len() => return true,
                Ok(0) | Err(_) => return false,
                // Not all of it yet: wait for more without consuming.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    peeked == Ok(true) && is_legacy_client_hello(&head)
}

/// `head`: a TLS record header (content type 22, handshake), a handshake header (type 1,
/// ClientHello) and the hello's `client_version` (RFC 2246 §7.4.1.2, RFC 8446 §4.1.2, where TLS 1.3
/// keeps 0x0303 there).
fn is_legacy_client_hello(head: &[u8; 11]) -> bool {
    let version = u16::from_be_bytes([head[9], head[10]]);
    head[0] == 22 && head[1] == 3 && head[5] == 1 && (0x0301..0x0303).contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: [u8; 2]) -> [u8; 11] {
        [22, 3, 1, 0, 200, 1, 0, 0, 196, version[0], version[1]]
    }

    #[test]
    fn only_a_client_hello_capped_below_tls_1_2_is_legacy() {
        assert!(is_legacy_client_hello(&hello([3, 1])), "TLS 1.0");
        assert!(is_legacy_client_hello(&hello([3, 2])), "TLS 1.1");
        assert!(!is_legacy_client_hello(&hello([3, 3])), "TLS 1.2, and TLS 1.3's legacy_version");
        assert!(!is_legacy_client_hello(&hello([3, 0])), "SSL 3.0 is refused by rustls, not served");
        let mut alert = hello([3, 1]);
        alert[0] = 21;
        assert!(!is_legacy_client_hello(&alert), "not a handshake record");
        let mut server_hello = hello([3, 1]);
        server_hello[5] = 2;
        assert!(!is_legacy_client_hello(&server_hello), "not a ClientHello");
    }
}
