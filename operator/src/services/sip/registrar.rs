//! Where each line is reachable: the bindings of REGISTER (RFC 3261 §10), by directory number.
//! Bounded: past [`MAX_BINDINGS`] a new binding is refused, and the service answers 503.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most bindings held: a CallManager cluster's 30,000 phones with a few lines each.
pub const MAX_BINDINGS: usize = 200_000;
/// The longest registration granted, and the one given when the phone asks none (RFC 3261 §10.2.1.1).
pub const MAX_EXPIRES: u32 = 3600;
/// Shorter requests are raised to this (RFC 3261 §10.3 step 7 allows 423; raising is kinder to phones).
pub const MIN_EXPIRES: u32 = 60;

/// How a line is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub device: String,
    /// The Contact URI as the phone sent it.
    pub contact: String,
    /// The transport the REGISTER came on, which requests to the phone reuse.
    pub transport: rsipstack::sip::Transport,
    pub source: SocketAddr,
    pub expires_at: Instant,
}

#[derive(Debug, Default)]
pub struct Registrar {
    lines: Mutex<HashMap<String, Vec<Binding>>>,
}

/// The registrar is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Registrar {
    /// Adds or refreshes `binding` for `line` (same device and contact: replaced).
    pub fn bind(&self, line: &str, binding: Binding) -> Result<(), Full> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let total: usize = lines.values().map(Vec::len).sum();
        let bindings = lines.entry(line.to_string()).or_default();
        bindings.retain(|b| b.expires_at > now && !(b.device == binding.device && b.contact == binding.contact));
        if total >= MAX_BINDINGS {
            return Err(Full);
        }
        bindings.push(binding);
        Ok(())
    }

    /// Removes `device`'s binding of `contact` for `line`, or all its bindings when `contact` is None
    /// (`Contact: *`).
    pub fn unbind(&self, line: &str, device: &str, contact: Option<&str>) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bindings) = lines.get_mut(line) {
            bindings.retain(|b| b.device != device || contact.is_some_and(|c| c != b.contact));
            if bindings.is_empty() {
                lines.remove(line);
            }
        }
    }

    /// The live bindings of `line`.
    pub fn lookup(&self, line: &str) -> Vec<Binding> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        lines.get(line).map(|b| b.iter().filter(|b| b.expires_at > now).cloned().collect()).unwrap_or_default()
    }

    /// The live binding whose Contact is `contact`: where a request inside a dialog goes.
    pub fn find_contact(&self, contact: &str) -> Option<Binding> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        lines.values().flatten().find(|b| b.expires_at > now && b.contact == contact).cloned()
    }

    /// Every live binding with its line, sorted by line then device.
    pub fn snapshot(&self) -> Vec<(String, Binding)> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut all: Vec<(String, Binding)> =
            lines.iter().flat_map(|(line, b)| b.iter().filter(|b| b.expires_at > now).map(move |b| (line.clone(), b.clone()))).collect();
        all.sort_by(|a, b| (&a.0, &a.1.device, &a.1.contact).cmp(&(&b.0, &b.1.device, &b.1.contact)));
        all
    }

    /// Live bindings, every line counted.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).values().flatten().filter(|b| b.expires_at > now).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The registration time granted for `asked` seconds (None: the phone asked none); zero, a
/// removal, is the caller's to handle before.
pub fn granted(asked: Option<u32>) -> u32 {
    asked.unwrap_or(MAX_EXPIRES).clamp(MIN_EXPIRES, MAX_EXPIRES)
}

/// When a binding granted `seconds` ends.
pub fn expiry(seconds: u32) -> Instant {
    Instant::now() + Duration::from_secs(u64::from(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(device: &str, contact: &str) -> Binding {
        Binding {
            device: device.into(),
            contact: contact.into(),
            transport: rsipstack::sip::Transport::Udp,
            source: "127.0.0.1:5062".parse().unwrap(),
            expires_at: expiry(60),
        }
    }

    #[test]
    fn a_refresh_replaces_and_unbinding_removes() {
        let registrar = Registrar::default();
        registrar.bind("1005", binding("SEP000000001005", "sip:1005@127.0.0.1:5062")).unwrap();
        registrar.bind("1005", binding("SEP000000001005", "sip:1005@127.0.0.1:5062")).unwrap();
        registrar.bind("1005", binding("SEP000000001006", "sip:1005@127.0.0.1:5064")).unwrap();
        assert_eq!(registrar.lookup("1005").len(), 2);
        registrar.unbind("1005", "SEP000000001005", Some("sip:other"));
        assert_eq!(registrar.lookup("1005").len(), 2);
        registrar.unbind("1005", "SEP000000001005", None);
        let left: Vec<(String, String)> = registrar.lookup("1005").into_iter().map(|b| (b.device, b.contact)).collect();
        assert_eq!(left, vec![("SEP000000001006".to_string(), "sip:1005@127.0.0.1:5064".to_string())]);
        assert_eq!(registrar.len(), 1);
    }

    #[test]
    fn an_expired_binding_is_gone() {
        let registrar = Registrar::default();
        registrar
            .bind("1005", Binding { expires_at: Instant::now() - Duration::from_secs(1), ..binding("SEP000000001005", "sip:a") })
            .unwrap();
        assert!(registrar.lookup("1005").is_empty());
        assert!(registrar.is_empty());
    }

    #[test]
    fn registration_times_are_clamped() {
        assert_eq!(granted(None), MAX_EXPIRES);
        assert_eq!(granted(Some(5)), MIN_EXPIRES);
        assert_eq!(granted(Some(600)), 600);
        assert_eq!(granted(Some(86_400)), MAX_EXPIRES);
    }
}
