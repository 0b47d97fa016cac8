//! Security tokens (SAST): making one (`callguard token create`), checking what its Secret holds,
//! unlocking its key under the retry counter, and choosing the CTL's signer (Chapter 3, P.16-5).

pub mod create;
pub mod material;
pub mod registry;
pub mod signing;
pub mod unlock;
