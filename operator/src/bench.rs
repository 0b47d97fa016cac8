//! `callguard bench ...`: benchmarks that print what they measured. Nothing here asserts a time:
//! machines are shared and noisy, so figures are read, not tested.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use crate::manifest;
use crate::validate::{self, SecretPolicy};

/// The quickstart's Secrets, whose token Secrets hold example (published) token material.
const QUICKSTART_SECRETS: &str = include_str!("../../examples/quickstart/secrets.yaml");

/// A namespace the size of a CallManager cluster: one mixed-mode cluster, two tokens, a SIP and an
/// SCCP profile in each device security mode, `phones` phones across models, and for every SIP
/// phone an end user with digest credentials in a Secret.
pub fn namespace_yaml(phones: usize) -> String {
    let mut y = String::with_capacity(phones * 700);
    y.push_str(
        "apiVersion: callguard.io/v1alpha1\nkind: CallControlCluster\nmetadata: {name: bench}\nspec:\n  securityMode: Mixed\n  nodes:\n  - {name: cm1, hostname: cm1.example.com, firstNode: true}\n  - {name: cm2, hostname: cm2.example.com}\n  ctl: {tokens: [token-primary, token-backup], signingToken: token-primary}\n",
    );
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
        let _ = write!(
            y,
            "---\napiVersion: callguard.io/v1alpha1\nkind: PhoneSecurityProfile\nmetadata: {{name: sccp-{lower}}}\nspec: {{protocol: SCCP, deviceSecurityMode: {mode}}}\n---\napiVersion: callguard.io/v1alpha1\nkind: PhoneSecurityProfile\nmetadata: {{name: sip-{lower}}}\nspec:\n  protocol: SIP\n  deviceSecurityMode: {mode}\n  sip: {{transportType: {transport}, enableDigestAuthentication: true}}\n"
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
                "  digestUserRef: user-{i}\n---\napiVersion: callguard.io/v1alpha1\nkind: EndUser\nmetadata: {{name: user-{i}}}\nspec:\n  digestCredentials: {{name: digest-{i}, key: password}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: digest-{i}}}\nstringData: {{password: Secret{i}}}\n"
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
