//! The media relay: RTP and RTCP between the two ends of a call through ports of its own, SRTP
//! forwarded as it came and checked against each end's key, so that an encrypted call never carries
//! RTP (P.1-20, P.1-21).

pub mod control;
pub mod pool;
pub mod port;
pub mod relay;
pub mod sdp;
pub mod srtp;
