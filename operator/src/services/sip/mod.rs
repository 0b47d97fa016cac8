//! The signaling service: SIP registrar and stateful proxy that enforces the phone and trunk
//! security profiles (Chapters 5, 8, 14, 15).

pub mod digest;
pub mod directory;
pub mod identity;
pub mod proxy;
pub mod registrar;
pub mod server;
pub mod trunk;
