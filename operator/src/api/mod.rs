//! The Callguard API: group `callguard.io`, version `v1alpha1`.
//!
//! Every setting of the seed (the CallManager 5.0(1) security guide) is a field here. Closed value
//! sets are enums, ranges are schema bounds, rules inside one object are CEL
//! `x-kubernetes-validations`. Defaults are applied in code through accessor methods, never as
//! schema defaults, so that the live object stays equal to what is in git.
//!
//! Doc comments end with the seed section in parentheses: `validate` quotes it in messages.

mod cluster;
mod common;
pub mod crdgen;
mod gateway;
mod model;
mod phone;
mod phone_profile;
mod realm;
mod srst;
mod token;
mod trunk;
mod trunk_profile;
mod user;

pub use cluster::*;
pub use common::*;
pub use gateway::*;
pub use model::*;
pub use phone::*;
pub use phone_profile::*;
pub use realm::*;
pub use srst::*;
pub use token::*;
pub use trunk::*;
pub use trunk_profile::*;
pub use user::*;

/// The API group of every Callguard resource.
pub const GROUP: &str = "callguard.io";
/// The API version of every Callguard resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "callguard.io/v1alpha1";

/// The CustomResourceDefinitions of every kind, in a stable order.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![
        CallControlCluster::crd(),
        SecurityToken::crd(),
        PhoneSecurityProfile::crd(),
        Phone::crd(),
        SipTrunkSecurityProfile::crd(),
        SipTrunk::crd(),
        SrstReference::crd(),
        H323Gateway::crd(),
        MgcpGateway::crd(),
        EndUser::crd(),
        ApplicationUser::crd(),
        SipRealm::crd(),
    ]
}
