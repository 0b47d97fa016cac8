//! `callguard bench media`: RTP relayed, one generator for three paths in one run: straight over
//! loopback (the machine's limit for this generator), through rtpengine (Debian's userspace daemon,
//! set up over its ng control protocol), and through Callguard's relay (in this process). For each,
//! the highest rate it carries without loss: the rate doubles until more than [`LOSS`] of the
//! packets are lost, then is bisected. Each relay gets one thread, as rtpengine's `--num-threads=1`.
//! The generator (one thread: the senders and the receivers) is the same for all three.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    found.insert("loopback", generator.block_on(highest_rate("loopback", &loopback, step)));
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
    let rtpengine_cpu = generator.block_on(cpu_per_packet(&through_rtpengine, Some(&|| crate::bench::process_cpu(pid))))?;
    cpu.insert("rtpengine", rtpengine_cpu);
    let rtpengine_rate = generator.block_on(highest_rate("rtpengine", &through_rtpengine, step));
    rtpengine.stop();
    found.insert("rtpengine", rtpengine_rate);
    drop(through_rtpengine);

    // Callguard's relay, on a runtime of one worker.
    let (runtime, relay_cpu) = crate::bench::cpu_accounted_runtime("callguard-media", 1)?;
    let settings = RelaySettings {
        bind: [127, 0, 0, 1].into(),
        advertised: [127, 0, 0, 1].into(),
        ports: 23000..=25999,
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
    cpu.insert("Callguard", generator.block_on(cpu_per_packet(&through_callguard, Some(&|| Ok(relay_cpu.spent()))))?);
    found.insert("Callguard", generator.block_on(highest_rate("Callguard", &through_callguard, step)));
    drop(runtime);

    let rate = |name: &str| found[name].0 as f64;
    println!(
        "bench media: {streams} RTP streams of {PACKET}-byte packets, one generator thread, {seconds} s a rate; the highest rate with at most {:.2}% lost",
        LOSS * 100.0
    );
    for name in ["loopback", "rtpengine", "Callguard"] {
        let (packets, stopped_by) = found[name];
        println!("  {name:<10} {packets:>9} packets/s  (the next rate failed by {stopped_by})");
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

/// The highest rate carried with at most [`LOSS`] lost: rates rising by a fifth from
/// [`FIRST_RATE`] until one fails, each tried and its outcome to stderr. Rising only, with no
/// bisection: a relay that was overloaded once may not recover at once (rtpengine discards a
/// port's packets for a while after its queue overflowed), which would make any rate tried after a
/// failure read low. The figure is within a fifth below the true limit, for every path alike. With
/// it, what stopped the rise: loss, or the generator.
async fn highest_rate(name: &str, streams: &[Stream], step: Duration) -> (u64, &'static str) {
    let mut good = 0;
    let mut rate = FIRST_RATE;
    while rate <= MAX_RATE {
        match lost_at(streams, rate, step).await.outcome {
            Outcome::Lost(lost) => {
                eprintln!("  {name} at {rate} packets/s: {:.3}% lost", lost * 100.0);
                if lost > LOSS {
                    return (good, "loss");
                }
            }
            Outcome::Behind => {
                eprintln!("  {name} at {rate} packets/s: the generator fell behind");
                return (good, "the generator");
            }
        }
        good = rate;
        rate += rate / 5;
    }
    (good, "the largest rate tried")
}

/// What one rate came to, and the packets that arrived.
struct Tried {
    outcome: Outcome,
    received: u64,
}

/// Sends at `rate` packets a second, spread over the streams, for `step`.
async fn lost_at(streams: &[Stream], rate: u64, step: Duration) -> Tried {
    let received = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let receivers: Vec<_> = streams.iter().map(|s| receive(&s.receiver, received.clone(), stop.clone())).collect();
    let receiving = futures::future::join_all(receivers);
    let sending = async {
        let began = Instant::now();
        let sent = send(streams, rate, step).await;
        let late = began.elapsed() > step.mul_f64(1.05);
        // What is still on its way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        (sent, late)
    };
    let ((sent, late), _) = tokio::join!(sending, receiving);
    let received = received.load(Relaxed);
    if late {
        return Tried { outcome: Outcome::Behind, received };
    }
    Tried { outcome: Outcome::Lost(if sent == 0 { 1.0 } else { sent.saturating_sub(received) as f64 / sent as f64 }), received }
}

/// CPU time per packet that arrived, at [`CPU_RATE`] (which every path carries without loss): the
/// generator's thread's, and the relay's (`relay_spent`, `None` on loopback). Figures the other
/// programs of a shared machine change less than the rates. Measured before the rates are raised,
/// on a relay that has not been overloaded yet.
async fn cpu_per_packet(streams: &[Stream], relay_spent: Option<&dyn Fn() -> Result<Duration, String>>) -> Result<PacketCpu, String> {
    let relay_before = relay_spent.map(|spent| spent()).transpose()?;
    let generator_before = crate::bench::clock_time(libc::CLOCK_THREAD_CPUTIME_ID);
    let arrived = lost_at(streams, CPU_RATE, CPU_STEP).await.received.max(1);
    let generator = crate::bench::clock_time(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(generator_before);
    let relay = relay_spent.zip(relay_before).map(|(spent, before)| spent().map(|now| now.saturating_sub(before))).transpose()?;
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
