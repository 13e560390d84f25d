//! Bulk mode (DESIGN §5): the streaming path's cheaper crypto, with envelopes that stay
//! independently verifiable.
//!
//! **Epochs (sealing).** The sender runs one HPKE setup (base mode, the envelope suite) per
//! *epoch* towards a (recipient, agreement digest, recipient key), with an `info` that binds
//! sender, recipient and agreement digest ([`epoch_info`]). Each message's 32-byte AEAD key is
//! the epoch context's HPKE export for a context that binds the message id
//! ([`message_key_context`]); the `SealedBody` (salt + payload, so the payload commitment is the
//! same as in single mode) is sealed under it with ChaCha20-Poly1305 (`ring`), a random 12-byte
//! nonce and an AAD binding message id, sender, recipient and agreement digest ([`payload_aad`]).
//! `sealed_payload = nonce || ciphertext`; `encapsulated_key` is the epoch's, shared by every
//! envelope of the epoch; `header.seal_mode = SEAL_MODE_EPOCH`. [`Epochs`] keeps one
//! [`EpochSealer`] per destination and rotates it by count and age ([`EpochPolicy`]).
//!
//! **Batches (signing).** [`sign_batch`] builds the RFC 9162 Merkle tree over a batch's header
//! bytes (leaf `SHA-256(0x00 ‖ header)`), signs one [`BatchHeader`] (root, size, parties) under
//! [`BATCH_HEADER_TYPE`], and gives each envelope the batch header, the signature, its leaf
//! index and its inclusion path.
//!
//! **Verification.** [`verify_bulk_envelope`] checks one envelope on its own (third parties,
//! auditors): batch header shape, parties, the header's inclusion path, the batch signature.
//! Receivers use [`verify_bulk_envelope_with`] and [`open_epoch_payload`] with a long-lived
//! [`BulkCaches`], so a stream costs one signature check per batch and one HPKE setup per epoch.
//!
//! Only vetted primitives are composed here: HPKE setup and export (`hpke`), ChaCha20-Poly1305
//! (`ring::aead`), SHA-256 and Ed25519 (`ed25519-dalek`, strict verification).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;
use rand_core::{OsRng, RngCore};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use super::open::Opened;
use super::pae::{BATCH_HEADER_TYPE, pae};
use super::seal::Outgoing;
use super::{Aead, EnvelopeError, HpkePrivateKey, HpkePublicKey, Kdf, Kem};
use crate::ledger::merkle::{leaf_hash, node_hash};
use crate::ledger::proof::{Hash, inclusion_proof_len, verify_inclusion};
use crate::proto::v1::{BatchHeader, Envelope, EnvelopeHeader, SealMode};

/// Length of the nonce that starts an epoch-sealed `sealed_payload`.
pub const EPOCH_NONCE_LEN: usize = NONCE_LEN;

/// Length of a per-message AEAD key exported from an epoch context.
pub const MESSAGE_KEY_LEN: usize = 32;

/// Default number of verified batches a [`BulkCaches`] remembers.
pub const DEFAULT_BATCH_CACHE: usize = 1024;

/// Default number of receiver epoch contexts a [`BulkCaches`] keeps.
pub const DEFAULT_EPOCH_CACHE: usize = 256;

/// Longest accepted `BatchHeader.batch_id` (a UUID is 36 characters).
const MAX_BATCH_ID_LEN: usize = 128;
/// Longest accepted administration id in a batch header (as `parse_header` allows).
const MAX_ADMIN_LEN: usize = 256;

/// HPKE sender context of an epoch.
type SenderContext = hpke::aead::AeadCtxS<Aead, Kdf, Kem>;
/// HPKE receiver context of an epoch.
type ReceiverContext = hpke::aead::AeadCtxR<Aead, Kdf, Kem>;

// ---- labels and bindings ----------------------------------------------------------------------

/// The HPKE `info` of an epoch: binds sender, recipient and agreement digest (length-prefixed,
/// under a label distinct from single mode's [`super::hpke_info`]).
pub fn epoch_info(sender: &str, recipient: &str, agreement_digest: &[u8]) -> Vec<u8> {
    super::labeled(
        b"dccf.v1 bulk epoch",
        &[sender.as_bytes(), recipient.as_bytes(), agreement_digest],
    )
}

/// The HPKE exporter context of a message's AEAD key: binds the message id.
pub fn message_key_context(message_id: &str) -> Vec<u8> {
    super::labeled(b"dccf.v1 bulk message key", &[message_id.as_bytes()])
}

/// The AEAD associated data of an epoch-sealed payload: binds message id, sender, recipient and
/// agreement digest.
pub fn payload_aad(
    message_id: &str,
    sender: &str,
    recipient: &str,
    agreement_digest: &[u8],
) -> Vec<u8> {
    super::labeled(
        b"dccf.v1 bulk payload",
        &[
            message_id.as_bytes(),
            sender.as_bytes(),
            recipient.as_bytes(),
            agreement_digest,
        ],
    )
}

/// The ChaCha20-Poly1305 key of `message_id` exported from an epoch context (either side, via
/// `export`, the context's HPKE exporter).
fn message_key(
    export: impl FnOnce(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    message_id: &str,
) -> Result<LessSafeKey, String> {
    let mut key = [0u8; MESSAGE_KEY_LEN];
    export(&message_key_context(message_id), &mut key).map_err(|e| e.to_string())?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key);
    key.fill(0);
    unbound
        .map(LessSafeKey::new)
        .map_err(|_| "the exported key does not fit ChaCha20-Poly1305".to_owned())
}

// ---- epochs (sender) --------------------------------------------------------------------------

/// When a sender starts a new epoch (a new HPKE setup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochPolicy {
    /// An epoch seals at most this many messages (0 behaves as 1: a new epoch per message).
    pub max_messages: u64,
    /// An epoch is used for at most this long, Unix-ms difference (a clock that moves backwards
    /// by as much also ends it).
    pub max_age_ms: i64,
}

impl Default for EpochPolicy {
    /// 65,536 messages or 10 minutes, whichever comes first.
    fn default() -> Self {
        EpochPolicy {
            max_messages: 65_536,
            max_age_ms: 600_000,
        }
    }
}

/// One sender epoch: an HPKE sender context towards one recipient key under one agreement.
pub struct EpochSealer {
    context: SenderContext,
    encapsulated_key: Vec<u8>,
    sender: String,
    recipient: String,
    agreement_digest: [u8; 32],
    started_at_ms: i64,
    sealed: u64,
}

impl std::fmt::Debug for EpochSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochSealer")
            .field("encapsulated_key", &hex::encode(&self.encapsulated_key))
            .field("sender", &self.sender)
            .field("recipient", &self.recipient)
            .field("agreement_digest", &hex::encode(self.agreement_digest))
            .field("started_at_ms", &self.started_at_ms)
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

impl EpochSealer {
    /// Starts an epoch: one HPKE base-mode setup to `recipient_key` with [`epoch_info`].
    pub fn new(
        sender: &str,
        recipient: &str,
        agreement_digest: &[u8; 32],
        recipient_key: &HpkePublicKey,
        now_ms: i64,
    ) -> Result<EpochSealer, EnvelopeError> {
        let info = epoch_info(sender, recipient, agreement_digest);
        let (encapped, context) = hpke::setup_sender::<Aead, Kdf, Kem, _>(
            &hpke::OpModeS::Base,
            recipient_key,
            &info,
            &mut OsRng,
        )
        .map_err(|e| EnvelopeError::Seal(format!("epoch HPKE setup failed: {e}")))?;
        Ok(EpochSealer {
            context,
            encapsulated_key: hpke::Serializable::to_bytes(&encapped).to_vec(),
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            agreement_digest: *agreement_digest,
            started_at_ms: now_ms,
            sealed: 0,
        })
    }

