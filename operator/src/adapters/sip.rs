//! The signaling service's directory from the resources: shared by `callguard local` and the
//! operator's projection.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::api::{CapfAuthenticationMode, IncomingTransport, PhoneProtocol};
use crate::core::build::SipIdentity;
use crate::core::build::phone_files::{digest_auth, secret_text};
use crate::core::phone_config::DigestAuth;
use crate::core::pki::inspect;
use crate::services::legacy_tls::LegacyTls;
use crate::services::sip::directory::{SipDirectory, SipDirectoryParts, SipPhone};
use crate::services::sip::identity::PhoneAnchors;
use crate::services::sip::server::{self, SipTls, TrunkListener};
use crate::services::sip::trunk::{ApplicationCredentials, RealmCredentials, SipTrunkEntry, TrunkDestinationEntry};
use crate::validate::Snapshot;

/// The directory of `snapshot` and the build's `identity` (see [`parts`]).
pub fn directory(snapshot: &Snapshot, identity: &SipIdentity) -> SipDirectory {
    parts(snapshot, identity).into_directory()
}

/// Every SIP phone of `snapshot`, with the certificates of the build's `identity`: a phone's current
/// LSC is its certificate in the state when the cluster CA issued it. A phone whose digest user
/// cannot be resolved is left out: validation has already said why, and nothing may register as it.
pub fn parts(snapshot: &Snapshot, identity: &SipIdentity) -> SipDirectoryParts {
    let current_lsc = |device: &str| {
        identity
            .device_certificates
            .get(device)
            .filter(|der| inspect::is_issued_by_any(der, &identity.trusted_cas))
            .map(|der| inspect::sha256_hex(der))
    };
    let cluster = snapshot.clusters.values().next();
    let realm = cluster.map(|c| c.spec.digest().sip_station_realm().to_string()).unwrap_or_else(|| "ccmsipline".into());
    let manufacturer_cas = cluster
        .and_then(|c| c.spec.capf().manufacturer_ca_certificates)
        .and_then(|reference| snapshot.secrets.get(&reference.name)?.0.get(&reference.key).cloned())
        .and_then(|pem| inspect::ca_bundle(&pem).ok())
        .unwrap_or_default();
    let phones = snapshot.phones.iter().filter(|(_, phone)| phone.spec.protocol == PhoneProtocol::Sip).filter_map(|(name, phone)| {
        let profile = &snapshot.phone_profiles.get(&phone.spec.security_profile_ref)?.spec;
        let device = phone.spec.device_name();
        let digest = if profile.digest_enabled() { Some(digest_auth(snapshot, phone).ok()??) } else { None };
        let current_lsc_sha256 = current_lsc(&device);
        let mic_accepted = match profile.authentication_mode() {
            CapfAuthenticationMode::ByExistingCertificatePrecedenceMic => true,
            CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc => current_lsc_sha256.is_none(),
            CapfAuthenticationMode::ByAuthenticationString | CapfAuthenticationMode::ByNullString => false,
        };
        let phone = SipPhone {
            subject: format!("Phone/{name}"),
            lines: phone.spec.directory_numbers.iter().map(|dn| dn.0.clone()).collect(),
            mode: profile.device_security_mode(),
            transport: profile.transport(),
            digest,
            nonce_validity_seconds: profile.sip().nonce_validity_seconds(),
            mic_accepted,
            current_lsc_sha256,
            device: device.clone(),
        };
        Some((device, phone))
    });
    SipDirectoryParts {
        realm,
        trunk_realm: cluster.map(|c| c.spec.digest().cluster_id().to_string()).unwrap_or_else(|| "StandAloneCluster".into()),
        cluster_cas: identity.trusted_cas.clone(),
        manufacturer_cas,
        trunks: trunks(snapshot),
        phones: phones.collect(),
    }
}

