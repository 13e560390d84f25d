//! Black-box tests of the real `dccf-node` binary: each test runs the compiled executable with
//! `std::process::Command` in its own temporary directory and checks exit status, stdout, stderr and
//! the files left on disk.
//!
//! Covered:
//! - `init`: the files it creates, their modes and the printed party card; refusing a second `init`
//!   or an invalid administration id without touching anything;
//! - `serve`: configuration errors (missing file, TOML syntax, unknown field, out-of-range limit),
//!   key file errors (loose permissions, corrupt, missing), a malformed agreement, an occupied port,
//!   and a clean exit 0 on SIGTERM;
//! - `send` / `inbox`: a bad JSON file is refused before any connection is tried, and a node that is
//!   not running gives a prompt one-line error;
//! - `bench envelope --json`, `bench ledger --json`: one JSON object with the documented figures;
//!   `bench ledger` refuses a non-empty `--dir` and hides its internal child flag;
//! - `bench delivery --json --phases unary,baselines`: two node processes and the baseline
//!   children run, every documented key is printed, and the child flags stay hidden;
//! - `aeo generate|import|set-status|mirrors|lookup|verify`: a generated registry imports, a bad
//!   line is refused naming line and field with the registry unchanged, unknown operators and
//!   statuses are named, usage errors are one line; `bench aeo --json` prints its figures;
//! - usage errors (unknown subcommand, missing flag).
//!
//! Every failure must be the project standard: exactly one line on stderr starting with `error:`,
//! a normal non-zero exit (not a signal, not a panic), and no half-written state. Every child
//! process runs under a generous timeout so that a hang fails the test instead of stalling the
//! suite; the timeout guards against hangs only and is never a performance assertion.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_dccf-node");

/// How long any one command may run before it counts as hung.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `serve` may take to open its port, and to exit after SIGTERM.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A `dccf-node` process whose stdout and stderr are being collected.
struct Running {
    child: Child,
    stdout: Output,
    stderr: Output,
    reaped: bool,
}

/// One output stream of a child, read by a thread into a buffer that can be looked at any time.
struct Output {
    buffer: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Output {
    fn collect(pipe: Option<impl Read + Send + 'static>) -> Output {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let reader = pipe.map(|mut pipe| {
            let buffer = Arc::clone(&buffer);
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    buffer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            })
        });
        Output { buffer, reader }
    }

    /// What has been read so far.
    fn so_far(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Everything, once the child has exited (waits for the reader to reach end of file).
    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("output reader thread");
        }
        self.so_far()
    }
}

/// The outcome of a finished `dccf-node` process.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The whole outcome, for assertion messages.
    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Starts `dccf-node ARGS` with a deterministic environment (default log levels, no colours).
fn spawn(args: &[&str]) -> Running {
    spawn_with_env(args, &[])
}

/// [`spawn`] with extra environment variables.
fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("DCCF_LOG")
        .env_remove("DCCF_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let stdout = Output::collect(child.stdout.take());
    let stderr = Output::collect(child.stderr.take());
    Running {
        child,
        stdout,
        stderr,
        reaped: false,
    }
}

impl Running {
    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// Whether the process has exited (reaping it if so).
    fn has_exited(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => panic!("cannot poll dccf-node: {e}"),
        }
    }

    /// Waits for the process to exit; kills it and fails the test if it takes longer than `limit`.
    fn wait(mut self, limit: Duration, what: &str) -> Run {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("cannot wait for dccf-node: {e}"),
            }
        };
        let timed_out = status.is_none();
        let status = status.unwrap_or_else(|| {
            let _ = self.child.kill();
            self.child.wait().expect("wait for killed dccf-node")
        });
        self.reaped = true;
        let run = Run {
            status,
            stdout: self.stdout.finish(),
            stderr: self.stderr.finish(),
        };
        assert!(
            !timed_out,
            "{what}: did not exit within {limit:?} (killed)\n{}",
            run.describe()
        );
        run
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed assertion must not leave a server running.
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `dccf-node ARGS` to completion (a hang fails the test after [`PROCESS_TIMEOUT`]).
fn dccf(args: &[&str]) -> Run {
    spawn(args).wait(PROCESS_TIMEOUT, &format!("dccf-node {}", args.join(" ")))
}

/// Asserts the standard failure shape and returns the error line: a normal, non-zero exit (not
/// killed by a signal), no panic, and stderr exactly one line starting with `error:`.
fn assert_one_line_error(run: &Run) -> String {
    assert!(
        !run.status.success(),
        "expected failure, got success\n{}",
        run.describe()
    );
    assert!(
        run.status.code().is_some(),
        "expected a normal exit with an error code, not death by signal\n{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("panicked"),
        "the binary panicked\n{}",
        run.describe()
    );
    let line = run.stderr.trim_end();
    assert!(
        !line.contains('\n'),
        "expected exactly one line on stderr\n{}",
        run.describe()
    );
    assert!(
        line.starts_with("error: "),
        "expected stderr to start with `error: `\n{}",
        run.describe()
    );
    line.to_owned()
}

/// Asserts that `line` contains every one of `needles`.
fn assert_mentions(line: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            line.contains(needle),
            "error line should mention {needle:?}:\n{line}"
        );
    }
}

