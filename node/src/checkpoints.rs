//! Publishing signed checkpoints of the node's ledger and keeping the cosignatures partners return.
//!
//! A checkpoint (C2SP `tlog-checkpoint`, signed as a C2SP `signed-note` with the node's Ed25519
//! key under the name of its origin) is only ever signed over a **durable** head, and is itself
//! recorded durably before anyone sees it, so a checkpoint a partner or auditor holds always
//! matches what the node recovers after a crash.
//!
//! Side records (one sled tree with the ledger; see `ledger::store`):
//!
//! | key                                  | value                                       |
//! |--------------------------------------|---------------------------------------------|
//! | `c/latest`                           | the latest checkpoint note                  |
//! | `c/cp/` + u64 BE size                | every published checkpoint note             |
//! | `c/cs/` + u64 BE size + `/` + name   | a witness's cosignature line for that size  |
//! | `c/wk/` + name                       | that witness's cosigner verifier key        |

use std::sync::{Arc, RwLock};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::ledger::checkpoint::{
    self, CosignatureVerifier, Cosigner, NoteError, NoteSigner, NoteVerifier,
};
use crate::ledger::proof::{self, ProofError};
use crate::ledger::{LedgerError, Store};

const LATEST: &[u8] = b"c/latest";
const HISTORY: &[u8] = b"c/cp/";
const COSIGNATURES: &[u8] = b"c/cs/";
const WITNESS_KEYS: &[u8] = b"c/wk/";

/// Errors publishing checkpoints or accepting cosignatures; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The ledger store failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// A tree hash could not be read.
    #[error("ledger tree: {0}")]
    Proof(#[from] ProofError),
    /// A note or key is malformed or does not verify.
    #[error("{0}")]
    Note(#[from] NoteError),
    /// The stored checkpoint does not match the ledger (tampering or a rolled-back database).
    #[error("stored checkpoint does not match the ledger: {0}")]
    Mismatch(String),
    /// A submitted cosignature is not acceptable.
    #[error("cosignature refused: {0}")]
    Cosignature(String),
}

/// One published checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Tree size.
    pub size: u64,
    /// RFC 9162 root at `size`.
    pub root: [u8; 32],
    /// The signed note (log signature only).
    pub note: String,
}

/// The node's checkpoint publisher and cosignature collection.
#[derive(Debug)]
pub struct Checkpoints {
    store: Store,
    signer: NoteSigner,
    verifier: NoteVerifier,
    cosigner: Cosigner,
    latest: RwLock<Option<Arc<Published>>>,
    /// The latest note with its cosignatures, kept ready for every receipt.
    latest_cosigned: RwLock<Arc<String>>,
    publishing: tokio::sync::Mutex<()>,
}

fn size_key(prefix: &[u8], size: u64) -> Vec<u8> {
    [prefix, &size.to_be_bytes()].concat()
}

/// Key of witness `name`'s cosignature of the checkpoint of `size`.
fn cosignature_key(size: u64, name: &str) -> Vec<u8> {
    [&size_key(COSIGNATURES, size)[..], b"/", name.as_bytes()].concat()
}

/// (size, witness name) of a [`cosignature_key`].
fn parse_cosignature_key(key: &[u8]) -> Option<(u64, String)> {
    let rest = key.strip_prefix(COSIGNATURES)?;
    let size = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let name = rest.get(9..)?;
    Some((size, String::from_utf8_lossy(name).into_owned()))
}

/// What an export holds besides the entries (see [`Checkpoints::export_material`]).
#[derive(Debug, Clone)]
pub struct ExportMaterial {
    /// The latest checkpoint with its cosignatures.
    pub checkpoint: String,
    /// The log's verifier key.
    pub vkey: String,
    /// Every cosigned checkpoint note, by size.
    pub cosigned: Vec<String>,
    /// The witnesses' cosigner verifier keys.
    pub witnesses: Vec<String>,
}

