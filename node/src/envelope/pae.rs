//! Pre-authentication encoding (DSSE v1): every signature covers
//! `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, so a signature made for one kind of
//! object (an envelope header) can never be replayed as another (a receipt, an agreement).

/// Payload type of envelope-header signatures.
pub const ENVELOPE_HEADER_TYPE: &str = "application/vnd.dccf.envelope-header.v1+protobuf";
/// Payload type of bulk-mode batch signatures (the body is a serialized `BatchHeader`, whose root
/// covers the batch's envelope headers).
pub const BATCH_HEADER_TYPE: &str = "application/vnd.dccf.batch-header.v1+protobuf";
/// Payload type of receipt signatures.
pub const RECEIPT_TYPE: &str = "application/vnd.dccf.receipt.v1+protobuf";
/// Payload type of agreement signatures (the body is the 32-byte agreement digest).
pub const AGREEMENT_DIGEST_TYPE: &str = "application/vnd.dccf.agreement-digest.v1";
/// Payload type of agreement revocations (the body is the digest, then the revocation time as
/// u64 big-endian Unix milliseconds, then the revoking administration's id).
pub const AGREEMENT_REVOCATION_TYPE: &str = "application/vnd.dccf.agreement-revocation.v1";

/// Encodes `body` under `payload_type` for signing.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let body_len = body.len().to_string();
    let mut out =
        Vec::with_capacity(10 + type_len.len() + payload_type.len() + body_len.len() + body.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_dsse_specification_example() {
        // The DSSE spec's worked example: type "http://example.com/HelloWorld", body "hello world".
        let got = pae("http://example.com/HelloWorld", b"hello world");
        assert_eq!(
            got,
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn different_types_never_encode_alike() {
        assert_ne!(pae(ENVELOPE_HEADER_TYPE, b"x"), pae(RECEIPT_TYPE, b"x"));
        assert_ne!(
            pae(ENVELOPE_HEADER_TYPE, b"x"),
            pae(BATCH_HEADER_TYPE, b"x")
        );
    }
}
