//! `callguard bench ...`: benchmarks that print what they measured. Nothing here asserts a time:
//! machines are shared and noisy, so figures are read, not tested.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use crate::validate::manifest;

pub mod capf;
pub mod media;
pub mod sip;
pub mod sip_tls;
pub mod tftp;
use crate::validate::{self, SecretPolicy};

/// The quickstart's Secrets, whose token Secrets hold example (published) token material.
const QUICKSTART_SECRETS: &str = include_str!("../../examples/quickstart/secrets.yaml");

/// A namespace the size of a CallManager cluster: one mixed-mode cluster, two tokens, a SIP and an
/// SCCP profile in each device security mode, `phones` phones across models, and for every SIP
/// phone an end user with digest credentials in a Secret.
pub fn namespace_yaml(phones: usize) -> String {
    namespace_yaml_with(phones, false)
}

/// As [`namespace_yaml`]; with `encrypt`, the cluster and the Encrypted profiles turn on TFTP
/// encrypted configuration, so a third of the phones get encrypted files (P.7-2).
pub fn namespace_yaml_with(phones: usize, encrypt: bool) -> String {
    let mut y = String::with_capacity(phones * 700);
    y.push_str(
        "apiVersion: callguard.io/v1alpha1\nkind: CallControlCluster\nmetadata: {name: bench}\nspec:\n  securityMode: Mixed\n  nodes:\n  - {name: cm1, hostname: cm1.example.com, firstNode: true}\n  - {name: cm2, hostname: cm2.example.com}\n  ctl: {tokens: [token-primary, token-backup], signingToken: token-primary}\n",
    );
    if encrypt {
        y.push_str("  tftpEncryptedConfiguration: true\n");
    }
    for token in ["token-primary", "token-backup"] {
        let _ = write!(
            y,
            "---\napiVersion: callguard.io/v1alpha1\nkind: SecurityToken\nmetadata: {{name: {token}}}\nspec:\n  certificate: {{name: {token}, key: certificate.pem}}\n  privateKey: {{name: {token}, key: key.p8}}\n  password: {{name: {token}-password, key: password}}\n"
        );
    }
    // validate checks that a token's Secret holds a real certificate and encrypted key: reuse the
    // quickstart's published example tokens rather than generate keys for a benchmark.
    for document in QUICKSTART_SECRETS.split("\n---\n").filter(|d| d.contains("name: token-")) {
        y.push_str("---\n");
        y.push_str(document.trim_end());
        y.push('\n');
    }
    for mode in ["NonSecure", "Authenticated", "Encrypted"] {
        let transport = if mode == "NonSecure" { "TCP" } else { "TLS" };
        let lower = mode.to_lowercase();
        let encrypted = encrypt && mode == "Encrypted";
        // The files the benchmarks sign carry every phone's credentials, as CallManager's would: the
        // profiles whose files are not encrypted opt in to that explicitly.
        let in_clear = !encrypted;
        let _ = write!(
            y,
            "---\napiVersion: callguard.io/v1alpha1\nkind: PhoneSecurityProfile\nmetadata: {{name: sccp-{lower}}}\nspec: {{protocol: SCCP, deviceSecurityMode: {mode}, tftpEncryptedConfig: {encrypted}}}\n---\napiVersion: callguard.io/v1alpha1\nkind: PhoneSecurityProfile\nmetadata: {{name: sip-{lower}}}\nspec:\n  protocol: SIP\n  deviceSecurityMode: {mode}\n  tftpEncryptedConfig: {encrypted}\n  sip: {{transportType: {transport}, enableDigestAuthentication: true, allowDigestCredentialsInClear: {in_clear}}}\n"
        );
    }
    const MODELS: [&str; 5] = ["7911", "7941", "7961", "7970", "7971"];
    const MODES: [&str; 3] = ["nonsecure", "authenticated", "encrypted"];
    for i in 0..phones {
        let sip = i % 2 == 0;
        let protocol = if sip { "SIP" } else { "SCCP" };
        let profile = format!("{}-{}", if sip { "sip" } else { "sccp" }, MODES[i % 3]);
        let _ = write!(
            y,
            "---\napiVersion: callguard.io/v1alpha1\nkind: Phone\nmetadata: {{name: sep{i:012x}}}\nspec:\n  macAddress: \"{i:012X}\"\n  model: \"{}\"\n  protocol: {protocol}\n  securityProfileRef: {profile}\n  directoryNumbers: [\"{}\"]\n  hardening: {{webAccess: Disabled, gratuitousArp: Disabled}}\n",
            MODELS[i % MODELS.len()],
            10000 + i
        );
        if sip {
            let _ = write!(
                y,
                "  digestUserRef: user-{i}\n---\napiVersion: callguard.io/v1alpha1\nkind: EndUser\nmetadata: {{name: user-{i}}}\nspec:\n  digestCredentials: {{name: digest-{i}, key: password}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: digest-{i}, labels: {{callguard.io/watch: \"true\"}}}}\nstringData: {{password: Secret{i}}}\n"
            );
        }
    }
    y
}

