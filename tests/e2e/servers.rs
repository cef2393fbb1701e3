//! Real servers for the end-to-end tests: a distribution (OCI) registry and PostgreSQL.
//!
//! Each server is started at most once per test process (on first use) on a loopback port
//! and shared by the tests; it runs as a child of a dedicated thread that lives as long as
//! the process, with a parent-death signal, so it stops when the test process ends. A
//! missing binary fails the test with the command that installs it (never a skip).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// What installs every server binary these tests need (also run by `.ci/run`).
pub const INSTALL_HINT: &str = "run `./scripts/install-test-servers.sh` (apt-get install -y \
                                docker-registry postgresql-15 apache2-utils openssl)";

/// Longest wait for a server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Registry user and password of the authenticated registry.
pub const REGISTRY_USER: &str = "pusher";
/// Password of [`REGISTRY_USER`].
pub const REGISTRY_PASSWORD: &str = "s3cret-pass";

/// A running distribution registry.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Whether it requires htpasswd (bcrypt) basic auth.
    pub auth: bool,
    /// With TLS: the PEM file of the CA that issued its certificate (for 127.0.0.1).
    pub ca_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// A running PostgreSQL server with trust auth on loopback. It also accepts TLS, with a
/// server certificate for `localhost` (not for `127.0.0.1`) issued by a test CA.
pub struct Postgres {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// PEM file of the CA that issued the server certificate.
    pub ca_file: PathBuf,
    /// The running server process and how to start it again on the same data and port.
    server: std::sync::Mutex<(Child, PostgresArgs)>,
    _dir: tempfile::TempDir,
}

/// What `postgres` is started with, kept for [`Postgres::restart`].
struct PostgresArgs {
    data: PathBuf,
    socket: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    log_path: PathBuf,
    user: Option<(u32, u32)>,
}

fn postgres_command(port: u16, a: &PostgresArgs) -> Command {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&a.log_path)
        .expect("log file");
    let mut cmd = Command::new(pg_binary("postgres"));
    cmd.arg("-D")
        .arg(&a.data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&a.socket)
        .args([
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
            "-c",
            "ssl=on",
        ])
        .arg("-c")
        .arg(format!("ssl_cert_file={}", a.cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", a.key.display()))
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    cmd
}

fn pg_ready(port: u16) -> bool {
    Command::new(pg_binary("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Postgres {
    /// A libpq-style connection string for database `db` (created by [`Postgres::create_db`]).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A URL connection string for `db` on `host` (`localhost` or `127.0.0.1`) with extra
    /// query parameters, e.g. `sslmode=verify-full&sslrootcert=…`.
    pub fn url_with(&self, host: &str, db: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{params}", self.port)
    }

    /// Creates a fresh database, so each test has its own helm tables.
    pub fn create_db(&self, db: &str) {
        let psql = pg_binary("psql");
        let out = Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{db}\""))
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs one SQL statement in `db`: psql's unaligned output, or its error output.
    pub fn try_query(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(pg_binary("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-d", db, "-c", sql])
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Runs one SQL statement in `db` and returns psql's unaligned output.
    pub fn query(&self, db: &str, sql: &str) -> String {
        self.try_query(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// Stops the server (fast shutdown: every backend is terminated, SIGINT) and starts it
    /// again on the same data directory and port. Only for a server of its own
    /// ([`postgres_restartable`]): the shared one serves tests running in parallel.
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// Stops the server (fast shutdown) until [`Postgres::start`]; its port refuses
    /// connections meanwhile.
    pub fn stop(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        let (child, _) = &mut *server;
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling a child this process started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        child.wait().expect("wait for postgres to stop");
    }

    /// Starts a stopped server again on the same data directory and port.
    pub fn start(&self) {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        let (child, args) = &mut *server;
        if child.try_wait().ok().flatten().is_none() {
            return;
        }
        let mut next = spawn_long_lived(postgres_command(self.port, args), args.user);
        {
            let mut stop = STOP_AT_EXIT.lock().expect("stop list");
            for entry in stop.iter_mut() {
                if entry.0 == child.id() {
                    entry.0 = next.id();
                }
            }
        }
        let port = self.port;
        wait_ready("postgres (restarted)", &mut next, &args.log_path, || {
            pg_ready(port)
        })
        .expect("postgres restarts");
        *child = next;
    }
}

/// Makes a test CA and a server certificate for `san` (e.g. `DNS:localhost`) (EC P-256) in `dir` with the openssl
/// CLI; returns (CA cert, server cert, server key).
fn make_certificates(dir: &Path, san: &str) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = require_binary("openssl", &[]);
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=guarded-upgrade test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(dir.join("san.ext"), format!("subjectAltName={san}\n")).expect("write ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod key");
    (dir.join("ca.crt"), dir.join("server.crt"), key)
}

/// The shared anonymous registry.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| start_with_retries("docker-registry", || start_registry(false, false)))
}

/// The shared registry requiring [`REGISTRY_USER`]/[`REGISTRY_PASSWORD`].
pub fn auth_registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        start_with_retries("docker-registry (htpasswd)", || start_registry(true, false))
    })
}

