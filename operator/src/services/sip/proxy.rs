//! Calls between registered phones: a stateful proxy that record-routes (RFC 3261 §16), so that
//! every request of the dialog passes here and is checked the same way. The caller is
//! authenticated like a REGISTER (its certificate over TLS, its digest answer when its profile
//! asks one, P.8-1); the callee is the first live binding of the Request-URI's line (no forking).
//!
//! SRTP keys travel in SDP `a=crypto` lines (RFC 4568), in the clear unless the signalling is
//! encrypted: they pass only when both legs are TLS, and are removed from the offer and the answer
//! otherwise (P.1-6). A call is as secure as its less secure end: Encrypted only between two
//! Encrypted phones over TLS; that level is logged and counted for each answered call.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{self, Header, Method, SipMessage, StatusCode, Transport};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::transaction::{Transaction, TransactionEvent};
use rsipstack::transport::SipAddr;

use super::registrar::Binding;
use super::server::{Decision, SipService};
use crate::api::DeviceSecurityMode;

/// Who opened a call: a phone or a trunk, authenticated.
pub(super) struct Origin {
    pub subject: String,
    pub mode: DeviceSecurityMode,
    pub transport: Transport,
    /// Whether its leg encrypts: TLS, and not the NULL cipher of the legacy listener.
    pub confidential: bool,
}

/// The security of a call: the lower of its two ends, and no more than the signalling path carries.
pub fn call_security(caller: DeviceSecurityMode, callee: DeviceSecurityMode, both_legs_tls: bool) -> DeviceSecurityMode {
    if !both_legs_tls {
        return DeviceSecurityMode::NonSecure;
    }
    let rank = |mode: DeviceSecurityMode| match mode {
        DeviceSecurityMode::NonSecure => 0,
        DeviceSecurityMode::Authenticated => 1,
        DeviceSecurityMode::Encrypted => 2,
    };
    if rank(caller) <= rank(callee) { caller } else { callee }
}

/// `body` without its `a=crypto` lines; None when it has none.
pub fn without_crypto(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let is_crypto = |line: &str| line.trim_start().to_ascii_lowercase().starts_with("a=crypto:");
    if !text.lines().any(is_crypto) {
        return None;
    }
    let kept: Vec<&str> = text.split_inclusive('\n').filter(|line| !is_crypto(line)).collect();
    Some(kept.concat().into_bytes())
}

/// Replaces the body of `headers`' message, keeping Content-Length true.
fn set_body(headers: &mut sip::Headers, body: &mut Vec<u8>, new: Vec<u8>) {
    *body = new;
    headers.unique_push(Header::ContentLength((body.len() as u32).into()));
}

impl SipService {
    /// An INVITE from a phone that opens a dialog: authenticate the caller, then [`Self::route_invite`].
    pub(super) async fn invite(&self, mut server: Transaction) -> rsipstack::Result<()> {
        let request = &server.original;
        let Some(from_line) = request.from_header().and_then(|f| f.uri()).ok().and_then(|uri| uri.user().map(str::to_owned)) else {
            return self.answer(&mut server, Decision::refuse(StatusCode::BadRequest, "the From URI names no line")).await;
        };
        match self.authenticate(&server, &from_line) {
            Ok(caller) => {
                let confidential = self.confidential(caller.transport, caller.source);
                let origin = Origin { subject: caller.phone.subject, mode: caller.phone.mode, transport: caller.transport, confidential };
                self.route_invite(server, origin).await
            }
            Err(decision) => self.answer(&mut server, decision).await,
        }
    }

