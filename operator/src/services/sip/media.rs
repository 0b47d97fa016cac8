//! A call's media through the relay (`services::media`), driven over its control interface as the
//! proxy forwards an INVITE and its answer: two legs allocated for the offer, each end's SDP pointed
//! at its own leg, each end's address and SRTP key given to the relay, and the legs released when
//! the call fails or ends. A re-INVITE of the dialog (hold, resume, a new address or key) goes
//! through the same legs: its offer and answer are rewritten and the relay told again. A call whose
//! keys pass (both legs encrypt, P.1-6) and whose offer carries them is relayed as encrypted: the
//! relay forwards only SRTP under each end's key; on any other call no `a=crypto` line is forwarded,
//! in a re-INVITE either.

use std::sync::{Arc, Mutex};

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
    /// Each side's leg port, by [`Side`]: the port that side sends to.
    ports: [u16; 2],
    encrypted: bool,
    /// The From tag of the INVITE that made the call: requests bearing it come from the caller.
    caller_tag: Option<String>,
    /// The last offer, and who made it: its answer picks its key among the offer's `a=crypto`
    /// lines by tag.
    offer: Mutex<(Side, AudioStream)>,
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
        let call = RelayedCall {
            relay: relay.clone(),
            id: call_id.to_string(),
            address,
            ports,
            encrypted,
            caller_tag: super::proxy::from_tag(forward),
            offer: Mutex::new((Side::Caller, stream.clone())),
        };
        if let Err(decision) = call.offered(Side::Caller, &stream, forward).await {
            call.release();
            return Err(decision);
        }
        Ok(Some(call))
    }

    /// A re-INVITE of the call, on its way to the other end: its offer rewritten and given to the
    /// relay. Without SDP (an offer left to the answer) it passes as it is.
    pub(super) async fn reoffer(&self, forward: &mut sip::Request) -> Result<(), Decision> {
        self.keep_keys_where_they_pass(&mut forward.headers, &mut forward.body);
        let Some(stream) = sdp::audio_stream(&forward.body) else { return Ok(()) };
        let by = if super::proxy::from_tag(forward) == self.caller_tag { Side::Caller } else { Side::Callee };
        *self.offer.lock().unwrap_or_else(|e| e.into_inner()) = (by, stream.clone());
        self.offered(by, &stream, forward).await
    }

    /// `by`'s offer: its address and first key to the relay (until the answer picks one), and the
    /// body sent on pointing the other end at its own leg.
    async fn offered(&self, by: Side, stream: &AudioStream, forward: &mut sip::Request) -> Result<(), Decision> {
        self.update(by, stream, stream.crypto.first()).await?;
        if let Some(body) = sdp::through_relay(&forward.body, self.address, self.ports[by.other() as usize]) {
            super::proxy::set_body(&mut forward.headers, &mut forward.body, body);
        }
        Ok(())
    }

    /// A response with the answer to the last offer: both ends' addresses and keys to the relay,
    /// and the body rewritten to send the offerer's media to its leg.
    pub(super) async fn answer(&self, response: &mut sip::Response) {
        self.keep_keys_where_they_pass(&mut response.headers, &mut response.body);
        let Some(stream) = sdp::audio_stream(&response.body) else { return };
        let (offerer, offer) = self.offer.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let chosen = stream.crypto.first();
        let offerer_key = chosen.and_then(|line| sdp::crypto_tag(line)).and_then(|tag| sdp::crypto_with_tag(&offer.crypto, tag));
        let mut updated = self.update(offerer.other(), &stream, chosen).await;
        if let (Ok(()), Some(key)) = (&updated, offerer_key) {
            updated = self.update(offerer, &offer, Some(key)).await;
        }
        if updated.is_err() {
            tracing::info!(call = %self.id, "the answer's media cannot be relayed as negotiated: its packets will be dropped");
        }
        if let Some(body) = sdp::through_relay(&response.body, self.address, self.ports[offerer as usize]) {
            super::proxy::set_body(&mut response.headers, &mut response.body, body);
        }
    }

    /// On a call not relayed as encrypted, no key crosses the proxy (P.1-6).
    fn keep_keys_where_they_pass(&self, headers: &mut sip::Headers, body: &mut Vec<u8>) {
        if !self.encrypted
            && let Some(without) = super::proxy::without_crypto(body)
        {
            super::proxy::set_body(headers, body, without);
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
