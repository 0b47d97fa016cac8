//! `callguard token create`: a software security token (SAST) as manifests: a Secret with a
//! self-signed certificate and the password-encrypted key, and the `SecurityToken` that refers to it
//! (P.3-9, P.3-17, docs/wire-formats.md §3.3).

use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber};
use rsa::RsaPrivateKey;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::api::{DNS1123_SUBDOMAIN, SecretKeyRef, SecurityToken, SecurityTokenSpec, TOKEN_FACTORY_PASSWORD};
use crate::core::pki::keys;
use crate::core::pki::serial::Serial;

/// Key of the certificate in the token's Secret.
pub const CERTIFICATE_KEY: &str = "certificate.pem";
/// Key of the encrypted private key in the token's Secret.
pub const PRIVATE_KEY_KEY: &str = "key.p8";
/// Key of the password in the password Secret.
pub const PASSWORD_KEY: &str = "password";
/// Years a token certificate is valid: a token lives as long as the cluster's trust in it.
pub const VALIDITY_YEARS: i32 = 20;
/// Upper bound of an X.520 common name (RFC 5280 Appendix A, ub-common-name); the name is the CN.
pub const MAX_NAME_LEN: usize = 64;

/// What to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    /// Name of the SecurityToken and of its Secret; the certificate's CN.
    pub name: String,
    pub namespace: Option<String>,
    /// The certificate's O.
    pub organization: Option<String>,
    /// The certificate's OU.
    pub organizational_unit: Option<String>,
    /// `spec.description` of the SecurityToken, e.g. where the token is kept (P.3-11).
    pub description: Option<String>,
    /// Also write the password Secret; by default it is left out so it can be kept sealed.
    pub with_password_secret: bool,
}

/// The manifests, and what the caller should tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedToken {
    /// Multi-document YAML: the Secret, the SecurityToken, and the password Secret when asked for.
    pub yaml: String,
    pub warnings: Vec<CreateWarning>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateWarning {
    /// The password is `Cisco123`: the CTL will not be signed with this token until it changes.
    FactoryPassword,
}

impl std::fmt::Display for CreateWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateWarning::FactoryPassword => write!(
                f,
                "the token password is the factory default; the CTL will not be signed with this token until it is changed (Table 3-2, P.3-17)"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// The password file is empty, or holds only a newline.
    EmptyPassword,
    /// The password is not UTF-8 text.
    PasswordNotText,
    /// The name is not a DNS-1123 subdomain of at most 64 characters.
    InvalidName(String),
    /// rcgen refused the certificate.
    Certificate(String),
    /// The manifests do not serialize.
    Yaml(String),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::EmptyPassword => write!(f, "the password file is empty: a token needs a password (P.3-17)"),
            CreateError::PasswordNotText => write!(f, "the password file is not UTF-8 text (docs/wire-formats.md §1.2)"),
            CreateError::InvalidName(name) => write!(
                f,
                "--name {name:?} must be a DNS-1123 subdomain of at most {MAX_NAME_LEN} characters: it names the Secret and is the certificate's CN (RFC 5280 ub-common-name)"
            ),
            CreateError::Certificate(why) => write!(f, "cannot make the token certificate: {why}"),
            CreateError::Yaml(why) => write!(f, "cannot write the manifests: {why}"),
        }
    }
}

impl std::error::Error for CreateError {}

/// Name of the password Secret of token `name`.
pub fn password_secret_name(name: &str) -> String {
    format!("{name}-password")
}

/// The password from a password file's bytes: one trailing newline (LF or CRLF) is not part of it.
pub fn password_from_file(bytes: &[u8]) -> Result<String, CreateError> {
    let bytes = bytes.strip_suffix(b"\n").map(|b| b.strip_suffix(b"\r").unwrap_or(b)).unwrap_or(bytes);
    if bytes.is_empty() {
        return Err(CreateError::EmptyPassword);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| CreateError::PasswordNotText)
}

