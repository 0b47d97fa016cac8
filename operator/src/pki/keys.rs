//! RSA private keys: generation, PEM, and password-encrypted PKCS#8 for token keys (P.3-17).
//!
//! Every signer of a Cisco trust file is RSA (spec/04 §3.3), so one key type serves them all.

use pkcs8::pkcs5::pbes2;
use pkcs8::{DecodePrivateKey, EncodePrivateKey, EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};
use rand::RngCore;
use rsa::RsaPrivateKey;
use rsa::traits::PublicKeyParts;

/// PBKDF2 rounds for encrypted token keys: OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
const PBKDF2_ROUNDS: u32 = 600_000;

#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The password does not decrypt the key. Says nothing about the key itself.
    WrongPassword,
    /// The text is not a PEM private key of the expected form.
    Malformed(String),
    /// The key is not RSA of an allowed size.
    Unsupported(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::WrongPassword => write!(f, "wrong password: the key does not decrypt"),
            KeyError::Malformed(why) => write!(f, "malformed private key: {why}"),
            KeyError::Unsupported(why) => write!(f, "unsupported private key: {why}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A fresh RSA key of `bits` bits with e = 65537.
pub fn generate_rsa(bits: usize) -> RsaPrivateKey {
    RsaPrivateKey::new(&mut rand::thread_rng(), bits).expect("RSA key generation with the OS RNG does not fail")
}

/// Size of the key's modulus in bits.
pub fn modulus_bits(key: &RsaPrivateKey) -> usize {
    key.n().bits()
}

/// Unencrypted PKCS#8 DER, the form rcgen signs with.
pub fn pkcs8_der(key: &RsaPrivateKey) -> Vec<u8> {
    key.to_pkcs8_der().expect("an RSA key always encodes").as_bytes().to_vec()
}

/// Unencrypted PKCS#8 PEM (`PRIVATE KEY`), for the state directory and Kubernetes Secrets.
pub fn pkcs8_pem(key: &RsaPrivateKey) -> String {
    key.to_pkcs8_pem(LineEnding::LF).expect("an RSA key always encodes").to_string()
}

/// Reads an unencrypted PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM.
pub fn from_pem(pem: &str) -> Result<RsaPrivateKey, KeyError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| KeyError::Malformed(format!("expected an RSA PRIVATE KEY or PRIVATE KEY PEM: {e}")))
}

/// PKCS#8 `ENCRYPTED PRIVATE KEY` PEM: PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC, which
/// `openssl pkey -passin` reads.
pub fn encrypt_pem(key: &RsaPrivateKey, password: &[u8]) -> String {
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    rand::thread_rng().fill_bytes(&mut iv);
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, &iv).expect("fixed parameters are valid");
    let der = key.to_pkcs8_der().expect("an RSA key always encodes");
    let info = PrivateKeyInfo::try_from(der.as_bytes()).expect("just encoded");
    let encrypted = info.encrypt_with_params(params, password).expect("encryption with valid parameters does not fail");
    encrypted.to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF).expect("PEM encoding does not fail").to_string()
}

/// Decrypts an `ENCRYPTED PRIVATE KEY` PEM. A wrong password gives [`KeyError::WrongPassword`];
/// a PEM that is not an encrypted key gives [`KeyError::Malformed`].
pub fn decrypt_pem(pem: &str, password: &[u8]) -> Result<RsaPrivateKey, KeyError> {
    let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|e| KeyError::Malformed(e.to_string()))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::Malformed(format!("expected an ENCRYPTED PRIVATE KEY PEM, found {label}")));
    }
    let info = EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|e| KeyError::Malformed(e.to_string()))?;
    // PBES2 with CBC reports a wrong password as a padding or DER failure of the decrypted bytes.
    let plain = info.decrypt(password).map_err(|_| KeyError::WrongPassword)?;
    RsaPrivateKey::from_pkcs8_der(plain.as_bytes()).map_err(|_| KeyError::WrongPassword)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_pem_round_trips_and_refuses_a_wrong_password() {
        let key = generate_rsa(1024);
        let pem = encrypt_pem(&key, b"correct horse");
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert_eq!(decrypt_pem(&pem, b"correct horse").unwrap(), key);
        assert_eq!(decrypt_pem(&pem, b"correct horsf"), Err(KeyError::WrongPassword));
        assert!(matches!(decrypt_pem(&pkcs8_pem(&key), b"x"), Err(KeyError::Malformed(_))));
    }

    #[test]
    fn plain_pem_round_trips() {
        let key = generate_rsa(1024);
        assert_eq!(modulus_bits(&key), 1024);
        assert_eq!(from_pem(&pkcs8_pem(&key)).unwrap(), key);
        assert!(from_pem("not a key").is_err());
    }
}
