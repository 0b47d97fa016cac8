//! Faults a test asks the server to inject, each by chance, from a seeded generator so that a run
//! can be repeated: what a controller meets on a real, busy or failing API server.
//!
//! - `internal_error`: a request answered 500 before anything is done;
//! - `conflict`: a write answered 409 Conflict before anything is done;
//! - `lost_answer`: a request carried out, its answer replaced by a 504 Timeout (the client cannot
//!   tell that its write happened: the case an idempotent controller must survive);
//! - `expired_watch`: a watch from a resourceVersion answered 410 Gone, as after a compaction;
//! - `dropped_watch`: a watch ended early, after up to a second, as a dropped connection.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to inject, and to whom.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Only the requests of this bearer identity; every request when None.
    pub identity: Option<String>,
    pub internal_error: f64,
    pub conflict: f64,
    pub lost_answer: f64,
    pub expired_watch: f64,
    pub dropped_watch: f64,
    pub seed: u64,
}

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    InternalError,
    Conflict,
    LostAnswer,
    ExpiredWatch,
    /// The watch ends after this long.
    DroppedWatch(Duration),
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::InternalError => "internal_error",
            Fault::Conflict => "conflict",
            Fault::LostAnswer => "lost_answer",
            Fault::ExpiredWatch => "expired_watch",
            Fault::DroppedWatch(_) => "dropped_watch",
        }
    }
}

/// The faults in force, their generator, and how many of each were injected.
#[derive(Default)]
pub struct Injector {
    active: Option<(Faults, StdRng)>,
    pub injected: BTreeMap<&'static str, u64>,
}

impl Injector {
    pub fn set(&mut self, faults: Option<Faults>) {
        self.active = faults.map(|faults| {
            let rng = StdRng::seed_from_u64(faults.seed);
            (faults, rng)
        });
    }

    /// The fault for one request of `identity`, if one is drawn. `write`: the request changes
    /// state; `watch_from_version`: a watch that resumes from a resourceVersion.
    pub fn draw(&mut self, identity: Option<&str>, write: bool, watch: bool, watch_from_version: bool) -> Option<Fault> {
        let (faults, rng) = self.active.as_mut()?;
        if faults.identity.as_deref().is_some_and(|only| Some(only) != identity) {
            return None;
        }
        let roll: f64 = rng.r#gen();
        let fault = if watch {
            if watch_from_version && roll < faults.expired_watch {
                Some(Fault::ExpiredWatch)
            } else if roll < faults.expired_watch + faults.dropped_watch {
                Some(Fault::DroppedWatch(Duration::from_millis(rng.gen_range(50..1000))))
            } else {
                None
            }
        } else if roll < faults.internal_error {
            Some(Fault::InternalError)
        } else if write && roll < faults.internal_error + faults.conflict {
            Some(Fault::Conflict)
        } else if roll < faults.internal_error + faults.conflict + faults.lost_answer {
            Some(Fault::LostAnswer)
        } else {
            None
        };
        if let Some(fault) = fault {
            *self.injected.entry(fault.name()).or_default() += 1;
        }
        fault
    }
}
