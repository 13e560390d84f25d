//! Black-box tests of the auditor tools: `ledger status|export|verify|proof|reconcile` and
//! `cert issue`, on ledgers written by a real federation (`demo --dir`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dccf_node::ledger::export::{self, parse_tlog_proof, verify_tlog_proof};
use dccf_node::proto::v1::EntryKind;

fn dccf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dccf-node"))
        .args(args)
        .env("DCCF_LOG", "error")
        .output()
        .expect("run dccf-node")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(args: &[&str]) -> String {
    let o = dccf(args);
    assert!(o.status.success(), "{args:?} failed\n{}", describe(&o));
    stdout(&o)
}

/// Asserts a clean failure: non-zero exit, no panic, last stderr line `error: …`; returns it.
fn fails(args: &[&str]) -> String {
    let o = dccf(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} succeeded\n{}", describe(&o));
    assert!(
        o.status.code().is_some(),
        "killed by a signal\n{}",
        describe(&o)
    );
    assert!(!err.contains("panicked"), "panicked\n{}", describe(&o));
    let line = err.trim_end().lines().last().unwrap_or_default().to_owned();
    assert!(line.starts_with("error: "), "{}", describe(&o));
    line
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The leaf bytes of entry `index` of the (stopped) node whose config is `config`.
fn leaf(config: &Path, index: u64) -> Vec<u8> {
    let cfg = dccf_node::config::NodeConfig::load(config).expect("config");
    let store = dccf_node::ledger::Store::open(&cfg.ledger_dir()).expect("open ledger");
    let leaf = store.entry(index).expect("read").expect("entry exists");
    store.close().expect("close");
    leaf
}

fn check_proof(text: &str, config: &Path, vkey_file: &Path) -> u64 {
    let proof = parse_tlog_proof(text).expect("tlog-proof parses");
    let vkey = std::fs::read_to_string(vkey_file).expect("vkey");
    verify_tlog_proof(&proof, &leaf(config, proof.index), vkey.trim_end())
        .expect("tlog-proof verifies");
    // The same proof with another entry's leaf does not.
    let other = leaf(config, (proof.index + 1) % 3);
    assert!(verify_tlog_proof(&proof, &other, vkey.trim_end()).is_err());
    proof.index
}

#[test]
fn ledger_tools_on_a_real_federation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fed = tmp.path().join("fed");
    ok(&["demo", "--dir", s(&fed)]);
    let cfg = |admin: &str| fed.join(admin).join("node.toml");
    let exp = |name: &str| tmp.path().join(name);

    // Status of a stopped node reads the ledger directly; partners cosigned during the demo.
    let status = ok(&["ledger", "status", "--config", s(&cfg("NL"))]);
    assert!(status.contains("origin     dccf.example/NL"), "{status}");
    assert!(status.contains("cosigned by dccf.example/BR"), "{status}");
    assert!(status.contains("witnessing BR"), "{status}");
    assert!(status.contains("alarms: none"), "{status}");

    // Export both partners and verify them offline.
    for admin in ["NL", "BR"] {
        let out = ok(&[
            "ledger",
            "export",
            "--config",
            s(&cfg(admin)),
            "--out",
            s(&exp(admin)),
        ]);
        assert!(out.contains(&format!("dccf.example/{admin}")), "{out}");
        let verified = ok(&["ledger", "verify", s(&exp(admin))]);
        assert!(
            verified.starts_with(&format!("OK dccf.example/{admin}")),
            "{verified}"
        );
        assert!(verified.contains("cosigned by"), "{verified}");
        assert!(exp(admin).join("checkpoint").is_file());
        assert!(exp(admin).join("vkey").is_file());
        // A full tile (`000`) or a partial one (`000.p/<width>`), depending on the ledger's size.
        let entries = exp(admin).join("tile/entries");
        assert!(
            entries.join("000").is_file() || entries.join("000.p").is_dir(),
            "{}",
            entries.display()
        );
    }
    // A directory that is not there is named as such.
    let missing = tmp.path().join("no-such-export");
    let line = fails(&["ledger", "verify", s(&missing)]);
    assert!(
        line.contains("no-such-export") && line.contains("No such file"),
        "{line}"
    );

    // An existing export is never overwritten.
    let line = fails(&[
        "ledger",
        "export",
        "--config",
        s(&cfg("NL")),
        "--out",
        s(&exp("NL")),
    ]);
    assert!(line.contains(s(&exp("NL"))), "{line}");

    // The two partners' records agree.
    let reconciled = ok(&["ledger", "reconcile", s(&exp("NL")), s(&exp("BR"))]);
    assert!(reconciled.contains("0 discrepancies"), "{reconciled}");
    assert!(!reconciled.contains(" 0 messages recorded"), "{reconciled}");

    // Proof by index and by message id, each a C2SP tlog-proof that verifies offline.
    let by_index = ok(&["ledger", "proof", "--config", s(&cfg("NL")), "--index", "2"]);
    assert!(
        by_index.starts_with("c2sp.org/tlog-proof@v1\nindex 2\n"),
        "{by_index}"
    );
    assert_eq!(
        check_proof(&by_index, &cfg("NL"), &exp("NL").join("vkey")),
        2
    );
    let (_, entries) = export::read_entries(&exp("BR")).expect("BR export reads");
    let received = entries
        .iter()
        .find(|(_, e)| e.kind == EntryKind::EnvelopeReceived as i32)
        .expect("BR received something");
    let by_id = ok(&[
        "ledger",
        "proof",
        "--config",
        s(&cfg("BR")),
        "--message-id",
        &received.1.message_id,
    ]);
    assert_eq!(
        check_proof(&by_id, &cfg("BR"), &exp("BR").join("vkey")),
        received.0
    );
    let line = fails(&[
        "ledger",
        "proof",
        "--config",
        s(&cfg("BR")),
        "--message-id",
        "no-such-message",
    ]);
    assert!(line.contains("no-such-message"), "{line}");

    // One changed byte in an entry bundle: verify names the entry, reconcile refuses.
    let bundle = first_bundle(&exp("BR"));
    let mut bytes = std::fs::read(&bundle).expect("bundle");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&bundle, bytes).expect("tamper");
    let line = fails(&["ledger", "verify", s(&exp("BR"))]);
    assert!(line.contains("entry"), "{line}");
    fails(&["ledger", "reconcile", s(&exp("NL")), s(&exp("BR"))]);
}

