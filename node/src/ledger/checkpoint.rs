//! Checkpoints in the C2SP `tlog-checkpoint` format, signed as C2SP `signed-note`s with Ed25519,
//! so that auditors can check a node's ledger head with off-the-shelf transparency-log tools.
//!
//! A note is `text` (ending in a newline), an empty line, and one signature line per signer:
//! `— <name> <base64(key id ‖ signature)>`. The key id is the first 4 bytes of
//! SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key); the signature is Ed25519 over `text`. A checkpoint's
//! text is `<origin>\n<tree size>\n<base64 root hash>\n`.
//!
//! Cosignatures follow C2SP `tlog-cosignature` (Ed25519, type 0x04): a witness that checked a
//! checkpoint's consistency adds a signature line whose blob is `key id ‖ u64 BE timestamp ‖
//! Ed25519("cosignature/v1\ntime <t>\n" ‖ checkpoint text)`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// The signature-type byte of Ed25519 in C2SP signed notes and verifier keys.
const ED25519: u8 = 0x01;
/// The signature-type byte of Ed25519 cosignatures (C2SP `tlog-cosignature`, `cosignature/v1`).
const COSIGNATURE_V1: u8 = 0x04;
/// The prefix of a signature line (an em dash and a space).
const SIG_PREFIX: &str = "\u{2014} ";

/// Errors of notes, keys and checkpoints; each says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key string is not in the expected `name+keyid+base64` form.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// The note is not text, blank line, signature lines.
    #[error("malformed note: {0}")]
    MalformedNote(String),
    /// No signature line by the expected key verifies.
    #[error("no valid signature by {0}")]
    NoValidSignature(String),
    /// The checkpoint text is not origin, size, root.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
}

/// The 4-byte key id of an Ed25519 key named `name`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    typed_key_id(name, ED25519, key)
}

/// The 4-byte key id of an Ed25519 cosigner key named `name` (type 0x04).
pub fn cosigner_key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    typed_key_id(name, COSIGNATURE_V1, key)
}

fn typed_key_id(name: &str, kind: u8, key: &VerifyingKey) -> [u8; 4] {
    let digest = crate::envelope::sha256_parts(&[name.as_bytes(), b"\n", &[kind], key.as_bytes()]);
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The verifier key string `<name>+<hex key id>+<base64(type ‖ public key)>`.
fn vkey_string(name: &str, kind: u8, key: &VerifyingKey) -> String {
    let public = [&[kind][..], key.as_bytes()].concat();
    format!(
        "{name}+{}+{}",
        hex::encode(typed_key_id(name, kind, key)),
        B64.encode(public)
    )
}

/// A signer of notes: a name and an Ed25519 key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer named `name` (e.g. the log origin `dccf.example/NL`) with `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<NoteSigner, NoteError> {
        check_name(name)?;
        Ok(NoteSigner {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses a Go/C2SP signer key `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>`.
    pub fn from_key_string(s: &str) -> Result<NoteSigner, NoteError> {
        let rest = s.strip_prefix("PRIVATE+KEY+").ok_or_else(|| {
            NoteError::MalformedKey("signer key must start with PRIVATE+KEY+".into())
        })?;
        let (name, id, bytes) = split_key(rest, ED25519)?;
        let seed: [u8; 32] = bytes
            .get(1..)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| NoteError::MalformedKey("signer key must hold 32 key bytes".into()))?;
        let signer = NoteSigner::new(name, SigningKey::from_bytes(&seed))?;
        if signer.key_id() != id {
            return Err(NoteError::MalformedKey(
                "key id does not match the key".into(),
            ));
        }
        Ok(signer)
    }

    /// The signer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signer's key id.
    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.key.verifying_key())
    }

    /// The verifier key string `<name>+<hex key id>+<base64(0x01 ‖ public key)>` (the `vkey`).
    pub fn verifier_key(&self) -> String {
        vkey_string(&self.name, ED25519, &self.key.verifying_key())
    }

    /// Signs `text` (must end with a newline) into a note with one signature line.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let blob = [&self.key_id()[..], &sig.to_bytes()].concat();
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

/// A verifier of notes: a name and an Ed25519 public key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key string `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
    pub fn from_key_string(s: &str) -> Result<NoteVerifier, NoteError> {
        let (name, key) = parse_vkey(s, ED25519)?;
        NoteVerifier::new(name, key)
    }

    /// Builds a verifier for the key `key` named `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<NoteVerifier, NoteError> {
        check_name(name)?;
        Ok(NoteVerifier {
            name: name.to_owned(),
            key,
        })
    }

    /// The signer name this verifier expects.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that `note` carries a valid signature by this verifier and returns its text.
    pub fn verify<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let (text, lines) = split_note(note)?;
        let id = key_id(&self.name, &self.key);
        for (name, blob) in lines {
            if name != self.name || blob.len() != 68 || blob[..4] != id {
                continue; // another signer's line
            }
            let sig = Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::MalformedNote("bad signature bytes".into()))?;
            if self.key.verify_strict(text.as_bytes(), &sig).is_ok() {
                return Ok(text);
            }
        }
        Err(NoteError::NoValidSignature(self.name.clone()))
    }
}