/// Generates `phones` phones and measures parse, schema and CEL, and cross-object checking.
pub fn validate(phones: usize) {
    let started = Instant::now();
    let yaml = namespace_yaml(phones);
    let generated = started.elapsed();

    let t = Instant::now();
    let documents = match manifest::parse_documents(Path::new("bench.yaml"), yaml.as_bytes()) {
        Ok(documents) => documents,
        Err(e) => {
            println!("bench validate: the generated namespace does not parse: {e}");
            return;
        }
    };
    let parsed = t.elapsed();

    let t = Instant::now();
    let report = validate::validate_documents(&documents, SecretPolicy::Require);
    let validated = t.elapsed();

    let total = parsed + validated;
    let objects = report.objects + report.secrets;
    println!(
        "bench validate: {phones} phones, {} Callguard objects + {} Secrets, {:.1} MiB of YAML (generated in {generated:.2?})",
        report.objects,
        report.secrets,
        yaml.len() as f64 / 1048576.0
    );
    println!("  parse YAML:                    {parsed:>10.2?}");
    println!("  schema, CEL and cross-object:  {validated:>10.2?}");
    println!(
        "  total:                         {total:>10.2?}  = {:.0} objects/s  (target: whole set under 3 s)",
        objects as f64 / total.as_secs_f64()
    );
    println!("  violations found:              {:>10}", report.violations.len());
    for v in report.violations.iter().take(5) {
        println!("    {v}");
    }
}

/// `openssl speed` for RSA of `bits` bits on `processes` cores (`-multi`): (sign/s, verify/s) summed.
pub fn openssl_rsa_speed(bits: usize, seconds: u32, processes: usize) -> Result<(f64, f64), String> {
    let output = std::process::Command::new("openssl")
        .args(["speed", "-mr", "-multi", &processes.to_string(), "-seconds", &seconds.to_string(), &format!("rsa{bits}")])
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // Machine-readable result line: +F2:<index>:<bits>:<sign/s>:<verify/s>
    text.lines()
        .filter_map(|line| line.strip_prefix("+F2:"))
        .find_map(|rest| {
            let fields: Vec<&str> = rest.split(':').collect();
            (fields.get(1) == Some(&bits.to_string().as_str()))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))?
        })
        .ok_or_else(|| format!("openssl speed printed no rsa{bits} result: {}", text.trim()))
}

/// A generated namespace, validated, with a fresh state directory in a temporary directory that is
/// removed when this is dropped.
pub struct BenchNamespace {
    pub snapshot: std::sync::Arc<crate::validate::Snapshot>,
    pub state: crate::core::build::state::StateDir,
    _dir: tempfile::TempDir,
}

impl BenchNamespace {
    /// Parses and validates `yaml` (one namespace, `default`) and opens an empty state directory for it.
    pub fn generate(yaml: &str) -> Result<Self, String> {
        let documents = manifest::parse_documents(Path::new("bench.yaml"), yaml.as_bytes()).map_err(|e| e.to_string())?;
        let mut report = validate::validate_documents(&documents, SecretPolicy::Require);
        if let Some(v) = report.violations.first() {
            return Err(format!("the generated namespace is invalid: {v}"));
        }
        let snapshot = report.snapshots.remove("default").ok_or("the generated namespace is empty")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let state = crate::core::build::state::StateDir::open(dir.path()).map_err(|e| e.to_string())?;
        Ok(Self { snapshot: std::sync::Arc::new(snapshot), state, _dir: dir })
    }
}

