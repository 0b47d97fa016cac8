//! Waiting on a TFTP server's counters: the server counts a transfer when it ends (a file served at
//! its last ACK), which can come after the client already has what it asked for.

use std::time::{Duration, Instant};

use callguard::services::tftp::{CounterSnapshot, Counters};

/// The counters once `done` holds of them, waited for up to `wait`; `what` names what is waited for.
pub fn counters_when(counters: &Counters, wait: Duration, what: &str, done: impl Fn(&CounterSnapshot) -> bool) -> CounterSnapshot {
    let until = Instant::now() + wait;
    loop {
        let snapshot = counters.snapshot();
        if done(&snapshot) {
            return snapshot;
        }
        assert!(Instant::now() < until, "waited {wait:?} for {what}: {snapshot:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