/// One signature line of a note: signer name and decoded blob (key id ‖ signature data).
pub type SignatureLine<'a> = (&'a str, Vec<u8>);

/// Splits a note into its text (ending in a newline) and its signature lines as
/// (name, decoded blob), checking the framing.
pub fn split_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| NoteError::MalformedNote("no blank line before the signatures".into()))?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    check_text(text)?;
    if !sigs.ends_with('\n') || sigs.is_empty() {
        return Err(NoteError::MalformedNote(
            "signature lines must end with a newline".into(),
        ));
    }
    let mut out = Vec::new();
    for line in sigs.lines() {
        let bad = || NoteError::MalformedNote(format!("not a signature line: {line:?}"));
        let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(bad)?;
        let (name, blob) = rest.split_once(' ').ok_or_else(bad)?;
        let blob = B64
            .decode(blob)
            .map_err(|_| NoteError::MalformedNote("signature is not base64".into()))?;
        out.push((name, blob));
    }
    Ok((text, out))
}

/// Appends signature lines (each `— name base64\n`, as made by [`Cosigner::cosign`]) to a note.
pub fn add_signature_lines(note: &str, lines: &[String]) -> String {
    let mut out = note.to_owned();
    for line in lines {
        out.push_str(line);
    }
    out
}

/// The message a `cosignature/v1` signs: header line, time line, then the checkpoint text.
fn cosigned_message(text: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{text}")
}

/// A witness that cosigns checkpoints (C2SP `tlog-cosignature`, Ed25519 `cosignature/v1`).
#[derive(Clone)]
pub struct Cosigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A cosigner named `name` (a schema-less URL identifying the witness) with `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<Cosigner, NoteError> {
        check_name(name)?;
        Ok(Cosigner {
            name: name.to_owned(),
            key,
        })
    }

    /// The cosigner name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key string `<name>+<hex key id>+<base64(0x04 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        vkey_string(&self.name, COSIGNATURE_V1, &self.key.verifying_key())
    }

    /// Cosigns checkpoint `text` (the note text, without signature lines) at `time` (Unix
    /// seconds); returns the signature line, newline included.
    pub fn cosign(&self, text: &str, time: u64) -> Result<String, NoteError> {
        check_text(text)?;
        if time > i64::MAX as u64 {
            return Err(NoteError::MalformedNote(
                "cosignature time out of range".into(),
            ));
        }
        let sig = self.key.sign(cosigned_message(text, time).as_bytes());
        let id = cosigner_key_id(&self.name, &self.key.verifying_key());
        let blob = [&id[..], &time.to_be_bytes(), &sig.to_bytes()].concat();
        Ok(format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob)))
    }
}

/// Verifies a witness's cosignatures on checkpoints.
#[derive(Debug, Clone)]
pub struct CosignatureVerifier {
    name: String,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    /// A verifier for the cosigner `name` with public key `key`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<CosignatureVerifier, NoteError> {
        check_name(name)?;
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses a cosigner verifier key `<name>+<hex key id>+<base64(0x04 ‖ public key)>`.
    pub fn from_key_string(s: &str) -> Result<CosignatureVerifier, NoteError> {
        let (name, key) = parse_vkey(s, COSIGNATURE_V1)?;
        CosignatureVerifier::new(name, key)
    }

    /// The cosigner name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key string of this cosigner.
    pub fn verifier_key(&self) -> String {
        vkey_string(&self.name, COSIGNATURE_V1, &self.key)
    }

    /// Checks that `note` carries a valid cosignature by this witness; returns its timestamp.
    pub fn verify(&self, note: &str) -> Result<u64, NoteError> {
        let (text, lines) = split_note(note)?;
        let id = cosigner_key_id(&self.name, &self.key);
        for (name, blob) in lines {
            if name != self.name || blob.len() != 4 + 8 + 64 || blob[..4] != id {
                continue;
            }
            let time = u64::from_be_bytes(blob[4..12].try_into().expect("8 bytes"));
            let sig = Signature::from_slice(&blob[12..])
                .map_err(|_| NoteError::MalformedNote("bad signature bytes".into()))?;
            if time <= i64::MAX as u64
                && self
                    .key
                    .verify_strict(cosigned_message(text, time).as_bytes(), &sig)
                    .is_ok()
            {
                return Ok(time);
            }
        }
        Err(NoteError::NoValidSignature(self.name.clone()))
    }
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name.contains('+')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(NoteError::MalformedKey(format!(
            "invalid signer name {name:?}"
        )));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n')
        || text.contains("\n\n")
        || text.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(NoteError::MalformedNote(
            "text must be non-blank lines ending in a newline".into(),
        ));
    }
    Ok(())
}

