//! `callguard local DIR`: the same build as the operator's, from a directory of YAML, served over
//! TFTP on loopback, with CAPF beside it when the cluster runs it, rebuilt whenever the directory,
//! a phone certificate in the state's `devices/`, or a CAPF record in its `capf/`, changes.
//!
//! In this order, so that a failure leaves nothing behind: read and validate the manifests (which
//! name the ports), bind the TFTP socket and the CAPF listener, lock the state directory, and only
//! then build, which may issue a CA; CAPF answers once the first build gave it its certificate.

pub mod port;
pub mod tvs;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::adapters::capf::{self, est};
use crate::adapters::clock;
use crate::api::default_ports;
use crate::core::build::lock::StateLock;
use crate::core::build::served::ServedFiles;
use crate::core::build::state::StateDir;
use crate::core::build::{
    BuildOptions, BuildOutput, CapfIdentity, PathsError, ResourceStatus, TvsIdentity, build_in, namespace_state, validate_paths,
};
use crate::services::sip::directory::SipDirectory;
use crate::services::sip::server::{Listeners, SipService};
use crate::services::sip::trunk::incoming_ports;
use crate::services::tftp::{FileSource, ServerConfig, TftpServer, TftpServerError};
use crate::validate::Snapshot;
use port::PortOrigin;

/// Edits come in bursts (an editor writes, renames, touches): wait this long after the last event.
const DEBOUNCE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub paths: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub bind: IpAddr,
    /// TFTP port. `None`: the cluster's `spec.ports.tftpPort`, else 69 (P.1-16); either falls back to
    /// [`UNPRIVILEGED_TFTP_PORT`] when binding it is not permitted, so that `callguard local DIR`
    /// works without root.
    pub tftp_port: Option<u16>,
    /// CAPF port, when the cluster runs CAPF. `None`: the cluster's `spec.ports.capfPort`, else
    /// 3804 (P.6-7).
    pub capf_port: Option<u16>,
    /// TVS port, when the first node runs CallManager: the cluster has no TVS port field, so
    /// 2445 (docs/wire-formats.md §8) unless given.
    pub tvs_port: Option<u16>,
    /// EST port, beside CAPF. `None`: [`est::DEFAULT_PORT`], or any free port when that one is taken.
    pub est_port: Option<u16>,
    /// SIP over UDP and TCP, when the first node runs CallManager. `None`: the cluster's
    /// `spec.ports.sipPort`, else 5060 (P.3-5).
    pub sip_port: Option<u16>,
    /// SIP over TLS. `None`: the cluster's `spec.ports.sipSecurePort`, else 5061 (P.3-5).
    pub sip_tls_port: Option<u16>,
    /// The namespace to serve when the manifests hold several.
    pub namespace: Option<String>,
    /// What the build may do by explicit request (a new identity).
    pub build: BuildOptions,
}

impl LocalOptions {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        LocalOptions {
            paths,
            state_dir: PathBuf::from(".callguard"),
            bind: IpAddr::from([127, 0, 0, 1]),
            tftp_port: None,
            capf_port: None,
            tvs_port: None,
            est_port: None,
            sip_port: None,
            sip_tls_port: None,
            namespace: None,
            build: BuildOptions::default(),
        }
    }
}

/// Why `local` stopped.
#[derive(Debug)]
pub enum LocalError {
    /// The manifests, the build or the TFTP socket failed (exit 1).
    Failed(String),
    /// Another process holds the state directory (exit 2).
    StateLocked(String),
}

impl LocalError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::Failed(_) => 1,
            LocalError::StateLocked(_) => 2,
        }
    }
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalError::Failed(message) | LocalError::StateLocked(message) => f.write_str(message),
        }
    }
}

/// The files of the last good build; nothing until the first build is done.
#[derive(Default)]
struct Latest(RwLock<Option<Arc<ServedFiles>>>);

impl Latest {
    fn current(&self) -> Option<Arc<ServedFiles>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, served: ServedFiles) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(served));
    }
}

impl FileSource for Latest {
    fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        self.current()?.get(name)
    }
}

