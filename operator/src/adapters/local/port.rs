//! Why the TFTP, CAPF, TVS or EST socket could not be bound, in words that say what to do: the address is in
//! use (and by which process, as `ss -ulpn` or `ss -tlpn` would tell: the socket's inode from
//! `/proc/net/udp`, `udp6`, `tcp` or `tcp6`, then the process holding it among `/proc/*/fd`), the
//! port needs privileges, or the address is not this host's.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The service whose port it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// TFTP, UDP (P.1-16).
    Tftp,
    /// CAPF, TCP (P.6-7).
    Capf,
    /// TVS, TCP (docs/wire-formats.md §8).
    Tvs,
    /// EST, HTTPS over TCP (RFC 7030).
    Est,
    /// SIP over UDP and TCP (P.3-5).
    Sip,
    /// SIP over TLS (P.3-5).
    SipTls,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Tftp => "TFTP",
            Service::Capf => "CAPF",
            Service::Tvs => "TVS",
            Service::Est => "EST",
            Service::Sip => "SIP",
            Service::SipTls => "SIP-TLS",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Service::Tftp => "--tftp-port",
            Service::Capf => "--capf-port",
            Service::Tvs => "--tvs-port",
            Service::Est => "--est-port",
            Service::Sip => "--sip-port",
            Service::SipTls => "--sip-tls-port",
        }
    }

    fn spec_field(self) -> &'static str {
        match self {
            Service::Tftp => "spec.ports.tftpPort",
            Service::Capf => "spec.ports.capfPort",
            // The cluster has no TVS port field: its port is --tvs-port's, never the spec's.
            Service::Tvs => "--tvs-port",
            // EST has no port in the spec; its port is the flag's or the default.
            Service::Est => "--est-port",
            Service::Sip => "spec.ports.sipPort",
            Service::SipTls => "spec.ports.sipSecurePort",
        }
    }

    /// The kernel's socket tables, and the state a conflicting socket is in (any for UDP, LISTEN for TCP).
    fn tables(self) -> ([&'static str; 2], Option<u8>) {
        match self {
            // SIP binds UDP first, then TCP on the same port.
            Service::Tftp | Service::Sip => (["/proc/net/udp", "/proc/net/udp6"], None),
            Service::Capf | Service::Tvs | Service::Est | Service::SipTls => (["/proc/net/tcp", "/proc/net/tcp6"], Some(0x0A)),
        }
    }

    fn ss(self) -> &'static str {
        match self {
            Service::Tftp | Service::Sip => "ss -ulpn",
            Service::Capf | Service::Tvs | Service::Est | Service::SipTls => "ss -tlpn",
        }
    }
}

/// Where the port came from, to say how to choose another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortOrigin {
    /// `--tftp-port` or `--capf-port`.
    Flag,
    /// The cluster's `spec.ports.tftpPort` or `spec.ports.capfPort`.
    Spec,
    /// Neither: the default, 69 (P.1-16) or 3804 (P.6-7).
    Default,
    /// The fallback when the spec's or the default port needs privileges.
    Fallback,
}

/// One line: what failed when binding `service` on `address`, and the way out.
pub fn explain(service: Service, address: SocketAddr, error: &io::Error, origin: PortOrigin) -> String {
    let (port, name, flag) = (address.port(), service.name(), service.flag());
    let elsewhere = match origin {
        PortOrigin::Flag | PortOrigin::Fallback => format!("pass another {flag}"),
        PortOrigin::Spec => format!("it is the cluster's {}: pass {flag} to serve elsewhere", service.spec_field()),
        PortOrigin::Default => format!("pass {flag} to serve elsewhere"),
    };
    match error.kind() {
        io::ErrorKind::AddrInUse => {
            let holders = holders(service, address);
            let who = if holders.is_empty() {
                format!("another process, which this user cannot see (`{} 'sport = :{port}'` as root names it)", service.ss())
            } else {
                holders.iter().map(|h| format!("PID {} ({})", h.pid, h.command)).collect::<Vec<_>>().join(", ")
            };
            format!("cannot serve {name}: {address} is in use by {who}; stop it, or {elsewhere}")
        }
        io::ErrorKind::PermissionDenied => {
            let fallback = match service {
                Service::Tftp => format!(
                    ". Without --tftp-port, callguard local serves on {} when the cluster's port needs privileges it lacks",
                    super::UNPRIVILEGED_TFTP_PORT
                ),
                Service::Capf | Service::Tvs | Service::Est | Service::Sip | Service::SipTls => String::new(),
            };
            format!(
                "cannot serve {name} on {address}: permission denied: ports below {} (net.ipv4.ip_unprivileged_port_start) need root \
                 or CAP_NET_BIND_SERVICE (`sudo setcap cap_net_bind_service=+ep {}`); or pass {flag} 1024 or above{fallback}",
                unprivileged_port_start(),
                std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "callguard".into()),
            )
        }
        io::ErrorKind::AddrNotAvailable => {
            format!("cannot serve {name} on {address}: {} is not an address of this host (--bind chooses)", address.ip())
        }
        _ => format!("cannot serve {name} on {address}: {error}"),
    }
}

/// The first port that needs no privilege (1024 unless the sysctl lowers it).
fn unprivileged_port_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").ok().and_then(|t| t.trim().parse().ok()).unwrap_or(1024)
}

/// A process that holds a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
}