/// `path` as `&str` (temporary directories have UTF-8 paths).
fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// Two distinct loopback addresses that were free a moment ago.
fn free_addrs() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (
        a.local_addr().expect("local addr"),
        b.local_addr().expect("local addr"),
    )
}

/// An administration's data directory created by `dccf-node init`.
struct Node {
    _tmp: TempDir,
    dir: PathBuf,
    listen: SocketAddr,
}

impl Node {
    fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// Runs `init --admin ADMIN` into a fresh temporary directory on free ports.
fn init_node(admin: &str) -> Node {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(admin.to_lowercase());
    let (listen, gateway) = free_addrs();
    let run = dccf(&[
        "init",
        "--admin",
        admin,
        "--listen",
        &listen.to_string(),
        "--gateway-listen",
        &gateway.to_string(),
        "--dir",
        s(&dir),
    ]);
    assert!(run.status.success(), "init failed\n{}", run.describe());
    Node {
        _tmp: tmp,
        dir,
        listen,
    }
}

/// Replaces the first `from` with `to` in `path`, failing if `from` is not there (so an edit can
/// never silently not happen).
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read file to edit");
    assert!(
        text.contains(from),
        "{} does not contain {from:?}:\n{text}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).expect("write edited file");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Every entry under `dir` (relative path → mode and, for files, contents).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let rel = path.strip_prefix(root).expect("under root").to_owned();
            if path.is_dir() {
                out.insert(rel, (mode(&path), None));
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    (mode(&path), Some(std::fs::read(&path).expect("read"))),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The files `init` must create, relative to the data directory.
const INIT_FILES: [&str; 13] = [
    "node.toml",
    "party.toml",
    "keys/signing.key",
    "keys/hpke.key",
    "tls/ca.pem",
    "tls/ca.key",
    "tls/node.pem",
    "tls/node.key",
    "tls/gateway-client.pem",
    "tls/gateway-client.key",
    "tls/auditor-client.pem",
    "tls/auditor-client.key",
    "agreements",
];

/// Key files `serve` reads at start-up.
const SERVE_KEYS: [&str; 3] = ["keys/signing.key", "keys/hpke.key", "tls/node.key"];

// ---------------------------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------------------------

#[test]
fn init_creates_identity_files_with_private_keys_0600_and_prints_the_party_card() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    let (listen, _) = free_addrs();
    let run = dccf(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        &listen.to_string(),
        "--dir",
        s(&dir),
    ]);
    assert!(run.status.success(), "init failed\n{}", run.describe());

    for rel in INIT_FILES {
        assert!(
            dir.join(rel).exists(),
            "init did not create {rel}\n{}",
            run.describe()
        );
    }
    assert!(dir.join("agreements").is_dir());

    // Every private key anywhere in the directory is readable by its owner only.
    let keys: Vec<PathBuf> = snapshot(&dir)
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(
        keys.len(),
        6,
        "expected signing, hpke, ca, node, gateway-client and auditor-client keys, found {keys:?}"
    );
    for key in &keys {
        assert_eq!(
            mode(&dir.join(key)),
            0o600,
            "{} must be mode 0600",
            key.display()
        );
    }
    for sub in ["", "keys", "tls"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}/ must be mode 0700");
    }

    // stdout is the party card: valid TOML with the documented fields, equal to party.toml.
    let card: toml::Table = toml::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a TOML party card: {e}\n{}", run.describe()));
    let field = |name: &str| -> String {
        card.get(name)
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("party card lacks string field {name}\n{}", run.describe()))
            .to_owned()
    };
    assert_eq!(field("admin"), "NL");
    assert_eq!(field("endpoint"), format!("https://{listen}"));
    assert!(!field("signing_key").is_empty());
    assert!(!field("hpke_key").is_empty());
    assert!(
        field("ca_cert").contains("-----BEGIN CERTIFICATE-----"),
        "ca_cert is not a PEM certificate\n{}",
        run.describe()
    );
    let saved: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("party.toml")).expect("party.toml"))
            .expect("party.toml is TOML");
    assert_eq!(card, saved, "printed card differs from party.toml");
}

#[test]
fn init_into_an_initialised_dir_fails_and_changes_nothing() {
    let node = init_node("NL");
    let before = snapshot(&node.dir);
    let run = dccf(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        &node.listen.to_string(),
        "--dir",
        s(&node.dir),
    ]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["node.toml"]);
    assert!(
        snapshot(&node.dir) == before,
        "second init changed the directory\n{}",
        run.describe()
    );
}

#[test]
fn init_refuses_a_dir_with_leftover_identity_files_and_keeps_them() {
    // No node.toml, but a party card from somewhere else: init must not overwrite it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("party.toml"), "precious").expect("write");
    let before = snapshot(&dir);
    let (listen, _) = free_addrs();
    let run = dccf(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        &listen.to_string(),
        "--dir",
        s(&dir),
    ]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["party.toml"]);
    assert!(
        snapshot(&dir) == before,
        "init wrote into a directory it refused\n{}",
        run.describe()
    );
}