/// Builds, serves and watches until SIGINT or SIGTERM. An invalid first build is an error; an
/// invalid later edit is reported and the last good files keep being served.
pub async fn run(options: LocalOptions) -> Result<(), LocalError> {
    // Nothing is written until the port is ours and the state directory is locked: a cluster that
    // cannot be served gets no CA.
    let first = validate(&options, false).await.map_err(LocalError::Failed)?;
    let spec_port = first.tftp_port();
    let files = Arc::new(Latest::default());
    let server = bind_tftp(&options, spec_port, files.clone()).await?;
    let bound = server.local_addr().map_err(|e| LocalError::Failed(e.to_string()))?;
    let capf_listener = match first.capf_port() {
        Some(spec_port) => Some(bind_capf(&options, spec_port).await?),
        None => {
            if options.capf_port.is_some() {
                println!("the cluster runs no CAPF service (spec.nodes[].services.capf, P.6-6): --capf-port is not used");
            }
            None
        }
    };
    let tvs_listener = if first.runs_tvs() {
        Some(bind_tvs(&options).await?)
    } else {
        if options.tvs_port.is_some() {
            println!(
                "the cluster's first node runs no CallManager, beside which TVS runs (spec.nodes[].services.callManager, P.3-4): --tvs-port is not used"
            );
        }
        None
    };
    // EST issues with CAPF's identity and records: it runs where CAPF does.
    let est_listener = match &capf_listener {
        Some(_) => Some(bind_est(&options).await?),
        None => {
            if options.est_port.is_some() {
                println!(
                    "the cluster runs no CAPF service (spec.nodes[].services.capf, P.6-6), whose identity EST uses: --est-port is not used"
                );
            }
            None
        }
    };
    let sip_sockets = match first.sip_ports() {
        Some(ports) => Some(bind_sip(&options, ports, &incoming_ports(&crate::adapters::sip::trunks(&first.snapshot))).await?),
        None => {
            if options.sip_port.is_some() || options.sip_tls_port.is_some() {
                println!(
                    "the cluster's first node runs no CallManager (spec.nodes[].services.callManager, P.3-4): --sip-port and --sip-tls-port are not used"
                );
            }
            None
        }
    };
    let _lock = StateLock::acquire(&options.state_dir).map_err(|e| LocalError::StateLocked(format!("callguard local: {e}")))?;
    let mut report = Report::default();
    let namespace = first.namespace.clone();
    let namespace_dir = namespace_state(&options.state_dir, &namespace);
    let capf = match &capf_listener {
        Some(listener) => {
            let address = listener.local_addr().map_err(|e| LocalError::Failed(format!("callguard local: CAPF listener: {e}")))?;
            let state = StateDir::open(&namespace_dir).map_err(|e| LocalError::Failed(format!("{}: {e}", namespace_dir.display())))?;
            Some(Arc::new(capf::Capf::new(address, state)))
        }
        None => None,
    };
    let tvs = match &tvs_listener {
        Some(listener) => {
            let address = listener.local_addr().map_err(|e| LocalError::Failed(format!("callguard local: TVS listener: {e}")))?;
            Some(Arc::new(tvs::Tvs::new(address)))
        }
        None => None,
    };
    let update = capf.as_ref().map(|_| capf::Update::of(&first.snapshot));
    let media = first.media();
    let Built { served, capf: capf_identity, tvs: tvs_identity, sip: sip_view, media_control, next_rotation_step } =
        build(&options, first, None, &mut report).await.map_err(LocalError::Failed)?;
    files.replace(served);
    let sip_ports = sip_sockets.as_ref().map(|(_, _, ports)| ports.clone()).unwrap_or_default();
    // The relay runs as in a cluster, driven over its control interface, here on loopback.
    let relay = match (&sip_sockets, &media_control) {
        (Some(_), Some(identity)) => Some(
            crate::adapters::sip::controlled_media_relay(options.bind, &media, identity)
                .await
                .map_err(|e| LocalError::Failed(format!("callguard local: {e}")))?,
        ),
        _ => None,
    };
    let sip = sip_sockets.map(|(listeners, line, _)| {
        let (directory, tls) = sip_view.unwrap_or_default();
        let versions = if tls.as_ref().is_some_and(|t| t.legacy.is_some()) { "TLS 1.0 to 1.3" } else { "TLS 1.2 or 1.3" };
        let service = SipService::new(crate::adapters::sip::moved_trunks(directory, &sip_ports), tls);
        let ports = media.ports();
        let media_line = format!("; media relayed on {} ports {}-{}", options.bind, ports.start(), ports.end());
        (service, (listeners, format!("{line}; SIP-TLS: {versions}{media_line}")))
    });
    let mut tvs_line = None;
    if let Some(tvs) = &tvs {
        tvs_line = tvs.follow(tvs_identity.as_ref()).map_err(|e| LocalError::Failed(format!("callguard local: {e}")))?;
    }
    let mut capf_line = None;
    if let (Some(capf), Some(update)) = (&capf, update) {
        capf_line = capf.follow(update, capf_identity.as_ref()).map_err(|e| LocalError::Failed(format!("callguard local: {e}")))?;
    }

    // Handlers first: a SIGTERM right after the line below must stop us cleanly, not kill us.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| LocalError::Failed(e.to_string()))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| LocalError::Failed(e.to_string()))?;
    let (stop, stopped) = watch::channel(false);
    let capf_stopped = stopped.clone();
    let tvs_stopped = stopped.clone();
    let serving = tokio::spawn(server.run(stopped));
    let sip_cancel = tokio_util::sync::CancellationToken::new();
    let sip_service = sip.as_ref().map(|(service, _)| service.clone());
    let sip_serving = sip.map(|(service, (listeners, line))| {
        println!("{line}");
        tokio::spawn(write_registrations(
            service.clone(),
            namespace_dir.join(crate::adapters::sip::REGISTRATIONS_FILE),
            sip_cancel.clone(),
        ));
        if let Some(relay) = relay {
            service.relay_media_through(relay.start(sip_cancel.clone()));
        }
        tokio::spawn(service.serve(listeners, sip_cancel.clone()))
    });

    let (events, mut changes) = mpsc::unbounded_channel();
    // A CAPF deadline passing or a lockout ending changes a status with no edit: a rebuild then too.
    let wake = events.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = events.send(());
        }
    })
    .map_err(|e| LocalError::Failed(format!("cannot watch: {e}")))?;
    for path in &options.paths {
        watcher.watch(path, RecursiveMode::Recursive).map_err(|e| LocalError::Failed(format!("cannot watch {}: {e}", path.display())))?;
    }
    // Phone certificates (`callguard device add-cert`, or by hand) are read by the build: a new one
    // is served without waiting for an edit of the manifests. Only `devices/`: the build writes the
    // rest of the state, and watching it would rebuild after every build.
    // CAPF's records (`capf/`) too, so that the status follows what CAPF did.
    let devices = namespace_dir.join("devices");
    let records = namespace_dir.join(crate::core::build::capf::RECORD_DIR);
    for folder in [&devices, &records] {
        crate::core::private_file::create_dir(folder)
            .and_then(|()| watcher.watch(folder, RecursiveMode::NonRecursive).map_err(std::io::Error::other))
            .map_err(|e| LocalError::Failed(format!("cannot watch {}: {e}", folder.display())))?;
    }
    // CAPF answers once what it writes (`devices/`, `capf/`) is watched.
    let est_stopped = capf_stopped.clone();
    let capf_serving = match (&capf, capf_listener) {
        (Some(capf), Some(listener)) => Some(tokio::spawn(capf.clone().serve(listener, capf_stopped))),
        _ => None,
    };
    // TVS answers once `devices/` is watched, so that its directory follows what CAPF issues.
    let tvs_serving = match (&tvs, tvs_listener) {
        (Some(tvs), Some(listener)) => Some(tokio::spawn(tvs.clone().serve(listener, tvs_stopped))),
        _ => None,
    };
    match (&tvs, tvs_line) {
        (Some(_), Some(line)) => println!("{line}"),
        (Some(tvs), None) => println!("TVS listens on {}, but the build gave it no certificate: it answers no phone", tvs.address()),
        (None, _) => {}
    }
    let est_serving = match (&capf, est_listener) {
        (Some(capf), Some(listener)) => {
            let address = listener.local_addr().map_err(|e| LocalError::Failed(format!("callguard local: EST listener: {e}")))?;
            let service = Arc::new(est::Est::new(capf.clone(), address));
            if capf.est_ready() {
                println!(
                    "serving EST on https://{address}/.well-known/est/: TLS with the CAPF certificate; simpleenroll by device name and authentication string, simplereenroll by the current LSC"
                );
            }
            Some(tokio::spawn(service.serve(listener, est_stopped)))
        }
        _ => None,
    };
    match (&capf, capf_line) {
        (Some(_), Some(line)) => println!("{line}"),
        (Some(capf), None) => println!("CAPF listens on {}, but the build gave it no certificate: it answers no phone", capf.address()),
        (None, _) => {}
    }
    // Said once everything is in place, so whoever waits for this line can fetch, edit and signal.
    println!(
        "serving TFTP on {bound}; watching {}, {} and {} for changes (Ctrl-C stops)",
        display_paths(&options.paths),
        devices.display(),
        records.display()
    );

    // A CAPF deadline or a rotation's next step: rebuilt then, with no edit.
    let next_change = |capf: &Option<Arc<capf::Capf>>, rotation: Option<time::OffsetDateTime>| {
        capf.as_ref().and_then(|c| c.next_change(time::OffsetDateTime::now_utc())).into_iter().chain(rotation).min()
    };
    let mut rotation_step = next_rotation_step;
    let mut due = next_change(&capf, rotation_step);
    loop {
        // At most an hour at a time: the timer is not made for dates years ahead.
        let nap = due.map_or(Duration::from_secs(3600), |at| {
            let left = (at - time::OffsetDateTime::now_utc()).whole_milliseconds().clamp(0, 3_600_000);
            Duration::from_millis(u64::try_from(left).unwrap_or(0))
        });
        tokio::select! {
            _ = tokio::time::sleep(nap) => {
                // Woken early, or after an hour: the same time is still due.
                if due.is_some_and(|at| time::OffsetDateTime::now_utc() >= at) {
                    let _ = wake.send(());
                    due = None;
                }
            }
            Some(()) = changes.recv() => {
                // Let the burst settle, then rebuild once.
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                let previous = files.current();
                let mut update = None;
                let rebuilt = match validate(&options, true).await {
                    Ok(validated) => {
                        if options.tftp_port.is_none() && validated.tftp_port() != report.spec_port_noted.unwrap_or(spec_port) {
                            report.note_port(validated.tftp_port(), bound.port());
                        }
                        update = capf.as_ref().map(|_| capf::Update::of(&validated.snapshot));
                        build(&options, validated, previous.as_deref(), &mut report).await
                    }
                    Err(e) => Err(e),
                };
                // A failed build waits for an edit, not for the step it could not take.
                rotation_step = None;
                match rebuilt {
                    Ok(Built { served, capf: identity, tvs: tvs_identity, sip: sip_view, next_rotation_step, .. }) => {
                        files.replace(served);
                        rotation_step = next_rotation_step;
                        if let Some(service) = &sip_service {
                            let (directory, tls) = sip_view.unwrap_or_default();
                            service.follow(crate::adapters::sip::moved_trunks(directory, &sip_ports), tls);
                        }
                        if let Some(tvs) = &tvs {
                            match tvs.follow(tvs_identity.as_ref()) {
                                Ok(Some(_)) => {}
                                Ok(None) => report.failed(format!("TVS listens on {}, but the cluster's first node no longer runs CallManager: it answers no phone until it does", tvs.address())),
                                Err(e) => report.failed(format!("callguard local: {e}; TVS keeps its last good directory")),
                            }
                        }
                        if let (Some(capf), Some(update)) = (&capf, update) {
                            match capf.follow(update, identity.as_ref()) {
                                Ok(Some(_)) => {}
                                Ok(None) => report.failed(format!("CAPF listens on {}, but the cluster no longer runs it: it answers no phone until it does", capf.address())),
                                Err(e) => report.failed(format!("callguard local: {e}; CAPF keeps its last good certificate")),
                            }
                        }
                    }
                    Err(e) => report.failed(e),
                }
                due = next_change(&capf, rotation_step);
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    println!("stopping: letting transfers in flight finish");
    let _ = stop.send(true);
    let _ = serving.await;
    if let Some(capf) = capf_serving {
        let _ = capf.await;
    }
    if let Some(tvs) = tvs_serving {
        let _ = tvs.await;
    }
    if let Some(est) = est_serving {
        let _ = est.await;
    }
    sip_cancel.cancel();
    if let Some(sip) = sip_serving {
        let _ = sip.await;
    }
    Ok(())
}

/// Binds SIP over UDP and TCP on `--sip-port` (else the cluster's, else 5060) and SIP over TLS on
/// `--sip-tls-port` (else the cluster's, else 5061), and says where. A default port that is taken
/// gives way to a free one, named, as EST's does: on a workstation a softphone often holds 5060.
async fn bind_sip(
    options: &LocalOptions,
    (spec_port, spec_tls_port): (u16, u16),
    trunk_ports: &BTreeMap<u16, bool>,
) -> Result<(Listeners, String, BTreeMap<u16, u16>), LocalError> {
    let origin = |flag: Option<u16>, spec: u16, default: u16| match flag {
        Some(port) => (port, PortOrigin::Flag),
        None if spec == default => (spec, PortOrigin::Default),
        None => (spec, PortOrigin::Spec),
    };
    let fail = |service, address, e: &std::io::Error, origin| {
        LocalError::Failed(format!("callguard local: {}", port::explain(service, address, e, origin)))
    };
    let (port, port_origin) = origin(options.sip_port, spec_port, default_ports::SIP);
    let address = SocketAddr::new(options.bind, port);
    let (udp, tcp) = match crate::adapters::sip::bind_udp_and_tcp(address).await {
        Ok(pair) => pair,
        Err(e) if port_origin == PortOrigin::Default && e.kind() == std::io::ErrorKind::AddrInUse => {
            let pair = crate::adapters::sip::bind_free_udp_and_tcp(options.bind)
                .await
                .map_err(|e| fail(port::Service::Sip, address, &e, port_origin))?;
            let chosen = pair.0.local_addr().map(|a| a.port()).unwrap_or_default();
            println!("{}; serving SIP on port {chosen} instead", port::explain(port::Service::Sip, address, &e, port_origin));
            pair
        }
        Err(e) => return Err(fail(port::Service::Sip, address, &e, port_origin)),
    };
    let (tls_port, tls_origin) = origin(options.sip_tls_port, spec_tls_port, default_ports::SIP_SECURE);
    let tls_address = SocketAddr::new(options.bind, tls_port);
    let tls = match crate::services::tcp_listener::bind(tls_address) {
        Ok(listener) => listener,
        Err(e) if tls_origin == PortOrigin::Default && e.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = crate::services::tcp_listener::bind(SocketAddr::new(options.bind, 0))
                .map_err(|e| fail(port::Service::SipTls, tls_address, &e, tls_origin))?;
            let chosen = listener.local_addr().map(|a| a.port()).unwrap_or_default();
            println!("{}; serving SIP-TLS on port {chosen} instead", port::explain(port::Service::SipTls, tls_address, &e, tls_origin));
            listener
        }
        Err(e) => return Err(fail(port::Service::SipTls, tls_address, &e, tls_origin)),
    };
    let (udp_address, tls_address) = (udp.local_addr().unwrap_or(address), tls.local_addr().unwrap_or(tls_address));
    // Trunk profiles' incoming ports (Table 14-1) other than the phones': the spec's, no fallback.
    // A port added later needs a restart.
    let (trunks, trunk_lines) = crate::adapters::sip::bind_trunks(options.bind, trunk_ports, [spec_port, spec_tls_port])
        .await
        .map_err(|e| LocalError::Failed(format!("callguard local: {e}")))?;
    let trunk_text = if trunk_lines.is_empty() { String::new() } else { format!("; trunks on {}", trunk_lines.join(", ")) };
    let line = format!(
        "serving SIP on {udp_address} (UDP and TCP) and {tls_address} (TLS): REGISTER by the phones' security profiles (Table 5-2){trunk_text}"
    );
    // Trunks on the phones' ports share their listeners, wherever those were bound.
    let ports = BTreeMap::from([(spec_port, udp_address.port()), (spec_tls_port, tls_address.port())]);
    Ok((Listeners { udp: Some(udp), tcp: Some(tcp), tls: Some(tls), trunks }, line, ports))
}

/// Writes the registrar's bindings to `file` each second they changed, for `callguard sip registrations`.
async fn write_registrations(service: Arc<SipService>, file: std::path::PathBuf, cancel: tokio_util::sync::CancellationToken) {
    let mut last = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let rows = crate::adapters::sip::registration_rows(service.registrar());
        // The expiry compared to the minute: its second moves with the clock, a refresh moves it by
        // a minute or more (registrations last 60 s at least).
        let key: Vec<_> = rows
            .iter()
            .map(|r| {
                (r.line.clone(), r.device.clone(), r.contact.clone(), r.source.clone(), r.expires.chars().take(16).collect::<String>())
            })
            .collect();
        if last.as_ref() == Some(&key) {
            continue;
        }
        match serde_yaml::to_string(&rows) {
            Ok(text) => match crate::core::private_file::write(&file, text.as_bytes()) {
                Ok(()) => last = Some(key),
                Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot write the SIP registrations"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot render the SIP registrations"),
        }
    }
}