    /// The epoch's encapsulated key (carried in every envelope of the epoch).
    pub fn encapsulated_key(&self) -> &[u8] {
        &self.encapsulated_key
    }

    /// Number of messages sealed in this epoch so far.
    pub fn sealed(&self) -> u64 {
        self.sealed
    }

    /// When the epoch started, Unix ms.
    pub fn started_at_ms(&self) -> i64 {
        self.started_at_ms
    }

    /// Whether `policy` says this epoch must not seal another message at `now_ms`.
    pub fn is_due(&self, policy: &EpochPolicy, now_ms: i64) -> bool {
        self.sealed >= policy.max_messages.max(1)
            || now_ms.saturating_sub(self.started_at_ms).saturating_abs() >= policy.max_age_ms
    }

    /// Seals `msg.payload` in this epoch and returns the envelope with its header filled
    /// (`seal_mode = SEAL_MODE_EPOCH`) and **no** signature or batch fields: sign it with
    /// [`sign_batch`] (or singly with [`super::seal::sign_header`]).
    ///
    /// `msg` must name this epoch's sender, recipient and agreement digest.
    pub fn seal(&mut self, msg: &Outgoing<'_>) -> Result<Envelope, EnvelopeError> {
        for (field, got, want) in [
            ("sender", msg.sender, self.sender.as_str()),
            ("recipient", msg.recipient, self.recipient.as_str()),
        ] {
            if got != want {
                return Err(EnvelopeError::Seal(format!(
                    "message {} names {field} {got:?}, the epoch is for {want:?}",
                    msg.message_id
                )));
            }
        }
        if msg.agreement_digest != &self.agreement_digest {
            return Err(EnvelopeError::Seal(format!(
                "message {} is under agreement digest {}, the epoch is for {}",
                msg.message_id,
                hex::encode(msg.agreement_digest),
                hex::encode(self.agreement_digest)
            )));
        }
        let (payload_commitment, mut body) = super::seal::sealed_body(msg.payload)?;
        let key = message_key(|ctx, out| self.context.export(ctx, out), msg.message_id)
            .map_err(|e| EnvelopeError::Seal(format!("exporting the message key failed: {e}")))?;
        let mut nonce = [0u8; EPOCH_NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| EnvelopeError::Seal(format!("random source failed: {e}")))?;
        let aad = payload_aad(
            msg.message_id,
            msg.sender,
            msg.recipient,
            msg.agreement_digest,
        );
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_slice()),
            &mut body,
        )
        .map_err(|_| EnvelopeError::Seal("ChaCha20-Poly1305 sealing failed".to_owned()))?;
        let mut sealed_payload = Vec::with_capacity(EPOCH_NONCE_LEN + body.len());
        sealed_payload.extend_from_slice(&nonce);
        sealed_payload.extend_from_slice(&body);

        let header = super::seal::header_bytes(
            msg,
            &self.encapsulated_key,
            &sealed_payload,
            &payload_commitment,
            SealMode::Epoch,
        );
        self.sealed = self.sealed.saturating_add(1);
        Ok(Envelope {
            header,
            sealed_payload,
            encapsulated_key: self.encapsulated_key.clone(),
            ..Default::default()
        })
    }
}

/// Which epoch a message belongs to: sender, recipient, agreement digest, recipient HPKE key.
type EpochKey = (String, String, [u8; 32], Vec<u8>);

/// The sender's epochs, one per (sender, recipient, agreement digest, recipient HPKE key), each
/// rotated by [`EpochPolicy`]. Not synchronized: the caller wraps it (e.g. in a `Mutex`).
#[derive(Debug)]
pub struct Epochs {
    policy: EpochPolicy,
    epochs: HashMap<EpochKey, EpochSealer>,
    started: u64,
}

impl Epochs {
    /// No epochs yet; new ones follow `policy`.
    pub fn new(policy: EpochPolicy) -> Epochs {
        Epochs {
            policy,
            epochs: HashMap::new(),
            started: 0,
        }
    }

    /// The rotation policy.
    pub fn policy(&self) -> EpochPolicy {
        self.policy
    }

    /// Number of live epochs.
    pub fn len(&self) -> usize {
        self.epochs.len()
    }

    /// Whether there is no live epoch.
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }

    /// Number of epochs started (HPKE setups) since creation.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Seals `msg` in the current epoch towards (`msg.recipient`, `msg.agreement_digest`,
    /// `recipient_key`), first starting a new epoch if there is none or the policy says the
    /// current one is due. See [`EpochSealer::seal`] for what the envelope holds.
    pub fn seal(
        &mut self,
        msg: &Outgoing<'_>,
        recipient_key: &HpkePublicKey,
        now_ms: i64,
    ) -> Result<Envelope, EnvelopeError> {
        let key: EpochKey = (
            msg.sender.to_owned(),
            msg.recipient.to_owned(),
            *msg.agreement_digest,
            hpke::Serializable::to_bytes(recipient_key).to_vec(),
        );
        let due = self
            .epochs
            .get(&key)
            .is_none_or(|e| e.is_due(&self.policy, now_ms));
        if due {
            let fresh = EpochSealer::new(
                msg.sender,
                msg.recipient,
                msg.agreement_digest,
                recipient_key,
                now_ms,
            )?;
            self.started = self.started.saturating_add(1);
            self.epochs.insert(key.clone(), fresh);
        }
        match self.epochs.get_mut(&key) {
            Some(epoch) => epoch.seal(msg),
            None => Err(EnvelopeError::Seal("epoch vanished".to_owned())),
        }
    }

    /// Drops every epoch the policy says is due at `now_ms` (their secrets with them); returns
    /// how many were dropped. Call now and then so idle destinations do not keep old contexts.
    pub fn prune(&mut self, now_ms: i64) -> usize {
        let before = self.epochs.len();
        let policy = self.policy;
        self.epochs.retain(|_, e| !e.is_due(&policy, now_ms));
        before - self.epochs.len()
    }
}

// ---- batches (sender) -------------------------------------------------------------------------

/// RFC 9162 Merkle tree hash of `headers` (leaf `SHA-256(0x00 ‖ header)`), and each header's
/// inclusion path (leaf to root). `None` for an empty list.
///
/// Built level by level in memory: each level pairs neighbours and carries an odd last node up
/// unchanged, which yields exactly the RFC 9162 tree (split at the largest power of two below
/// the size) and its inclusion paths: a node's path element at a level is its sibling there,
/// if it has one.
pub fn batch_tree(headers: &[&[u8]]) -> Option<(Hash, Vec<Vec<Hash>>)> {
    let mut levels: Vec<Vec<Hash>> = vec![headers.iter().map(|h| leaf_hash(h)).collect()];
    while let Some(last) = levels.last().filter(|l| l.len() > 1) {
        let next = last
            .chunks(2)
            .filter_map(|pair| match pair {
                [left, right] => Some(node_hash(left, right)),
                [single] => Some(*single),
                _ => None,
            })
            .collect();
        levels.push(next);
    }
    let (top, below_root) = levels.split_last()?;
    let root = *top.first()?;
    let paths = (0..headers.len())
        .map(|leaf| {
            let mut index = leaf;
            let mut path = Vec::new();
            for level in below_root {
                if let Some(sibling) = level.get(index ^ 1) {
                    path.push(*sibling);
                }
                index >>= 1;
            }
            path
        })
        .collect();
    Some((root, paths))
}