fn assert_init_rejects_admin(admin: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (listen, _) = free_addrs();
    // Once into a directory that does not exist, once into an existing empty one.
    let absent = tmp.path().join("absent");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    for dir in [&absent, &empty] {
        let run = dccf(&[
            "init",
            "--admin",
            admin,
            "--listen",
            &listen.to_string(),
            "--dir",
            s(dir),
        ]);
        let line = assert_one_line_error(&run);
        assert_mentions(&line, &["administration id", &format!("{admin:?}")]);
        if dir == &absent {
            assert!(!absent.exists(), "init created {}", absent.display());
        } else {
            assert!(
                snapshot(&empty).is_empty(),
                "init wrote into {}: {:?}",
                empty.display(),
                snapshot(&empty).keys()
            );
        }
    }
}

#[test]
fn init_rejects_lowercase_admin_and_writes_nothing() {
    assert_init_rejects_admin("nl");
}

#[test]
fn init_rejects_one_letter_admin_and_writes_nothing() {
    assert_init_rejects_admin("N");
}

#[test]
fn init_rejects_a_non_https_endpoint_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    let (listen, _) = free_addrs();
    let run = dccf(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        &listen.to_string(),
        "--endpoint",
        &format!("http://{listen}"),
        "--dir",
        s(&dir),
    ]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["endpoint"]);
    assert!(!dir.exists(), "init created {}", dir.display());
}

#[test]
fn init_rejects_a_listen_port_without_room_for_the_default_gateway_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    let run = dccf(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        "127.0.0.1:65500",
        "--dir",
        s(&dir),
    ]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["--gateway-listen"]);
    assert!(!dir.exists(), "init created {}", dir.display());
}

#[test]
fn init_that_fails_late_leaves_no_half_written_identity() {
    // `agreements` exists as a regular file, so the agreements directory cannot be created.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("agreements"), "not a directory").expect("write");
    let before = snapshot(&dir);
    let (listen, _) = free_addrs();
    let run = dccf(&[
        "init",
        "--admin",
        "NL",
        "--listen",
        &listen.to_string(),
        "--dir",
        s(&dir),
    ]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["agreements"]);
    assert!(
        snapshot(&dir) == before,
        "failed init left files behind: {:?}\n{}",
        snapshot(&dir).keys().collect::<Vec<_>>(),
        run.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// serve: configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn serve_with_a_missing_config_names_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("nowhere").join("node.toml");
    let run = dccf(&["serve", "--config", s(&config)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&config)]);
}

#[test]
fn serve_with_a_toml_syntax_error_names_the_config_and_line() {
    let node = init_node("NL");
    edit(&node.config(), "admin = \"NL\"", "admin = \"NL");
    let run = dccf(&["serve", "--config", s(&node.config())]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&node.config()), "line"]);
}

#[test]
fn serve_with_an_unknown_config_field_names_the_field() {
    let node = init_node("NL");
    edit(&node.config(), "admin = \"NL\"", "admn = \"NL\"");
    let run = dccf(&["serve", "--config", s(&node.config())]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&node.config()), "admn"]);
}

#[test]
fn serve_with_an_out_of_range_limit_names_the_field() {
    let node = init_node("NL");
    edit(
        &node.config(),
        "max_message_bytes = 4194304",
        "max_message_bytes = 10",
    );
    let run = dccf(&["serve", "--config", s(&node.config())]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&node.config()), "limits.max_message_bytes"]);
}

// ---------------------------------------------------------------------------------------------
// serve: key files and agreements
// ---------------------------------------------------------------------------------------------

#[test]
fn serve_refuses_a_key_file_readable_by_others_naming_it() {
    for key in SERVE_KEYS {
        let node = init_node("NL");
        let path = node.path(key);
        set_mode(&path, 0o644);
        let run = dccf(&["serve", "--config", s(&node.config())]);
        let line = assert_one_line_error(&run);
        assert_mentions(&line, &[s(&path), "permissions", "0644"]);
        assert_eq!(mode(&path), 0o644, "serve must not change modes itself");
    }
}

#[test]
fn serve_refuses_a_corrupt_key_file_naming_it() {
    for key in SERVE_KEYS {
        let node = init_node("NL");
        let path = node.path(key);
        std::fs::write(&path, b"garbage\n\xff\x00 not a key\n-----BEGIN nothing\n").expect("write");
        set_mode(&path, 0o600);
        let run = dccf(&["serve", "--config", s(&node.config())]);
        let line = assert_one_line_error(&run);
        assert_mentions(&line, &[s(&path)]);
    }
}

#[test]
fn serve_with_a_missing_key_file_names_it() {
    for key in SERVE_KEYS {
        let node = init_node("NL");
        let path = node.path(key);
        std::fs::remove_file(&path).expect("rm key");
        let run = dccf(&["serve", "--config", s(&node.config())]);
        let line = assert_one_line_error(&run);
        assert_mentions(&line, &[s(&path)]);
    }
}

#[test]
fn serve_with_a_malformed_agreement_names_the_agreement_file() {
    let cases: [(&str, &[u8]); 3] = [
        ("syntax.toml", b"id = \n"),
        ("schema.toml", b"id = \"only-an-id\"\n"),
        ("binary.toml", b"\xff\xfe\x00garbage"),
    ];
    for (name, contents) in cases {
        let node = init_node("NL");
        let path = node.path("agreements").join(name);
        std::fs::write(&path, contents).expect("write agreement");
        let run = dccf(&["serve", "--config", s(&node.config())]);
        let line = assert_one_line_error(&run);
        assert_mentions(&line, &[s(&path)]);
    }
}

