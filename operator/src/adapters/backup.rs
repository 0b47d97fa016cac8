//! `callguard backup` and `callguard restore` for a state directory (`callguard local` and `build`):
//! every namespace's state read into one encrypted file (`core::backup`), and written back into a
//! state directory that holds none of those namespaces yet, under the directory's lock.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::core::build::lock::StateLock;
use crate::core::build::state::{Sensitivity, StateDir, StateFiles};

/// Files of a state tree no one writes by hand: deeper than this is refused, not walked.
const MAX_DEPTH: usize = 8;

fn namespaces_root(state_root: &Path) -> PathBuf {
    state_root.join("namespaces")
}

/// Every namespace's files under `state_root`. Links are refused (a state directory holds none, and
/// following one could loop or leave the directory); a temporary file of an interrupted write is
/// left out.
pub fn read_state_root(state_root: &Path) -> Result<BTreeMap<String, StateFiles>, String> {
    let root = namespaces_root(state_root);
    let entries = std::fs::read_dir(&root).map_err(|e| format!("{}: {e} (no state to back up)", root.display()))?;
    let mut namespaces = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", root.display()))?;
        let namespace = entry.file_name().to_string_lossy().into_owned();
        let mut files = StateFiles::new();
        walk(&entry.path(), "", 0, &mut files)?;
        namespaces.insert(namespace, files);
    }
    if namespaces.is_empty() {
        return Err(format!("{}: no namespace: nothing to back up", root.display()));
    }
    Ok(namespaces)
}

fn walk(directory: &Path, prefix: &str, depth: usize, files: &mut StateFiles) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{}: nested deeper than {MAX_DEPTH} levels: not a state directory", directory.display()));
    }
    let mut entries: Vec<_> = std::fs::read_dir(directory)
        .map_err(|e| format!("{}: {e}", directory.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", directory.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let metadata = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let relative = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        if metadata.file_type().is_symlink() {
            return Err(format!("{}: a link; a state directory holds none, and none is followed", path.display()));
        }
        if metadata.is_dir() {
            walk(&path, &relative, depth + 1, files)?;
        } else if !name.starts_with('.') {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let private = metadata.permissions().mode() & 0o077 == 0;
            files.insert(relative, (bytes, if private { Sensitivity::Private } else { Sensitivity::Public }));
        }
    }
    Ok(())
}

/// Writes `namespaces` under `state_root`, which must hold none of them: a restore never mixes a
/// backup with a state that exists. How many files it wrote.
pub fn write_state_root(state_root: &Path, namespaces: &BTreeMap<String, StateFiles>) -> Result<usize, String> {
    std::fs::create_dir_all(state_root).map_err(|e| format!("{}: {e}", state_root.display()))?;
    let _lock = StateLock::acquire(state_root).map_err(|e| e.to_string())?;
    let root = namespaces_root(state_root);
    for namespace in namespaces.keys() {
        if !crate::core::backup::is_state_name(namespace) || namespace.contains('/') {
            return Err(format!("the backup names namespace {namespace:?}, which is not a directory name"));
        }
        let target = root.join(namespace);
        if std::fs::read_dir(&target).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(format!(
                "{} already holds a state: restore into a state directory without namespace {namespace} (nothing was written)",
                target.display()
            ));
        }
    }
    let mut written = 0;
    for (namespace, files) in namespaces {
        let state = StateDir::open(&root.join(namespace)).map_err(|e| format!("{}: {e}", root.join(namespace).display()))?;
        for (name, (bytes, sensitivity)) in files {
            state.write(name, bytes, *sensitivity).map_err(|e| format!("{namespace}/{name}: {e}"))?;
            written += 1;
        }
    }
    Ok(written)
}

/// A passphrase from its file, without the line end an editor adds.
pub fn read_passphrase(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned())
}
