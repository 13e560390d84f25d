//! Signed AEO statements: batches of disclosed records under one Ed25519 signature, and what an
//! agreement lets a publisher disclose to a partner.
//!
//! A batch's leaves are serialized `AeoStatusResponse`s (SNAPSHOT_END: the parts' roots); its
//! [`AeoBatchHeader`] carries their RFC 9162 Merkle root and is signed under
//! [`AEO_BATCH_TYPE`] (DSSE PAE). One record with its inclusion path and the signed header is an
//! [`AeoStatement`] that anyone holding the publisher's key can check ([`verify_statement`]).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;

use crate::agreement::{Agreement, Flow};
use crate::envelope::bulk::batch_tree;
use crate::envelope::pae::pae;
use crate::ledger::merkle::{empty_root, leaf_hash};
use crate::ledger::proof::{Hash, verify_inclusion};
use crate::proto::v1::{
    AeoBatchHeader, AeoBatchKind, AeoRegistryRecord, AeoSignedBatch, AeoStatement, AeoStatus,
    AeoStatusResponse, OperatorIdentifierKind,
};

/// Payload type of AEO batch-header signatures.
pub const AEO_BATCH_TYPE: &str = "application/vnd.dccf.aeo-batch-header.v1+protobuf";

/// The flow whose field list decides AEO disclosure (publisher → partner).
pub const ANSWER_FLOW: &str = "dccf.v1.AeoStatusResponse";
/// The flow that lets a partner ask online (partner → publisher).
pub const QUERY_FLOW: &str = "dccf.v1.AeoStatusQuery";

/// Why a batch or statement does not verify; each names what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatementError {
    /// Header, record or signature bytes do not parse.
    #[error("malformed AEO {what}: {detail}")]
    Malformed {
        /// Which part.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The signature does not verify under the publisher's key.
    #[error("AEO batch signature of {publisher} does not verify")]
    BadSignature {
        /// Claimed publisher.
        publisher: String,
    },
    /// The leaves do not hash to the signed root (or a path does not lead there).
    #[error("AEO batch root does not match its leaves: {detail}")]
    RootMismatch {
        /// What did not match.
        detail: String,
    },
    /// A record discloses a field the agreement does not allow.
    #[error("AEO record discloses {field}, which the agreement does not allow")]
    Undisclosable {
        /// The field.
        field: &'static str,
    },
}

/// What a publisher may disclose to one partner: status, programme and dates always; name,
/// address (whole or by part) and TIN only if the agreement's answer flow lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disclosure {
    /// `operator_name`.
    pub name: bool,
    /// `operator_address.street`.
    pub street: bool,
    /// `operator_address.city`.
    pub city: bool,
    /// `operator_address.postcode`.
    pub postcode: bool,
    /// `operator_address.country`.
    pub country: bool,
    /// `tin`.
    pub tin: bool,
}

impl Disclosure {
    /// From the answer flow's field list.
    pub fn of_flow(flow: &Flow) -> Disclosure {
        let address = |part: &str| flow.allows_field(&format!("operator_address.{part}"));
        Disclosure {
            name: flow.allows_field("operator_name"),
            street: address("street"),
            city: address("city"),
            postcode: address("postcode"),
            country: address("country"),
            tin: flow.allows_field("tin"),
        }
    }

    /// The disclosed view of a registry record, as of `as_of_ms`.
    pub fn disclose(&self, record: &AeoRegistryRecord, as_of_ms: i64) -> AeoStatusResponse {
        let address = record.address.as_ref().and_then(|a| {
            let part = |allowed: bool, v: &str| if allowed { v.to_owned() } else { String::new() };
            let shown = crate::proto::v1::Address {
                street: part(self.street, &a.street),
                city: part(self.city, &a.city),
                postcode: part(self.postcode, &a.postcode),
                country: part(self.country, &a.country),
            };
            (shown != Default::default()).then_some(shown)
        });
        AeoStatusResponse {
            query_reference: String::new(),
            operator_identifier: record.operator_id.clone(),
            identifier_kind: OperatorIdentifierKind::AeoAuthorisation as i32,
            status: record.status,
            programme: record.programme,
            aeo_authorisation_number: record.operator_id.clone(),
            valid_from_ms: record.valid_from_ms,
            valid_until_ms: record.valid_until_ms,
            status_changed_at_ms: record.last_change_ms,
            operator_name: self.name.then(|| record.name.clone()),
            operator_address: address,
            as_of_ms,
            tin: if self.tin {
                record.tin.clone()
            } else {
                String::new()
            },
        }
    }

