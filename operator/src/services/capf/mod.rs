//! CAPF, the Certificate Authority Proxy Function (docs/wire-formats.md §7): the TCP 3804 TLS service through which phones
//! get, replace, return and delete their LSCs.
//!
//! `frame` is the wire format, `auth` the authentication checks, `session` the pure protocol state machine, and
//! `server` the TLS listener that drives sessions.

pub mod auth;
pub mod frame;
pub mod server;
pub mod session;

pub use auth::{AuthError, TrustAnchors};
pub use frame::{Body, Command, Frame, FrameError, Reason};
pub use server::{CapfServer, ConnectionReport, Timeouts};
pub use session::{CapfContext, DeviceDirectory, DeviceRecord, Outcome, RequestedKey, ScheduledOperation, Session, SessionConfig};
