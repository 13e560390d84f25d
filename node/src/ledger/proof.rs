//! RFC 9162 (§2.1.3, §2.1.4) inclusion and consistency proofs over the ledger's Merkle tree.
//!
//! Verification ([`verify_inclusion`], [`verify_consistency`]) is pure and follows the RFC 9162
//! algorithms as implemented by the transparency-dev `merkle` library (`proof.VerifyInclusion`,
//! `proof.VerifyConsistency`), including its edge cases: equal sizes need an empty proof and
//! equal roots, and any tree is consistent with the empty tree given an empty proof.
//!
//! Generation ([`inclusion_proof`], [`consistency_proof`]) uses the RFC 9162 §2.1.3.1 / §2.1.4.1
//! recursive definitions. The store keeps the hash of every complete (perfect, aligned) subtree
//! ([`Store::node_hash`]), and in those recursions every left subtree is complete: a proof
//! element is one stored read, except the at most two right-edge subtrees of a proof, which are
//! combined from O(log n) stored nodes. A proof over a tree of size `n` is O(log n) reads.

use super::merkle::{HASH_LEN, empty_root, node_hash};
use super::{LedgerError, Store};

/// One hash of a Merkle tree (SHA-256).
pub type Hash = [u8; HASH_LEN];

/// Why a proof could not be verified or generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is out of range for a tree of size {tree_size}")]
    IndexOutOfRange {
        /// The offending leaf index.
        index: u64,
        /// Size of the tree the proof is for.
        tree_size: u64,
    },
    /// A consistency proof was asked for or given from a larger tree to a smaller one.
    #[error("size1 ({size1}) is greater than size2 ({size2})")]
    SizeOrder {
        /// Size of the older tree.
        size1: u64,
        /// Size of the newer tree.
        size2: u64,
    },
    /// The proof has the wrong number of hashes for the sizes (and index) it is for.
    #[error("proof has {got} hashes, expected {want}")]
    WrongProofLength {
        /// Number of hashes in the proof.
        got: usize,
        /// Number of hashes the tree shape requires.
        want: usize,
    },
    /// The root recomputed from the proof differs from the expected root.
    #[error("{which} root mismatch: computed {computed}, expected {expected}")]
    RootMismatch {
        /// Which root failed to match (`"tree"`, `"first"`, `"second"`).
        which: &'static str,
        /// Root recomputed from the proof, hex.
        computed: String,
        /// Root that was expected, hex.
        expected: String,
    },
    /// A byte string given as a hash is not 32 bytes long (see [`hash_from_slice`]).
    #[error("hash is {len} bytes, expected {HASH_LEN}")]
    HashLength {
        /// Actual length in bytes.
        len: usize,
    },
    /// The requested tree size is larger than the store's durable tree.
    #[error("tree size {tree_size} exceeds the durable ledger size {durable}")]
    BeyondDurable {
        /// Requested tree size.
        tree_size: u64,
        /// Durable size of the ledger.
        durable: u64,
    },
    /// A leaf hash that should be durable was not found in the store.
    #[error("leaf hash of entry {index} is missing from the store")]
    MissingLeaf {
        /// Index of the missing leaf.
        index: u64,
    },
    /// Reading from the store failed.
    #[error("reading leaf hashes for a proof failed: {0}")]
    Store(#[from] LedgerError),
}

/// Converts a byte string into a [`Hash`], rejecting any length other than 32 bytes.
pub fn hash_from_slice(bytes: &[u8]) -> Result<Hash, ProofError> {
    Hash::try_from(bytes).map_err(|_| ProofError::HashLength { len: bytes.len() })
}

fn check_match(which: &'static str, computed: &Hash, expected: &Hash) -> Result<(), ProofError> {
    if computed == expected {
        Ok(())
    } else {
        Err(ProofError::RootMismatch {
            which,
            computed: hex::encode(computed),
            expected: hex::encode(expected),
        })
    }
}