#[test]
fn serve_on_an_occupied_port_names_the_address() {
    let node = init_node("NL");
    let Ok(_occupier) = TcpListener::bind(node.listen) else {
        panic!("cannot occupy {} for the test", node.listen);
    };
    let run = dccf(&["serve", "--config", s(&node.config())]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[&node.listen.to_string()]);
}

// ---------------------------------------------------------------------------------------------
// serve: lifecycle
// ---------------------------------------------------------------------------------------------

/// Starts `serve` for `node` and waits (up to [`SERVE_TIMEOUT`]) until its Exchange port accepts
/// TCP and, if `until_serving`, it has also reported `serving` on stderr. Fails the test if it exits
/// first.
fn start_serve(node: &Node, until_serving: bool) -> Running {
    let mut server = spawn(&["serve", "--config", s(&node.config())]);
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        let ready = (!until_serving || server.stderr.so_far().contains(" serving: "))
            && TcpStream::connect_timeout(&node.listen, Duration::from_millis(500)).is_ok();
        if ready {
            return server;
        }
        if server.has_exited() {
            let run = server.wait(PROCESS_TIMEOUT, "serve");
            panic!("serve exited before it was ready\n{}", run.describe());
        }
        if Instant::now() >= deadline {
            let run = {
                let _ = server.child.kill();
                server.wait(PROCESS_TIMEOUT, "serve")
            };
            panic!(
                "serve was not ready on {} within {SERVE_TIMEOUT:?}\n{}",
                node.listen,
                run.describe()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `server` and asserts that it exits 0, without panicking, within
/// [`SERVE_TIMEOUT`].
fn assert_sigterm_exits_0(server: Running) {
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped yet, so the pid
    // cannot have been reused.
    let rc = unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM) failed");
    let run = server.wait(SERVE_TIMEOUT, "serve after SIGTERM");
    assert!(
        run.status.success(),
        "serve should shut down gracefully and exit 0 on SIGTERM\n{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("panicked"),
        "serve panicked\n{}",
        run.describe()
    );
}

#[test]
fn serve_answers_the_gateway_and_exits_0_on_sigterm() {
    let node = init_node("NL");
    let server = start_serve(&node, true);
    // The node really serves: its back office can drain the (empty) inbox over mutual TLS.
    let inbox = dccf(&["inbox", "--config", s(&node.config())]);
    assert!(
        inbox.status.success() && inbox.stdout.is_empty(),
        "inbox of a fresh running node should succeed and print nothing\n{}",
        inbox.describe()
    );
    assert_sigterm_exits_0(server);
}

#[test]
fn serve_tells_systemd_when_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let node = init_node("NL");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(SERVE_TIMEOUT))
        .expect("timeout");
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = systemd.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let server = spawn_with_env(
        &["serve", "--config", s(&node.config())],
        &[("NOTIFY_SOCKET", s(&path)), ("WATCHDOG_USEC", "200000")],
    );
    // READY=1 comes once the node serves: its listeners accept by then.
    let ready = recv();
    assert!(
        ready.contains("READY=1\n") && ready.contains("STATUS=NL serving: exchange "),
        "{ready}"
    );
    assert!(TcpStream::connect_timeout(&node.listen, Duration::from_secs(5)).is_ok());
    // The watchdog, at half of WatchdogSec.
    assert_eq!(recv(), "WATCHDOG=1\n");
    // SIGTERM: STOPPING=1 before the node drains and exits.
    assert_sigterm_exits_0(server);
    let stopping = (0..50)
        .map(|_| recv())
        .find(|m| m != "WATCHDOG=1\n")
        .expect("a notification other than the watchdog");
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping}");
}

#[test]
fn serve_exits_0_on_sigterm_as_soon_as_its_port_accepts_tcp() {
    let node = init_node("NL");
    let server = start_serve(&node, false);
    assert_sigterm_exits_0(server);
}

// ---------------------------------------------------------------------------------------------
// send / inbox
// ---------------------------------------------------------------------------------------------

/// Runs `send` with a JSON file of `contents` and a config path that does not exist: an error
/// about the JSON file proves it was checked before the config was read or a connection tried.
fn send_bad_file(contents: &str) -> (String, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("message.json");
    std::fs::write(&file, contents).expect("write json");
    let config = tmp.path().join("never-read").join("node.toml");
    let run = dccf(&["send", "--config", s(&config), "--file", s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&file)]);
    assert!(
        !line.contains("never-read"),
        "the JSON file must be checked before the config is used:\n{line}"
    );
    (line, file)
}

#[test]
fn send_rejects_a_file_that_is_not_json_before_connecting() {
    send_bad_file("this is not json\n{");
}

#[test]
fn send_rejects_an_unknown_message_type_naming_it() {
    let (line, _) = send_bad_file(
        r#"{"agreement": "a", "to": "BR", "type": "dccf.v1.NoSuchMessage", "message": {}}"#,
    );
    assert_mentions(&line, &["dccf.v1.NoSuchMessage"]);
}

