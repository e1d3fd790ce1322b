//! WebSocket frame boundaries in a byte stream (RFC 6455 §5.2), so tether can close a
//! tunnel with a Close frame without ever injecting it into the middle of a frame.
//!
//! The tracker reads only frame headers: 2 bytes, plus 2 or 8 bytes of extended length,
//! plus 4 bytes of masking key when the mask bit is set; the payload is skipped by
//! count. It never buffers payload and costs a few instructions per read. It also
//! notes whether a Close frame (opcode 0x8) went by, so a stream that ends without one
//! can be told apart from a clean close.

/// Where a direction of a tunnel stands.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    state: State,
    saw_close: bool,
}

#[derive(Debug, Clone)]
enum State {
    /// Collecting a header; `have` bytes of it are in `buf`.
    Header { have: u8, buf: [u8; 14] },
    /// Skipping this many payload bytes.
    Payload(u64),
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker {
            state: State::Header {
                have: 0,
                buf: [0; 14],
            },
            saw_close: false,
        }
    }
}

impl FrameTracker {
    /// True when the bytes fed so far end exactly at the end of a frame.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// How many bytes the stream may advance without passing the end of the current
    /// frame: what is left of its payload, or of its header as known so far (at least
    /// one byte; more of a header can reveal that it is longer). Between frames, a
    /// whole minimal header.
    pub fn left_in_frame(&self) -> u64 {
        match &self.state {
            State::Payload(left) => *left,
            State::Header { have, buf } => {
                let have = usize::from(*have);
                (header_len(&buf[..have]) - have) as u64
            }
        }
    }

    /// True once a Close frame's header has gone by.
    pub fn saw_close(&self) -> bool {
        self.saw_close
    }

    /// Advances over `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Payload(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Header {
                            have: 0,
                            buf: [0; 14],
                        };
                    }
                }
                State::Header { have, buf } => {
                    let seen = usize::from(*have);
                    let need = header_len(&buf[..seen]);
                    let take = (need - seen).min(bytes.len());
                    buf[seen..seen + take].copy_from_slice(&bytes[..take]);
                    let seen = seen + take;
                    *have = seen as u8; // at most 14
                    bytes = &bytes[take..];
                    // The first two bytes may have revealed a longer header.
                    if seen < header_len(&buf[..seen]) {
                        continue;
                    }
                    if buf[0] & 0x0f == 0x8 {
                        self.saw_close = true;
                    }
                    let len = payload_len(buf);
                    self.state = if len == 0 {
                        State::Header {
                            have: 0,
                            buf: [0; 14],
                        }
                    } else {
                        State::Payload(len)
                    };
                }
            }
        }
    }
}

/// The full header length implied by the header bytes seen so far (2 until the second
/// byte is known).
fn header_len(seen: &[u8]) -> usize {
    let Some(&b1) = seen.get(1) else { return 2 };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

fn payload_len(h: &[u8; 14]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

/// A Close frame with `code` and a short reason. Frames towards a server must be
/// masked (RFC 6455 §5.3); `mask` is the key to use, or `None` for a server's frame.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    // Control frame payloads are at most 125 bytes.
    payload.extend(reason.bytes().take(123));
    let mut f = vec![0x88, payload.len() as u8];
    if let Some(key) = mask {
        f[1] |= 0x80;
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend(payload);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match len {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            f.extend_from_slice(&k);
        }
        f.extend((0..len).map(|i| i as u8));
        f
    }

    #[test]
    fn boundaries_for_each_length_form() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let f = frame(0x2, len, mask);
                let mut t = FrameTracker::default();
                assert!(t.at_boundary());
                t.feed(&f[..f.len() - 1]);
                assert!(
                    !t.at_boundary(),
                    "len {len} mask {mask:?}: boundary one byte early"
                );
                t.feed(&f[f.len() - 1..]);
                assert!(t.at_boundary(), "len {len} mask {mask:?}");
            }
        }
    }

    /// Reading `left_in_frame` bytes at a time lands exactly on every frame's end.
    #[test]
    fn left_in_frame_never_overshoots() {
        let stream: Vec<u8> = [
            frame(2, 300, Some([9; 4])),
            frame(9, 0, None),
            frame(1, 70_000, None),
            frame(1, 3, None),
        ]
        .concat();
        let ends = [2 + 2 + 4 + 300, 2 + 2 + 4 + 300 + 2, 310 + 2 + 8 + 70_000];
        let mut t = FrameTracker::default();
        let mut at = 0;
        let mut boundaries = Vec::new();
        while at < stream.len() {
            let n = t.left_in_frame() as usize;
            assert!(n > 0);
            t.feed(&stream[at..at + n]);
            at += n;
            if t.at_boundary() {
                boundaries.push(at);
            }
        }
        assert_eq!(boundaries[..3], ends);
        assert_eq!(*boundaries.last().unwrap(), stream.len());
    }

    #[test]
    fn byte_by_byte() {
        let stream: Vec<u8> = [
            frame(1, 3, None),
            frame(2, 300, Some([9; 4])),
            frame(9, 0, None),
        ]
        .concat();
        let mut t = FrameTracker::default();
        let ends = [5usize, 5 + 4 + 4 + 300, 5 + 4 + 4 + 300 + 2];
        for (i, b) in stream.iter().enumerate() {
            t.feed(std::slice::from_ref(b));
            assert_eq!(
                t.at_boundary(),
                ends.contains(&(i + 1)),
                "after byte {}",
                i + 1
            );
        }
    }

    #[test]
    fn notices_close_frames() {
        let mut t = FrameTracker::default();
        t.feed(&frame(1, 10, None));
        assert!(!t.saw_close());
        t.feed(&close_frame(1000, "bye", None));
        assert!(t.saw_close());
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frames_are_well_formed() {
        let f = close_frame(1012, "backend down", None);
        assert_eq!(&f[..4], &[0x88, 14, 0x03, 0xf4]);
        assert_eq!(&f[4..], b"backend down");
        let key = [0xa1, 0xb2, 0xc3, 0xd4];
        let m = close_frame(1001, "x", Some(key));
        assert_eq!(m[1], 0x80 | 3);
        let unmasked: Vec<u8> = m[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, [0x03, 0xe9, b'x']);
        assert_eq!(close_frame(1000, &"r".repeat(300), None).len(), 2 + 125);
    }

    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        let len = prop_oneof![0usize..=125, 126usize..=65535, 65536usize..=140_000];
        let opcode = prop_oneof![Just(0u8), Just(1), Just(2), Just(8), Just(9), Just(10)];
        (opcode, len, any::<Option<[u8; 4]>>()).prop_map(|(op, len, mask)| frame(op, len, mask))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Random frame sequences, split at random byte offsets: the tracker reports a
        /// boundary exactly at frame ends, whatever the chunking.
        #[test]
        fn boundary_exactly_at_frame_ends(
            frames in prop::collection::vec(any_frame(), 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let stream: Vec<u8> = frames.concat();
            let mut ends = std::collections::HashSet::from([0usize]);
            let mut at = 0;
            for f in &frames {
                at += f.len();
                ends.insert(at);
            }
            let mut offsets: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            offsets.push(stream.len());
            offsets.sort_unstable();
            let mut t = FrameTracker::default();
            let mut fed = 0;
            for o in offsets {
                t.feed(&stream[fed..o]);
                fed = o;
                prop_assert_eq!(t.at_boundary(), ends.contains(&fed), "after {} of {} bytes", fed, stream.len());
            }
            prop_assert!(t.at_boundary());
        }
    }
}