/// The trunks of `snapshot` with their profiles and application users. An application user whose
/// digest credentials cannot be read is left out: it cannot answer a challenge.
pub fn trunks(snapshot: &Snapshot) -> Vec<SipTrunkEntry> {
    snapshot
        .trunks
        .iter()
        .filter_map(|(name, trunk)| {
            let profile = &snapshot.trunk_profiles.get(&trunk.spec.security_profile_ref)?.spec;
            let application_users = trunk
                .spec
                .application_user_refs
                .iter()
                .filter_map(|user_ref| {
                    let user = snapshot.application_users.get(user_ref)?;
                    let password = secret_text(snapshot, user.spec.digest_credentials.as_ref()?).ok()?;
                    let name = user.spec.user_id.clone().unwrap_or_else(|| user_ref.clone());
                    Some(ApplicationCredentials {
                        credentials: DigestAuth { name, password: password.to_string() },
                        accept: user.spec.sip_authorization.clone().unwrap_or_default(),
                    })
                })
                .collect();
            Some(SipTrunkEntry {
                subject: format!("SipTrunk/{name}"),
                mode: profile.device_security_mode(),
                incoming_port: profile.incoming_port(),
                tls: profile.incoming_transport() == IncomingTransport::Tls,
                subject_names: profile.subject_names().into_iter().map(str::to_owned).collect(),
                peer_addresses: trunk.spec.destinations.iter().filter_map(|d| d.address.parse().ok()).collect(),
                digest_nonce_validity: profile.digest_enabled().then(|| profile.nonce_validity_seconds()),
                application_level_authorization: profile.application_level_authorization(),
                accept: profile.accept.clone(),
                application_users,
                destinations: trunk
                    .spec
                    .destinations
                    .iter()
                    .map(|d| TrunkDestinationEntry { host: d.address.clone(), port: d.port() })
                    .collect(),
                outgoing: profile.outgoing_transport(),
                realm: trunk.spec.sip_realm_ref.as_ref().and_then(|name| {
                    let realm = &snapshot.realms.get(name)?.spec;
                    let password = secret_text(snapshot, &realm.password).ok()?;
                    Some(RealmCredentials {
                        realm: realm.realm.clone(),
                        credentials: DigestAuth { name: realm.user.clone(), password: password.to_string() },
                    })
                }),
            })
        })
        .collect()
}

/// The SIP-TLS configuration: the node's CallManager certificate, and client certificates checked
/// against the directory's CAs; OpenSSL's TLS 1.0 side too when the cluster enables legacy TLS.
pub fn tls_config(identity: &SipIdentity, directory: &SipDirectory) -> Result<SipTls, String> {
    sip_tls(&identity.certificate.certificate_der, &identity.certificate.key, &directory.anchors, identity.legacy_tls)
}

/// The SIP-TLS configuration of a certificate and its key, trusting `anchors` for phones.
pub fn sip_tls(certificate_der: &[u8], key: &rsa::RsaPrivateKey, anchors: &PhoneAnchors, legacy_tls: bool) -> Result<SipTls, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let pkcs8 = crate::core::pki::keys::pkcs8_der(key);
    let chain = vec![CertificateDer::from(certificate_der.to_vec())];
    let config = server::tls_config(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.clone())), anchors)?;
    let legacy = if legacy_tls {
        let trust: Vec<Vec<u8>> = anchors.cluster_cas.iter().chain(&anchors.manufacturer_cas).cloned().collect();
        Some(LegacyTls::for_sip_phones(certificate_der, &pkcs8, &trust)?)
    } else {
        None
    };
    let client = rsipstack::transport::TlsConfig {
        client_cert: Some(crate::core::pki::ca::certificate_pem(certificate_der).into_bytes()),
        client_key: Some(crate::core::pki::keys::pkcs8_pem(key).as_bytes().to_vec()),
        ca_certs: Some(anchors.cluster_cas.iter().map(|der| crate::core::pki::ca::certificate_pem(der)).collect::<String>().into_bytes()),
        ..Default::default()
    };
    Ok(SipTls { config, legacy, client: Some(client) })
}

/// The media relay, its ports bound on `bind` and named `advertised` in the SDP, with the cluster's
/// `spec.media`.
pub fn media_relay(
    bind: IpAddr,
    advertised: IpAddr,
    media: &crate::api::MediaSettings,
) -> Result<std::sync::Arc<crate::services::media::relay::MediaRelay>, String> {
    use crate::services::media::relay::{Latching, MediaRelay, RelaySettings};
    let latching = match media.latching.unwrap_or_default() {
        crate::api::MediaLatching::FirstPacket => Latching::FirstPacket,
        crate::api::MediaLatching::SdpOnly => Latching::SdpOnly,
    };
    MediaRelay::new(RelaySettings { bind, advertised, ports: media.ports(), inactivity: media.inactivity(), latching })
        .map_err(|e| format!("the media relay (spec.media): {e}"))
}

