//! `callguard bench media`: RTP relayed, one generator for three paths in one run: straight over
//! loopback (the machine's limit for this generator), through rtpengine (Debian's userspace daemon,
//! set up over its ng control protocol), and through Callguard's relay (in this process). For each,
//! the highest rate it carries without loss: the rate rises by a fifth until more than [`LOSS`] of
//! the packets are lost, and the failed rate says who was behind (whose queues grew, whose CPU was
//! full). Each relay gets one thread, as rtpengine's `--num-threads=1`. The generator (one thread:
//! the senders and the receivers) is the same for all three.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde_bencode::value::Value;

use crate::services::media::port::{Batch, Port};
use crate::services::media::relay::{Latching, LegOffer, MediaRelay, RelaySettings, Side};

/// Where every generator socket is bound: any free port on loopback.
const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Both relays' ports lie below the kernel's ephemeral range (32768 and up), where the generator's
/// sockets are: rtpengine loses the streams whose generator port falls in its own range.
const RTPENGINE_PORTS: RangeInclusive<u16> = 20000..=22999;
const CALLGUARD_PORTS: RangeInclusive<u16> = 23000..=25999;
/// G.711 at 20 ms: a 12-byte RTP header and 160 bytes of audio.
const PACKET: usize = 172;
/// Loss at or under this fraction counts as none (a scheduling hiccup on a shared machine).
const LOSS: f64 = 0.0001;
/// The rates tried start here (packets per second, all streams together).
const FIRST_RATE: u64 = 20_000;
const MAX_RATE: u64 = 10_000_000;
/// The rate the CPU time per packet is measured at, for [`CPU_STEP`]: the first rate, which every
/// path must carry (a relay pushed past its limit first, as rtpengine is, would discard packets for
/// a while and read cheap).
const CPU_RATE: u64 = FIRST_RATE;
const CPU_STEP: Duration = Duration::from_secs(3);

/// One direction of one call: what the generator sends from, where to, and what receives.
struct Stream {
    sender: Port,
    receiver: Port,
    /// Where the sender sends: the receiver itself, or the relay's leg.
    target: SocketAddr,
}