/// Binds `--capf-port`, else the cluster's port (3804 unless it says otherwise, P.6-7). The spec's
/// port is 1024 or above, which needs no privilege, so there is no fallback.
async fn bind_capf(options: &LocalOptions, spec_port: u16) -> Result<tokio::net::TcpListener, LocalError> {
    let (port, origin) = match options.capf_port {
        Some(port) => (port, PortOrigin::Flag),
        None if spec_port == default_ports::CAPF => (spec_port, PortOrigin::Default),
        None => (spec_port, PortOrigin::Spec),
    };
    let address = SocketAddr::new(options.bind, port);
    crate::services::tcp_listener::bind(address)
        .map_err(|e| LocalError::Failed(format!("callguard local: {}", port::explain(port::Service::Capf, address, &e, origin))))
}

/// Binds `--tvs-port`, else 2445 (docs/wire-formats.md §8): the cluster has no TVS port field.
async fn bind_tvs(options: &LocalOptions) -> Result<tokio::net::TcpListener, LocalError> {
    let (port, origin) = match options.tvs_port {
        Some(port) => (port, PortOrigin::Flag),
        None => (crate::services::tvs::DEFAULT_PORT, PortOrigin::Default),
    };
    let address = SocketAddr::new(options.bind, port);
    crate::services::tcp_listener::bind(address)
        .map_err(|e| LocalError::Failed(format!("callguard local: {}", port::explain(port::Service::Tvs, address, &e, origin))))
}

