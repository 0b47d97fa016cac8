//! Whether the data plane runs: the `DataPlaneAvailable` condition of a cluster, from the available
//! replicas its Deployments and StatefulSets report, so that `Ready` says what phones can reach and
//! not only what was applied. Pure.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};

use super::conditions::Wanted;

/// The condition type.
pub const DATA_PLANE_AVAILABLE: &str = "DataPlaneAvailable";

/// One workload's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicas {
    /// `Deployment/NAME` or `StatefulSet/NAME`.
    pub workload: String,
    pub desired: i32,
    pub available: i32,
}

impl Replicas {
    pub fn of_deployment(deployment: &Deployment) -> Replicas {
        Replicas {
            workload: format!("Deployment/{}", deployment.metadata.name.clone().unwrap_or_default()),
            desired: deployment.spec.replicas.unwrap_or(1),
            available: deployment.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0),
        }
    }

    pub fn of_stateful_set(set: &StatefulSet) -> Replicas {
        Replicas {
            workload: format!("StatefulSet/{}", set.metadata.name.clone().unwrap_or_default()),
            desired: set.spec.replicas.unwrap_or(1),
            available: set.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0),
        }
    }
}

/// True when every workload has a replica available (naming those below their count); False,
/// naming the workloads without one, when any has none: its service answers no phone.
pub fn condition(workloads: &[Replicas]) -> Wanted {
    let describe = |w: &&Replicas| format!("{}: {} of {} available", w.workload, w.available, w.desired);
    let down: Vec<String> = workloads.iter().filter(|w| w.desired > 0 && w.available <= 0).map(|w| describe(&w)).collect();
    if !down.is_empty() {
        return Wanted::new(DATA_PLANE_AVAILABLE, false, "Unavailable", down.join("; "));
    }
    let short: Vec<String> = workloads.iter().filter(|w| w.available < w.desired).map(|w| describe(&w)).collect();
    if short.is_empty() {
        Wanted::new(DATA_PLANE_AVAILABLE, true, "Available", "")
    } else {
        Wanted::new(DATA_PLANE_AVAILABLE, true, "Degraded", short.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(workload: &str, desired: i32, available: i32) -> Replicas {
        Replicas { workload: workload.into(), desired, available }
    }

    #[test]
    fn a_workload_with_no_replica_available_makes_the_data_plane_unavailable() {
        assert_eq!(condition(&[replicas("Deployment/lab-tftp", 2, 2)]), Wanted::new(DATA_PLANE_AVAILABLE, true, "Available", ""));
        assert_eq!(
            condition(&[replicas("Deployment/lab-tftp", 2, 1), replicas("StatefulSet/lab-sip", 2, 2)]),
            Wanted::new(DATA_PLANE_AVAILABLE, true, "Degraded", "Deployment/lab-tftp: 1 of 2 available")
        );
        assert_eq!(
            condition(&[replicas("Deployment/lab-tftp", 2, 0), replicas("Deployment/lab-capf", 2, 1)]),
            Wanted::new(DATA_PLANE_AVAILABLE, false, "Unavailable", "Deployment/lab-tftp: 0 of 2 available")
        );
        assert!(condition(&[replicas("Deployment/lab-media", 0, 0)]).status, "none asked for, none missing");
        assert!(condition(&[]).status);
    }
}