/// The processes holding a socket of `service` (UDP, or listening TCP) that keeps `address` from
/// being bound: same port, and the same address or a wildcard on either side. Only processes this
/// user may inspect are found.
pub fn holders(service: Service, address: SocketAddr) -> Vec<Holder> {
    let mut inodes = Vec::new();
    let (tables, state) = service.tables();
    for table in tables {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(conflicting_inodes(&text, address, state));
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let sockets: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let mut found = Vec::new();
    let Ok(processes) = fs::read_dir("/proc") else { return found };
    for process in processes.flatten() {
        let Some(pid) = process.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(descriptors) = fs::read_dir(process.path().join("fd")) else { continue };
        let holds = descriptors
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str())));
        if holds {
            found.push(Holder { pid, command: command_of(pid) });
        }
    }
    found
}

/// The command line of `pid`, or its name in brackets when it has none (a kernel thread).
fn command_of(pid: u32) -> String {
    let arguments = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let command = arguments.split(|b| *b == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ");
    if command.is_empty() { format!("[{}]", fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim()) } else { command }
}

/// The inodes of the sockets of a `/proc/net/{udp,tcp}{,6}` table that conflict with `address`: in
/// `state` (`0x0A` for a listening TCP socket) when one is given.
fn conflicting_inodes(table: &str, address: SocketAddr, state: Option<u8>) -> Vec<u64> {
    socket_rows(table)
        .filter(|row| {
            let ip = row.local.ip();
            let overlaps = ip == address.ip() || ip.is_unspecified() || address.ip().is_unspecified();
            row.local.port() == address.port() && overlaps && state.is_none_or(|wanted| row.state == wanted)
        })
        .map(|row| row.inode)
        .collect()
}

/// One socket of a `/proc/net/{udp,tcp}{,6}` table, as far as Callguard reads it.
pub struct SocketRow {
    pub local: SocketAddr,
    pub state: u8,
    /// Bytes waiting in its receive queue.
    pub rx_queue: u64,
    pub inode: u64,
    /// Datagrams the kernel dropped on their way in (UDP tables only; 0 elsewhere).
    pub drops: u64,
}

/// The sockets of a `/proc/net/{udp,tcp}{,6}` table; a line that does not read is left out.
pub fn socket_rows(table: &str) -> impl Iterator<Item = SocketRow> + '_ {
    table.lines().skip(1).filter_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ref pointer drops
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (ip, port) = fields.get(1)?.split_once(':')?;
        let local = SocketAddr::new(proc_ip(ip)?, u16::from_str_radix(port, 16).ok()?);
        let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
        let rx_queue = fields.get(4)?.rsplit(':').next().and_then(|hex| u64::from_str_radix(hex, 16).ok())?;
        let inode = fields.get(9)?.parse().ok()?;
        let drops = fields.get(12).and_then(|d| d.parse().ok()).unwrap_or(0);
        Some(SocketRow { local, state, rx_queue, inode, drops })
    })
}

/// An address as `/proc/net/udp{,6}` prints it: 32-bit words in hex, each in the host's byte order.
fn proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| hex.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_are_host_order_words() {
        let loopback = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
        assert_eq!(proc_ip(&loopback), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(proc_ip("00000000000000000000000000000000"), Some(IpAddr::from(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(proc_ip("0100007F0"), None);
    }

    #[test]
    fn a_socket_on_the_port_conflicts_on_the_same_or_a_wildcard_address() {
        let word = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let line = |ip: [u8; 4], port: u16, inode: u64| {
            format!("  1: {}:{port:04X} 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 {inode} 2 0 0", word(ip))
        };
        let table = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode".to_owned()]
            .into_iter()
            .chain([line([127, 0, 0, 1], 69, 11), line([0, 0, 0, 0], 69, 12), line([127, 0, 0, 2], 69, 13), line([127, 0, 0, 1], 70, 14)])
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(conflicting_inodes(&table, SocketAddr::from(([127, 0, 0, 1], 69)), None), [11, 12]);
        assert_eq!(conflicting_inodes(&table, SocketAddr::from(([0, 0, 0, 0], 69)), None), [11, 12, 13]);
        // TCP: only listening sockets (state 0A) keep a port from being bound; these are in state 07.
        assert!(conflicting_inodes(&table, SocketAddr::from(([127, 0, 0, 1], 69)), Some(0x0A)).is_empty());
    }

    #[test]
    fn the_holder_of_a_taken_port_is_named() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let found = holders(Service::Tftp, address);
        assert!(found.iter().any(|h| h.pid == std::process::id()), "{found:?}");
        let error = io::Error::from(io::ErrorKind::AddrInUse);
        let line = explain(Service::Tftp, address, &error, PortOrigin::Spec);
        assert!(line.contains(&format!("{address} is in use by PID {}", std::process::id())), "{line}");
        assert!(line.contains("spec.ports.tftpPort") && !line.contains("need root"), "{line}");
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let line = explain(Service::Tftp, SocketAddr::from(([127, 0, 0, 1], 69)), &denied, PortOrigin::Flag);
        assert!(line.contains("CAP_NET_BIND_SERVICE") && line.contains("6969"), "{line}");

        // CAPF: a listening TCP socket, named the same way.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        assert!(holders(Service::Capf, address).iter().any(|h| h.pid == std::process::id()));
        let line = explain(Service::Capf, address, &error, PortOrigin::Spec);
        assert!(line.starts_with(&format!("cannot serve CAPF: {address} is in use by PID {}", std::process::id())), "{line}");
        assert!(line.contains("spec.ports.capfPort: pass --capf-port"), "{line}");
        let line = explain(Service::Capf, SocketAddr::from(([127, 0, 0, 1], 804)), &denied, PortOrigin::Flag);
        assert!(line.contains("pass --capf-port 1024 or above") && !line.contains("6969"), "{line}");
    }
}
