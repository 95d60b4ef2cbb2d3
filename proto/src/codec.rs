//! Length-delimited frames: a 4-byte big-endian length, then one MessagePack
//! message with named fields.
//!
//! The I/O shell reads [`HEADER_LEN`] bytes, asks [`frame_len`] how many
//! follow, reads those and hands them to [`decode`].

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// The largest frame either side accepts. A netmap larger than this is sent
/// as several chunks (see [`crate::NetmapUpdate::more`]).
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Encodes one message as a complete frame (header included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = vec![0u8; HEADER_LEN];
    rmp_serde::encode::write_named(&mut buf, msg)?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(len));
    }
    let len32 = u32::try_from(len).map_err(|_| CodecError::TooLarge(len))?;
    buf[..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(buf)
}

/// The body length announced by a frame header.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame body (without its header).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    Ok(rmp_serde::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V1 {
        a: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        a: u32,
        #[serde(default)]
        b: Vec<String>,
    }

    #[test]
    fn roundtrip_and_additive_fields() {
        let f = encode(&V1 { a: 7 }).unwrap();
        let len = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, f.len() - 4);
        let v2: V2 = decode(&f[4..]).unwrap();
        assert_eq!(v2, V2 { a: 7, b: vec![] });
        let f2 = encode(&V2 {
            a: 1,
            b: vec!["x".into()],
        })
        .unwrap();
        let v1: V1 = decode(&f2[4..]).unwrap();
        assert_eq!(v1, V1 { a: 1 });
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<V2>(&[0xc1, 0xff, 0x00]).is_err());
        assert!(frame_len([0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