/// Parses a verifier key `<name>+<hex key id>+<base64(kind ‖ public key)>` and checks its key id.
fn parse_vkey(s: &str, kind: u8) -> Result<(&str, VerifyingKey), NoteError> {
    let (name, id, bytes) = split_key(s, kind)?;
    let public: [u8; 32] = bytes
        .get(1..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| NoteError::MalformedKey("verifier key must hold 32 key bytes".into()))?;
    let key = VerifyingKey::from_bytes(&public)
        .map_err(|_| NoteError::MalformedKey("not an Ed25519 public key".into()))?;
    if typed_key_id(name, kind, &key) != id {
        return Err(NoteError::MalformedKey(
            "key id does not match the key".into(),
        ));
    }
    Ok((name, key))
}

/// Splits `name+hexid+base64` into its parts, checking the type byte.
fn split_key(s: &str, kind: u8) -> Result<(&str, [u8; 4], Vec<u8>), NoteError> {
    let mut parts = s.splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::MalformedKey("expected name+keyid+key".into()));
    };
    check_name(name)?;
    let id: [u8; 4] = hex::decode(id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| NoteError::MalformedKey("key id must be 8 hex digits".into()))?;
    let bytes = B64
        .decode(b64)
        .map_err(|_| NoteError::MalformedKey("key is not base64".into()))?;
    if bytes.first() != Some(&kind) {
        return Err(NoteError::MalformedKey(format!(
            "expected an Ed25519 key of type 0x{kind:02x}{}",
            if kind == ED25519 {
                ""
            } else {
                " (cosignature/v1)"
            }
        )));
    }
    Ok((name, id, bytes))
}