/// Binds `--est-port`, else [`est::DEFAULT_PORT`]; when the default is taken, any free port,
/// saying which.
async fn bind_est(options: &LocalOptions) -> Result<tokio::net::TcpListener, LocalError> {
    let (port, origin) = match options.est_port {
        Some(port) => (port, PortOrigin::Flag),
        None => (est::DEFAULT_PORT, PortOrigin::Default),
    };
    let address = SocketAddr::new(options.bind, port);
    match crate::services::tcp_listener::bind(address) {
        Ok(listener) => Ok(listener),
        Err(e) if origin == PortOrigin::Default && e.kind() == std::io::ErrorKind::AddrInUse => {
            let listener = crate::services::tcp_listener::bind(SocketAddr::new(options.bind, 0))
                .map_err(|e| LocalError::Failed(format!("callguard local: cannot serve EST on {}: {e}", options.bind)))?;
            let chosen = listener.local_addr().map(|a| a.port()).unwrap_or_default();
            println!("{}; serving EST on port {chosen} instead", port::explain(port::Service::Est, address, &e, origin));
            Ok(listener)
        }
        Err(e) => Err(LocalError::Failed(format!("callguard local: {}", port::explain(port::Service::Est, address, &e, origin)))),
    }
}

/// TFTP's port when 69 needs privileges we lack.
pub const UNPRIVILEGED_TFTP_PORT: u16 = 6969;

