//! The relay: per call, two legs, each an RTP port and the RTCP port above it, and a packet loop per
//! port that forwards what one end sends to the other end from the other leg's port. The signaling
//! service drives it through [`MediaRelay::allocate`], [`MediaRelay::update`] and
//! [`MediaRelay::release`]; a call whose media stops for the inactivity time is released by itself.
//!
//! The loops read in batches (recvmmsg through quinn-udp) and write what a batch sends to one place
//! in one sendmsg (UDP GSO through quinn-udp), through buffers made once per port: nothing is
//! allocated per packet but the decrypted copy rtc-srtp makes when it checks an encrypted call's
//! packet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::pool::{PoolExhausted, PortPool};
use super::port::{Batch, Port, Sent, Train};
use super::srtp::{SdesKey, SrtpCheck, is_rtcp};

/// How each leg's far end is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latching {
    /// The source of the first packet on a port is the end, whatever its SDP said: symmetric RTP,
    /// for phones behind NAT.
    FirstPacket,
    /// Only the address of the end's SDP is accepted.
    SdpOnly,
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The address the ports are bound on.
    pub bind: IpAddr,
    /// The address the SDP the signaling forwards names: `bind`, or the node's address when the
    /// relay binds every address.
    pub advertised: IpAddr,
    pub ports: RangeInclusive<u16>,
    /// A call none of whose ports has received a packet for this long is released.
    pub inactivity: Duration,
    pub latching: Latching,
}

/// The two ends of a call, in the order of its offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    Caller = 0,
    Callee = 1,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

/// What an end's SDP says of its media.
#[derive(Debug, Clone)]
pub struct LegOffer {
    /// Its RTP address (`c=` and `m=`); RTCP goes to the port above unless `rtcp_mux`.
    pub address: SocketAddr,
    pub rtcp_mux: bool,
    /// The key it sends with (`a=crypto`), on an encrypted call.
    pub key: Option<SdesKey>,
}