    /// An INVITE from an authenticated `origin`: find the callee, forward, relay.
    pub(super) async fn route_invite(&self, mut server: Transaction, caller: Origin) -> rsipstack::Result<()> {
        let request = &server.original;
        let Some(target_line) = request.uri.user().map(str::to_owned) else {
            return self.answer(&mut server, Decision::refuse(StatusCode::NotFound, "the Request-URI names no line")).await;
        };
        let Some(binding) = self.registrar().lookup(&target_line).into_iter().next() else {
            let known = self.directory().phones_with_line(&target_line).next().is_some();
            let status = if known { StatusCode::TemporarilyUnavailable } else { StatusCode::NotFound };
            return self.answer(&mut server, Decision::refuse(status, &format!("line {target_line} is not registered"))).await;
        };
        let Some(callee) = self.directory().phone(&binding.device).cloned() else {
            return self.answer(&mut server, Decision::refuse(StatusCode::TemporarilyUnavailable, "the callee left the directory")).await;
        };
        let both_legs_tls = caller.transport == Transport::Tls && binding.transport == Transport::Tls;
        let security = call_security(caller.mode, callee.mode, both_legs_tls);
        // Keys pass only where both legs encrypt them (P.1-6).
        let keys_pass = caller.confidential && self.confidential(binding.transport, Some(binding.source));
        server.send_trying().await?;

        let mut forward = server.original.clone();
        forward.uri = sip::Uri::try_from(binding.contact.as_str())?;
        // The credentials were for this hop.
        forward.headers.retain(|h| !matches!(h, Header::Authorization(_) | Header::ProxyAuthorization(_)));
        if !keys_pass && let Some(body) = without_crypto(&forward.body) {
            tracing::info!(from = %caller.subject, to = %callee.subject, "a=crypto removed from the offer: a leg is not encrypted TLS (P.1-6)");
            set_body(&mut forward.headers, &mut forward.body, body);
        }
        let (inbound, outbound) = (self.local_address(caller.transport), self.local_address(binding.transport));
        let (Some(inbound), Some(outbound)) = (inbound, outbound) else {
            return self
                .answer(&mut server, Decision::refuse(StatusCode::ServerInternalError, "no listener for the callee's transport"))
                .await;
        };
        let endpoint = server.endpoint_inner.clone();
        let Some(forward) = prepare_forward(&endpoint, forward, &inbound, &outbound, true)? else {
            return server.reply(StatusCode::TooManyHops).await;
        };
        let key = TransactionKey::from_request(&forward, TransactionRole::Client)?;
        let mut client = Transaction::new_client(key, forward, endpoint.clone(), None);
        client.destination = Some(destination(&binding));
        client.send().await?;

        // Requests that come on the server transaction: a CANCEL, or the ACK of a 2xx.
        let (forwarded, destination) = (client.original.clone(), client.destination.clone());
        let upstream = server.tu_sender.clone();
        let (cancel_endpoint, ours) = (endpoint.clone(), self.local_addresses());
        tokio::spawn(async move {
            while let Some(SipMessage::Request(mut request)) = server.receive().await {
                match request.method {
                    Method::Cancel => {
                        let _ = send_cancel(&cancel_endpoint, &forwarded, destination.clone()).await;
                    }
                    Method::Ack
                        if server.last_response.as_ref().is_some_and(|r| r.status_code.kind() == sip::StatusCodeKind::Successful) =>
                    {
                        strip_own_routes(&mut request, &ours);
                        let _ = forward_ack(&cancel_endpoint, request, &inbound, &outbound, destination.clone()).await;
                    }
                    _ => {}
                }
            }
        });
        while let Some(message) = client.receive().await {
            let SipMessage::Response(mut response) = message else { continue };
            if response.status_code == StatusCode::Trying {
                continue;
            }
            pop_top_via(&mut response.headers);
            if !keys_pass && let Some(body) = without_crypto(&response.body) {
                set_body(&mut response.headers, &mut response.body, body);
            }
            if response.status_code == StatusCode::OK {
                self.count_call(security);
                tracing::info!(from = %caller.subject, to = %callee.subject, ?security, "call answered");
            }
            let _ = upstream.send(TransactionEvent::Respond(response));
        }
        Ok(())
    }

