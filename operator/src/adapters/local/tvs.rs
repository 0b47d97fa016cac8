//! TVS in `callguard local` (docs/wire-formats.md §8): the listener on `--tvs-port` (2445), beside
//! TFTP and CAPF, presenting the first node's TVS certificate (ITL role 21), and a directory rebuilt from
//! every good build (`core::build::vouched`): the trust lists' records, and the phones'
//! certificates in `devices/`, which `local` watches, so that `callguard device add-cert` changes
//! the answer within seconds.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::core::build::TvsIdentity;
use crate::core::pki::keys;
use crate::services::tvs::{CertificateDirectory, ServerLimits, TvsTls, serve_listener};

/// The TVS service of `local`: what connections get, swapped after each good build.
pub struct Tvs {
    address: SocketAddr,
    tls: watch::Sender<Option<TvsTls>>,
    directory: watch::Sender<Arc<CertificateDirectory>>,
}

impl Tvs {
    pub fn new(address: SocketAddr) -> Tvs {
        Tvs { address, tls: watch::channel(None).0, directory: watch::channel(Arc::new(CertificateDirectory::new())).0 }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Follows a good build. Returns the line `local` prints; `None` when the build has no TVS
    /// identity (the first node runs no CallManager), and then connections are closed at once.
    pub fn follow(&self, identity: Option<&TvsIdentity>) -> Result<Option<String>, String> {
        let Some(identity) = identity else {
            self.tls.send_replace(None);
            self.directory.send_replace(Arc::new(CertificateDirectory::new()));
            return Ok(None);
        };
        let certificate = &identity.certificate;
        let directory = CertificateDirectory::from_vouched(&identity.vouched).map_err(|e| format!("TVS: {e}"))?;
        let tls = TvsTls::new(certificate.certificate_der.clone(), keys::pkcs8_der(&certificate.key), identity.legacy_tls)
            .map_err(|e| e.to_string())?;
        let (count, versions) = (directory.len(), tls.versions());
        self.tls.send_replace(Some(tls));
        self.directory.send_replace(Arc::new(directory));
        Ok(Some(format!(
            "serving TVS on {}: {versions} with the TVS certificate of node {} ({}); vouching for {count} certificate(s)",
            self.address, certificate.node, certificate.hostname
        )))
    }

    /// Accepts until `stop`; one line per answered request.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        let (reports, mut finished) = mpsc::unbounded_channel();
        let serving = tokio::spawn(serve_listener(
            listener,
            self.tls.subscribe(),
            self.directory.subscribe(),
            ServerLimits::default(),
            reports,
            stop,
        ));
        while let Some(report) = finished.recv().await {
            crate::adapters::serve::tvs::say(&report);
        }
        let _ = serving.await;
    }
}