/// The rates found: the highest without loss, per path.
pub fn run(streams: usize, seconds: f64) -> Result<(), String> {
    let generator = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let step = Duration::from_secs_f64(seconds.max(0.2));
    let mut found = BTreeMap::new();

    // Loopback: the receivers are the targets.
    let loopback = generator.block_on(async { streams_to(streams, Ok) })?;
    let mut cpu = BTreeMap::new();
    cpu.insert("loopback", generator.block_on(cpu_per_packet(&loopback, None))?);
    found.insert("loopback", generator.block_on(highest_rate("loopback", &loopback, None, step)));
    drop(loopback);

    // rtpengine, userspace only, one thread.
    let mut rtpengine = Rtpengine::start()?;
    let through_rtpengine = generator.block_on(async {
        let mut calls = Vec::new();
        for i in 0..streams {
            calls.push((Port::bind(LOOPBACK)?, Port::bind(LOOPBACK)?, i));
        }
        let mut out = Vec::new();
        for (sender, receiver, i) in calls {
            let target = rtpengine.call(&format!("bench-{i}"), sender.address(), receiver.address())?;
            out.push(Stream { sender, receiver, target });
        }
        Ok::<_, String>(out)
    });
    let through_rtpengine = match through_rtpengine {
        Ok(streams) => streams,
        Err(e) => {
            rtpengine.stop();
            return Err(e);
        }
    };
    let pid = rtpengine.child.id();
    let watched = Watched { ports: RTPENGINE_PORTS, cpu: &|| crate::bench::process_cpu(pid), send_drops: None };
    let rtpengine_cpu = generator.block_on(cpu_per_packet(&through_rtpengine, Some(&watched)))?;
    cpu.insert("rtpengine", rtpengine_cpu);
    let rtpengine_rate = generator.block_on(highest_rate("rtpengine", &through_rtpengine, Some(&watched), step));
    rtpengine.stop();
    found.insert("rtpengine", rtpengine_rate);
    drop(through_rtpengine);

    // Callguard's relay, on a runtime of one worker.
    let (runtime, relay_cpu) = crate::bench::cpu_accounted_runtime("callguard-media", 1)?;
    let settings = RelaySettings {
        bind: [127, 0, 0, 1].into(),
        advertised: [127, 0, 0, 1].into(),
        ports: CALLGUARD_PORTS,
        inactivity: Duration::from_secs(600),
        latching: Latching::FirstPacket,
    };
    let relay = MediaRelay::new(settings)?;
    let through_callguard = {
        let mut out = Vec::new();
        for i in 0..streams {
            let id = format!("bench-{i}");
            let (sender, receiver) = generator.block_on(async { Ok::<_, String>((Port::bind(LOOPBACK)?, Port::bind(LOOPBACK)?)) })?;
            let [caller_leg, _] = runtime.block_on(async { relay.allocate(&id, false) }).map_err(|e| e.to_string())?;
            let offer = |address| LegOffer { address, rtcp_mux: false, key: None };
            relay.update(&id, Side::Caller, offer(sender.address())).map_err(|e| e.to_string())?;
            relay.update(&id, Side::Callee, offer(receiver.address())).map_err(|e| e.to_string())?;
            out.push(Stream { sender, receiver, target: SocketAddr::from(([127, 0, 0, 1], caller_leg)) });
        }
        out
    };
    let watched = Watched {
        ports: CALLGUARD_PORTS,
        cpu: &|| Ok(relay_cpu.spent()),
        send_drops: Some(&|| relay.counters.unencrypted.dropped_full.load(Relaxed)),
    };
    cpu.insert("Callguard", generator.block_on(cpu_per_packet(&through_callguard, Some(&watched)))?);
    found.insert("Callguard", generator.block_on(highest_rate("Callguard", &through_callguard, Some(&watched), step)));
    drop(runtime);

    let rate = |name: &str| found[name].0 as f64;
    println!(
        "bench media: {streams} RTP streams of {PACKET}-byte packets, one generator thread, {seconds} s a rate; the highest rate with at most {:.2}% lost",
        LOSS * 100.0
    );
    for name in ["loopback", "rtpengine", "Callguard"] {
        let (packets, stopped_by) = &found[name];
        println!("  {name:<10} {packets:>9} packets/s  (the next rate failed: {stopped_by})");
    }
    println!("  ratio:     {:.2}  (Callguard over rtpengine; target 1.0)", rate("Callguard") / rate("rtpengine").max(1.0));
    println!("  ratio:     {:.2}  (Callguard over the loopback limit; target 0.8)", rate("Callguard") / rate("loopback").max(1.0));
    // The generator's own cost per packet rises when its packets cross to another thread and come
    // back, through any relay: what stops the rise through a relay may be that, not the relay.
    println!("  CPU per packet at {CPU_RATE} packets/s   generator      relay");
    for name in ["loopback", "rtpengine", "Callguard"] {
        let PacketCpu { generator_micros, relay_micros } = &cpu[name];
        let relay = relay_micros.map_or("-".to_string(), |micros| format!("{micros:.2} µs"));
        println!("    {name:<10} {generator_micros:>20.2} µs {relay:>10}");
    }
    Ok(())
}

/// Streams whose senders send to `target(receiver)`. Inside the generator's runtime.
fn streams_to(streams: usize, target: impl Fn(SocketAddr) -> Result<SocketAddr, String>) -> Result<Vec<Stream>, String> {
    let mut out = Vec::new();
    for _ in 0..streams {
        let (sender, receiver) = (Port::bind(LOOPBACK)?, Port::bind(LOOPBACK)?);
        let target = target(receiver.address())?;
        out.push(Stream { sender, receiver, target });
    }
    Ok(out)
}

/// What one rate came to.
enum Outcome {
    /// The fraction of the packets sent that did not arrive.
    Lost(f64),
    /// The generator could not send at this rate on this machine, beside what it drives.
    Behind,
}

/// A relay under test, as the generator watches it: the ports it receives on, the CPU time it has
/// spent, and, where it counts them (Callguard), the datagrams it dropped with its send buffer full.
struct Watched<'a> {
    ports: RangeInclusive<u16>,
    cpu: &'a dyn Fn() -> Result<Duration, String>,
    send_drops: Option<&'a dyn Fn() -> u64>,
}

