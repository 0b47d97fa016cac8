use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use callguard::manifest::{self, Document, LoadError};
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
enum Bench {
    /// Generate a namespace of phones with their profiles and users, and measure `validate` on it.
    Validate {
        /// Number of phones.
        #[arg(long, default_value_t = 30_000)]
        phones: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { dir, readme } => crdgen(&dir, readme.as_deref()),
        Command::Validate { paths, allow_missing_secrets } => {
            let policy = if allow_missing_secrets { SecretPolicy::AllowMissing } else { SecretPolicy::Require };
            run_validate(&paths, policy)
        }
        Command::Trust { command } => callguard::trust::cli::run(command),
        Command::Bench { bench: Bench::Validate { phones } } => {
            callguard::bench::validate(phones);
            ExitCode::SUCCESS
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

fn run_validate(paths: &[PathBuf], policy: SecretPolicy) -> ExitCode {
    let (documents, errors) = load(paths);
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

fn load(paths: &[PathBuf]) -> (Vec<Document>, Vec<LoadError>) {
    let files = match manifest::collect_files(paths) {
        Ok(files) => files,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match manifest::load_file(&file) {
            Ok(docs) => documents.extend(docs),
            Err(e) => errors.push(e),
        }
    }
    (documents, errors)
}
