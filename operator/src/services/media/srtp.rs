//! SRTP on an encrypted call: the keys each end offers in its SDP (`a=crypto`, RFC 4568), and the
//! check that what a leg sends is SRTP under its own key. The relay forwards the packet as it came;
//! it authenticates it (rtc-srtp) only to refuse plain RTP, or anything else, where SRTP was
//! negotiated (P.1-20: an encrypted call never falls back to RTP).

use base64::Engine as _;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;

/// Packets out of order that SRTP still accepts, per stream (RFC 3711 §3.3.2 asks at least 64).
const REPLAY_WINDOW: usize = 128;

/// The suites of `a=crypto` (RFC 4568 §6.2, RFC 6188, RFC 7714).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    Aes256CmHmacSha1_80,
    Aes256CmHmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl CryptoSuite {
    fn parse(name: &str) -> Option<CryptoSuite> {
        Some(match name {
            "AES_CM_128_HMAC_SHA1_80" => CryptoSuite::AesCm128HmacSha1_80,
            "AES_CM_128_HMAC_SHA1_32" => CryptoSuite::AesCm128HmacSha1_32,
            "AES_256_CM_HMAC_SHA1_80" => CryptoSuite::Aes256CmHmacSha1_80,
            "AES_256_CM_HMAC_SHA1_32" => CryptoSuite::Aes256CmHmacSha1_32,
            "AEAD_AES_128_GCM" => CryptoSuite::AeadAes128Gcm,
            "AEAD_AES_256_GCM" => CryptoSuite::AeadAes256Gcm,
            _ => return None,
        })
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            CryptoSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            CryptoSuite::Aes256CmHmacSha1_80 => ProtectionProfile::Aes256CmHmacSha1_80,
            CryptoSuite::Aes256CmHmacSha1_32 => ProtectionProfile::Aes256CmHmacSha1_32,
            CryptoSuite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            CryptoSuite::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        }
    }
}

/// One end's sending key: its suite, master key and master salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey {
    pub suite: CryptoSuite,
    pub master_key: Vec<u8>,
    pub master_salt: Vec<u8>,
}

/// Key material stays out of logs (P.16-8).
impl std::fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdesKey").field("suite", &self.suite).finish_non_exhaustive()
    }
}

/// Why an `a=crypto` line is not a key the relay can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoLineError {
    #[error("not an a=crypto attribute")]
    NotCrypto,
    #[error("crypto suite {0} is not one the relay knows")]
    UnknownSuite(String),
    #[error("the key parameter is not inline:<base64>")]
    NotInline,
    #[error("the key is not base64")]
    NotBase64,
    #[error("the key and salt are {got} bytes, the suite takes {expected}")]
    WrongLength { got: usize, expected: usize },
}

/// Reads `a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|MKI:length]` (RFC 4568 §9.1); the
/// first key parameter is the one used. Never panics, whatever the line.
pub fn parse_crypto_line(line: &str) -> Result<SdesKey, CryptoLineError> {
    let value = line.trim().strip_prefix("a=crypto:").ok_or(CryptoLineError::NotCrypto)?;
    let mut fields = value.split_ascii_whitespace();
    let (_tag, suite, key) = (fields.next(), fields.next(), fields.next());
    let suite_name = suite.ok_or(CryptoLineError::NotCrypto)?;
    let suite = CryptoSuite::parse(suite_name).ok_or_else(|| CryptoLineError::UnknownSuite(suite_name.chars().take(40).collect()))?;
    let inline = key.and_then(|k| k.split(';').next()).and_then(|k| k.strip_prefix("inline:")).ok_or(CryptoLineError::NotInline)?;
    let encoded = inline.split('|').next().unwrap_or_default();
    let material = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| CryptoLineError::NotBase64)?;
    let profile = suite.profile();
    let (key_len, salt_len) = (profile.key_len(), profile.salt_len());
    if material.len() != key_len + salt_len {
        return Err(CryptoLineError::WrongLength { got: material.len(), expected: key_len + salt_len });
    }
    let (master_key, master_salt) = material.split_at(key_len);
    Ok(SdesKey { suite, master_key: master_key.to_vec(), master_salt: master_salt.to_vec() })
}

/// Checks what one end sends against its key: SRTP and SRTCP that authenticate, each packet once.
pub struct SrtpCheck {
    context: Context,
}

