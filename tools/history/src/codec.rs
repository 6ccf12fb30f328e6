//! How a payload is kept: compressed with zstd when that makes it
//! smaller, else as it came. The bytes a reader gets back are always the
//! exact payload the broker delivered; the `codec` column says which way
//! each row was kept, so rows from before compression (codec 0) read as
//! they always did. Pure: no I/O, unit-tested.

/// The payload is stored as it arrived.
pub(crate) const RAW: i64 = 0;
/// The payload is one zstd frame that records its size.
pub(crate) const ZSTD: i64 = 1;

/// zstd's fastest level that still codes literals with Huffman tables:
/// the ingester's CPU is what bounds its rate (measured by
/// `scripts/bench-history`), and higher levels win little on payloads
/// of a few KiB.
const LEVEL: i32 = 1;

/// Shorter payloads are kept raw: a zstd frame's own header and the
/// lack of repeats leave nothing to win.
const MIN_PACKED: usize = 64;

/// The largest payload a stored frame may expand to: MQTT's largest
/// packet. A frame that claims more is refused, never allocated.
const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Why a stored payload cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(
        "a stored payload has codec {0}, unknown to this firehose-history: run the newer firehose-history that wrote it"
    )]
    Unknown(i64),
    #[error("a stored payload does not decompress: the database is damaged")]
    Corrupt(#[source] std::io::Error),
}

/// Packs payloads for one batch (one zstd context, reused).
pub(crate) struct Packer {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Packer {
    pub(crate) fn new() -> Packer {
        Packer {
            // Without a context (no memory for it), payloads are kept raw.
            zstd: zstd::bulk::Compressor::new(LEVEL).ok(),
        }
    }

    /// The codec and the bytes to store for `payload`.
    pub(crate) fn pack(&mut self, payload: &[u8]) -> (i64, Vec<u8>) {
        if payload.len() >= MIN_PACKED {
            if let Some(z) = self.zstd.as_mut() {
                if let Ok(packed) = z.compress(payload) {
                    if packed.len() < payload.len() {
                        return (ZSTD, packed);
                    }
                }
            }
        }
        (RAW, payload.to_vec())
    }
}

/// Unpacks stored payloads for one query (one zstd context, reused).
pub(crate) struct Unpacker {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Unpacker {
    pub(crate) fn new() -> Unpacker {
        Unpacker { zstd: None }
    }

    /// The exact payload of a row stored with `codec`.
    pub(crate) fn unpack(&mut self, codec: i64, stored: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        match codec {
            RAW => Ok(stored),
            ZSTD => {
                let z = match self.zstd.as_mut() {
                    Some(z) => z,
                    None => self
                        .zstd
                        .insert(zstd::bulk::Decompressor::new().map_err(CodecError::Corrupt)?),
                };
                z.decompress(&stored, MAX_PAYLOAD)
                    .map_err(CodecError::Corrupt)
            }
            other => Err(CodecError::Unknown(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_comes_back_byte_for_byte_whichever_way_it_was_kept() {
        let mut p = Packer::new();
        let mut u = Unpacker::new();
        let json = br#"{"event_type":"compute.instance.create.end","payload":{"state":"active","host":"compute-1","image":"cirros","flavor":"m1.tiny","state_description":""}}"#.repeat(4);
        let short = b"{}".to_vec();
        let random: Vec<u8> = (0u32..300)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for payload in [json.clone(), short.clone(), random, Vec::new()] {
            let (codec, stored) = p.pack(&payload);
            assert_eq!(u.unpack(codec, stored).ok(), Some(payload));
        }
        let (codec, stored) = p.pack(&json);
        assert_eq!(codec, ZSTD);
        assert!(stored.len() * 3 < json.len(), "JSON shrinks");
        assert_eq!(p.pack(&short).0, RAW, "short payloads stay as they are");
    }

    #[test]
    fn a_damaged_or_unknown_stored_payload_is_an_error_not_a_panic() {
        let mut u = Unpacker::new();
        assert!(matches!(
            u.unpack(ZSTD, b"not a zstd frame".to_vec()),
            Err(CodecError::Corrupt(_))
        ));
        assert!(matches!(
            u.unpack(7, b"x".to_vec()),
            Err(CodecError::Unknown(7))
        ));
        let (_, mut frame) = Packer::new().pack(&[b'a'; 4096]);
        frame.truncate(frame.len() / 2);
        assert!(u.unpack(ZSTD, frame).is_err(), "a cut frame");
    }
}