/// Each side's credentials of the media control interface: the relay's, then the signaling
/// service's, each pinning the other's certificate.
pub fn control_tls(
    identity: &crate::core::build::media_control::MediaControlIdentity,
) -> (crate::services::media::control::ControlTls, crate::services::media::control::ControlTls) {
    use crate::services::media::control::{ControlTls, sha256};
    let side = |own: &crate::core::build::media_control::ControlPair, peer: &crate::core::build::media_control::ControlPair| ControlTls {
        certificate_der: own.certificate_der.clone(),
        key_der: own.key_der.clone(),
        peer_sha256: sha256(&peer.certificate_der),
    };
    (side(&identity.relay, &identity.client), side(&identity.client, &identity.relay))
}

/// A relay with its control listener bound, not yet serving (`callguard local`).
pub struct ControlledRelay {
    relay: std::sync::Arc<crate::services::media::relay::MediaRelay>,
    listener: tokio::net::TcpListener,
    server: std::sync::Arc<rustls::ServerConfig>,
    client: std::sync::Arc<crate::services::media::control::MediaClient>,
}

impl ControlledRelay {
    /// Serves the control interface and releases silent calls until `stop`; the client to drive it.
    pub fn start(self, stop: tokio_util::sync::CancellationToken) -> std::sync::Arc<crate::services::media::control::MediaClient> {
        tokio::spawn(crate::services::media::control::serve(self.listener, self.server, self.relay.clone(), stop.clone()));
        tokio::spawn(self.relay.reap_inactive(stop));
        self.client
    }
}

/// The relay on `bind` (its ports and its control listener) with the cluster's `spec.media`, and a
/// client of its control interface with the pinned credentials of `identity`.
pub async fn controlled_media_relay(
    bind: IpAddr,
    media: &crate::api::MediaSettings,
    identity: &crate::core::build::media_control::MediaControlIdentity,
) -> Result<ControlledRelay, String> {
    use crate::services::media::control::{MediaClient, server_config};
    let relay = media_relay(bind, bind, media)?;
    let (server_tls, client_tls) = control_tls(identity);
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::new(bind, 0)).await.map_err(|e| format!("media control listener on {bind}: {e}"))?;
    let target = listener.local_addr().map_err(|e| e.to_string())?.to_string();
    Ok(ControlledRelay { relay, listener, server: server_config(&server_tls)?, client: MediaClient::new(target, &client_tls)? })
}

/// UDP and TCP on the one port SIP uses for both.
pub async fn bind_udp_and_tcp(address: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let udp = crate::services::udp_listener::bind(address).await?;
    let tcp = crate::services::tcp_listener::bind(udp.local_addr()?)?;
    Ok((udp, tcp))
}

