//! Where served files come from: the caller's `FileSource`, and an in-memory one whose whole contents
//! can be swapped while transfers run (each transfer keeps the `Arc<[u8]>` it started with).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The files a TFTP server serves. Rendering on demand and caching are the implementor's business;
/// `get` is called once per read request, from the server's task, so it should be quick.
pub trait FileSource: Send + Sync + 'static {
    /// The file's bytes, or `None` when it does not exist (answered with ERROR 1).
    fn get(&self, name: &str) -> Option<Arc<[u8]>>;
}

/// A file set held in memory and replaced as a whole.
#[derive(Debug, Default)]
pub struct MemoryFiles {
    files: RwLock<Arc<BTreeMap<String, Arc<[u8]>>>>,
}

impl MemoryFiles {
    pub fn new(files: BTreeMap<String, Arc<[u8]>>) -> Self {
        Self { files: RwLock::new(Arc::new(files)) }
    }

    /// Replaces every file at once: requests after this see only `files`; transfers already
    /// running finish with the bytes they started with.
    pub fn replace(&self, files: BTreeMap<String, Arc<[u8]>>) {
        // A poisoned lock still holds a whole map (the swap below cannot half-happen), so keep using it.
        *self.files.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(files);
    }

    /// Adds or replaces one file (copy-on-write of the map).
    pub fn insert(&self, name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) {
        let mut guard = self.files.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut files = BTreeMap::clone(&guard);
        files.insert(name.into(), bytes.into());
        *guard = Arc::new(files);
    }

    /// The current file set.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<[u8]>>> {
        Arc::clone(&self.files.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl FileSource for MemoryFiles {
    fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        self.snapshot().get(name).cloned()
    }
}

/// A source replaced as a whole, such as one build's files by the next build's.
pub struct SwappableSource<S> {
    current: RwLock<Arc<S>>,
}

impl<S: FileSource> SwappableSource<S> {
    pub fn new(source: S) -> Self {
        Self { current: RwLock::new(Arc::new(source)) }
    }

    /// Requests after this go to `source`; transfers already running keep the bytes they started with.
    pub fn replace(&self, source: S) {
        // A poisoned lock still holds a whole source (the swap cannot half-happen), so keep using it.
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(source);
    }

    pub fn current(&self) -> Arc<S> {
        Arc::clone(&self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl<S: FileSource> FileSource for SwappableSource<S> {
    fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        self.current().get(name)
    }
}

impl<F: Fn(&str) -> Option<Arc<[u8]>> + Send + Sync + 'static> FileSource for F {
    fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        self(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_swaps_the_whole_set_and_keeps_handed_out_bytes_alive() {
        let files = MemoryFiles::new(BTreeMap::from([("a".to_owned(), Arc::from(&b"old"[..]))]));
        let held = files.get("a").expect("a exists");
        files.replace(BTreeMap::from([("b".to_owned(), Arc::from(&b"new"[..]))]));
        assert_eq!(&*held, b"old");
        assert!(files.get("a").is_none());
        assert_eq!(files.get("b").as_deref(), Some(&b"new"[..]));
        files.insert("c", &b"c"[..]);
        assert_eq!(files.snapshot().len(), 2);
    }
}
