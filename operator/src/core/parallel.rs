//! Work that is independent per item, shared out over the cores: the build's phones, validation's
//! objects. Written by hand on `std::thread::scope`: a thread pool crate would add a dependency for
//! one function.

/// Runs `job` over `items` on every core, keeping the order.
pub fn on_every_core<T: Sync, R: Send>(items: &[T], job: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = items.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.chunks(chunk).map(|items| scope.spawn(|| items.iter().map(&job).collect::<Vec<_>>())).collect();
        // A panic in a job is a bug in this crate, not bad input: let it surface.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}