impl LegOffer {
    /// Where its RTCP goes without rtcp-mux: the port above its RTP port (RFC 3550 §11).
    fn rtcp_address(&self) -> SocketAddr {
        SocketAddr::new(self.address.ip(), self.address.port().wrapping_add(1))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MediaError {
    #[error(transparent)]
    Exhausted(#[from] PoolExhausted),
    #[error("no media port pair could be bound on {bind}: {reason}")]
    Bind { bind: IpAddr, reason: String },
    #[error("no call {0} in the relay")]
    NoCall(String),
    #[error("call {0} is already in the relay")]
    Duplicate(String),
    #[error("call {call} is encrypted, but its {side:?} offered no SRTP key (a=crypto): its RTP would not be forwarded")]
    NoKey { call: String, side: Side },
    #[error("call {call}, {side:?}: {reason}")]
    Key { call: String, side: Side, reason: String },
    /// The signaling service could not reach a relay through the control interface.
    #[error("no media relay answered at {target}: {reason}")]
    Unreachable { target: String, reason: String },
}

/// What the relay has done with the calls of one security class, for metrics and tests.
#[derive(Debug, Default)]
pub struct ClassCounters {
    pub calls: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// From an address that is not the leg's end (`Latching`).
    pub dropped_foreign: AtomicU64,
    /// Not SRTP under the sender's key on an encrypted call: plain RTP among them.
    pub dropped_not_srtp: AtomicU64,
    /// The other end's address is not known yet.
    pub dropped_no_destination: AtomicU64,
    /// The sending port's buffer was full.
    pub dropped_full: AtomicU64,
}

/// What the relay has done, by security class.
#[derive(Debug, Default)]
pub struct MediaCounters {
    pub encrypted: ClassCounters,
    pub unencrypted: ClassCounters,
    pub calls_timed_out: AtomicU64,
    pub refused_exhausted: AtomicU64,
}

impl MediaCounters {
    pub fn class(&self, encrypted: bool) -> &ClassCounters {
        if encrypted { &self.encrypted } else { &self.unencrypted }
    }
}

pub struct MediaRelay {
    settings: RelaySettings,
    pool: Mutex<PortPool>,
    calls: Mutex<HashMap<String, Arc<Call>>>,
    started: Instant,
    pub counters: Arc<MediaCounters>,
}

struct Call {
    id: String,
    encrypted: bool,
    legs: [Leg; 2],
    /// Milliseconds since the relay started, at the last packet received.
    last_packet: AtomicU64,
    /// Its own packets relayed and refused as not SRTP, said when it is released.
    relayed: AtomicU64,
    refused_not_srtp: AtomicU64,
    stop: CancellationToken,
    /// The loops of its four ports, awaited on release so that their sockets are closed before
    /// the ports go back to the pool.
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Leg {
    rtp: Port,
    rtcp: Port,
    end: Mutex<End>,
}

/// What is known of a leg's far end.
#[derive(Default)]
struct End {
    offer: Option<LegOffer>,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    srtp: Option<SrtpCheck>,
}

impl End {
    fn rtp_destination(&self) -> Option<SocketAddr> {
        self.latched_rtp.or(self.offer.as_ref().map(|o| o.address))
    }

    /// Where RTCP goes, and whether through the RTP port (rtcp-mux).
    fn rtcp_destination(&self) -> Option<(SocketAddr, bool)> {
        let offer = self.offer.as_ref()?;
        if offer.rtcp_mux {
            return self.rtp_destination().map(|a| (a, true));
        }
        Some((self.latched_rtcp.unwrap_or(offer.rtcp_address()), false))
    }
}

impl MediaRelay {
    pub fn new(settings: RelaySettings) -> Result<Arc<MediaRelay>, String> {
        let pool = PortPool::new(settings.ports.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(MediaRelay {
            settings,
            pool: Mutex::new(pool),
            calls: Mutex::new(HashMap::new()),
            started: Instant::now(),
            counters: Arc::default(),
        }))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Two port pairs for call `id`, the caller's leg first; the loops start at once.
    pub fn allocate(self: &Arc<Self>, id: &str, encrypted: bool) -> Result<[u16; 2], MediaError> {
        if self.calls.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id) {
            return Err(MediaError::Duplicate(id.to_string()));
        }
        let caller = self.bind_leg()?;
        let callee = match self.bind_leg() {
            Ok(leg) => leg,
            Err(e) => {
                let port = port_of(&caller);
                drop(caller);
                self.pool.lock().unwrap_or_else(|e| e.into_inner()).give_back(port);
                return Err(e);
            }
        };
        let ports = [port_of(&caller), port_of(&callee)];
        let call = Arc::new(Call {
            id: id.to_string(),
            encrypted,
            legs: [caller, callee],
            last_packet: AtomicU64::new(self.now_ms()),
            relayed: AtomicU64::new(0),
            refused_not_srtp: AtomicU64::new(0),
            stop: CancellationToken::new(),
            pumps: Mutex::default(),
        });
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), call.clone());
        self.counters.class(encrypted).calls.fetch_add(1, Relaxed);
        let pumps =
            [(0, false), (0, true), (1, false), (1, true)].map(|(from, rtcp)| tokio::spawn(pump(self.clone(), call.clone(), from, rtcp)));
        call.pumps.lock().unwrap_or_else(|e| e.into_inner()).extend(pumps);
        Ok(ports)
    }

    /// Binds a free pair; a pair another process holds is skipped (and stays out of the pool).
    fn bind_leg(&self) -> Result<Leg, MediaError> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut last_error = None;
        for _ in 0..8 {
            let port = pool.take().inspect_err(|_| {
                self.counters.refused_exhausted.fetch_add(1, Relaxed);
            })?;
            match (self.bind_port(port), self.bind_port(port + 1)) {
                (Ok(rtp), Ok(rtcp)) => return Ok(Leg { rtp, rtcp, end: Mutex::default() }),
                // Held by another process: back to the end of the queue, tried again later.
                (Err(e), _) | (_, Err(e)) => {
                    pool.give_back(port);
                    last_error = Some(e);
                }
            }
        }
        Err(MediaError::Bind { bind: self.settings.bind, reason: last_error.unwrap_or_default() })
    }

    fn bind_port(&self, port: u16) -> Result<Port, String> {
        Port::bind(SocketAddr::new(self.settings.bind, port))
    }

    /// What `side`'s SDP says: where its media comes from and goes, and its key.
    pub fn update(&self, id: &str, side: Side, offer: LegOffer) -> Result<(), MediaError> {
        let call = self.calls.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned().ok_or_else(|| MediaError::NoCall(id.into()))?;
        let srtp = match (&offer.key, call.encrypted) {
            (Some(key), true) => Some(SrtpCheck::new(key).map_err(|reason| MediaError::Key { call: id.into(), side, reason })?),
            (None, true) => return Err(MediaError::NoKey { call: id.into(), side }),
            (_, false) => None,
        };
        let mut end = call.legs[side as usize].end.lock().unwrap_or_else(|e| e.into_inner());
        // A new offer from another address (a re-INVITE) latches anew.
        if end.offer.as_ref().is_none_or(|o| o.address != offer.address) {
            (end.latched_rtp, end.latched_rtcp) = (None, None);
        }
        if srtp.is_some() || !call.encrypted {
            end.srtp = srtp;
        }
        end.offer = Some(offer);
        Ok(())
    }

    /// Ends call `id`: its loops stop, its sockets close, and its ports go back to the pool.
    pub async fn release(&self, id: &str) -> Result<(), MediaError> {
        let call = self.calls.lock().unwrap_or_else(|e| e.into_inner()).remove(id).ok_or_else(|| MediaError::NoCall(id.into()))?;
        call.stop.cancel();
        let pumps = std::mem::take(&mut *call.pumps.lock().unwrap_or_else(|e| e.into_inner()));
        for pump in pumps {
            let _ = pump.await;
        }
        let ports = call.legs.each_ref().map(port_of);
        tracing::info!(
            call = %id,
            encrypted = call.encrypted,
            "media released: {} packet(s) relayed, {} dropped as not SRTP",
            call.relayed.load(Relaxed),
            call.refused_not_srtp.load(Relaxed)
        );
        // The loops held the only other references: the sockets close here.
        drop(call);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        for port in ports {
            pool.give_back(port);
        }
        Ok(())
    }

    /// The address the SDP sent to each end names.
    pub fn address(&self) -> IpAddr {
        self.settings.advertised
    }

    /// Calls in the relay now.
    pub fn calls(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn free_pairs(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).free()
    }

    /// Releases, every tenth of the inactivity time, the calls whose media stopped; until `stop`.
    pub async fn reap_inactive(self: Arc<Self>, stop: CancellationToken) {
        let period = (self.settings.inactivity / 10).max(Duration::from_millis(50));
        let limit = u64::try_from(self.settings.inactivity.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let now = self.now_ms();
            let idle: Vec<String> = self
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|call| now.saturating_sub(call.last_packet.load(Relaxed)) > limit)
                .map(|call| call.id.clone())
                .collect();
            for id in idle {
                if self.release(&id).await.is_ok() {
                    self.counters.calls_timed_out.fetch_add(1, Relaxed);
                    tracing::info!(call = %id, "media released: no packet for {:?}", self.settings.inactivity);
                }
            }
        }
    }
}

