//! One writer per state directory. `callguard build` and `callguard local` both read the state,
//! issue what is missing and write it back; two of them at once interleave their writes (two CAs,
//! a record of one and the keys of the other) and leave an identity that no phone trusts. So each
//! takes an exclusive lock on `STATE/lock` before it reads anything, and holds it until it exits.
//!
//! The lock is advisory (`flock(2)`, through `std::fs::File::try_lock`: no unsafe code and no
//! dependency), so it binds only Callguard's commands, and the kernel releases it when its holder
//! exits, however it exits: a lock file left behind by a killed process is free, never stale. The
//! holder writes its PID and command line into the file, for the message of whoever finds it held.
//!
//! `callguard device add-cert` takes no lock: it writes one file atomically, and is meant to run
//! while `local` holds the lock.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The lock file, in the state directory's root.
pub const LOCK_FILE: &str = "lock";

/// The lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Who holds a lock, as it wrote itself into the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; `holder` is what it wrote, when it has written it yet.
    Held {
        state: PathBuf,
        holder: Option<Holder>,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held { state, holder } => {
                let who = match holder {
                    Some(Holder { pid, command }) => format!("PID {pid} ({command})"),
                    None => "another process, which has not written its PID yet".to_owned(),
                };
                write!(
                    f,
                    "the state directory {} is in use by {who}, which holds {}: wait for it to finish or stop it, or use another --state-dir",
                    state.display(),
                    state.join(LOCK_FILE).display()
                )
            }
            LockError::Io { path, source } => write!(f, "cannot lock the state directory ({}): {source}", path.display()),
        }
    }
}

impl std::error::Error for LockError {}

impl StateLock {
    /// Takes the lock of the state directory `root` (created if missing) without waiting, and
    /// writes this process's PID and command line into it.
    pub fn acquire(root: &Path) -> Result<StateLock, LockError> {
        let path = root.join(LOCK_FILE);
        let io_error = |source| LockError::Io { path: path.clone(), source };
        fs::create_dir_all(root).map_err(io_error)?;
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let mut file = options.open(&path).map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held { state: root.to_path_buf(), holder: parse_holder(&text) });
            }
            Err(TryLockError::Error(source)) => return Err(io_error(source)),
        }
        // Ours now: say who we are, replacing what an earlier holder wrote.
        file.set_len(0).and_then(|()| file.write_all(holder_text(std::process::id(), &command_line()).as_bytes())).map_err(io_error)?;
        Ok(StateLock { _file: file })
    }
}

/// This process's command line, arguments separated by spaces.
fn command_line() -> String {
    std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// What the holder writes: its PID on the first line, its command on the second.
fn holder_text(pid: u32, command: &str) -> String {
    format!("{pid}\n{}\n", command.replace('\n', " "))
}

fn parse_holder(text: &str) -> Option<Holder> {
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    Some(Holder { pid, command: lines.next().unwrap_or_default().to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder_and_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let lock = StateLock::acquire(&root).expect("free");
        let text = fs::read_to_string(root.join(LOCK_FILE)).unwrap();
        assert_eq!(parse_holder(&text).map(|h| h.pid), Some(std::process::id()), "{text}");
        // flock locks belong to the open file, so a second open in this process contends like another process.
        match StateLock::acquire(&root) {
            Err(LockError::Held { holder: Some(holder), .. }) => assert_eq!(holder.pid, std::process::id()),
            other => panic!("expected the lock held, got {other:?}"),
        }
        let message = StateLock::acquire(&root).unwrap_err().to_string();
        assert!(message.contains(&format!("in use by PID {}", std::process::id())) && message.contains("--state-dir"), "{message}");
        drop(lock);
        StateLock::acquire(&root).expect("free once dropped");
    }

    #[test]
    fn the_holder_is_read_back_from_what_it_wrote() {
        assert_eq!(
            parse_holder(&holder_text(42, "callguard local\nexamples")),
            Some(Holder { pid: 42, command: "callguard local examples".into() })
        );
        assert_eq!(parse_holder(""), None, "not written yet");
    }
}