#[test]
fn send_rejects_an_unknown_field_in_the_message_naming_it() {
    let (line, _) = send_bad_file(
        r#"{"agreement": "a", "to": "BR", "type": "dccf.v1.PreArrivalDeclaration",
            "message": {"declarationReference": "X", "bogusField": 1}}"#,
    );
    assert_mentions(&line, &["bogusField"]);
}

#[test]
fn send_rejects_an_unknown_top_level_field_naming_it() {
    let (line, _) = send_bad_file(
        r#"{"agreement": "a", "to": "BR", "type": "dccf.v1.PreArrivalDeclaration",
            "message": {}, "priority": "high"}"#,
    );
    assert_mentions(&line, &["priority"]);
}

#[test]
fn send_with_a_missing_json_file_names_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("absent.json");
    let run = dccf(&["send", "--config", "node.toml", "--file", s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&file)]);
}

#[test]
fn send_to_a_node_that_is_not_running_fails_with_one_line() {
    let node = init_node("NL");
    let file = node.path("message.json");
    std::fs::write(
        &file,
        r#"{"agreement": "a", "to": "BR", "type": "dccf.v1.PreArrivalDeclaration",
            "message": {"declarationReference": "X"}}"#,
    )
    .expect("write json");
    let run = dccf(&["send", "--config", s(&node.config()), "--file", s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["send failed"]);
    assert!(
        run.stdout.is_empty(),
        "no receipt may be printed\n{}",
        run.describe()
    );
}

#[test]
fn inbox_of_a_node_that_is_not_running_fails_with_one_line() {
    let node = init_node("NL");
    let run = dccf(&["inbox", "--config", s(&node.config())]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["inbox failed"]);
    assert!(
        run.stdout.is_empty(),
        "no message may be printed\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// bench and usage
// ---------------------------------------------------------------------------------------------

#[test]
fn bench_envelope_json_prints_one_object_with_positive_figures() {
    let run = dccf(&["bench", "envelope", "--json", "--iterations", "20"]);
    assert!(run.status.success(), "bench failed\n{}", run.describe());
    let out = run.stdout.trim();
    assert!(
        !out.contains('\n'),
        "expected one JSON line\n{}",
        run.describe()
    );
    let value: serde_json::Value = serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", run.describe()));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("stdout is not a JSON object\n{}", run.describe()));
    for key in ["envelope_roundtrip_us", "crypto_floor_us", "ratio_to_floor"] {
        let figure = object
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{key} missing or not a number\n{}", run.describe()));
        assert!(
            figure.is_finite() && figure > 0.0,
            "{key} = {figure} should be a positive number"
        );
    }
}

#[test]
fn bench_ledger_json_prints_all_figures_as_positive_numbers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    let run = dccf(&[
        "bench",
        "ledger",
        "--json",
        "--entries",
        "3000",
        "--seconds",
        "0.3",
        "--appenders",
        "16",
        "--proofs",
        "40",
        "--dir",
        s(&work),
    ]);
    assert!(run.status.success(), "bench failed\n{}", run.describe());
    let out = run.stdout.trim();
    assert!(
        !out.contains('\n'),
        "expected one JSON line (the build child's report must not leak)\n{}",
        run.describe()
    );
    let value: serde_json::Value = serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", run.describe()));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("stdout is not a JSON object\n{}", run.describe()));
    for key in [
        "appends_per_s",
        "raw_sled_flush64_per_s",
        "ratio",
        "inclusion_proof_gen_us_1m",
        "inclusion_proof_verify_us_1m",
        "peak_rss_mb_1m",
        "disk_bytes_per_entry",
        "disk_blocks_bytes_per_entry",
    ] {
        let figure = object
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{key} missing or not a number\n{}", run.describe()));
        assert!(
            figure.is_finite() && figure > 0.0,
            "{key} = {figure} should be a positive number"
        );
    }
    assert_eq!(object.get("entries").and_then(|v| v.as_u64()), Some(3000));
    assert_eq!(
        object.get("proofs_verified"),
        object.get("proof_samples"),
        "every generated proof must verify\n{}",
        run.describe()
    );
    // With --dir the work directory is kept: the throughput stores and the built ledger.
    for sub in ["append", "raw-sled", "ledger"] {
        assert!(work.join(sub).is_dir(), "{sub} missing under --dir");
    }
}

#[test]
fn bench_ledger_refuses_a_non_empty_dir_and_hides_its_child_flag() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("keep.txt"), b"mine").expect("write");
    let run = dccf(&["bench", "ledger", "--entries", "10", "--dir", s(tmp.path())]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["--dir", "not empty"]);
    assert!(
        tmp.path().join("keep.txt").exists(),
        "nothing may be removed"
    );

    let help = dccf(&["bench", "ledger", "--help"]);
    assert!(help.status.success(), "{}", help.describe());
    for flag in ["--entries", "--appenders", "--seconds", "--dir", "--json"] {
        assert!(
            help.stdout.contains(flag),
            "{flag} missing from help\n{}",
            help.describe()
        );
    }
    assert!(
        !help.stdout.contains("child-append"),
        "the internal flag must be hidden\n{}",
        help.describe()
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let run = dccf(&["frobnicate"]);
    assert!(
        run.status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit\n{}",
        run.describe()
    );
    assert_mentions(&run.stderr, &["frobnicate"]);
}