    /// Checks that a received record discloses nothing beyond this (receivers enforce the
    /// agreement independently of the publisher).
    pub fn permits(&self, record: &AeoStatusResponse) -> Result<(), StatementError> {
        let refuse = |field| Err(StatementError::Undisclosable { field });
        if record.operator_name.is_some() && !self.name {
            return refuse("operator_name");
        }
        if let Some(a) = &record.operator_address {
            for (set, allowed, field) in [
                (!a.street.is_empty(), self.street, "operator_address.street"),
                (!a.city.is_empty(), self.city, "operator_address.city"),
                (
                    !a.postcode.is_empty(),
                    self.postcode,
                    "operator_address.postcode",
                ),
                (
                    !a.country.is_empty(),
                    self.country,
                    "operator_address.country",
                ),
            ] {
                if set && !allowed {
                    return refuse(field);
                }
            }
        }
        if !record.tin.is_empty() && !self.tin {
            return refuse("tin");
        }
        Ok(())
    }
}

/// The answer flow `publisher → partner` of `agreement`, if it has one.
pub fn answer_flow<'a>(
    agreement: &'a Agreement,
    publisher: &str,
    partner: &str,
) -> Option<&'a Flow> {
    agreement
        .doc
        .flows
        .iter()
        .find(|f| f.message_type == ANSWER_FLOW && f.from == publisher && f.to == partner)
}

/// The query flow `asker → publisher` of `agreement`, if it has one (online lookups travel on
/// it and count against its rate).
pub fn query_flow<'a>(agreement: &'a Agreement, asker: &str, publisher: &str) -> Option<&'a Flow> {
    agreement
        .doc
        .flows
        .iter()
        .find(|f| f.message_type == QUERY_FLOW && f.from == asker && f.to == publisher)
}

/// A NOT_FOUND answer: only the echoed identifier, the status and the time (nothing that tells
/// whether the identifier exists in another form).
pub fn not_found(identifier: &str, kind: i32, as_of_ms: i64) -> AeoStatusResponse {
    AeoStatusResponse {
        operator_identifier: identifier.to_owned(),
        identifier_kind: kind,
        status: AeoStatus::NotFound as i32,
        as_of_ms,
        ..Default::default()
    }
}

/// Signs `header` (its `leaf_count` and `root` are set from `leaves` here) and returns the batch.
pub fn sign(mut header: AeoBatchHeader, leaves: Vec<Vec<u8>>, key: &SigningKey) -> AeoSignedBatch {
    header.leaf_count = leaves.len() as u64;
    header.root = root_of(&leaves).to_vec();
    let header = header.encode_to_vec();
    let signature = key.sign(&pae(AEO_BATCH_TYPE, &header)).to_bytes().to_vec();
    AeoSignedBatch {
        header,
        signature,
        leaves,
    }
}

/// RFC 9162 root of `leaves` (the empty-tree root for none).
pub fn root_of(leaves: &[Vec<u8>]) -> Hash {
    let refs: Vec<&[u8]> = leaves.iter().map(Vec::as_slice).collect();
    batch_tree(&refs).map_or_else(empty_root, |(root, _)| root)
}

/// Checks the header signature under `key` and that the leaves hash to the signed root; returns
/// the parsed header and every leaf's inclusion path.
pub fn verify_batch(
    batch: &AeoSignedBatch,
    key: &VerifyingKey,
) -> Result<(AeoBatchHeader, Vec<Vec<Hash>>), StatementError> {
    let header = verify_header(&batch.header, &batch.signature, key)?;
    if header.leaf_count != batch.leaves.len() as u64 {
        return Err(StatementError::RootMismatch {
            detail: format!(
                "header says {} leaves, batch has {}",
                header.leaf_count,
                batch.leaves.len()
            ),
        });
    }
    let refs: Vec<&[u8]> = batch.leaves.iter().map(Vec::as_slice).collect();
    let (root, paths) = batch_tree(&refs).unwrap_or((empty_root(), Vec::new()));
    if root.as_slice() != header.root.as_slice() {
        return Err(StatementError::RootMismatch {
            detail: "the leaves' root differs from the signed root".into(),
        });
    }
    Ok((header, paths))
}