    /// A request inside a dialog (BYE, re-INVITE, INFO…): it carries our Record-Route as its Route;
    /// forward it to its Request-URI, the other end's Contact, over the flow that end registered.
    pub(super) async fn in_dialog(&self, mut server: Transaction) -> rsipstack::Result<()> {
        let ours = self.local_addresses();
        let mut request = server.original.clone();
        if !strip_own_routes(&mut request, &ours) {
            // Not routed through us: we proxy only the dialogs we record-routed.
            return self.answer(&mut server, Decision::refuse(StatusCode::Forbidden, "not a dialog routed through this proxy")).await;
        }
        let binding = self.registrar().find_contact(&request.uri.to_string());
        let (outbound_transport, destination) = match &binding {
            Some(binding) => (binding.transport, Some(destination(binding))),
            None => (server.connection.as_ref().map(|c| c.transport()).unwrap_or(Transport::Udp), None),
        };
        let inbound = server.connection.as_ref().and_then(|c| self.local_address(c.transport()));
        let (Some(inbound), Some(outbound)) = (inbound, self.local_address(outbound_transport)) else {
            return self.answer(&mut server, Decision::refuse(StatusCode::ServerInternalError, "no listener for the transport")).await;
        };
        let endpoint = server.endpoint_inner.clone();
        let Some(forward) = prepare_forward(&endpoint, request, &inbound, &outbound, false)? else {
            return server.reply(StatusCode::TooManyHops).await;
        };
        let key = TransactionKey::from_request(&forward, TransactionRole::Client)?;
        let mut client = Transaction::new_client(key, forward, endpoint, None);
        client.destination = destination;
        client.send().await?;
        while let Some(message) = client.receive().await {
            let SipMessage::Response(mut response) = message else { continue };
            if response.status_code == StatusCode::Trying {
                continue;
            }
            pop_top_via(&mut response.headers);
            server.respond(response).await?;
        }
        Ok(())
    }