fn port_of(leg: &Leg) -> u16 {
    leg.rtp.address().port()
}

/// The loop of one port: leg `from`'s RTP port, or its RTCP port (`rtcp_port`).
async fn pump(relay: Arc<MediaRelay>, call: Arc<Call>, from: usize, rtcp_port: bool) {
    let leg = &call.legs[from];
    let other = &call.legs[1 - from];
    let port = if rtcp_port { &leg.rtcp } else { &leg.rtp };
    let mut batch = Batch::default();
    let mut train = Train::default();
    let counters = relay.counters.class(call.encrypted);
    loop {
        let received = tokio::select! {
            _ = call.stop.cancelled() => return,
            read = port.receive(&mut batch) => read,
        };
        let Ok(count) = received else { continue };
        call.last_packet.store(relay.now_ms(), Relaxed);
        // One lock at a time: the other leg's pump takes them in the opposite order, and holding
        // both would deadlock the two pumps (and with them the runtime's worker threads).
        let (rtp_to, rtcp_to) = {
            let far = other.end.lock().unwrap_or_else(|e| e.into_inner());
            (far.rtp_destination(), far.rtcp_destination())
        };
        let mut end = leg.end.lock().unwrap_or_else(|e| e.into_inner());
        let settings = &relay.settings;
        for (source, packet) in batch.datagrams(count) {
            let rtcp = rtcp_port || is_rtcp(packet);
            // On an encrypted call the key is checked first: a packet that is not SRTP under the
            // end's key latches nothing, so that an injected packet cannot take the leg over.
            if call.encrypted && !end.srtp.as_mut().is_some_and(|check| check.admits(packet, rtcp)) {
                counters.dropped_not_srtp.fetch_add(1, Relaxed);
                call.refused_not_srtp.fetch_add(1, Relaxed);
                continue;
            }
            if !end.admits_source(source, rtcp, rtcp_port, settings.latching) {
                counters.dropped_foreign.fetch_add(1, Relaxed);
                continue;
            }
            let (destination, out) = match (rtcp, rtcp_to) {
                (false, _) => (rtp_to, &other.rtp),
                (true, Some((address, true))) => (Some(address), &other.rtp),
                (true, Some((address, false))) => (Some(address), &other.rtcp),
                (true, None) => (None, &other.rtcp),
            };
            let Some(destination) = destination else {
                counters.dropped_no_destination.fetch_add(1, Relaxed);
                continue;
            };
            if let Some(sent) = train.push(out, destination, packet) {
                count_sent(counters, &call, sent);
            }
        }
        if let Some(sent) = train.send() {
            count_sent(counters, &call, sent);
        }
    }
}

