//! Calls between registered phones and to and from trunks: a stateful proxy that record-routes
//! (RFC 3261 §16), so that every request of the dialog passes here and is checked the same way.
//! The caller is authenticated like a REGISTER (its certificate over TLS, its digest answer when
//! its profile asks one, P.8-1); the callee is the trunk one of whose destinations the Request-URI
//! names, else the first live binding of its line (no forking). A call to a trunk goes over the
//! profile's outgoing transport, over TLS with the node's certificate (P.14-1); when the trunk
//! challenges, its SipRealm answers (P.15-5) with the INVITE one CSeq further, and the caller's
//! later requests in that dialog are renumbered toward the trunk and back.
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
use super::trunk::RealmCredentials;
use crate::api::{DeviceSecurityMode, OutgoingTransport};

/// Where an INVITE goes: a registered phone or a trunk.
struct Callee {
    subject: String,
    mode: DeviceSecurityMode,
    transport: Transport,
    destination: SipAddr,
    /// The Request-URI forwarded: the phone's Contact, or the trunk's URI as the caller dialled it.
    uri: sip::Uri,
    /// Whether keys may go to it: a phone over TLS that encrypts; never a trunk (P.13-4).
    confidential: bool,
    /// What answers its challenges: a trunk's SipRealm (P.15-5).
    realm: Option<RealmCredentials>,
}