/// The highest rate carried with at most [`LOSS`] lost: rates rising by a fifth from
/// [`FIRST_RATE`] until one fails, each tried and its outcome to stderr. Rising only, with no
/// bisection: a relay that was overloaded once may not recover at once (rtpengine discards a
/// port's packets for a while after its queue overflowed), which would make any rate tried after a
/// failure read low. The figure is within a fifth below the true limit, for every path alike. With
/// it, what stopped the rise: loss or the generator, and who was behind ([`Whereabouts`]).
async fn highest_rate(name: &str, streams: &[Stream], relay: Option<&Watched<'_>>, step: Duration) -> (u64, String) {
    let sockets = Sockets { generator: streams.iter().filter_map(|s| s.receiver.inode()).collect(), relay };
    let mut good = 0;
    let mut rate = FIRST_RATE;
    while rate <= MAX_RATE {
        let tried = lost_at(streams, rate, step, Some(&sockets)).await;
        let whereabouts = tried.whereabouts.describe();
        match tried.outcome {
            Outcome::Lost(fraction) => {
                eprintln!("  {name} at {rate} packets/s: {:.3}% lost{whereabouts}", fraction * 100.0);
                if fraction > LOSS {
                    return (good, format!("by loss, {:.3}% lost{whereabouts}", fraction * 100.0));
                }
            }
            Outcome::Behind => {
                eprintln!("  {name} at {rate} packets/s: the generator fell behind{whereabouts}");
                return (good, format!("the generator fell behind{whereabouts}"));
            }
        }
        good = rate;
        rate += rate / 5;
    }
    (good, "none, the largest rate was tried".into())
}

/// What one rate came to, the packets that arrived, and where the others were.
struct Tried {
    outcome: Outcome,
    received: u64,
    whereabouts: Whereabouts,
}

/// Sends at `rate` packets a second, spread over the streams, for `step`; with `sockets`, where
/// the packets that did not arrive were.
async fn lost_at(streams: &[Stream], rate: u64, step: Duration, sockets: Option<&Sockets<'_>>) -> Tried {
    let count = || sockets.map(Sockets::count).unwrap_or_default();
    let before = count();
    let received = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let receivers: Vec<_> = streams.iter().map(|s| receive(&s.receiver, received.clone(), stop.clone())).collect();
    let receiving = futures::future::join_all(receivers);
    let sending = async {
        let began = Instant::now();
        let sent = send(streams, rate, step).await;
        let took = began.elapsed();
        let at_end = count();
        // What is still on its way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        (sent, took, at_end)
    };
    let ((sent, took, at_end), _) = tokio::join!(sending, receiving);
    let received = received.load(Relaxed);
    let busy = |spent: Duration, before: Duration| spent.saturating_sub(before).as_secs_f64() / took.as_secs_f64();
    let whereabouts = Whereabouts {
        dropped: count().dropped.since(before.dropped),
        queued: at_end.queued,
        busy: sockets.map(|_| Busy {
            generator: busy(at_end.generator_cpu, before.generator_cpu),
            relay: at_end.relay_cpu.zip(before.relay_cpu).map(|(now, then)| busy(now, then)),
        }),
    };
    let outcome = if took > step.mul_f64(1.05) {
        Outcome::Behind
    } else {
        Outcome::Lost(if sent == 0 { 1.0 } else { sent.saturating_sub(received) as f64 / sent as f64 })
    };
    Tried { outcome, received, whereabouts }
}

/// The receiving sockets of one path: the generator's (by inode), and the relay's.
struct Sockets<'a> {
    generator: HashSet<u64>,
    relay: Option<&'a Watched<'a>>,
}

/// A figure for the generator's receiving sockets and one for the relay's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BySide {
    generator: u64,
    relay: u64,
}

/// What the kernel (`/proc/net/udp`), the relay and the CPU clocks say of a path at one moment.
#[derive(Default, Clone, Copy)]
struct PathCounts {
    /// Datagrams dropped at a full receive queue, since each socket was made; with the relay's
    /// send drops as its own.
    dropped: Dropped,
    /// Bytes waiting to be read (the kernel's accounting, which counts each datagram's buffer).
    queued: BySide,
    /// The generator's thread's CPU time, and the relay's.
    generator_cpu: Duration,
    relay_cpu: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    receiving: BySide,
    relay_sending: u64,
}

/// The share of the sending time each side spent on a CPU: a side at 100% is the one behind.
#[derive(Debug, Clone, Copy)]
struct Busy {
    generator: f64,
    relay: Option<f64>,
}

