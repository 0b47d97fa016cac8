//! A phone's configuration file, `SEP<MAC>.cnf.xml` (docs/wire-formats.md §5.5, §5.6, §6, §9.3): a typed model
//! (`model`), its XML rendering (`render`) and its construction from the resources (`resolve`).
//!
//! Serving (docs/wire-formats.md §5.6): with encryption on, `render_full` is the plaintext of `.enc.sgn` and
//! `render_stub` the payload of `.sgn` (and, unsigned, of the plain name); with it off, `render_full`
//! is the `.sgn` payload, `certHash` is empty and `encrConfig` false.

mod error;
mod model;
mod render;
mod resolve;

pub use error::{DeviceKeyKind, MemberList, RenderError};
pub use model::*;
pub use render::{render_full, render_stub};
pub use resolve::{
    ClearCredentials, ConfigCondition, DeviceCertificate, PhoneConfigInput, Resolved, ResolvedSecrets, TrustFacts, WithheldReason, resolve,
};

#[cfg(test)]
mod tests;