/// Binds `--tftp-port`, else the cluster's port, else 69; when the port was not given on the command
/// line and binding it needs privileges we lack, [`UNPRIVILEGED_TFTP_PORT`] instead, saying so.
async fn bind_tftp(options: &LocalOptions, spec_port: Option<u16>, files: Arc<dyn FileSource>) -> Result<TftpServer, LocalError> {
    let bind = |port: u16, origin: PortOrigin| {
        let config = ServerConfig { bind: SocketAddr::new(options.bind, port), ..ServerConfig::default() };
        let files = files.clone();
        async move {
            TftpServer::bind(config, files).await.map_err(|e| match e {
                TftpServerError::Bind { address, source } => (source.kind(), port::explain(port::Service::Tftp, address, &source, origin)),
            })
        }
    };
    let (port, origin) = match (options.tftp_port, spec_port) {
        (Some(port), _) => (port, PortOrigin::Flag),
        (None, Some(port)) => (port, PortOrigin::Spec),
        (None, None) => (default_ports::TFTP, PortOrigin::Default),
    };
    match bind(port, origin).await {
        Ok(server) => Ok(server),
        Err((std::io::ErrorKind::PermissionDenied, _)) if origin != PortOrigin::Flag => {
            let whose = if origin == PortOrigin::Spec { " (the cluster's spec.ports.tftpPort)" } else { "" };
            println!(
                "port {port}{whose} needs root or CAP_NET_BIND_SERVICE; serving on {UNPRIVILEGED_TFTP_PORT} instead, where phones do \
                 not look (--tftp-port chooses)"
            );
            bind(UNPRIVILEGED_TFTP_PORT, PortOrigin::Fallback)
                .await
                .map_err(|(_, message)| LocalError::Failed(format!("callguard local: {message}")))
        }
        Err((_, message)) => Err(LocalError::Failed(format!("callguard local: {message}"))),
    }
}

