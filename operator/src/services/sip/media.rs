//! A call's media through the relay (`services::media`), driven over its control interface as the
//! proxy forwards an INVITE and its answer: two legs allocated for the offer, each end's SDP pointed
//! at its leg, each end's address and SRTP key given to the relay, and the legs released when the
//! call fails or ends. A call whose
//! keys pass (both legs encrypt, P.1-6) and whose offer carries them is relayed as encrypted: the
//! relay forwards only SRTP under each end's key.

use std::sync::Arc;

use rsipstack::sip::{self, StatusCode};

use super::server::Decision;
use crate::services::media::control::{LegDescription, MediaClient};
use crate::services::media::relay::{MediaError, Side};
use crate::services::media::sdp::{self, AudioStream};

/// The relay's part in one call.
pub(super) struct RelayedCall {
    relay: Arc<MediaClient>,
    id: String,
    /// The relay's address, which each end is sent.
    address: std::net::IpAddr,
    /// The callee's leg port, then the caller's: each end is sent the port of its own leg.
    ports: [u16; 2],
    encrypted: bool,
    /// The caller's stream as offered; the answer picks its key among its `a=crypto` lines by tag.
    caller: AudioStream,
}

impl RelayedCall {
    /// Legs for the offer in `forward` (an INVITE's SDP, already without keys where they may not
    /// pass), which is rewritten to send the callee's media to its leg. None: no audio to relay.
    pub(super) async fn offer(
        relay: &Arc<MediaClient>,
        call_id: &str,
        forward: &mut sip::Request,
        keys_pass: bool,
    ) -> Result<Option<RelayedCall>, Decision> {
        let Some(stream) = sdp::audio_stream(&forward.body) else { return Ok(None) };
        let encrypted = keys_pass && !stream.crypto.is_empty();
        let (address, ports) = relay.allocate(call_id, encrypted).await.map_err(|e| refusal(&e))?;
        let call = RelayedCall { relay: relay.clone(), id: call_id.to_string(), address, ports, encrypted, caller: stream.clone() };
        // Until the answer picks one, the caller's first key.
        if let Err(decision) = call.update(Side::Caller, &stream, stream.crypto.first()).await {
            call.release();
            return Err(decision);
        }
        if let Some(body) = sdp::through_relay(&forward.body, address, ports[Side::Callee as usize]) {
            super::proxy::set_body(&mut forward.headers, &mut forward.body, body);
        }
        Ok(Some(call))
    }

    /// A response with the callee's SDP: both ends' addresses and keys to the relay, and the body
    /// rewritten to send the caller's media to its leg.
    pub(super) async fn answer(&self, response: &mut sip::Response) {
        let Some(stream) = sdp::audio_stream(&response.body) else { return };
        let chosen = stream.crypto.first();
        let caller_key = chosen.and_then(|line| sdp::crypto_tag(line)).and_then(|tag| sdp::crypto_with_tag(&self.caller.crypto, tag));
        let mut updated = self.update(Side::Callee, &stream, chosen).await;
        if let (Ok(()), Some(key)) = (&updated, caller_key) {
            updated = self.update(Side::Caller, &self.caller, Some(key)).await;
        }
        if updated.is_err() {
            tracing::info!(call = %self.id, "the answer's media cannot be relayed as negotiated: its packets will be dropped");
        }
        if let Some(body) = sdp::through_relay(&response.body, self.address, self.ports[Side::Caller as usize]) {
            super::proxy::set_body(&mut response.headers, &mut response.body, body);
        }
    }

    async fn update(&self, side: Side, stream: &AudioStream, key_line: Option<&String>) -> Result<(), Decision> {
        let leg =
            LegDescription { address: stream.address, rtcp_mux: stream.rtcp_mux, crypto: key_line.filter(|_| self.encrypted).cloned() };
        self.relay.update(&self.id, side, leg).await.map_err(|e| refusal(&e))
    }

    /// Frees the legs, in the background: the relay waits for their loops to stop.
    pub(super) fn release(&self) {
        release(&self.relay, &self.id);
    }
}

/// Frees call `id`'s legs, if the relay has them (a BYE, a failed INVITE).
pub(super) fn release(relay: &Arc<MediaClient>, id: &str) {
    let (relay, id) = (relay.clone(), id.to_string());
    tokio::spawn(async move {
        if let Err(e) = relay.release(&id).await {
            tracing::info!(call = %id, "media not released: {e}");
        }
    });
}

/// What the caller is told when the relay cannot take the call.
fn refusal(error: &MediaError) -> Decision {
    tracing::info!("call refused: {error}");
    let status = match error {
        MediaError::Exhausted(_) | MediaError::Bind { .. } | MediaError::Unreachable { .. } => StatusCode::ServiceUnavailable,
        _ => StatusCode::NotAcceptableHere,
    };
    Decision::refuse(status, &error.to_string())
}