/// Renders and signs the configuration files of `phones` phones (a third encrypted for their LSC),
/// with the CTL and ITL, and prints files per second next to `openssl speed rsa2048`.
pub fn configs(phones: usize) -> Result<(), String> {
    use crate::core::build::{build_namespace, state::Sensitivity};
    let namespace = BenchNamespace::generate(&namespace_yaml_with(phones, true))?;
    let (snapshot, state) = (&namespace.snapshot, &namespace.state);
    let now = time::OffsetDateTime::now_utc();

    // The encrypted phones need certificates. Key generation is a phone's work, not ours, so a pool
    // of 16 LSCs (issued by the cluster CA from 16 phone keys) is spread over them.
    let warm = build_namespace(snapshot.clone(), state, now, &Default::default()).map_err(|e| e.to_string())?;
    let lscs = lsc_pool(state, 16, now)?;
    let mut encrypted = 0;
    for (i, phone) in snapshot.phones.values().enumerate() {
        let profile = snapshot.phone_profiles.get(&phone.spec.security_profile_ref);
        if profile.is_some_and(|p| p.spec.tftp_encrypted_config()) {
            let path = format!("devices/{}.crt", phone.spec.device_name());
            state.write(&path, &lscs[i % lscs.len()], Sensitivity::Public).map_err(|e| e.to_string())?;
            encrypted += 1;
        }
    }
    drop(warm);

    // From the snapshot to every file signed: the build resolves, then every phone is rendered.
    let started = Instant::now();
    let output = build_namespace(snapshot.clone(), state, now, &Default::default()).map_err(|e| e.to_string())?;
    let resolved = started.elapsed();
    let files = output.served.render_all();
    let elapsed = started.elapsed();
    let encrypted_files = files.keys().filter(|name| name.ends_with(".enc.sgn")).count();
    let signed_files = files.keys().filter(|name| name.ends_with(".sgn")).count();
    let not_ready: Vec<_> = output.statuses.iter().filter(|s| !s.ready).collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (sign, _) = openssl_rsa_speed(2048, 3, cores)?;
    let files_per_second = files.len() as f64 / elapsed.as_secs_f64();
    let signatures_per_second = signed_files as f64 / elapsed.as_secs_f64();
    println!("bench configs: {phones} phones, {encrypted} with encrypted configuration, {cores} core(s)");
    println!(
        "  files built:            {:>8}  ({signed_files} signed .sgn/.enc.sgn, {encrypted_files} .enc.sgn, plus plain and trust lists)",
        files.len()
    );
    println!("  build time:             {elapsed:>8.2?}");
    println!("    of which resolving:   {resolved:>8.2?}  (trust lists, statuses; what `local` redoes on an edit)");
    println!("  files per second:       {files_per_second:>8.0}");
    println!("  RSA-2048 signatures/s:  {signatures_per_second:>8.0}  (one per .sgn and .enc.sgn)");
    println!("  openssl speed rsa2048:  {sign:>8.0} sign/s on {cores} core(s) (-multi {cores})");
    println!("  ratio:                  {:>8.2}  (our signatures/s over openssl's sign/s on the same cores)", signatures_per_second / sign);
    if !not_ready.is_empty() {
        println!(
            "  not ready: {} resource(s), e.g. {}/{}: {}",
            not_ready.len(),
            not_ready[0].kind,
            not_ready[0].name,
            not_ready[0].message
        );
    }
    Ok(())
}

/// `count` LSCs, DER, from as many fresh RSA-2048 phone keys, issued by the state's cluster CA.
fn lsc_pool(state: &crate::core::build::state::StateDir, count: usize, now: time::OffsetDateTime) -> Result<Vec<Vec<u8>>, String> {
    let ca = cluster_ca(state)?;
    (0..count)
        .map(|i| {
            let spki = phone_spki(&crate::core::pki::keys::generate_rsa(2048));
            issue_one_lsc(&ca, &format!("SEP{i:012X}"), &spki, now)
        })
        .collect()
}

fn cluster_ca(state: &crate::core::build::state::StateDir) -> Result<crate::core::pki::ca::ClusterCa, String> {
    crate::core::build::identity::load_ca(state).map_err(|e| e.to_string())?.ok_or_else(|| "the build created no cluster CA".to_string())
}

fn phone_spki(key: &rsa::RsaPrivateKey) -> Vec<u8> {
    use rsa::pkcs8::EncodePublicKey;
    rsa::RsaPublicKey::from(key).to_public_key_der().expect("an RSA public key always encodes").as_bytes().to_vec()
}

fn issue_one_lsc(ca: &crate::core::pki::ca::ClusterCa, device: &str, spki: &[u8], now: time::OffsetDateTime) -> Result<Vec<u8>, String> {
    use crate::core::pki::issue::{LscKeySource, LscRequest, issue_lsc};
    let serial = crate::core::pki::serial::Serial::random(&mut rand::thread_rng());
    let request = LscRequest { device_name: device, key: LscKeySource::PublicKey(spki), validity_days: 365, serial, now };
    issue_lsc(ca, &request).map(|issued| issued.certificate_der).map_err(|e| e.to_string())
}