/// Signs a batch: builds the RFC 9162 tree over the envelopes' header bytes (in slice order),
/// signs a [`BatchHeader`] for it under [`BATCH_HEADER_TYPE`] with `signer`, and fills each
/// envelope's `signature`, `batch_header`, `batch_index` and `batch_path`.
///
/// Every header must parse and name `sender` and `recipient`; the batch must not be empty and
/// `batch_id` must be 1 to 128 bytes. On error no envelope is changed.
pub fn sign_batch(
    envelopes: &mut [Envelope],
    batch_id: &str,
    sender: &str,
    recipient: &str,
    created_at_ms: i64,
    signer: &SigningKey,
) -> Result<(), EnvelopeError> {
    let bad = |detail: String| EnvelopeError::Malformed {
        what: "batch",
        detail,
    };
    if batch_id.is_empty() || batch_id.len() > MAX_BATCH_ID_LEN {
        return Err(bad(format!(
            "batch_id must be 1 to {MAX_BATCH_ID_LEN} bytes, got {}",
            batch_id.len()
        )));
    }
    for (i, envelope) in envelopes.iter().enumerate() {
        let header = EnvelopeHeader::decode(envelope.header.as_slice()).map_err(|e| {
            EnvelopeError::Malformed {
                what: "envelope header",
                detail: format!("envelope {i} of the batch: {e}"),
            }
        })?;
        for (field, got, want) in [
            ("sender", &header.sender, sender),
            ("recipient", &header.recipient, recipient),
        ] {
            if got != want {
                return Err(bad(format!(
                    "envelope {i} ({}) names {field} {got:?}, the batch names {want:?}",
                    header.message_id
                )));
            }
        }
    }
    let headers: Vec<&[u8]> = envelopes.iter().map(|e| e.header.as_slice()).collect();
    let Some((root, paths)) = batch_tree(&headers) else {
        return Err(bad("a batch needs at least one envelope".to_owned()));
    };
    let batch_header = BatchHeader {
        batch_id: batch_id.to_owned(),
        sender: sender.to_owned(),
        recipient: recipient.to_owned(),
        size: envelopes.len() as u64,
        root: root.to_vec(),
        created_at_ms,
    }
    .encode_to_vec();
    let signature = signer
        .sign(&pae(BATCH_HEADER_TYPE, &batch_header))
        .to_bytes()
        .to_vec();
    for (i, (envelope, path)) in envelopes.iter_mut().zip(paths).enumerate() {
        envelope.signature = signature.clone();
        envelope.batch_header = batch_header.clone();
        envelope.batch_index = i as u64;
        envelope.batch_path = path.iter().map(|h| h.to_vec()).collect();
    }
    Ok(())
}

// ---- verification (receiver, third parties) ---------------------------------------------------

/// Parses and checks the shape of `envelope.batch_header` and of the envelope's place in it.
fn parse_batch(envelope: &Envelope) -> Result<(BatchHeader, Hash, Vec<Hash>), EnvelopeError> {
    let bad = |detail: String| EnvelopeError::Malformed {
        what: "batch header",
        detail,
    };
    if envelope.batch_header.is_empty() {
        return Err(bad("the envelope carries no batch header".to_owned()));
    }
    let batch =
        BatchHeader::decode(envelope.batch_header.as_slice()).map_err(|e| bad(e.to_string()))?;
    if batch.batch_id.is_empty() || batch.batch_id.len() > MAX_BATCH_ID_LEN {
        return Err(bad(format!(
            "batch_id must be 1 to {MAX_BATCH_ID_LEN} bytes, got {}",
            batch.batch_id.len()
        )));
    }
    for (field, value) in [("sender", &batch.sender), ("recipient", &batch.recipient)] {
        if value.is_empty() || value.len() > MAX_ADMIN_LEN {
            return Err(bad(format!("field {field} is missing or too long")));
        }
    }
    if batch.size == 0 {
        return Err(bad("size is 0".to_owned()));
    }
    let root = Hash::try_from(batch.root.as_slice())
        .map_err(|_| bad(format!("root is {} bytes, expected 32", batch.root.len())))?;
    let path_err = |detail: String| EnvelopeError::Malformed {
        what: "batch path",
        detail,
    };
    let Some(want_len) = inclusion_proof_len(envelope.batch_index, batch.size) else {
        return Err(path_err(format!(
            "batch_index {} is outside the batch of size {}",
            envelope.batch_index, batch.size
        )));
    };
    if envelope.batch_path.len() != want_len {
        return Err(path_err(format!(
            "{} hashes for leaf {} of a batch of size {}, expected {want_len}",
            envelope.batch_path.len(),
            envelope.batch_index,
            batch.size
        )));
    }
    let path = envelope
        .batch_path
        .iter()
        .enumerate()
        .map(|(i, h)| {
            Hash::try_from(h.as_slice())
                .map_err(|_| path_err(format!("hash {i} is {} bytes, expected 32", h.len())))
        })
        .collect::<Result<Vec<Hash>, _>>()?;
    Ok((batch, root, path))
}

/// Verifies a bulk-mode envelope on its own, as any third party can: the batch header is
/// well-formed (non-empty id and parties, size > 0, 32-byte root, `batch_index < size`, a path
/// of the RFC 9162 length for (index, size) of 32-byte hashes), names the header's sender and
/// recipient, the header is leaf `batch_index` of the root through `batch_path`, and `signature`
/// is `signer`'s strict Ed25519 signature under `key` over PAE([`BATCH_HEADER_TYPE`],
/// batch_header). `header` is the parsed `envelope.header`. Returns the batch header.
///
/// Errors: [`EnvelopeError::Malformed`] for shape and party mismatches, and
/// [`EnvelopeError::BadSignature`] with `what` = `"envelope header (batch path)"` when the path
/// does not lead to the root, or `"batch header"` when the signature does not verify.
pub fn verify_bulk_envelope(
    envelope: &Envelope,
    header: &EnvelopeHeader,
    key: &VerifyingKey,
    signer: &str,
) -> Result<BatchHeader, EnvelopeError> {
    verify_bulk_envelope_with(envelope, header, key, signer, &BulkCaches::uncached())
}

