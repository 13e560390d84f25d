//! The C2SP `tlog-proof` format.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::ExportError;
use super::notes::check_checkpoint;
use crate::ledger::merkle::leaf_hash;
use crate::ledger::proof::verify_inclusion;

/// First line of a C2SP `tlog-proof`.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A parsed C2SP `tlog-proof`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Index of the entry in the log.
    pub index: u64,
    /// RFC 9162 inclusion proof, from the leaf's sibling up to the root's child.
    pub hashes: Vec<[u8; 32]>,
    /// The checkpoint note, verbatim (signatures and cosignatures included).
    pub checkpoint: String,
    /// Opaque, unauthenticated extra data.
    pub extra: Option<Vec<u8>>,
}

/// Formats a C2SP `tlog-proof`: the header line, `extra <base64>` if any, `index <n>`, one
/// base64 hash per line, an empty line, then `checkpoint_note` verbatim.
pub fn tlog_proof_text(
    index: u64,
    hashes: &[[u8; 32]],
    checkpoint_note: &str,
    extra: Option<&[u8]>,
) -> String {
    let mut out = format!("{TLOG_PROOF_HEADER}\n");
    if let Some(extra) = extra {
        out.push_str(&format!("extra {}\n", B64.encode(extra)));
    }
    out.push_str(&format!("index {index}\n"));
    for h in hashes {
        out.push_str(&B64.encode(h));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(checkpoint_note);
    out
}

/// Parses a C2SP `tlog-proof` (see [`tlog_proof_text`]); the checkpoint is not verified here.
pub fn parse_tlog_proof(text: &str) -> Result<TlogProof, ExportError> {
    let bad = |line: usize, what: &str| ExportError::MalformedProof {
        line,
        what: what.to_owned(),
    };
    let mut rest = text;
    let mut line_no = 0usize;
    let mut next_line = |rest: &mut &str| -> Option<(usize, String)> {
        let (line, after) = rest.split_once('\n')?;
        *rest = after;
        line_no += 1;
        Some((line_no, line.to_owned()))
    };
    let (n, first) = next_line(&mut rest).ok_or_else(|| bad(1, "missing header line"))?;
    if first != TLOG_PROOF_HEADER {
        return Err(bad(n, &format!("header must be {TLOG_PROOF_HEADER:?}")));
    }
    let (mut n, mut line) = next_line(&mut rest).ok_or_else(|| bad(2, "missing index line"))?;
    let mut extra = None;
    if let Some(b64) = line.strip_prefix("extra ") {
        extra = Some(
            B64.decode(b64)
                .map_err(|_| bad(n, "extra data is not base64"))?,
        );
        (n, line) = next_line(&mut rest).ok_or_else(|| bad(n + 1, "missing index line"))?;
    }
    let digits = line
        .strip_prefix("index ")
        .ok_or_else(|| bad(n, "expected \"index <n>\""))?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    let index: u64 = digits
        .parse()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| bad(n, "index must be a decimal number without leading zeros"))?;
    let mut hashes = Vec::new();
    loop {
        let (n, line) = next_line(&mut rest).ok_or_else(|| {
            bad(
                n + hashes.len() + 1,
                "missing empty line before the checkpoint",
            )
        })?;
        if line.is_empty() {
            break;
        }
        let hash: [u8; 32] = B64
            .decode(&line)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(n, "proof hash must be 32 bytes of base64"))?;
        hashes.push(hash);
    }
    if rest.is_empty() {
        return Err(bad(line_no + 1, "missing checkpoint"));
    }
    Ok(TlogProof {
        index,
        hashes,
        checkpoint: rest.to_owned(),
        extra,
    })
}

/// Verifies a `tlog-proof` for the leaf bytes `leaf` against the log's verifier key: the
/// checkpoint's signature (and that its origin is the key's name), then RFC 9162 inclusion of
/// `leaf` at `proof.index` in the checkpoint's tree. Cosignatures are not checked here.
pub fn verify_tlog_proof(proof: &TlogProof, leaf: &[u8], vkey: &str) -> Result<(), ExportError> {
    let cp = check_checkpoint(vkey, &proof.checkpoint)?;
    verify_inclusion(
        &leaf_hash(leaf),
        proof.index,
        cp.size,
        &proof.hashes,
        &cp.root,
    )
    .map_err(|source| ExportError::Inclusion {
        index: proof.index,
        size: cp.size,
        source,
    })
}
