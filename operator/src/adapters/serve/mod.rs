//! The data-plane services as they run in their pods (`callguard serve ...`): the same code as in
//! `callguard local`, fed from the Kubernetes API instead of a directory.

pub mod capf;
pub mod tftp;
pub mod tvs;

/// The first good value of `current` (what the watched Secrets make of it), tried again at every change
/// of them (`changes`) and every five seconds, saying why it is not served yet; `None` on shutdown.
pub(crate) async fn first_good<T>(
    mut current: impl FnMut() -> Result<T, String>,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &crate::ops::shutdown::Shutdown,
) -> Result<Option<T>, String> {
    loop {
        match current() {
            Ok(first) => return Ok(Some(first)),
            Err(e) => {
                tracing::warn!("not serving yet: {e}");
                tokio::select! {
                    result = changes.changed() => if result.is_err() { return Err("the watch stopped".into()) },
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    () = shutdown.wait() => return Ok(None),
                }
            }
        }
    }
}
