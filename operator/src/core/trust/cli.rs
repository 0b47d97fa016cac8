//! `callguard trust inspect|verify|decrypt`: the trust files as an operator meets them on disk.
//!
//! Exit codes: 0 success; 1 the file fails (does not parse, verify or decrypt); 2 unusable arguments or inputs
//! other than the file under test (unreadable files, bad --ctl/--cert/--key).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::codes::FileKind;
use super::encrypted::EncryptedFile;
use super::error::TrustError;
use super::header::parse_header;
use super::inspect::describe;
use super::signed::{SignatureCheck, SignedFile};
use super::tlv::Mode;
use super::trust_list::TrustList;
use crate::core::pki::keys;

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Describe a .tlv, .sgn or .enc.sgn file: every header field and record.
    ///
    /// Exits 0, or 2 when the file cannot be read or parsed.
    Inspect {
        /// The file to describe.
        file: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a file's signature.
    ///
    /// .tlv: against a SAST of the previous CTL/ITL given with --ctl, else against its own SAST record.
    /// .sgn/.enc.sgn: against a TFTP or CCM+TFTP record of --ctl, or the --cert certificate.
    /// Exits 0 when the signature verifies, 1 with the reason when it does not, 2 on unusable inputs.
    Verify {
        /// The signed file to check.
        file: PathBuf,
        /// Trust list (.tlv) holding the trusted signer.
        #[arg(long, conflicts_with = "cert")]
        ctl: Option<PathBuf>,
        /// Signer certificate (PEM or DER).
        #[arg(long)]
        cert: Option<PathBuf>,
    },
    /// Decrypt a .enc.sgn with the phone's private key; the plaintext goes to stdout or --out.
    ///
    /// With --ctl or --cert the signature is verified first and nothing is decrypted when it fails.
    /// Exits 0, 1 when the file fails, 2 on unusable inputs.
    Decrypt {
        /// The `.enc.sgn` file.
        file: PathBuf,
        /// The phone's RSA private key (PKCS#8 or PKCS#1 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Trust list (.tlv) whose TFTP record must have signed the file.
        #[arg(long, conflicts_with = "cert")]
        ctl: Option<PathBuf>,
        /// Signer certificate (PEM or DER) that must have signed the file.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Write the plaintext here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs one `trust` subcommand.
pub fn run(command: TrustCommand) -> ExitCode {
    let result = match command {
        TrustCommand::Inspect { file, json } => inspect(&file, json),
        TrustCommand::Verify { file, ctl, cert } => verify(&file, ctl.as_deref(), cert.as_deref()),
        TrustCommand::Decrypt { file, key, ctl, cert, out } => decrypt(&file, &key, ctl.as_deref(), cert.as_deref(), out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::File(message)) => {
            eprintln!("callguard trust: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Input(message)) => {
            eprintln!("callguard trust: {message}");
            ExitCode::from(2)
        }
    }
}

/// The file under test fails (exit 1), or an input is unusable (exit 2).
enum Failure {
    File(String),
    Input(String),
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))
}

/// A file that does not start as every signed file does (its VERSION element) is said to be what
/// it is, rather than reported as a truncated signed file.
fn signed_file(path: &Path) -> Result<Vec<u8>, Failure> {
    let bytes = read(path)?;
    match bytes.first() {
        Some(&crate::core::trust::codes::header_tag::VERSION) => Ok(bytes),
        Some(b'<') => Err(Failure::Input(format!(
            "{}: not a signed file: it is plain XML, an unsigned configuration file (`trust` reads .tlv, .sgn and .enc.sgn files)",
            path.display()
        ))),
        Some(first) => Err(Failure::Input(format!(
            "{}: not a signed file: a .tlv, .sgn or .enc.sgn starts with its VERSION element (0x01), this one with 0x{first:02x}",
            path.display()
        ))),
        None => Err(Failure::Input(format!("{}: the file is empty", path.display()))),
    }
}

fn file_failure(path: &Path, error: TrustError) -> Failure {
    Failure::File(format!("{}: {error}", path.display()))
}

fn inspect(path: &Path, json: bool) -> Result<(), Failure> {
    let bytes = signed_file(path)?;
    let description = describe(&bytes).map_err(|e| Failure::Input(format!("{}: cannot parse: {e}", path.display())))?;
    if json {
        let text = serde_json::to_string_pretty(&description).map_err(|e| Failure::Input(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{description}");
    }
    Ok(())
}

/// A certificate from a PEM file (first CERTIFICATE block) or raw DER.
fn read_certificate(path: &Path) -> Result<Vec<u8>, Failure> {
    crate::core::pki::inspect::certificate_der(&read(path)?).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))
}

fn read_trust_list(path: &Path) -> Result<TrustList, Failure> {
    let bytes = read(path)?;
    TrustList::parse(&bytes, Mode::Strict).map_err(|e| Failure::Input(format!("{}: not a usable trust list: {e}", path.display())))
}

/// The trusted signer given on the command line, owned.
enum Trusted {
    List(Box<TrustList>),
    Certificate(Vec<u8>),
}

impl Trusted {
    fn load(ctl: Option<&Path>, cert: Option<&Path>) -> Result<Option<Trusted>, Failure> {
        match (ctl, cert) {
            (Some(ctl), _) => Ok(Some(Trusted::List(Box::new(read_trust_list(ctl)?)))),
            (None, Some(cert)) => Ok(Some(Trusted::Certificate(read_certificate(cert)?))),
            (None, None) => Ok(None),
        }
    }

    fn check(&self) -> SignatureCheck<'_> {
        match self {
            Trusted::List(list) => SignatureCheck::TrustList(list),
            Trusted::Certificate(der) => SignatureCheck::Certificate(der),
        }
    }
}

