//! RSA private keys: generation, PEM, and password-encrypted PKCS#8 for token keys (P.3-17).
//!
//! Every signer of a Cisco trust file is RSA (docs/wire-formats.md §3.3), so one key type serves them all.

use pkcs8::pkcs5::pbes2;
use pkcs8::{DecodePrivateKey, EncodePrivateKey, EncryptedPrivateKeyInfo, LineEnding, PrivateKeyInfo};
use rand::RngCore;
use rsa::RsaPrivateKey;
use rsa::traits::PublicKeyParts;

/// PBKDF2 rounds for encrypted token keys: OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
pub const PBKDF2_ROUNDS: u32 = 600_000;
/// The rounds an encrypted key may ask for. Below, the password is cheap to guess from a copy of the
/// Secret; above, one decryption costs seconds of the operator's CPU (every count up to `u32::MAX`
/// parses, and would be attempted). Keys Callguard writes use [`PBKDF2_ROUNDS`].
pub const PBKDF2_ROUNDS_ACCEPTED: std::ops::RangeInclusive<u32> = 100_000..=2_000_000;

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

/// The largest RSA key read from a Secret or the state: every key Callguard makes is at most this
/// size, and a larger one only costs time in every signature.
pub const MAX_KEY_BITS: usize = 4096;

/// Reads an unencrypted PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM.
pub fn from_pem(pem: &str) -> Result<RsaPrivateKey, KeyError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let key = RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| KeyError::Malformed(format!("expected an RSA PRIVATE KEY or PRIVATE KEY PEM: {e}")))?;
    bounded(key)
}

fn bounded(key: RsaPrivateKey) -> Result<RsaPrivateKey, KeyError> {
    match modulus_bits(&key) {
        bits if bits > MAX_KEY_BITS => {
            Err(KeyError::Unsupported(format!("an RSA key of {bits} bits; at most {MAX_KEY_BITS} are accepted")))
        }
        _ => Ok(key),
    }
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
    check_encryption_parameters(&info)?;
    // PBES2 with CBC reports a wrong password as a padding or DER failure of the decrypted bytes.
    let plain = info.decrypt(password).map_err(|_| KeyError::WrongPassword)?;
    bounded(RsaPrivateKey::from_pkcs8_der(plain.as_bytes()).map_err(|_| KeyError::WrongPassword)?)
}

