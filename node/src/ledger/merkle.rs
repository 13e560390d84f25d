//! RFC 6962 / RFC 9162 Merkle tree hashing and the ledger's compact range ([`Frontier`]).
//!
//! Leaves are hashed as `SHA-256(0x00 ‖ leaf)` and interior nodes as `SHA-256(0x01 ‖ left ‖ right)`,
//! so roots, inclusion and consistency proofs interoperate with off-the-shelf transparency-log
//! tooling (DESIGN §6).

use ring::digest::{Context, SHA256, digest};

use super::LedgerError;

/// Length in bytes of every hash in the tree (SHA-256).
pub const HASH_LEN: usize = 32;

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

fn finish(ctx: Context) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Hash of one leaf: `SHA-256(0x00 ‖ leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> [u8; HASH_LEN] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[LEAF_PREFIX]);
    ctx.update(leaf);
    finish(ctx)
}

/// Hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &[u8; HASH_LEN], right: &[u8; HASH_LEN]) -> [u8; HASH_LEN] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[NODE_PREFIX]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(digest(&SHA256, b"").as_ref());
    out
}

/// Compact range `[0, size)` of the tree: the roots of the maximal perfect subtrees that cover
/// the first `size` leaves, leftmost (largest) first.
///
/// There is one hash per set bit of `size`, so at most 64; that is all the state needed to append
/// leaves and to compute the current root without reading old leaves back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `hashes[i]` covers a perfect subtree whose height is the i-th highest set bit of `size`.
    hashes: Vec<[u8; HASH_LEN]>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the leaf with hash `leaf_hash` (see [`leaf_hash`]) as leaf number `size()`.
    pub fn push(&mut self, leaf_hash: [u8; HASH_LEN]) {
        self.push_with_nodes(leaf_hash, |_, _, _| {});
    }

    /// Like [`Frontier::push`], and reports every perfect subtree the new leaf completes as
    /// `(level, index, hash)`: the node at `level >= 1` covering leaves
    /// `[index << level, (index + 1) << level)`. These are the interior hashes the store keeps so
    /// that proofs read O(log n) hashes.
    pub fn push_with_nodes(
        &mut self,
        leaf_hash: [u8; HASH_LEN],
        mut completed: impl FnMut(u8, u64, &[u8; HASH_LEN]),
    ) {
        // Every trailing one bit of `size` is a subtree of the same height as the carry being
        // built: merge them, exactly like binary addition of 1.
        let mut carry = leaf_hash;
        let mut bits = self.size;
        let mut level = 0u8;
        let mut index = self.size;
        while bits & 1 == 1 {
            match self.hashes.pop() {
                Some(left) => carry = node_hash(&left, &carry),
                // Unreachable: the invariant "one hash per set bit" holds by construction and
                // is checked by `from_bytes`. Stop merging rather than panic.
                None => break,
            }
            bits >>= 1;
            level += 1;
            index >>= 1;
            completed(level, index, &carry);
        }
        self.hashes.push(carry);
        // 2^64 leaves cannot be reached in practice.
        self.size += 1;
    }

    /// RFC 6962 Merkle tree hash of the first `size()` leaves.
    pub fn root(&self) -> [u8; HASH_LEN] {
        // The rightmost (smallest) subtree is the innermost right child: fold right to left.
        let mut iter = self.hashes.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(last) => iter.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// Serializes as the size (u64 big-endian) followed by the subtree hashes, largest first.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + HASH_LEN * self.hashes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses [`Frontier::to_bytes`]; the length must match the size exactly (one hash per set
    /// bit), so a truncated or padded record is rejected as [`LedgerError::Corrupt`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Frontier, LedgerError> {
        let Some((size_bytes, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "frontier record is {} bytes, shorter than its 8-byte size field",
                    bytes.len()
                ),
            });
        };
        let size = u64::from_be_bytes(*size_bytes);
        let expected = size.count_ones() as usize;
        if rest.len() != expected * HASH_LEN {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "frontier record for size {size} must hold {expected} hashes ({} bytes) \
                     after the size field, found {} bytes",
                    expected * HASH_LEN,
                    rest.len()
                ),
            });
        }
        let hashes = rest
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = [0u8; HASH_LEN];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Frontier { size, hashes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?} in test vector: {e}"))
    }

    /// Textbook RFC 6962 §2.1 MTH: split at the largest power of two smaller than n.
    fn naive_mth(leaves: &[Vec<u8>]) -> [u8; 32] {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
            }
        }
    }

    /// Deterministic splitmix64, so failures are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn bytes(&mut self) -> Vec<u8> {
            let len = (self.next() % 100) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn rfc6962_test_vectors_every_prefix() {
        let raw = include_str!("../../testdata/rfc6962/tree.json");
        let v: serde_json::Value = serde_json::from_str(raw).expect("tree.json parses");
        let leaves: Vec<Vec<u8>> = v["leaf_inputs_hex"]
            .as_array()
            .expect("leaf_inputs_hex array")
            .iter()
            .map(|x| unhex(x.as_str().expect("hex string")))
            .collect();
        let roots: Vec<Vec<u8>> = v["root_hashes_hex"]
            .as_array()
            .expect("root_hashes_hex array")
            .iter()
            .map(|x| unhex(x.as_str().expect("hex string")))
            .collect();
        assert_eq!(roots.len(), leaves.len() + 1);

        let mut f = Frontier::new();
        assert_eq!(f.root().to_vec(), roots[0], "empty tree");
        for (i, leaf) in leaves.iter().enumerate() {
            f.push(leaf_hash(leaf));
            assert_eq!(f.size(), i as u64 + 1);
            assert_eq!(
                f.root().to_vec(),
                roots[i + 1],
                "root of the first {} leaves",
                i + 1
            );
        }
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn frontier_matches_naive_mth_for_sizes_0_to_70() {
        let mut rng = Rng(0x00dc_cf00_5eed);
        let leaves: Vec<Vec<u8>> = (0..70).map(|_| rng.bytes()).collect();
        let mut f = Frontier::new();
        for n in 0..=leaves.len() {
            assert_eq!(f.size(), n as u64);
            assert_eq!(f.root(), naive_mth(&leaves[..n]), "size {n}");
            assert_eq!(
                f.to_bytes().len(),
                8 + 32 * (n as u64).count_ones() as usize
            );
            if let Some(leaf) = leaves.get(n) {
                f.push(leaf_hash(leaf));
            }
        }
    }

    #[test]
    fn frontier_bytes_round_trip() {
        let mut f = Frontier::new();
        for i in 0..45u32 {
            let back = Frontier::from_bytes(&f.to_bytes()).expect("round trip");
            assert_eq!(back, f);
            assert_eq!(back.root(), f.root());
            f.push(leaf_hash(&i.to_be_bytes()));
        }
        // A restored frontier keeps appending identically.
        let mut restored = Frontier::from_bytes(&f.to_bytes()).expect("round trip");
        f.push(leaf_hash(b"next"));
        restored.push(leaf_hash(b"next"));
        assert_eq!(restored, f);
    }

    #[test]
    fn frontier_from_bytes_rejects_inconsistent_lengths() {
        let mut f = Frontier::new();
        for i in 0..7u8 {
            f.push(leaf_hash(&[i]));
        }
        let bytes = f.to_bytes(); // size 7: three hashes
        assert!(matches!(
            Frontier::from_bytes(&[]),
            Err(LedgerError::Corrupt { .. })
        ));
        assert!(matches!(
            Frontier::from_bytes(&bytes[..5]),
            Err(LedgerError::Corrupt { .. })
        ));
        for cut in [8, 8 + 32, bytes.len() - 1] {
            assert!(
                matches!(
                    Frontier::from_bytes(&bytes[..cut]),
                    Err(LedgerError::Corrupt { .. })
                ),
                "truncated to {cut} bytes must be rejected"
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            Frontier::from_bytes(&padded),
            Err(LedgerError::Corrupt { .. })
        ));
        // A size whose bit count disagrees with the number of hashes.
        let mut wrong_size = bytes;
        wrong_size[..8].copy_from_slice(&8u64.to_be_bytes());
        assert!(matches!(
            Frontier::from_bytes(&wrong_size),
            Err(LedgerError::Corrupt { .. })
        ));
        assert_eq!(
            Frontier::from_bytes(&0u64.to_be_bytes()).expect("empty frontier"),
            Frontier::new()
        );
    }
}
