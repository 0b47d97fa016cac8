//! Certificates the cluster CA issues: the server certificates of the cluster's functions (CallManager, TFTP,
//! CAPF; P.1-13) and the phones' LSCs (docs/wire-formats.md §7.8).
//!
//! Every function takes `now` from the caller and a serial the caller made unique ([`Serial::unique`]), so the
//! output depends only on the inputs, the keys and the serial.

use std::net::IpAddr;

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_X509_COUNTRY_NAME,
    OID_X509_LOCALITY_NAME, OID_X509_ORGANIZATION_NAME, OID_X509_ORGANIZATIONAL_UNIT, OID_X509_STATE_OR_PROVINCE_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::ca::{self, CaError, ClusterCa, MAX_NAME_CHARS, NOT_BEFORE_BACKDATE};
use super::inspect::{self, EcCurve, PublicKeyKind};
use super::keys;
use super::serial::Serial;

/// LSC validity bounds in days (docs/wire-formats.md §7.8).
pub const LSC_VALIDITY_DAYS: std::ops::RangeInclusive<u32> = 1..=3650;
/// Default LSC validity (docs/wire-formats.md §7.8). CAPF passes `certificateValidityYears` instead (P.6-7, default 5 years).
pub const DEFAULT_LSC_VALIDITY_DAYS: u32 = 365;
/// Server certificate validity bounds in days: the same ten-year ceiling as LSCs.
pub const SERVER_VALIDITY_DAYS: std::ops::RangeInclusive<u32> = 1..=3650;
/// RSA size of server keys: every CTL signer key is 2048 bits (docs/wire-formats.md §3.3).
pub const SERVER_KEY_BITS: usize = 2048;
/// RSA size allowed only with the trust-domain flag `legacySignerKeys` (docs/wire-formats.md §3.3).
pub const LEGACY_SERVER_KEY_BITS: usize = 1024;
/// id-kp-ipsecEndSystem, the third EKU of the LSC profile (docs/wire-formats.md §7.8).
pub const EKU_IPSEC_END_SYSTEM: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 5];
/// id-ce-basicConstraints.
const OID_BASIC_CONSTRAINTS: [u64; 4] = [2, 5, 29, 19];
/// DER of `BasicConstraints ::= SEQUENCE {}`: cA defaults to FALSE.
const BASIC_CONSTRAINTS_NOT_CA: [u8; 2] = [0x30, 0x00];

/// The function a server certificate serves, as the CTL names it (docs/wire-formats.md §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerRole {
    /// Verifies SIP-TLS / SCCP-TLS to the call agent (role 1).
    CallManager,
    /// Signs `.sgn` / `.enc.sgn` files (role 3).
    Tftp,
    /// One certificate for a node running both CallManager and TFTP (role 2, docs/wire-formats.md §3.7 step 1).
    CallManagerAndTftp,
    /// Verifies the TLS connection to CAPF (role 4).
    Capf,
    /// Verifies the TLS connection to TVS (role 21): listed in the ITL, not in the CTL
    /// (docs/wire-formats.md §1.7, §8), so that TVS holds a key of its own and not the CallManager's.
    Tvs,
}

impl ServerRole {
    /// The CTL record role code (docs/wire-formats.md §1.7).
    pub fn ctl_role_code(self) -> u16 {
        match self {
            ServerRole::CallManager => 1,
            ServerRole::CallManagerAndTftp => 2,
            ServerRole::Tftp => 3,
            ServerRole::Capf => 4,
            ServerRole::Tvs => 21,
        }
    }

    /// The call-agent/TFTP certificate a node needs: one combined certificate when it runs both services.
    pub fn for_services(call_manager: bool, tftp: bool) -> Option<ServerRole> {
        match (call_manager, tftp) {
            (true, true) => Some(ServerRole::CallManagerAndTftp),
            (true, false) => Some(ServerRole::CallManager),
            (false, true) => Some(ServerRole::Tftp),
            (false, false) => None,
        }
    }

