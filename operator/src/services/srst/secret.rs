//! The declarative alternative: the gateway certificate from a Secret holding exactly one PEM certificate
//! in `tls.crt`; several certificates or a private key give `InvalidSrstCertificate` (docs/wire-formats.md §9.2 step 2).

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::error::{InvalidSrstCertificate, SrstError};
use crate::core::pki::inspect::parse_certificate;

/// The Secret key holding the certificate (docs/wire-formats.md §9.2).
pub const SECRET_CERTIFICATE_KEY: &str = "tls.crt";

/// The DER of the one certificate in `pem`.
pub fn certificate_from_pem(pem: &str) -> Result<Vec<u8>, SrstError> {
    // The labels are read by hand first: pki-types skips sections it does not know, such as
    // "ENCRYPTED PRIVATE KEY", and a key in any form must be refused.
    let labels: Vec<&str> =
        pem.lines().filter_map(|line| line.trim().strip_prefix("-----BEGIN ").and_then(|rest| rest.strip_suffix("-----"))).collect();
    if labels.iter().any(|label| label.ends_with("PRIVATE KEY")) {
        return Err(InvalidSrstCertificate::PrivateKey.into());
    }
    if let Some(other) = labels.iter().find(|label| **label != "CERTIFICATE") {
        return Err(InvalidSrstCertificate::UnexpectedSection((*other).to_owned()).into());
    }
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InvalidSrstCertificate::NotPem(e.to_string()))?;
    let der = match certificates.as_slice() {
        [] => return Err(InvalidSrstCertificate::NoCertificate.into()),
        [one] => one.to_vec(),
        several => return Err(InvalidSrstCertificate::SeveralCertificates(several.len()).into()),
    };
    parse_certificate(&der).map_err(|e| InvalidSrstCertificate::NotX509(e.to_string()))?;
    Ok(der)
}

/// The DER of the one certificate in the Secret's `tls.crt` (from `stringData`, else `data`). A private key
/// anywhere in the Secret (a `tls.key` entry, or PEM key text under any key) is refused.
pub fn certificate_from_secret(secret: &Secret) -> Result<Vec<u8>, SrstError> {
    let data = secret.data.iter().flatten().map(|(key, value)| (key.as_str(), String::from_utf8_lossy(&value.0).into_owned()));
    let string_data = secret.string_data.iter().flatten().map(|(key, value)| (key.as_str(), value.clone()));
    // stringData first: the API server lets it override data.
    let entries: Vec<(&str, String)> = string_data.chain(data).collect();
    let holds_key = |(key, text): &(&str, String)| (*key == "tls.key" && !text.trim().is_empty()) || text.contains("PRIVATE KEY-----");
    if entries.iter().any(holds_key) {
        return Err(InvalidSrstCertificate::PrivateKey.into());
    }
    let pem = entries
        .iter()
        .find(|(key, _)| *key == SECRET_CERTIFICATE_KEY)
        .map(|(_, text)| text)
        .ok_or(InvalidSrstCertificate::NoCertificate)?;
    certificate_from_pem(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_sections_has_no_certificate() {
        assert_eq!(certificate_from_pem("hello"), Err(SrstError::InvalidSrstCertificate(InvalidSrstCertificate::NoCertificate)));
    }

    #[test]
    fn any_private_key_label_is_refused() {
        for label in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"] {
            let pem = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
            assert_eq!(certificate_from_pem(&pem), Err(SrstError::InvalidSrstCertificate(InvalidSrstCertificate::PrivateKey)));
        }
    }

    #[test]
    fn other_sections_are_refused() {
        let pem = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        assert_eq!(
            certificate_from_pem(pem),
            Err(SrstError::InvalidSrstCertificate(InvalidSrstCertificate::UnexpectedSection("X509 CRL".into())))
        );
    }

    #[test]
    fn a_certificate_section_that_is_not_x509_is_refused() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(certificate_from_pem(pem), Err(SrstError::InvalidSrstCertificate(InvalidSrstCertificate::NotX509(_)))));
    }

    #[test]
    fn a_secret_without_tls_crt_has_no_certificate() {
        assert_eq!(
            certificate_from_secret(&Secret::default()),
            Err(SrstError::InvalidSrstCertificate(InvalidSrstCertificate::NoCertificate))
        );
    }
}
