//! Trust Verification Service (docs/wire-formats.md §8): phones ask whether a certificate that is not in their ITL is
//! trusted, and for which roles, so those certificates can rotate without a new ITL.
//!
//! `frame` is the wire format, `directory` what TVS vouches for, `session` the pure protocol logic and
//! `server` the TLS listener around it.

pub mod directory;
pub mod frame;
pub mod server;
pub mod session;

pub use directory::{CertificateDirectory, DirectoryEntry, DirectoryError, InvalidReason, Verdict};
pub use frame::{Command, Element, Frame, FrameError, FrameHeader, VerifyStatus};
pub use server::{
    ConnectionEnd, ConnectionReport, DEFAULT_PORT, ServerLimits, SharedDirectory, SharedTls, TvsServer, TvsServerError, TvsTls,
    serve_connection, serve_listener, tls_server_config,
};
pub use session::{CloseReason, SessionNote, SessionOutput, TvsSession, answer, looks_like_phone_device_name};