/// A port free for both UDP and TCP: the kernel picks the UDP one, and the TCP side may be taken,
/// so a few tries.
pub async fn bind_free_udp_and_tcp(ip: IpAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        match bind_udp_and_tcp(SocketAddr::new(ip, 0)).await {
            Ok(pair) => return Ok(pair),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// Listeners on the trunk profiles' incoming ports (`trunk_ports`: port to whether it is TLS, Table
/// 14-1) other than the phones' (`phone_ports`, whose listeners serve their trunks too), each with
/// where it listens.
pub async fn bind_trunks(
    ip: IpAddr,
    trunk_ports: &BTreeMap<u16, bool>,
    phone_ports: [u16; 2],
) -> Result<(Vec<TrunkListener>, Vec<String>), String> {
    let mut listeners = Vec::new();
    let mut lines = Vec::new();
    for (&port, &tls) in trunk_ports.iter().filter(|(port, _)| !phone_ports.contains(port)) {
        let address = SocketAddr::new(ip, port);
        let refused = |e: std::io::Error| {
            format!(
                "cannot serve the SIP trunks of incoming port {port} (a SipTrunkSecurityProfile's incomingPort, Table 14-1) on {address}: {e}"
            )
        };
        if tls {
            listeners.push(TrunkListener::Tls(crate::services::tcp_listener::bind(address).map_err(refused)?));
            lines.push(format!("{address} (TLS)"));
        } else {
            let (udp, tcp) = bind_udp_and_tcp(address).await.map_err(refused)?;
            listeners.push(TrunkListener::Plain(udp, tcp));
            lines.push(format!("{address} (UDP and TCP)"));
        }
    }
    Ok((listeners, lines))
}

/// `directory` with the trunks on the cluster's SIP ports moved to where they were bound (`ports`:
/// the spec's port to the bound one).
pub fn moved_trunks(mut directory: SipDirectory, ports: &BTreeMap<u16, u16>) -> SipDirectory {
    for trunk in &mut directory.trunks {
        trunk.incoming_port = ports.get(&trunk.incoming_port).copied().unwrap_or(trunk.incoming_port);
    }
    directory
}

/// Where `local` keeps what its registrar holds, in the namespace's state, for
/// `callguard sip registrations`.
pub const REGISTRATIONS_FILE: &str = "sip-registrations.yaml";

/// One binding, as `callguard sip registrations` shows it.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegistrationRow {
    pub line: String,
    pub device: String,
    pub contact: String,
    pub transport: String,
    pub source: String,
    /// RFC 3339.
    pub expires: String,
}

/// The registrar's bindings as rows, their expiry in wall-clock time.
pub fn registration_rows(registrar: &crate::services::sip::registrar::Registrar) -> Vec<RegistrationRow> {
    let (now, wall) = (std::time::Instant::now(), time::OffsetDateTime::now_utc());
    registrar
        .snapshot()
        .into_iter()
        .map(|(line, b)| {
            let left = b.expires_at.saturating_duration_since(now);
            let expires = wall + time::Duration::seconds(i64::try_from(left.as_secs()).unwrap_or(i64::MAX / 2));
            RegistrationRow {
                line,
                device: b.device,
                contact: b.contact,
                transport: b.transport.to_string(),
                source: b.source.to_string(),
                expires: crate::core::build::capf::rfc3339(expires),
            }
        })
        .collect()
}

/// The rows `local` last wrote for `namespace` (the state's only one when None), still live at `now`.
pub fn read_registrations(
    root: &std::path::Path,
    namespace: Option<&str>,
    now: time::OffsetDateTime,
) -> Result<Vec<RegistrationRow>, String> {
    if !root.is_dir() {
        return Err(format!("no state directory {}: pass the --state-dir of callguard local", root.display()));
    }
    let namespace = crate::core::build::devices::choose_namespace(root, namespace)?;
    let file = crate::core::build::namespace_state(root, &namespace).join(REGISTRATIONS_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{}: not found: no callguard local has served SIP for namespace {namespace} here", file.display()));
        }
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let rows: Vec<RegistrationRow> = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let live = |row: &RegistrationRow| {
        time::OffsetDateTime::parse(&row.expires, &time::format_description::well_known::Rfc3339).is_ok_and(|at| at > now)
    };
    Ok(rows.into_iter().filter(live).collect())
}

/// The abstract Unix socket (Linux: no file, scoped to the network namespace, so to the pod) on
/// which `callguard serve sip` answers `callguard sip registrations --serving`, run in its pod by
/// `kubectl exec`: who may exec there may ask, no one else can reach it.
pub const REGISTRATIONS_SOCKET: &str = "callguard-sip-registrations";

/// Listens on [`REGISTRATIONS_SOCKET`]. Fails when another process of the same network namespace
/// holds it (two `serve sip` on one host, as in tests). Must run inside a tokio runtime.
pub fn registrations_listener() -> std::io::Result<tokio::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(REGISTRATIONS_SOCKET)?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&address)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Answers each connection to `listener` with the bindings `registrar()` gives, as YAML rows,
/// until `stop` resolves.
pub async fn answer_registrations(
    listener: tokio::net::UnixListener,
    registrar: impl Fn() -> Vec<RegistrationRow>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let mut stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted { Ok((stream, _)) => stream, Err(_) => continue },
        };
        let text = serde_yaml::to_string(&registrar()).unwrap_or_default();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(text.as_bytes()).await;
        });
    }
}