fn verify(path: &Path, ctl: Option<&Path>, cert: Option<&Path>) -> Result<(), Failure> {
    let bytes = signed_file(path)?;
    let trusted = Trusted::load(ctl, cert)?;
    let header = parse_header(&bytes, Mode::Strict).map_err(|e| file_failure(path, e))?;
    let signer = match header.kind {
        FileKind::TrustList => {
            let list = TrustList::parse(&bytes, Mode::Strict).map_err(|e| file_failure(path, e))?;
            match &trusted {
                Some(Trusted::List(previous)) => list.verify_against(previous).map(|r| format!("SAST {}", r.subject)),
                Some(Trusted::Certificate(der)) => header.verify_with_certificate(&bytes, der).map(|()| "the given certificate".into()),
                None => list.verify().map(|r| format!("its own SAST {}", r.subject)),
            }
        }
        FileKind::Signed | FileKind::Encrypted => {
            let Some(trusted) = &trusted else {
                return Err(Failure::Input(format!("{}: a {} file needs --ctl or --cert", path.display(), header.kind.name())));
            };
            if header.kind == FileKind::Signed {
                SignedFile::parse(&bytes, Mode::Strict).and_then(|f| f.verify(trusted.check()))
            } else {
                EncryptedFile::parse(&bytes, Mode::Strict).and_then(|f| f.verify(trusted.check()))
            }
            .map(|()| "the trusted TFTP signer".into())
        }
    }
    .map_err(|e| file_failure(path, e))?;
    println!("verified: {} ({}) signed by {signer}", path.display(), header.filename);
    Ok(())
}

fn decrypt(path: &Path, key: &Path, ctl: Option<&Path>, cert: Option<&Path>, out: Option<&Path>) -> Result<(), Failure> {
    let bytes = signed_file(path)?;
    let key_pem = String::from_utf8(read(key)?).map_err(|_| Failure::Input(format!("{}: not a PEM text file", key.display())))?;
    let device_key = keys::from_pem(&key_pem).map_err(|e| Failure::Input(format!("{}: {e}", key.display())))?;
    let trusted = Trusted::load(ctl, cert)?;
    let file = EncryptedFile::parse(&bytes, Mode::Strict).map_err(|e| file_failure(path, e))?;
    if trusted.is_none() {
        eprintln!("callguard trust: warning: the signature was NOT checked (give --ctl or --cert); PLAINTEXT_HASH is checked");
    }
    let plaintext = file.decrypt(&device_key, trusted.as_ref().map(Trusted::check)).map_err(|e| file_failure(path, e))?;
    match out {
        // The plaintext may carry digest credentials: owner-only.
        Some(out) => crate::core::private_file::write(out, &plaintext).map_err(|e| Failure::Input(format!("{}: {e}", out.display()))),
        None => std::io::stdout().write_all(&plaintext).map_err(|e| Failure::Input(format!("stdout: {e}"))),
    }
}