fn first_bundle(dir: &Path) -> PathBuf {
    let full = dir.join("tile/entries/000");
    if full.is_file() {
        return full;
    }
    let p = dir.join("tile/entries/000.p");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&p)
        .expect("partial bundle dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files.remove(0)
}

#[test]
fn cert_issue_writes_an_auditor_certificate_and_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    ok(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        "127.0.0.1:45071",
        "--dir",
        s(&dir),
    ]);
    let config = dir.join("node.toml");
    let out = dir.join("alice");
    let printed = ok(&[
        "cert",
        "issue",
        "--config",
        s(&config),
        "--role",
        "auditor",
        "--out",
        s(&out),
    ]);
    assert!(printed.contains("auditor certificate of NL"), "{printed}");
    let pem = std::fs::read(out.with_extension("pem")).expect("cert written");
    let der = rustls_pki_types::CertificateDer::from(pem_to_der(&pem));
    let id = dccf_node::identity::pki::cert_identity(&der).expect("identity");
    assert_eq!(id.admin, "NL");
    assert_eq!(id.role, dccf_node::identity::pki::Role::Auditor);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.with_extension("key"))
        .expect("key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let line = fails(&[
        "cert",
        "issue",
        "--config",
        s(&config),
        "--role",
        "auditor",
        "--out",
        s(&out),
    ]);
    assert!(line.contains("alice"), "{line}");
    let line = fails(&[
        "cert",
        "issue",
        "--config",
        s(&config),
        "--role",
        "node",
        "--out",
        s(&dir.join("n2")),
    ]);
    assert!(line.contains("--role node"), "{line}");
    // A node that never ran has no ledger to show.
    let line = fails(&["ledger", "status", "--config", s(&config)]);
    assert!(line.contains("no ledger"), "{line}");
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .expect("PEM certificate")
        .to_vec()
}

