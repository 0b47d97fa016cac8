//! `callguard local DIR`: the same build as the operator's, from a directory of YAML, served over
//! TFTP on loopback, rebuilt whenever the directory changes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::api::default_ports;
use crate::build::served::ServedFiles;
use crate::build::{BuildOptions, BuildOutput, PathsError, ResourceStatus, build_paths};
use crate::tftp::{FileSource, ServerConfig, SwappableSource, TftpServer, TftpServerError};

/// Edits come in bursts (an editor writes, renames, touches): wait this long after the last event.
const DEBOUNCE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub paths: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub bind: IpAddr,
    /// TFTP port. `None`: 69 (P.1-16), or [`UNPRIVILEGED_TFTP_PORT`] when binding 69 is not
    /// permitted, so that `callguard local DIR` works without root.
    pub tftp_port: Option<u16>,
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
            namespace: None,
            build: BuildOptions::default(),
        }
    }
}

/// Builds, serves and watches until SIGINT or SIGTERM. An invalid first build is an error; an
/// invalid later edit is reported and the last good files keep being served.
pub async fn run(options: LocalOptions) -> Result<(), String> {
    let mut shown = String::new();
    let files = Arc::new(SwappableSource::new(rebuild(&options, None, &mut shown).await?));
    let mut last_error = String::new();

    let server = bind_tftp(&options, files.clone()).await?;
    let bound = server.local_addr().map_err(|e| e.to_string())?;
    // Handlers first: a SIGTERM right after the line below must stop us cleanly, not kill us.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(server.run(stopped));

    let (events, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = events.send(());
        }
    })
    .map_err(|e| format!("cannot watch: {e}"))?;
    for path in &options.paths {
        watcher.watch(path, RecursiveMode::Recursive).map_err(|e| format!("cannot watch {}: {e}", path.display()))?;
    }
    // Said once everything is in place, so whoever waits for this line can fetch, edit and signal.
    println!("serving TFTP on {bound}; watching {} for changes (Ctrl-C stops)", display_paths(&options.paths));

    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                // Let the burst settle, then rebuild once.
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                // One edit can raise several events: say each distinct failure once.
                match rebuild(&options, Some(&files.current()), &mut shown).await {
                    Ok(served) => {
                        files.replace(served);
                        last_error.clear();
                    }
                    Err(e) if e != last_error => {
                        eprintln!("{e}");
                        last_error = e;
                    }
                    Err(_) => {}
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    println!("stopping: letting transfers in flight finish");
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(())
}

/// TFTP's port when 69 needs privileges we lack.
pub const UNPRIVILEGED_TFTP_PORT: u16 = 6969;

/// Binds the port asked for, or 69, falling back to [`UNPRIVILEGED_TFTP_PORT`] (and saying so) when
/// no port was asked for and 69 is refused for want of root.
async fn bind_tftp(options: &LocalOptions, files: Arc<dyn FileSource>) -> Result<TftpServer, String> {
    let bind = |port: u16| {
        let config = ServerConfig { bind: SocketAddr::new(options.bind, port), ..ServerConfig::default() };
        TftpServer::bind(config, files.clone())
    };
    let port = options.tftp_port.unwrap_or(default_ports::TFTP);
    match bind(port).await {
        Ok(server) => Ok(server),
        Err(TftpServerError::Bind { source, .. })
            if options.tftp_port.is_none() && source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            println!("port {port} needs root; using {UNPRIVILEGED_TFTP_PORT} instead (--tftp-port chooses)");
            bind(UNPRIVILEGED_TFTP_PORT).await.map_err(|e| format!("cannot serve TFTP: {e}"))
        }
        Err(e) => {
            let hint = if port < 1024 { "; ports below 1024 need root: pass --tftp-port 6969" } else { "" };
            Err(format!("cannot serve TFTP: {e}{hint}"))
        }
    }
}

/// Validates and builds; on success returns the files to serve, which keep the signatures of
/// `previous` for the phones whose content did not change, and prints the status table when it
/// changed. On failure the caller keeps serving what it served.
async fn rebuild(options: &LocalOptions, previous: Option<&ServedFiles>, shown: &mut String) -> Result<ServedFiles, String> {
    let (paths, state_dir, build) = (options.paths.clone(), options.state_dir.clone(), options.build.clone());
    let built = tokio::task::spawn_blocking(move || build_paths(&paths, &state_dir, time::OffsetDateTime::now_utc(), &build))
        .await
        .map_err(|e| format!("the build stopped: {e}"))?;
    let mut namespaces = match built {
        Ok(namespaces) => namespaces,
        Err(PathsError::Unreadable(errors)) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(format!("{}\ncallguard local: input cannot be read; still serving the last good build", lines.join("\n")));
        }
        Err(PathsError::Invalid(violations)) => {
            let lines: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(format!(
                "{}\ncallguard local: {} violation(s); still serving the last good build",
                lines.join("\n"),
                violations.len()
            ));
        }
    };
    let namespace = match (&options.namespace, namespaces.len()) {
        (Some(name), _) => name.clone(),
        (None, 1) => namespaces.keys().next().cloned().unwrap_or_default(),
        (None, 0) => return Err("callguard local: the manifests hold no Callguard objects".into()),
        (None, _) => {
            let names: Vec<&String> = namespaces.keys().collect();
            return Err(format!("callguard local: the manifests hold namespaces {names:?}: pass --namespace"));
        }
    };
    let output: BuildOutput = namespaces
        .remove(&namespace)
        .ok_or_else(|| format!("callguard local: no namespace {namespace:?} in the manifests"))?
        .map_err(|e| format!("callguard local: namespace {namespace}: {e}; still serving the last good build"))?;
    for change in &output.changes {
        let warning = if change.kind == crate::build::ChangeKind::NewIdentity { "WARNING: " } else { "" };
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
    if table != *shown {
        println!("{table}");
        *shown = table;
    }
    Ok(served)
}

/// One row per resource: kind, name, ready, reason, and what is served with less protection than
/// asked; then one line per downgrade, so that none goes unseen.
pub fn status_table(statuses: &[ResourceStatus]) -> String {
    let rows: Vec<[String; 5]> = statuses
        .iter()
        .map(|s| {
            let downgraded = if s.downgrades.is_empty() { "-".to_owned() } else { s.downgrade_reasons().join(",") };
            [s.kind.to_string(), s.name.clone(), if s.ready { "True" } else { "False" }.to_string(), s.reason.clone(), downgraded]
        })
        .collect();
    let header = ["KIND", "NAME", "READY", "REASON", "DOWNGRADED"].map(String::from);
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().chain([&header]).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .chain(statuses.iter().flat_map(|s| s.downgrades.iter().map(move |d| format!("warning: {}/{} is downgraded: {d}", s.kind, s.name))))
        .collect::<Vec<_>>()
        .join("\n")
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