    /// Extended key usages. Every role accepts TLS connections (serverAuth). CallManager also opens TLS to SIP
    /// trunks and is the client side of SIP-TLS mutual authentication (clientAuth). TFTP needs no EKU for file
    /// signing: phones check the signer against the CTL, not its EKU (docs/wire-formats.md §3.8 step 4); serverAuth covers
    /// HTTPS provisioning on 6971 (docs/wire-formats.md §1.7).
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            ServerRole::CallManager | ServerRole::CallManagerAndTftp => {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
            ServerRole::Tftp | ServerRole::Capf | ServerRole::Tvs => vec![ExtendedKeyUsagePurpose::ServerAuth],
        }
    }
}

/// The server certificates a node of the cluster needs (P.1-13, P.1-14): CallManager and/or TFTP (combined when
/// both run), CAPF where the CAPF service runs, and TVS on the first node when it runs CallManager (where TVS
/// runs, docs/wire-formats.md §8).
pub fn node_roles(cluster: &crate::api::CallControlClusterSpec, node: &crate::api::ClusterNode) -> Vec<ServerRole> {
    let services = node.services.clone().unwrap_or_default();
    let mut roles: Vec<ServerRole> = ServerRole::for_services(services.call_manager(), services.tftp()).into_iter().collect();
    if cluster.runs_capf(node) {
        roles.push(ServerRole::Capf);
    }
    if services.call_manager() && cluster.first_node().is_some_and(|first| first.name == node.name) {
        roles.push(ServerRole::Tvs);
    }
    roles
}

/// A server certificate to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertificateRequest {
    pub role: ServerRole,
    /// The node's hostname: subject CN and SAN DNS.
    pub hostname: String,
    /// The node's address: SAN IP when given.
    pub ip_address: Option<IpAddr>,
    pub validity_days: u32,
    pub serial: Serial,
    pub now: OffsetDateTime,
    /// The trust domain's `legacySignerKeys` flag: allows 1024-bit keys (docs/wire-formats.md §3.3).
    pub legacy_signer_keys: bool,
}

impl ServerCertificateRequest {
    /// A 30-day certificate with a random serial: what benchmarks and tests need of a server's
    /// identity, none of what the cluster's spec decides.
    pub fn short_lived(role: ServerRole, hostname: &str, ip_address: Option<IpAddr>, now: OffsetDateTime) -> Self {
        ServerCertificateRequest {
            role,
            hostname: hostname.to_owned(),
            ip_address,
            validity_days: 30,
            serial: Serial::random(&mut rand::thread_rng()),
            now,
            legacy_signer_keys: false,
        }
    }
}

/// A server certificate with its new key. `Debug` hides the key.
#[derive(Clone)]
pub struct IssuedServerCertificate {
    pub certificate_der: Vec<u8>,
    pub key: RsaPrivateKey,
}

impl std::fmt::Debug for IssuedServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedServerCertificate")
            .field("sha256", &inspect::sha256_hex(&self.certificate_der))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A phone key the LSC profile accepts (docs/wire-formats.md §7.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhoneKey {
    Rsa1024,
    Rsa2048,
    Ec(EcCurve),
}

/// Where the LSC's public key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LscKeySource<'a> {
    /// DER SubjectPublicKeyInfo, as the CAPF PUBLIC_KEY element carries it (docs/wire-formats.md §7.8).
    PublicKey(&'a [u8]),
    /// DER PKCS#10 request. Only its public key is used, after its self-signature verifies: the CA decides
    /// subject, extensions and validity.
    Csr(&'a [u8]),
}

/// An LSC to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LscRequest<'a> {
    /// Device name, e.g. `SEP001122334455` (docs/wire-formats.md §1.3): subject CN and SAN URI.
    pub device_name: &'a str,
    pub key: LscKeySource<'a>,
    /// 1..=3650 (docs/wire-formats.md §7.8).
    pub validity_days: u32,
    pub serial: Serial,
    pub now: OffsetDateTime,
}

/// An issued LSC and the kind of phone key it certifies (CAPF compares it with KEY_SIZE / CURVE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedLsc {
    pub certificate_der: Vec<u8>,
    pub phone_key: PhoneKey,
}

#[derive(Debug, PartialEq, Eq)]
pub enum IssueError {
    /// The CA cannot issue (encoder or key problem).
    Ca(CaError),
    /// A request field is invalid; the text names it and the rule.
    InvalidRequest(String),
    /// The key is not one the profile accepts; the text says why.
    KeyRefused(String),
    /// The CSR does not parse or its self-signature does not verify.
    CsrRefused(String),
    /// The certificate would outlive the CA: rotate the CA first.
    OutlivesCa { not_after: OffsetDateTime, ca_not_after: OffsetDateTime },
}