fn count_sent(counters: &ClassCounters, call: &Call, sent: Sent) {
    // UDP: a full send buffer drops the packets, as the network would.
    if sent.dropped {
        counters.dropped_full.fetch_add(sent.datagrams, Relaxed);
    } else {
        counters.packets.fetch_add(sent.datagrams, Relaxed);
        call.relayed.fetch_add(sent.datagrams, Relaxed);
        counters.bytes.fetch_add(sent.bytes, Relaxed);
    }
}

impl End {
    /// Whether a packet from `source` is this leg's end's, latching it on its first packet.
    fn admits_source(&mut self, source: SocketAddr, rtcp: bool, rtcp_port: bool, latching: Latching) -> bool {
        let Some(offer) = &self.offer else {
            // No SDP yet: an early packet is not forwarded, and latches nothing.
            return false;
        };
        match latching {
            Latching::SdpOnly => {
                let expected = if rtcp_port { offer.rtcp_address() } else { offer.address };
                source == expected
            }
            Latching::FirstPacket => {
                let latched = if rtcp && rtcp_port { &mut self.latched_rtcp } else { &mut self.latched_rtp };
                *latched.get_or_insert(source) == source
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::media::srtp::parse_crypto_line;
    use crate::services::media::srtp::tests::{KEY_LINE, rtp, srtp};
    use tokio::net::UdpSocket;

    /// Each test its own ports, so that tests running at once do not take each other's.
    fn relay(ports: RangeInclusive<u16>, inactivity: Duration, latching: Latching) -> Arc<MediaRelay> {
        let bind = [127, 0, 0, 1].into();
        MediaRelay::new(RelaySettings { bind, advertised: bind, ports, inactivity, latching }).unwrap()
    }

    async fn phone() -> (UdpSocket, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        (socket, address)
    }

    async fn receive(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buffer = vec![0u8; 4096];
        let (n, from) = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buffer)).await.ok()?.ok()?;
        Some((buffer[..n].to_vec(), from))
    }

    fn offer(address: SocketAddr, rtcp_mux: bool, key: Option<SdesKey>) -> LegOffer {
        LegOffer { address, rtcp_mux, key }
    }

    #[tokio::test]
    async fn each_end_hears_the_other_from_the_relay_and_a_stranger_is_dropped() {
        let relay = relay(31000..=31099, Duration::from_secs(30), Latching::FirstPacket);
        let [caller_port, callee_port] = relay.allocate("call-1", false).unwrap();
        let ((a, a_address), (b, b_address), (a_rtcp, _), (stranger, _)) = (phone().await, phone().await, phone().await, phone().await);
        relay.update("call-1", Side::Caller, offer(a_address, false, None)).unwrap();
        relay.update("call-1", Side::Callee, offer(b_address, true, None)).unwrap();
        let (to_caller_leg, to_callee_leg) =
            (SocketAddr::from(([127, 0, 0, 1], caller_port)), SocketAddr::from(([127, 0, 0, 1], callee_port)));

        a.send_to(&rtp(1, 0xa), to_caller_leg).await.unwrap();
        assert_eq!(receive(&b).await, Some((rtp(1, 0xa), to_callee_leg)), "from the callee's leg");
        b.send_to(&rtp(7, 0xb), to_callee_leg).await.unwrap();
        assert_eq!(receive(&a).await, Some((rtp(7, 0xb), to_caller_leg)));
        // The caller's RTCP on the port above its leg reaches the callee on its RTP port (rtcp-mux).
        let report = [0x80, 200, 0, 1, 0, 0, 0, 0xa];
        a_rtcp.send_to(&report, SocketAddr::from(([127, 0, 0, 1], caller_port + 1))).await.unwrap();
        assert_eq!(receive(&b).await, Some((report.to_vec(), to_callee_leg)));

        stranger.send_to(&rtp(2, 0xe), to_caller_leg).await.unwrap();
        assert_eq!(receive(&b).await, None, "the caller's leg latched the caller");
        assert_eq!(relay.counters.unencrypted.dropped_foreign.load(Relaxed), 1);
        assert_eq!(relay.counters.unencrypted.packets.load(Relaxed), 3);
        relay.release("call-1").await.unwrap();
        assert_eq!(relay.release("call-1").await, Err(MediaError::NoCall("call-1".into())));
    }

    #[tokio::test]
    async fn with_sdp_only_latching_only_the_offered_address_is_heard() {
        let relay = relay(31100..=31199, Duration::from_secs(30), Latching::SdpOnly);
        let [caller_port, _] = relay.allocate("call-2", false).unwrap();
        let ((a, a_address), (b, b_address), (elsewhere, _)) = (phone().await, phone().await, phone().await);
        relay.update("call-2", Side::Caller, offer(a_address, false, None)).unwrap();
        relay.update("call-2", Side::Callee, offer(b_address, false, None)).unwrap();
        let leg = SocketAddr::from(([127, 0, 0, 1], caller_port));
        elsewhere.send_to(&rtp(1, 0xe), leg).await.unwrap();
        assert_eq!(receive(&b).await, None, "not the SDP's address, though first");
        a.send_to(&rtp(2, 0xa), leg).await.unwrap();
        assert_eq!(receive(&b).await.map(|(packet, _)| packet), Some(rtp(2, 0xa)));
    }

    #[tokio::test]
    async fn an_encrypted_call_forwards_srtp_as_it_came_and_never_rtp() {
        let relay = relay(31200..=31299, Duration::from_secs(30), Latching::FirstPacket);
        let [caller_port, _] = relay.allocate("call-3", true).unwrap();
        let ((a, a_address), (b, b_address)) = (phone().await, phone().await);
        let key = parse_crypto_line(KEY_LINE).unwrap();
        assert_eq!(
            relay.update("call-3", Side::Caller, offer(a_address, false, None)),
            Err(MediaError::NoKey { call: "call-3".into(), side: Side::Caller })
        );
        relay.update("call-3", Side::Caller, offer(a_address, false, Some(key.clone()))).unwrap();
        relay.update("call-3", Side::Callee, offer(b_address, false, Some(key.clone()))).unwrap();
        let leg = SocketAddr::from(([127, 0, 0, 1], caller_port));

        let protected = srtp(&key, 1, 0xa);
        a.send_to(&protected, leg).await.unwrap();
        assert_eq!(receive(&b).await.map(|(packet, _)| packet), Some(protected.clone()), "byte for byte");
        a.send_to(&rtp(2, 0xa), leg).await.unwrap();
        assert_eq!(receive(&b).await, None, "plain RTP on an encrypted call");
        a.send_to(&protected, leg).await.unwrap();
        assert_eq!(receive(&b).await, None, "a replayed SRTP packet");
        assert_eq!(relay.counters.encrypted.dropped_not_srtp.load(Relaxed), 2);
        assert_eq!(relay.counters.encrypted.calls.load(Relaxed), 1);
    }

    /// Plain RTP sent first from elsewhere does not latch an encrypted call's leg: the end's SRTP
    /// that follows is still heard.
    #[tokio::test]
    async fn an_injected_rtp_packet_does_not_take_an_encrypted_leg_over() {
        let relay = relay(31700..=31799, Duration::from_secs(30), Latching::FirstPacket);
        let [caller_port, _] = relay.allocate("call-7", true).unwrap();
        let ((a, a_address), (b, b_address), (intruder, _)) = (phone().await, phone().await, phone().await);
        let key = parse_crypto_line(KEY_LINE).unwrap();
        relay.update("call-7", Side::Caller, offer(a_address, false, Some(key.clone()))).unwrap();
        relay.update("call-7", Side::Callee, offer(b_address, false, Some(key.clone()))).unwrap();
        let leg = SocketAddr::from(([127, 0, 0, 1], caller_port));
        intruder.send_to(&rtp(1, 0xe), leg).await.unwrap();
        assert_eq!(receive(&b).await, None);
        let protected = srtp(&key, 1, 0xa);
        a.send_to(&protected, leg).await.unwrap();
        assert_eq!(receive(&b).await.map(|(packet, _)| packet), Some(protected), "the end's SRTP, after the injection");
        assert_eq!(relay.counters.encrypted.dropped_not_srtp.load(Relaxed), 1);
        assert_eq!(relay.counters.encrypted.dropped_foreign.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_call_whose_media_stops_is_released_and_its_ports_return() {
        let relay = relay(31300..=31309, Duration::from_millis(300), Latching::FirstPacket);
        let free = relay.free_pairs();
        relay.allocate("call-4", false).unwrap();
        assert_eq!(relay.free_pairs(), free - 2);
        tokio::spawn(relay.clone().reap_inactive(CancellationToken::new()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while relay.calls() > 0 {
            assert!(Instant::now() < deadline, "never released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(relay.free_pairs(), free);
        assert_eq!(relay.counters.calls_timed_out.load(Relaxed), 1);
    }

    /// Both legs of a call at full rate, each pump on its own worker of a two-worker runtime: a
    /// pump once held its end's lock while taking the other end's, the other pump did the opposite,
    /// and the two workers blocked each other for good (the whole SIP service with them). A task
    /// beating on the same runtime must keep beating throughout.
    #[test]
    fn both_directions_at_full_rate_never_block_the_runtime() {
        use std::sync::atomic::AtomicU64;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let beats = Arc::new(AtomicU64::new(0));
        let (relay, legs, phones) = runtime.block_on(async {
            let relay = relay(31800..=31899, Duration::from_secs(30), Latching::FirstPacket);
            let [caller_port, callee_port] = relay.allocate("call-8", false).unwrap();
            let (a, b) = (std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
            relay.update("call-8", Side::Caller, offer(a.local_addr().unwrap(), false, None)).unwrap();
            relay.update("call-8", Side::Callee, offer(b.local_addr().unwrap(), false, None)).unwrap();
            let beats = beats.clone();
            tokio::spawn(async move {
                loop {
                    beats.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            (relay, [caller_port, callee_port], [a, b])
        });
        let until = Instant::now() + Duration::from_secs(2);
        let senders: Vec<_> = phones
            .into_iter()
            .zip(legs)
            .map(|(socket, port)| {
                std::thread::spawn(move || {
                    let packet = rtp(1, u32::from(port));
                    while Instant::now() < until {
                        let _ = socket.send_to(&packet, ("127.0.0.1", port));
                    }
                })
            })
            .collect();
        let mut stalled = None;
        while Instant::now() < until + Duration::from_millis(500) {
            let before = beats.load(Relaxed);
            std::thread::sleep(Duration::from_millis(250));
            if beats.load(Relaxed) == before {
                stalled = Some(relay.counters.unencrypted.packets.load(Relaxed));
                break;
            }
        }
        senders.into_iter().for_each(|s| s.join().unwrap());
        let relayed = relay.counters.unencrypted.packets.load(Relaxed);
        // A blocked runtime cannot be shut down by waiting for it.
        runtime.shutdown_background();
        assert_eq!(stalled, None, "the runtime stopped after relaying that many packets");
        assert!(relayed > 1000, "both ways at full rate: only {relayed} packet(s) relayed");
    }

    #[tokio::test]
    async fn a_full_pool_refuses_a_call_with_the_range_and_takes_one_again_after_a_release() {
        let relay = relay(31400..=31403, Duration::from_secs(30), Latching::FirstPacket);
        relay.allocate("call-5", false).unwrap();
        let refused = relay.allocate("call-6", false).unwrap_err();
        assert_eq!(refused.to_string(), "no media port pair free in 31400-31403: 2 pair(s) in calls");
        assert_eq!(relay.free_pairs(), 0, "a half-made call gives its pair back");
        assert_eq!(relay.allocate("call-5", false), Err(MediaError::Duplicate("call-5".into())));
        relay.release("call-5").await.unwrap();
        relay.allocate("call-6", false).unwrap();
    }
}