/// The served namespace's objects, validated.
struct Validated {
    namespace: String,
    snapshot: Snapshot,
}

impl Validated {
    /// The cluster's `spec.ports.tftpPort`, when it sets one.
    fn tftp_port(&self) -> Option<u16> {
        self.snapshot.clusters.values().next().and_then(|c| c.spec.ports.as_ref()).and_then(|p| p.tftp_port)
    }

    /// Whether TVS runs: beside CallManager on the first node, where the build finds the certificate
    /// it presents (docs/wire-formats.md §8).
    fn runs_tvs(&self) -> bool {
        let Some(cluster) = self.snapshot.clusters.values().next() else { return false };
        cluster.spec.first_node().is_some_and(|node| node.services.as_ref().is_none_or(|s| s.call_manager()))
    }

    /// The cluster's SIP and SIP-TLS ports, when the first node runs CallManager (P.3-5).
    fn sip_ports(&self) -> Option<(u16, u16)> {
        let cluster = self.snapshot.clusters.values().next()?;
        self.runs_tvs().then(|| (cluster.spec.ports().sip_port(), cluster.spec.ports().sip_secure_port()))
    }

    /// The cluster's media relay settings (`spec.media`), defaults where it sets none.
    fn media(&self) -> crate::api::MediaSettings {
        self.snapshot.clusters.values().next().and_then(|c| c.spec.media.clone()).unwrap_or_default()
    }