/// The text of a checkpoint of a log named `origin` at `size` with RFC 6962 `root`.
pub fn checkpoint_text(origin: &str, size: u64, root: &[u8; 32]) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// Parses checkpoint text into (origin, size, root); extension lines after the root are allowed.
pub fn parse_checkpoint(text: &str) -> Result<(String, u64, [u8; 32]), NoteError> {
    let mut lines = text.lines();
    let bad = |what: &str| NoteError::MalformedCheckpoint(what.to_owned());
    let origin = lines
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("missing origin line"))?;
    let size = lines
        .next()
        .filter(|l| !(l.starts_with('+') || l.len() > 1 && l.starts_with('0')))
        .and_then(|l| l.parse::<u64>().ok())
        .ok_or_else(|| bad("tree size must be a decimal number without sign or leading zeros"))?;
    let root: [u8; 32] = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("root hash must be 32 bytes of base64"))?;
    Ok((origin.to_owned(), size, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        verifier_key: String,
        signer_key: String,
        key_id_hex: String,
        text: String,
        note: String,
    }

    fn vector() -> Vector {
        serde_json::from_str(include_str!("../../testdata/signed-note.json"))
            .expect("vector parses")
    }

    #[test]
    fn reproduces_the_reference_signed_note_byte_for_byte() {
        let v = vector();
        let signer = NoteSigner::from_key_string(&v.signer_key).unwrap();
        assert_eq!(hex::encode(signer.key_id()), v.key_id_hex);
        assert_eq!(signer.verifier_key(), v.verifier_key);
        assert_eq!(signer.sign(&v.text).unwrap(), v.note);
        let verifier = NoteVerifier::from_key_string(&v.verifier_key).unwrap();
        assert_eq!(verifier.verify(&v.note).unwrap(), v.text);
    }

    #[test]
    fn any_changed_byte_fails_verification() {
        let v = vector();
        let verifier = NoteVerifier::from_key_string(&v.verifier_key).unwrap();
        let bytes = v.note.as_bytes();
        for i in 0..bytes.len() {
            let mut changed = bytes.to_vec();
            changed[i] ^= 0x01;
            if let Ok(note) = std::str::from_utf8(&changed) {
                assert!(
                    verifier.verify(note).is_err(),
                    "byte {i} changed and still verifies"
                );
            }
        }
    }

    #[test]
    fn a_note_signed_by_another_key_does_not_verify() {
        let v = vector();
        let other = NoteSigner::new("PeterNeumann", SigningKey::from_bytes(&[7u8; 32])).unwrap();
        let verifier = NoteVerifier::from_key_string(&v.verifier_key).unwrap();
        assert!(matches!(
            verifier.verify(&other.sign(&v.text).unwrap()),
            Err(NoteError::NoValidSignature(_))
        ));
    }

    #[test]
    fn checkpoints_round_trip_and_malformed_ones_are_refused() {
        let signer =
            NoteSigner::new("dccf.example/NL", SigningKey::from_bytes(&[9u8; 32])).unwrap();
        let root = [0xAB; 32];
        let note = signer
            .sign(&checkpoint_text("dccf.example/NL", 42, &root))
            .unwrap();
        let verifier = NoteVerifier::from_key_string(&signer.verifier_key()).unwrap();
        let text = verifier.verify(&note).unwrap();
        assert_eq!(
            parse_checkpoint(text).unwrap(),
            ("dccf.example/NL".to_owned(), 42, root)
        );
        for bad in [
            "",
            "origin\n",
            "origin\n-1\nAAAA\n",
            "origin\n01\nAAAA\n",
            "origin\n5\nnot base64\n",
        ] {
            assert!(parse_checkpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_keys_are_refused_with_a_reason() {
        for (key, why) in [
            ("nokeyid", "expected name+keyid+key"),
            ("name+zz+AQ==", "8 hex digits"),
            ("name+00000000+AgAA", "Ed25519"),
            ("name+00000000+BAAA", "type 0x01"),
        ] {
            let err = NoteVerifier::from_key_string(key).unwrap_err().to_string();
            assert!(err.contains(why), "{key}: {err}");
        }
    }

    fn cosigned_fixture() -> (NoteSigner, Cosigner, String, String) {
        let log = NoteSigner::new("dccf.example/NL", SigningKey::from_bytes(&[9u8; 32])).unwrap();
        let witness = Cosigner::new("dccf.example/BR", SigningKey::from_bytes(&[5u8; 32])).unwrap();
        let text = checkpoint_text("dccf.example/NL", 7, &[0x11; 32]);
        let note = log.sign(&text).unwrap();
        let line = witness.cosign(&text, 1_700_000_000).unwrap();
        let cosigned = add_signature_lines(&note, &[line]);
        (log, witness, text, cosigned)
    }

    #[test]
    fn cosignatures_verify_and_leave_the_log_signature_intact() {
        let (log, witness, text, cosigned) = cosigned_fixture();
        let verifier = CosignatureVerifier::from_key_string(&witness.verifier_key()).unwrap();
        assert_eq!(verifier.verify(&cosigned).unwrap(), 1_700_000_000);
        let log_verifier = NoteVerifier::from_key_string(&log.verifier_key()).unwrap();
        assert_eq!(log_verifier.verify(&cosigned).unwrap(), text);
        // The blob is key id, big-endian timestamp, signature over the cosignature/v1 message.
        let (_, lines) = split_note(&cosigned).unwrap();
        let (name, blob) = &lines[1];
        assert_eq!(*name, "dccf.example/BR");
        assert_eq!(blob.len(), 76);
        assert_eq!(&blob[4..12], &1_700_000_000u64.to_be_bytes());
        let key = SigningKey::from_bytes(&[5u8; 32]).verifying_key();
        let message = format!("cosignature/v1\ntime 1700000000\n{text}");
        let sig = Signature::from_slice(&blob[12..]).unwrap();
        key.verify_strict(message.as_bytes(), &sig).unwrap();
        // A log signature line is not a cosignature and vice versa (different key ids).
        let as_log = NoteVerifier::new("dccf.example/BR", key).unwrap();
        assert!(as_log.verify(&cosigned).is_err());
    }

    #[test]
    fn a_cosignature_over_another_checkpoint_or_time_fails() {
        let (log, witness, _, cosigned) = cosigned_fixture();
        let verifier = CosignatureVerifier::from_key_string(&witness.verifier_key()).unwrap();
        // Same cosignature line moved onto a checkpoint with another root.
        let other = log
            .sign(&checkpoint_text("dccf.example/NL", 7, &[0x22; 32]))
            .unwrap();
        let line = cosigned.lines().last().unwrap().to_owned() + "\n";
        let moved = add_signature_lines(&other, &[line]);
        assert!(matches!(
            verifier.verify(&moved),
            Err(NoteError::NoValidSignature(_))
        ));
        // Timestamp changed by one second.
        let (_, lines) = split_note(&cosigned).unwrap();
        let mut blob = lines[1].1.clone();
        blob[11] ^= 1;
        let forged = format!("\u{2014} dccf.example/BR {}\n", B64.encode(blob));
        let note = log
            .sign(&checkpoint_text("dccf.example/NL", 7, &[0x11; 32]))
            .unwrap();
        assert!(
            verifier
                .verify(&add_signature_lines(&note, &[forged]))
                .is_err()
        );
        // No cosignature at all.
        assert!(verifier.verify(&note).is_err());
        // A cosigner key string is not a log key, and vice versa.
        assert!(NoteVerifier::from_key_string(&witness.verifier_key()).is_err());
        assert!(CosignatureVerifier::from_key_string(&log.verifier_key()).is_err());
    }
}
