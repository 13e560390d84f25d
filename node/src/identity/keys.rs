//! The administration's Ed25519 signing key and X25519 HPKE key pair, stored as PKCS#8 PEM.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, Serializable};
use rand_core::OsRng;

use super::keyfile::{encode_pem, pkcs8_der_from_pem, read_secret, write_secret};
use super::{IdentityError, one_line};

/// HPKE private key type (X25519, RFC 9180 `DHKEM(X25519, HKDF-SHA256)`).
pub type HpkePrivateKey = <X25519HkdfSha256 as Kem>::PrivateKey;
/// HPKE public key type (X25519, RFC 9180 `DHKEM(X25519, HKDF-SHA256)`).
pub type HpkePublicKey = <X25519HkdfSha256 as Kem>::PublicKey;

/// DER of an RFC 8410 X25519 `OneAsymmetricKey` v1 up to the key: SEQUENCE, version 0,
/// AlgorithmIdentifier { 1.3.101.110 }, OCTET STRING { OCTET STRING (32 bytes) }.
const X25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
];

/// Names the key algorithm of a PKCS#8 document, to explain a key of the wrong type.
fn pkcs8_algorithm(der: &[u8]) -> Option<&'static str> {
    const KNOWN: [(&[u8], &str); 4] = [
        (&[0x06, 0x03, 0x2b, 0x65, 0x70], "Ed25519"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x6e], "X25519"),
        (
            &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
            "ECDSA",
        ),
        (
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ],
            "RSA",
        ),
    ];
    // The AlgorithmIdentifier sits right after the version, within the first bytes.
    let head = der.get(..32).unwrap_or(der);
    KNOWN
        .iter()
        .find(|(oid, _)| head.windows(oid.len()).any(|w| w == *oid))
        .map(|(_, name)| *name)
}

fn corrupt(path: &Path, detail: impl Into<String>) -> IdentityError {
    IdentityError::CorruptKey {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads a secret PEM file and returns its PKCS#8 DER, wiped from memory when dropped.
fn read_pkcs8(path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let pem = Zeroizing::new(read_secret(path)?);
    pkcs8_der_from_pem(&pem)
        .map(Zeroizing::new)
        .map_err(|detail| corrupt(path, detail))
}

/// The administration's Ed25519 signing key (envelopes, receipts, checkpoints, agreements).
pub struct SigningIdentity {
    key: SigningKey,
}

impl SigningIdentity {
    /// Generates a fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut OsRng),
        }
    }

    /// Wraps an existing key (e.g. a fixed key in tests).
    pub fn from_signing_key(key: SigningKey) -> Self {
        Self { key }
    }

    /// Writes the key as PKCS#8 PEM (`PRIVATE KEY`) to a new 0600 file.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        // PKCS#8 v1 (no embedded public key): the form OpenSSL and other standard tools read.
        let pem = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| IdentityError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(one_line(e)),
        })?;
        write_secret(path, pem.as_bytes())
    }

    /// Loads a key written by [`save`](Self::save) (or any PKCS#8 Ed25519 PEM, v1 or v2).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let der = read_pkcs8(path)?;
        match pkcs8_algorithm(&der) {
            Some("Ed25519") | None => {}
            Some(other) => {
                return Err(corrupt(
                    path,
                    format!("holds an {other} key, not an Ed25519 signing key"),
                ));
            }
        }
        let key = SigningKey::from_pkcs8_der(&der).map_err(|e| {
            corrupt(
                path,
                format!("not a valid Ed25519 PKCS#8 key: {}", one_line(e)),
            )
        })?;
        Ok(Self { key })
    }

    /// The public key partners verify signatures with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The underlying secret key, for signing code that takes an `ed25519_dalek::SigningKey`.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `msg` (pure Ed25519, RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// The 32-byte public key.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key as standard base64, as written into party cards.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.public_key_bytes())
    }
}

impl fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

/// The administration's HPKE key pair (X25519): partners encrypt payloads to its public key.
#[derive(Clone)]
pub struct HpkeKeyPair {
    private: HpkePrivateKey,
    /// Always derived from `private`, never read from anywhere else.
    public: HpkePublicKey,
}

impl HpkeKeyPair {
    /// Generates a fresh key pair from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let (private, public) = X25519HkdfSha256::gen_keypair(&mut OsRng);
        Self { private, public }
    }

    /// Builds the key pair from a private key, deriving the public key.
    pub fn from_private_key(private: HpkePrivateKey) -> Self {
        let public = X25519HkdfSha256::sk_to_pk(&private);
        Self { private, public }
    }

    /// Writes the private key as RFC 8410 PKCS#8 PEM (`PRIVATE KEY`) to a new 0600 file.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&X25519_PKCS8_PREFIX);
        der.extend_from_slice(&self.private.to_bytes());
        let pem = Zeroizing::new(encode_pem("PRIVATE KEY", &der));
        write_secret(path, pem.as_bytes())
    }

    /// Loads a key written by [`save`](Self::save) (RFC 8410 X25519 PKCS#8 v1 PEM).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let der = read_pkcs8(path)?;
        let raw = match der.strip_prefix(&X25519_PKCS8_PREFIX) {
            Some(raw) if raw.len() == 32 => raw,
            _ => {
                let detail = match pkcs8_algorithm(&der) {
                    Some(alg) if alg != "X25519" => {
                        format!("holds an {alg} key, not an X25519 HPKE key")
                    }
                    _ => "not an RFC 8410 X25519 PKCS#8 key (expected 48 bytes of DER starting 302e020100300506032b656e04220420)".to_owned(),
                };
                return Err(corrupt(path, detail));
            }
        };
        let private = HpkePrivateKey::from_bytes(raw)
            .map_err(|e| corrupt(path, format!("invalid X25519 private key: {e:?}")))?;
        Ok(Self::from_private_key(private))
    }

    /// The 32-byte public key.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.public.to_bytes());
        out
    }

    /// The public key as standard base64, as written into party cards.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.public_key_bytes())
    }

    /// The private key, for opening HPKE messages.
    pub fn private_key(&self) -> &HpkePrivateKey {
        &self.private
    }

    /// The public key, which partners seal messages to.
    pub fn public_key(&self) -> &HpkePublicKey {
        &self.public
    }
}