impl ExportMaterial {
    /// The input of [`crate::ledger::export::write_export`].
    pub fn input(&self) -> crate::ledger::export::ExportInput<'_> {
        crate::ledger::export::ExportInput {
            checkpoint: &self.checkpoint,
            vkey: &self.vkey,
            cosigned: &self.cosigned,
            witnesses: &self.witnesses,
        }
    }
}

impl Checkpoints {
    /// Opens the publisher for `store` under `origin`, signing with `key`. The latest stored
    /// checkpoint must verify and match the ledger's tree at its size, else the ledger was
    /// tampered with or rolled back and the node must not continue.
    pub fn open(
        store: Store,
        origin: &str,
        key: SigningKey,
    ) -> Result<Checkpoints, CheckpointError> {
        let signer = NoteSigner::new(origin, key.clone())?;
        let verifier = NoteVerifier::new(origin, key.verifying_key())?;
        let cosigner = Cosigner::new(origin, key)?;
        let latest = match store.get(LATEST)? {
            None => None,
            Some(bytes) => {
                let note = String::from_utf8(bytes)
                    .map_err(|_| CheckpointError::Mismatch("c/latest is not UTF-8".into()))?;
                Some(Arc::new(check_against(&store, &verifier, &note)?))
            }
        };
        let cps = Checkpoints {
            store,
            signer,
            verifier,
            cosigner,
            latest: RwLock::new(latest),
            latest_cosigned: RwLock::new(Arc::new(String::new())),
            publishing: tokio::sync::Mutex::new(()),
        };
        cps.refresh_cosigned()?;
        Ok(cps)
    }

    /// The checkpoint origin (also the note signer and cosigner name).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The log's verifier key (C2SP vkey, type 0x01).
    pub fn vkey(&self) -> String {
        self.signer.verifier_key()
    }

    /// This node as a witness of its partners' logs (same key, type 0x04 key id).
    pub fn cosigner(&self) -> &Cosigner {
        &self.cosigner
    }

    /// The latest published checkpoint, if any.
    pub fn latest(&self) -> Option<Arc<Published>> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest checkpoint note, or "" before the first one.
    pub fn latest_note(&self) -> String {
        self.latest().map(|p| p.note.clone()).unwrap_or_default()
    }

    /// Signs a checkpoint of the durable head if the ledger grew since the latest one (or none
    /// was published yet), records it durably, then makes it the latest. Returns the latest.
    pub async fn publish(&self) -> Result<Arc<Published>, CheckpointError> {
        let _one_at_a_time = self.publishing.lock().await;
        let head = self.store.durable_head();
        if let Some(latest) = self.latest()
            && latest.size >= head.size
        {
            return Ok(latest);
        }
        let text = checkpoint::checkpoint_text(self.origin(), head.size, &head.root);
        let note = self.signer.sign(&text)?;
        let ticket = {
            let mut txn = self.store.begin();
            txn.put(LATEST.to_vec(), note.clone().into_bytes())?;
            txn.put(size_key(HISTORY, head.size), note.clone().into_bytes())?;
            txn.commit()
        };
        ticket.durable().await?;
        let published = Arc::new(Published {
            size: head.size,
            root: head.root,
            note,
        });
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(published.clone());
        crate::telemetry::checkpoint_signed();
        self.refresh_cosigned()?;
        tracing::debug!(size = head.size, "checkpoint published");
        Ok(published)
    }

