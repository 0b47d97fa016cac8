//! The state directory: what a build keeps between runs so that nothing is regenerated without a
//! reason (the CA, issued certificates and their serials, the published trust files, token status).
//!
//! Writes are atomic (write to a temporary file, then rename) so that an interrupted run never
//! leaves half a key behind. Private keys are created with mode 0600.
//!
//! The operator keeps the same state in Secrets and ConfigMaps: it loads them into an in-memory
//! state, builds, and applies what the build wrote (`StateDir::in_memory`, `StateDir::files`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where retired identities go: `retired/<label>/<file>`.
pub const RETIRED: &str = "retired/";

/// State files by name, with their sensitivity.
pub type StateFiles = BTreeMap<String, (Vec<u8>, Sensitivity)>;

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// Set for an in-memory state: every read and write goes here instead of `root`.
    memory: Option<Arc<Mutex<StateFiles>>>,
    /// Set for a state kept elsewhere (the CAPF pods' records in Secrets): every read and write goes there.
    remote: Option<Arc<dyn StateBackend>>,
}

/// A state kept elsewhere than a directory or memory: files by name, read and written one at a time.
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    fn write(&self, name: &str, bytes: &[u8], sensitivity: Sensitivity) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Replaces a file with what `change` makes of it, as one step against other writers of the
    /// same file: a backend shared by several processes retries `change` on the newer content.
    fn update(
        &self,
        name: &str,
        sensitivity: Sensitivity,
        change: &mut dyn FnMut(Option<Vec<u8>>) -> io::Result<Vec<u8>>,
    ) -> io::Result<()> {
        let bytes = change(self.read(name)?)?;
        self.write(name, &bytes, sensitivity)
    }
}

/// Whether a file holds secret material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    Public,
    /// Readable by the owner only (mode 0600).
    Private,
}

impl StateDir {
    /// Opens (and creates) the directory, readable by its owner only.
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root)?;
        set_mode(root, 0o700)?;
        Ok(StateDir { root: root.to_path_buf(), memory: None, remote: None })
    }

    /// A state held in memory, starting with `files`.
    pub fn in_memory(files: StateFiles) -> Self {
        StateDir { root: PathBuf::new(), memory: Some(Arc::new(Mutex::new(files))), remote: None }
    }

    /// A state kept by `backend`.
    pub fn remote(backend: Arc<dyn StateBackend>) -> Self {
        StateDir { root: PathBuf::new(), memory: None, remote: Some(backend) }
    }

    /// Whether this state lives in memory (the operator's, filled from Secrets, or a plan's).
    pub fn is_in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Every file of an in-memory state (empty for a directory).
    pub fn files(&self) -> StateFiles {
        self.memory.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The file's bytes, or `None` when it does not exist.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        if let Some(remote) = &self.remote {
            return remote.read(name);
        }
        if let Some(memory) = &self.memory {
            return Ok(memory.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|(bytes, _)| bytes.clone()));
        }
        match fs::read(self.path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn read_string(&self, name: &str) -> io::Result<Option<String>> {
        self.read(name)?
            .map(|bytes| String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}"))))
            .transpose()
    }

    /// Writes atomically; an unchanged file is left alone so its modification time tells when it last changed.
    pub fn write(&self, name: &str, bytes: &[u8], sensitivity: Sensitivity) -> io::Result<()> {
        if let Some(remote) = &self.remote {
            return remote.write(name, bytes, sensitivity);
        }
        if let Some(memory) = &self.memory {
            memory.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), (bytes.to_vec(), sensitivity));
            return Ok(());
        }
        let target = self.path(name);
        if fs::read(&target).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        let parent = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent)?;
        let temporary = parent.join(format!(".{}.tmp", target.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
        {
            let mut file = create(&temporary, sensitivity)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&temporary, &target)
    }
}