impl fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpkeKeyPair")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn signing_key_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let id = SigningIdentity::generate();
        id.save(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");

        let loaded = SigningIdentity::load(&path).unwrap();
        assert_eq!(loaded.verifying_key(), id.verifying_key());
        let sig = loaded.sign(b"envelope");
        id.verifying_key().verify(b"envelope", &sig).unwrap();
        assert_eq!(loaded.public_key_base64().len(), 44);
    }

    #[test]
    fn hpke_key_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/hpke.key");
        let kp = HpkeKeyPair::generate();
        kp.save(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let loaded = HpkeKeyPair::load(&path).unwrap();
        assert_eq!(loaded.public_key_bytes(), kp.public_key_bytes());
        assert_eq!(loaded.public_key(), kp.public_key());
        assert!(loaded.private_key() == kp.private_key());

        // The file is plain RFC 8410 PKCS#8: the fixed prefix plus the raw key, 64-char lines.
        let pem = fs::read(&path).unwrap();
        let der = pkcs8_der_from_pem(&pem).unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(der[..16], X25519_PKCS8_PREFIX);
        assert_eq!(der[16..], kp.private_key().to_bytes()[..]);
    }

    #[test]
    fn hpke_key_pair_seals_and_opens() {
        use hpke::aead::ChaCha20Poly1305;
        use hpke::kdf::HkdfSha256;
        let kp = HpkeKeyPair::generate();
        let (encapped, ciphertext) =
            hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
                &hpke::OpModeS::Base,
                kp.public_key(),
                b"info",
                b"payload",
                b"aad",
                &mut OsRng,
            )
            .unwrap();
        let plain = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &hpke::OpModeR::Base,
            kp.private_key(),
            &encapped,
            b"info",
            &ciphertext,
            b"aad",
        )
        .unwrap();
        assert_eq!(plain, b"payload");
    }

    #[test]
    fn load_missing_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let err = SigningIdentity::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::KeyFileMissing { path: ref p } if *p == path));
        assert_eq!(
            err.to_string(),
            format!("key file {} not found", path.display())
        );
        let err = HpkeKeyPair::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::KeyFileMissing { .. }));
    }

    #[test]
    fn load_garbage_is_corrupt_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.key");
        write_secret(&path, b"\x00\xffnot a key at all\n").unwrap();
        for err in [
            SigningIdentity::load(&path).unwrap_err(),
            HpkeKeyPair::load(&path).unwrap_err(),
        ] {
            assert!(matches!(err, IdentityError::CorruptKey { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }

        // A well-formed PEM block whose body is not a key.
        let bad = dir.path().join("bad-body.key");
        write_secret(
            &bad,
            encode_pem("PRIVATE KEY", b"\x30\x03\x02\x01\x00").as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            SigningIdentity::load(&bad),
            Err(IdentityError::CorruptKey { .. })
        ));
        assert!(matches!(
            HpkeKeyPair::load(&bad),
            Err(IdentityError::CorruptKey { .. })
        ));
    }

    #[test]
    fn load_key_of_wrong_type_is_corrupt_key() {
        let dir = tempfile::tempdir().unwrap();
        let ed = dir.path().join("signing.key");
        let x = dir.path().join("hpke.key");
        SigningIdentity::generate().save(&ed).unwrap();
        HpkeKeyPair::generate().save(&x).unwrap();

        let err = HpkeKeyPair::load(&ed).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "key file {} is not usable: holds an Ed25519 key, not an X25519 HPKE key",
                ed.display()
            )
        );
        let err = SigningIdentity::load(&x).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "key file {} is not usable: holds an X25519 key, not an Ed25519 signing key",
                x.display()
            )
        );
    }

    #[test]
    fn load_key_with_loose_permissions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hpke.key");
        HpkeKeyPair::generate().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = HpkeKeyPair::load(&path).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::InsecurePermissions { mode: 0o644, .. }
        ));
        assert!(
            err.to_string()
                .contains(&format!("chmod 600 {}", path.display()))
        );
    }

    #[test]
    fn save_refuses_to_overwrite_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let first = SigningIdentity::generate();
        first.save(&path).unwrap();
        let err = SigningIdentity::generate().save(&path).unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }));
        assert_eq!(
            SigningIdentity::load(&path).unwrap().verifying_key(),
            first.verifying_key()
        );
        let err = HpkeKeyPair::generate().save(&path).unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }));
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let id = SigningIdentity::generate();
        let secret = STANDARD.encode(id.key.to_bytes());
        let shown = format!("{id:?}");
        assert!(!shown.contains(&secret) && shown.contains(&id.public_key_base64()));

        let kp = HpkeKeyPair::generate();
        let secret = STANDARD.encode(kp.private.to_bytes());
        let shown = format!("{kp:?}");
        assert!(!shown.contains(&secret) && shown.contains(&kp.public_key_base64()));
    }
}