/// Number of bits needed to represent `x` (`0` for `0`).
fn bit_len(x: u64) -> usize {
    (u64::BITS - x.leading_zeros()) as usize
}

/// Splits an inclusion proof for `index` in a tree of `size` (`index < size`) into the number of
/// "inner" hashes (below the point where the path to `index` and the path to the last leaf meet)
/// and "border" hashes (left siblings along the right border above it).
fn decomp_incl_proof(index: u64, size: u64) -> (usize, usize) {
    let inner = bit_len(index ^ (size - 1));
    let border = if inner >= 64 {
        0
    } else {
        (index >> inner).count_ones() as usize
    };
    (inner, border)
}

/// Number of hashes in an RFC 9162 inclusion proof of leaf `index` in a tree of `tree_size`
/// leaves; `None` if `index` is not inside the tree.
pub fn inclusion_proof_len(index: u64, tree_size: u64) -> Option<usize> {
    if index >= tree_size {
        return None;
    }
    let (inner, border) = decomp_incl_proof(index, tree_size);
    Some(inner + border)
}

fn chain_inner(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if (index >> i) & 1 == 0 {
            seed = node_hash(&seed, h);
        } else {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

fn chain_inner_right(mut seed: Hash, proof: &[Hash], index: u64) -> Hash {
    for (i, h) in proof.iter().enumerate() {
        if (index >> i) & 1 == 1 {
            seed = node_hash(h, &seed);
        }
    }
    seed
}

fn chain_border_right(mut seed: Hash, proof: &[Hash]) -> Hash {
    for h in proof {
        seed = node_hash(h, &seed);
    }
    seed
}

/// Verifies an RFC 9162 §2.1.3.2 inclusion proof: that the leaf with hash `leaf_hash` is leaf
/// number `index` of the tree of size `tree_size` whose root is `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange { index, tree_size });
    }
    let (inner, border) = decomp_incl_proof(index, tree_size);
    if proof.len() != inner + border {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want: inner + border,
        });
    }
    let computed = chain_inner(*leaf_hash, &proof[..inner], index);
    let computed = chain_border_right(computed, &proof[inner..]);
    check_match("tree", &computed, root)
}

/// Verifies an RFC 9162 §2.1.4.2 consistency proof: that the tree of size `size1` with root
/// `root1` is a prefix of the tree of size `size2` with root `root2`.
///
/// Edge cases as in the RFC and the transparency-dev library: `size1 > size2` is an error;
/// `size1 == size2` requires an empty proof and `root1 == root2`; `size1 == 0 < size2` is
/// consistent with any `root2` but only with an empty proof.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizeOrder { size1, size2 });
    }
    if size1 == size2 || size1 == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength {
                got: proof.len(),
                want: 0,
            });
        }
        if size1 == size2 {
            return check_match("first", root1, root2);
        }
        return Ok(());
    }
    // Now 0 < size1 < size2.
    let (inner, border) = decomp_incl_proof(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    // shift < inner because size1 < size2.
    let inner = inner - shift;
    // The proof starts with the root of the subtree of size 2^shift that ends at size1, unless
    // that subtree is the whole first tree (size1 is a power of two): then it is root1.
    let (seed, start) = if size1 == 1u64 << shift {
        (*root1, 0)
    } else {
        match proof.first() {
            Some(first) => (*first, 1),
            None => {
                return Err(ProofError::WrongProofLength {
                    got: 0,
                    want: 1 + inner + border,
                });
            }
        }
    };
    let want = start + inner + border;
    if proof.len() != want {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want,
        });
    }
    let proof = &proof[start..];
    let mask = (size1 - 1) >> shift;

    let hash1 = chain_inner_right(seed, &proof[..inner], mask);
    let hash1 = chain_border_right(hash1, &proof[inner..]);
    check_match("first", &hash1, root1)?;

    let hash2 = chain_inner(seed, &proof[..inner], mask);
    let hash2 = chain_border_right(hash2, &proof[inner..]);
    check_match("second", &hash2, root2)
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    1u64 << (bit_len(n - 1) - 1)
}