/// [`verify_bulk_envelope`] with a receiver's caches: the batch signature is checked only if
/// `caches` has not already verified this (key, batch header, signature); every other check runs
/// for every envelope.
pub fn verify_bulk_envelope_with(
    envelope: &Envelope,
    header: &EnvelopeHeader,
    key: &VerifyingKey,
    signer: &str,
    caches: &BulkCaches,
) -> Result<BatchHeader, EnvelopeError> {
    let (batch, root, path) = parse_batch(envelope)?;
    for (field, batch_value, header_value) in [
        ("sender", &batch.sender, &header.sender),
        ("recipient", &batch.recipient, &header.recipient),
    ] {
        if batch_value != header_value {
            return Err(EnvelopeError::Malformed {
                what: "batch header",
                detail: format!(
                    "the batch names {field} {batch_value:?}, the envelope header names \
                     {header_value:?}"
                ),
            });
        }
    }
    verify_inclusion(
        &leaf_hash(&envelope.header),
        envelope.batch_index,
        batch.size,
        &path,
        &root,
    )
    .map_err(|_| EnvelopeError::BadSignature {
        what: "envelope header (batch path)",
        signer: signer.to_owned(),
    })?;
    let cache_key = super::sha256(&super::labeled(
        b"dccf.v1 verified batch",
        &[key.as_bytes(), &envelope.batch_header, &envelope.signature],
    ));
    if caches.batch_verified(&cache_key) {
        return Ok(batch);
    }
    let bad = || EnvelopeError::BadSignature {
        what: "batch header",
        signer: signer.to_owned(),
    };
    let sig = Signature::from_slice(&envelope.signature).map_err(|_| bad())?;
    caches.count_signature_verification();
    key.verify_strict(&pae(BATCH_HEADER_TYPE, &envelope.batch_header), &sig)
        .map_err(|_| bad())?;
    caches.remember_batch(cache_key);
    Ok(batch)
}

/// Opens an epoch-sealed payload (`header.seal_mode = SEAL_MODE_EPOCH`): checks the ciphertext
/// digest, gets the epoch's HPKE receiver context (from `caches`, or one `setup_receiver` with
/// [`epoch_info`]), exports the message id's key, opens `nonce || ciphertext` with
/// ChaCha20-Poly1305 and [`payload_aad`], and checks the payload commitment. A context is cached
/// only once it has opened a payload.
pub fn open_epoch_payload(
    envelope: &Envelope,
    header: &EnvelopeHeader,
    recipient_key: &HpkePrivateKey,
    caches: &BulkCaches,
) -> Result<Opened, EnvelopeError> {
    super::open::check_ciphertext_digest(envelope, header)?;
    if envelope.sealed_payload.len() < EPOCH_NONCE_LEN {
        return Err(EnvelopeError::DecryptionFailed);
    }
    let (nonce, ciphertext) = envelope.sealed_payload.split_at(EPOCH_NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| EnvelopeError::DecryptionFailed)?;
    let info = epoch_info(&header.sender, &header.recipient, &header.agreement_digest);
    // The cached context must be the one this (key, info, encapsulated key) would set up, so the
    // cache key covers all three (the private key only through a hash).
    let cache_key = super::sha256(&super::labeled(
        b"dccf.v1 epoch context",
        &[
            &envelope.encapsulated_key,
            &info,
            &hpke::Serializable::to_bytes(recipient_key),
        ],
    ));
    let (context, fresh) = match caches.epoch(&cache_key) {
        Some(context) => (context, false),
        None => {
            let encapped = <<Kem as hpke::Kem>::EncappedKey as hpke::Deserializable>::from_bytes(
                &envelope.encapsulated_key,
            )
            .map_err(|_| EnvelopeError::DecryptionFailed)?;
            caches.count_epoch_setup();
            let context = hpke::setup_receiver::<Aead, Kdf, Kem>(
                &hpke::OpModeR::Base,
                recipient_key,
                &encapped,
                &info,
            )
            .map_err(|_| EnvelopeError::DecryptionFailed)?;
            (Arc::new(context), true)
        }
    };
    let key = message_key(|ctx, out| context.export(ctx, out), &header.message_id)
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    let aad = payload_aad(
        &header.message_id,
        &header.sender,
        &header.recipient,
        &header.agreement_digest,
    );
    let mut buf = ciphertext.to_vec();
    let plaintext = key
        .open_in_place(nonce, Aad::from(aad.as_slice()), &mut buf)
        .map_err(|_| EnvelopeError::DecryptionFailed)?;
    let opened = super::open::open_body(plaintext, header)?;
    if fresh {
        caches.remember_epoch(cache_key, context);
    }
    Ok(opened)
}

// ---- receiver caches --------------------------------------------------------------------------

/// A bounded map that forgets its oldest insertion first.
struct Fifo<V> {
    capacity: usize,
    map: HashMap<[u8; 32], V>,
    order: VecDeque<[u8; 32]>,
}