#[test]
fn init_without_listen_is_a_usage_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nl");
    let run = dccf(&["init", "--admin", "NL", "--dir", s(&dir)]);
    assert!(
        run.status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit\n{}",
        run.describe()
    );
    assert_mentions(&run.stderr, &["--listen"]);
    assert!(!dir.exists(), "init created {}", dir.display());
}

#[test]
fn serve_without_config_is_a_usage_error() {
    let run = dccf(&["serve"]);
    assert!(
        run.status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit\n{}",
        run.describe()
    );
    assert_mentions(&run.stderr, &["--config"]);
}

#[test]
fn send_of_a_message_over_the_size_limit_names_the_file_and_the_limit() {
    let node = init_node("NL");
    let config = node.dir.join("node.toml");
    edit(
        &config,
        "max_message_bytes = 4194304",
        "max_message_bytes = 2048",
    );
    let file = node.dir.join("big.json");
    let big = serde_json::json!({
        "agreement": "nl-br-exchange",
        "to": "BR",
        "type": "dccf.v1.RiskAlert",
        "message": { "description": "x".repeat(4096) },
    });
    std::fs::write(&file, big.to_string()).expect("write");
    let run = dccf(&["send", "--config", s(&config), "--file", s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&file), "2048", "max_message_bytes"]);
}

#[test]
fn a_closed_stdout_is_a_one_line_error_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (listen, gateway) = free_addrs();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dccf-node"))
        .args(["init", "--admin", "NL", "--listen", &listen.to_string()])
        .args(["--gateway-listen", &gateway.to_string(), "--dir"])
        .arg(tmp.path().join("nl"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Close the read end before the party card is printed, like `| head -c 0`.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit must be non-zero: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("standard output"), "{stderr}");
}

/// An agreement between the administrations initialised in `nodes`, from their party cards.
fn agreement_from_cards(nodes: &[&Node]) -> String {
    let mut text = String::from(
        "id = \"pilot\"\nversion = 1\ntitle = \"Pilot\"\nvalid_from = 2020-01-01T00:00:00Z\nvalid_until = 2100-01-01T00:00:00Z\n",
    );
    for n in nodes {
        let card = std::fs::read_to_string(n.path("party.toml")).expect("party card");
        text.push_str("\n[[parties]]\n");
        text.push_str(&card);
    }
    text.push_str(
        "\n[[flows]]\nmessage_type = \"dccf.v1.RiskAlert\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"*\"]\n",
    );
    text
}