/// Issues `count` LSCs from RSA-2048 phone keys with an RSA-2048 cluster CA on one core, and prints
/// certificates per second next to `openssl speed rsa2048` (the CA's signing rate bounds issuance).
pub fn lsc(count: usize) -> Result<(), String> {
    let now = time::OffsetDateTime::now_utc();
    let ca = crate::core::pki::ca::ClusterCa::generate(&crate::core::pki::ca::CaSettings::new("bench", "default"), now)
        .map_err(|e| e.to_string())?;
    let keys: Vec<Vec<u8>> = (0..8).map(|_| phone_spki(&crate::core::pki::keys::generate_rsa(2048))).collect();
    let started = Instant::now();
    let mut bytes = 0;
    for i in 0..count {
        bytes += issue_one_lsc(&ca, &format!("SEP{i:012X}"), &keys[i % keys.len()], now)?.len();
    }
    let elapsed = started.elapsed();
    let (sign, _) = openssl_rsa_speed(2048, 3, 1)?;
    let per_second = count as f64 / elapsed.as_secs_f64();
    println!("bench lsc: {count} LSCs (RSA-2048 phone keys, RSA-2048 CA, SHA-256), one core");
    println!("  issue time:             {elapsed:>8.2?}  ({} bytes of DER on average)", bytes / count.max(1));
    println!("  certificates per second:{per_second:>8.0}");
    println!("  openssl speed rsa2048:  {sign:>8.0} sign/s");
    println!(
        "  ratio:                  {:>8.2}  (certificates/s over openssl sign/s; 1.0 = issuance costs no more than its signature)",
        per_second / sign
    );
    Ok(())
}

/// The CPU time of a tokio runtime's threads, readable while it runs: a server given a runtime of
/// its own is measured apart from the clients that share its cores.
#[derive(Clone, Default)]
pub struct RuntimeCpu(std::sync::Arc<std::sync::Mutex<ThreadClocks>>);

#[derive(Default)]
struct ThreadClocks {
    /// What the threads that have stopped used.
    stopped: std::time::Duration,
    /// The CPU clock of each thread still running.
    running: std::collections::HashMap<std::thread::ThreadId, libc::clockid_t>,
}

impl RuntimeCpu {
    /// CPU time used so far by the runtime's threads, stopped and running.
    pub fn spent(&self) -> std::time::Duration {
        let clocks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        clocks.stopped + clocks.running.values().map(|&clock| clock_time(clock)).sum::<std::time::Duration>()
    }

    fn thread_started(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self is the calling thread; pthread_getcpuclockid only writes `clock`.
        if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).running.insert(std::thread::current().id(), clock);
        }
    }

    /// On the stopping thread, while its clock is still valid.
    fn thread_stopped(&self) {
        let mut clocks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        clocks.running.remove(&std::thread::current().id());
        clocks.stopped += clock_time(libc::CLOCK_THREAD_CPUTIME_ID);
    }
}

/// A multi-thread tokio runtime of `workers` workers whose threads' CPU time the [`RuntimeCpu`] adds up.
pub fn cpu_accounted_runtime(name: &str, workers: usize) -> Result<(tokio::runtime::Runtime, RuntimeCpu), String> {
    let cpu = RuntimeCpu::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .on_thread_start({
            let cpu = cpu.clone();
            move || cpu.thread_started()
        })
        .on_thread_stop({
            let cpu = cpu.clone();
            move || cpu.thread_stopped()
        })
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok((runtime, cpu))
}

/// The time of a CPU clock (a thread's, or the calling thread's with `CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn clock_time(clock: libc::clockid_t) -> std::time::Duration {
    let mut spent = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(clock, &mut spent) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(u64::try_from(spent.tv_sec).unwrap_or(0), u32::try_from(spent.tv_nsec).unwrap_or(0))
}

/// User and system CPU time of process `pid` so far, from /proc/<pid>/stat (fields 14 and 15 of
/// proc(5), in clock ticks).
pub fn process_cpu(pid: u32) -> Result<std::time::Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("the CPU time of process {pid}: {e}"))?;
    // The fields after the command name, which is in parentheses and may hold spaces; the first is field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).ok_or_else(|| format!("/proc/{pid}/stat: {stat}"));
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(std::time::Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// [`process_cpu`] of `pid` and of every process whose parent it is (a server that forks workers).
pub fn process_tree_cpu(pid: u32) -> Result<std::time::Duration, String> {
    let mut total = process_cpu(pid)?;
    for entry in std::fs::read_dir("/proc").map_err(|e| e.to_string())?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // Field 4, the parent, is the second after the command name.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            total += process_cpu(child).unwrap_or_default();
        }
    }
    Ok(total)
}

/// User and system CPU time of this process's children that have been waited for.
pub fn waited_children_cpu() -> std::time::Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let time = |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}