    /// The published checkpoint note of `size`, if one was published.
    pub fn note_at(&self, size: u64) -> Result<Option<String>, CheckpointError> {
        Ok(self
            .store
            .get(&size_key(HISTORY, size))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Every published checkpoint note, by size.
    pub fn history(&self) -> Result<Vec<(u64, String)>, CheckpointError> {
        Ok(self
            .store
            .scan_prefix(HISTORY)?
            .into_iter()
            .filter_map(|(k, v)| {
                let size = u64::from_be_bytes(k.get(HISTORY.len()..)?.try_into().ok()?);
                Some((size, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect())
    }

    /// `note` (of size `size`) with every stored cosignature line for that size appended.
    pub fn with_cosignatures(&self, size: u64, note: &str) -> Result<String, CheckpointError> {
        let lines: Vec<String> = self
            .store
            .scan_prefix(&[&size_key(COSIGNATURES, size)[..], b"/"].concat())?
            .into_iter()
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
            .collect();
        Ok(checkpoint::add_signature_lines(note, &lines))
    }

    /// The latest checkpoint with its cosignatures, or "" before the first one.
    pub fn latest_cosigned(&self) -> Result<String, CheckpointError> {
        Ok(self
            .latest_cosigned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .clone())
    }

    /// Recomputes the cached [`Checkpoints::latest_cosigned`].
    fn refresh_cosigned(&self) -> Result<(), CheckpointError> {
        let text = match self.latest() {
            Some(p) => self.with_cosignatures(p.size, &p.note)?,
            None => String::new(),
        };
        *self
            .latest_cosigned
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(text);
        Ok(())
    }

    /// Checks a witness's cosignature of one of our checkpoints and stores it. The witness is
    /// the partner `witness_admin` (authenticated by mutual TLS) with Ed25519 key `witness_key`;
    /// its cosigner name must end with `/<witness_admin>`.
    pub async fn accept_cosignature(
        &self,
        witness_admin: &str,
        witness_key: VerifyingKey,
        checkpoint_text: &str,
        line: &str,
    ) -> Result<(), CheckpointError> {
        let refuse = |m: String| CheckpointError::Cosignature(m);
        let (origin, size, _) = checkpoint::parse_checkpoint(checkpoint_text)?;
        if origin != self.origin() {
            return Err(refuse(format!(
                "checkpoint origin {origin:?} is not this log ({:?})",
                self.origin()
            )));
        }
        let ours = self.note_at(size)?.ok_or_else(|| {
            refuse(format!(
                "this log never published a checkpoint of size {size}"
            ))
        })?;
        let text = self.verifier.verify(&ours)?;
        if text != checkpoint_text {
            return Err(refuse(format!(
                "the cosigned text differs from this log's checkpoint of size {size}"
            )));
        }
        let name = line
            .strip_prefix("\u{2014} ")
            .and_then(|r| r.split_once(' '))
            .map(|(n, _)| n)
            .ok_or_else(|| refuse("not a signature line".into()))?;
        if !line.ends_with('\n') || line.trim_end_matches('\n').contains('\n') {
            return Err(refuse(
                "a cosignature is exactly one line ending in a newline".into(),
            ));
        }
        if !name.ends_with(&format!("/{witness_admin}")) {
            return Err(refuse(format!(
                "cosigner name {name:?} does not belong to {witness_admin}"
            )));
        }
        let verifier = CosignatureVerifier::new(name, witness_key)?;
        verifier
            .verify(&checkpoint::add_signature_lines(&ours, &[line.to_owned()]))
            .map_err(|e| refuse(format!("does not verify under {witness_admin}'s key: {e}")))?;
        let key = cosignature_key(size, name);
        let ticket = {
            let mut txn = self.store.begin();
            txn.put(key, line.as_bytes().to_vec())?;
            txn.put(
                [WITNESS_KEYS, name.as_bytes()].concat(),
                verifier.verifier_key().into_bytes(),
            )?;
            txn.commit()
        };
        ticket.durable().await?;
        if self.latest().is_some_and(|p| p.size == size) {
            self.refresh_cosigned()?;
        }
        tracing::info!(witness = witness_admin, size, "checkpoint cosigned");
        Ok(())
    }

    /// Every published checkpoint that carries at least one cosignature, with its cosignature
    /// lines, in size order.
    pub fn cosigned_notes(&self) -> Result<Vec<(u64, String)>, CheckpointError> {
        let mut sizes: Vec<u64> = self
            .store
            .scan_prefix(COSIGNATURES)?
            .into_iter()
            .filter_map(|(k, _)| parse_cosignature_key(&k).map(|(size, _)| size))
            .collect();
        sizes.dedup();
        let mut out = Vec::new();
        for size in sizes {
            if let Some(note) = self.note_at(size)? {
                out.push((size, self.with_cosignatures(size, &note)?));
            }
        }
        Ok(out)
    }

    /// Everything an export holds besides the entries: the latest checkpoint with its
    /// cosignatures, the log's key, every cosigned checkpoint and the witnesses' keys.
    pub fn export_material(&self) -> Result<ExportMaterial, CheckpointError> {
        Ok(ExportMaterial {
            checkpoint: self.latest_cosigned()?,
            vkey: self.vkey(),
            cosigned: self
                .cosigned_notes()?
                .into_iter()
                .map(|(_, note)| note)
                .collect(),
            witnesses: self
                .witnesses()?
                .into_iter()
                .map(|(vkey, _)| vkey)
                .collect(),
        })
    }

    /// Verifier keys (type 0x04) of every witness that cosigned, and for each the largest size
    /// it cosigned.
    pub fn witnesses(&self) -> Result<Vec<(String, u64)>, CheckpointError> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for (_, vkey) in self.store.scan_prefix(WITNESS_KEYS)? {
            out.push((String::from_utf8_lossy(&vkey).into_owned(), 0));
        }
        for (k, _) in self.store.scan_prefix(COSIGNATURES)? {
            let Some((size, name)) = parse_cosignature_key(&k) else {
                continue;
            };
            for (vkey, largest) in &mut out {
                if vkey.starts_with(&format!("{name}+")) && size > *largest {
                    *largest = size;
                }
            }
        }
        Ok(out)
    }
}

/// Verifies `note` with `verifier` and checks it against the ledger's tree.
fn check_against(
    store: &Store,
    verifier: &NoteVerifier,
    note: &str,
) -> Result<Published, CheckpointError> {
    let text = verifier
        .verify(note)
        .map_err(|e| CheckpointError::Mismatch(format!("latest checkpoint: {e}")))?;
    let (_, size, root) = checkpoint::parse_checkpoint(text)?;
    let durable = store.durable_head().size;
    if size > durable {
        return Err(CheckpointError::Mismatch(format!(
            "the latest signed checkpoint has size {size} but the ledger holds only {durable} \
             entries (entries were lost or the database was rolled back)"
        )));
    }
    let actual = proof::root_at(store, size)?;
    if actual != root {
        return Err(CheckpointError::Mismatch(format!(
            "the ledger's root at size {size} differs from the signed checkpoint's \
             (history was rewritten)"
        )));
    }
    Ok(Published {
        size,
        root,
        note: note.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn append(store: &Store, n: u64) {
        let mut txn = store.begin();
        for i in 0..n {
            txn.append(format!("entry {i}").into_bytes());
        }
        txn.commit().wait_blocking().expect("durable");
    }

    #[tokio::test]
    async fn publishes_durable_heads_only_when_grown_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cps = Checkpoints::open(store.clone(), "dccf.example/NL", key(1)).unwrap();
        assert_eq!(cps.latest_note(), "");
        let first = cps.publish().await.unwrap();
        assert_eq!(first.size, 0);
        append(&store, 5);
        let second = cps.publish().await.unwrap();
        assert_eq!((second.size, second.root), (5, store.durable_head().root));
        // Nothing new: the same checkpoint.
        assert_eq!(cps.publish().await.unwrap(), second);
        let v = NoteVerifier::from_key_string(&cps.vkey()).unwrap();
        let (_, size, root) =
            checkpoint::parse_checkpoint(v.verify(&second.note).unwrap()).unwrap();
        assert_eq!((size, root), (5, second.root));
        assert_eq!(cps.note_at(0).unwrap().unwrap(), first.note);
        drop(cps);
        let cps = Checkpoints::open(store.clone(), "dccf.example/NL", key(1)).unwrap();
        assert_eq!(cps.latest().unwrap().note, second.note);
    }

    #[tokio::test]
    async fn a_checkpoint_ahead_of_the_ledger_or_signed_by_another_key_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        append(&store, 3);
        let cps = Checkpoints::open(store.clone(), "dccf.example/NL", key(1)).unwrap();
        cps.publish().await.unwrap();
        drop(cps);
        // Another key: the stored checkpoint does not verify.
        let err = Checkpoints::open(store.clone(), "dccf.example/NL", key(2)).unwrap_err();
        assert!(err.to_string().contains("latest checkpoint"), "{err}");
        // A checkpoint claiming more entries than the ledger holds (rolled-back database).
        let mut txn = store.begin();
        txn.put(
            LATEST.to_vec(),
            NoteSigner::new("dccf.example/NL", key(1))
                .unwrap()
                .sign(&checkpoint::checkpoint_text("dccf.example/NL", 9, &[0; 32]))
                .unwrap()
                .into_bytes(),
        )
        .unwrap();
        txn.commit().durable().await.unwrap();
        let err = Checkpoints::open(store.clone(), "dccf.example/NL", key(1)).unwrap_err();
        assert!(err.to_string().contains("holds only 3"), "{err}");
        // Same size, other root: rewritten history.
        let mut txn = store.begin();
        txn.put(
            LATEST.to_vec(),
            NoteSigner::new("dccf.example/NL", key(1))
                .unwrap()
                .sign(&checkpoint::checkpoint_text("dccf.example/NL", 2, &[7; 32]))
                .unwrap()
                .into_bytes(),
        )
        .unwrap();
        txn.commit().durable().await.unwrap();
        let err = Checkpoints::open(store, "dccf.example/NL", key(1)).unwrap_err();
        assert!(err.to_string().contains("rewritten"), "{err}");
    }

    #[tokio::test]
    async fn cosignatures_are_checked_stored_and_attached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        append(&store, 4);
        let cps = Checkpoints::open(store.clone(), "dccf.example/NL", key(1)).unwrap();
        let p = cps.publish().await.unwrap();
        let text = checkpoint::checkpoint_text("dccf.example/NL", 4, &p.root);
        let br = Cosigner::new("dccf.example/BR", key(3)).unwrap();
        let line = br.cosign(&text, 1_800_000_000).unwrap();
        let br_key = key(3).verifying_key();

        // Refusals, each naming why.
        let cases: Vec<(&str, VerifyingKey, String, String, &str)> = vec![
            (
                "DE",
                br_key,
                text.clone(),
                line.clone(),
                "does not belong to DE",
            ),
            (
                "BR",
                key(4).verifying_key(),
                text.clone(),
                line.clone(),
                "does not verify",
            ),
            (
                "BR",
                br_key,
                checkpoint::checkpoint_text("dccf.example/NL", 3, &p.root),
                line.clone(),
                "never published",
            ),
            (
                "BR",
                br_key,
                checkpoint::checkpoint_text("dccf.example/DE", 4, &p.root),
                line.clone(),
                "is not this log",
            ),
            (
                "BR",
                br_key,
                checkpoint::checkpoint_text("dccf.example/NL", 4, &[9; 32]),
                line.clone(),
                "differs",
            ),
            (
                "BR",
                br_key,
                text.clone(),
                format!("{line}{line}"),
                "exactly one line",
            ),
        ];
        for (admin, k, t, l, why) in cases {
            let err = cps.accept_cosignature(admin, k, &t, &l).await.unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        assert!(cps.cosigned_notes().unwrap().is_empty());

        cps.accept_cosignature("BR", br_key, &text, &line)
            .await
            .unwrap();
        let cosigned = cps.latest_cosigned().unwrap();
        let v = CosignatureVerifier::from_key_string(&br.verifier_key()).unwrap();
        assert_eq!(v.verify(&cosigned).unwrap(), 1_800_000_000);
        assert_eq!(cps.cosigned_notes().unwrap(), vec![(4, cosigned)]);
        assert_eq!(cps.witnesses().unwrap(), vec![(br.verifier_key(), 4)]);
    }
}