    /// The cluster's CAPF port (`spec.ports.capfPort`, else 3804), when it runs CAPF (P.6-6).
    fn capf_port(&self) -> Option<u16> {
        let cluster = self.snapshot.clusters.values().next()?;
        cluster.spec.capf_enabled().then(|| cluster.spec.ports().capf_port())
    }
}

/// Reads and validates the manifests and picks the namespace to serve; writes nothing. `serving`:
/// a build is being served, and stays served when this fails.
async fn validate(options: &LocalOptions, serving: bool) -> Result<Validated, String> {
    let still = if serving { "; still serving the last good build" } else { "" };
    let paths = options.paths.clone();
    let validated = tokio::task::spawn_blocking(move || validate_paths(&paths)).await.map_err(|e| format!("validation stopped: {e}"))?;
    let mut namespaces = match validated {
        Ok(namespaces) => namespaces,
        Err(PathsError::Unreadable(errors)) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(format!("{}\ncallguard local: input cannot be read{still}", lines.join("\n")));
        }
        Err(PathsError::Invalid(violations)) => {
            let lines: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(format!("{}\ncallguard local: {} violation(s){still}", lines.join("\n"), violations.len()));
        }
    };
    let namespace = match (&options.namespace, namespaces.len()) {
        (Some(name), _) => name.clone(),
        (None, 1) => namespaces.keys().next().cloned().unwrap_or_default(),
        (None, 0) => return Err(format!("callguard local: the manifests hold no Callguard objects{still}")),
        (None, _) => {
            let names: Vec<&String> = namespaces.keys().collect();
            return Err(format!("callguard local: the manifests hold namespaces {names:?}: pass --namespace{still}"));
        }
    };
    let snapshot =
        namespaces.remove(&namespace).ok_or_else(|| format!("callguard local: no namespace {namespace:?} in the manifests{still}"))?;
    Ok(Validated { namespace, snapshot })
}

/// What `local` has said, so that it says each thing once.
#[derive(Default)]
struct Report {
    /// The status table last printed.
    shown: String,
    /// The last failure printed; empty while builds succeed.
    last_error: String,
    /// The objects of the last good build, by kind and name.
    objects: BTreeSet<(&'static str, String)>,
    /// The spec's TFTP port last noted as differing from the bound one.
    spec_port_noted: Option<Option<u16>>,
}

impl Report {
    /// One edit can raise several events: each distinct failure is said once.
    fn failed(&mut self, error: String) {
        if error != self.last_error {
            eprintln!("{error}");
            self.last_error = error;
        }
    }

