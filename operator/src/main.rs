use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use callguard::core::build::BuildOptions;
use callguard::core::token::create;
use callguard::validate::manifest;
use callguard::validate::{self, SecretPolicy};

/// mimalloc: under a registration storm glibc's malloc and free took a sixth of the SIP service's
/// CPU (`callguard bench sip` under perf); mimalloc's thread-local pages cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`; options keep their numbers across versions,
/// retired ones included, and the crate names only some of them).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The operator builds and drops a namespace's worth of objects in every reconcile, and mimalloc
/// keeps freed pages for a second (ten in its arenas) before it returns them: each reconcile's peak
/// stood on the pages of the steps before it. The operator returns them at once: at 30,000 phones its
/// peak went from 445-462 MiB to 370-374 MiB, for about 0.05 s more in an edit's build
/// (docs/operations.md §10.5). The data plane's services keep mimalloc's default: their
/// allocations are small and steady, and a purge is a system call.
fn return_freed_memory_at_once() {
    // SAFETY: sets one of mimalloc's options, an integer it reads when it next purges; any value is
    // valid for it (0: at once).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// Callguard: the security plane for IP telephony on Kubernetes.
#[derive(Parser)]
#[command(name = "callguard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types (for the project's own
    /// development; the chart and `crds/` carry them).
    #[command(hide = true)]
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
    /// `file:line: Kind/name: field: message (seed section)`), 2 when input cannot be read or parsed
    /// or holds no Callguard object at all. Lists (`kind: List`, or any `*List` with `items`) are
    /// checked item by item, as kubectl applies them. Directories are searched for `.yaml`, `.yml`
    /// and `.json` files without following links to directories, as `kubectl apply -R` does; a
    /// document over 3 MiB or nested deeper than 64 levels, or a file over 64 MiB, is refused (exit 2).
    Validate {
        /// Files and directories of multi-document YAML.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Accept references to Secrets that are not among the manifests (sealed or external secrets).
        #[arg(long)]
        allow_missing_secrets: bool,
        /// Text lines, or one JSON document for tools.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Write the security state of a state directory (every namespace's CA, certificates and keys,
    /// published trust lists, token registry, identity record, and what CAPF issued) to one file,
    /// encrypted with the passphrase in --passphrase-file (age: scrypt and ChaCha20-Poly1305). The
    /// file is created new, readable by its owner only.
    Backup {
        /// The state directory of `callguard local` or `build`.
        #[arg(long, required_unless_present = "namespace", conflicts_with = "namespace")]
        state_dir: Option<PathBuf>,
        /// Or the namespace of a CallControlCluster in the Kubernetes cluster of KUBECONFIG: the
        /// state the operator keeps there.
        #[arg(long)]
        namespace: Option<String>,
        /// The backup file to create.
        #[arg(long)]
        out: PathBuf,
        /// A file holding the passphrase (at least 12 characters).
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// Bring a backup back into a state directory that holds none of its namespaces; `callguard
    /// local` or `build` then serves the same trust lists, byte for byte.
    Restore {
        /// The backup file.
        backup: PathBuf,
        /// The state directory to restore into.
        #[arg(long, required_unless_present = "namespace", conflicts_with = "namespace")]
        state_dir: Option<PathBuf>,
        /// Or the namespace of a CallControlCluster in the Kubernetes cluster of KUBECONFIG: its
        /// missing Secrets, trust ConfigMap, CAPF records and identity record are written back.
        #[arg(long)]
        namespace: Option<String>,
        /// With --namespace: replace what exists with other content, instead of refusing.
        #[arg(long, requires = "namespace")]
        overwrite: bool,
        /// A file holding the passphrase the backup was made with.
        #[arg(long)]
        passphrase_file: PathBuf,
    },
    /// What changing the manifests from OLD to NEW will require: the resets and restarts the guide
    /// asks for (P.1-10, P.1-16, P.3-5, P.6-7, P.12-4, P.13-7, P.14-7, P.16-5), the certificates the
    /// build issues and the trust lists it signs anew. OLD and NEW are directories, or git revisions
    /// of one as REV:PATH (`HEAD:examples/quickstart`). Markdown for a pull-request comment, or JSON.
    Plan {
        /// The manifests as they are: a directory, or REV:PATH.
        old: String,
        /// The manifests as they will be.
        new: String,
        /// Markdown, or one JSON document for tools.
        #[arg(short, long, value_enum, default_value = "markdown")]
        format: PlanFormat,
    },
    /// Print a shell completion script: `callguard completion bash > /etc/bash_completion.d/callguard`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Validate, then build every namespace's certificates, trust lists and phone configuration files.
    ///
    /// Keys, issued certificates, published trust lists and token status are kept in the state
    /// directory, so a rebuild changes nothing without a reason. The files phones fetch are written to
    /// `--out` (default: STATE_DIR/tftp/NAMESPACE).
    ///
    /// Exits 0 when every namespace's CallControlCluster is Ready; 1 when a manifest is invalid, a
    /// namespace cannot be built, or a cluster is NotReady: its trust lists are not what its spec
    /// asks (`CtlNotSigned`: the CTL could not be signed, a wrong token password say, and phones keep
    /// the last published one; `FewerThanTwoTokens`), though the files are written; 2 when input
    /// cannot be read or holds no Callguard object, or when another `build` or a `local` holds the
    /// state directory (its lock, STATE_DIR/lock, names the holder). A phone or token that is
    /// NotReady does not change the exit code: a phone awaiting its certificate from CAPF is NotReady
    /// by design, and a token that keeps the CTL from being signed makes its cluster NotReady.
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
        /// Text lines, or one JSON document for tools.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Build DIR and serve it over TFTP on loopback, and CAPF when the cluster runs it, rebuilding
    /// whenever DIR, a phone certificate in the state's devices/, or what CAPF did, changes.
    ///
    /// An invalid edit is reported with the `validate` messages and the last good build keeps being
    /// served. SIGINT and SIGTERM stop it cleanly; the state directory keeps the CA, certificates and
    /// trust lists for the next start. Exits 2 when another `local` or `build` holds the state
    /// directory.
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
        /// TFTP port. Without it: the cluster's spec.ports.tftpPort, else 69 (P.1-16); either falls back
        /// to 6969 when binding it needs root or CAP_NET_BIND_SERVICE, which we lack.
        #[arg(long)]
        tftp_port: Option<u16>,
        /// CAPF port, when the cluster runs CAPF. Without it: the cluster's spec.ports.capfPort, else
        /// 3804 (P.6-7).
        #[arg(long)]
        capf_port: Option<u16>,
        /// TVS port, when the cluster's first node runs CallManager. The cluster has no TVS port
        /// field: 2445 unless given (docs/wire-formats.md §8).
        #[arg(long)]
        tvs_port: Option<u16>,
        /// EST port (RFC 7030, HTTPS), served beside CAPF with its certificate. Without it: 8443, or a
        /// free port, named, when 8443 is taken.
        #[arg(long)]
        est_port: Option<u16>,
        /// SIP port (UDP and TCP), when the cluster's first node runs CallManager. Without it: the
        /// cluster's spec.ports.sipPort, else 5060 (P.3-5).
        #[arg(long)]
        sip_port: Option<u16>,
        /// SIP-TLS port. Without it: the cluster's spec.ports.sipSecurePort, else 5061 (P.3-5).
        #[arg(long)]
        sip_tls_port: Option<u16>,
        /// The namespace to serve when the manifests hold several.
        #[arg(long)]
        namespace: Option<String>,
        /// Replace the identity of this id, which `local` names when part of it is lost. Phones that
        /// hold its ITL refuse the new one until their ITL is deleted by hand (P.3-18).
        #[arg(long, value_name = "ID")]
        new_identity: Option<String>,
        /// What to log to stderr: a level, or directives as for RUST_LOG (which it overrides).
        /// `debug` logs each TFTP request: client, file, result and bytes.
        #[arg(long, env = "RUST_LOG", default_value = "warn", value_name = "FILTER")]
        log_level: String,
    },
    /// Enroll a device over EST (RFC 7030) with `callguard local`'s EST server: a first certificate
    /// by the device's one-time secret (its authentication string), a renewal by its current
    /// certificate (--reenroll), or the CA certificates (--cacerts).
    ///
    /// The server is trusted through --ca-file alone, which must come from the cluster out of band
    /// (the state's ca/ca.crt): nothing the server sends is trusted first.
    Enroll {
        /// The EST server, https://HOST:PORT.
        #[arg(long)]
        server: String,
        /// The cluster CA (PEM), obtained out of band: it authenticates the server.
        #[arg(long)]
        ca_file: PathBuf,
        /// The device name, SEP and its MAC (simpleenroll).
        #[arg(long, required_unless_present_any = ["reenroll", "cacerts"])]
        device: Option<String>,
        /// A file holding the device's one-time enrollment secret (simpleenroll).
        #[arg(long, required_unless_present_any = ["reenroll", "cacerts"])]
        secret_file: Option<PathBuf>,
        /// The device's private key (PEM); a new RSA 2048 key is written there (0600) when it does not exist.
        #[arg(long, required_unless_present = "cacerts")]
        key: Option<PathBuf>,
        /// Where the issued certificate (or, with --cacerts, the CA certificates) is written, PEM.
        #[arg(long)]
        out: PathBuf,
        /// Renew: authenticate with the current certificate (--cert) and its key, no secret (simplereenroll).
        #[arg(long, requires = "cert", conflicts_with_all = ["device", "secret_file", "cacerts"])]
        reenroll: bool,
        /// The device's current certificate (PEM), with --reenroll.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Fetch the CA certificates (cacerts) over TLS verified by --ca-file.
        #[arg(long, conflicts_with_all = ["device", "secret_file", "key"])]
        cacerts: bool,
    },
    /// The CAPF report (Chapter 6): every phone's certificate operation, its status and its LSC.
    Capf {
        #[command(subcommand)]
        command: Capf,
    },
    /// What the SIP service of `callguard local` holds.
    Sip {
        #[command(subcommand)]
        command: Sip,
    },
    /// Phones' certificates in the state directory.
    Device {
        #[command(subcommand)]
        command: Device,
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
        /// A pull Secret of the image for the data-plane pods (repeat for several); it must exist in
        /// each managed namespace.
        #[arg(long = "image-pull-secret", value_name = "SECRET")]
        image_pull_secrets: Vec<String>,
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
        command: callguard::core::trust::cli::TrustCommand,
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
enum Device {
    /// Check a phone's certificate (LSC or MIC, PEM or DER) and write it where the build reads it,
    /// STATE_DIR/namespaces/NAMESPACE/devices/SEP<MAC>.crt; `callguard local` serves the phone's
    /// encrypted configuration within seconds, `callguard build` on its next run.
    ///
    /// Checked: one certificate, not a CA's, with an RSA or EC key, naming the device: an LSC of the
    /// state's cluster CA must verify with it and have the device name as CN; any other certificate
    /// (a MIC) must carry the MAC in its CN or subjectAltName. Exits 0 when written, 1 when the
    /// certificate is refused, 2 on unusable arguments or state.
    AddCert {
        /// The state directory of `callguard build` or `local`.
        #[arg(long, default_value = ".callguard")]
        state_dir: PathBuf,
        /// Without it: the state's only namespace, or `default` when it has none yet.
        #[arg(long)]
        namespace: Option<String>,
        /// SEP and the phone's MAC.
        #[arg(long, value_name = "SEP<MAC>")]
        device: String,
        /// The certificate, PEM or DER.
        certificate: PathBuf,
    },
}

#[derive(Subcommand)]
enum Sip {
    /// The registrations `callguard local` holds (line, device, transport, source, expiry, contact),
    /// as it last wrote them to its state directory, at most a second old; expired ones are left out.
    /// With `--serving`, those of the `callguard serve sip` running in this pod instead (`kubectl
    /// exec -n NS CLUSTER-sip-N -- callguard sip registrations --serving`). Exits 2 when there is
    /// nothing to ask.
    Registrations {
        /// The state directory of `callguard local`.
        #[arg(long, default_value = ".callguard")]
        state_dir: PathBuf,
        /// The namespace. Without it: the state's only namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Ask the `callguard serve sip` of this pod (its network namespace), not a state directory.
        #[arg(long, conflicts_with_all = ["state_dir", "namespace"])]
        serving: bool,
    },
}

#[derive(Subcommand)]
enum Capf {
    /// Write the CAPF report as CSV (RFC 4180): a header row, then one row per phone, sorted by
    /// device name: device name, model, certificate operation, authentication mode, operation status,
    /// LSC state, serial, issuer and notAfter.
    ///
    /// From a state directory of `callguard build` or `local` (--state-dir), or from the Phone objects
    /// of a cluster (--kubeconfig, else KUBECONFIG or the pod's service account). Exits 0 when
    /// written, 2 when the state or the cluster cannot be read.
    Report {
        /// Read the state directory of `callguard build` or `local` instead of a cluster.
        #[arg(long, conflicts_with = "kubeconfig")]
        state_dir: Option<PathBuf>,
        /// The namespace. Without it: the state's only namespace, or the kubeconfig's.
        #[arg(long)]
        namespace: Option<String>,
        /// The kubeconfig file of the cluster to read (default: KUBECONFIG, or in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Write the CSV to this file instead of standard output.
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
    /// Enrol N phones at once against the CAPF server over TLS on loopback, next to `openssl speed rsa2048`.
    Capf {
        /// Number of phones, all enrolling at once.
        #[arg(long, default_value_t = 200)]
        phones: usize,
    },
    /// REGISTER with digest over UDP, the same sipp scenario against Callguard and against Kamailio.
    Sip {
        /// Number of registrations (enough for a few seconds a server: shorter runs are noisier).
        #[arg(long, default_value_t = 50_000)]
        registrations: usize,
        /// Distinct phones (users) the registrations cycle through.
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Registrations in progress at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
    /// RTP relayed without loss: the highest rate straight over loopback, through rtpengine and
    /// through Callguard's media relay, one generator for all three.
    Media {
        /// Streams (one direction of a call each) the rate is spread over.
        #[arg(long, default_value_t = 50)]
        streams: usize,
        /// Seconds each rate is held.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// Full mutual-TLS handshakes per second against Callguard's SIP-TLS listener and against
    /// `openssl s_server` with the same certificates, each server on one thread.
    SipTls {
        /// Handshakes with each server.
        #[arg(long, default_value_t = 5_000)]
        handshakes: usize,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
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
        /// Address the TFTP socket listens on.
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// TFTP port (69, P.1-16).
        #[arg(long, default_value_t = callguard::api::default_ports::TFTP)]
        port: u16,
        /// Where transfers send from: `listening` (single-port mode: every packet from --port, which
        /// a Service, load balancer or NAT carries) or `ephemeral` (a new port per transfer, RFC 1350).
        #[arg(long, value_enum, default_value = "listening")]
        transfer_port: callguard::services::tftp::TransferPort,
        /// Where `/metrics` (requests, bytes, errors by kind), `/healthz` and `/readyz` are served.
        #[arg(long)]
        metrics_bind: Option<std::net::SocketAddr>,
        #[command(flatten)]
        logging: LoggingArgs,
    },
    /// CAPF: issues, upgrades, deletes and fetches phones' LSCs (P.6-1), and EST beside it, from the
    /// Secrets the operator writes; what it issues goes into the record Secrets, read back by the
    /// operator (docs/wire-formats.md §7).
    Capf {
        /// The CallControlCluster served.
        #[arg(long)]
        cluster: String,
        /// Its namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// The cluster CA's Secret (ca.crt, ca.key), whose key issues LSCs (usually CLUSTER-ca).
        #[arg(long)]
        ca_secret: String,
        /// The TLS Secret of the CAPF certificate, which the listener presents.
        #[arg(long)]
        certificate_secret: String,
        /// The projection Secret: the phones CAPF may enroll (usually CLUSTER-capf).
        #[arg(long)]
        directory_secret: String,
        /// Address the listeners bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// CAPF port (3804, P.6-6).
        #[arg(long, default_value_t = callguard::api::default_ports::CAPF)]
        port: u16,
        /// EST (RFC 7030) port beside CAPF; none when unset.
        #[arg(long)]
        est_port: Option<u16>,
        /// Where `/healthz` and `/readyz` are served.
        #[arg(long)]
        metrics_bind: Option<std::net::SocketAddr>,
        #[command(flatten)]
        logging: LoggingArgs,
    },
    /// TVS: answers phones asking whether a certificate is trusted, and for which roles, from the
    /// projection Secret the operator writes (docs/wire-formats.md §8).
    Tvs {
        /// The CallControlCluster served.
        #[arg(long)]
        cluster: String,
        /// Its namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// The projection Secret: tls.crt, tls.key and directory.json (usually CLUSTER-tvs).
        #[arg(long)]
        secret: String,
        /// Address the TVS listener binds.
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// TVS port (2445, docs/wire-formats.md §8).
        #[arg(long, default_value_t = callguard::services::tvs::DEFAULT_PORT)]
        port: u16,
        /// Where `/healthz` and `/readyz` are served.
        #[arg(long)]
        metrics_bind: Option<std::net::SocketAddr>,
        #[command(flatten)]
        logging: LoggingArgs,
    },
    /// SIP: the registrar and proxy of one node that runs CallManager, enforcing the phone and trunk
    /// security profiles (Table 5-2, Table 14-1), from the projection Secret the operator writes.
    Sip {
        /// The CallControlCluster served.
        #[arg(long)]
        cluster: String,
        /// Its namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// The projection Secret: the SIP directory (usually CLUSTER-sip; it names its shards).
        #[arg(long)]
        directory_secret: String,
        /// The TLS Secret of a node's CallManager certificate, once per node that runs CallManager,
        /// in the cluster's order: the pod whose name ends in -N presents the N-th.
        #[arg(long = "certificate-secret", required = true)]
        certificate_secrets: Vec<String>,
        /// This pod's name (a StatefulSet's `NAME-N`); without it, the first certificate.
        #[arg(long, env = "POD_NAME")]
        pod_name: Option<String>,
        /// Address the listeners bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// SIP port, UDP and TCP; without it, the cluster's (5060, P.3-5).
        #[arg(long)]
        port: Option<u16>,
        /// SIP-TLS port; without it, the cluster's (5061, P.3-5).
        #[arg(long)]
        tls_port: Option<u16>,
        /// Where `/metrics` (registrations, challenges, refusals, calls by security, bindings),
        /// `/healthz` and `/readyz` are served.
        #[arg(long)]
        metrics_bind: Option<std::net::SocketAddr>,
        /// The media relays' control interface, HOST:PORT (the headless Service CLUSTER-media names
        /// every relay pod); without it, media flows end to end and the SDP passes untouched.
        #[arg(long, requires_all = ["media_client_secret", "media_relay_sha256"])]
        media_relay: Option<String>,
        /// The TLS Secret of this service's media control certificate (CLUSTER-media-client).
        #[arg(long, requires = "media_relay")]
        media_client_secret: Option<String>,
        /// SHA-256 (64 hex digits) of the relays' control certificate: the only one accepted.
        #[arg(long, requires = "media_relay", value_parser = callguard::services::media::control::parse_sha256)]
        media_relay_sha256: Option<[u8; 32]>,
        #[command(flatten)]
        logging: LoggingArgs,
    },
    /// Media: the relay calls' RTP and RTCP go through, SRTP passed as it came and RTP refused on
    /// encrypted calls (P.1-20), driven by the SIP pods over its control interface.
    Media {
        /// The CallControlCluster served.
        #[arg(long)]
        cluster: String,
        /// Its namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// The TLS Secret of the relay's control certificate (CLUSTER-media-relay).
        #[arg(long)]
        control_secret: String,
        /// SHA-256 (64 hex digits) of the SIP service's control certificate: the only client taken.
        #[arg(long, value_parser = callguard::services::media::control::parse_sha256)]
        client_sha256: [u8; 32],
        /// Address the media ports and the control port bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// The address the SDP names: the node's on the node's network, else the pod's
        /// (ADVERTISED_IP from the downward API in the pods).
        #[arg(long, env = "ADVERTISED_IP")]
        advertise: std::net::IpAddr,
        /// The control interface's port (spec.media.controlPort).
        #[arg(long, default_value_t = callguard::services::media::control::DEFAULT_CONTROL_PORT)]
        port: u16,
        /// First port of the RTP and RTCP pairs (spec.media.firstPort).
        #[arg(long, default_value_t = callguard::api::MediaSettings::DEFAULT_FIRST_PORT)]
        first_port: u16,
        /// Last port (spec.media.lastPort).
        #[arg(long, default_value_t = callguard::api::MediaSettings::DEFAULT_LAST_PORT)]
        last_port: u16,
        /// Seconds without a packet after which a call's media is released (spec.media.inactivitySeconds).
        #[arg(long, default_value_t = callguard::api::MediaSettings::DEFAULT_INACTIVITY_SECONDS)]
        inactivity_seconds: u32,
        /// FirstPacket or SdpOnly (spec.media.latching).
        #[arg(long, default_value = "FirstPacket", value_parser = parse_latching)]
        latching: callguard::api::MediaLatching,
        /// Where `/metrics` (packets, bytes, drops and calls by security class), `/healthz` and
        /// `/readyz` are served.
        #[arg(long)]
        metrics_bind: Option<std::net::SocketAddr>,
        #[command(flatten)]
        logging: LoggingArgs,
    },
}

fn parse_latching(text: &str) -> Result<callguard::api::MediaLatching, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| format!("{text:?}: FirstPacket or SdpOnly"))
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
        Command::Validate { paths, allow_missing_secrets, output } => {
            let policy = if allow_missing_secrets { SecretPolicy::AllowMissing } else { SecretPolicy::Require };
            run_validate(&paths, policy, output)
        }
        Command::Plan { old, new, format } => run_plan(&old, &new, format),
        Command::Backup { state_dir, namespace, out, passphrase_file } => {
            run_backup(&StateSource::of(state_dir, namespace), &out, &passphrase_file)
        }
        Command::Restore { backup, state_dir, namespace, overwrite, passphrase_file } => {
            run_restore(&backup, &StateSource::of(state_dir, namespace), overwrite, &passphrase_file)
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "callguard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Token { token } => run_token(token),
        Command::Trust { command } => callguard::core::trust::cli::run(command),
        Command::Build { paths, state_dir, out, new_identity, output } => {
            run_build(&paths, &state_dir, out.as_deref(), &BuildOptions { new_identity }, output)
        }
        Command::Local {
            paths,
            state_dir,
            bind,
            tftp_port,
            capf_port,
            tvs_port,
            est_port,
            sip_port,
            sip_tls_port,
            namespace,
            new_identity,
            log_level,
        } => {
            use callguard::ops::logging::{LogFormat, LoggingError, init_with};
            match init_with(tracing::level_filters::LevelFilter::WARN, Some(&log_level), LogFormat::Text) {
                Ok(()) => {}
                Err(LoggingError::InvalidFilter { directives, reason }) => {
                    eprintln!(
                        "callguard local: --log-level (or RUST_LOG) {directives:?} is not a valid log filter ({reason}); e.g. debug, or callguard::services::tftp=debug"
                    );
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("callguard local: {e}");
                    return ExitCode::from(2);
                }
            }
            let build = BuildOptions { new_identity };
            let options = callguard::adapters::local::LocalOptions {
                paths,
                state_dir,
                bind,
                tftp_port,
                capf_port,
                tvs_port,
                est_port,
                sip_port,
                sip_tls_port,
                namespace,
                build,
            };
            let result = tokio::runtime::Runtime::new()
                .map_err(|e| callguard::adapters::local::LocalError::Failed(e.to_string()))
                .and_then(|runtime| runtime.block_on(callguard::adapters::local::run(options)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Enroll { server, ca_file, device, secret_file, key, out, reenroll, cert, cacerts } => {
            use callguard::services::est::client::{Action, EnrollOptions, run};
            let action = match (cacerts, reenroll, device, secret_file, key, cert) {
                (true, ..) => Action::CaCerts,
                (false, true, _, _, Some(key), Some(certificate)) => Action::Reenroll { certificate, key },
                (false, false, Some(device), Some(secret_file), Some(key), _) => Action::Enroll { device, secret_file, key },
                _ => {
                    eprintln!("callguard enroll: --device, --secret-file and --key; or --reenroll, --cert and --key; or --cacerts");
                    return ExitCode::from(2);
                }
            };
            let options = EnrollOptions { server, ca_file, out, action };
            let result = tokio::runtime::Runtime::new().map_err(|e| e.to_string()).and_then(|runtime| runtime.block_on(run(&options)));
            match result {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("callguard enroll: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Sip { command: Sip::Registrations { state_dir, namespace, serving } } => {
            let rows = if serving {
                callguard::adapters::sip::ask_registrations()
            } else {
                callguard::adapters::sip::read_registrations(&state_dir, namespace.as_deref(), time::OffsetDateTime::now_utc())
            };
            match rows {
                Ok(rows) => {
                    print!("{}", callguard::adapters::sip::registrations_table(&rows));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("callguard sip registrations: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Capf { command: Capf::Report { state_dir, namespace, kubeconfig, out } } => {
            run_capf_report(state_dir.as_deref(), namespace.as_deref(), kubeconfig.as_deref(), out.as_deref())
        }
        Command::Device { command: Device::AddCert { state_dir, namespace, device, certificate } } => {
            run_add_cert(&state_dir, namespace.as_deref(), &device, &certificate)
        }
        Command::Operator {
            metrics_bind,
            leader_election,
            lease_namespace,
            image,
            identity,
            namespaces,
            api_server_ports,
            image_pull_secrets,
            logging,
        } => {
            return_freed_memory_at_once();
            let options = callguard::adapters::controller::OperatorOptions {
                metrics_bind,
                leader_election,
                lease_namespace,
                image,
                identity,
                namespaces,
                api_server_ports,
                image_pull_secrets,
            };
            with_client(&logging, |client, shutdown| callguard::adapters::controller::run(client, options, shutdown))
        }
        Command::Serve {
            service: Serve::Tftp { cluster, namespace, signer_secret, files_secret, bind, port, transfer_port, metrics_bind, logging },
        } => {
            let options = callguard::adapters::serve::tftp::ServeTftpOptions {
                namespace,
                cluster,
                signer_secret,
                files_secret,
                bind,
                port,
                transfer_port,
                metrics_bind,
            };
            with_client(&logging, |client, shutdown| callguard::adapters::serve::tftp::serve(client, options, shutdown))
        }
        Command::Serve {
            service:
                Serve::Capf { cluster, namespace, ca_secret, certificate_secret, directory_secret, bind, port, est_port, metrics_bind, logging },
        } => {
            let options = callguard::adapters::serve::capf::ServeCapfOptions {
                namespace,
                cluster,
                ca_secret,
                certificate_secret,
                directory_secret,
                bind,
                port,
                est_port,
                metrics_bind,
            };
            with_client(&logging, |client, shutdown| callguard::adapters::serve::capf::serve(client, options, shutdown))
        }
        Command::Serve { service: Serve::Tvs { cluster, namespace, secret, bind, port, metrics_bind, logging } } => {
            let options = callguard::adapters::serve::tvs::ServeTvsOptions { namespace, cluster, secret, bind, port, metrics_bind };
            with_client(&logging, |client, shutdown| callguard::adapters::serve::tvs::serve(client, options, shutdown))
        }
        Command::Serve {
            service:
                Serve::Sip {
                    cluster,
                    namespace,
                    directory_secret,
                    certificate_secrets,
                    pod_name,
                    bind,
                    port,
                    tls_port,
                    metrics_bind,
                    media_relay,
                    media_client_secret,
                    media_relay_sha256,
                    logging,
                },
        } => {
            let media = match (media_relay, media_client_secret, media_relay_sha256) {
                (Some(target), Some(secret), Some(relay_sha256)) => {
                    Some(callguard::adapters::serve::sip::MediaControlOptions { target, secret, relay_sha256 })
                }
                _ => None,
            };
            let options = callguard::adapters::serve::sip::ServeSipOptions {
                namespace,
                cluster,
                directory_secret,
                certificate_secrets,
                pod_name,
                bind,
                port,
                tls_port,
                metrics_bind,
                media,
            };
            with_client(&logging, |client, shutdown| callguard::adapters::serve::sip::serve(client, options, shutdown))
        }
        Command::Serve {
            service:
                Serve::Media {
                    cluster,
                    namespace,
                    control_secret,
                    client_sha256,
                    bind,
                    advertise,
                    port,
                    first_port,
                    last_port,
                    inactivity_seconds,
                    latching,
                    metrics_bind,
                    logging,
                },
        } => {
            let media = callguard::api::MediaSettings {
                first_port: Some(first_port),
                last_port: Some(last_port),
                inactivity_seconds: Some(inactivity_seconds),
                latching: Some(latching),
                ..callguard::api::MediaSettings::default()
            };
            let options = callguard::adapters::serve::media::ServeMediaOptions {
                namespace,
                cluster,
                control_secret,
                client_sha256,
                bind,
                advertised: advertise,
                control_port: port,
                media,
                metrics_bind,
            };
            with_client(&logging, |client, shutdown| callguard::adapters::serve::media::serve(client, options, shutdown))
        }
        Command::Bench { bench: Bench::Validate { phones } } => {
            callguard::bench::validate(phones);
            ExitCode::SUCCESS
        }
        Command::Bench { bench: Bench::Configs { phones } } => bench_result(callguard::bench::configs(phones)),
        Command::Bench { bench: Bench::Capf { phones } } => bench_result(callguard::bench::capf::run(phones)),
        Command::Bench { bench: Bench::Lsc { count } } => bench_result(callguard::bench::lsc(count)),
        Command::Bench { bench: Bench::Sip { registrations, users, concurrency } } => {
            bench_result(callguard::bench::sip::run(registrations, users, concurrency))
        }
        Command::Bench { bench: Bench::Media { streams, seconds } } => bench_result(callguard::bench::media::run(streams, seconds)),
        Command::Bench { bench: Bench::SipTls { handshakes, concurrency } } => {
            bench_result(callguard::bench::sip_tls::run(handshakes, concurrency))
        }
        Command::Bench { bench: Bench::Tftp { phones, concurrency, single_port } } => {
            bench_result(callguard::bench::tftp::run(phones, concurrency, single_port))
        }
    }
}

fn crdgen(dir: &std::path::Path, readme: Option<&std::path::Path>) -> ExitCode {
    match callguard::api::crdgen::write_all(dir) {
        Ok(files) => println!("wrote {} CRDs to {}", files.len(), dir.display()),
        Err(e) => {
            eprintln!("callguard crdgen: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let Some(readme) = readme else { return ExitCode::SUCCESS };
    let updated = std::fs::read_to_string(readme).map(|text| callguard::api::crdgen::with_reference(&text));
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

fn run_capf_report(
    state_dir: Option<&std::path::Path>,
    namespace: Option<&str>,
    kubeconfig: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
) -> ExitCode {
    use callguard::adapters::capf_report;
    let rows = match state_dir {
        Some(dir) => capf_report::from_state_dir(dir, namespace),
        None => tokio::runtime::Runtime::new().map_err(|e| e.to_string()).and_then(|runtime| {
            runtime.block_on(async {
                let (client, namespace) = capf_report::client(kubeconfig, namespace).await?;
                capf_report::from_cluster(client, &namespace).await
            })
        }),
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("callguard capf report: {e}");
            return ExitCode::from(2);
        }
    };
    let text = callguard::core::capf_report::csv(&rows);
    let written = match out {
        Some(path) => std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes()).map_err(|e| e.to_string())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callguard capf report: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_add_cert(state_dir: &std::path::Path, namespace: Option<&str>, device: &str, certificate: &std::path::Path) -> ExitCode {
    use callguard::core::build::devices::{AddError, Origin, add};
    let bytes = match std::fs::read(certificate) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("callguard device add-cert: {}: {e}", certificate.display());
            return ExitCode::from(1);
        }
    };
    match add(state_dir, namespace, device, &bytes, time::OffsetDateTime::now_utc()) {
        Ok(added) => {
            let what = match &added.checked.origin {
                Origin::Lsc => "LSC, issued by the cluster CA".to_owned(),
                Origin::Other { issuer } => format!("MIC (or another CA's LSC), issued by {issuer}"),
            };
            for warning in &added.checked.warnings {
                eprintln!("callguard device add-cert: warning: {}: {warning}", added.device);
            }
            println!(
                "{}: wrote its {what}, to {}; callguard local serves the files made for it within seconds, callguard build on its next run",
                added.device,
                added.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callguard device add-cert: {e}");
            ExitCode::from(match e {
                AddError::Refused(_) => 1,
                AddError::Unusable(_) => 2,
            })
        }
    }
}

fn run_build(
    paths: &[PathBuf],
    state_dir: &std::path::Path,
    out: Option<&std::path::Path>,
    options: &BuildOptions,
    output: Output,
) -> ExitCode {
    use callguard::core::build::{PathsError, build_paths};
    use serde_json::json;
    let json = output == Output::Json;
    // Says one thing: a line of text, or the JSON document for tools, then the exit code.
    let finish = |code: u8, document: serde_json::Value| {
        if json {
            println!("{}", serde_json::to_string_pretty(&document).unwrap_or_default());
        }
        ExitCode::from(code)
    };
    // One writer per state directory: a `local` or another `build` on it would interleave their writes.
    let _lock = match callguard::core::build::lock::StateLock::acquire(state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("callguard build: {e}");
            return finish(2, json!({"result": "locked", "error": e.to_string()}));
        }
    };
    let built = match build_paths(paths, state_dir, time::OffsetDateTime::now_utc(), options) {
        Ok(built) => built,
        Err(PathsError::Unreadable(errors)) => {
            for error in &errors {
                eprintln!("{error}");
            }
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return finish(2, json!({"result": "unreadable", "inputErrors": errors}));
        }
        Err(PathsError::Invalid(violations)) => {
            if !json {
                for violation in &violations {
                    println!("{violation}");
                }
            }
            eprintln!("callguard build: {} violation(s); nothing was built", violations.len());
            let violations: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return finish(1, json!({"result": "invalid", "violations": violations}));
        }
    };
    if built.is_empty() {
        eprintln!(
            "callguard build: nothing to build: no Callguard object (apiVersion {}) in {}",
            callguard::api::API_VERSION,
            joined(paths)
        );
        return finish(2, json!({"result": "nothing-to-build"}));
    }
    let mut failed = false;
    let mut namespaces = serde_json::Map::new();
    for (namespace, output) in built {
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                eprintln!("callguard build: namespace {namespace}: {e}");
                namespaces.insert(namespace, json!({"error": e.to_string()}));
                failed = true;
                continue;
            }
        };
        let dir = out.map(|o| o.join(&namespace)).unwrap_or_else(|| state_dir.join("tftp").join(&namespace));
        let files = output.served.render_all();
        if let Err(e) = write_tree(&dir, &files) {
            eprintln!("callguard build: {}: {e}", dir.display());
            namespaces.insert(namespace, json!({"error": format!("{}: {e}", dir.display())}));
            failed = true;
            continue;
        }
        if !json {
            for change in &output.changes {
                println!("{namespace}: {change}");
            }
            for status in &output.statuses {
                println!("{namespace}: {status}");
            }
            println!("{namespace}: wrote {} files to {}", files.len(), dir.display());
        }
        // The cluster's trust lists are what every phone of the namespace relies on: when they are
        // not what the spec asks, the build did not do its job, whatever else it wrote.
        for status in output.statuses.iter().filter(|s| s.kind == "CallControlCluster" && !s.ready) {
            eprintln!(
                "callguard build: namespace {namespace}: CallControlCluster/{} is NotReady ({}): its trust lists are not what its spec asks",
                status.name, status.reason
            );
            failed = true;
        }
        let changes: Vec<_> = output.changes.iter().map(|c| json!({"reason": c.kind.reason(), "message": c.message})).collect();
        namespaces.insert(
            namespace,
            json!({"changes": changes, "statuses": output.statuses, "files": files.len(), "directory": dir.display().to_string()}),
        );
    }
    let result = if failed { "not-ready" } else { "ready" };
    finish(u8::from(failed), json!({"result": result, "namespaces": namespaces}))
}

/// `validate -o json`: the verdict, the counts, each violation and each input error as fields; the
/// exit code is the text form's.
fn validate_json(paths: &[PathBuf], documents: &[manifest::Document], errors: &[manifest::LoadError], policy: SecretPolicy) -> ExitCode {
    use serde_json::json;
    let input_errors: Vec<_> = errors
        .iter()
        .map(|e| json!({"file": e.file.display().to_string(), "line": e.line, "column": e.column, "message": e.message}))
        .collect();
    let (verdict, code, report) = if !errors.is_empty() {
        ("unreadable", 2, None)
    } else {
        let report = validate::validate_documents(documents, policy);
        match (report.objects, report.violations.is_empty()) {
            (0, _) => ("nothing-to-validate", 2, Some(report)),
            (_, true) => ("valid", 0, Some(report)),
            (_, false) => ("invalid", 1, Some(report)),
        }
    };
    let violations: Vec<_> = report
        .iter()
        .flat_map(|r| &r.violations)
        .map(|v| json!({"file": v.file, "line": v.line, "object": v.object, "field": v.violation.field, "message": v.violation.message}))
        .collect();
    let document = json!({
        "result": verdict,
        "paths": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "objects": report.as_ref().map(|r| r.objects),
        "secrets": report.as_ref().map(|r| r.secrets),
        "namespaces": report.as_ref().map(|r| r.namespaces),
        "violations": violations,
        "inputErrors": input_errors,
    });
    println!("{}", serde_json::to_string_pretty(&document).unwrap_or_default());
    ExitCode::from(code)
}

/// The paths given, for a message.
fn joined(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Replaces the directory's files with `files`, so a file that is no longer built is no longer served.
/// Owner-only (0600 files in a 0700 directory): configuration files may carry digest credentials.
fn write_tree(dir: &std::path::Path, files: &std::collections::BTreeMap<String, std::sync::Arc<[u8]>>) -> std::io::Result<()> {
    callguard::core::private_file::create_dir(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() && !files.contains_key(&entry.file_name().to_string_lossy().to_string()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (name, bytes) in files {
        callguard::core::private_file::write(&dir.join(name), bytes)?;
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
        Some(path) => match callguard::core::private_file::write(&path, created.yaml.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("callguard token create: {}: {e}", path.display());
                ExitCode::from(2)
            }
        },
    }
}

/// Where `backup` reads a state and `restore` writes one.
enum StateSource {
    Directory(PathBuf),
    Namespace(String),
}

impl StateSource {
    fn of(state_dir: Option<PathBuf>, namespace: Option<String>) -> StateSource {
        match (state_dir, namespace) {
            (Some(dir), _) => StateSource::Directory(dir),
            (None, Some(namespace)) => StateSource::Namespace(namespace),
            // clap requires one of the two.
            (None, None) => StateSource::Directory(PathBuf::from(".callguard")),
        }
    }

    fn describe(&self) -> String {
        match self {
            StateSource::Directory(dir) => dir.display().to_string(),
            StateSource::Namespace(namespace) => format!("namespace {namespace}"),
        }
    }
}

/// Runs `job` with a client of the Kubernetes cluster of KUBECONFIG.
fn with_kube<T>(job: impl AsyncFnOnce(kube::Client) -> Result<T, String>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await.map_err(|e| format!("the Kubernetes cluster (KUBECONFIG): {e}"))?;
        job(client).await
    })
}

fn run_backup(source: &StateSource, out: &Path, passphrase_file: &Path) -> ExitCode {
    use callguard::adapters::backup::{read_namespace, read_passphrase, read_state_root};
    let state_dir = source.describe();
    let sealed = read_passphrase(passphrase_file).and_then(|passphrase| {
        let namespaces = match source {
            StateSource::Directory(dir) => read_state_root(dir)?,
            StateSource::Namespace(namespace) => {
                let files = with_kube(async |client| read_namespace(&client, namespace).await)?;
                std::collections::BTreeMap::from([(namespace.clone(), files)])
            }
        };
        let files: usize = namespaces.values().map(|f| f.len()).sum();
        let sealed = callguard::core::backup::seal(&namespaces, &passphrase).map_err(|e| e.to_string())?;
        Ok((sealed, namespaces.len(), files))
    });
    let written = sealed.and_then(|(sealed, namespaces, files)| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| format!("{}: {e} (a backup is never written over a file)", out.display()))?;
        file.write_all(&sealed).and_then(|()| file.sync_all()).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok((namespaces, files))
    });
    match written {
        Ok((namespaces, files)) => {
            println!("backed up {files} file(s) of {namespaces} namespace(s) from {state_dir} into {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callguard backup: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_restore(backup: &Path, target: &StateSource, overwrite: bool, passphrase_file: &Path) -> ExitCode {
    use callguard::adapters::backup::{read_passphrase, write_namespace, write_state_root};
    let restored = read_passphrase(passphrase_file).and_then(|passphrase| {
        let metadata = std::fs::metadata(backup).map_err(|e| format!("{}: {e}", backup.display()))?;
        if metadata.len() > callguard::core::backup::MAX_BACKUP as u64 {
            return Err(callguard::core::backup::BackupError::TooLarge(usize::try_from(metadata.len()).unwrap_or(usize::MAX)).to_string());
        }
        let bytes = std::fs::read(backup).map_err(|e| format!("{}: {e}", backup.display()))?;
        let namespaces = callguard::core::backup::open(&bytes, &passphrase).map_err(|e| format!("{}: {e}", backup.display()))?;
        match target {
            StateSource::Directory(dir) => {
                let files = write_state_root(dir, &namespaces)?;
                Ok(vec![format!("restored {files} file(s) of {} namespace(s) into {}", namespaces.len(), dir.display())])
            }
            StateSource::Namespace(namespace) => {
                // The backup's namespace of that name, or its only one (a state moved from
                // `callguard local`, whose namespace may be named otherwise).
                let files = match namespaces.get(namespace) {
                    Some(files) => files,
                    None if namespaces.len() == 1 => namespaces.values().next().expect("one namespace"),
                    None => {
                        let held: Vec<&String> = namespaces.keys().collect();
                        return Err(format!("the backup holds namespaces {held:?}, not {namespace}"));
                    }
                };
                let mut done = with_kube(async |client| write_namespace(&client, namespace, files, overwrite).await)?;
                done.push(format!("restored namespace {namespace}: the operator reconciles it now"));
                Ok(done)
            }
        }
    });
    match restored {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callguard restore: {e}");
            ExitCode::from(2)
        }
    }
}

/// How `callguard plan` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PlanFormat {
    Markdown,
    Json,
}

/// The manifests of `spec`: a directory, or `REV:PATH` of the git repository here, extracted into
/// `scratch` with `git archive`.
fn plan_source(spec: &str, scratch: &std::path::Path) -> Result<PathBuf, String> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    let Some((revision, inside)) = spec.split_once(':') else {
        return Err(format!("{spec}: no such directory, and not REV:PATH"));
    };
    let archive = std::process::Command::new("git")
        .args(["archive", "--format=tar", revision, "--", inside])
        .output()
        .map_err(|e| format!("{spec}: git: {e}"))?;
    if !archive.status.success() {
        return Err(format!("{spec}: git archive: {}", String::from_utf8_lossy(&archive.stderr).trim()));
    }
    let mut tar = std::process::Command::new("tar")
        .args(["-x", "-C"])
        .arg(scratch)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{spec}: tar: {e}"))?;
    use std::io::Write;
    tar.stdin.take().ok_or("tar: no stdin")?.write_all(&archive.stdout).map_err(|e| format!("{spec}: tar: {e}"))?;
    if !tar.wait().map_err(|e| e.to_string())?.success() {
        return Err(format!("{spec}: tar could not unpack the revision"));
    }
    Ok(scratch.join(inside))
}

fn run_plan(old: &str, new: &str, format: PlanFormat) -> ExitCode {
    let scratch = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("callguard plan: {e}");
            return ExitCode::from(2);
        }
    };
    let read = |spec: &str, which: &str| -> Result<_, String> {
        let dir = scratch.path().join(which);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = plan_source(spec, &dir)?;
        callguard::core::build::validate_paths(&[path]).map_err(|e| match e {
            callguard::core::build::PathsError::Unreadable(errors) => errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
            callguard::core::build::PathsError::Invalid(violations) => {
                let lines: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
                format!("{spec} is not valid (callguard validate says why):\n{}", lines.join("\n"))
            }
        })
    };
    let plans = read(old, "old")
        .and_then(|before| Ok((before, read(new, "new")?)))
        .and_then(|(before, after)| callguard::core::plan::plan_namespaces(before, after, time::OffsetDateTime::now_utc()));
    match plans {
        Ok(plans) => {
            match format {
                PlanFormat::Markdown => print!("{}", callguard::core::plan::markdown(&plans, old, new)),
                PlanFormat::Json => println!("{}", serde_json::to_string_pretty(&plans).unwrap_or_default()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callguard plan: {e}");
            ExitCode::from(2)
        }
    }
}

/// How a command reports: lines for people, or one JSON document for tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn run_validate(paths: &[PathBuf], policy: SecretPolicy, output: Output) -> ExitCode {
    let (documents, errors) = manifest::load_paths(paths);
    if output == Output::Json {
        return validate_json(paths, &documents, &errors, policy);
    }
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
    // Nothing to check is no success: a pipeline pointed at the wrong directory must not pass.
    if report.objects == 0 {
        eprintln!(
            "callguard validate: nothing to validate: no Callguard object (apiVersion {}) among the {} object(s) in {}",
            callguard::api::API_VERSION,
            documents.len(),
            joined(paths)
        );
        return ExitCode::from(2);
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Cli, MI_OPTION_PURGE_DELAY};

    /// The option the operator sets is mimalloc's purge delay: the linked mimalloc (v3) starts it
    /// at 1000 ms. A mimalloc whose numbering or default moved fails here, not in production.
    #[test]
    fn the_operator_sets_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            panic!("MIMALLOC_PURGE_DELAY is set in the test's environment: unset it to check the option");
        }
        // SAFETY: reads one of mimalloc's options.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
    }

    /// Every argument of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for argument in command.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
                if argument.get_help().is_none() && argument.get_long_help().is_none() {
                    missing.push(format!("{path} {}", argument.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "callguard", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
        Cli::command().debug_assert();
    }
}