/// Copies a stopped node's data directory (to tamper with one copy per scenario).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Applies `tamper` to the raw sled database of a copy of `node_dir`; returns the copy's config.
fn tampered_copy(node_dir: &Path, to: &Path, tamper: impl FnOnce(&sled::Db)) -> PathBuf {
    copy_dir(node_dir, to);
    let db = sled::open(to.join("ledger")).expect("raw sled");
    tamper(&db);
    db.flush().expect("flush");
    drop(db);
    to.join("node.toml")
}

fn index_key(prefix: u8, index: u64) -> Vec<u8> {
    [&[prefix][..], &index.to_be_bytes()].concat()
}

#[test]
fn ledger_verify_detects_a_tampered_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fed = tmp.path().join("fed");
    ok(&["demo", "--dir", s(&fed)]);
    let nl = fed.join("NL");
    let verified = ok(&["ledger", "verify", "--config", s(&nl.join("node.toml"))]);
    assert!(verified.starts_with("OK dccf.example/NL"), "{verified}");
    assert!(verified.contains("signed checkpoints match"), "{verified}");

    // 1. One entry rewritten in place: the stored subtree over it no longer matches.
    let config = tampered_copy(&nl, &tmp.path().join("t1"), |db| {
        let mut leaf = db.get(index_key(b'e', 3)).unwrap().unwrap().to_vec();
        leaf[0] ^= 0x01;
        db.insert(index_key(b'e', 3), leaf).unwrap();
    });
    let line = fails(&["ledger", "verify", "--config", s(&config)]);
    assert!(line.contains("entries 0..4"), "{line}");

    // 2. The entry and the stored node over it rewritten together: the level above disagrees.
    let config = tampered_copy(&nl, &tmp.path().join("t2"), |db| {
        use dccf_node::ledger::merkle::{leaf_hash, node_hash};
        let mut leaves: Vec<Vec<u8>> = (0..4)
            .map(|i| db.get(index_key(b'e', i)).unwrap().unwrap().to_vec())
            .collect();
        leaves[2][0] ^= 0x01;
        db.insert(index_key(b'e', 2), leaves[2].clone()).unwrap();
        let h: Vec<[u8; 32]> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let node = node_hash(&node_hash(&h[0], &h[1]), &node_hash(&h[2], &h[3]));
        let key = [&[b'n', 2][..], &0u64.to_be_bytes()].concat();
        db.insert(key, node.to_vec()).unwrap();
    });
    let line = fails(&["ledger", "verify", "--config", s(&config)]);
    // The recomputed tree and the signed checkpoint both disagree; whichever check runs first
    // names it (the checkpoint check does, for this small ledger).
    assert!(
        line.contains("level 4, index 0")
            || line.contains("differs from the head")
            || line.contains("rewritten"),
        "{line}"
    );

    // 3. A whole consistent tree over a rewritten history (entries, hashes, nodes and head
    //    recomputed): only the signed checkpoints give it away.
    let config = tampered_copy(&nl, &tmp.path().join("t3"), |db| {
        let forged_dir = tempfile::tempdir().expect("tempdir");
        let size = {
            let head = dccf_node::ledger::merkle::Frontier::from_bytes(
                &db.get(b"m/head").unwrap().unwrap(),
            )
            .unwrap();
            head.size()
        };
        {
            let forged = dccf_node::ledger::Store::open(forged_dir.path()).unwrap();
            let mut txn = forged.begin();
            for i in 0..size {
                let mut leaf = db.get(index_key(b'e', i)).unwrap().unwrap().to_vec();
                if i == 1 {
                    leaf[0] ^= 0x01;
                }
                txn.append(leaf);
            }
            txn.commit().wait_blocking().unwrap();
            forged.close().unwrap();
        }
        let forged = sled::open(forged_dir.path()).unwrap();
        for item in forged.iter() {
            let (k, v) = item.unwrap();
            if matches!(k.first(), Some(b'e' | b'n')) || k.as_ref() == b"m/head" {
                db.insert(k, v).unwrap();
            }
        }
    });
    let line = fails(&["ledger", "verify", "--config", s(&config)]);
    assert!(line.contains("rewritten"), "{line}");

    // `doctor` says the same, with what to do about it.
    let doctor = dccf(&["doctor", "--config", s(&config)]);
    assert!(!doctor.status.success(), "{}", describe(&doctor));
    let out = stdout(&doctor);
    let ledger: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("FAIL  ledger "))
        .collect();
    assert!(
        ledger.len() == 1 && ledger[0].contains("rewritten"),
        "{out}"
    );
    assert!(
        out.contains("fix: stop the node and keep the data directory as it is (evidence)"),
        "{out}"
    );
}