impl SrtpCheck {
    pub fn new(key: &SdesKey) -> Result<SrtpCheck, String> {
        let context = Context::new(
            &key.master_key,
            &key.master_salt,
            key.suite.profile(),
            Some(rtc_srtp::option::srtp_replay_protection(REPLAY_WINDOW)),
            Some(rtc_srtp::option::srtcp_replay_protection(REPLAY_WINDOW)),
            &rtc_srtp::crypto::providers::RingCrypto,
        )
        .map_err(|e| format!("SRTP context: {e}"))?;
        Ok(SrtpCheck { context })
    }

    /// Whether `packet` is SRTP (or, `rtcp`, SRTCP) under this key, and not a replay. The
    /// decrypted copy rtc-srtp makes is dropped: the relay forwards the packet as it came.
    pub fn admits(&mut self, packet: &[u8], rtcp: bool) -> bool {
        if rtcp { self.context.decrypt_rtcp(packet).is_ok() } else { self.context.decrypt_rtp(packet).is_ok() }
    }
}

/// Whether a datagram on an RTP port is RTCP (rtcp-mux, RFC 5761 §4: packet types 192 to 223).
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && packet[0] >> 6 == 2 && (192..=223).contains(&packet[1])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub const KEY_LINE: &str = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4";

    /// A plain RTP packet: version 2, PT 0, `sequence`, SSRC `ssrc`, 160 bytes of payload.
    pub fn rtp(sequence: u16, ssrc: u32) -> Vec<u8> {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&sequence.to_be_bytes());
        packet.extend_from_slice(&(u32::from(sequence) * 160).to_be_bytes());
        packet.extend_from_slice(&ssrc.to_be_bytes());
        packet.extend(std::iter::repeat_n(0xd5, 160));
        packet
    }

    /// `rtp(sequence, ssrc)` protected with `key`, as the sending phone would.
    pub fn srtp(key: &SdesKey, sequence: u16, ssrc: u32) -> Vec<u8> {
        let mut context =
            Context::new(&key.master_key, &key.master_salt, key.suite.profile(), None, None, &rtc_srtp::crypto::providers::RingCrypto)
                .unwrap();
        // A fresh context starts the stream's rollover counter at 0, as the phone's did.
        context.encrypt_rtp(&rtp(sequence, ssrc)).unwrap().to_vec()
    }

    #[test]
    fn a_crypto_line_gives_its_suite_key_and_salt() {
        let key = parse_crypto_line(KEY_LINE).unwrap();
        assert_eq!((key.suite, key.master_key.len(), key.master_salt.len()), (CryptoSuite::AesCm128HmacSha1_80, 16, 14));
        assert!(!format!("{key:?}").contains("master_key"), "no key material in logs");
        assert_eq!(
            parse_crypto_line("a=crypto:1 F8_128_HMAC_SHA1_80 inline:AAAA"),
            Err(CryptoLineError::UnknownSuite("F8_128_HMAC_SHA1_80".into()))
        );
        assert_eq!(
            parse_crypto_line("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"),
            Err(CryptoLineError::WrongLength { got: 3, expected: 30 })
        );
        assert_eq!(parse_crypto_line("a=rtpmap:0 PCMU/8000"), Err(CryptoLineError::NotCrypto));
        assert_eq!(parse_crypto_line("a=crypto:1 AES_CM_128_HMAC_SHA1_80 key:AAAA"), Err(CryptoLineError::NotInline));
    }

    #[test]
    fn srtp_under_the_key_passes_once_and_rtp_or_another_key_does_not() {
        let key = parse_crypto_line(KEY_LINE).unwrap();
        let mut check = SrtpCheck::new(&key).unwrap();
        let protected = srtp(&key, 1, 0x1234);
        assert!(check.admits(&protected, false));
        assert!(!check.admits(&protected, false), "a replay");
        assert!(!check.admits(&rtp(2, 0x1234), false), "plain RTP");
        let other = SdesKey { master_key: vec![7; 16], ..key.clone() };
        assert!(!check.admits(&srtp(&other, 3, 0x1234), false), "another key");
        assert!(check.admits(&srtp(&key, 4, 0x1234), false));
    }

    #[test]
    fn rtcp_is_told_from_rtp_by_its_packet_type() {
        assert!(!is_rtcp(&rtp(1, 1)));
        assert!(is_rtcp(&[0x80, 200, 0, 6]), "a sender report");
        assert!(!is_rtcp(&[0x80]));
    }

    proptest! {
        #[test]
        fn crypto_lines_and_packets_never_panic(line in "\\PC{0,200}", packet in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_crypto_line(&format!("a=crypto:{line}"));
            let mut check = SrtpCheck::new(&parse_crypto_line(KEY_LINE).unwrap()).unwrap();
            let _ = check.admits(&packet, false);
            let _ = check.admits(&packet, true);
            let _ = is_rtcp(&packet);
        }
    }
}
