//! Files holding key material (0600) and public identity documents (0644).
//!
//! Writes are atomic and never replace an existing file: the contents go to a temporary file in the
//! target directory, are fsynced, and are then hard-linked into place, which fails if the target
//! exists (no check-then-rename race). Reads of secret files refuse files that group or others can
//! access, the way `ssh` does, so a key copied around carelessly is noticed rather than used.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::{OsRng, RngCore};
use rustls_pki_types::pem::{PemObject, SectionKind};

use super::{IdentityError, one_line};

/// Mode of files holding private keys.
const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and party cards.
const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories this module creates.
const DIR_MODE: u32 = 0o700;

/// Writes private key material to a new file `path` with mode 0600.
///
/// Missing parent directories are created with mode 0700. Fails with
/// [`IdentityError::AlreadyExists`] if `path` exists: key material is never silently replaced.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    write_new(path, contents, SECRET_MODE)
}

/// Writes a public document (certificate, party card) to a new file `path` with mode 0644.
///
/// Same directory and no-overwrite rules as [`write_secret`].
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    write_new(path, contents, PUBLIC_MODE)
}

/// Reads a private key file, refusing it if group or others have any access to it.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let unreadable = |source| IdentityError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => IdentityError::KeyFileMissing {
            path: path.to_path_buf(),
        },
        _ => unreadable(e),
    })?;
    // Check the opened file, not the path, so a swapped file cannot slip past the check.
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(unreadable(io::Error::other("not a regular file")));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(unreadable)?;
    Ok(contents)
}

/// Reads a public file (certificate, party card).
pub fn read_public(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => IdentityError::FileMissing {
            path: path.to_path_buf(),
        },
        _ => IdentityError::Unreadable {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let write_err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let already_exists = || IdentityError::AlreadyExists {
        path: path.to_path_buf(),
    };
    let file_name = path.file_name().ok_or_else(|| {
        write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path does not name a file",
        ))
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    // Fail early with a clear message; the hard link below is what actually guarantees it.
    if fs::symlink_metadata(path).is_ok() {
        return Err(already_exists());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(write_err)?;

    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        file_name.to_string_lossy(),
        std::process::id(),
        OsRng.next_u64()
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the creation mode; set it exactly (it never widens a secret).
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }

    // link(2) fails with EEXIST instead of replacing, atomically; rename(2) would replace.
    let placed = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(already_exists()),
        // Filesystems without hard links: fall back to a checked rename (a narrow race remains).
        Err(_) if fs::symlink_metadata(path).is_ok() => Err(already_exists()),
        Err(_) => fs::rename(&tmp, path).map_err(write_err),
    };
    let _ = fs::remove_file(&tmp);
    placed?;
    sync_dir(dir).map_err(write_err)
}

/// Makes the new directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        // Some filesystems cannot fsync directories; the data itself is already synced.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// PEM-encodes `der` under `label` with 64-character base64 lines (RFC 7468).
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Decodes PEM text that must hold exactly one `CERTIFICATE` block and nothing secret.
///
/// The error is a one-line description, to be wrapped with the file or field it came from.
pub(crate) fn single_cert_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        match section.map_err(|e| format!("invalid PEM: {}", one_line(e)))? {
            (SectionKind::Certificate, der) => certs.push(der),
            (
                SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey,
                _,
            ) => {
                return Err("contains a private key; only a CERTIFICATE block belongs here".into());
            }
            (kind, _) => {
                return Err(format!(
                    "contains a {kind:?} PEM block; only a CERTIFICATE block belongs here"
                ));
            }
        }
    }
    match certs.len() {
        1 => Ok(certs.remove(0)),
        0 => Err("no CERTIFICATE PEM block".into()),
        n => Err(format!(
            "{n} CERTIFICATE PEM blocks; exactly one is expected"
        )),
    }
}

/// Extracts the PKCS#8 DER from a `PRIVATE KEY` PEM file's bytes.
pub(crate) fn pkcs8_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    match PrivatePkcs8KeyDer::from_pem_slice(pem) {
        Ok(der) => Ok(der.secret_pkcs8_der().to_vec()),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            Err("no PKCS#8 PRIVATE KEY PEM block".into())
        }
        Err(e) => Err(format!("invalid PEM: {}", one_line(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_secret_creates_0600_file_and_0700_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/secret.key");
        write_secret(&path, b"top secret").unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(&dir.path().join("a")), 0o700);
        assert_eq!(mode_of(&dir.path().join("a/b")), 0o700);
        assert_eq!(read_secret(&path).unwrap(), b"top secret");
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret.key"]);
    }

    #[test]
    fn write_public_creates_0644_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        write_public(&path, b"cert").unwrap();
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(read_public(&path).unwrap(), b"cert");
    }

    #[test]
    fn write_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        write_secret(&path, b"first").unwrap();
        let err = write_secret(&path, b"second").unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let err = write_public(&path, b"second").unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }));
        assert_eq!(read_secret(&path).unwrap(), b"first");
    }

    #[test]
    fn read_secret_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.key");
        let err = read_secret(&path).unwrap_err();
        assert!(matches!(err, IdentityError::KeyFileMissing { .. }));
        assert_eq!(
            err.to_string(),
            format!("key file {} not found", path.display())
        );
        let err = read_public(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("file {} not found", path.display())
        );
    }

    #[test]
    fn read_secret_refuses_group_or_world_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loose.key");
        write_secret(&path, b"k").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err();
        let p = path.display();
        assert_eq!(
            err.to_string(),
            format!(
                "key file {p} has permissions 0644; it must be readable by its owner only (chmod 600 {p})"
            )
        );
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_secret(&path),
            Err(IdentityError::InsecurePermissions { mode: 0o640, .. })
        ));
        fs::set_permissions(&path, Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"k");
    }

    #[test]
    fn read_secret_of_a_directory_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o700)).unwrap();
        let err = read_secret(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn pem_encoding_uses_64_char_lines() {
        let pem = encode_pem("CERTIFICATE", &[7u8; 100]);
        let lines: Vec<_> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().copied(), Some("-----END CERTIFICATE-----"));
        assert_eq!(single_cert_der(pem.as_bytes()).unwrap(), vec![7u8; 100]);
    }

    #[test]
    fn single_cert_der_rejects_zero_two_or_secret_blocks() {
        let cert = encode_pem("CERTIFICATE", b"x");
        assert!(single_cert_der(b"").unwrap_err().contains("no CERTIFICATE"));
        let two = format!("{cert}{cert}");
        assert!(
            single_cert_der(two.as_bytes())
                .unwrap_err()
                .contains("2 CERTIFICATE")
        );
        let with_key = format!("{cert}{}", encode_pem("PRIVATE KEY", b"k"));
        assert!(
            single_cert_der(with_key.as_bytes())
                .unwrap_err()
                .contains("private key")
        );
    }
}