/// The self-signed SAST certificate of `key`, PEM: subject CN=name[,O][,OU] in that order
/// (docs/wire-formats.md §1.4), valid [`VALIDITY_YEARS`] from `now`, CA:false, digitalSignature only.
pub fn sast_certificate(request: &TokenRequest, key: &RsaPrivateKey, now: OffsetDateTime) -> Result<String, CreateError> {
    let key_pair = KeyPair::try_from(keys::pkcs8_der(key).as_slice()).map_err(|e| CreateError::Certificate(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, request.name.as_str());
    if let Some(o) = &request.organization {
        subject.push(DnType::OrganizationName, o.as_str());
    }
    if let Some(ou) = &request.organizational_unit {
        subject.push(DnType::OrganizationalUnitName, ou.as_str());
    }
    params.distinguished_name = subject;
    params.serial_number = Some(SerialNumber::from_slice(Serial::random(&mut rand::thread_rng()).as_bytes()));
    let not_before = now.replace_nanosecond(0).unwrap_or(now);
    params.not_before = not_before;
    params.not_after = years_later(not_before, VALIDITY_YEARS);
    params.is_ca = IsCa::ExplicitNoCa;
    // rcgen marks KeyUsage critical, as RFC 5280 §4.2.1.3 asks.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let certificate = params.self_signed(&key_pair).map_err(|e| CreateError::Certificate(e.to_string()))?;
    Ok(certificate.pem())
}

/// The same day `years` later; 29 February becomes 28 February in a common year.
fn years_later(from: OffsetDateTime, years: i32) -> OffsetDateTime {
    let year = from.year() + years;
    from.replace_year(year)
        .or_else(|_| (from - time::Duration::days(1)).replace_year(year))
        .unwrap_or(from + time::Duration::days(i64::from(years) * 365 + i64::from(years) / 4))
}

/// Generates the key and certificate and writes the manifests. Refuses an empty password and
/// warns on the factory default (Table 3-2).
pub fn create(request: &TokenRequest, password: &str, now: OffsetDateTime) -> Result<CreatedToken, CreateError> {
    check_name(&request.name)?;
    if password.is_empty() {
        return Err(CreateError::EmptyPassword);
    }
    let key = keys::generate_rsa(super::material::SAST_KEY_BITS);
    let certificate = sast_certificate(request, &key, now)?;
    let encrypted_key = keys::encrypt_pem(&key, password.as_bytes());
    let mut documents =
        vec![secret(request, &request.name, json!({ CERTIFICATE_KEY: certificate, PRIVATE_KEY_KEY: encrypted_key })), token(request)];
    if request.with_password_secret {
        documents.push(secret(request, &password_secret_name(&request.name), json!({ PASSWORD_KEY: password })));
    }
    let mut yaml = String::new();
    for document in &documents {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(document).map_err(|e| CreateError::Yaml(e.to_string()))?);
    }
    let warnings = if password == TOKEN_FACTORY_PASSWORD { vec![CreateWarning::FactoryPassword] } else { Vec::new() };
    Ok(CreatedToken { yaml, warnings })
}

fn check_name(name: &str) -> Result<(), CreateError> {
    let pattern = regex::Regex::new(DNS1123_SUBDOMAIN).map_err(|e| CreateError::InvalidName(e.to_string()))?;
    if name.len() <= MAX_NAME_LEN && pattern.is_match(name) { Ok(()) } else { Err(CreateError::InvalidName(name.to_string())) }
}

fn metadata(request: &TokenRequest, name: &str) -> Value {
    match &request.namespace {
        Some(namespace) => json!({ "name": name, "namespace": namespace }),
        None => json!({ "name": name }),
    }
}

/// A Secret the token names, labelled so that the operator is told when it changes (its watch on
/// Secrets selects this label and nothing else it does not own).
fn secret(request: &TokenRequest, name: &str, string_data: Value) -> Value {
    let mut metadata = metadata(request, name);
    metadata["labels"] = json!({ crate::adapters::controller::labels::WATCHED_SECRET: "true" });
    json!({ "apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque", "stringData": string_data })
}