impl std::fmt::Display for IssueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssueError::Ca(e) => write!(f, "{e}"),
            IssueError::InvalidRequest(why) => write!(f, "invalid certificate request: {why}"),
            IssueError::KeyRefused(why) => write!(f, "public key refused: {why}"),
            IssueError::CsrRefused(why) => write!(f, "certificate signing request refused: {why}"),
            IssueError::OutlivesCa { not_after, ca_not_after } => {
                write!(f, "the certificate would end at {not_after}, after its CA ({ca_not_after}); rotate the CA first")
            }
        }
    }
}

impl std::error::Error for IssueError {}

impl From<CaError> for IssueError {
    fn from(e: CaError) -> IssueError {
        IssueError::Ca(e)
    }
}

/// Issues a server certificate for `key`: subject CN = hostname plus O, OU, L, ST, C of the CA subject; SAN DNS =
/// hostname and SAN IP = the node's address; BasicConstraints CA:false and KeyUsage digitalSignature +
/// keyEncipherment, both critical; EKU per [`ServerRole`].
///
/// KeyUsage: digitalSignature because TFTP signs `.sgn` files and (EC)DHE handshakes sign; keyEncipherment because
/// the cluster's cipher suites include RSA key transport (`TLS_RSA_WITH_AES128_SHA`, P.1-12).
/// Subject and authority key identifiers are kept on server certificates: they help chain building and no phone
/// profile forbids them (unlike LSCs).
pub fn issue_server_certificate(ca: &ClusterCa, request: &ServerCertificateRequest, key: &RsaPrivateKey) -> Result<Vec<u8>, IssueError> {
    let bits = keys::modulus_bits(key);
    let allowed = bits == SERVER_KEY_BITS || (request.legacy_signer_keys && bits == LEGACY_SERVER_KEY_BITS);
    if !allowed {
        return Err(IssueError::KeyRefused(format!(
            "server keys are RSA 2048 (1024 only with legacySignerKeys); this key has {bits} bits (docs/wire-formats.md §3.3)"
        )));
    }
    check_hostname(&request.hostname)?;
    check_validity("validityDays", request.validity_days, &SERVER_VALIDITY_DAYS)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_subject(ca, &request.hostname)?;
    let dns = Ia5String::try_from(request.hostname.as_str())
        .map_err(|e| IssueError::InvalidRequest(format!("hostname \"{}\" is not IA5: {e}", request.hostname)))?;
    params.subject_alt_names = std::iter::once(SanType::DnsName(dns)).chain(request.ip_address.map(SanType::IpAddress)).collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = request.role.extended_key_usages();
    params.use_authority_key_identifier_extension = true;
    set_serial_and_validity(&mut params, ca, &request.serial, request.now, request.validity_days)?;

    // Only the public half goes into the certificate; ring would refuse to load a 1024-bit private key.
    let spki = RsaPublicKey::from(key).to_public_key_der().map_err(|e| CaError::Encoding(e.to_string()))?;
    let subject_key = rcgen::SubjectPublicKeyInfo::from_der(spki.as_bytes()).map_err(|e| CaError::Encoding(e.to_string()))?;
    let issuer = ca.rcgen_issuer()?;
    let certificate = params.signed_by(&subject_key, issuer).map_err(|e| CaError::Encoding(e.to_string()))?;
    Ok(certificate.der().to_vec())
}

/// [`issue_server_certificate`] with a fresh RSA 2048 key (1024 when `legacy_signer_keys`).
pub fn issue_server_certificate_with_new_key(
    ca: &ClusterCa,
    request: &ServerCertificateRequest,
) -> Result<IssuedServerCertificate, IssueError> {
    let bits = if request.legacy_signer_keys { LEGACY_SERVER_KEY_BITS } else { SERVER_KEY_BITS };
    let key = keys::generate_rsa(bits);
    let certificate_der = issue_server_certificate(ca, request, &key)?;
    Ok(IssuedServerCertificate { certificate_der, key })
}