/// Asks the `callguard serve sip` of this network namespace (its pod) for its bindings.
pub fn ask_registrations() -> Result<Vec<RegistrationRow>, String> {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(REGISTRATIONS_SOCKET).map_err(|e| e.to_string())?;
    let mut stream = std::os::unix::net::UnixStream::connect_addr(&address).map_err(|e| {
        format!("no callguard serve sip answers here (@{REGISTRATIONS_SOCKET}: {e}): run it in a SIP pod, e.g. kubectl exec -n NAMESPACE CLUSTER-sip-0 -- callguard sip registrations --serving")
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| format!("@{REGISTRATIONS_SOCKET}: {e}"))?;
    serde_yaml::from_str(&text).map_err(|e| format!("@{REGISTRATIONS_SOCKET}: {e}"))
}

/// The rows as an aligned table with a header.
pub fn registrations_table(rows: &[RegistrationRow]) -> String {
    let header = ["LINE", "DEVICE", "TRANSPORT", "SOURCE", "EXPIRES", "CONTACT"];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| [r.line.as_str(), r.device.as_str(), r.transport.as_str(), r.source.as_str(), r.expires.as_str(), r.contact.as_str()])
        .collect();
    let widths: Vec<usize> = (0..6).map(|i| cells.iter().map(|c| c[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    std::iter::once(header)
        .chain(cells)
        .map(|row| {
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
                + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeviceSecurityMode, SipTransport};
    use crate::core::build::{BuildOptions, build_in, validate_paths};

    /// The quickstart's SIP phones, with their lines, transports and digest users; its SCCP phones
    /// are not SIP's.
    #[test]
    fn the_quickstart_sip_phones_with_lines_transports_and_digest_users() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        let snapshot = validate_paths(&[path]).unwrap().into_values().next().unwrap();
        let state = tempfile::tempdir().unwrap();
        let output = build_in(state.path(), snapshot.clone(), time::OffsetDateTime::now_utc(), &BuildOptions::default()).unwrap();
        let identity = output.sip.expect("the first node runs CallManager");
        let directory = directory(&snapshot, &identity);
        assert_eq!(directory.realm, "ccmsipline");
        let encrypted = directory.phones_with_line("1001").next().expect("line 1001");
        assert_eq!((encrypted.mode, encrypted.transport), (DeviceSecurityMode::Encrypted, SipTransport::Tls));
        let digest = encrypted.digest.as_ref().expect("alice answers digest");
        assert_eq!((digest.name.as_str(), digest.password.as_str()), ("alice", "FakeAlice123"));
        assert_eq!(encrypted.nonce_validity_seconds, 300);
        assert!(encrypted.mic_accepted, "ByExistingCertificatePrecedenceMIC");
        assert_eq!(encrypted.current_lsc_sha256, None, "no LSC before CAPF issues one");
        let open = directory.phones_with_line("1005").next().expect("line 1005");
        assert_eq!((open.mode, open.transport, open.digest.is_none()), (DeviceSecurityMode::NonSecure, SipTransport::Udp, true));
        assert_eq!(directory.phones_with_line("1000").count(), 0, "1000 is an SCCP phone's line");
        assert_eq!(directory.len(), snapshot.phones.values().filter(|p| p.spec.protocol == PhoneProtocol::Sip).count());
        // The SBC trunk: TLS on 5061, its subject names, digest with its application user.
        assert_eq!(directory.trunk_realm, "QuickstartCluster", "the cluster ID (Table 15-1)");
        let trunk = &directory.trunks[0];
        assert_eq!((trunk.subject.as_str(), trunk.incoming_port, trunk.tls), ("SipTrunk/sbc", 5061, true));
        assert_eq!(trunk.subject_names, ["sbc1.quickstart.example", "sbc2.quickstart.example"]);
        assert!(trunk.application_level_authorization && trunk.digest_nonce_validity == Some(600));
        assert_eq!(trunk.application_users.len(), 1);
    }
}
