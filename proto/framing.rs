//! gRPC message frames whose one large `bytes` field goes to the socket as its own `Bytes`.
//!
//! tonic encodes every message into its own buffer, so a megabyte of stored batches was
//! copied once more on its way out. Both sides that send batches in bulk (the server's
//! replayed answers, the Rust client's produce requests) frame such a message here instead:
//! the gRPC prefix and every other field in a few bytes, then the batches as they are, which
//! hyper and h2 hand to the socket without a copy. What goes on the wire is the same as
//! tonic's uncompressed framing.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// gRPC's message prefix: a compression flag and a big-endian length.
pub const PREFIX_BYTES: usize = 5;

/// The bytes a length-delimited field of `len` bytes takes, key and length included.
pub fn field_len(field: u32, len: usize) -> usize {
    key_len(field) + encoded_len_varint(len as u64) + len
}

/// Frames one message: the prefix, what `write` encodes (`fields` bytes: every field but
/// `field`, which comes last), then `field`'s key and length (when `bytes` is present) and
/// its bytes. Bytes up to `inline_max` are copied in behind the rest (one frame instead of
/// two costs less than the copy); larger ones are returned on their own, to follow the head.
/// A message is at most 4 GiB (its length is 32 bits in the prefix).
pub fn frame(
    fields: usize,
    field: u32,
    bytes: Option<Bytes>,
    inline_max: usize,
    write: impl FnOnce(&mut BytesMut),
) -> (Bytes, Option<Bytes>) {
    let len = bytes.as_ref().map_or(0, Bytes::len);
    let message_bytes = fields + bytes.as_ref().map_or(0, |_| field_len(field, len));
    let inline = len <= inline_max;
    let mut head =
        BytesMut::with_capacity(PREFIX_BYTES + message_bytes - if inline { 0 } else { len });
    head.put_u8(0);
    head.put_u32(message_bytes as u32);
    write(&mut head);
    let apart = bytes.and_then(|bytes| {
        encode_key(field, WireType::LengthDelimited, &mut head);
        encode_varint(len as u64, &mut head);
        if inline {
            head.put_slice(&bytes);
            None
        } else {
            Some(bytes)
        }
    });
    (head.freeze(), apart)
}