/// Where the packets a rate lost were: dropped by whom, or still queued, and where, when the
/// sending stopped; and how busy each side was. Whose queue grows is who could not keep up.
#[derive(Default, Clone, Copy)]
struct Whereabouts {
    dropped: Dropped,
    queued: BySide,
    busy: Option<Busy>,
}

impl Sockets<'_> {
    /// The counts now; zero where `/proc/net/udp` cannot be read.
    fn count(&self) -> PathCounts {
        let mut counts = PathCounts {
            generator_cpu: crate::bench::clock_time(libc::CLOCK_THREAD_CPUTIME_ID),
            relay_cpu: self.relay.and_then(|relay| (relay.cpu)().ok()),
            ..PathCounts::default()
        };
        counts.dropped.relay_sending = self.relay.and_then(|relay| relay.send_drops).map_or(0, |count| count());
        let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
        for row in crate::adapters::local::port::socket_rows(&table) {
            let side = if self.generator.contains(&row.inode) {
                (&mut counts.dropped.receiving.generator, &mut counts.queued.generator)
            } else if self.relay.is_some_and(|relay| relay.ports.contains(&row.local.port())) {
                (&mut counts.dropped.receiving.relay, &mut counts.queued.relay)
            } else {
                continue;
            };
            *side.0 += row.drops;
            *side.1 += row.rx_queue;
        }
        counts
    }
}

impl Dropped {
    fn since(self, before: Dropped) -> Dropped {
        Dropped {
            receiving: BySide {
                generator: self.receiving.generator.saturating_sub(before.receiving.generator),
                relay: self.receiving.relay.saturating_sub(before.receiving.relay),
            },
            relay_sending: self.relay_sending.saturating_sub(before.relay_sending),
        }
    }
}

impl Whereabouts {
    /// `; dropped by …; queued when the sending stopped: …; busy: …`, each part where it says
    /// anything; the relay's figures where there is a relay.
    fn describe(self) -> String {
        let Whereabouts { dropped, queued, busy } = self;
        let relayed = busy.is_some_and(|busy| busy.relay.is_some());
        let kib = |bytes: u64| bytes.div_ceil(1024);
        let mut parts = Vec::new();
        match (dropped.receiving, relayed) {
            (BySide { generator: 0, relay: 0 }, _) => {}
            (BySide { generator, .. }, false) => parts.push(format!("dropped by the generator's sockets {generator}")),
            (BySide { generator, relay }, true) => {
                parts.push(format!("dropped by the generator's sockets {generator}, by the relay's {relay}"))
            }
        }
        if dropped.relay_sending > 0 {
            parts.push(format!("dropped by the relay's full send buffers {}", dropped.relay_sending));
        }
        match (queued, relayed) {
            (BySide { generator: 0, relay: 0 }, _) => {}
            (BySide { generator, .. }, false) => parts.push(format!("queued when the sending stopped: {} KiB", kib(generator))),
            (BySide { generator, relay }, true) => parts.push(format!(
                "queued when the sending stopped: {} KiB at the generator's sockets, {} KiB at the relay's",
                kib(generator),
                kib(relay)
            )),
        }
        let percent = |share: f64| format!("{:.0}%", share * 100.0);
        match busy {
            Some(Busy { generator, relay: Some(relay) }) => {
                parts.push(format!("busy: the generator {}, the relay {}", percent(generator), percent(relay)))
            }
            Some(Busy { generator, relay: None }) => parts.push(format!("busy: the generator {}", percent(generator))),
            None => {}
        }
        parts.iter().map(|part| format!("; {part}")).collect()
    }
}

