//! The data-plane services as they run in their pods (`callguard serve ...`): the same code as in
//! `callguard local`, fed from the Kubernetes API instead of a directory.

pub mod capf;
pub mod tftp;
pub mod tvs;