    fn count_call(&self, security: DeviceSecurityMode) {
        let counter = match security {
            DeviceSecurityMode::Encrypted => &self.counters.calls_encrypted,
            DeviceSecurityMode::Authenticated => &self.counters.calls_authenticated,
            DeviceSecurityMode::NonSecure => &self.counters.calls_non_secure,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where requests to a binding go: the address and transport its REGISTER came from, which for TCP
/// and TLS is the connection the phone keeps open.
fn destination(binding: &Binding) -> SipAddr {
    SipAddr { r#type: Some(binding.transport), addr: binding.source.into() }
}

/// Max-Forwards, our Via for the outbound leg, and (opening a dialog) our Record-Route: one entry,
/// or two when the legs use different transports (RFC 5658), the inbound one first so that each
/// end's route set starts with the entry facing it. None when Max-Forwards is spent.
#[allow(clippy::result_large_err)] // the error type is rsipstack's, which every caller returns
fn prepare_forward(
    endpoint: &EndpointInnerRef,
    mut request: sip::Request,
    inbound: &SipAddr,
    outbound: &SipAddr,
    record_route: bool,
) -> rsipstack::Result<Option<sip::Request>> {
    let hops = request.max_forwards_header().ok().and_then(|m| m.value().trim().parse::<u32>().ok()).unwrap_or(70);
    if hops == 0 {
        return Ok(None);
    }
    request.headers.unique_push(Header::MaxForwards((hops - 1).into()));
    if record_route {
        if inbound != outbound {
            request.headers.push_front(endpoint.get_record_route_with_addr(inbound.clone()).into());
        }
        request.headers.push_front(endpoint.get_record_route_with_addr(outbound.clone()).into());
    }
    request.headers.push_front(endpoint.get_via(Some(outbound.clone()), None)?.into());
    Ok(Some(request))
}

/// Removes the leading Route entries that name this proxy; true when there was one.
fn strip_own_routes(request: &mut sip::Request, ours: &[SocketAddr]) -> bool {
    let Ok(routes) = request.typed_route_headers() else { return false };
    let is_ours = |route: &sip::typed::Route| {
        SipAddr::try_from(&route.uri).ok().and_then(|a| a.get_socketaddr().ok()).is_some_and(|a| ours.contains(&a))
    };
    let skip = routes.iter().take_while(|r| is_ours(r)).count();
    if skip == 0 {
        return false;
    }
    request.headers.remove_all(|h| matches!(h, Header::Route(_)));
    for route in routes.into_iter().skip(skip) {
        request.headers.push(Header::Route(route.into()));
    }
    true
}

/// Removes our Via (the top one) from a response before it goes upstream. Via lines may hold several
/// values, comma-separated.
fn pop_top_via(headers: &mut sip::Headers) {
    let Some(position) = headers.iter().position(|h| matches!(h, Header::Via(_))) else { return };
    let Header::Via(via) = &headers.0[position] else { return };
    let whole = via.value().trim().to_string();
    let first = via.first_value().map(|f| f.value().len()).unwrap_or(whole.len());
    let rest = whole.get(first..).unwrap_or_default().trim().trim_start_matches(',').trim().to_string();
    if rest.is_empty() {
        headers.0.remove(position);
    } else {
        headers.0[position] = Header::Via(sip::headers::Via::new(rest));
    }
}

/// CANCEL for the INVITE we forwarded: same Via branch, Request-URI, Call-ID, From, To and CSeq number.
async fn send_cancel(endpoint: &EndpointInnerRef, invite: &sip::Request, destination: Option<SipAddr>) -> rsipstack::Result<()> {
    let mut cancel = invite.clone();
    cancel.method = Method::Cancel;
    cancel.body.clear();
    let top_via = invite.top_via_header()?;
    cancel.headers.retain(|h| {
        matches!(h, Header::CallId(_) | Header::From(_) | Header::To(_) | Header::CSeq(_) | Header::Route(_) | Header::MaxForwards(_))
    });
    cancel.headers.push_front(Header::Via(top_via));
    cancel.cseq_header_mut()?.mut_method(Method::Cancel)?;
    let mut transaction =
        Transaction::new_client(TransactionKey::from_request(&cancel, TransactionRole::Client)?, cancel, endpoint.clone(), None);
    transaction.destination = destination;
    transaction.send().await?;
    while transaction.receive().await.is_some() {}
    Ok(())
}

/// The ACK of a 2xx is its own transaction's: forwarded without one (RFC 3261 §16.7 step 10).
async fn forward_ack(
    endpoint: &EndpointInnerRef,
    ack: sip::Request,
    inbound: &SipAddr,
    outbound: &SipAddr,
    destination: Option<SipAddr>,
) -> rsipstack::Result<()> {
    let Some(ack) = prepare_forward(endpoint, ack, inbound, outbound, false)? else { return Ok(()) };
    let target = match destination {
        Some(target) => target,
        None => SipAddr::try_from(&ack.uri)?,
    };
    let (connection, resolved) = endpoint.transport_layer.lookup(&target, None).await?;
    connection.send(ack.into(), Some(&resolved)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceSecurityMode::*;

    #[test]
    fn a_call_is_as_secure_as_its_lesser_end_and_its_path() {
        assert_eq!(call_security(Encrypted, Encrypted, true), Encrypted);
        assert_eq!(call_security(Encrypted, Authenticated, true), Authenticated);
        assert_eq!(call_security(Authenticated, Encrypted, true), Authenticated);
        assert_eq!(call_security(Encrypted, NonSecure, true), NonSecure);
        assert_eq!(call_security(Encrypted, Encrypted, false), NonSecure);
    }

    #[test]
    fn crypto_lines_are_removed_and_the_rest_kept() {
        let sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=rtpmap:0 PCMU/8000\r\n";
        let stripped = String::from_utf8(without_crypto(sdp).unwrap()).unwrap();
        assert_eq!(stripped, "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n");
        assert_eq!(without_crypto(b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n"), None);
        assert_eq!(without_crypto(&[0xff, 0xfe]), None);
    }
}