fn token(request: &TokenRequest) -> Value {
    let name = &request.name;
    let reference = |secret: String, key: &str| SecretKeyRef { name: secret, key: key.to_string() };
    let spec = SecurityTokenSpec {
        certificate: reference(name.clone(), CERTIFICATE_KEY),
        private_key: reference(name.clone(), PRIVATE_KEY_KEY),
        password: reference(password_secret_name(name), PASSWORD_KEY),
        state: None,
        description: request.description.clone(),
    };
    let mut token = SecurityToken::new(name, spec);
    token.metadata.namespace = request.namespace.clone();
    let mut value = serde_json::to_value(&token).unwrap_or(Value::Null);
    // A new object has no status; the operator writes it.
    if let Value::Object(map) = &mut value {
        map.remove("status");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn utc(year: i32, month: time::Month, day: u8, hour: u8) -> OffsetDateTime {
        time::Date::from_calendar_date(year, month, day).unwrap().with_hms(hour, 0, 0).unwrap().assume_utc()
    }

    #[test]
    fn password_file_loses_one_trailing_newline_only() {
        assert_eq!(password_from_file(b"s3cret\n").unwrap(), "s3cret");
        assert_eq!(password_from_file(b"s3cret\r\n").unwrap(), "s3cret");
        assert_eq!(password_from_file(b"s3cret").unwrap(), "s3cret");
        assert_eq!(password_from_file(b"s3cret \n\n").unwrap(), "s3cret \n");
        assert_eq!(password_from_file(b"\n"), Err(CreateError::EmptyPassword));
        assert_eq!(password_from_file(b""), Err(CreateError::EmptyPassword));
        assert_eq!(password_from_file(b"\xff\xfe"), Err(CreateError::PasswordNotText));
    }

    #[test]
    fn names_must_be_object_names_and_fit_a_common_name() {
        assert!(check_name("token-primary").is_ok());
        assert!(check_name("Token").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn certificate_is_a_sast_certificate() {
        let key = keys::generate_rsa(2048);
        let request = TokenRequest {
            name: "sast-one".into(),
            organization: Some("Example".into()),
            organizational_unit: Some("Voice".into()),
            ..Default::default()
        };
        let now = utc(2024, time::Month::February, 29, 12).replace_millisecond(500).unwrap();
        let pem = sast_certificate(&request, &key, now).unwrap();
        let der = crate::core::token::material::check_certificate(pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let subject: Vec<String> = cert.subject().iter_attributes().map(|a| a.as_str().unwrap().to_string()).collect();
        assert_eq!(subject, ["sast-one", "Example", "Voice"], "CN, O, OU in encoded order (docs/wire-formats.md §1.4)");
        assert_eq!(cert.subject(), cert.issuer(), "self-signed");
        assert_eq!(cert.raw_serial().len(), 16);
        assert_eq!(cert.validity().not_before.timestamp(), now.replace_nanosecond(0).unwrap().unix_timestamp());
        assert_eq!(cert.validity().not_after.timestamp(), utc(2044, time::Month::February, 29, 12).unix_timestamp());
        let basic = cert.basic_constraints().unwrap().unwrap();
        assert!(!basic.value.ca);
        let usage = cert.key_usage().unwrap().unwrap();
        assert!(usage.critical);
        assert!(usage.value.digital_signature() && !usage.value.key_cert_sign() && !usage.value.key_encipherment());
        assert!(cert.verify_signature(None).is_ok());
    }

    #[test]
    fn twenty_years_from_a_leap_day_in_a_common_year() {
        let from = utc(2024, time::Month::February, 29, 0);
        assert_eq!(years_later(from, 21), utc(2045, time::Month::February, 28, 0));
    }
}