/// CPU time per packet that arrived, at [`CPU_RATE`] (which every path carries without loss): the
/// generator's thread's, and the relay's (`None` on loopback). Figures the other programs of a
/// shared machine change less than the rates. Measured before the rates are raised, on a relay
/// that has not been overloaded yet.
async fn cpu_per_packet(streams: &[Stream], relay: Option<&Watched<'_>>) -> Result<PacketCpu, String> {
    let relay_before = relay.map(|relay| (relay.cpu)()).transpose()?;
    let generator_before = crate::bench::clock_time(libc::CLOCK_THREAD_CPUTIME_ID);
    let arrived = lost_at(streams, CPU_RATE, CPU_STEP, None).await.received.max(1);
    let generator = crate::bench::clock_time(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(generator_before);
    let relay = relay.zip(relay_before).map(|(relay, before)| (relay.cpu)().map(|now| now.saturating_sub(before))).transpose()?;
    let per_packet = |cpu: Duration| cpu.as_secs_f64() * 1e6 / arrived as f64;
    Ok(PacketCpu { generator_micros: per_packet(generator), relay_micros: relay.map(per_packet) })
}

/// Microseconds of CPU per packet on one path.
struct PacketCpu {
    generator_micros: f64,
    relay_micros: Option<f64>,
}

/// Every millisecond, its share of packets, one datagram per send and the streams taken in turn,
/// as many phones would send them (no GSO train a relay could take in one read). The packets sent.
async fn send(streams: &[Stream], rate: u64, step: Duration) -> u64 {
    let mut packet = [0u8; PACKET];
    packet[0] = 0x80;
    let ticks = step.as_millis().max(1) as u64;
    let per_tick = rate as f64 / 1000.0;
    let (mut owed, mut sent, mut next) = (0.0f64, 0u64, 0usize);
    let start = tokio::time::Instant::now();
    for tick in 0..ticks {
        tokio::time::sleep_until(start + Duration::from_millis(tick)).await;
        owed += per_tick;
        let now = owed.floor() as u64;
        owed -= now as f64;
        for _ in 0..now {
            let stream = &streams[next];
            next = (next + 1) % streams.len();
            if stream.sender.send(stream.target, &packet).await.is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

async fn receive(port: &Port, received: Arc<AtomicU64>, stop: tokio_util::sync::CancellationToken) {
    let mut batch = Batch::default();
    loop {
        let count = tokio::select! {
            _ = stop.cancelled() => return,
            read = port.receive(&mut batch) => match read { Ok(count) => count, Err(_) => continue },
        };
        received.fetch_add(batch.datagrams(count).count() as u64, Relaxed);
    }
}

/// rtpengine started for the run, userspace forwarding only (`--table=-1`), one thread.
struct Rtpengine {
    child: Child,
    control: std::net::UdpSocket,
    cookie: u64,
}

impl Rtpengine {
    fn start() -> Result<Rtpengine, String> {
        let found = Command::new("sh").args(["-c", "command -v rtpengine"]).output().is_ok_and(|o| o.status.success());
        if !found {
            return Err("rtpengine is missing: install the Debian package rtpengine-daemon".into());
        }
        let control = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let ng_port = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?.port();
        let child = Command::new("rtpengine")
            .args(["--foreground", "--log-stderr", "--log-level=3", "--table=-1", "--num-threads=1", "--interface=127.0.0.1"])
            .args(["--port-min=20000", "--port-max=22999", &format!("--listen-ng=127.0.0.1:{ng_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start rtpengine: {e}"))?;
        control.connect(("127.0.0.1", ng_port)).map_err(|e| e.to_string())?;
        control.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
        let mut engine = Rtpengine { child, control, cookie: 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while engine.command(&[("command", "ping")]).is_err() {
            if Instant::now() > deadline {
                engine.stop();
                return Err("rtpengine did not answer its ng port within 10 s".into());
            }
        }
        Ok(engine)
    }

    /// One ng request (a cookie, then a bencoded dictionary) and its answer's dictionary.
    fn command(&mut self, fields: &[(&str, &str)]) -> Result<BTreeMap<String, String>, String> {
        self.cookie += 1;
        let dictionary: std::collections::HashMap<Vec<u8>, Value> =
            fields.iter().map(|(k, v)| (k.as_bytes().to_vec(), Value::Bytes(v.as_bytes().to_vec()))).collect();
        let mut message = format!("{} ", self.cookie).into_bytes();
        message.extend(serde_bencode::to_bytes(&Value::Dict(dictionary)).map_err(|e| e.to_string())?);
        self.control.send(&message).map_err(|e| e.to_string())?;
        let mut buffer = vec![0u8; 65536];
        let n = self.control.recv(&mut buffer).map_err(|e| format!("rtpengine: {e}"))?;
        let text = &buffer[..n];
        let body = text.iter().position(|&b| b == b' ').map(|i| &text[i + 1..]).ok_or("rtpengine: an answer without a cookie")?;
        let Value::Dict(answer) = serde_bencode::from_bytes::<Value>(body).map_err(|e| format!("rtpengine: {e}"))? else {
            return Err("rtpengine: the answer is not a dictionary".into());
        };
        let answer: BTreeMap<String, String> = answer
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Bytes(bytes) => Some((String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&bytes).into_owned())),
                _ => None,
            })
            .collect();
        match answer.get("result").map(String::as_str) {
            Some("ok") | Some("pong") => Ok(answer),
            _ => Err(format!("rtpengine refused {fields:?}: {answer:?}")),
        }
    }

    /// Sets up call `id` between `caller` and `callee`; where the caller sends.
    fn call(&mut self, id: &str, caller: SocketAddr, callee: SocketAddr) -> Result<SocketAddr, String> {
        let sdp = |address: SocketAddr| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=sendrecv\r\n",
                address.port()
            )
        };
        let offer = sdp(caller);
        self.command(&[("command", "offer"), ("call-id", id), ("from-tag", "caller"), ("sdp", &offer)])?;
        let answer = sdp(callee);
        let answered =
            self.command(&[("command", "answer"), ("call-id", id), ("from-tag", "caller"), ("to-tag", "callee"), ("sdp", &answer)])?;
        let stream = answered.get("sdp").and_then(|sdp| crate::services::media::sdp::audio_stream(sdp.as_bytes()));
        stream.map(|s| s.address).ok_or_else(|| format!("rtpengine's answer names no audio stream: {answered:?}"))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel drops at a full receive queue, and what waits in it, are counted against
    /// the generator's socket by its inode and against the relay by its port range; not against a
    /// socket that is neither.
    #[tokio::test]
    async fn drops_and_queues_are_counted_against_whose_socket_it_is() {
        let (full, other) = (Port::bind(LOOPBACK).unwrap(), Port::bind(LOOPBACK).unwrap());
        let port = full.address().port();
        let no_cpu = || Ok(Duration::ZERO);
        let [this_port, next_port] = [port..=port, port + 1..=port + 1].map(|ports| Watched { ports, cpu: &no_cpu, send_drops: None });
        let as_generator = Sockets { generator: full.inode().into_iter().collect(), relay: None };
        let as_relay = Sockets { generator: HashSet::new(), relay: Some(&this_port) };
        let elsewhere = Sockets { generator: other.inode().into_iter().collect(), relay: Some(&next_port) };
        let before = [&as_generator, &as_relay, &elsewhere].map(Sockets::count);
        // Never read: far more than its queue holds (4 MiB at most).
        let sender = std::net::UdpSocket::bind(LOOPBACK).unwrap();
        for _ in 0..40_000 {
            let _ = sender.send_to(&[0u8; PACKET], full.address());
        }
        let after = [&as_generator, &as_relay, &elsewhere].map(Sockets::count);
        let [generator, relay, neither] = [0, 1, 2].map(|i| (after[i].dropped.since(before[i].dropped), after[i].queued));
        assert!(generator.0.receiving.generator > 0 && generator.1.generator > 0, "{generator:?}");
        assert_eq!((generator.0.receiving.relay, generator.1.relay), (0, 0));
        assert_eq!(relay.0.receiving, BySide { generator: 0, relay: generator.0.receiving.generator });
        assert_eq!(relay.1, BySide { generator: 0, relay: generator.1.generator });
        assert_eq!(neither, (Dropped::default(), BySide::default()));
    }

    /// A failed rate's whereabouts name each side's figures where there is a relay, and only the
    /// generator's where there is none.
    #[test]
    fn whereabouts_are_told_by_side() {
        let dropped = Dropped { receiving: BySide { generator: 0, relay: 3 }, relay_sending: 2 };
        let relayed =
            Whereabouts { dropped, queued: BySide { generator: 2048, relay: 1 }, busy: Some(Busy { generator: 1.0, relay: Some(0.641) }) };
        assert_eq!(
            relayed.describe(),
            "; dropped by the generator's sockets 0, by the relay's 3; dropped by the relay's full send buffers 2; \
             queued when the sending stopped: 2 KiB at the generator's sockets, 1 KiB at the relay's; busy: the generator 100%, the relay 64%"
        );
        let alone = Whereabouts {
            dropped: Dropped { receiving: BySide { generator: 5, relay: 0 }, relay_sending: 0 },
            queued: BySide { generator: 0, relay: 0 },
            busy: Some(Busy { generator: 0.5, relay: None }),
        };
        assert_eq!(alone.describe(), "; dropped by the generator's sockets 5; busy: the generator 50%");
        assert_eq!(Whereabouts::default().describe(), "");
    }
}
