//! A backup of the security state: the CA and its serials, the function certificates and their
//! keys, the published trust lists, the token registry, the identity record, what CAPF issued, for
//! every namespace, as one file encrypted with a passphrase. The encryption is age's (scrypt for the
//! passphrase, ChaCha20-Poly1305 for the contents) through the maintained `age` crate: a key never
//! leaves in the clear, and a file altered or opened with another passphrase is refused whole.
//!
//! Inside, before encryption, one JSON document: a format line and, by namespace, each state file
//! with whether it is private. Opening is bounded: a file over [`MAX_BACKUP`] bytes is refused
//! unread.

use std::collections::BTreeMap;

use age::secrecy::SecretString;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::core::build::state::{Sensitivity, StateFiles};

/// The format line of the contents; a backup of another format is refused, not guessed at.
pub const FORMAT: &str = "callguard-backup/1";
/// The largest backup opened: far above any cluster's state (a 30,000-phone state is a few tens of MiB).
pub const MAX_BACKUP: usize = 512 * 1024 * 1024;
/// The shortest passphrase taken: scrypt slows guessing, it does not make a short one safe.
pub const MIN_PASSPHRASE: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("the passphrase has {0} characters; at least {MIN_PASSPHRASE} are needed")]
    ShortPassphrase(usize),
    #[error("the backup is {0} bytes; at most {MAX_BACKUP} are read")]
    TooLarge(usize),
    #[error("the backup cannot be opened: {0} (a wrong passphrase, or a file that is not a Callguard backup or was altered)")]
    Undecryptable(String),
    #[error("the backup's contents are not {FORMAT}: {0}")]
    Format(String),
    #[error("cannot encrypt the backup: {0}")]
    Encrypt(String),
}

#[derive(Serialize, Deserialize)]
struct Contents {
    format: String,
    namespaces: BTreeMap<String, BTreeMap<String, Entry>>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    private: bool,
    base64: String,
}

fn checked(passphrase: &str) -> Result<SecretString, BackupError> {
    let count = passphrase.chars().count();
    if count < MIN_PASSPHRASE {
        return Err(BackupError::ShortPassphrase(count));
    }
    Ok(SecretString::from(passphrase.to_owned()))
}

/// The state of every namespace, encrypted with `passphrase`.
pub fn seal(namespaces: &BTreeMap<String, StateFiles>, passphrase: &str) -> Result<Vec<u8>, BackupError> {
    let recipient = age::scrypt::Recipient::new(checked(passphrase)?);
    let engine = base64::engine::general_purpose::STANDARD;
    let contents = Contents {
        format: FORMAT.into(),
        namespaces: namespaces
            .iter()
            .map(|(namespace, files)| {
                let entries = files
                    .iter()
                    .map(|(name, (bytes, sensitivity))| {
                        (name.clone(), Entry { private: *sensitivity == Sensitivity::Private, base64: engine.encode(bytes) })
                    })
                    .collect();
                (namespace.clone(), entries)
            })
            .collect(),
    };
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&contents).map_err(|e| BackupError::Encrypt(e.to_string()))?);
    age::encrypt(&recipient, &plain).map_err(|e| BackupError::Encrypt(e.to_string()))
}

/// The state of every namespace in `backup`, opened with `passphrase`.
pub fn open(backup: &[u8], passphrase: &str) -> Result<BTreeMap<String, StateFiles>, BackupError> {
    if backup.len() > MAX_BACKUP {
        return Err(BackupError::TooLarge(backup.len()));
    }
    let identity = age::scrypt::Identity::new(SecretString::from(passphrase.to_owned()));
    let plain = zeroize::Zeroizing::new(age::decrypt(&identity, backup).map_err(|e| BackupError::Undecryptable(e.to_string()))?);
    let contents: Contents = serde_json::from_slice(&plain).map_err(|e| BackupError::Format(e.to_string()))?;
    if contents.format != FORMAT {
        return Err(BackupError::Format(format!("the format is {:?}", contents.format)));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    contents
        .namespaces
        .into_iter()
        .map(|(namespace, entries)| {
            let files = entries
                .into_iter()
                .map(|(name, entry)| {
                    if !is_state_name(&name) {
                        return Err(BackupError::Format(format!("namespace {namespace}: {name:?} is not a state file's name")));
                    }
                    let bytes = engine.decode(&entry.base64).map_err(|e| BackupError::Format(format!("{namespace}/{name}: {e}")))?;
                    let sensitivity = if entry.private { Sensitivity::Private } else { Sensitivity::Public };
                    Ok((name, (bytes, sensitivity)))
                })
                .collect::<Result<StateFiles, BackupError>>()?;
            Ok((namespace, files))
        })
        .collect()
}

/// A relative path of plain components: nothing a restore could write outside its directory.
pub fn is_state_name(name: &str) -> bool {
    !name.is_empty() && name.split('/').all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BTreeMap<String, StateFiles> {
        let files = StateFiles::from([
            ("ca/ca.key".to_owned(), (b"stand-in for the CA key".to_vec(), Sensitivity::Private)),
            ("published/ITLFile.tlv".to_owned(), (vec![1, 2, 3, 0, 255], Sensitivity::Public)),
        ]);
        BTreeMap::from([("voice".to_owned(), files)])
    }

    #[test]
    fn a_backup_opens_with_its_passphrase_only_and_holds_no_key_in_the_clear() {
        let sealed = seal(&state(), "correct horse battery").unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"for the CA k"), "no key in the clear");
        assert_eq!(open(&sealed, "correct horse battery").unwrap(), state());
        assert!(matches!(open(&sealed, "wrong horse battery"), Err(BackupError::Undecryptable(_))));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(open(&altered, "correct horse battery"), Err(BackupError::Undecryptable(_))));
        assert_eq!(seal(&state(), "short").unwrap_err(), BackupError::ShortPassphrase(5));
    }

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        for bad in ["", "../ca.key", "ca/../../x", "/etc/passwd", "a//b", "a\\b"] {
            assert!(!is_state_name(bad), "{bad:?}");
        }
        assert!(is_state_name("devices/SEP001122334455.crt"));
    }
}