/// Parses `header` and checks `signature` over it under `key` (strict Ed25519).
pub fn verify_header(
    header: &[u8],
    signature: &[u8],
    key: &VerifyingKey,
) -> Result<AeoBatchHeader, StatementError> {
    let parsed = AeoBatchHeader::decode(header).map_err(|e| StatementError::Malformed {
        what: "batch header",
        detail: e.to_string(),
    })?;
    let signature = Signature::from_slice(signature).map_err(|e| StatementError::Malformed {
        what: "signature",
        detail: e.to_string(),
    })?;
    key.verify_strict(&pae(AEO_BATCH_TYPE, header), &signature)
        .map_err(|_| StatementError::BadSignature {
            publisher: parsed.publisher.clone(),
        })?;
    if AeoBatchKind::try_from(parsed.kind).unwrap_or_default() == AeoBatchKind::Unspecified {
        return Err(StatementError::Malformed {
            what: "batch header",
            detail: format!("unknown batch kind {}", parsed.kind),
        });
    }
    Ok(parsed)
}

/// The statement for leaf `index` of a verified batch.
pub fn statement(batch: &AeoSignedBatch, index: usize, path: &[Hash]) -> Option<AeoStatement> {
    Some(AeoStatement {
        header: batch.header.clone(),
        signature: batch.signature.clone(),
        record: batch.leaves.get(index)?.clone(),
        leaf_index: index as u64,
        path: path.iter().map(|h| h.to_vec()).collect(),
    })
}

