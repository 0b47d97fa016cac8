//! RSA PKCS#1 v1.5 signing through OpenSSL. The `rsa` crate signs about a sixth as fast as OpenSSL
//! and ring cannot sign with SHA-1, which every Cisco trust file uses by default (docs/wire-formats.md §1.6); a
//! cluster signs tens of thousands of configuration files, so the private-key operation goes to
//! OpenSSL while keys are still generated, stored and verified with the `rsa` crate.

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPublicKey;

use super::keys::{self, KeyError};

/// The digest inside a PKCS#1 v1.5 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureDigest {
    Sha1,
    Sha256,
    Sha512,
}

impl SignatureDigest {
    fn message_digest(self) -> MessageDigest {
        match self {
            SignatureDigest::Sha1 => MessageDigest::sha1(),
            SignatureDigest::Sha256 => MessageDigest::sha256(),
            SignatureDigest::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// An RSA private key loaded into OpenSSL once, to sign many times.
pub struct RsaSigningKey {
    key: PKey<Private>,
    /// PKCS#1 RSAPublicKey DER: what rcgen puts in the issuer's key identifier and SPKI.
    public_key_der: Vec<u8>,
}

impl std::fmt::Debug for RsaSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigningKey").field("bits", &self.key.bits()).field("key", &"<redacted>").finish()
    }
}

impl RsaSigningKey {
    pub fn new(key: &RsaPrivateKey) -> Result<Self, KeyError> {
        let der = keys::pkcs8_der(key);
        let openssl_key =
            PKey::private_key_from_pkcs8(&der).map_err(|e| KeyError::Unsupported(format!("OpenSSL refused the RSA key: {e}")))?;
        let public_key_der =
            rsa::RsaPublicKey::from(key).to_pkcs1_der().map_err(|e| KeyError::Malformed(e.to_string()))?.as_bytes().to_vec();
        Ok(RsaSigningKey { key: openssl_key, public_key_der })
    }

    /// RSASSA-PKCS1-v1_5 over the concatenation of `parts` (RFC 8017 §8.2).
    pub fn sign(&self, digest: SignatureDigest, parts: &[&[u8]]) -> Result<Vec<u8>, KeyError> {
        let fail = |e: openssl::error::ErrorStack| KeyError::Unsupported(format!("OpenSSL signing failed: {e}"));
        let mut signer = openssl::sign::Signer::new(digest.message_digest(), &self.key).map_err(fail)?;
        for part in parts {
            signer.update(part).map_err(fail)?;
        }
        signer.sign_to_vec().map_err(fail)
    }
}

impl rcgen::PublicKeyData for RsaSigningKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key_der
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// Lets rcgen issue certificates with this key: sha256WithRSAEncryption (docs/wire-formats.md §7.8).
impl rcgen::SigningKey for RsaSigningKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        RsaSigningKey::sign(self, SignatureDigest::Sha256, &[message]).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::Pkcs1v15Sign;
    use sha1::Digest;

    /// PKCS#1 v1.5 signatures are deterministic: OpenSSL must give the `rsa` crate's bytes exactly.
    #[test]
    fn openssl_signatures_equal_the_rsa_crate_signatures() {
        let key = keys::generate_rsa(1024);
        let signing = RsaSigningKey::new(&key).unwrap();
        let message: &[&[u8]] = &[b"header", b"", b"body"];
        let whole = b"headerbody";
        let expected_sha1 = key.sign(Pkcs1v15Sign::new::<sha1::Sha1>(), &sha1::Sha1::digest(whole)).unwrap();
        assert_eq!(signing.sign(SignatureDigest::Sha1, message).unwrap(), expected_sha1);
        let expected_sha256 = key.sign(Pkcs1v15Sign::new::<sha2::Sha256>(), &sha2::Sha256::digest(whole)).unwrap();
        assert_eq!(signing.sign(SignatureDigest::Sha256, message).unwrap(), expected_sha256);
        let expected_sha512 = key.sign(Pkcs1v15Sign::new::<sha2::Sha512>(), &sha2::Sha512::digest(whole)).unwrap();
        assert_eq!(signing.sign(SignatureDigest::Sha512, message).unwrap(), expected_sha512);
        assert!(!format!("{signing:?}").contains("PRIVATE"));
    }
}