/// Issues an LSC exactly to the profile of docs/wire-formats.md §7.8: subject CN = device name plus O, OU, L, ST, C of the CA
/// subject; issuer = the CA subject; the caller's 16-byte serial; notBefore = now − 5 min, notAfter = now +
/// validity; BasicConstraints CA:false (critical), KeyUsage digitalSignature + keyEncipherment (critical), EKU
/// serverAuth, clientAuth, ipsecEndSystem, SAN URI = device name, and no other extension; SHA-256 with RSA.
pub fn issue_lsc(ca: &ClusterCa, request: &LscRequest<'_>) -> Result<IssuedLsc, IssueError> {
    check_device_name(request.device_name)?;
    check_validity("validity", request.validity_days, &LSC_VALIDITY_DAYS)?;
    let spki = match request.key {
        LscKeySource::PublicKey(spki) => spki.to_vec(),
        LscKeySource::Csr(csr) => public_key_from_csr(csr)?,
    };
    let phone_key = check_phone_key(&spki)?;
    if phone_key == PhoneKey::Ec(EcCurve::P521) {
        return Err(p521_unsupported());
    }
    let subject_key =
        rcgen::SubjectPublicKeyInfo::from_der(&spki).map_err(|e| IssueError::KeyRefused(format!("{e} (docs/wire-formats.md §7.8)")))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_subject(ca, request.device_name)?;
    let uri = Ia5String::try_from(request.device_name)
        .map_err(|e| IssueError::InvalidRequest(format!("device name is not IA5: {e} (docs/wire-formats.md §1.3)")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    // rcgen adds a SubjectKeyIdentifier whenever it writes BasicConstraints itself (IsCa::ExplicitNoCa), and has no
    // switch for that; the profile allows no SKI, so BasicConstraints goes in as a custom extension instead.
    params.is_ca = IsCa::NoCa;
    let mut basic_constraints = CustomExtension::from_oid_content(&OID_BASIC_CONSTRAINTS, BASIC_CONSTRAINTS_NOT_CA.to_vec());
    basic_constraints.set_criticality(true);
    params.custom_extensions = vec![basic_constraints];
    params.use_authority_key_identifier_extension = false;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::Other(EKU_IPSEC_END_SYSTEM.to_vec()),
    ];
    set_serial_and_validity(&mut params, ca, &request.serial, request.now, request.validity_days)?;

    let issuer = ca.rcgen_issuer()?;
    let certificate = params.signed_by(&subject_key, issuer).map_err(|e| CaError::Encoding(e.to_string()))?;
    Ok(IssuedLsc { certificate_der: certificate.der().to_vec(), phone_key })
}

/// Checks a phone's DER SubjectPublicKeyInfo against docs/wire-formats.md §7.8: RSA of exactly 1024 or 2048 bits with an odd
/// exponent ≥ 3 (512 is refused), or an uncompressed EC point on P-256, P-384 or P-521.
pub fn check_phone_key(spki_der: &[u8]) -> Result<PhoneKey, IssueError> {
    let spki = match SubjectPublicKeyInfo::from_der(spki_der) {
        Ok(([], spki)) => spki,
        Ok(_) => return Err(IssueError::KeyRefused("trailing bytes after the SubjectPublicKeyInfo (docs/wire-formats.md §7.8)".into())),
        Err(e) => return Err(IssueError::KeyRefused(format!("not a DER SubjectPublicKeyInfo: {e} (docs/wire-formats.md §7.8)"))),
    };
    match inspect::public_key_kind(&spki) {
        PublicKeyKind::Rsa { bits } => {
            let key = match bits {
                1024 => PhoneKey::Rsa1024,
                2048 => PhoneKey::Rsa2048,
                other => {
                    return Err(IssueError::KeyRefused(format!(
                        "RSA keys must have 1024 or 2048 bits, not {other} (docs/wire-formats.md §7.8)"
                    )));
                }
            };
            let public = RsaPublicKey::from_public_key_der(spki_der)
                .map_err(|e| IssueError::KeyRefused(format!("RSA key: {e} (docs/wire-formats.md §7.8)")))?;
            let e = public.e();
            let odd = e.to_bytes_be().last().is_some_and(|low| low & 1 == 1);
            if !odd || e < &rsa::BigUint::from(3u8) {
                return Err(IssueError::KeyRefused("the RSA exponent must be odd and at least 3 (docs/wire-formats.md §7.8)".into()));
            }
            Ok(key)
        }
        PublicKeyKind::Ec(curve) => {
            let point: &[u8] = &spki.subject_public_key.data;
            let coordinate_bytes = (curve.bits() as usize).div_ceil(8);
            if point.len() != 1 + 2 * coordinate_bytes || point.first() != Some(&0x04) {
                return Err(IssueError::KeyRefused(format!(
                    "EC key is not an uncompressed {curve:?} point (docs/wire-formats.md §3.6, §7.8)"
                )));
            }
            Ok(PhoneKey::Ec(curve))
        }
        PublicKeyKind::Other => {
            Err(IssueError::KeyRefused("only RSA and EC P-256/384/521 keys are accepted (docs/wire-formats.md §7.8)".into()))
        }
    }
}

/// The public key of a PKCS#10 request, as DER SubjectPublicKeyInfo, once the request's self-signature verifies.
/// RSA signatures (SHA-1/256/384/512) are checked with the `rsa` crate, which accepts 1024-bit keys; EC signatures
/// with x509-parser (ring: P-256 and P-384).
pub fn public_key_from_csr(csr_der: &[u8]) -> Result<Vec<u8>, IssueError> {
    let csr = match X509CertificationRequest::from_der(csr_der) {
        Ok(([], csr)) => csr,
        Ok(_) => return Err(IssueError::CsrRefused("trailing bytes after the request".into())),
        Err(e) => return Err(IssueError::CsrRefused(format!("not a DER PKCS#10 request: {e}"))),
    };
    let spki = &csr.certification_request_info.subject_pki;
    match inspect::public_key_kind(spki) {
        PublicKeyKind::Rsa { .. } => verify_rsa_csr(&csr)?,
        PublicKeyKind::Ec(EcCurve::P521) => return Err(p521_unsupported()),
        PublicKeyKind::Ec(_) => csr.verify_signature().map_err(|e| IssueError::CsrRefused(format!("signature does not verify: {e}")))?,
        PublicKeyKind::Other => return Err(IssueError::KeyRefused("only RSA and EC keys are accepted (docs/wire-formats.md §7.8)".into())),
    }
    Ok(spki.raw.to_vec())
}

/// The spec allows P-521, but rcgen and x509-parser built on ring can neither encode a P-521 SubjectPublicKeyInfo
/// nor verify a P-521 signature.
fn p521_unsupported() -> IssueError {
    IssueError::KeyRefused("EC P-521 keys are not supported by this build's certificate encoder (docs/wire-formats.md §7.8)".into())
}

fn verify_rsa_csr(csr: &X509CertificationRequest<'_>) -> Result<(), IssueError> {
    let spki = csr.certification_request_info.subject_pki.raw;
    let public =
        RsaPublicKey::from_public_key_der(spki).map_err(|e| IssueError::KeyRefused(format!("RSA key: {e} (docs/wire-formats.md §7.8)")))?;
    let message = csr.certification_request_info.raw;
    let algorithm = &csr.signature_algorithm.algorithm;
    let (scheme, digest) = if *algorithm == OID_PKCS1_SHA256WITHRSA {
        (Pkcs1v15Sign::new::<Sha256>(), Sha256::digest(message).to_vec())
    } else if *algorithm == OID_PKCS1_SHA384WITHRSA {
        (Pkcs1v15Sign::new::<Sha384>(), Sha384::digest(message).to_vec())
    } else if *algorithm == OID_PKCS1_SHA512WITHRSA {
        (Pkcs1v15Sign::new::<Sha512>(), Sha512::digest(message).to_vec())
    } else if *algorithm == OID_PKCS1_SHA1WITHRSA {
        (Pkcs1v15Sign::new::<Sha1>(), Sha1::digest(message).to_vec())
    } else {
        return Err(IssueError::CsrRefused(format!("unsupported signature algorithm {algorithm} for an RSA key")));
    };
    public.verify(scheme, &digest, &csr.signature_value.data).map_err(|_| IssueError::CsrRefused("signature does not verify".into()))
}

/// The leaf subject: `CN=<common_name>` followed by the CA subject's O, OU, L, ST and C in the CA's order
/// (docs/wire-formats.md §7.8).
fn leaf_subject(ca: &ClusterCa, common_name: &str) -> Result<DistinguishedName, IssueError> {
    let cert = inspect::parse_certificate(ca.certificate_der()).map_err(CaError::from)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    for attribute in cert.subject().iter_attributes() {
        let oid = attribute.attr_type();
        let dn_type = if *oid == OID_X509_ORGANIZATION_NAME {
            DnType::OrganizationName
        } else if *oid == OID_X509_ORGANIZATIONAL_UNIT {
            DnType::OrganizationalUnitName
        } else if *oid == OID_X509_LOCALITY_NAME {
            DnType::LocalityName
        } else if *oid == OID_X509_STATE_OR_PROVINCE_NAME {
            DnType::StateOrProvinceName
        } else if *oid == OID_X509_COUNTRY_NAME {
            DnType::CountryName
        } else {
            continue;
        };
        let text = attribute.as_str().map_err(|e| CaError::Certificate(format!("CA subject attribute {oid} is not a string: {e}")))?;
        // Country names are PrintableString (RFC 5280 appendix A); the others UTF8String.
        let value = match dn_type {
            DnType::CountryName => DnValue::PrintableString(
                text.try_into().map_err(|e| CaError::Certificate(format!("CA country name is not printable: {e}")))?,
            ),
            _ => DnValue::Utf8String(text.to_owned()),
        };
        subject.push(dn_type, value);
    }
    Ok(subject)
}

fn set_serial_and_validity(
    params: &mut CertificateParams,
    ca: &ClusterCa,
    serial: &Serial,
    now: OffsetDateTime,
    validity_days: u32,
) -> Result<(), IssueError> {
    let now = ca::whole_seconds_utc(now);
    params.serial_number = Some(serial.as_bytes().to_vec().into());
    params.not_before = now - NOT_BEFORE_BACKDATE;
    params.not_after = now + Duration::days(i64::from(validity_days));
    let ca_not_after = ca.facts().map_err(CaError::from)?.not_after;
    if params.not_after > ca_not_after {
        return Err(IssueError::OutlivesCa { not_after: params.not_after, ca_not_after });
    }
    Ok(())
}

fn check_validity(field: &str, days: u32, range: &std::ops::RangeInclusive<u32>) -> Result<(), IssueError> {
    if range.contains(&days) {
        Ok(())
    } else {
        Err(IssueError::InvalidRequest(format!(
            "{field} of {days} days is outside {}..={} (docs/wire-formats.md §7.8)",
            range.start(),
            range.end()
        )))
    }
}

/// Device names: `SEP` + MAC for phones (docs/wire-formats.md §1.3), other CAPF clients (CTI applications, softphones) use
/// other names; what every name must satisfy is a CN of at most 64 characters that is also a valid IA5 SAN URI.
fn check_device_name(name: &str) -> Result<(), IssueError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME_CHARS || !name.chars().all(allowed) {
        return Err(IssueError::InvalidRequest(format!(
            "device name \"{name}\" must be 1..={MAX_NAME_CHARS} characters of A-Z, a-z, 0-9, '-', '_', '.' (docs/wire-formats.md §1.3)"
        )));
    }
    Ok(())
}

