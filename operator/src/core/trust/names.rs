//! Distinguished-name strings (docs/wire-formats.md §1.4) and serial numbers (docs/wire-formats.md §1.5) as the trust files write them.

use x509_parser::asn1_rs::{Tag, ToDer};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

use super::error::TrustError;

/// RFC 4514 short names for the attribute types §1.4 lists; every other type is written as its dotted OID.
const SHORT_NAMES: [(&str, &str); 9] = [
    ("2.5.4.3", "CN"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.6", "C"),
    ("2.5.4.9", "STREET"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
];

/// The §1.4 string of a name, without the NUL the encoder appends: each attribute in encoded order (first RDN
/// first, the reverse of the usual RFC 4514 order), `TYPE=value`, joined with `,`.
pub fn dn_string(name: &X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in name.iter() {
        for attribute in rdn.iter() {
            parts.push(attribute_string(attribute));
        }
    }
    parts.join(",")
}

fn attribute_string(attribute: &AttributeTypeAndValue<'_>) -> String {
    let oid = attribute.attr_type().to_id_string();
    let short = SHORT_NAMES.iter().find(|(dotted, _)| *dotted == oid).map(|(_, short)| *short);
    match (short, string_value(attribute)) {
        (Some(short), Some(text)) => format!("{short}={}", escape_value(&text)),
        // RFC 4514 §2.4: a dotted type, or a value without a string form, is `#` + hex of its BER encoding.
        (short, _) => format!("{}=#{}", short.unwrap_or(&oid), hex(&value_der(attribute))),
    }
}

/// The value as text for the ASN.1 string types; `None` for the others.
fn string_value(attribute: &AttributeTypeAndValue<'_>) -> Option<String> {
    let value = attribute.attr_value();
    let bytes = value.data;
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
            String::from_utf8(bytes.to_vec()).ok()
        }
        // T.61 strings are written as Latin-1 in practice.
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = bytes.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect();
            (bytes.len() % 2 == 0).then(|| String::from_utf16(&units).ok()).flatten()
        }
        Tag::UniversalString => {
            let chars: Option<String> =
                bytes.chunks_exact(4).map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]]))).collect();
            (bytes.len() % 4 == 0).then_some(chars).flatten()
        }
        _ => None,
    }
}

fn value_der(attribute: &AttributeTypeAndValue<'_>) -> Vec<u8> {
    attribute.attr_value().to_der_vec().unwrap_or_else(|_| attribute.attr_value().data.to_vec())
}

/// RFC 4514 §2.4 escaping, by hand (no crate writes this order or this escaping).
pub fn escape_value(value: &str) -> String {
    let count = value.chars().count();
    let mut out = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            ' ' if index == 0 || index + 1 == count => out.push_str("\\ "),
            '#' if index == 0 => out.push_str("\\#"),
            _ => out.push(c),
        }
    }
    out
}

/// A DER INTEGER's content octets as §1.5 writes them: the minimal unsigned magnitude, no sign octet.
/// Zero and negative serials are refused.
pub fn serial_magnitude(der_integer: &[u8]) -> Result<Vec<u8>, TrustError> {
    match der_integer.first() {
        None => Err(TrustError::BadSerial),
        Some(first) if first & 0x80 != 0 => Err(TrustError::BadSerial),
        Some(_) => {
            let magnitude = strip_leading_zeros(der_integer);
            if magnitude.is_empty() { Err(TrustError::BadSerial) } else { Ok(magnitude.to_vec()) }
        }
    }
}

/// Serials compare after stripping leading `0x00` bytes on both sides (docs/wire-formats.md §1.5).
pub fn serials_equal(a: &[u8], b: &[u8]) -> bool {
    strip_leading_zeros(a) == strip_leading_zeros(b)
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Uppercase hex without separators, as inspect prints serials.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_rfc4514_section_2_4() {
        assert_eq!(escape_value("Example, Inc."), "Example\\, Inc.");
        assert_eq!(escape_value(" lead"), "\\ lead");
        assert_eq!(escape_value("trail "), "trail\\ ");
        assert_eq!(escape_value("#x#"), "\\#x#");
        assert_eq!(escape_value("a+b;c<d>e\"f\\g"), "a\\+b\\;c\\<d\\>e\\\"f\\\\g");
        assert_eq!(escape_value("nul\0"), "nul\\00");
        assert_eq!(escape_value("Voice"), "Voice");
    }

    #[test]
    fn serial_drops_the_sign_octet_and_refuses_zero_and_negative() {
        assert_eq!(serial_magnitude(&[0x00, 0xC1, 0x02]).unwrap(), vec![0xC1, 0x02]);
        assert_eq!(serial_magnitude(&[0x3A, 0x7F]).unwrap(), vec![0x3A, 0x7F]);
        assert_eq!(serial_magnitude(&[0x00]), Err(TrustError::BadSerial));
        assert_eq!(serial_magnitude(&[0xFF, 0x01]), Err(TrustError::BadSerial));
        assert_eq!(serial_magnitude(&[]), Err(TrustError::BadSerial));
        assert!(serials_equal(&[0x00, 0xC1], &[0xC1]));
        assert!(!serials_equal(&[0xC1], &[0xC2]));
    }
}