/// The shared anonymous registry serving HTTPS with a certificate from a test CA.
pub fn tls_registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| start_with_retries("docker-registry (TLS)", || start_registry(false, true)))
}

/// The shared PostgreSQL server.
pub fn postgres() -> &'static Postgres {
    static P: OnceLock<Postgres> = OnceLock::new();
    P.get_or_init(|| start_with_retries("postgres", start_postgres))
}

/// A PostgreSQL server of its own that tests may restart ([`Postgres::restart`]).
pub fn postgres_restartable() -> &'static Postgres {
    static P: OnceLock<Postgres> = OnceLock::new();
    P.get_or_init(|| start_with_retries("postgres", start_postgres))
}

/// A loopback address where nothing listens (a port that was free a moment ago).
pub fn dead_address() -> String {
    let port = free_port();
    format!("127.0.0.1:{port}")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Finds a server binary on PATH or in `extra` directories, else fails with the hint.
fn require_binary(name: &str, extra: &[PathBuf]) -> PathBuf {
    if let Ok(p) = which::which(name) {
        return p;
    }
    extra
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed; {INSTALL_HINT}"))
}

/// PostgreSQL binaries: Debian keeps them in /usr/lib/postgresql/<major>/bin, off PATH.
fn pg_binary(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    require_binary(name, &dirs)
}

/// Servers to stop at process exit: pid, the signal that shuts it down quickly, and the
/// directory to remove afterwards.
static STOP_AT_EXIT: std::sync::Mutex<Vec<(u32, i32, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Registers `pid` to be stopped (with `signal`, then waited for up to 5 s) and `dir` to be
/// removed when the test process exits. Statics are never dropped, so an `atexit` hook does
/// it; the parent-death signal is the fallback if the process is killed.
fn stop_at_exit(pid: u32, signal: i32, dir: &Path) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    extern "C" fn stop_all() {
        let servers = std::mem::take(&mut *STOP_AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
        for (pid, signal, _) in &servers {
            // SAFETY: signalling a child this process started.
            unsafe { libc::kill(*pid as libc::pid_t, *signal) };
        }
        for (pid, _, dir) in &servers {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let mut status = 0;
                // SAFETY: reaping our own child without blocking.
                let done =
                    unsafe { libc::waitpid(*pid as libc::pid_t, &mut status, libc::WNOHANG) };
                if done != 0 || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    HOOK.call_once(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(stop_all) };
    });
    STOP_AT_EXIT
        .lock()
        .expect("stop list")
        .push((pid, signal, dir.to_path_buf()));
}

/// Spawns every server from one thread that never exits: the parent-death signal fires
/// when the spawning *thread* ends, and test threads end after each test.
fn spawn_long_lived(mut cmd: Command, user: Option<(u32, u32)>) -> Child {
    type Job = (
        Command,
        Option<(u32, u32)>,
        mpsc::Sender<std::io::Result<Child>>,
    );
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, user, reply) in rx {
                let _ = reply.send(spawn_with_deathsig(&mut cmd, user));
            }
            // The channel's sender lives in a static: this loop never ends.
        });
        std::sync::Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    cmd.stdin(Stdio::null());
    sender
        .lock()
        .expect("spawner")
        .send((cmd, user, tx))
        .expect("spawner thread alive");
    rx.recv().expect("spawner reply").expect("spawn server")
}