    /// A build succeeded: say so when it follows a failure, and what went since the last good build.
    fn succeeded(&mut self, namespace: &str, objects: BTreeSet<(&'static str, String)>) {
        if !self.last_error.is_empty() {
            println!("{} {namespace}: valid again; serving the new build", clock());
            self.last_error.clear();
        }
        let went: Vec<&(&str, String)> = self.objects.difference(&objects).collect();
        if !self.objects.is_empty() && !went.is_empty() {
            let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
            for (kind, _) in &went {
                *kinds.entry(kind).or_default() += 1;
            }
            let counts: Vec<String> = kinds.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
            println!("{} {namespace}: {} object(s) went from the manifests: {}", clock(), went.len(), counts.join(", "));
        }
        self.objects = objects;
    }

    fn note_port(&mut self, spec_port: Option<u16>, bound: u16) {
        self.spec_port_noted = Some(spec_port);
        let now = spec_port.unwrap_or(default_ports::TFTP);
        if now != bound {
            println!("spec.ports.tftpPort is now {now}; still serving on {bound} until callguard local restarts");
        }
    }
}

/// Every object of the snapshot, by kind and name.
fn objects(snapshot: &Snapshot) -> BTreeSet<(&'static str, String)> {
    let names = snapshot.names_by_kind();
    names.into_iter().flat_map(|(kind, names)| names.into_iter().map(move |name| (kind, name.clone()))).collect()
}

/// Builds the validated namespace; on success returns the files to serve, which keep the signatures
/// of `previous` for the phones whose content did not change, and CAPF's identity; prints the status
/// table when it changed. On failure the caller keeps serving what it served.
async fn build(options: &LocalOptions, validated: Validated, previous: Option<&ServedFiles>, report: &mut Report) -> Result<Built, String> {
    let Validated { namespace, snapshot } = validated;
    let objects = objects(&snapshot);
    let sip_snapshot = snapshot.clone();
    let (state_dir, build) = (options.state_dir.clone(), options.build.clone());
    let built = tokio::task::spawn_blocking(move || build_in(&state_dir, snapshot, time::OffsetDateTime::now_utc(), &build))
        .await
        .map_err(|e| format!("the build stopped: {e}"))?;
    let still = if previous.is_some() { "; still serving the last good build" } else { "" };
    let output: BuildOutput = built.map_err(|e| format!("callguard local: namespace {namespace}: {e}{still}"))?;
    report.succeeded(&namespace, objects);
    for change in &output.changes {
        let warning = if change.kind == crate::core::build::ChangeKind::NewIdentity { "WARNING: " } else { "" };
        println!("{namespace}: {warning}{change}");
    }
    let mut served = output.served;
    match previous {
        Some(previous) => {
            served.phones.adopt_cache(&previous.phones);
            if previous.trust_lists() != served.trust_lists() {
                println!("{namespace}: serving new trust lists");
            }
        }
        None => println!(
            "{namespace}: serving {} and the files of {} phone(s), signed when first fetched",
            served.trust_lists().keys().cloned().collect::<Vec<_>>().join(", "),
            served.phones.device_count()
        ),
    }
    let table = status_table(&output.statuses);
    if table != report.shown {
        println!("{table}");
        report.shown = table;
    }
    let sip = output.sip.as_ref().map(|identity| {
        let directory = crate::adapters::sip::directory(&sip_snapshot, identity);
        let tls = crate::adapters::sip::tls_config(identity, &directory)
            .inspect_err(|e| println!("{namespace}: SIP-TLS refuses every phone: {e}"))
            .ok();
        (directory, tls)
    });
    Ok(Built {
        served,
        capf: output.capf,
        tvs: output.tvs,
        sip,
        media_control: output.media_control,
        next_rotation_step: output.next_rotation_step,
    })
}

/// What a build gives the services.
struct Built {
    served: ServedFiles,
    capf: Option<CapfIdentity>,
    tvs: Option<TvsIdentity>,
    sip: Option<(SipDirectory, Option<crate::services::sip::server::SipTls>)>,
    media_control: Option<crate::core::build::media_control::MediaControlIdentity>,
    /// When a rotation may take its next step: rebuilt then.
    next_rotation_step: Option<time::OffsetDateTime>,
}

/// One row per resource: kind, name, ready, reason, what is served with less protection than asked,
/// and a phone's LSC state; then one line per downgrade, so that none goes unseen, one per CAPF
/// operation, with where it stands, and one per gateway with its media security and why (P.13-2, P.13-3).
pub fn status_table(statuses: &[ResourceStatus]) -> String {
    let rows: Vec<[String; 6]> = statuses
        .iter()
        .map(|s| {
            let downgraded = if s.downgrades.is_empty() { "-".to_owned() } else { s.downgrade_reasons().join(",") };
            let lsc = s.lsc_state.map_or("-".to_owned(), |state| format!("{state:?}"));
            [s.kind.to_string(), s.name.clone(), if s.ready { "True" } else { "False" }.to_string(), s.reason.clone(), downgraded, lsc]
        })
        .collect();
    let header = ["KIND", "NAME", "READY", "REASON", "DOWNGRADED", "LSC"].map(String::from);
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .chain(statuses.iter().flat_map(|s| s.downgrades.iter().map(move |d| format!("warning: {}/{} is downgraded: {d}", s.kind, s.name))))
        .chain(statuses.iter().filter_map(|s| {
            let media = s.media.as_ref()?;
            Some(format!("media: {}/{}: {:?}: {}", s.kind, s.name, media.security, media.reason()))
        }))
        .chain(statuses.iter().filter_map(|s| {
            let lsc = s.lsc.as_ref().map(|l| format!("; LSC serial {} from {}, valid until {}", l.serial_number, l.issuer, l.not_after));
            s.operation_status.as_ref().map(|o| format!("capf: {}/{}: {o}{}", s.kind, s.name, lsc.unwrap_or_default()))
        }))
        .chain(statuses.iter().flat_map(|s| {
            s.capf_profiles.iter().filter_map(move |p| {
                let lsc =
                    p.lsc.as_ref().map(|l| format!("; LSC serial {} from {}, valid until {}", l.serial_number, l.issuer, l.not_after));
                let operation = p.operation_status.as_ref()?;
                Some(format!("capf: {}/{} instance {}: {operation}{}", s.kind, s.name, p.instance_id, lsc.unwrap_or_default()))
            })
        }))
        .collect::<Vec<_>>()
        .join("\n")
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