fn stored_leaf(store: &Store, index: u64) -> Result<Hash, ProofError> {
    store
        .leaf_hash(index)?
        .ok_or(ProofError::MissingLeaf { index })
}

fn check_durable(store: &Store, tree_size: u64) -> Result<(), ProofError> {
    let durable = store.durable_head().size;
    if tree_size > durable {
        return Err(ProofError::BeyondDurable { tree_size, durable });
    }
    Ok(())
}

/// RFC 6962 Merkle tree hash of the durable leaves `[start, end)`, from stored subtree hashes:
/// O(log n) reads when `start` is aligned as in RFC 9162 recursions (always the case for
/// `start == 0`), more for arbitrary ranges. The empty range hashes to the empty-tree root.
pub fn subtree_root(store: &Store, start: u64, end: u64) -> Result<Hash, ProofError> {
    if start > end {
        return Err(ProofError::SizeOrder {
            size1: start,
            size2: end,
        });
    }
    check_durable(store, end)?;
    match end - start {
        0 => Ok(empty_root()),
        1 => stored_leaf(store, start),
        // A perfect, aligned subtree is stored: one read.
        n if n.is_power_of_two() && start.is_multiple_of(n) => {
            let level = n.trailing_zeros() as u8;
            store
                .node_hash(level, start >> level)?
                .ok_or(ProofError::MissingLeaf { index: start })
        }
        n => {
            let k = split_point(n);
            let left = subtree_root(store, start, start + k)?;
            let right = subtree_root(store, start + k, end)?;
            Ok(node_hash(&left, &right))
        }
    }
}