/// Verifies one statement on its own under the publisher's key: signature, inclusion of the
/// record in the signed root, and that the record parses. Returns header and record.
pub fn verify_statement(
    statement: &AeoStatement,
    key: &VerifyingKey,
) -> Result<(AeoBatchHeader, AeoStatusResponse), StatementError> {
    let header = verify_header(&statement.header, &statement.signature, key)?;
    let mut path = Vec::with_capacity(statement.path.len());
    for h in &statement.path {
        path.push(
            Hash::try_from(h.as_slice()).map_err(|_| StatementError::Malformed {
                what: "inclusion path",
                detail: format!("a hash of {} bytes", h.len()),
            })?,
        );
    }
    let root = Hash::try_from(header.root.as_slice()).map_err(|_| StatementError::Malformed {
        what: "batch header",
        detail: "root is not 32 bytes".into(),
    })?;
    verify_inclusion(
        &leaf_hash(&statement.record),
        statement.leaf_index,
        header.leaf_count,
        &path,
        &root,
    )
    .map_err(|e| StatementError::RootMismatch {
        detail: format!("record {}: {e}", statement.leaf_index),
    })?;
    let record = AeoStatusResponse::decode(statement.record.as_slice()).map_err(|e| {
        StatementError::Malformed {
            what: "record",
            detail: e.to_string(),
        }
    })?;
    Ok((header, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::Address;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn record(id: &str) -> AeoRegistryRecord {
        AeoRegistryRecord {
            operator_id: id.into(),
            tin: "12345678".into(),
            name: "Synthetic Freight Ltd".into(),
            address: Some(Address {
                street: "Example street 1".into(),
                city: "Exampletown".into(),
                postcode: "1234".into(),
                country: "BR".into(),
            }),
            status: AeoStatus::Valid as i32,
            programme: 3,
            valid_from_ms: 1_600_000_000_000,
            valid_until_ms: 0,
            last_change_ms: 1_600_000_000_000,
        }
    }

    fn batch(n: usize, signer: &SigningKey) -> AeoSignedBatch {
        let leaves = (0..n)
            .map(|i| {
                Disclosure::default()
                    .disclose(&record(&format!("BRAEOF{i:010}")), 7)
                    .encode_to_vec()
            })
            .collect();
        let header = AeoBatchHeader {
            publisher: "BR".into(),
            recipient: "NL".into(),
            kind: AeoBatchKind::Delta as i32,
            version_from: 1,
            version_to: 2,
            ..Default::default()
        };
        sign(header, leaves, signer)
    }

    #[test]
    fn every_statement_of_a_batch_verifies_alone() {
        let k = key(1);
        for n in [1, 2, 3, 7, 64] {
            let b = batch(n, &k);
            let (header, paths) = verify_batch(&b, &k.verifying_key()).unwrap();
            assert_eq!(header.leaf_count, n as u64);
            for (i, path) in paths.iter().enumerate() {
                let s = statement(&b, i, path).unwrap();
                let (_, r) = verify_statement(&s, &k.verifying_key()).unwrap();
                assert_eq!(r.operator_identifier, format!("BRAEOF{i:010}"));
            }
        }
    }

    #[test]
    fn a_batch_under_another_key_is_refused() {
        let b = batch(3, &key(1));
        assert!(matches!(
            verify_batch(&b, &key(2).verifying_key()),
            Err(StatementError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_changed_leaf_or_header_is_refused() {
        let k = key(1);
        let mut b = batch(4, &k);
        b.leaves[2][3] ^= 1;
        assert!(matches!(
            verify_batch(&b, &k.verifying_key()),
            Err(StatementError::RootMismatch { .. })
        ));
        let mut b = batch(4, &k);
        b.leaves.pop();
        assert!(matches!(
            verify_batch(&b, &k.verifying_key()),
            Err(StatementError::RootMismatch { .. })
        ));
        let mut b = batch(4, &k);
        let last = b.header.len() - 1;
        b.header[last] ^= 1;
        assert!(verify_batch(&b, &k.verifying_key()).is_err());
    }

    #[test]
    fn a_statement_with_a_swapped_record_or_wrong_path_is_refused() {
        let k = key(1);
        let b = batch(5, &k);
        let (_, paths) = verify_batch(&b, &k.verifying_key()).unwrap();
        let mut s = statement(&b, 1, &paths[1]).unwrap();
        s.record = b.leaves[2].clone();
        assert!(matches!(
            verify_statement(&s, &k.verifying_key()),
            Err(StatementError::RootMismatch { .. })
        ));
        let mut s = statement(&b, 1, &paths[1]).unwrap();
        s.leaf_index = 0;
        assert!(verify_statement(&s, &k.verifying_key()).is_err());
        let mut s = statement(&b, 1, &paths[1]).unwrap();
        s.path.pop();
        assert!(verify_statement(&s, &k.verifying_key()).is_err());
    }

    #[test]
    fn disclosure_follows_the_flow() {
        let r = record("BRAEOF0000000001");
        let none = Disclosure::default().disclose(&r, 1);
        assert_eq!(none.operator_name, None);
        assert_eq!(none.operator_address, None);
        assert!(none.tin.is_empty());
        assert_eq!(none.status, AeoStatus::Valid as i32);
        assert_eq!(none.valid_from_ms, r.valid_from_ms);
        let city = Disclosure {
            name: true,
            city: true,
            ..Default::default()
        };
        let shown = city.disclose(&r, 1);
        assert_eq!(
            shown.operator_name.as_deref(),
            Some("Synthetic Freight Ltd")
        );
        let a = shown.operator_address.clone().unwrap();
        assert_eq!((a.city.as_str(), a.street.as_str()), ("Exampletown", ""));
        assert!(city.permits(&shown).is_ok());
        assert_eq!(
            Disclosure::default().permits(&shown),
            Err(StatementError::Undisclosable {
                field: "operator_name"
            })
        );
        let mut tin = none.clone();
        tin.tin = "1".into();
        assert!(Disclosure::default().permits(&tin).is_err());
        let mut street = none;
        street.operator_address = Some(Address {
            street: "x".into(),
            ..Default::default()
        });
        assert_eq!(
            city.permits(&street),
            Err(StatementError::Undisclosable {
                field: "operator_address.street"
            })
        );
    }
}