#[test]
fn agreement_sign_then_verify_makes_it_active_and_show_lists_the_flows() {
    let (nl, br) = (init_node("NL"), init_node("BR"));
    let file = nl.path("agreements/pilot.toml");
    std::fs::write(&file, agreement_from_cards(&[&nl, &br])).expect("write agreement");

    let run = dccf(&["agreement", "verify", s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["not signed by BR, NL"]);

    for node in [&nl, &br] {
        let run = dccf(&["agreement", "sign", "--config", s(&node.config()), s(&file)]);
        assert!(run.status.success(), "{}", run.describe());
    }
    let run = dccf(&["agreement", "verify", s(&file)]);
    assert!(run.status.success(), "{}", run.describe());
    assert!(run.stdout.contains("status  active"), "{}", run.describe());
    let run = dccf(&["agreement", "show", s(&file)]);
    assert!(
        run.stdout.contains("NL -> BR  dccf.v1.RiskAlert"),
        "{}",
        run.describe()
    );

    // Any edit after signing breaks the signatures, and verify names the file and the party.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("title = \"Pilot\"", "title = \"Pilot 2\"");
    std::fs::write(&file, text).unwrap();
    let run = dccf(&["agreement", "verify", s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &[s(&file), "does not verify"]);
}

#[test]
fn agreement_sign_refuses_a_non_party_and_a_card_with_other_keys() {
    let (nl, br, de) = (init_node("NL"), init_node("BR"), init_node("DE"));
    let file = nl.path("agreements/pilot.toml");
    std::fs::write(&file, agreement_from_cards(&[&nl, &br])).expect("write agreement");
    let run = dccf(&["agreement", "sign", "--config", s(&de.config()), s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["DE is not a party"]);

    // BR's card replaced by DE's keys under BR's name: BR's node must refuse to sign it.
    let de_card = std::fs::read_to_string(de.path("party.toml")).unwrap();
    let br_card = std::fs::read_to_string(br.path("party.toml")).unwrap();
    let de_key = de_card
        .lines()
        .find(|l| l.starts_with("signing_key"))
        .unwrap();
    let br_key = br_card
        .lines()
        .find(|l| l.starts_with("signing_key"))
        .unwrap();
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(br_key, de_key);
    std::fs::write(&file, text).unwrap();
    let run = dccf(&["agreement", "sign", "--config", s(&br.config()), s(&file)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["another signing key"]);
}

#[test]
fn agreement_new_fills_a_template_that_both_parties_can_sign() {
    let (nl, br) = (init_node("NL"), init_node("BR"));
    let out = nl.path("agreements/mra.toml");
    let parties = format!(
        "{},{}",
        s(&nl.path("party.toml")),
        s(&br.path("party.toml"))
    );
    let run = dccf(&[
        "agreement",
        "new",
        "--template",
        "aeo-mra",
        "--id",
        "nl-br-mra",
        "--parties",
        &parties,
        "--out",
        s(&out),
    ]);
    assert!(run.status.success(), "{}", run.describe());
    // Never overwrites.
    let again = dccf(&[
        "agreement",
        "new",
        "--template",
        "aeo-mra",
        "--id",
        "nl-br-mra",
        "--parties",
        &parties,
        "--out",
        s(&out),
    ]);
    assert_one_line_error(&again);
    for node in [&nl, &br] {
        let run = dccf(&["agreement", "sign", "--config", s(&node.config()), s(&out)]);
        assert!(run.status.success(), "{}", run.describe());
    }
    let run = dccf(&["agreement", "verify", s(&out)]);
    assert!(run.status.success(), "{}", run.describe());
    let run = dccf(&["agreement", "show", s(&out)]);
    assert!(
        run.stdout
            .contains("BR -> NL  dccf.v1.AeoStatusResponse  (fields: query_reference"),
        "{}",
        run.describe()
    );
    assert!(!run.stdout.contains("operator_name"), "{}", run.describe());
}

// ---------------------------------------------------------------------------------------------
// outbox
// ---------------------------------------------------------------------------------------------

#[test]
fn outbox_commands_talk_to_the_running_node_and_fail_in_one_line_when_it_is_down() {
    let node = init_node("NL");
    let config = node.config();
    // Not running: one line naming what failed.
    let run = dccf(&["outbox", "list", "--config", s(&config)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["outbox list failed"]);

    let server = start_serve(&node, true);
    let list = dccf(&["outbox", "list", "--config", s(&config)]);
    assert!(list.status.success(), "{}", list.describe());
    assert_eq!(list.stdout.trim(), "outbox empty", "{}", list.describe());
    let json = dccf(&["outbox", "list", "--json", "--config", s(&config)]);
    assert!(
        json.status.success() && json.stdout.trim().is_empty(),
        "{}",
        json.describe()
    );
    for (cmd, verb) in [("retry", "retrying"), ("cancel", "cancelled")] {
        let run = dccf(&[
            "outbox",
            cmd,
            "--config",
            s(&config),
            "01a20a2b-6783-7390-83ce-afd6929e224c",
        ]);
        assert!(run.status.success(), "{}", run.describe());
        assert!(
            run.stdout.starts_with(&format!("{verb} 0 of 1")),
            "{}",
            run.describe()
        );
    }
    // Ids are required; the limit is bounded (clap's usage errors, exit 2).
    let run = dccf(&["outbox", "retry", "--config", s(&config)]);
    assert!(
        !run.status.success() && run.stderr.contains("MESSAGE_IDS"),
        "{}",
        run.describe()
    );
    let run = dccf(&["outbox", "list", "--limit", "0", "--config", s(&config)]);
    assert!(
        !run.status.success() && run.stderr.contains("--limit"),
        "{}",
        run.describe()
    );
    assert_sigterm_exits_0(server);
}

#[test]
fn bench_delivery_json_runs_unary_and_baselines_between_two_node_processes() {
    // The bulk and latency phases need Gateway.SendStream; this run selects the others.
    let run = dccf(&[
        "bench",
        "delivery",
        "--json",
        "--duration",
        "0.5",
        "--phases",
        "unary,baselines",
        "--concurrency",
        "8",
        "--window",
        "64",
    ]);
    assert!(run.status.success(), "bench failed\n{}", run.describe());
    let out = run.stdout.trim();
    assert!(
        !out.contains('\n'),
        "expected one JSON line (child reports must not leak)\n{}",
        run.describe()
    );
    let value: serde_json::Value = serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", run.describe()));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("stdout is not a JSON object\n{}", run.describe()));
    // Every documented key is present; figures of phases that did not run are null.
    for key in [
        "bulk_msgs_per_s",
        "p50_ms_at_1000",
        "p99_ms_at_1000",
        "p999_ms_at_1000",
        "cpu_s_per_1000_msgs",
    ] {
        assert!(
            object.get(key).is_some_and(serde_json::Value::is_null),
            "{key} should be null without the bulk and latency phases\n{}",
            run.describe()
        );
    }
    for key in [
        "unary_msgs_per_s",
        "baseline_stream_msgs_per_s",
        "baseline_sled_records_per_s",
        "crypto_ceiling_per_s",
        "peak_rss_mb",
        "unary_ratio_to_ceiling",
        "payload_bytes",
    ] {
        let figure = object
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{key} missing or not a number\n{}", run.describe()));
        assert!(
            figure.is_finite() && figure > 0.0,
            "{key} = {figure} should be a positive number"
        );
    }
    let help = dccf(&["bench", "delivery", "--help"]);
    assert!(help.status.success(), "{}", help.describe());
    assert!(help.stdout.contains("--phases"), "{}", help.describe());
    assert!(
        !help.stdout.contains("--child"),
        "internal child flags must stay hidden\n{}",
        help.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// aeo
// ---------------------------------------------------------------------------------------------

#[test]
fn aeo_generate_writes_a_registry_that_imports_and_bad_files_change_nothing() {
    let node = init_node("BR");
    let config = node.config();
    let csv = node.path("registry.csv");
    let run = dccf(&["aeo", "generate", "--count", "200", "--out", s(&csv)]);
    assert!(run.status.success(), "{}", run.describe());
    assert!(
        run.stdout.contains("wrote 200 synthetic BR operators"),
        "{}",
        run.describe()
    );
    let text = std::fs::read_to_string(&csv).expect("registry written");
    assert!(text.starts_with("operator_id,tin,name,"), "{text:.80}");
    assert_eq!(text.lines().count(), 201);
    // Same seed, same file; JSON by extension.
    let json = node.path("registry.json");
    let run = dccf(&["aeo", "generate", "--count", "3", "--out", s(&json)]);
    assert!(run.status.success(), "{}", run.describe());
    assert!(
        std::fs::read_to_string(&json)
            .unwrap()
            .trim_start()
            .starts_with('[')
    );

    // Not running: one line.
    let run = dccf(&["aeo", "import", "--config", s(&config), s(&csv)]);
    assert_one_line_error(&run);

    let server = start_serve(&node, true);
    let run = dccf(&["aeo", "import", "--config", s(&config), s(&csv)]);
    assert!(run.status.success(), "{}", run.describe());
    assert!(
        run.stdout
            .contains("200 records, 200 changed, registry version 200"),
        "{}",
        run.describe()
    );
    // A bad line: refused naming line and field; the registry is unchanged.
    let bad = node.path("bad.csv");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[57] = lines[57].replacen(",BR,", ",Brazil,", 1);
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let run = dccf(&["aeo", "import", "--config", s(&config), s(&bad)]);
    let line = assert_one_line_error(&run);
    assert_mentions(&line, &["line 58, field country", "registry unchanged"]);
    let run = dccf(&["aeo", "mirrors", "--config", s(&config)]);
    assert!(run.status.success(), "{}", run.describe());
    assert!(
        run.stdout
            .contains("own registry: 200 operators, version 200"),
        "{}",
        run.describe()
    );
    // Status changes: a known operator, then unknown ones and bad statuses.
    let id = text
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let run = dccf(&[
        "aeo",
        "set-status",
        "--config",
        s(&config),
        &id,
        "suspended",
    ]);
    assert!(run.status.success(), "{}", run.describe());
    assert!(
        run.stdout.contains("SUSPENDED (registry version 201"),
        "{}",
        run.describe()
    );
    let run = dccf(&[
        "aeo",
        "set-status",
        "--config",
        s(&config),
        "BRAEOF9999999999",
        "revoked",
    ]);
    assert_mentions(
        &assert_one_line_error(&run),
        &["BRAEOF9999999999 is not in the registry"],
    );
    let run = dccf(&["aeo", "set-status", "--config", s(&config), &id, "asleep"]);
    assert_mentions(
        &assert_one_line_error(&run),
        &["expected valid, suspended or revoked"],
    );
    // A lookup at a partner there is no agreement with.
    let run = dccf(&[
        "aeo",
        "lookup",
        "--config",
        s(&config),
        "--partner",
        "NL",
        "NLAEOF1",
    ]);
    assert_mentions(&assert_one_line_error(&run), &["no mirror of NL"]);
    assert_sigterm_exits_0(server);
}

#[test]
fn aeo_usage_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dccf(&["aeo", "generate", "--count", "5", "--country", "brazil"]);
    assert_mentions(&assert_one_line_error(&run), &["--country"]);
    let run = dccf(&["aeo", "generate", "--count", "5", "--format", "xml"]);
    assert_mentions(&assert_one_line_error(&run), &["csv or json"]);
    let unknown = dir.path().join("registry.txt");
    std::fs::write(&unknown, "x").unwrap();
    let run = dccf(&["aeo", "import", "--config", "nonexistent.toml", s(&unknown)]);
    assert_mentions(&assert_one_line_error(&run), &["--format"]);
    let statement = dir.path().join("answer.json");
    std::fs::write(&statement, "{\"header\": \"AAAA\"}").unwrap();
    let key = "F3AfrUkpz+aWuJtp7FyoajUayvuTBl32cFJqDi8ZdcE=";
    let run = dccf(&["aeo", "verify", "--key", key, s(&statement)]);
    assert_mentions(&assert_one_line_error(&run), &["signature"]);
    let run = dccf(&["aeo", "verify", "--key", "nonsense", s(&statement)]);
    assert_mentions(&assert_one_line_error(&run), &["--key"]);
}

#[test]
fn bench_aeo_json_prints_every_documented_figure() {
    let run = spawn(&[
        "bench",
        "aeo",
        "--operators",
        "300",
        "--duration",
        "0.5",
        "--rate",
        "50",
        "--json",
    ])
    .wait(Duration::from_secs(240), "bench aeo");
    assert!(run.status.success(), "{}", run.describe());
    let line = run.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object");
    for key in [
        "mirror_lookups_per_s",
        "online_lookups_per_s",
        "online_p99_ms_at_500",
        "snapshot_sync_s_1m",
        "mirror_rss_mb_1m",
        "suspension_visible_ms",
    ] {
        let figure = v[key].as_f64();
        assert!(
            figure.is_some_and(|f| f > 0.0),
            "{key}: {figure:?} in {line}"
        );
    }
    let run = dccf(&["bench", "aeo", "--duration", "0", "--json"]);
    assert_mentions(&assert_one_line_error(&run), &["--duration"]);
}