/// Hostnames: the API's pattern (letters, digits, '-', '.') and at most 64 characters, the CN upper bound.
fn check_hostname(hostname: &str) -> Result<(), IssueError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.');
    let labels_ok = hostname.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if hostname.is_empty() || hostname.len() > MAX_NAME_CHARS || !hostname.chars().all(allowed) || !labels_ok {
        return Err(IssueError::InvalidRequest(format!(
            "hostname \"{hostname}\" must be a DNS name of at most {MAX_NAME_CHARS} characters (Table 3-2, RFC 5280 ub-common-name)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pki::ca::CaSettings;
    use crate::core::pki::inspect::{CertificateFacts, SubjectAltName};
    use std::sync::OnceLock;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
    }

    fn ca() -> &'static ClusterCa {
        static CA: OnceLock<ClusterCa> = OnceLock::new();
        CA.get_or_init(|| ClusterCa::generate(&CaSettings::new("cucm-lab", "voice"), now()).unwrap())
    }

    fn server_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| keys::generate_rsa(2048))
    }

    fn phone_spki(bits: usize) -> Vec<u8> {
        let key = keys::generate_rsa(bits);
        RsaPublicKey::from(&key).to_public_key_der().unwrap().as_bytes().to_vec()
    }

    fn serial(n: u8) -> Serial {
        Serial::from_magnitude(&[0x40, n, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]).unwrap()
    }

    fn server_request(role: ServerRole) -> ServerCertificateRequest {
        ServerCertificateRequest {
            role,
            hostname: "cucm1.voice.example".into(),
            ip_address: Some("192.0.2.10".parse().unwrap()),
            validity_days: 730,
            serial: serial(1),
            now: now(),
            legacy_signer_keys: false,
        }
    }

    #[test]
    fn roles_follow_the_ctl_codes_and_services() {
        assert_eq!(
            [ServerRole::CallManager, ServerRole::CallManagerAndTftp, ServerRole::Tftp, ServerRole::Capf].map(ServerRole::ctl_role_code),
            [1, 2, 3, 4]
        );
        assert_eq!(ServerRole::for_services(true, true), Some(ServerRole::CallManagerAndTftp));
        assert_eq!(ServerRole::for_services(false, true), Some(ServerRole::Tftp));
        assert_eq!(ServerRole::for_services(false, false), None);
    }

    #[test]
    fn node_roles_combine_ccm_and_tftp_and_add_capf_on_the_first_node() {
        let spec: crate::api::CallControlClusterSpec = serde_json::from_value(serde_json::json!({
            "nodes": [
                {"name": "pub", "hostname": "cucm1", "firstNode": true},
                {"name": "sub", "hostname": "cucm2", "services": {"tftp": false}},
            ]
        }))
        .unwrap();
        assert_eq!(node_roles(&spec, &spec.nodes[0]), vec![ServerRole::CallManagerAndTftp, ServerRole::Capf, ServerRole::Tvs]);
        assert_eq!(node_roles(&spec, &spec.nodes[1]), vec![ServerRole::CallManager]);
    }

    #[test]
    fn server_certificate_names_the_node() {
        let der = issue_server_certificate(ca(), &server_request(ServerRole::CallManager), server_key()).unwrap();
        let facts = CertificateFacts::from_der(&der).unwrap();
        assert_eq!(facts.subject, "CN=cucm1.voice.example, O=Callguard, OU=voice");
        assert_eq!(facts.issuer, "CN=cucm-lab CA, O=Callguard, OU=voice");
        assert_eq!(
            facts.subject_alt_names,
            vec![SubjectAltName::Dns("cucm1.voice.example".into()), SubjectAltName::Ip("192.0.2.10".parse().unwrap())]
        );
        assert_eq!(facts.not_before, now() - Duration::minutes(5));
        assert_eq!(facts.not_after, now() + Duration::days(730));
        assert_eq!(facts.serial, serial(1));
        assert!(!facts.is_ca);
        assert!(inspect::is_issued_by(&der, ca().certificate_der()));
    }

    #[test]
    fn server_keys_must_be_2048_unless_legacy() {
        let small = keys::generate_rsa(1024);
        let mut request = server_request(ServerRole::Tftp);
        assert!(matches!(issue_server_certificate(ca(), &request, &small), Err(IssueError::KeyRefused(_))));
        request.legacy_signer_keys = true;
        assert!(issue_server_certificate(ca(), &request, &small).is_ok());
    }

    #[test]
    fn server_requests_with_bad_names_or_validity_are_refused() {
        let mut request = server_request(ServerRole::Capf);
        request.hostname = "bad host".into();
        assert!(matches!(issue_server_certificate(ca(), &request, server_key()), Err(IssueError::InvalidRequest(_))));
        request.hostname = format!("{}.example", "a".repeat(60));
        assert!(matches!(issue_server_certificate(ca(), &request, server_key()), Err(IssueError::InvalidRequest(_))));
        let mut request = server_request(ServerRole::Capf);
        request.validity_days = 0;
        assert!(matches!(issue_server_certificate(ca(), &request, server_key()), Err(IssueError::InvalidRequest(_))));
    }

    #[test]
    fn certificates_may_not_outlive_the_ca() {
        let mut request = server_request(ServerRole::CallManager);
        request.now = now() + Duration::days(3000);
        assert!(matches!(issue_server_certificate(ca(), &request, server_key()), Err(IssueError::OutlivesCa { .. })));
    }

    #[test]
    fn lsc_follows_the_profile_names_and_times() {
        let spki = phone_spki(1024);
        let request = LscRequest {
            device_name: "SEP001122334455",
            key: LscKeySource::PublicKey(&spki),
            validity_days: 365,
            serial: serial(2),
            now: now(),
        };
        let lsc = issue_lsc(ca(), &request).unwrap();
        assert_eq!(lsc.phone_key, PhoneKey::Rsa1024);
        let facts = CertificateFacts::from_der(&lsc.certificate_der).unwrap();
        assert_eq!(facts.subject, "CN=SEP001122334455, O=Callguard, OU=voice");
        assert_eq!(facts.issuer, "CN=cucm-lab CA, O=Callguard, OU=voice");
        assert_eq!(facts.subject_alt_names, vec![SubjectAltName::Uri("SEP001122334455".into())]);
        assert_eq!(facts.not_before, now() - Duration::minutes(5));
        assert_eq!(facts.not_after, now() + Duration::days(365));
        assert_eq!(facts.public_key, PublicKeyKind::Rsa { bits: 1024 });
        let cert = inspect::parse_certificate(&lsc.certificate_der).unwrap();
        // Only the four extensions of the profile: basicConstraints, keyUsage, extKeyUsage, subjectAltName.
        let mut oids: Vec<String> = cert.extensions().iter().map(|e| e.oid.to_id_string()).collect();
        oids.sort();
        assert_eq!(oids, ["2.5.29.15", "2.5.29.17", "2.5.29.19", "2.5.29.37"]);
        let critical: Vec<String> = cert.extensions().iter().filter(|e| e.critical).map(|e| e.oid.to_id_string()).collect();
        assert!(critical.contains(&"2.5.29.19".to_string()) && critical.contains(&"2.5.29.15".to_string()));
        assert!(inspect::is_issued_by(&lsc.certificate_der, ca().certificate_der()));
    }

    #[test]
    fn lsc_requests_out_of_profile_are_refused() {
        let spki = phone_spki(2048);
        let base = LscRequest {
            device_name: "SEP001122334455",
            key: LscKeySource::PublicKey(&spki),
            validity_days: 365,
            serial: serial(3),
            now: now(),
        };
        for days in [0, 3651] {
            let request = LscRequest { validity_days: days, ..base.clone() };
            assert!(matches!(issue_lsc(ca(), &request), Err(IssueError::InvalidRequest(_))), "{days} days");
        }
        for name in ["", "SEP 0011", "SEP/..", &"A".repeat(65)] {
            let request = LscRequest { device_name: name, ..base.clone() };
            assert!(matches!(issue_lsc(ca(), &request), Err(IssueError::InvalidRequest(_))), "{name}");
        }
        assert!(issue_lsc(ca(), &LscRequest { validity_days: 3650, ..base.clone() }).is_ok());
    }

    #[test]
    fn phone_keys_of_the_allowed_sizes_pass_and_others_are_refused() {
        assert_eq!(check_phone_key(&phone_spki(2048)), Ok(PhoneKey::Rsa2048));
        assert!(matches!(check_phone_key(&phone_spki(512)), Err(IssueError::KeyRefused(_))));
        assert!(matches!(check_phone_key(&phone_spki(1536)), Err(IssueError::KeyRefused(_))));
        assert!(matches!(check_phone_key(b"\x30\x00"), Err(IssueError::KeyRefused(_))));
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(check_phone_key(&rcgen::PublicKeyData::subject_public_key_info(&p256)), Ok(PhoneKey::Ec(EcCurve::P256)));
    }

    #[test]
    fn csr_keys_are_used_only_after_the_signature_verifies() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::new(vec!["ignored.example".to_string()]).unwrap().serialize_request(&key).unwrap();
        let spki = public_key_from_csr(csr.der()).unwrap();
        assert_eq!(spki, rcgen::PublicKeyData::subject_public_key_info(&key));
        let mut tampered = csr.der().to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert!(matches!(public_key_from_csr(&tampered), Err(IssueError::CsrRefused(_))));
        assert!(matches!(public_key_from_csr(b"junk"), Err(IssueError::CsrRefused(_))));
    }
}