/// A dialog with a trunk whose INVITE went again with credentials, one CSeq further than the
/// caller's: the caller's From tag, and how far its requests' numbers move toward the trunk.
#[derive(Clone, Debug)]
pub(super) struct Renumbered {
    caller_tag: String,
    offset: u32,
}

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
pub(super) fn set_body(headers: &mut sip::Headers, body: &mut Vec<u8>, new: Vec<u8>) {
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
        match self.authenticate(&server.original, server.connection.as_ref(), &from_line) {
            Ok(caller) => {
                let confidential = self.confidential(caller.transport, caller.source);
                let origin = Origin { subject: caller.phone.subject, mode: caller.phone.mode, transport: caller.transport, confidential };
                self.route_invite(server, origin).await
            }
            Err(decision) => self.answer(&mut server, decision).await,
        }
    }

    /// Where an INVITE to `uri` goes: the trunk one of whose destinations it names (Table 14-1),
    /// else the phone registered for its line.
    fn callee_of(&self, uri: &sip::Uri) -> Result<Callee, Decision> {
        let directory = self.directory();
        let host = uri.host_with_port.host.to_string();
        let port = uri.host_with_port.port.as_ref().map(|p| p.value());
        if let Some((trunk, destination)) = directory.trunk_toward(&host, port) {
            let transport = match trunk.outgoing {
                OutgoingTransport::Tls => Transport::Tls,
                OutgoingTransport::Tcp => Transport::Tcp,
                OutgoingTransport::Udp => Transport::Udp,
            };
            let addr = sip::HostWithPort::try_from(format!("{}:{}", destination.host, destination.port))
                .map_err(|e| Decision::refuse(StatusCode::ServerInternalError, &format!("{}: destination: {e}", trunk.subject)))?;
            return Ok(Callee {
                subject: trunk.subject.clone(),
                mode: trunk.mode,
                transport,
                destination: SipAddr { r#type: Some(transport), addr },
                uri: uri.clone(),
                // A SIP trunk carries no SRTP in this release (P.13-4).
                confidential: false,
                realm: trunk.realm.clone(),
            });
        }
        let Some(line) = uri.user().map(str::to_owned) else {
            return Err(Decision::refuse(StatusCode::NotFound, "the Request-URI names no line"));
        };
        let Some(binding) = self.registrar().lookup(&line).into_iter().next() else {
            let known = directory.phones_with_line(&line).next().is_some();
            let status = if known { StatusCode::TemporarilyUnavailable } else { StatusCode::NotFound };
            return Err(Decision::refuse(status, &format!("line {line} is not registered")));
        };
        let Some(phone) = directory.phone(&binding.device) else {
            return Err(Decision::refuse(StatusCode::TemporarilyUnavailable, "the callee left the directory"));
        };
        Ok(Callee {
            subject: phone.subject.clone(),
            mode: phone.mode,
            transport: binding.transport,
            destination: destination(&binding),
            uri: sip::Uri::try_from(binding.contact.as_str())
                .map_err(|e| Decision::refuse(StatusCode::ServerInternalError, &format!("the callee's Contact: {e}")))?,
            confidential: self.confidential(binding.transport, Some(binding.source)),
            realm: None,
        })
    }

    /// An INVITE from an authenticated `origin`: find the callee, forward, relay.
    pub(super) async fn route_invite(&self, mut server: Transaction, caller: Origin) -> rsipstack::Result<()> {
        let callee = match self.callee_of(&server.original.uri) {
            Ok(callee) => callee,
            Err(decision) => return self.answer(&mut server, decision).await,
        };
        let both_legs_tls = caller.transport == Transport::Tls && callee.transport == Transport::Tls;
        let security = call_security(caller.mode, callee.mode, both_legs_tls);
        // Keys pass only where both legs encrypt them (P.1-6).
        let keys_pass = caller.confidential && callee.confidential;
        server.send_trying().await?;

        let mut forward = server.original.clone();
        forward.uri = callee.uri.clone();
        // The credentials were for this hop.
        forward.headers.retain(|h| !matches!(h, Header::Authorization(_) | Header::ProxyAuthorization(_)));
        if !keys_pass && let Some(body) = without_crypto(&forward.body) {
            tracing::info!(from = %caller.subject, to = %callee.subject, "a=crypto removed from the offer: a leg is not encrypted TLS (P.1-6)");
            set_body(&mut forward.headers, &mut forward.body, body);
        }
        let call_id = server.original.call_id_header().map(|c| c.value().to_string()).unwrap_or_default();
        let media = match self.media_relay() {
            Some(relay) => match super::media::RelayedCall::offer(&relay, &call_id, &mut forward, keys_pass).await {
                Ok(media) => media.map(std::sync::Arc::new),
                Err(decision) => return self.answer(&mut server, decision).await,
            },
            None => None,
        };
        let (inbound, outbound) = (self.local_address(caller.transport), self.local_address(callee.transport));
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
        client.destination = Some(callee.destination.clone());
        client.send().await?;

        // Requests that come on the server transaction: a CANCEL, or the ACK of a 2xx. They follow
        // the INVITE last sent, which answering a trunk's challenge replaces.
        let original_cseq = cseq_of(&server.original);
        let current = std::sync::Arc::new(std::sync::Mutex::new(client.original.clone()));
        let upstream = server.tu_sender.clone();
        let (cancel_endpoint, ours, sent, destination) =
            (endpoint.clone(), self.local_addresses(), current.clone(), callee.destination.clone());
        let (ack_inbound, ack_outbound) = (inbound.clone(), outbound.clone());
        tokio::spawn(async move {
            while let Some(SipMessage::Request(mut request)) = server.receive().await {
                let forwarded = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match request.method {
                    Method::Cancel => {
                        let _ = send_cancel(&cancel_endpoint, &forwarded, Some(destination.clone())).await;
                    }
                    Method::Ack
                        if server.last_response.as_ref().is_some_and(|r| r.status_code.kind() == sip::StatusCodeKind::Successful) =>
                    {
                        strip_own_routes(&mut request, &ours);
                        let _ = renumber(&mut request, cseq_of(&forwarded));
                        let _ = forward_ack(&cancel_endpoint, request, &ack_inbound, &ack_outbound, Some(destination.clone())).await;
                    }
                    _ => {}
                }
            }
        });
        let mut challenged = false;
        let mut media_answered = false;
        while let Some(message) = client.receive().await {
            let SipMessage::Response(mut response) = message else { continue };
            if response.status_code == StatusCode::Trying {
                continue;
            }
            let challenge = matches!(response.status_code, StatusCode::Unauthorized | StatusCode::ProxyAuthenticationRequired);
            if challenge
                && !challenged
                && let Some(realm) = &callee.realm
            {
                challenged = true;
                let sent = client.original.clone();
                match answer_challenge(&endpoint, &sent, &response, realm, &outbound) {
                    Ok(retry) => {
                        tracing::info!(to = %callee.subject, realm = %realm.realm, "the trunk challenged: answered with its SipRealm (P.15-5)");
                        self.remember_renumbered(&retry, original_cseq);
                        *current.lock().unwrap_or_else(|e| e.into_inner()) = retry.clone();
                        let key = TransactionKey::from_request(&retry, TransactionRole::Client)?;
                        client = Transaction::new_client(key, retry, endpoint.clone(), None);
                        client.destination = Some(callee.destination.clone());
                        client.send().await?;
                        continue;
                    }
                    Err(why) => tracing::info!(to = %callee.subject, "the trunk's challenge is not answered: {why}"),
                }
            }
            pop_top_via(&mut response.headers);
            // The caller sees its own CSeq, whatever the trunk was sent.
            let _ = renumber_response(&mut response, original_cseq);
            if !keys_pass && let Some(body) = without_crypto(&response.body) {
                set_body(&mut response.headers, &mut response.body, body);
            }
            if let Some(media) = &media {
                media.answer(&mut response).await;
                if response.status_code.kind() == sip::StatusCodeKind::Successful && !media_answered {
                    media_answered = true;
                    // Its re-INVITEs go through the same legs.
                    self.relayed.lock().unwrap_or_else(|e| e.into_inner()).insert(call_id.clone(), media.clone());
                }
            }
            if response.status_code == StatusCode::OK {
                self.count_call(security);
                tracing::info!(from = %caller.subject, to = %callee.subject, ?security, "call answered");
            }
            let _ = upstream.send(TransactionEvent::Respond(response));
        }
        // No call came of it: its legs go back.
        if let Some(media) = media.filter(|_| !media_answered) {
            media.release();
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
            // Not a phone's Contact: a trunk's, reached as its URI says (its transport parameter).
            None => {
                let address = SipAddr::try_from(&request.uri).ok();
                let inbound = server.connection.as_ref().map(|c| c.transport()).unwrap_or(Transport::Udp);
                (address.as_ref().and_then(|a| a.r#type).unwrap_or(inbound), address)
            }
        };
        let inbound = server.connection.as_ref().and_then(|c| self.local_address(c.transport()));
        let (Some(inbound), Some(outbound)) = (inbound, self.local_address(outbound_transport)) else {
            return self.answer(&mut server, Decision::refuse(StatusCode::ServerInternalError, "no listener for the transport")).await;
        };
        // The caller's requests in a dialog whose INVITE a trunk challenged go with the trunk's numbers.
        let offset = self.renumbering(&request);
        let caller_cseq = cseq_of(&request);
        if offset > 0 {
            renumber(&mut request, caller_cseq + offset)?;
        }
        // A BYE ends the call's media, whatever its answer.
        if request.method == Method::Bye
            && let (Some(relay), Ok(call_id)) = (self.media_relay(), request.call_id_header())
        {
            super::media::release(&relay, call_id.value());
        }
        // A re-INVITE of a relayed call: its SDP through the same legs.
        let relayed = match (request.method == Method::Invite, request.call_id_header()) {
            (true, Ok(call_id)) => self.relayed.lock().unwrap_or_else(|e| e.into_inner()).get(&call_id.value().to_string()).cloned(),
            _ => None,
        };
        if let Some(media) = &relayed
            && let Err(decision) = media.reoffer(&mut request).await
        {
            return self.answer(&mut server, decision).await;
        }
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
            if offset > 0 {
                renumber_response(&mut response, caller_cseq)?;
            }
            if let Some(media) = &relayed {
                media.answer(&mut response).await;
            }
            server.respond(response).await?;
        }
        Ok(())
    }

    /// Remembers that the dialog of `retry` (an INVITE sent again with credentials) runs
    /// `cseq_of(retry) - original` ahead of the caller's numbers toward the trunk.
    fn remember_renumbered(&self, retry: &sip::Request, original: u32) {
        let (Ok(call_id), Some(caller_tag)) = (retry.call_id_header().map(|c| c.value().to_string()), from_tag(retry)) else { return };
        let offset = cseq_of(retry).saturating_sub(original);
        self.renumbered.lock().unwrap_or_else(|e| e.into_inner()).insert(call_id, Renumbered { caller_tag, offset });
    }

    /// How far the CSeq of `request` moves: a request of the caller's side of a renumbered dialog.
    fn renumbering(&self, request: &sip::Request) -> u32 {
        let Ok(call_id) = request.call_id_header().map(|c| c.value().to_string()) else { return 0 };
        let renumbered = self.renumbered.lock().unwrap_or_else(|e| e.into_inner());
        match renumbered.get(&call_id) {
            Some(dialog) if from_tag(request).as_deref() == Some(dialog.caller_tag.as_str()) => dialog.offset,
            _ => 0,
        }
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

/// The CSeq number of `request`; 0 when it has none.
pub(super) fn cseq_of(request: &sip::Request) -> u32 {
    request.cseq_header().ok().and_then(|c| c.seq().ok()).unwrap_or(0)
}

/// Sets the CSeq number of `request`.
#[allow(clippy::result_large_err)] // the error type is rsipstack's, which every caller returns
fn renumber(request: &mut sip::Request, seq: u32) -> rsipstack::Result<()> {
    request.cseq_header_mut()?.mut_seq(seq)?;
    Ok(())
}

/// Sets the CSeq number of `response`.
#[allow(clippy::result_large_err)]
fn renumber_response(response: &mut sip::Response, seq: u32) -> rsipstack::Result<()> {
    response.cseq_header_mut()?.mut_seq(seq)?;
    Ok(())
}

/// The From tag of `request`.
pub(super) fn from_tag(request: &sip::Request) -> Option<String> {
    request.from_header().ok()?.tag().ok()??.value().to_string().into()
}

/// `sent` again, with the answer to the trunk's challenge in `response` made with `realm`'s user and
/// password (P.15-5): the next CSeq, a new branch in our Via, Authorization for a 401 and
/// Proxy-Authorization for a 407 (RFC 3261 §22.2). Written here rather than with rsipstack's dialog
/// helper, which rewrites every Via of a request and so would lose the caller's.
fn answer_challenge(
    endpoint: &EndpointInnerRef,
    sent: &sip::Request,
    response: &sip::Response,
    realm: &RealmCredentials,
    outbound: &SipAddr,
) -> Result<sip::Request, String> {
    use rsipstack::sip::headers::auth::{Algorithm, AuthQop, Qop};
    use rsipstack::sip::prelude::ToTypedHeader;
    use rsipstack::sip::typed::{Authorization, ProxyAuthorization};
    let proxy = response.status_code == StatusCode::ProxyAuthenticationRequired;
    let challenge = response.headers.iter().find_map(|header| match header {
        Header::WwwAuthenticate(h) if !proxy => h.typed().ok().map(|t| (t.realm, t.nonce, t.opaque, t.qop, t.algorithm, t.scheme)),
        Header::ProxyAuthenticate(h) if proxy => h.typed().ok().map(|t| (t.realm, t.nonce, t.opaque, t.qop, t.algorithm, t.scheme)),
        _ => None,
    });
    let Some((challenge_realm, nonce, opaque, qop, algorithm, scheme)) = challenge else {
        return Err("no readable challenge".into());
    };
    if challenge_realm != realm.realm {
        return Err(format!("it names realm {challenge_realm:?}, the trunk's SipRealm is {:?} (Table 15-3)", realm.realm));
    }
    let mut retry = sent.clone();
    renumber(&mut retry, cseq_of(sent) + 1).map_err(|e| e.to_string())?;
    let cnonce: String = (0..8).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let auth_qop = match qop {
        Some(Qop::Auth) => Some(AuthQop::Auth { cnonce, nc: 1 }),
        Some(Qop::AuthInt) => Some(AuthQop::AuthInt { cnonce, nc: 1 }),
        None => None,
    };
    let algorithm = algorithm.unwrap_or(Algorithm::Md5);
    let user = &realm.credentials;
    let digest = sip::DigestGenerator {
        username: &user.name,
        password: &user.password,
        algorithm,
        nonce: &nonce,
        method: &Method::Invite,
        qop: auth_qop.as_ref(),
        uri: &retry.uri,
        realm: &challenge_realm,
    }
    .compute();
    let authorization = Authorization {
        scheme,
        username: user.name.clone(),
        realm: challenge_realm,
        nonce,
        uri: retry.uri.clone(),
        response: digest,
        algorithm: Some(algorithm),
        opaque,
        qop: auth_qop,
    };
    retry.headers.retain(|h| !matches!(h, Header::Authorization(_) | Header::ProxyAuthorization(_)));
    let header: Header = if proxy {
        ProxyAuthorization {
            scheme: authorization.scheme,
            username: authorization.username,
            realm: authorization.realm,
            nonce: authorization.nonce,
            uri: authorization.uri,
            response: authorization.response,
            algorithm: authorization.algorithm,
            opaque: authorization.opaque,
            qop: authorization.qop,
        }
        .into()
    } else {
        authorization.into()
    };
    retry.headers.push(header);
    // Our Via, on top, gets a new branch: a new transaction. The caller's stay as they were.
    let position = retry.headers.iter().position(|h| matches!(h, Header::Via(_))).ok_or("no Via")?;
    retry.headers.0[position] = endpoint.get_via(Some(outbound.clone()), None).map_err(|e| e.to_string())?.into();
    Ok(retry)
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