/// Kills the child on drop, so a failed assertion leaves no server running.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_running_node_answers_ledger_commands_through_its_audit_service() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .to_string()
    };
    let (listen, gateway) = (free(), free());
    ok(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        &listen,
        "--gateway-listen",
        &gateway,
        "--dir",
        s(&dir),
    ]);
    let config = dir.join("node.toml");
    let _server = Server(
        Command::new(env!("CARGO_BIN_EXE_dccf-node"))
            .args(["serve", "--config", s(&config)])
            .env("DCCF_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start serve"),
    );
    // The node holds the ledger: status goes through Audit with the auditor certificate.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let o = dccf(&["ledger", "status", "--config", s(&config)]);
        if o.status.success() {
            break stdout(&o);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ledger status never succeeded\n{}",
            describe(&o)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(status.contains("origin     dccf.example/NL"), "{status}");
    assert!(status.contains("alarms: none"), "{status}");
    // A proof of an entry the node wrote at start-up? A fresh node has none yet: a clear error.
    let line = fails(&["ledger", "proof", "--config", s(&config), "--index", "0"]);
    assert!(line.contains("Audit.GetInclusionProof"), "{line}");
    // Export works while the node runs (through Audit), and the result verifies offline; into
    // a directory that is not empty it refuses, and so with a certificate that is no auditor's.
    let out = tmp.path().join("x");
    let said = ok(&["ledger", "export", "--config", s(&config), "--out", s(&out)]);
    assert!(
        said.contains("through the running node's Audit service"),
        "{said}"
    );
    let verified = ok(&["ledger", "verify", s(&out)]);
    assert!(verified.starts_with("OK dccf.example/NL"), "{verified}");
    let line = fails(&["ledger", "export", "--config", s(&config), "--out", s(&out)]);
    assert!(line.contains("is not an empty directory"), "{line}");
    let line = fails(&[
        "ledger",
        "export",
        "--config",
        s(&config),
        "--out",
        s(&tmp.path().join("y")),
        "--cert",
        s(&dir.join("tls/gateway-client.pem")),
        "--key",
        s(&dir.join("tls/gateway-client.key")),
    ]);
    assert!(line.contains("role auditor"), "{line}");
    assert!(!tmp.path().join("y").exists(), "nothing written");
    // Verifying the database itself needs the node stopped, and says so.
    let line = fails(&["ledger", "verify", "--config", s(&config)]);
    assert!(line.contains("the node is running"), "{line}");
    // The gateway certificate is not an auditor's.
    let line = fails(&[
        "ledger",
        "status",
        "--config",
        s(&config),
        "--cert",
        s(&dir.join("tls/gateway-client.pem")),
        "--key",
        s(&dir.join("tls/gateway-client.key")),
    ]);
    assert!(line.contains("role auditor"), "{line}");
}