impl StateDir {
    /// Replaces a file with what `change` makes of its content (`None`: no file yet). Against other
    /// processes on a remote state, `change` may run again on newer content; in a directory or in
    /// memory the caller serialises its own updates.
    pub fn update(
        &self,
        name: &str,
        sensitivity: Sensitivity,
        mut change: impl FnMut(Option<Vec<u8>>) -> io::Result<Vec<u8>>,
    ) -> io::Result<()> {
        if let Some(remote) = &self.remote {
            return remote.update(name, sensitivity, &mut change);
        }
        let bytes = change(self.read(name)?)?;
        self.write(name, &bytes, sensitivity)
    }

    /// Removes a file; one that does not exist is no error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        if let Some(remote) = &self.remote {
            return remote.remove(name);
        }
        if let Some(memory) = &self.memory {
            memory.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            return Ok(());
        }
        match fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Sets aside every file under the `prefixes` (directories such as `ca/`, or file names): they
    /// move under `retired/<label>/`, on disk and in memory alike, so that nothing private is
    /// destroyed (the operator keeps them in a Secret of their own).
    pub fn retire(&self, prefixes: &[&str], label: &str) -> io::Result<()> {
        if self.remote.is_some() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a remote state keeps no identity to retire"));
        }
        if let Some(memory) = &self.memory {
            let mut files = memory.lock().unwrap_or_else(|p| p.into_inner());
            let names: Vec<String> =
                files.keys().filter(|name| !name.starts_with(RETIRED) && prefixes.iter().any(|p| name.starts_with(p))).cloned().collect();
            for name in names {
                if let Some(file) = files.remove(&name) {
                    files.insert(format!("{RETIRED}{label}/{name}"), file);
                }
            }
            return Ok(());
        }
        let retired = self.root.join(RETIRED.trim_end_matches('/')).join(label);
        for prefix in prefixes {
            let source = self.root.join(prefix.trim_end_matches('/'));
            if !source.exists() {
                continue;
            }
            let target = retired.join(prefix.trim_end_matches('/'));
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
                set_mode(&self.root.join(RETIRED.trim_end_matches('/')), 0o700)?;
            }
            fs::rename(&source, &target)?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn create(path: &Path, sensitivity: Sensitivity) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = match sensitivity {
        Sensitivity::Public => 0o644,
        Sensitivity::Private => 0o600,
    };
    // Remove a leftover temporary first: `mode` only applies to files that open creates.
    let _ = fs::remove_file(path);
    fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_owner_only_and_writes_replace_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        assert_eq!(state.read("ca.key").unwrap(), None);
        state.write("ca.key", b"secret", Sensitivity::Private).unwrap();
        state.write("certs/ca.crt", b"public", Sensitivity::Public).unwrap();
        assert_eq!(state.read("ca.key").unwrap().unwrap(), b"secret");
        let mode = |name: &str| fs::metadata(state.path(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("certs/ca.crt"), 0o644);
        assert_eq!(fs::metadata(state.root()).unwrap().permissions().mode() & 0o777, 0o700);
        state.write("ca.key", b"renewed", Sensitivity::Private).unwrap();
        assert_eq!(state.read_string("ca.key").unwrap().unwrap(), "renewed");
        let leftovers: Vec<_> = fs::read_dir(state.root())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn retiring_keeps_the_old_files_on_disk_and_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = StateDir::open(&dir.path().join("state")).unwrap();
        let in_memory = StateDir::in_memory(StateFiles::new());
        for state in [&on_disk, &in_memory] {
            state.write("ca/ca.key", b"old key", Sensitivity::Private).unwrap();
            state.write("tokens/registry.yaml", b"kept", Sensitivity::Private).unwrap();
            state.retire(&["ca/"], "0123456789abcdef").unwrap();
            assert_eq!(state.read("ca/ca.key").unwrap(), None, "the identity is set aside");
            assert_eq!(state.read("retired/0123456789abcdef/ca/ca.key").unwrap().as_deref(), Some(&b"old key"[..]), "not destroyed");
            assert_eq!(state.read("tokens/registry.yaml").unwrap().as_deref(), Some(&b"kept"[..]));
        }
        assert_eq!(in_memory.files()["retired/0123456789abcdef/ca/ca.key"].1, Sensitivity::Private);
    }
}
