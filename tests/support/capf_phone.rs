//! The framing a phone speaks to CAPF (docs/wire-formats.md §7.2), over any blocking stream: the
//! tests that play a phone against `callguard local` share it.

#![allow(dead_code)]

use std::io::{Read, Write};

use callguard::services::capf::frame::{Frame, FrameHeader, HEADER_LEN};

/// The next frame, or `None` when the stream ends.
pub fn read_frame(stream: &mut impl Read) -> Option<Frame> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).ok()?;
    let parsed = FrameHeader::decode(&header).expect("the server sends 0x55 frames");
    let mut bytes = header.to_vec();
    bytes.resize(HEADER_LEN + usize::from(parsed.body_len), 0);
    stream.read_exact(&mut bytes[HEADER_LEN..]).ok()?;
    Some(Frame::decode(&bytes).expect("the server sends well-formed frames"))
}

pub fn send(stream: &mut impl Write, frame: Frame) {
    stream.write_all(&frame.encode().unwrap()).unwrap();
    stream.flush().unwrap();
}