fn spawn_with_deathsig(cmd: &mut Command, user: Option<(u32, u32)>) -> std::io::Result<Child> {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user {
                // Drop root first: a credential change clears the parent-death signal.
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Waits until `ready()` holds, the child is still running and the time is not up.
fn wait_ready(
    what: &str,
    child: &mut Child,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before accepting connections:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if start.elapsed() > START_TIMEOUT {
            // Hung, not lost a port race: no retry.
            panic!(
                "{what} did not accept connections within {START_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /v2/` status code, or None when nothing answers.
fn http_status(host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&host.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Starts a server on a free port, again (at most 3 times) when it exits early: another
/// process may take the port between choosing it and the server binding it.
fn start_with_retries<T>(what: &str, start: impl Fn() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..3 {
        match start() {
            Ok(server) => return server,
            Err(e) => last = e,
        }
    }
    panic!("{what} did not start in 3 attempts; last: {last}")
}

fn start_registry(auth: bool, tls: bool) -> Result<Registry, String> {
    let bin = require_binary("docker-registry", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let host = format!("127.0.0.1:{}", free_port());
    let mut config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: {host}\n",
        dir.path().join("data").display()
    );
    let ca_file = if tls {
        let tls_dir = dir.path().join("tls");
        std::fs::create_dir(&tls_dir).expect("mkdir tls");
        let (ca, cert, key) = make_certificates(&tls_dir, "IP:127.0.0.1");
        config.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ));
        Some(ca)
    } else {
        None
    };
    if auth {
        let htpasswd = require_binary("htpasswd", &[]);
        let out = Command::new(htpasswd)
            .args(["-Bbn", REGISTRY_USER, REGISTRY_PASSWORD])
            .output()
            .expect("run htpasswd");
        assert!(out.status.success(), "htpasswd failed");
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, &out.stdout).expect("write htpasswd");
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: guarded-upgrade-tests\n    path: {}\n",
            file.display()
        ));
    }
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).expect("write registry config");
    let log_path = dir.path().join("registry.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg(&config_path)
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let mut child = spawn_long_lived(cmd, None);
    stop_at_exit(child.id(), libc::SIGTERM, dir.path());
    // Plain HTTP to a TLS port: Go answers 400 ("client sent an HTTP request to an HTTPS
    // server"), which is enough to know it listens.
    let want = match (tls, auth) {
        (true, _) => 400,
        (false, true) => 401,
        (false, false) => 200,
    };
    wait_ready("docker-registry", &mut child, &log_path, || {
        http_status(&host, "/v2/") == Some(want)
    })?;
    Ok(Registry {
        host,
        auth,
        ca_file,
        _dir: dir,
    })
}

/// The unprivileged user PostgreSQL runs as when the tests run as root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls reading process and passwd data.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        for name in [c"postgres", c"nobody"] {
            let pw = libc::getpwnam(name.as_ptr());
            if !pw.is_null() {
                return Some(((*pw).pw_uid, (*pw).pw_gid));
            }
        }
    }
    panic!("running as root and neither a `postgres` nor a `nobody` user exists");
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

fn start_postgres() -> Result<Postgres, String> {
    let initdb = pg_binary("initdb");
    pg_binary("postgres");
    pg_binary("psql");
    let dir = tempfile::tempdir().expect("tempdir");
    let user = server_user();
    let data = dir.path().join("data");
    let socket = dir.path().join("socket");
    std::fs::create_dir(&socket).expect("mkdir socket");
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).expect("mkdir tls");
    let (ca_file, cert, key) = make_certificates(&tls, "DNS:localhost");
    if let Some((uid, gid)) = user {
        chown_tree(dir.path(), uid, gid);
    }
    let log_path = dir.path().join("postgres.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    if let Some((uid, gid)) = user {
        chown_tree(&log_path, uid, gid);
    }
    let mut init = Command::new(initdb);
    init.args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
        "-D",
    ])
    .arg(&data)
    .stdout(log.try_clone().expect("log"))
    .stderr(log.try_clone().expect("log"));
    let status = spawn_with_deathsig(&mut init, user)
        .expect("start initdb")
        .wait()
        .expect("wait initdb");
    assert!(
        status.success(),
        "initdb failed ({status}):\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let port = free_port();
    let args = PostgresArgs {
        data,
        socket,
        cert,
        key,
        log_path,
        user,
    };
    let mut child = spawn_long_lived(postgres_command(port, &args), user);
    // SIGINT: PostgreSQL's fast shutdown (no waiting for clients).
    stop_at_exit(child.id(), libc::SIGINT, dir.path());
    wait_ready("postgres", &mut child, &args.log_path, || pg_ready(port))?;
    Ok(Postgres {
        port,
        ca_file,
        server: std::sync::Mutex::new((child, args)),
        _dir: dir,
    })
}
