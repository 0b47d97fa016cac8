//! The TLV primitive: `tag: u8 | length: u16 | value` (docs/wire-formats.md §2).
//!
//! Written by hand: the format is Cisco's own and no crate implements it.

use super::error::TrustError;

/// The largest value a u16 length describes (docs/wire-formats.md §2.1).
pub const MAX_VALUE_LEN: usize = 65_535;

/// Size of the tag and length fields in front of every value.
pub const ELEMENT_OVERHEAD: usize = 3;

/// How decoders treat tags they do not know (docs/wire-formats.md §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Our own files: unknown tags, repeated tags and loose lengths are errors.
    #[default]
    Strict,
    /// Foreign files: unknown tags are skipped and recorded.
    Lenient,
}

/// Appends one element; fails rather than truncating a value longer than 65 535 bytes (docs/wire-formats.md §2.1).
pub fn encode_into(out: &mut Vec<u8>, tag: u8, value: &[u8]) -> Result<(), TrustError> {
    let length = u16::try_from(value.len()).map_err(|_| TrustError::ValueTooLong { tag, length: value.len() })?;
    out.push(tag);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// One element as a new vector.
pub fn encode(tag: u8, value: &[u8]) -> Result<Vec<u8>, TrustError> {
    let mut out = Vec::with_capacity(ELEMENT_OVERHEAD + value.len());
    encode_into(&mut out, tag, value)?;
    Ok(out)
}

/// A decoded element. `offset` is the position of its tag byte in the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub tag: u8,
    pub offset: usize,
    pub value: &'a [u8],
}

impl Element<'_> {
    pub fn value_offset(&self) -> usize {
        self.offset + ELEMENT_OVERHEAD
    }

    /// Offset of the first byte after this element.
    pub fn end(&self) -> usize {
        self.value_offset() + self.value.len()
    }
}

/// Reads the element at `data[offset..]` that must end by `end` (the end of its container).
/// Running past the buffer is `Truncated`; running past `end` only is `ContainerOverrun`.
pub fn read_element(data: &[u8], offset: usize, end: usize) -> Result<Element<'_>, TrustError> {
    let end = end.min(data.len());
    let overrun = |tag: u8, needed_end: usize| {
        if needed_end > data.len() {
            TrustError::Truncated { offset: data.len(), needed: needed_end - data.len() }
        } else {
            TrustError::ContainerOverrun { tag, offset }
        }
    };
    let tag = *data.get(offset).ok_or(TrustError::Truncated { offset, needed: 1 })?;
    let header_end = offset + ELEMENT_OVERHEAD;
    if header_end > end {
        return Err(overrun(tag, header_end));
    }
    let length = usize::from(u16::from_be_bytes([data[offset + 1], data[offset + 2]]));
    let value_end = header_end + length;
    if value_end > end {
        return Err(overrun(tag, value_end));
    }
    Ok(Element { tag, offset, value: &data[header_end..value_end] })
}

/// Decodes one element from the start of `input` and returns it with the bytes after it.
pub fn decode(input: &[u8]) -> Result<(Element<'_>, &[u8]), TrustError> {
    let element = read_element(input, 0, input.len())?;
    Ok((element, &input[element.end()..]))
}

/// The elements of `data[start..end]` in order (a container's value, a record, a header region).
/// Stops after the first error.
pub struct Elements<'a> {
    data: &'a [u8],
    position: usize,
    end: usize,
}

impl<'a> Elements<'a> {
    pub fn new(data: &'a [u8], start: usize, end: usize) -> Self {
        Elements { data, position: start, end }
    }

    /// The children of a container element, with offsets in the same buffer.
    pub fn children(data: &'a [u8], container: &Element<'a>) -> Self {
        Elements::new(data, container.value_offset(), container.end())
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Element<'a>, TrustError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.end {
            return None;
        }
        match read_element(self.data, self.position, self.end) {
            Ok(element) => {
                self.position = element.end();
                Some(Ok(element))
            }
            Err(e) => {
                self.position = self.end;
                Some(Err(e))
            }
        }
    }
}

/// A value that ends in one NUL, as text (docs/wire-formats.md §1.2). UTF-8 is accepted.
pub fn nul_terminated(tag: u8, value: &[u8]) -> Result<String, TrustError> {
    match value.split_last() {
        Some((0, text)) => String::from_utf8(text.to_vec()).map_err(|_| TrustError::BadString { tag }),
        _ => Err(TrustError::BadString { tag }),
    }
}

/// Text plus its NUL terminator, as it goes into a value.
pub fn with_nul(text: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(text.len() + 1);
    value.extend_from_slice(text.as_bytes());
    value.push(0);
    value
}

/// A fixed-size value, or `BadElementLength`.
pub fn fixed<const N: usize>(element: &Element<'_>) -> Result<[u8; N], TrustError> {
    element.value.try_into().map_err(|_| TrustError::BadElementLength { tag: element.tag, expected: N, found: element.value.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_big_endian_length() {
        assert_eq!(encode(0x0E, b"ab").unwrap(), vec![0x0E, 0x00, 0x02, b'a', b'b']);
        assert_eq!(encode(0x01, &[]).unwrap(), vec![0x01, 0, 0]);
    }

    #[test]
    fn refuses_values_over_65535() {
        let value = vec![0u8; 65_536];
        assert_eq!(encode(0x09, &value), Err(TrustError::ValueTooLong { tag: 0x09, length: 65_536 }));
    }

    #[test]
    fn truncation_and_overrun_are_told_apart() {
        assert!(matches!(decode(&[0x01, 0x00]), Err(TrustError::Truncated { .. })));
        assert!(matches!(decode(&[0x01, 0x00, 0x03, 1, 2]), Err(TrustError::Truncated { .. })));
        // The container's value is [3 .. 8); its child claims 4 bytes but only 2 remain inside it.
        let data = [0x03, 0x00, 0x05, 0x04, 0x00, 0x04, 0xAA, 0xBB, 0xCC, 0xDD];
        let container = read_element(&data, 0, data.len()).unwrap();
        assert_eq!(container.end(), 8);
        let child = Elements::children(&data, &container).next().unwrap();
        assert_eq!(child, Err(TrustError::ContainerOverrun { tag: 0x04, offset: 3 }));
    }

    #[test]
    fn nul_terminated_text() {
        assert_eq!(nul_terminated(0x0E, b"ITLFile.tlv\0").unwrap(), "ITLFile.tlv");
        assert_eq!(nul_terminated(0x0E, b"ITLFile.tlv"), Err(TrustError::BadString { tag: 0x0E }));
        assert_eq!(nul_terminated(0x0E, b""), Err(TrustError::BadString { tag: 0x0E }));
    }
}
