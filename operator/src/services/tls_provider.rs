//! The rustls provider every TLS server here uses: ring for the handshake's key exchange, ciphers
//! and signature checks, and OpenSSL (through `rustls-openssl`) for the server's own private-key
//! signature. A CAPF enrolment costs two RSA private-key operations, the handshake's and the LSC's;
//! OpenSSL's RSA is about twice as fast as ring's on x86-64 (it has the AVX-512 and ADX paths),
//! so the handshake signature goes to the same library that signs the LSCs.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// Shared by every server config, built once.
pub fn server_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(CryptoProvider { key_provider: &rustls_openssl::KeyProvider, ..rustls::crypto::ring::default_provider() }))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pki::keys;
    use rustls::SignatureScheme;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    /// The handshake signature OpenSSL makes verifies with the `rsa` crate, for each RSA scheme a
    /// client may ask.
    #[test]
    fn openssl_handshake_signatures_verify_elsewhere() {
        use rsa::{Pkcs1v15Sign, Pss};
        use sha2::{Digest, Sha256, Sha512};
        let key = keys::generate_rsa(2048);
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys::pkcs8_der(&key)));
        let signing = server_provider().key_provider.load_private_key(der).unwrap();
        let public = rsa::RsaPublicKey::from(&key);
        let message = b"transcript hash";
        for scheme in [SignatureScheme::RSA_PSS_SHA256, SignatureScheme::RSA_PSS_SHA512, SignatureScheme::RSA_PKCS1_SHA256] {
            let signer = signing.choose_scheme(&[scheme]).unwrap_or_else(|| panic!("{scheme:?} is offered"));
            let signature = signer.sign(message).unwrap();
            let verified = match scheme {
                SignatureScheme::RSA_PSS_SHA256 => public.verify(Pss::new::<Sha256>(), &Sha256::digest(message), &signature),
                SignatureScheme::RSA_PSS_SHA512 => public.verify(Pss::new::<Sha512>(), &Sha512::digest(message), &signature),
                _ => public.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message), &signature),
            };
            assert!(verified.is_ok(), "{scheme:?} signature verifies");
        }
    }
}