/// Accepts only what [`encrypt_pem`] writes: PBES2 with PBKDF2-HMAC-SHA256 and a round count in
/// [`PBKDF2_ROUNDS_ACCEPTED`], and AES-CBC. The parameters come from a Secret anyone with write access
/// to it controls, so they are checked before any work is done: scrypt with N = 2^40 would allocate a
/// pebibyte, and PBKDF2 with 2^32 - 1 rounds would take hours.
pub fn check_encryption_parameters(info: &EncryptedPrivateKeyInfo<'_>) -> Result<(), KeyError> {
    use pkcs8::pkcs5::EncryptionScheme;
    const HOW: &str = "re-encrypt the key with `callguard token create`, or `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256 -iter 600000` (P.3-17)";
    let EncryptionScheme::Pbes2(parameters) = &info.encryption_algorithm else {
        return Err(KeyError::Unsupported(format!("the key is encrypted with PBES1; only PBES2 is accepted: {HOW}")));
    };
    let pbes2::Kdf::Pbkdf2(kdf) = &parameters.kdf else {
        return Err(KeyError::Unsupported(format!("the key derivation is not PBKDF2 (scrypt is refused): {HOW}")));
    };
    if kdf.prf != pbes2::Pbkdf2Prf::HmacWithSha256 {
        return Err(KeyError::Unsupported(format!("PBKDF2 uses {:?}; only HMAC-SHA256 is accepted: {HOW}", kdf.prf)));
    }
    if !PBKDF2_ROUNDS_ACCEPTED.contains(&kdf.iteration_count) {
        return Err(KeyError::Unsupported(format!(
            "PBKDF2 asks for {} rounds; between {} and {} are accepted: {HOW}",
            kdf.iteration_count,
            PBKDF2_ROUNDS_ACCEPTED.start(),
            PBKDF2_ROUNDS_ACCEPTED.end()
        )));
    }
    let key_size = match parameters.encryption {
        pbes2::EncryptionScheme::Aes128Cbc { .. } => 16,
        pbes2::EncryptionScheme::Aes192Cbc { .. } => 24,
        pbes2::EncryptionScheme::Aes256Cbc { .. } => 32,
        _ => return Err(KeyError::Unsupported(format!("the cipher is not AES-CBC: {HOW}"))),
    };
    if kdf.key_length.is_some_and(|length| usize::from(length) != key_size) {
        return Err(KeyError::Unsupported(format!("PBKDF2's key length does not match the AES key size: {HOW}")));
    }
    Ok(())
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

    /// An `ENCRYPTED PRIVATE KEY` PEM with `parameters` and random bytes as the ciphertext.
    fn encrypted_with(parameters: pbes2::Parameters<'_>) -> String {
        let info = EncryptedPrivateKeyInfo { encryption_algorithm: parameters.into(), encrypted_data: &[7u8; 48] };
        pkcs8::der::EncodePem::to_pem(&info, LineEnding::LF).unwrap()
    }

    /// Runs `decrypt_pem` on another thread and gives up after 10 s: before the bounds, these inputs
    /// aborted the process (scrypt, a pebibyte allocation) or ran for hours (2^32 - 1 rounds).
    fn decrypt_within_seconds(pem: String) -> Result<RsaPrivateKey, KeyError> {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(decrypt_pem(&pem, b"password"));
        });
        receiver.recv_timeout(std::time::Duration::from_secs(10)).expect("a hostile key is refused at once, not attempted")
    }

    #[test]
    fn hostile_key_derivation_parameters_are_refused_before_any_work() {
        let (salt, iv) = ([1u8; 16], [2u8; 16]);
        let scrypt = pbes2::Parameters {
            kdf: pbes2::Kdf::Scrypt(pbes2::ScryptParams {
                salt: &salt,
                cost_parameter: 1 << 40,
                block_size: 8,
                parallelization: 1,
                key_length: None,
            }),
            encryption: pbes2::EncryptionScheme::Aes256Cbc { iv: &iv },
        };
        let refused = decrypt_within_seconds(encrypted_with(scrypt));
        assert!(matches!(&refused, Err(KeyError::Unsupported(why)) if why.contains("scrypt")), "{refused:?}");

        for rounds in [u32::MAX, 2_000_001, 99_999, 1] {
            let pbkdf2 = pbes2::Parameters {
                kdf: pbes2::Kdf::Pbkdf2(pbes2::Pbkdf2Params {
                    salt: &salt,
                    iteration_count: rounds,
                    key_length: None,
                    prf: pbes2::Pbkdf2Prf::HmacWithSha256,
                }),
                encryption: pbes2::EncryptionScheme::Aes256Cbc { iv: &iv },
            };
            let refused = decrypt_within_seconds(encrypted_with(pbkdf2));
            assert!(matches!(&refused, Err(KeyError::Unsupported(why)) if why.contains(&format!("{rounds} rounds"))), "{refused:?}");
        }
        let sha1 = pbes2::Parameters {
            kdf: pbes2::Kdf::Pbkdf2(pbes2::Pbkdf2Params {
                salt: &salt,
                iteration_count: PBKDF2_ROUNDS,
                key_length: None,
                prf: pbes2::Pbkdf2Prf::HmacWithSha1,
            }),
            encryption: pbes2::EncryptionScheme::Aes256Cbc { iv: &iv },
        };
        assert!(matches!(decrypt_within_seconds(encrypted_with(sha1)), Err(KeyError::Unsupported(_))));
        // What Callguard writes is accepted, and a wrong password is still just that.
        let key = generate_rsa(1024);
        assert_eq!(decrypt_within_seconds(encrypt_pem(&key, b"password")), Ok(key));
    }

    #[test]
    fn plain_pem_round_trips() {
        let key = generate_rsa(1024);
        assert_eq!(modulus_bits(&key), 1024);
        assert_eq!(from_pem(&pkcs8_pem(&key)).unwrap(), key);
        assert!(from_pem("not a key").is_err());
    }
}