/// RFC 9162 §2.1.3.1 PATH(m, D[start:end]), appended to `out` bottom-up.
fn path(
    store: &Store,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(store, m, start, start + k, out)?;
        out.push(subtree_root(store, start + k, end)?);
    } else {
        path(store, m - k, start + k, end, out)?;
        out.push(subtree_root(store, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.1 SUBPROOF(m, D[start:end], b), appended to `out` bottom-up.
fn subproof(
    store: &Store,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(subtree_root(store, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(store, m, start, start + k, complete, out)?;
        out.push(subtree_root(store, start + k, end)?);
    } else {
        subproof(store, m - k, start + k, end, false, out)?;
        out.push(subtree_root(store, start, start + k)?);
    }
    Ok(())
}

/// Inclusion proof (RFC 9162 §2.1.3.1) of entry `index` in the ledger's tree of size
/// `tree_size`, which must not exceed the durable size. Verify with [`verify_inclusion`].
///
/// O(log `tree_size`) stored reads (see module docs).
pub fn inclusion_proof(store: &Store, index: u64, tree_size: u64) -> Result<Vec<Hash>, ProofError> {
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange { index, tree_size });
    }
    check_durable(store, tree_size)?;
    let mut out = Vec::new();
    path(store, index, 0, tree_size, &mut out)?;
    Ok(out)
}

/// Root hash of the ledger's tree at a past (durable) `size`: O(log `size`) reads.
pub fn root_at(store: &Store, size: u64) -> Result<Hash, ProofError> {
    subtree_root(store, 0, size)
}

/// Consistency proof (RFC 9162 §2.1.4.1) between the ledger's trees of sizes `size1` and
/// `size2`, where `size1 <= size2 <=` the durable size. Verify with [`verify_consistency`].
///
/// The proof is empty when `size1 == 0` or `size1 == size2`, as [`verify_consistency`] expects.
/// O(log `size2`) stored reads (see module docs).
pub fn consistency_proof(store: &Store, size1: u64, size2: u64) -> Result<Vec<Hash>, ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizeOrder { size1, size2 });
    }
    check_durable(store, size2)?;
    let mut out = Vec::new();
    if size1 > 0 && size1 < size2 {
        subproof(store, size1, 0, size2, true, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::Value;

    use super::*;
    use crate::ledger::merkle::{Frontier, leaf_hash};

    /// Vectors whose expected outcome is "valid" but which use hashes that are not 32 bytes
    /// long (arbitrary "don't care" byte strings from the transparency-dev tests). The typed
    /// API cannot represent them; the test checks that this is the only obstacle by verifying
    /// the same vector with its hashes zero-padded to 32 bytes.
    const UNREPRESENTABLE_VALID: &[&str] = &["sizes-are-equal-one-and-proof-is-empty.json"];

    /// Every `*.json` file under `testdata/rfc6962/<kind>`, at any depth (the upstream set
    /// nests some vectors one level deeper, e.g. `inclusion/additional/0/`).
    fn vector_files(kind: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).expect("read vector dir") {
                let p = e.expect("dir entry").path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|e| e == "json") {
                    out.push(p);
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/rfc6962")
            .join(kind);
        let mut files = Vec::new();
        walk(&root, &mut files);
        files.sort();
        assert!(!files.is_empty(), "no vectors under {}", root.display());
        files
    }

    fn load(path: &Path) -> Value {
        let raw = std::fs::read_to_string(path).expect("read vector");
        serde_json::from_str(&raw).expect("vector parses")
    }

    fn b64(v: &Value) -> Vec<u8> {
        STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("valid base64 in vector")
    }

    fn b64_list(v: &Value) -> Vec<Vec<u8>> {
        v.as_array()
            .map(|a| a.iter().map(b64).collect())
            .unwrap_or_default()
    }

    fn u64_field(v: &Value, name: &str) -> u64 {
        v[name].as_u64().expect("u64 field")
    }

    fn pad(bytes: &[u8]) -> Hash {
        let mut h = [0u8; 32];
        h[..bytes.len().min(32)].copy_from_slice(&bytes[..bytes.len().min(32)]);
        h
    }

    fn hashes(list: &[Vec<u8>]) -> Result<Vec<Hash>, ProofError> {
        list.iter().map(|b| hash_from_slice(b)).collect()
    }

    fn run_inclusion(v: &Value) -> Result<(), ProofError> {
        let leaf = hash_from_slice(&b64(&v["leafHash"]))?;
        let root = hash_from_slice(&b64(&v["root"]))?;
        let proof = hashes(&b64_list(&v["proof"]))?;
        verify_inclusion(
            &leaf,
            u64_field(v, "leafIdx"),
            u64_field(v, "treeSize"),
            &proof,
            &root,
        )
    }

    fn run_consistency(v: &Value, padded: bool) -> Result<(), ProofError> {
        let conv = |b: &[u8]| {
            if padded {
                Ok(pad(b))
            } else {
                hash_from_slice(b)
            }
        };
        let root1 = conv(&b64(&v["root1"]))?;
        let root2 = conv(&b64(&v["root2"]))?;
        let proof = b64_list(&v["proof"])
            .iter()
            .map(|b| conv(b))
            .collect::<Result<Vec<_>, _>>()?;
        verify_consistency(
            u64_field(v, "size1"),
            u64_field(v, "size2"),
            &proof,
            &root1,
            &root2,
        )
    }

    #[test]
    fn inclusion_vectors() {
        let files = vector_files("inclusion");
        assert_eq!(files.len(), 98, "inclusion vector count");
        for f in &files {
            let v = load(f);
            let want_err = v["wantErr"].as_bool().expect("wantErr");
            let got = run_inclusion(&v);
            assert_eq!(
                got.is_err(),
                want_err,
                "{}: wantErr {want_err}, got {got:?}",
                f.display()
            );
        }
    }

    #[test]
    fn consistency_vectors() {
        let files = vector_files("consistency");
        assert_eq!(files.len(), 98, "consistency vector count");
        let mut unrepresentable = Vec::new();
        for f in &files {
            let v = load(f);
            let want_err = v["wantErr"].as_bool().expect("wantErr");
            let got = run_consistency(&v, false);
            if !want_err && matches!(got, Err(ProofError::HashLength { .. })) {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                assert!(
                    UNREPRESENTABLE_VALID.contains(&name),
                    "{}: valid vector rejected for hash length",
                    f.display()
                );
                run_consistency(&v, true)
                    .unwrap_or_else(|e| panic!("{}: padded form must verify: {e}", f.display()));
                unrepresentable.push(name.to_owned());
                continue;
            }
            assert_eq!(
                got.is_err(),
                want_err,
                "{}: wantErr {want_err}, got {got:?}",
                f.display()
            );
        }
        assert_eq!(unrepresentable, UNREPRESENTABLE_VALID);
    }

    fn leaf(i: u64) -> Vec<u8> {
        format!("proof-entry-{i}-{}", "y".repeat((i % 7) as usize)).into_bytes()
    }

    /// A store with `n` durable entries and the Frontier roots of every prefix `0..=n`.
    fn store_with(n: u64) -> (tempfile::TempDir, Store, Vec<Hash>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let mut roots = Vec::new();
        let mut f = Frontier::new();
        roots.push(f.root());
        for i in 0..n {
            let mut txn = store.begin();
            assert_eq!(txn.append(leaf(i)), i);
            txn.commit().wait_blocking().expect("commit");
            f.push(leaf_hash(&leaf(i)));
            roots.push(f.root());
        }
        let head = store.durable_head();
        assert_eq!(head.size, n);
        assert_eq!(head.root, roots[n as usize]);
        (dir, store, roots)
    }

    fn flipped(proof: &[Hash], elem: usize, bit: usize) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p[elem][bit / 8] ^= 1 << (bit % 8);
        p
    }

    #[test]
    fn generated_inclusion_proofs_verify() {
        const N: u64 = 40;
        let (_dir, store, roots) = store_with(N);
        for size in 1..=N {
            for index in 0..size {
                let proof = inclusion_proof(&store, index, size).expect("proof");
                let lh = store.leaf_hash(index).expect("read").expect("present");
                assert_eq!(lh, leaf_hash(&leaf(index)));
                let root = if size == N {
                    store.durable_head().root
                } else {
                    roots[size as usize]
                };
                verify_inclusion(&lh, index, size, &proof, &root)
                    .unwrap_or_else(|e| panic!("index {index} size {size}: {e}"));
                // Flipping any single bit of any proof element breaks it.
                for elem in 0..proof.len() {
                    let bad = flipped(&proof, elem, (index as usize * 7 + elem) % 256);
                    assert!(verify_inclusion(&lh, index, size, &bad, &root).is_err());
                }
                // Wrong index with the same proof fails.
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(verify_inclusion(&lh, other, size, &proof, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn generated_consistency_proofs_verify() {
        const N: u64 = 40;
        let (_dir, store, roots) = store_with(N);
        for s2 in 1..=N {
            for s1 in 1..=s2 {
                let proof = consistency_proof(&store, s1, s2).expect("proof");
                let (r1, r2) = (&roots[s1 as usize], &roots[s2 as usize]);
                verify_consistency(s1, s2, &proof, r1, r2)
                    .unwrap_or_else(|e| panic!("{s1} -> {s2}: {e}"));
                for elem in 0..proof.len() {
                    let bad = flipped(&proof, elem, (s1 as usize * 11 + elem) % 256);
                    assert!(
                        verify_consistency(s1, s2, &bad, r1, r2).is_err(),
                        "{s1} -> {s2}: flipped element {elem} accepted"
                    );
                }
                if s1 < s2 {
                    // A root that is not the prefix root is rejected.
                    assert!(
                        verify_consistency(s1, s2, &proof, &roots[s1 as usize - 1], r2).is_err()
                    );
                }
            }
        }
        // size1 == 0: empty proof, consistent with anything.
        assert!(consistency_proof(&store, 0, N).expect("proof").is_empty());
        verify_consistency(0, N, &[], &roots[0], &roots[N as usize]).expect("from empty");
    }

    #[test]
    fn proofs_read_o_log_n_stored_hashes() {
        // Built in multi-entry units, as the node commits groups.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let mut f = Frontier::new();
        let mut roots = vec![f.root()];
        let n = 5000u64;
        let mut i = 0;
        while i < n {
            let mut txn = store.begin();
            for _ in 0..(1 + i % 97).min(n - i) {
                txn.append(leaf(i));
                f.push(leaf_hash(&leaf(i)));
                roots.push(f.root());
                i += 1;
            }
            txn.commit().wait_blocking().expect("commit");
        }
        let log2 = 64 - n.leading_zeros() as u64; // 13
        for (index, size) in [(0, n), (n - 1, n), (2345, n), (1234, 4097), (7, 4096)] {
            let before = store.hash_reads();
            let proof = inclusion_proof(&store, index, size).expect("proof");
            let reads = store.hash_reads() - before;
            assert!(reads <= 3 * log2, "inclusion {index}@{size}: {reads} reads");
            let lh = leaf_hash(&leaf(index));
            verify_inclusion(&lh, index, size, &proof, &roots[size as usize]).expect("verifies");
        }
        for (s1, s2) in [(1, n), (4095, n), (2500, 4999), (1000, 1001), (3333, 4444)] {
            let before = store.hash_reads();
            let proof = consistency_proof(&store, s1, s2).expect("proof");
            let reads = store.hash_reads() - before;
            assert!(reads <= 4 * log2, "consistency {s1}->{s2}: {reads} reads");
            verify_consistency(s1, s2, &proof, &roots[s1 as usize], &roots[s2 as usize])
                .expect("verifies");
        }
        for size in [1, 2, 3, 1000, 4096, 4097, n] {
            let before = store.hash_reads();
            assert_eq!(root_at(&store, size).expect("root"), roots[size as usize]);
            assert!(store.hash_reads() - before <= log2 + 1);
        }
    }

    #[test]
    fn generation_rejects_bad_arguments() {
        let (_dir, store, roots) = store_with(5);
        assert!(matches!(
            inclusion_proof(&store, 5, 5),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            inclusion_proof(&store, 0, 6),
            Err(ProofError::BeyondDurable { .. })
        ));
        assert!(matches!(
            consistency_proof(&store, 3, 2),
            Err(ProofError::SizeOrder { .. })
        ));
        assert!(matches!(
            consistency_proof(&store, 3, 6),
            Err(ProofError::BeyondDurable { .. })
        ));
        assert_eq!(subtree_root(&store, 0, 5).expect("root"), roots[5]);
        assert_eq!(subtree_root(&store, 2, 2).expect("root"), empty_root());
    }

    #[test]
    fn verification_rejects_malformed_input() {
        let h = [7u8; 32];
        assert!(matches!(
            verify_inclusion(&h, 0, 0, &[], &h),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            verify_inclusion(&h, 0, 2, &[], &h),
            Err(ProofError::WrongProofLength { got: 0, want: 1 })
        ));
        assert!(verify_inclusion(&h, 0, 1, &[], &h).is_ok());
        assert!(matches!(
            verify_consistency(2, 1, &[], &h, &h),
            Err(ProofError::SizeOrder { .. })
        ));
        assert!(matches!(
            verify_consistency(3, 3, &[h], &h, &h),
            Err(ProofError::WrongProofLength { .. })
        ));
        assert!(matches!(
            verify_consistency(3, 5, &[], &h, &h),
            Err(ProofError::WrongProofLength { .. })
        ));
        assert!(matches!(
            verify_consistency(0, 5, &[h], &h, &h),
            Err(ProofError::WrongProofLength { .. })
        ));
        assert!(matches!(
            hash_from_slice(&[0u8; 31]),
            Err(ProofError::HashLength { len: 31 })
        ));
    }
}
