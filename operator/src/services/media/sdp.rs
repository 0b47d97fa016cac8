//! The few SDP lines the relay changes (RFC 8866): the audio stream's connection address and port,
//! and its explicit RTCP port, so that each end sends to the relay; every other line is forwarded
//! as the end wrote it. Written here, on text: a crate's parse and print would reorder or rewrite
//! what the phones sent, and the relay needs three lines.

use std::net::{IpAddr, SocketAddr};

/// The audio stream of an SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioStream {
    /// Where the end receives RTP: the media-level `c=` (else the session's) and the `m=audio` port.
    pub address: SocketAddr,
    /// `a=rtcp-mux`: RTCP on the RTP port.
    pub rtcp_mux: bool,
    /// The `a=crypto` lines of the stream, as written.
    pub crypto: Vec<String>,
}

fn lines(body: &[u8]) -> Option<Vec<&str>> {
    let text = std::str::from_utf8(body).ok()?;
    Some(text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect())
}

fn connection_address(line: &str) -> Option<IpAddr> {
    let mut fields = line.strip_prefix("c=")?.split_ascii_whitespace();
    let (_net, _kind, address) = (fields.next()?, fields.next()?, fields.next()?);
    address.split('/').next()?.parse().ok()
}

/// The first audio stream of `body` with a port (a port of 0 is a stream refused or held).
pub fn audio_stream(body: &[u8]) -> Option<AudioStream> {
    let lines = lines(body)?;
    let mut session_address = None;
    let mut in_audio = false;
    let mut stream: Option<(Option<IpAddr>, u16, bool, Vec<String>)> = None;
    for line in lines {
        if let Some(media) = line.strip_prefix("m=") {
            if stream.is_some() {
                break;
            }
            let mut fields = media.split_ascii_whitespace();
            in_audio = fields.next() == Some("audio");
            if in_audio {
                let port = fields.next()?.split('/').next()?.parse().ok()?;
                stream = Some((None, port, false, Vec::new()));
            }
            continue;
        }
        match (&mut stream, in_audio) {
            (None, _) if line.starts_with("c=") => session_address = connection_address(line),
            (Some((address, _, mux, crypto)), true) => {
                if line.starts_with("c=") {
                    *address = connection_address(line);
                } else if line == "a=rtcp-mux" {
                    *mux = true;
                } else if line.starts_with("a=crypto:") {
                    crypto.push(line.to_string());
                }
            }
            _ => {}
        }
    }
    let (address, port, rtcp_mux, crypto) = stream?;
    if port == 0 {
        return None;
    }
    Some(AudioStream { address: SocketAddr::new(address.or(session_address)?, port), rtcp_mux, crypto })
}

/// `body` with its audio stream sent to `relay`: every `c=` that applies to it names the relay, its
/// `m=audio` port is `port`, and an explicit `a=rtcp` port is the one above (RFC 3605).
pub fn through_relay(body: &[u8], relay: IpAddr, port: u16) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let family = if relay.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_media, mut in_audio, mut done) = (false, false, false);
    for raw in text.split_inclusive('\n') {
        let (line, ending) = match raw.strip_suffix("\r\n") {
            Some(line) => (line, "\r\n"),
            None => raw.strip_suffix('\n').map_or((raw, ""), |line| (line, "\n")),
        };
        if let Some(media) = line.strip_prefix("m=") {
            in_media = true;
            in_audio = !done && media.starts_with("audio ");
            if in_audio {
                done = true;
                let mut fields: Vec<&str> = media.split(' ').collect();
                let port_text = port.to_string();
                if fields.len() > 1 {
                    fields[1] = &port_text;
                }
                out.push_str(&format!("m={}{ending}", fields.join(" ")));
                continue;
            }
        }
        if line.starts_with("c=") && (!in_media || in_audio) {
            out.push_str(&format!("c=IN {family} {relay}{ending}"));
        } else if in_audio && line.starts_with("a=rtcp:") {
            out.push_str(&format!("a=rtcp:{}{ending}", port.wrapping_add(1)));
        } else {
            out.push_str(line);
            out.push_str(ending);
        }
    }
    Some(out.into_bytes())
}

/// The `a=crypto` line of `lines` whose tag is `tag` (RFC 4568 §5.1: the answer picks one by tag).
pub fn crypto_with_tag<'a>(lines: &'a [String], tag: &str) -> Option<&'a String> {
    lines.iter().find(|line| crypto_tag(line) == Some(tag))
}

pub fn crypto_tag(line: &str) -> Option<&str> {
    line.strip_prefix("a=crypto:")?.split_ascii_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
        m=audio 4000 RTP/SAVP 0 101\r\na=rtcp:4001\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
        a=rtpmap:0 PCMU/8000\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 10.0.0.9\r\n";

    #[test]
    fn the_audio_stream_is_read_from_its_lines() {
        let stream = audio_stream(OFFER.as_bytes()).unwrap();
        assert_eq!(stream.address, "10.0.0.5:4000".parse().unwrap());
        assert!(!stream.rtcp_mux);
        assert_eq!(stream.crypto.len(), 1);
        assert_eq!(crypto_tag(&stream.crypto[0]), Some("1"));
        let muxed = "v=0\nc=IN IP4 10.0.0.1\nm=audio 5000 RTP/AVP 0\nc=IN IP4 10.0.0.2\na=rtcp-mux\n";
        let stream = audio_stream(muxed.as_bytes()).unwrap();
        assert_eq!((stream.address, stream.rtcp_mux), ("10.0.0.2:5000".parse().unwrap(), true), "the media-level c= wins");
        assert_eq!(audio_stream(b"v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 0 RTP/AVP 0\r\n"), None, "a refused stream");
        assert_eq!(audio_stream(b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n"), None, "no address");
    }

    #[test]
    fn through_the_relay_changes_the_audio_address_and_ports_and_nothing_else() {
        let rewritten = String::from_utf8(through_relay(OFFER.as_bytes(), "192.0.2.1".parse().unwrap(), 20000).unwrap()).unwrap();
        assert_eq!(
            rewritten,
            "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 20000 RTP/SAVP 0 101\r\na=rtcp:20001\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
             a=rtpmap:0 PCMU/8000\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 10.0.0.9\r\n"
        );
        assert_eq!(audio_stream(rewritten.as_bytes()).unwrap().address, "192.0.2.1:20000".parse().unwrap());
    }

    proptest! {
        #[test]
        fn any_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), text in "\\PC{0,300}") {
            let _ = audio_stream(&body);
            let _ = through_relay(&body, "127.0.0.1".parse().unwrap(), 1);
            let _ = audio_stream(text.as_bytes());
            let _ = through_relay(text.as_bytes(), "127.0.0.1".parse().unwrap(), 1);
        }
    }
}
