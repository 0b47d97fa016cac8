//! Certificate serial numbers: random 16-byte serials for issued certificates (docs/wire-formats.md §7.8) and the
//! comparison rule for serials from any source (docs/wire-formats.md §1.5).

use std::collections::BTreeSet;

use rand::RngCore;

/// Bytes of a serial we issue (docs/wire-formats.md §7.8).
pub const ISSUED_SERIAL_BYTES: usize = 16;

/// Draws before [`Serial::unique`] gives up. With 2^127 possible serials a second draw is already
/// astronomically unlikely to be needed; running out means the random source is broken.
const MAX_UNIQUE_DRAWS: usize = 64;

/// A certificate serial: its minimal unsigned big-endian magnitude, without leading `0x00` bytes, so that
/// serials from DER, CTL records and status strings compare equal (docs/wire-formats.md §1.5). Never zero.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialError {
    /// The serial is zero (or empty): refused (docs/wire-formats.md §1.5).
    Zero,
    /// The DER INTEGER is negative: refused (docs/wire-formats.md §1.5).
    Negative,
    /// The random source kept producing serials that are already issued.
    NoFreshSerial,
}

impl std::fmt::Display for SerialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SerialError::Zero => write!(f, "certificate serial is zero (docs/wire-formats.md §1.5)"),
            SerialError::Negative => write!(f, "certificate serial is negative (docs/wire-formats.md §1.5)"),
            SerialError::NoFreshSerial => {
                write!(f, "no unused serial after {MAX_UNIQUE_DRAWS} random draws: the random source is broken (docs/wire-formats.md §7.8)")
            }
        }
    }
}

impl std::error::Error for SerialError {}

impl Serial {
    /// A fresh serial: 16 random bytes with the top bit cleared, so the DER INTEGER is positive without a
    /// sign octet (docs/wire-formats.md §7.8). The first byte is also non-zero, so the DER content is always exactly
    /// 16 bytes and the serial is never zero.
    pub fn random(rng: &mut impl RngCore) -> Serial {
        let mut bytes = [0u8; ISSUED_SERIAL_BYTES];
        loop {
            rng.fill_bytes(&mut bytes);
            bytes[0] &= 0x7f;
            if bytes[0] != 0 {
                return Serial(bytes.to_vec());
            }
        }
    }

    /// A fresh serial that is not in `issued`. The caller keeps the set of serials its CA has issued.
    pub fn unique(rng: &mut impl RngCore, issued: &BTreeSet<Serial>) -> Result<Serial, SerialError> {
        (0..MAX_UNIQUE_DRAWS).map(|_| Serial::random(rng)).find(|serial| !issued.contains(serial)).ok_or(SerialError::NoFreshSerial)
    }

    /// A serial from an unsigned big-endian magnitude; leading `0x00` bytes are dropped (docs/wire-formats.md §1.5).
    pub fn from_magnitude(bytes: &[u8]) -> Result<Serial, SerialError> {
        let start = bytes.iter().position(|&b| b != 0).ok_or(SerialError::Zero)?;
        Ok(Serial(bytes[start..].to_vec()))
    }

    /// A serial from the content octets of a DER INTEGER (two's complement): refuses negative and zero.
    pub fn from_der_integer(content: &[u8]) -> Result<Serial, SerialError> {
        match content.first() {
            Some(first) if first & 0x80 != 0 => Err(SerialError::Negative),
            _ => Serial::from_magnitude(content),
        }
    }

    /// The minimal magnitude, as written in CTL records (docs/wire-formats.md §1.5).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hexadecimal of the magnitude.
    pub fn to_hex(&self) -> String {
        super::inspect::lower_hex(&self.0)
    }
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Replays fixed bytes, to drive [`Serial::random`] into its edge cases.
    struct Replay(Vec<u8>, usize);

    impl RngCore for Replay {
        fn next_u32(&mut self) -> u32 {
            unimplemented!("Serial::random uses fill_bytes only")
        }
        fn next_u64(&mut self) -> u64 {
            unimplemented!("Serial::random uses fill_bytes only")
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for byte in dest {
                *byte = self.0[self.1 % self.0.len()];
                self.1 += 1;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[test]
    fn random_serials_are_16_bytes_positive_and_non_zero() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let serial = Serial::random(&mut rng);
            assert_eq!(serial.as_bytes().len(), ISSUED_SERIAL_BYTES);
            assert_eq!(serial.as_bytes()[0] & 0x80, 0, "top bit must be clear (docs/wire-formats.md §7.8)");
            assert_ne!(serial.as_bytes()[0], 0);
        }
    }

    #[test]
    fn random_clears_the_top_bit_and_redraws_a_zero_first_byte() {
        // First draw: 16 bytes of 0x80, whose first byte becomes 0x00 once the top bit is cleared: redrawn.
        // Second draw: 16 bytes of 0xFF, whose first byte becomes 0x7F.
        let mut bytes = vec![0x80; 16];
        bytes.extend([0xff; 16]);
        let serial = Serial::random(&mut Replay(bytes, 0));
        let mut expected = vec![0x7f];
        expected.extend([0xff; 15]);
        assert_eq!(serial.as_bytes(), expected.as_slice());
    }

    #[test]
    fn unique_skips_issued_serials_and_gives_up_on_a_stuck_source() {
        let stuck = |value: u8| Replay(vec![value], 0);
        let taken = Serial::random(&mut stuck(0x11));
        let issued = BTreeSet::from([taken.clone()]);
        assert_eq!(Serial::unique(&mut stuck(0x11), &issued), Err(SerialError::NoFreshSerial));
        let fresh = Serial::unique(&mut stuck(0x22), &issued).unwrap();
        assert_ne!(fresh, taken);

        let mut rng = StdRng::seed_from_u64(1);
        let mut issued = BTreeSet::new();
        for _ in 0..100 {
            let serial = Serial::unique(&mut rng, &issued).unwrap();
            assert!(issued.insert(serial));
        }
    }

    #[test]
    fn serials_compare_after_stripping_leading_zeros() {
        // docs/wire-formats.md §1.5: DER `00 C1 …` and `C1 …` are the same serial.
        assert_eq!(Serial::from_der_integer(&[0x00, 0xc1, 0x02]).unwrap(), Serial::from_magnitude(&[0xc1, 0x02]).unwrap());
        assert_eq!(Serial::from_magnitude(&[0, 0, 0x05]).unwrap().as_bytes(), &[0x05]);
        assert_eq!(Serial::from_magnitude(&[0xc1, 0x02]).unwrap().to_hex(), "c102");
    }

    #[test]
    fn zero_and_negative_serials_are_refused() {
        assert_eq!(Serial::from_magnitude(&[]), Err(SerialError::Zero));
        assert_eq!(Serial::from_magnitude(&[0, 0]), Err(SerialError::Zero));
        assert_eq!(Serial::from_der_integer(&[0x00]), Err(SerialError::Zero));
        assert_eq!(Serial::from_der_integer(&[0xff, 0x01]), Err(SerialError::Negative));
    }
}