impl<V> Fifo<V> {
    fn new(capacity: usize) -> Fifo<V> {
        Fifo {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<&V> {
        self.map.get(key)
    }

    fn insert(&mut self, key: [u8; 32], value: V) {
        if self.capacity == 0 || self.map.contains_key(&key) {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(key, value);
        self.order.push_back(key);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

struct Caches {
    batches: Fifo<()>,
    epochs: Fifo<Arc<ReceiverContext>>,
}

/// A receiver's bulk-mode caches, shared by every connection (thread-safe: a `Mutex` inside,
/// held only for map look-ups, never during crypto). Both are bounded and forget their oldest
/// entry first:
///
/// - verified batches (default [`DEFAULT_BATCH_CACHE`]), keyed by SHA-256 over the verifying
///   key, the batch header bytes and the signature: one signature check per batch;
/// - epoch receiver contexts (default [`DEFAULT_EPOCH_CACHE`]), keyed by SHA-256 over the
///   encapsulated key, the epoch `info` (sender, recipient, agreement digest) and the recipient
///   private key: one HPKE setup per epoch.
///
/// A miss only costs time: an evicted batch is verified again, an evicted epoch set up again.
pub struct BulkCaches {
    inner: Mutex<Caches>,
    signature_verifications: AtomicU64,
    epoch_setups: AtomicU64,
}

impl std::fmt::Debug for BulkCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkCaches")
            .field("cached_batches", &self.cached_batches())
            .field("cached_epochs", &self.cached_epochs())
            .field("signature_verifications", &self.signature_verifications())
            .field("epoch_setups", &self.epoch_setups())
            .finish()
    }
}

impl Default for BulkCaches {
    fn default() -> Self {
        BulkCaches::new()
    }
}

impl BulkCaches {
    /// Caches of the default sizes ([`DEFAULT_BATCH_CACHE`], [`DEFAULT_EPOCH_CACHE`]).
    pub fn new() -> BulkCaches {
        BulkCaches::with_capacity(DEFAULT_BATCH_CACHE, DEFAULT_EPOCH_CACHE)
    }

    /// Caches holding at most `batches` verified batches and `epochs` epoch contexts (0: none).
    pub fn with_capacity(batches: usize, epochs: usize) -> BulkCaches {
        BulkCaches {
            inner: Mutex::new(Caches {
                batches: Fifo::new(batches),
                epochs: Fifo::new(epochs),
            }),
            signature_verifications: AtomicU64::new(0),
            epoch_setups: AtomicU64::new(0),
        }
    }

    /// Caches that remember nothing: every call verifies and sets up afresh (one-off checks).
    pub fn uncached() -> BulkCaches {
        BulkCaches::with_capacity(0, 0)
    }

    /// Batch signatures checked so far (cache misses), for metrics and tests.
    pub fn signature_verifications(&self) -> u64 {
        self.signature_verifications.load(Ordering::Relaxed)
    }

    /// Epoch HPKE receiver setups done so far (cache misses), for metrics and tests.
    pub fn epoch_setups(&self) -> u64 {
        self.epoch_setups.load(Ordering::Relaxed)
    }

    /// Number of verified batches currently remembered.
    pub fn cached_batches(&self) -> usize {
        self.lock().batches.len()
    }

    /// Number of epoch contexts currently kept.
    pub fn cached_epochs(&self) -> usize {
        self.lock().epochs.len()
    }

    fn lock(&self) -> MutexGuard<'_, Caches> {
        // The maps stay consistent even if a holder panicked (no crypto runs under the lock).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn batch_verified(&self, key: &[u8; 32]) -> bool {
        self.lock().batches.get(key).is_some()
    }

    fn remember_batch(&self, key: [u8; 32]) {
        self.lock().batches.insert(key, ());
    }

    fn epoch(&self, key: &[u8; 32]) -> Option<Arc<ReceiverContext>> {
        self.lock().epochs.get(key).cloned()
    }

    fn remember_epoch(&self, key: [u8; 32], context: Arc<ReceiverContext>) {
        self.lock().epochs.insert(key, context);
    }

    fn count_signature_verification(&self) {
        self.signature_verifications.fetch_add(1, Ordering::Relaxed);
    }

    fn count_epoch_setup(&self) {
        self.epoch_setups.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::super::open::{self, parse_header};
    use super::super::testkit::*;
    use super::*;
    use crate::ledger::merkle::Frontier;

    const SENDER: &str = "NL";
    const RECIPIENT: &str = "BR";

    fn outgoing<'a>(id: &'a str, payload: &'a [u8]) -> Outgoing<'a> {
        Outgoing {
            message_id: id,
            agreement_id: "test-agreement",
            agreement_digest: &DIGEST,
            sender: SENDER,
            recipient: RECIPIENT,
            message_type: "dccf.v1.RiskAlert",
            payload,
            in_reply_to: "",
            consent_reference: "",
            created_at_ms: NOW_MS,
            expires_at_ms: NOW_MS + 3_600_000,
        }
    }

    fn payload_of(id: &str) -> Vec<u8> {
        format!("declaration of {id}").into_bytes()
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    }

    /// Seals `ids` in `epochs` (NL → BR, recipient key of `p`) and signs them as one batch.
    fn batch_in(p: &Parties, epochs: &mut Epochs, batch_id: &str, ids: &[String]) -> Vec<Envelope> {
        let mut envs: Vec<Envelope> = ids
            .iter()
            .map(|id| {
                epochs
                    .seal(&outgoing(id, &payload_of(id)), &p.recipient_hpke.1, NOW_MS)
                    .expect("seal")
            })
            .collect();
        sign_batch(
            &mut envs,
            batch_id,
            SENDER,
            RECIPIENT,
            NOW_MS,
            &p.sender_sign,
        )
        .expect("sign batch");
        envs
    }

    fn batch(p: &Parties, ids: &[String]) -> Vec<Envelope> {
        batch_in(p, &mut Epochs::new(EpochPolicy::default()), "batch-1", ids)
    }

    /// The receiver's checks in pipeline order, with shared caches.
    fn receive(env: &Envelope, p: &Parties, caches: &BulkCaches) -> Result<Opened, EnvelopeError> {
        let header = parse_header(env)?;
        open::verify_signature_with(
            env,
            &header,
            &p.sender_sign.verifying_key(),
            &header.sender,
            caches,
        )?;
        open::open_payload_with(env, &header, &p.recipient_hpke.0, caches)
    }

    /// Signature checks only (what a third party without the recipient key can do).
    fn verify(env: &Envelope, p: &Parties, caches: &BulkCaches) -> Result<(), EnvelopeError> {
        let header = parse_header(env)?;
        open::verify_signature_with(env, &header, &p.sender_sign.verifying_key(), SENDER, caches)
    }

    fn resign_batch_header(env: &mut Envelope, p: &Parties, edit: impl FnOnce(&mut BatchHeader)) {
        let mut b = BatchHeader::decode(env.batch_header.as_slice()).expect("batch header");
        edit(&mut b);
        env.batch_header = b.encode_to_vec();
        env.signature = p
            .sender_sign
            .sign(&pae(BATCH_HEADER_TYPE, &env.batch_header))
            .to_bytes()
            .to_vec();
    }

    fn assert_refused(result: Result<(), EnvelopeError>, what: &str) {
        match result {
            Err(
                EnvelopeError::BadSignature { .. }
                | EnvelopeError::Malformed { .. }
                | EnvelopeError::UnsupportedVersion(_),
            ) => {}
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_bulk_envelope_seals_and_opens_to_its_payload() {
        let p = Parties::new();
        let envs = batch(&p, &ids("m", 5));
        let caches = BulkCaches::new();
        for (i, env) in envs.iter().enumerate() {
            let header = parse_header(env).unwrap();
            assert_eq!(header.seal_mode, SealMode::Epoch as i32);
            assert_eq!(env.batch_index, i as u64);
            let opened = receive(env, &p, &caches).unwrap();
            assert_eq!(opened.payload, payload_of(&format!("m-{i}")));
            // Same commitment formula as single mode.
            assert_eq!(
                super::super::payload_commitment(&opened.salt, &opened.payload).to_vec(),
                header.payload_commitment
            );
            // The uncached entry points handle bulk envelopes too.
            open::verify_signature(env, &p.sender_sign.verifying_key(), SENDER).unwrap();
            let again = open::open_payload(env, &header, &p.recipient_hpke.0).unwrap();
            assert_eq!(again.payload, opened.payload);
        }
        // One epoch: one encapsulated key for all.
        assert!(
            envs.iter()
                .all(|e| e.encapsulated_key == envs[0].encapsulated_key)
        );
        assert_eq!(envs[0].encapsulated_key.len(), 32);
    }

    #[test]
    fn one_envelope_out_of_a_batch_of_100_verifies_on_its_own() {
        let p = Parties::new();
        let envs = batch(&p, &ids("m", 100));
        let key = p.sender_sign.verifying_key();
        for env in &envs {
            // Through the wire encoding, with nothing cached: a third party's view.
            let env = open::decode_envelope(&env.encode_to_vec()).unwrap();
            let header = parse_header(&env).unwrap();
            let b = verify_bulk_envelope(&env, &header, &key, SENDER).unwrap();
            assert_eq!((b.size, b.batch_id.as_str()), (100, "batch-1"));
            assert_eq!(
                (b.sender.as_str(), b.recipient.as_str()),
                (SENDER, RECIPIENT)
            );
            let fresh = BulkCaches::new();
            receive(&env, &p, &fresh).unwrap();
            assert_eq!(fresh.signature_verifications(), 1);
        }
    }

    #[test]
    fn batch_tree_is_the_rfc9162_tree() {
        let leaves: Vec<Vec<u8>> = (0..70u32)
            .map(|i| format!("header {i}").into_bytes())
            .collect();
        let mut frontier = Frontier::new();
        assert!(batch_tree(&[]).is_none());
        for n in 1..=leaves.len() {
            frontier.push(leaf_hash(&leaves[n - 1]));
            let refs: Vec<&[u8]> = leaves[..n].iter().map(|l| l.as_slice()).collect();
            let (root, paths) = batch_tree(&refs).unwrap();
            assert_eq!(root, frontier.root(), "root of {n}");
            for (i, path) in paths.iter().enumerate() {
                assert_eq!(Some(path.len()), inclusion_proof_len(i as u64, n as u64));
                verify_inclusion(&leaf_hash(&leaves[i]), i as u64, n as u64, path, &root)
                    .unwrap_or_else(|e| panic!("leaf {i} of {n}: {e}"));
            }
        }
    }

    #[test]
    fn any_bit_flipped_in_path_root_batch_header_header_or_signature_is_rejected() {
        let p = Parties::new();
        let envs = batch(&p, &ids("m", 100));
        // A shared cache that has already verified the batch: tampering must fail even so.
        let caches = BulkCaches::new();
        for env in &envs {
            verify(env, &p, &caches).unwrap();
        }
        for &index in &[0usize, 37, 99] {
            let env = &envs[index];
            assert!(!env.batch_path.is_empty());
            for (elem, _) in env.batch_path.iter().enumerate() {
                for bit in 0..256 {
                    let mut bad = env.clone();
                    bad.batch_path[elem][bit / 8] ^= 1 << (bit % 8);
                    assert_refused(verify(&bad, &p, &caches), "path bit");
                }
            }
            for bit in 0..256 {
                let mut bad = env.clone();
                let mut b = BatchHeader::decode(bad.batch_header.as_slice()).unwrap();
                b.root[bit / 8] ^= 1 << (bit % 8);
                bad.batch_header = b.encode_to_vec();
                assert_refused(verify(&bad, &p, &caches), "root bit");
            }
            for bit in 0..env.header.len() * 8 {
                let mut bad = env.clone();
                bad.header[bit / 8] ^= 1 << (bit % 8);
                assert_refused(verify(&bad, &p, &caches), "header bit");
            }
        }
        // The batch header and signature are the same in every envelope of the batch.
        let env = &envs[37];
        for bit in 0..env.batch_header.len() * 8 {
            let mut bad = env.clone();
            bad.batch_header[bit / 8] ^= 1 << (bit % 8);
            assert_refused(verify(&bad, &p, &caches), "batch header bit");
        }
        for bit in 0..env.signature.len() * 8 {
            let mut bad = env.clone();
            bad.signature[bit / 8] ^= 1 << (bit % 8);
            assert_refused(verify(&bad, &p, &caches), "signature bit");
        }
        // Only the one genuine batch was ever cached.
        assert_eq!(caches.cached_batches(), 1);
    }

    #[test]
    fn a_path_for_one_index_fails_at_another() {
        let p = Parties::new();
        let envs = batch(&p, &ids("m", 100));
        let caches = BulkCaches::new();
        for (i, j) in [(5usize, 6usize), (0, 1), (10, 70), (98, 99), (64, 96)] {
            // The path of i claimed at index j.
            let mut moved = envs[i].clone();
            moved.batch_index = j as u64;
            assert_refused(verify(&moved, &p, &caches), "index changed");
            // j's path with i's index and header.
            let mut swapped = envs[i].clone();
            swapped.batch_path = envs[j].batch_path.clone();
            assert_refused(verify(&swapped, &p, &caches), "path swapped");
        }
        let mut beyond = envs[3].clone();
        beyond.batch_index = 100;
        assert!(matches!(
            verify(&beyond, &p, &caches),
            Err(EnvelopeError::Malformed {
                what: "batch path",
                ..
            })
        ));
        // Equal-length paths that do not lead to the root are a bad signature, not malformed.
        let mut moved = envs[5].clone();
        moved.batch_index = 6;
        assert_eq!(
            verify(&moved, &p, &caches).unwrap_err(),
            EnvelopeError::BadSignature {
                what: "envelope header (batch path)",
                signer: SENDER.into()
            }
        );
    }

    #[test]
    fn a_batch_naming_another_sender_or_recipient_is_rejected() {
        let p = Parties::new();
        let envs = batch(&p, &ids("m", 4));
        for field in ["sender", "recipient"] {
            let mut bad = envs[1].clone();
            resign_batch_header(&mut bad, &p, |b| match field {
                "sender" => b.sender = "XX".into(),
                _ => b.recipient = "YY".into(),
            });
            let err = verify(&bad, &p, &BulkCaches::new()).unwrap_err();
            assert!(
                matches!(
                    err,
                    EnvelopeError::Malformed {
                        what: "batch header",
                        ..
                    }
                ),
                "{field}: {err:?}"
            );
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        // And the sender cannot build such a batch.
        let mut envs = envs;
        let before = envs.clone();
        let err = sign_batch(&mut envs, "b", "XX", RECIPIENT, NOW_MS, &p.sender_sign).unwrap_err();
        assert!(err.to_string().contains("sender"), "{err}");
        let err = sign_batch(&mut envs, "b", SENDER, "YY", NOW_MS, &p.sender_sign).unwrap_err();
        assert!(err.to_string().contains("recipient"), "{err}");
        assert_eq!(envs, before, "a refused batch changes nothing");
    }

    #[test]
    fn batch_and_single_signatures_do_not_mix() {
        let p = Parties::new();
        let envs = batch(&p, &ids("m", 4));
        let caches = BulkCaches::new();
        // A header signature with batch fields attached: the signature is not over the batch.
        let mut single = envs[2].clone();
        single.signature = super::super::seal::sign_header(&single.header, &p.sender_sign);
        assert!(matches!(
            verify(&single, &p, &caches),
            Err(EnvelopeError::BadSignature {
                what: "batch header",
                ..
            })
        ));
        // A batch signature with the batch fields stripped is not a header signature.
        let stripped = Envelope {
            batch_header: Vec::new(),
            batch_index: 0,
            batch_path: Vec::new(),
            ..envs[0].clone()
        };
        assert!(matches!(
            verify(&stripped, &p, &caches),
            Err(EnvelopeError::BadSignature {
                what: "envelope header",
                ..
            })
        ));
        // Batch index or path without a batch header is malformed.
        let orphan = Envelope {
            batch_header: Vec::new(),
            ..envs[3].clone()
        };
        assert!(matches!(
            parse_header(&orphan),
            Err(EnvelopeError::Malformed {
                what: "envelope",
                ..
            })
        ));
        // But an epoch-sealed envelope may be signed on its own...
        let mut epochs = Epochs::new(EpochPolicy::default());
        let mut alone = epochs
            .seal(
                &outgoing("solo", b"solo payload"),
                &p.recipient_hpke.1,
                NOW_MS,
            )
            .unwrap();
        alone.signature = super::super::seal::sign_header(&alone.header, &p.sender_sign);
        assert_eq!(
            receive(&alone, &p, &caches).unwrap().payload,
            b"solo payload"
        );
        // ...and single-shot envelopes may travel in a batch.
        let mut singles = vec![p.envelope("s-1", b"one"), p.envelope("s-2", b"two")];
        sign_batch(
            &mut singles,
            "b-s",
            SENDER,
            RECIPIENT,
            NOW_MS,
            &p.sender_sign,
        )
        .unwrap();
        assert_eq!(receive(&singles[1], &p, &caches).unwrap().payload, b"two");
    }

    #[test]
    fn an_unknown_seal_mode_is_malformed() {
        let p = Parties::new();
        let env = p.envelope("m-1", b"p");
        let mut header = parse_header(&env).unwrap();
        header.seal_mode = 7;
        let bad = Envelope {
            header: header.encode_to_vec(),
            ..env.clone()
        };
        assert!(matches!(
            parse_header(&bad),
            Err(EnvelopeError::Malformed { .. })
        ));
        assert!(matches!(
            open::open_payload(&env, &header, &p.recipient_hpke.0),
            Err(EnvelopeError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_batch_headers_and_paths_are_refused() {
        let p = Parties::new();
        let envs = batch(&p, &ids("m", 10));
        let caches = BulkCaches::new();
        let malformed = |env: &Envelope, case: &str| match verify(env, &p, &caches) {
            Err(EnvelopeError::Malformed { .. }) => {}
            other => panic!("{case}: expected Malformed, got {other:?}"),
        };
        let mut bad = envs[4].clone();
        bad.batch_header = vec![0xff, 0xff, 0xff];
        malformed(&bad, "garbage batch header");
        for case in ["size 0", "short root", "no id", "no sender"] {
            let mut bad = envs[4].clone();
            resign_batch_header(&mut bad, &p, |b| match case {
                "size 0" => b.size = 0,
                "short root" => b.root.truncate(31),
                "no id" => b.batch_id.clear(),
                _ => b.sender.clear(),
            });
            malformed(&bad, case);
        }
        let mut bad = envs[4].clone();
        bad.batch_path.pop();
        malformed(&bad, "short path");
        let mut bad = envs[4].clone();
        bad.batch_path.push(vec![0u8; 32]);
        malformed(&bad, "long path");
        let mut bad = envs[4].clone();
        bad.batch_path[0].pop();
        malformed(&bad, "31-byte hash");
        let mut bad = envs[4].clone();
        bad.batch_index = u64::MAX;
        malformed(&bad, "index beyond size");
        // A (signed) size that disagrees with the tree changes the last leaf's path shape. (For
        // a leaf in the left perfect subtree, RFC 9162 paths do not pin the size beyond the
        // path length: a size misstated by its own signer is the signer's statement.)
        let mut bad = envs[9].clone();
        resign_batch_header(&mut bad, &p, |b| b.size = 11);
        malformed(&bad, "size 11");
        assert_eq!(caches.cached_batches(), 0);
    }

    #[test]
    fn sign_batch_refuses_bad_input() {
        let p = Parties::new();
        let mut none: Vec<Envelope> = Vec::new();
        assert!(sign_batch(&mut none, "b", SENDER, RECIPIENT, NOW_MS, &p.sender_sign).is_err());
        let mut envs = vec![p.envelope("m-1", b"x")];
        assert!(sign_batch(&mut envs, "", SENDER, RECIPIENT, NOW_MS, &p.sender_sign).is_err());
        let long = "x".repeat(129);
        assert!(sign_batch(&mut envs, &long, SENDER, RECIPIENT, NOW_MS, &p.sender_sign).is_err());
        let mut garbage = vec![p.envelope("m-1", b"x"), Envelope::default()];
        garbage[1].header = vec![0xff; 5];
        assert!(matches!(
            sign_batch(&mut garbage, "b", SENDER, RECIPIENT, NOW_MS, &p.sender_sign),
            Err(EnvelopeError::Malformed {
                what: "envelope header",
                ..
            })
        ));
        // A batch of one: the root is the leaf hash, the path is empty.
        sign_batch(&mut envs, "b1", SENDER, RECIPIENT, NOW_MS, &p.sender_sign).unwrap();
        assert!(envs[0].batch_path.is_empty());
        receive(&envs[0], &p, &BulkCaches::new()).unwrap();
    }

    #[test]
    fn a_ciphertext_moved_to_another_message_id_cannot_be_opened() {
        let p = Parties::new();
        let mut epochs = Epochs::new(EpochPolicy::default());
        let envs = batch_in(&p, &mut epochs, "b", &ids("m", 2));
        let (a, b) = (&envs[0], &envs[1]);
        let caches = BulkCaches::new();
        // Naive move: the signed ciphertext digest no longer matches.
        let mut moved = b.clone();
        moved.sealed_payload = a.sealed_payload.clone();
        assert_eq!(
            receive(&moved, &p, &caches).unwrap_err(),
            EnvelopeError::CiphertextMismatch
        );
        // Even a sender that signs a header for m-1 over m-0's ciphertext (same epoch, same
        // encapsulated key) cannot get it opened: the AEAD key is bound to the message id.
        let mut header = parse_header(b).unwrap();
        header.ciphertext_digest =
            super::super::ciphertext_digest(&a.encapsulated_key, &a.sealed_payload).to_vec();
        let mut rebound = vec![Envelope {
            header: header.encode_to_vec(),
            sealed_payload: a.sealed_payload.clone(),
            encapsulated_key: a.encapsulated_key.clone(),
            ..Default::default()
        }];
        sign_batch(
            &mut rebound,
            "b2",
            SENDER,
            RECIPIENT,
            NOW_MS,
            &p.sender_sign,
        )
        .unwrap();
        assert_eq!(
            receive(&rebound[0], &p, &caches).unwrap_err(),
            EnvelopeError::DecryptionFailed
        );
        // Headers naming another sender, recipient or agreement digest cannot open it either
        // (epoch info and AAD bind them).
        for field in ["sender", "recipient", "agreement_digest"] {
            let mut header = parse_header(a).unwrap();
            match field {
                "sender" => header.sender = "XX".into(),
                "recipient" => header.recipient = "YY".into(),
                _ => header.agreement_digest = vec![7u8; 32],
            }
            let forged = Envelope {
                header: header.encode_to_vec(),
                ..a.clone()
            };
            assert_eq!(
                open::open_payload_with(&forged, &header, &p.recipient_hpke.0, &caches)
                    .unwrap_err(),
                EnvelopeError::DecryptionFailed,
                "{field}"
            );
        }
        // The genuine one still opens, through the cached context.
        assert_eq!(receive(a, &p, &caches).unwrap().payload, payload_of("m-0"));
    }

    #[test]
    fn sealed_to_another_recipient_key_fails_and_is_not_cached() {
        let p = Parties::new();
        let other = hpke_keypair(77);
        let mut epochs = Epochs::new(EpochPolicy::default());
        let mut env = epochs
            .seal(&outgoing("m-1", b"payload"), &other.1, NOW_MS)
            .unwrap();
        env.signature = super::super::seal::sign_header(&env.header, &p.sender_sign);
        let header = parse_header(&env).unwrap();
        let caches = BulkCaches::new();
        for _ in 0..2 {
            assert_eq!(
                open::open_payload_with(&env, &header, &p.recipient_hpke.0, &caches).unwrap_err(),
                EnvelopeError::DecryptionFailed
            );
        }
        assert_eq!(caches.cached_epochs(), 0);
        assert_eq!(caches.epoch_setups(), 2);
        // Truncated payloads fail cleanly.
        let mut short = env.clone();
        short.sealed_payload.truncate(5);
        let mut header = header;
        header.ciphertext_digest =
            super::super::ciphertext_digest(&short.encapsulated_key, &short.sealed_payload)
                .to_vec();
        assert_eq!(
            open::open_payload_with(&short, &header, &other.0, &caches).unwrap_err(),
            EnvelopeError::DecryptionFailed
        );
    }

    #[test]
    fn the_epoch_sealer_refuses_messages_for_another_destination() {
        let p = Parties::new();
        let mut epoch =
            EpochSealer::new(SENDER, RECIPIENT, &DIGEST, &p.recipient_hpke.1, NOW_MS).unwrap();
        let mut m = outgoing("m-1", b"x");
        m.recipient = "FR";
        assert!(matches!(epoch.seal(&m), Err(EnvelopeError::Seal(_))));
        let other_digest = [1u8; 32];
        let mut m = outgoing("m-1", b"x");
        m.agreement_digest = &other_digest;
        assert!(matches!(epoch.seal(&m), Err(EnvelopeError::Seal(_))));
        assert_eq!(epoch.sealed(), 0);
        epoch.seal(&outgoing("m-1", b"x")).unwrap();
        assert_eq!(epoch.sealed(), 1);
    }

    #[test]
    fn epochs_rotate_by_count() {
        let p = Parties::new();
        let mut epochs = Epochs::new(EpochPolicy {
            max_messages: 3,
            max_age_ms: i64::MAX,
        });
        let keys: Vec<Vec<u8>> = ids("m", 7)
            .iter()
            .map(|id| {
                epochs
                    .seal(&outgoing(id, b"x"), &p.recipient_hpke.1, NOW_MS)
                    .unwrap()
                    .encapsulated_key
            })
            .collect();
        assert_eq!(keys[0], keys[1]);
        assert_eq!(keys[1], keys[2]);
        assert_ne!(keys[2], keys[3]);
        assert_eq!(keys[3], keys[5]);
        assert_ne!(keys[5], keys[6]);
        assert_eq!(epochs.started(), 3);
        assert_eq!(epochs.len(), 1);
        // Every envelope of every epoch opens with one shared cache: one setup per epoch.
        let caches = BulkCaches::new();
        let mut envs: Vec<Envelope> = ids("n", 7)
            .iter()
            .map(|id| {
                epochs
                    .seal(&outgoing(id, &payload_of(id)), &p.recipient_hpke.1, NOW_MS)
                    .unwrap()
            })
            .collect();
        sign_batch(&mut envs, "b", SENDER, RECIPIENT, NOW_MS, &p.sender_sign).unwrap();
        for (i, env) in envs.iter().enumerate() {
            assert_eq!(
                receive(env, &p, &caches).unwrap().payload,
                payload_of(&format!("n-{i}"))
            );
        }
        // n-0..n-1 finish the third epoch, n-2..n-4 the fourth, n-5..n-6 the fifth.
        assert_eq!(caches.epoch_setups(), 3);
        assert_eq!(caches.signature_verifications(), 1);
    }

    #[test]
    fn epochs_rotate_by_age_and_per_destination() {
        let p = Parties::new();
        let mut epochs = Epochs::new(EpochPolicy {
            max_messages: 1000,
            max_age_ms: 1000,
        });
        let key = &p.recipient_hpke.1;
        let seal_at = |epochs: &mut Epochs, id: &str, now: i64| {
            epochs
                .seal(&outgoing(id, b"x"), key, now)
                .unwrap()
                .encapsulated_key
        };
        let k0 = seal_at(&mut epochs, "a", NOW_MS);
        let k1 = seal_at(&mut epochs, "b", NOW_MS + 999);
        let k2 = seal_at(&mut epochs, "c", NOW_MS + 1000);
        let k3 = seal_at(&mut epochs, "d", NOW_MS + 1500);
        let k4 = seal_at(&mut epochs, "e", NOW_MS - 5000); // clock went backwards
        assert_eq!(k0, k1);
        assert_ne!(k1, k2);
        assert_eq!(k2, k3);
        assert_ne!(k3, k4);
        // Another recipient key or agreement digest is another epoch.
        let other = hpke_keypair(9);
        let k5 = epochs
            .seal(&outgoing("f", b"x"), &other.1, NOW_MS - 5000)
            .unwrap()
            .encapsulated_key;
        let digest = [3u8; 32];
        let mut m = outgoing("g", b"x");
        m.agreement_digest = &digest;
        let k6 = epochs
            .seal(&m, key, NOW_MS - 5000)
            .unwrap()
            .encapsulated_key;
        assert_ne!(k4, k5);
        assert_ne!(k4, k6);
        assert_eq!(epochs.len(), 3);
        assert_eq!(epochs.prune(NOW_MS - 4500), 0);
        assert_eq!(epochs.prune(NOW_MS - 4000), 3);
        assert!(epochs.is_empty());
    }

    #[test]
    fn receiver_caches_verify_one_signature_per_batch_and_stay_bounded() {
        let p = Parties::new();
        let caches = BulkCaches::new();
        let mut epochs = Epochs::new(EpochPolicy::default());
        let batches: Vec<Vec<Envelope>> = (0..3)
            .map(|b| {
                batch_in(
                    &p,
                    &mut epochs,
                    &format!("b-{b}"),
                    &ids(&format!("m{b}"), 50),
                )
            })
            .collect();
        for env in batches.iter().flatten() {
            receive(env, &p, &caches).unwrap();
        }
        assert_eq!(caches.signature_verifications(), 3);
        assert_eq!(caches.epoch_setups(), 1);
        assert_eq!((caches.cached_batches(), caches.cached_epochs()), (3, 1));

        // A verified batch is verified under one key only.
        let intruder = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let env = &batches[0][0];
        let header = parse_header(env).unwrap();
        assert!(matches!(
            open::verify_signature_with(env, &header, &intruder, SENDER, &caches),
            Err(EnvelopeError::BadSignature {
                what: "batch header",
                ..
            })
        ));

        // Bounded: at most 2 batches and 2 epochs, oldest forgotten first.
        let small = BulkCaches::with_capacity(2, 2);
        let mut many = Vec::new();
        for b in 0..5 {
            let mut e = Epochs::new(EpochPolicy::default());
            many.push(batch_in(
                &p,
                &mut e,
                &format!("s-{b}"),
                &ids(&format!("s{b}"), 3),
            ));
        }
        for env in many.iter().flatten() {
            receive(env, &p, &small).unwrap();
            assert!(small.cached_batches() <= 2 && small.cached_epochs() <= 2);
        }
        assert_eq!(
            (small.signature_verifications(), small.epoch_setups()),
            (5, 5)
        );
        // The newest batch is still cached, the oldest was evicted and is verified again.
        receive(&many[4][0], &p, &small).unwrap();
        assert_eq!(small.signature_verifications(), 5);
        receive(&many[0][0], &p, &small).unwrap();
        assert_eq!(
            (small.signature_verifications(), small.epoch_setups()),
            (6, 6)
        );

        // Uncached: every envelope costs a verification and a setup.
        let none = BulkCaches::uncached();
        for env in &many[1] {
            receive(env, &p, &none).unwrap();
        }
        assert_eq!(
            (none.signature_verifications(), none.epoch_setups()),
            (3, 3)
        );
        assert_eq!((none.cached_batches(), none.cached_epochs()), (0, 0));
    }

    #[test]
    fn caches_are_shared_across_threads() {
        let p = Parties::new();
        let envs = batch(&p, &ids("t", 40));
        let caches = BulkCaches::new();
        std::thread::scope(|s| {
            for chunk in envs.chunks(10) {
                let (caches, p) = (&caches, &p);
                s.spawn(move || {
                    for env in chunk {
                        receive(env, p, caches).unwrap();
                    }
                });
            }
        });
        // Racing threads may each verify the batch once; never once per envelope.
        assert!(caches.signature_verifications() <= 4);
        assert_eq!(caches.cached_batches(), 1);
    }
}
