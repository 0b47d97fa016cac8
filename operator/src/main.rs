use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use callguard::build::BuildOptions;
use callguard::manifest;
use callguard::token::create;
use callguard::validate::{self, SecretPolicy};

/// Callguard: the security plane for IP telephony on Kubernetes.
#[derive(Parser)]
#[command(name = "callguard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Directory to write into.
        #[arg(long, default_value = "crds")]
        dir: PathBuf,
        /// Also regenerate the field reference in this README.
        #[arg(long)]
        readme: Option<PathBuf>,
    },
    /// Check manifests offline: CRD schema, CEL rules and rules across objects.
    ///
    /// Exits 0 when everything is valid, 1 when a rule is broken (one line per violation:
    /// `file:line: Kind/name: field: message (seed section)`), 2 when input cannot be read or parsed.
    Validate {
        /// Files and directories of multi-document YAML.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Accept references to Secrets that are not among the manifests (sealed or external secrets).
        #[arg(long)]
        allow_missing_secrets: bool,
    },
    /// Validate, then build every namespace's certificates, trust lists and phone configuration files.
    ///
    /// Keys, issued certificates, published trust lists and token status are kept in the state
    /// directory, so a rebuild changes nothing without a reason. The files phones fetch are written to
    /// `--out` (default: STATE_DIR/tftp/NAMESPACE).
    Build {
        /// Files and directories of multi-document YAML.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where keys, certificates and published trust lists are kept (private keys mode 0600).
        #[arg(long, default_value = ".callguard")]
        state_dir: PathBuf,
        /// Where to write the TFTP files (owner-only: they may carry credentials).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace the identity of this id, which the build names when part of it is lost. Phones that
        /// hold its ITL refuse the new one until their ITL is deleted by hand (P.3-18).
        #[arg(long, value_name = "ID")]
        new_identity: Option<String>,
    },
    /// Build DIR and serve it over TFTP on loopback, rebuilding whenever DIR changes.
    ///
    /// An invalid edit is reported with the `validate` messages and the last good build keeps being
    /// served. SIGINT and SIGTERM stop it cleanly; the state directory keeps the CA, certificates and
    /// trust lists for the next start.
    Local {
        /// Directories and files of multi-document YAML.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where keys, certificates and published trust lists are kept (private keys mode 0600).
        #[arg(long, default_value = ".callguard")]
        state_dir: PathBuf,
        /// Address the services listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// TFTP port. Without it: 69 (P.1-16), or 6969 when 69 needs root that we do not have.
        #[arg(long)]
        tftp_port: Option<u16>,
        /// The namespace to serve when the manifests hold several.
        #[arg(long)]
        namespace: Option<String>,
        /// Replace the identity of this id, which `local` names when part of it is lost. Phones that
        /// hold its ITL refuse the new one until their ITL is deleted by hand (P.3-18).
        #[arg(long, value_name = "ID")]
        new_identity: Option<String>,
    },
    /// Run the operator: reconcile every CallControlCluster of the Kubernetes cluster (KUBECONFIG or
    /// the pod's service account) into Secrets, trust lists, data-plane workloads and status.
    Operator {
        /// Where `/metrics`, `/healthz` and `/readyz` are served.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_bind: std::net::SocketAddr,
        /// Take a Lease before writing, so that several replicas are safe.
        #[arg(long)]
        leader_election: bool,
        /// Namespace of the Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// The image the data-plane pods run (the operator's own).
        #[arg(long, default_value = concat!("ghcr.io/callguard/callguard:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// This replica's identity in the Lease and in events (default: the pod name and a random suffix).
        #[arg(long)]
        identity: Option<String>,
        /// Manage only this namespace (repeat for several). Without it, every namespace: the
        /// operator then needs cluster-wide rights.
        #[arg(long = "namespace", value_name = "NAMESPACE")]
        namespaces: Vec<String>,
        /// Ports of the Kubernetes API server that the data-plane pods' NetworkPolicy lets them reach
        /// (repeat for several).
        #[arg(long = "api-server-port", value_name = "PORT", default_values_t = [443u16, 6443])]
        api_server_ports: Vec<u16>,
        #[command(flatten)]
        logging: LoggingArgs,
    },
    /// Run one data-plane service, as the operator's pods do.
    Serve {
        #[command(subcommand)]
        service: Serve,
    },
    /// Security tokens (SAST) that sign the CTL.
    Token {
        #[command(subcommand)]
        token: Token,
    },
    /// Cisco trust files: inspect, verify and decrypt CTL/ITL, .sgn and .enc.sgn files.
    Trust {
        #[command(subcommand)]
        command: callguard::trust::cli::TrustCommand,
    },
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Token {
    /// Make a software token: an RSA 2048 key and a self-signed SAST certificate, written as a Secret
    /// (certificate.pem, and key.p8 encrypted with the password) and the SecurityToken that uses it.
    ///
    /// The password Secret (<name>-password, key `password`) is NOT written unless
    /// --with-password-secret is given: a password belongs in a sealed or external secret, not in
    /// plain YAML next to the key it opens. The factory password Cisco123 is accepted with a
    /// warning, but no CTL is signed with the token until it changes.
    Create {
        /// Name of the SecurityToken and of its Secret; also the certificate's CN.
        #[arg(long)]
        name: String,
        /// File holding the token password; one trailing newline is ignored.
        #[arg(long)]
        password_file: PathBuf,
        /// Namespace written into the manifests' metadata.
        #[arg(long)]
        namespace: Option<String>,
        /// Organization (O) of the certificate subject.
        #[arg(long)]
        organization: Option<String>,
        /// Organizational unit (OU) of the certificate subject.
        #[arg(long)]
        organizational_unit: Option<String>,
        /// spec.description of the SecurityToken, e.g. where the token is kept.
        #[arg(long)]
        description: Option<String>,
        /// Also write the password Secret, in plain text (for labs and examples only).
        #[arg(long)]
        with_password_secret: bool,
        /// Write the manifests to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Generate a namespace of phones with their profiles and users, and measure `validate` on it.
    Validate {
        /// Number of phones.
        #[arg(long, default_value_t = 30_000)]
        phones: usize,
    },
    /// Render and sign the configuration files of a namespace of phones (a third encrypted), next to `openssl speed rsa2048`.
    Configs {
        /// Number of phones.
        #[arg(long, default_value_t = 30_000)]
        phones: usize,
    },
    /// Boot storm: N phones fetch CTLFile.tlv, ITLSEP<MAC>.tlv and SEP<MAC>.cnf.xml.sgn over TFTP, from
    /// Callguard's server and then from tftpd-hpa (`in.tftpd`) serving the same files.
    Tftp {
        /// Number of phones.
        #[arg(long, default_value_t = 1_000)]
        phones: usize,
        /// Phones booting at the same time.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Also boot them from Callguard's server in single-port mode (every transfer from the
        /// listening port, as the TFTP pods serve), after the run with a port per transfer.
        #[arg(long)]
        single_port: bool,
    },
    /// Issue LSCs on one core, next to `openssl speed rsa2048`.
    Lsc {
        /// Number of certificates.
        #[arg(long, default_value_t = 2_000)]
        count: usize,
    },
}

#[derive(clap::Args)]
struct LoggingArgs {
    /// Log lines as JSON (for log collectors) instead of text. RUST_LOG filters them.
    #[arg(long, value_enum, default_value = "text")]
    log_format: callguard::ops::logging::LogFormat,
}

#[derive(Subcommand)]
enum Serve {
    /// TFTP: the trust lists the operator publishes and every phone's files, signed on demand.
    Tftp {
        /// The CallControlCluster served.
        #[arg(long)]
        cluster: String,
        /// Its namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// The TLS Secret of the TFTP certificate.
        #[arg(long)]
        signer_secret: String,
        /// The Secret the operator projects the validated files into (it names its shards).
        #[arg(long)]
        files_secret: String,
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// TFTP port (69, P.1-16).
        #[arg(long, default_value_t = callguard::api::default_ports::TFTP)]
        port: u16,
        /// Where transfers send from: `listening` (single-port mode: every packet from --port, which
        /// a Service, load balancer or NAT carries) or `ephemeral` (a new port per transfer, RFC 1350).
        #[arg(long, value_enum, default_value = "listening")]
        transfer_port: callguard::tftp::TransferPort,
        /// Where `/metrics` (requests, bytes, errors by kind), `/healthz` and `/readyz` are served.
        #[arg(long)]
        metrics_bind: Option<std::net::SocketAddr>,
        #[command(flatten)]
        logging: LoggingArgs,
    },
}

/// Runs `job` on a Tokio runtime with a Kubernetes client, logging as asked, until SIGINT or SIGTERM.
fn with_client<F, Fut>(logging: &LoggingArgs, job: F) -> ExitCode
where
    F: FnOnce(kube::Client, callguard::ops::shutdown::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    if let Err(e) = callguard::ops::logging::init(tracing::level_filters::LevelFilter::INFO, logging.log_format) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let result = tokio::runtime::Runtime::new().map_err(|e| e.to_string()).and_then(|runtime| {
        runtime.block_on(async {
            let shutdown = callguard::ops::shutdown::Shutdown::new();
            shutdown.trigger_on_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
            let client = kube::Client::try_default().await.map_err(|e| format!("no Kubernetes API: {e}"))?;
            job(client, shutdown).await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { dir, readme } => crdgen(&dir, readme.as_deref()),
        Command::Validate { paths, allow_missing_secrets } => {
            let policy = if allow_missing_secrets { SecretPolicy::AllowMissing } else { SecretPolicy::Require };
            run_validate(&paths, policy)
        }
        Command::Token { token } => run_token(token),
        Command::Trust { command } => callguard::trust::cli::run(command),
        Command::Build { paths, state_dir, out, new_identity } => {
            run_build(&paths, &state_dir, out.as_deref(), &BuildOptions { new_identity })
        }
        Command::Local { paths, state_dir, bind, tftp_port, namespace, new_identity } => {
            let build = BuildOptions { new_identity };
            let options = callguard::local::LocalOptions { paths, state_dir, bind, tftp_port, namespace, build };
            let result = tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|runtime| runtime.block_on(callguard::local::run(options)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Operator { metrics_bind, leader_election, lease_namespace, image, identity, namespaces, api_server_ports, logging } => {
            let options = callguard::controller::OperatorOptions {
                metrics_bind,
                leader_election,
                lease_namespace,
                image,
                identity,
                namespaces,
                api_server_ports,
            };
            with_client(&logging, |client, shutdown| callguard::controller::run(client, options, shutdown))
        }
        Command::Serve {
            service: Serve::Tftp { cluster, namespace, signer_secret, files_secret, bind, port, transfer_port, metrics_bind, logging },
        } => {
            let options = callguard::dataplane::tftp::ServeTftpOptions {
                namespace,
                cluster,
                signer_secret,
                files_secret,
                bind,
                port,
                transfer_port,
                metrics_bind,
            };
            with_client(&logging, |client, shutdown| callguard::dataplane::tftp::serve(client, options, shutdown))
        }
        Command::Bench { bench: Bench::Validate { phones } } => {
            callguard::bench::validate(phones);
            ExitCode::SUCCESS
        }
        Command::Bench { bench: Bench::Configs { phones } } => bench_result(callguard::bench::configs(phones)),
        Command::Bench { bench: Bench::Lsc { count } } => bench_result(callguard::bench::lsc(count)),
        Command::Bench { bench: Bench::Tftp { phones, concurrency, single_port } } => {
            bench_result(callguard::bench::tftp::run(phones, concurrency, single_port))
        }
    }
}

fn crdgen(dir: &std::path::Path, readme: Option<&std::path::Path>) -> ExitCode {
    match callguard::crdgen::write_all(dir) {
        Ok(files) => println!("wrote {} CRDs to {}", files.len(), dir.display()),
        Err(e) => {
            eprintln!("callguard crdgen: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let Some(readme) = readme else { return ExitCode::SUCCESS };
    let updated = std::fs::read_to_string(readme).map(|text| callguard::crdgen::with_reference(&text));
    match updated {
        Ok(Some(text)) => match std::fs::write(readme, text) {
            Ok(()) => {
                println!("wrote the field reference into {}", readme.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("callguard crdgen: {}: {e}", readme.display());
                ExitCode::from(2)
            }
        },
        Ok(None) => {
            eprintln!("callguard crdgen: {} has no reference markers", readme.display());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("callguard crdgen: {}: {e}", readme.display());
            ExitCode::from(2)
        }
    }
}

/// Rust ignores SIGPIPE, so `callguard trust inspect FILE | head` would panic on the closed pipe;
/// the default disposition ends the process quietly, as every Unix filter does.
fn restore_default_sigpipe() {
    // SAFETY: called first thing in `main`, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn bench_result(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callguard bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_build(paths: &[PathBuf], state_dir: &std::path::Path, out: Option<&std::path::Path>, options: &BuildOptions) -> ExitCode {
    use callguard::build::{PathsError, build_paths};
    let built = match build_paths(paths, state_dir, time::OffsetDateTime::now_utc(), options) {
        Ok(built) => built,
        Err(PathsError::Unreadable(errors)) => {
            for error in &errors {
                eprintln!("{error}");
            }
            return ExitCode::from(2);
        }
        Err(PathsError::Invalid(violations)) => {
            for violation in &violations {
                println!("{violation}");
            }
            eprintln!("callguard build: {} violation(s); nothing was built", violations.len());
            return ExitCode::from(1);
        }
    };
    let mut failed = false;
    for (namespace, output) in built {
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                eprintln!("callguard build: namespace {namespace}: {e}");
                failed = true;
                continue;
            }
        };
        let dir = out.map(|o| o.join(&namespace)).unwrap_or_else(|| state_dir.join("tftp").join(&namespace));
        let files = output.served.render_all();
        if let Err(e) = write_tree(&dir, &files) {
            eprintln!("callguard build: {}: {e}", dir.display());
            failed = true;
            continue;
        }
        for change in &output.changes {
            println!("{namespace}: {change}");
        }
        for status in &output.statuses {
            println!("{namespace}: {status}");
        }
        println!("{namespace}: wrote {} files to {}", files.len(), dir.display());
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Replaces the directory's files with `files`, so a file that is no longer built is no longer served.
/// Owner-only (0600 files in a 0700 directory): configuration files may carry digest credentials.
fn write_tree(dir: &std::path::Path, files: &std::collections::BTreeMap<String, std::sync::Arc<[u8]>>) -> std::io::Result<()> {
    callguard::private_file::create_dir(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && !files.contains_key(&entry.file_name().to_string_lossy().to_string()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (name, bytes) in files {
        callguard::private_file::write(&dir.join(name), bytes)?;
    }
    Ok(())
}

fn run_token(token: Token) -> ExitCode {
    let Token::Create { name, password_file, namespace, organization, organizational_unit, description, with_password_secret, out } = token;
    let password = match std::fs::read(&password_file) {
        Ok(bytes) => create::password_from_file(&bytes),
        Err(e) => {
            eprintln!("callguard token create: {}: {e}", password_file.display());
            return ExitCode::from(2);
        }
    };
    let password = match password {
        Ok(password) => password,
        Err(e) => {
            eprintln!("callguard token create: {}: {e}", password_file.display());
            return ExitCode::from(2);
        }
    };
    let request = create::TokenRequest { name, namespace, organization, organizational_unit, description, with_password_secret };
    let created = match create::create(&request, &password, time::OffsetDateTime::now_utc()) {
        Ok(created) => created,
        Err(e) => {
            eprintln!("callguard token create: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &created.warnings {
        eprintln!("callguard token create: warning: {warning}");
    }
    match out {
        None => {
            print!("{}", created.yaml);
            ExitCode::SUCCESS
        }
        Some(path) => match callguard::private_file::write(&path, created.yaml.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("callguard token create: {}: {e}", path.display());
                ExitCode::from(2)
            }
        },
    }
}

fn run_validate(paths: &[PathBuf], policy: SecretPolicy) -> ExitCode {
    let (documents, errors) = manifest::load_paths(paths);
    if !errors.is_empty() {
        for error in &errors {
            eprintln!("{error}");
        }
        eprintln!("callguard validate: {} input error(s); nothing was validated", errors.len());
        return ExitCode::from(2);
    }
    let report = validate::validate_documents(&documents, policy);
    for violation in &report.violations {
        println!("{violation}");
    }
    if report.violations.is_empty() {
        println!(
            "valid: {} objects and {} secrets in {} namespace(s), {} file(s)",
            report.objects,
            report.secrets,
            report.namespaces,
            documents.iter().map(|d| &d.file).collect::<std::collections::BTreeSet<_>>().len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("callguard validate: {} violation(s) in {} objects", report.violations.len(), report.objects);
        ExitCode::from(1)
    }
}
