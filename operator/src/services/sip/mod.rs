//! The signaling service: SIP registrar and stateful proxy that enforces the phone and trunk
//! security profiles (Chapters 5, 8, 14, 15).

pub mod digest;
pub mod directory;
pub mod identity;
pub mod legacy;
mod media;
pub mod proxy;
pub mod registrar;
pub mod server;
mod stateless;
pub mod trunk;

#[cfg(test)]
mod parser_tests {
    //! The SIP stack parses what arrives before any of our code sees it: whatever the bytes, it must
    //! return, never panic. One property over arbitrary bytes, one over messages that are nearly
    //! right (a real request line and headers, mangled), and one over the stream framer TCP and TLS
    //! use.
    use proptest::prelude::*;
    use rsipstack::sip::SipMessage;
    use rsipstack::transport::stream::SipCodec;
    use tokio_util::codec::Decoder;

    const REGISTER: &str = "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1;rport\r\n\
        From: <sip:1005@127.0.0.1>;tag=a\r\nTo: <sip:1005@127.0.0.1>\r\nCall-ID: c@test\r\nCSeq: 1 REGISTER\r\n\
        Contact: <sip:1005@127.0.0.1:5062>;expires=600\r\nAuthorization: Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"0\"\r\n\
        Content-Length: 0\r\n\r\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SipMessage::try_from(bytes.as_slice());
        }

        /// A real REGISTER with bytes overwritten, inserted or cut at random places.
        #[test]
        fn mangled_requests_never_panic_the_parser(
            edits in proptest::collection::vec((0usize..REGISTER.len(), any::<u8>(), 0u8..3), 1..24)
        ) {
            let mut bytes = REGISTER.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let at = at.min(bytes.len());
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at.max(1)),
                }
            }
            if let Ok(SipMessage::Request(request)) = SipMessage::try_from(bytes.as_slice()) {
                // What our code reads of a request must not panic either.
                use rsipstack::sip::prelude::HeadersExt;
                let _ = request.to_header().and_then(|to| to.uri());
                let _ = request.typed_contact_headers();
                let _ = request.authorization_header().map(|h| super::digest::parse_credentials(h.value()));
            }
        }

        #[test]
        fn the_stream_framer_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 1..8)) {
            let mut codec = SipCodec::new();
            let mut buffer = bytes::BytesMut::new();
            for chunk in chunks {
                buffer.extend_from_slice(&chunk);
                while let Ok(Some(_)) = codec.decode(&mut buffer) {}
            }
        }
    }
}
