//! A real Kubernetes control plane for the end-to-end tests: etcd and kube-apiserver built
//! from Go modules by `scripts/install-kube.sh`, started once per test process on loopback.
//!
//! - TLS with a generated CA, static token authentication (an admin plus restricted users),
//!   client-certificate authentication, `--authorization-mode=RBAC`, the default admission
//!   plugins (ValidatingAdmissionPolicy included) and an audit log tests read back.
//! - Several API servers share one etcd, each under its own key prefix: a test leases one
//!   server exclusively ([`cluster`]), finds it empty (every namespace but the system ones
//!   removed, the cluster-scoped test objects deleted) and hands it back when the lease drops.
//!   So tests keep their fixed namespace names and still run in parallel.
//! - The processes die with the test process (`PR_SET_PDEATHSIG` from a thread that lives as
//!   long as the process), even when it is killed.
//!
//! - A server runs no controllers ([`cluster`]: nothing reconciles, a Deployment never gets
//!   a ReplicaSet, a hook Job never completes), or, on request
//!   ([`cluster_with_controllers`]), kube-controller-manager, kube-scheduler and kwok (one
//!   fake node) with identities of their own (see `controllers`): Deployments roll out, pods
//!   become Ready, Jobs complete, and a pod can be made to fail on purpose
//!   ([`FAIL_LABEL`], [`NEVER_READY_LABEL`]).

mod admin;
mod audit;
mod controllers;
mod pki;

pub use audit::AuditEvent;
pub use controllers::{FAIL_LABEL, NEVER_READY_LABEL, NODE_NAME};
pub use pki::ClientCert;

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use admin::Admin;

/// Restricted users with a static token each and no rights until a test grants them some.
pub const RESTRICTED_USERS: &[&str] = &["alice", "bob", "carol", "dave"];

/// The admin user of the kubeconfig tests and helm use (group `system:masters`).
pub const ADMIN_USER: &str = "admin";

/// Namespaces that belong to the server and are never emptied.
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// How long startup may take before the test bed gives up (a cold start on a busy 2-core
/// machine takes seconds; minutes mean something is broken).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The directory holding `etcd`, `kube-apiserver` and `kubectl`: `$GU_KUBE_BIN`, else the
/// cache `scripts/install-kube.sh` builds into. Panics, naming the script, when missing.
pub fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("GU_KUBE_BIN").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => cache_dir().join(kubernetes_version()),
    };
    for bin in ["etcd", "kube-apiserver", "kubectl"] {
        if !dir.join(bin).is_file() {
            panic!(
                "{bin} not found in {}; run scripts/install-kube.sh (it builds the control plane \
                 from testbed/kube/go.mod)",
                dir.display()
            );
        }
    }
    dir
}

/// The built kubectl.
pub fn kubectl() -> PathBuf {
    bin_dir().join("kubectl")
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GU_KUBE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("guarded-upgrade").join("kube")
}

/// The Kubernetes release pinned in `testbed/kube/go.mod` (one source of truth for it).
pub fn kubernetes_version() -> String {
    let go_mod = Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/go.mod");
    let text = std::fs::read_to_string(&go_mod)
        .unwrap_or_else(|e| panic!("read {}: {e}", go_mod.display()));
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("k8s.io/kubernetes "))
        // `v1.37.2 // indirect`: the version is the first word.
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{} does not require k8s.io/kubernetes", go_mod.display()))
}

/// Runs closures on one thread that lives as long as the process, so children started there
/// with `PR_SET_PDEATHSIG` die with the process and not with the test thread that asked.
struct Keeper {
    jobs: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl Keeper {
    fn new() -> Keeper {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("kube-testbed-keeper".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the keeper thread");
        Keeper {
            jobs: Mutex::new(tx),
        }
    }

    /// Spawns `cmd` on the keeper thread, its stdout and stderr appended to `log`.
    fn spawn(&self, mut cmd: Command, log: &Path) -> std::io::Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Box::new(move || {
                let _ = tx.send(cmd.spawn());
            }))
            .expect("keeper thread alive");
        rx.recv().expect("keeper thread answers")
    }
}

/// A running process of the control plane and what it takes to start it again.
struct Proc {
    name: String,
    cmd: fn(&Plane, usize) -> Command,
    index: usize,
    child: Option<Child>,
}

/// The control plane of this test process.
pub struct Plane {
    dir: tempfile::TempDir,
    pki: pki::Pki,
    keeper: Keeper,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    servers: Vec<ServerInfo>,
    procs: Mutex<Vec<Proc>>,
    free: Mutex<Vec<usize>>,
    freed: Condvar,
    /// Per API server: whether its controllers run (changed only by the test leasing it).
    controlled: Vec<AtomicBool>,
    /// Per API server: how far its audit log was read by the last reset.
    restarted_at: Vec<Mutex<u64>>,
    admin_token: String,
    testbed_token: String,
    user_tokens: Vec<(String, String)>,
}

struct ServerInfo {
    port: u16,
    audit_log: PathBuf,
    kubeconfig: PathBuf,
}

static PLANE: OnceLock<Result<Plane, String>> = OnceLock::new();

/// The plane's directory, removed at process exit (the plane itself is never dropped).
static PLANE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_plane_dir() {
    if let Some(dir) = PLANE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The control plane, started on first use (once per process). Panics with the failing
/// binary and its last log lines when it cannot start.
pub fn plane() -> &'static Plane {
    match PLANE.get_or_init(Plane::start) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Leases one API server of the process's control plane for a test: waits for a free one,
/// empties it, and gives it back when the returned [`Cluster`] is dropped. No controllers
/// run against it: nothing reconciles (a hook Job never completes, a Deployment never gets
/// a ReplicaSet), which some tests rely on to keep helm busy.
pub fn cluster() -> Cluster {
    plane().lease(false)
}

/// Like [`cluster`], with the cluster's controllers running against the server:
/// kube-controller-manager, kube-scheduler and kwok with its fake node [`NODE_NAME`]
/// (started on the first such lease of a server, then kept until a plain [`cluster`] lease
/// takes that server). Deployments roll out, pods become Ready, Jobs complete; a pod
/// template labelled [`FAIL_LABEL`] or [`NEVER_READY_LABEL`] fails on purpose. Panics, naming
/// the binary and showing its last log lines, when they cannot start.
pub fn cluster_with_controllers() -> Cluster {
    plane().lease(true)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    let f = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    f.expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The number of API servers a test binary asked for with [`use_servers`].
static SERVERS: OnceLock<usize> = OnceLock::new();

/// Asks for `n` API servers (at least 1) instead of `GU_KUBE_SERVERS` (default 3), before the
/// plane starts: a test binary that kills etcd or an API server (`tests/faults`) needs a
/// plane of its own and no more servers than it uses. Panics when the plane has already
/// started with another count.
pub fn use_servers(n: usize) {
    let n = n.max(1);
    let set = *SERVERS.get_or_init(|| n);
    let started = match PLANE.get() {
        Some(Ok(p)) => p.servers.len(),
        _ => n,
    };
    assert!(
        set == n && started == n,
        "kube-testbed: use_servers({n}) after the plane was set up with {set} (started: {started})"
    );
}

fn server_count() -> usize {
    if let Some(n) = SERVERS.get() {
        return *n;
    }
    std::env::var("GU_KUBE_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

impl Plane {
    fn start() -> Result<Plane, String> {
        bin_dir(); // fail early, naming the install script
        let dir = tempfile::Builder::new()
            .prefix("kube-testbed-")
            .tempdir()
            .map_err(|e| format!("kube-testbed: tempdir: {e}"))?;
        if PLANE_DIR.set(dir.path().to_path_buf()).is_ok() {
            // SAFETY: registers a plain extern "C" function once.
            unsafe { libc::atexit(remove_plane_dir) };
        }
        let pki = pki::Pki::new();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text)
                .map_err(|e| format!("kube-testbed: write {name}: {e}"))
        };
        write("ca.crt", &pki.ca_pem)?;
        let (cert, key) = pki.serving_cert();
        write("serving.crt", &cert)?;
        write("serving.key", &key)?;
        let (sa_key, sa_pub) = pki::signing_key_pem();
        write("sa.key", &sa_key)?;
        write("sa.pub", &sa_pub)?;
        write("audit-policy.yaml", audit::POLICY)?;
        let admin_token = random_token();
        let testbed_token = random_token();
        let user_tokens: Vec<(String, String)> = RESTRICTED_USERS
            .iter()
            .map(|u| (u.to_string(), random_token()))
            .collect();
        let mut tokens = format!(
            "{testbed_token},kube-testbed,kube-testbed,\"system:masters\"\n\
             {admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"
        );
        for (user, token) in &user_tokens {
            tokens.push_str(&format!("{token},{user},{user},\"testers\"\n"));
        }
        write("tokens.csv", &tokens)?;

        let n = server_count();
        let servers: Vec<ServerInfo> = (0..n)
            .map(|i| ServerInfo {
                port: free_port(),
                audit_log: dir.path().join(format!("audit-{i}.log")),
                kubeconfig: dir.path().join(format!("kubeconfig-{i}")),
            })
            .collect();
        let plane = Plane {
            keeper: Keeper::new(),
            etcd_client_port: free_port(),
            etcd_peer_port: free_port(),
            servers,
            procs: Mutex::new(Vec::new()),
            free: Mutex::new((0..n).rev().collect()),
            controlled: (0..n).map(|_| AtomicBool::new(false)).collect(),
            restarted_at: (0..n).map(|_| Mutex::new(0)).collect(),
            freed: Condvar::new(),
            admin_token,
            testbed_token,
            user_tokens,
            pki,
            dir,
        };
        for (i, s) in plane.servers.iter().enumerate() {
            let kc = plane.kubeconfig_text(i, ADMIN_USER, &plane.admin_token, None);
            std::fs::write(&s.kubeconfig, kc).map_err(|e| format!("kube-testbed: {e}"))?;
        }
        plane.launch("etcd", etcd_command, 0)?;
        plane.wait_etcd()?;
        for i in 0..n {
            plane.launch("kube-apiserver", apiserver_command, i)?;
        }
        for i in 0..n {
            plane.wait_apiserver(i)?;
        }
        Ok(plane)
    }

    fn launch(
        &self,
        name: &str,
        cmd: fn(&Plane, usize) -> Command,
        index: usize,
    ) -> Result<(), String> {
        let log = self.dir.path().join(format!("{name}-{index}.log"));
        let child = self
            .keeper
            .spawn(cmd(self, index), &log)
            .map_err(|e| format!("kube-testbed: start {name}: {e}"))?;
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs.retain(|p| !(p.name == name && p.index == index));
        procs.push(Proc {
            name: name.to_string(),
            cmd,
            index,
            child: Some(child),
        });
        Ok(())
    }

    fn log_tail(&self, name: &str, index: usize) -> String {
        let log = self.dir.path().join(format!("{name}-{index}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// Fails with the binary's name and last log lines when it exited or never got ready.
    fn startup_failure(&self, name: &str, index: usize, what: &str) -> String {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let status = procs
            .iter_mut()
            .find(|p| p.name == name && p.index == index)
            .and_then(|p| p.child.as_mut())
            .and_then(|c| c.try_wait().ok().flatten())
            .map(|s| format!("exited ({s})"))
            .unwrap_or_else(|| "still running".to_string());
        format!(
            "kube-testbed: {name} {what} ({status}); its last log lines:\n{}",
            self.log_tail(name, index)
        )
    }

    fn exited(&self, name: &str, index: usize) -> bool {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .iter_mut()
            .find(|p| p.name == name && p.index == index)
            .and_then(|p| p.child.as_mut())
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true)
    }

    fn wait_etcd(&self) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}/health", self.etcd_client_port);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut r) = agent.get(&url).call() {
                if r.status() == 200
                    && r.body_mut()
                        .read_to_string()
                        .is_ok_and(|b| b.contains("\"true\""))
                {
                    return Ok(());
                }
            }
            if self.exited("etcd", 0) {
                return Err(self.startup_failure("etcd", 0, "exited before it was healthy"));
            }
            if Instant::now() > deadline {
                return Err(self.startup_failure(
                    "etcd",
                    0,
                    &format!("was not healthy at {url} within {START_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_apiserver(&self, i: usize) -> Result<(), String> {
        let admin = self.testbed_admin(i);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok((200, _)) = admin.try_send("GET", "/readyz", None) {
                return Ok(());
            }
            if self.exited("kube-apiserver", i) {
                return Err(self.startup_failure(
                    "kube-apiserver",
                    i,
                    "exited before /readyz answered 200",
                ));
            }
            if Instant::now() > deadline {
                return Err(self.startup_failure(
                    "kube-apiserver",
                    i,
                    &format!("did not answer /readyz with 200 within {START_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.servers[i].port)
    }

    fn testbed_admin(&self, i: usize) -> Admin {
        Admin::new(&self.url(i), &self.pki.ca_pem, &self.testbed_token)
    }

    fn kubeconfig_text(
        &self,
        i: usize,
        user: &str,
        token: &str,
        namespace: Option<&str>,
    ) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.pki.ca_pem);
        let ns = namespace
            .map(|n| format!("\n    namespace: {n}"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {ca}\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    \
             user: {user}{ns}\ncurrent-context: testbed\nusers:\n- name: {user}\n  user:\n    token: {token}\n\
             preferences: {{}}\n",
            self.url(i)
        )
    }

    /// Leases a free server, preferring one already in the wanted mode (with or without
    /// controllers) so that controllers are started or stopped as rarely as possible.
    /// A kubeconfig for server `i` authenticating with a client certificate.
    fn kubeconfig_cert_text(&self, i: usize, user: &str, cert: &ClientCert) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    \
             user: {user}\ncurrent-context: testbed\nusers:\n- name: {user}\n  user:\n    \
             client-certificate-data: {}\n    client-key-data: {}\npreferences: {{}}\n",
            self.url(i),
            b64(&self.pki.ca_pem),
            b64(&cert.cert_pem),
            b64(&cert.key_pem),
        )
    }

    fn lease(&'static self, controllers: bool) -> Cluster {
        let index = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let matching = free
                    .iter()
                    .rposition(|&i| self.controlled[i].load(Ordering::SeqCst) == controllers);
                if let Some(at) = matching.or_else(|| free.len().checked_sub(1)) {
                    break free.remove(at);
                }
                free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
            }
        };
        let cluster = Cluster {
            plane: self,
            index,
            admin: self.testbed_admin(index),
            audit_mark: Mutex::new(0),
            dir: tempfile::Builder::new()
                .prefix("kube-testbed-lease-")
                .tempdir()
                .expect("tempdir"),
        };
        let running = self.controlled[index].load(Ordering::SeqCst);
        if running && !controllers {
            // Emptied while the controllers still run (they delete what depends on what is
            // deleted), then stopped: nothing reconciles during the test.
            cluster.reset();
            self.stop_controllers(index);
            self.controlled[index].store(false, Ordering::SeqCst);
        } else {
            cluster.reset();
        }
        if controllers && !running {
            if let Err(e) = self.start_controllers(index) {
                panic!("{e}");
            }
            self.controlled[index].store(true, Ordering::SeqCst);
        }
        cluster.clear_requests();
        cluster
    }
}

/// `kubectl rollout status`'s rule for a Deployment.
fn rollout_complete(d: &Value) -> bool {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let spec = n(&d["spec"]["replicas"]);
    let st = &d["status"];
    n(&st["observedGeneration"]) >= n(&d["metadata"]["generation"])
        && n(&st["updatedReplicas"]) == spec
        && n(&st["replicas"]) == spec
        && n(&st["availableReplicas"]) == spec
}

fn etcd_command(plane: &Plane, _: usize) -> Command {
    let data = plane.dir.path().join("etcd-data");
    let client = format!("http://127.0.0.1:{}", plane.etcd_client_port);
    let peer = format!("http://127.0.0.1:{}", plane.etcd_peer_port);
    let mut cmd = Command::new(bin_dir().join("etcd"));
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["--name", "default"])
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .args(["--log-level", "warn"]);
    // Benchmarks keep etcd's fsync (GU_KUBE_FSYNC=1): realistic write costs.
    if std::env::var("GU_KUBE_FSYNC").as_deref() != Ok("1") {
        cmd.arg("--unsafe-no-fsync");
    }
    cmd
}

fn apiserver_command(plane: &Plane, i: usize) -> Command {
    let d = plane.dir.path();
    let s = &plane.servers[i];
    let url = plane.url(i);
    let mut cmd = Command::new(bin_dir().join("kube-apiserver"));
    cmd.arg(format!(
        "--etcd-servers=http://127.0.0.1:{}",
        plane.etcd_client_port
    ))
    .arg(format!("--etcd-prefix=/registry-{i}"))
    .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
    .arg(format!("--secure-port={}", s.port))
    .arg(format!(
        "--cert-dir={}",
        d.join(format!("certs-{i}")).display()
    ))
    .arg(format!(
        "--tls-cert-file={}",
        d.join("serving.crt").display()
    ))
    .arg(format!(
        "--tls-private-key-file={}",
        d.join("serving.key").display()
    ))
    .arg(format!("--client-ca-file={}", d.join("ca.crt").display()))
    .arg(format!(
        "--token-auth-file={}",
        d.join("tokens.csv").display()
    ))
    .arg("--authorization-mode=RBAC")
    .arg("--service-cluster-ip-range=10.0.0.0/24")
    .arg(format!("--service-account-issuer={url}"))
    .arg(format!(
        "--service-account-key-file={}",
        d.join("sa.pub").display()
    ))
    .arg(format!(
        "--service-account-signing-key-file={}",
        d.join("sa.key").display()
    ))
    .arg("--endpoint-reconciler-type=none")
    .arg(format!("--audit-log-path={}", s.audit_log.display()))
    .arg(format!(
        "--audit-policy-file={}",
        d.join("audit-policy.yaml").display()
    ))
    // Blocking: an event is in the file before the response is sent, so a test reads
    // everything a finished command did.
    .arg("--audit-log-mode=blocking")
    .arg("--profiling=false")
    .arg("--v=1");
    cmd
}

/// One API server leased by one test: empty when leased, handed back when dropped.
pub struct Cluster {
    plane: &'static Plane,
    index: usize,
    admin: Admin,
    audit_mark: Mutex<u64>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut free = self.plane.free.lock().unwrap_or_else(|p| p.into_inner());
        free.push(self.index);
        self.plane.freed.notify_one();
    }
}

impl Cluster {
    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.plane.url(self.index)
    }

    /// The port the API server listens on.
    pub fn port(&self) -> u16 {
        self.plane.servers[self.index].port
    }

    /// The CA certificate (PEM) that signed the serving certificate and client certificates.
    pub fn ca_pem(&self) -> &str {
        &self.plane.pki.ca_pem
    }

    /// A file holding [`Cluster::ca_pem`].
    pub fn ca_file(&self) -> PathBuf {
        self.plane.dir.path().join("ca.crt")
    }

    /// The admin kubeconfig: context and cluster `testbed`, user `admin` (system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.plane.servers[self.index].kubeconfig
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.plane.admin_token
    }

    /// The bearer token of one of [`RESTRICTED_USERS`].
    pub fn token(&self, user: &str) -> &str {
        self.plane
            .user_tokens
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no restricted user {user:?} in {RESTRICTED_USERS:?}"))
    }

    /// A kubeconfig (in the lease's own directory) for a restricted user's token, with an
    /// optional default namespace.
    pub fn kubeconfig_for(&self, user: &str, namespace: Option<&str>) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{user}-{}", namespace.unwrap_or("none")));
        let text = self
            .plane
            .kubeconfig_text(self.index, user, self.token(user), namespace);
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// A client certificate this server authenticates as `user` in `groups`.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> ClientCert {
        self.plane.pki.client_cert(user, groups)
    }

    /// A client certificate for `user` in `groups` signed for a given private key
    /// (PKCS#8 PEM; RSA works too); its `key_pem` is that key.
    pub fn client_cert_with_key(
        &self,
        user: &str,
        groups: &[&str],
        key_pkcs8_pem: &str,
    ) -> ClientCert {
        self.plane
            .pki
            .client_cert_with_key(user, groups, key_pkcs8_pem)
    }

    /// Creates a namespace unless it exists.
    pub fn create_namespace(&self, name: &str) {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match self.admin.send("POST", "/api/v1/namespaces", Some(&body)) {
            (201 | 409, _) => {}
            (code, v) => panic!("kube-testbed: create namespace {name}: {code} {v}"),
        }
    }

    /// One object by resource plural (`secrets`, `leases`, `namespaces`, ...), None if absent.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.admin
            .get(&admin::path(resource, namespace, Some(name)))
    }

    /// Every object of a resource in one namespace (all namespaces with None).
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let path = match namespace {
            Some(_) => admin::path(resource, namespace, None),
            None => {
                let k = admin::kind_of(resource);
                format!("{}/{}", k.prefix, k.plural)
            }
        };
        self.admin
            .get(&path)
            .and_then(|v| v.get("items").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }

    /// Creates `obj`, or replaces it when it exists (the stored resourceVersion is used, so
    /// the write is unconditional). Returns the stored object. Panics when refused.
    pub fn put_object(&self, resource: &str, mut obj: Value) -> Value {
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_string();
        let namespaced = admin::kind_of(resource).namespaced;
        let ns = namespaced.then(|| {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        });
        if let Some(ns) = &ns {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let one = admin::path(resource, ns.as_deref(), Some(&name));
        let (code, v) = match self.admin.get(&one) {
            Some(current) => {
                obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                self.admin.send("PUT", &one, Some(&obj))
            }
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                self.admin.send(
                    "POST",
                    &admin::path(resource, ns.as_deref(), None),
                    Some(&obj),
                )
            }
        };
        if !(200..300).contains(&code) {
            panic!("kube-testbed: put {resource} {name}: {code} {v}");
        }
        v
    }

    /// Deletes one object; true when it existed. A namespace is removed for good, with what
    /// it holds (by hand where no namespace controller runs), before this returns. A pod is
    /// deleted at once (grace period 0): no kubelet may be there to confirm its end.
    pub fn delete_object(&self, resource: &str, namespace: Option<&str>, name: &str) -> bool {
        if resource == "namespaces" {
            if self.get("namespaces", None, name).is_none() {
                return false;
            }
            self.remove_namespaces(&[name.to_string()]);
            return true;
        }
        let mut path = admin::path(resource, namespace, Some(name));
        if resource == "pods" {
            path.push_str("?gracePeriodSeconds=0");
        }
        match self.admin.send("DELETE", &path, None) {
            (200 | 202, _) => true,
            (404, _) => false,
            (code, v) => panic!("kube-testbed: DELETE {path}: {code} {v}"),
        }
    }

    /// Sends any request as the test bed's admin (left out of the audit log).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.admin.send(method, path, body)
    }

    /// What the server audited since the lease began or [`Cluster::clear_requests`]: every
    /// request of the tests' users (admin, restricted users, certificates), in order.
    pub fn requests(&self) -> Vec<AuditEvent> {
        let mark = *self.audit_mark.lock().unwrap_or_else(|p| p.into_inner());
        self.audit_since(mark)
    }

    /// The audit events from byte offset `mark` of the audit log on.
    fn audit_since(&self, mark: u64) -> Vec<AuditEvent> {
        let mut f = std::fs::File::open(&self.plane.servers[self.index].audit_log)
            .expect("open the audit log");
        f.seek(SeekFrom::Start(mark)).expect("seek the audit log");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read the audit log");
        // A line being written as we read is cut short: keep whole lines only.
        let whole = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
        audit::parse(whole)
    }

    /// The audit log file of this server (JSON lines).
    pub fn audit_log(&self) -> &Path {
        &self.plane.servers[self.index].audit_log
    }

    /// Forgets the requests audited so far.
    pub fn clear_requests(&self) {
        let len = std::fs::metadata(&self.plane.servers[self.index].audit_log)
            .map(|m| m.len())
            .unwrap_or(0);
        *self.audit_mark.lock().unwrap_or_else(|p| p.into_inner()) = len;
    }

    /// Empties the server: every namespace except the system ones is removed with all it
    /// holds, `default` is emptied (its `kubernetes` Service kept), and the cluster-scoped
    /// objects tests create (admission policies and their bindings, ClusterRoles and
    /// bindings that are not the server's own, CustomResourceDefinitions, validating webhook
    /// configurations, PersistentVolumes) are deleted.
    pub fn reset(&self) {
        // Admission policies go first: a test's policy may refuse the deletes below (an
        // enforced hard lock freezes a release for every identity that is not a Kubernetes
        // component, the test bed's admin included).
        // kube-apiserver stops resolving a built-in `paramKind` (ConfigMap) for good once a
        // policy using it has no binding for a moment (kubernetes/kubernetes#130887, open
        // in v1.37): a later test's policy would never see its parameters. So a server
        // whose admission policy bindings are removed is restarted, as an operator would
        // have to.
        // Whether a binding existed since the last reset: one left now, or one a test
        // created and deleted itself (`policy uninstall`), as the audit log shows.
        let audit_from = self.plane.restarted_at[self.index]
            .lock()
            .map(|m| *m)
            .unwrap_or(0);
        let bound = !self
            .list("validatingadmissionpolicybindings", None)
            .is_empty()
            || self.audit_since(audit_from).iter().any(|e| {
                e.is_write() && e.resource.as_deref() == Some("validatingadmissionpolicybindings")
            });
        for plural in [
            "validatingadmissionpolicybindings",
            "validatingadmissionpolicies",
        ] {
            let k = admin::kind_of(plural);
            self.admin
                .send("DELETE", &format!("{}/{}", k.prefix, k.plural), None);
        }
        if bound {
            self.plane.restart("kube-apiserver", self.index);
            let len = std::fs::metadata(self.audit_log())
                .map(|m| m.len())
                .unwrap_or(0);
            if let Ok(mut at) = self.plane.restarted_at[self.index].lock() {
                *at = len;
            }
        }
        let namespaces: Vec<String> = self
            .list("namespaces", None)
            .iter()
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .filter(|n| !SYSTEM_NAMESPACES.contains(&n.as_str()))
            .collect();
        let (default, others): (Vec<String>, Vec<String>) =
            namespaces.into_iter().partition(|n| n == "default");
        for ns in &default {
            self.empty_namespace(ns);
        }
        self.remove_namespaces(&others);
        for plural in ["clusterrolebindings", "clusterroles"] {
            for obj in self.list(plural, None) {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                let labels = &obj["metadata"]["labels"];
                let bootstrapped = labels["kubernetes.io/bootstrapping"].as_str().is_some();
                let own = labels[controllers::OWN_LABEL.0] == controllers::OWN_LABEL.1;
                if !bootstrapped && !own && !name.starts_with("system:") {
                    self.delete_object(plural, None, name);
                }
            }
        }
        // A bare server has none of these; tests' charts do (a frozen release's
        // cluster-scoped objects). A PersistentVolume keeps its protection finalizer where
        // no controller removes it, and a CRD is finalized by the server a moment later:
        // wait until they are gone, so the next test can create them again.
        for plural in [
            "validatingwebhookconfigurations",
            "customresourcedefinitions",
            "persistentvolumes",
        ] {
            let names: Vec<String> = self
                .list(plural, None)
                .iter()
                .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
                .collect();
            for name in &names {
                let one = admin::path(plural, None, Some(name));
                if plural == "persistentvolumes" {
                    self.admin.send(
                        "PATCH",
                        &one,
                        Some(&json!({"metadata": {"finalizers": null}})),
                    );
                }
                self.delete_object(plural, None, name);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            for name in &names {
                while self.get(plural, None, name).is_some() {
                    assert!(
                        Instant::now() < deadline,
                        "kube-testbed: {plural}/{name} is still there 30s after it was deleted"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Whether the controllers run against this server now (leased with them, and every
    /// one of their processes alive).
    pub fn has_controllers(&self) -> bool {
        self.plane.controlled[self.index].load(Ordering::SeqCst)
            && controllers::PROCESSES
                .iter()
                .all(|p| self.plane.running(p, self.index))
    }

    /// The fake node kwok manages where controllers run ([`NODE_NAME`]).
    pub fn node_name(&self) -> &'static str {
        NODE_NAME
    }

    /// Polls `done` every 100 ms until it holds; panics naming `what` after `limit`.
    #[track_caller]
    pub fn wait_until(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "kube-testbed: timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until Deployment `ns/name` has rolled out, as `kubectl rollout status` judges
    /// it: the controller saw its latest spec, every replica runs the latest template and is
    /// available, no old replica remains. Returns the Deployment. Panics after `limit`,
    /// showing its status (needs [`cluster_with_controllers`]).
    #[track_caller]
    pub fn wait_rollout(&self, ns: &str, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let d = self.get("deployments", Some(ns), name);
            if let Some(d) = &d {
                if rollout_complete(d) {
                    return d.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "kube-testbed: Deployment {ns}/{name} did not roll out within {limit:?} \
                 (controllers running: {}); status: {}",
                self.has_controllers(),
                d.map(|d| d["status"].clone()).unwrap_or(Value::Null)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pods of namespace `ns` whose labels include every `key=value` of `selector`.
    pub fn pods(&self, ns: &str, selector: &[(&str, &str)]) -> Vec<Value> {
        self.list("pods", Some(ns))
            .into_iter()
            .filter(|p| {
                selector
                    .iter()
                    .all(|(k, v)| p["metadata"]["labels"][*k].as_str() == Some(*v))
            })
            .collect()
    }

    /// Whether a pod's `Ready` condition is `True`.
    pub fn pod_ready(pod: &Value) -> bool {
        controllers::pod_ready(pod)
    }

    /// Plays the kubelet whose readiness probe now passes: marks the running pods of `ns`
    /// that match `selector` and are not Ready yet Ready (their status, written as the test
    /// bed's own user). For a rollout a test holds with [`NEVER_READY_LABEL`] for as long as
    /// it needs and then lets finish. Returns how many pods it marked.
    pub fn make_pods_ready(&self, ns: &str, selector: &[(&str, &str)]) -> usize {
        let mut marked = 0;
        for pod in self.pods(ns, selector) {
            let running = pod["status"]["phase"] == "Running";
            let deleted = !pod["metadata"]["deletionTimestamp"].is_null();
            if Self::pod_ready(&pod) || !running || deleted {
                continue;
            }
            let started = pod["status"]["startTime"].clone();
            let containers: Vec<Value> = pod["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    c["ready"] = json!(true);
                    c["started"] = json!(true);
                    c["state"] = json!({"running": {"startedAt": started}});
                    c
                })
                .collect();
            let condition =
                |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": started});
            let patch = json!({"status": {
                "conditions": [
                    condition("PodScheduled"),
                    condition("Initialized"),
                    condition("ContainersReady"),
                    condition("Ready"),
                ],
                "containerStatuses": containers,
            }});
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let path = format!("{}/status", admin::path("pods", Some(ns), Some(name)));
            match self.admin.send("PATCH", &path, Some(&patch)) {
                (200, _) => marked += 1,
                // Gone or changed meanwhile (a rollout moves on): the caller looks again.
                (404 | 409, _) => {}
                (code, v) => panic!("kube-testbed: mark pod {ns}/{name} Ready: {code} {v}"),
            }
        }
        marked
    }

    /// Makes Deployment `ns/name` fail on purpose: labels its pod template with `label`
    /// ([`FAIL_LABEL`]: its new pods fail; [`NEVER_READY_LABEL`]: they run but never become
    /// Ready), which starts a rollout that never completes. The write is the test bed's
    /// own (not audited).
    pub fn break_deployment(&self, ns: &str, name: &str, label: &str) {
        let path = admin::path("deployments", Some(ns), Some(name));
        let patch = json!({"spec": {"template": {"metadata": {"labels": {label: "true"}}}}});
        match self.admin.send("PATCH", &path, Some(&patch)) {
            (200, _) => {}
            (code, v) => panic!("kube-testbed: label the pods of {ns}/{name}: {code} {v}"),
        }
    }

    /// Deletes what a namespace holds (of the kinds tests and helm make). Workload
    /// controllers go first and pods then at once (grace period 0), so that no controller
    /// makes new pods and no pod waits for a kubelet. In `default`, the objects the
    /// cluster's controllers keep there (`kubernetes` Service, ServiceAccount `default`,
    /// ConfigMap `kube-root-ca.crt`) stay.
    fn empty_namespace(&self, ns: &str) {
        const FIRST: &[&str] = &[
            "deployments",
            "statefulsets",
            "daemonsets",
            "jobs",
            "replicasets",
            "pods",
        ];
        let kinds = FIRST.iter().map(|p| admin::kind_of(p)).chain(
            admin::KINDS
                .iter()
                .filter(|k| k.namespaced && !FIRST.contains(&k.plural))
                .copied(),
        );
        for k in kinds {
            for obj in self.list(k.plural, Some(ns)) {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                let kept = matches!(
                    (k.plural, name),
                    ("services", "kubernetes")
                        | ("serviceaccounts", "default")
                        | ("configmaps", "kube-root-ca.crt")
                );
                if ns == "default" && kept {
                    continue;
                }
                // Finalizers would keep an object after the delete; nothing here runs
                // them, so drop them first.
                if obj["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty())
                {
                    let p = admin::path(k.plural, Some(ns), Some(name));
                    self.admin.send(
                        "PATCH",
                        &p,
                        Some(&json!({"metadata": {"finalizers": null}})),
                    );
                }
                self.delete_object(k.plural, Some(ns), name);
            }
        }
    }

    /// Deletes namespaces for good, with what they hold, and waits until they are gone.
    /// Where no controllers run, each is emptied (of the kinds tests and helm make) and its
    /// `kubernetes` finalizer removed by hand. Where they run, each is deleted first (so
    /// nothing, controllers included, can create in it any more), then emptied of every
    /// kind the server serves and finalized ([`Cluster::purge_namespace`]): what the
    /// namespace controller would do, without the 5 s it waits before starting on a
    /// deleted namespace. If that cannot be done, the namespace controller finishes it
    /// (bounded: 60 s, then the namespace's status is shown).
    fn remove_namespaces(&self, namespaces: &[String]) {
        let controlled = self.has_controllers();
        for ns in namespaces {
            let one = format!("/api/v1/namespaces/{ns}");
            if controlled {
                self.admin.send("DELETE", &one, None);
                if self.purge_namespace(ns, Duration::from_secs(20)) {
                    self.finalize_namespace(ns);
                }
                continue;
            }
            self.empty_namespace(ns);
            self.admin.send("DELETE", &one, None);
            self.finalize_namespace(ns);
        }
        let limit = Duration::from_secs(if controlled { 60 } else { 10 });
        let deadline = Instant::now() + limit;
        for ns in namespaces {
            let one = format!("/api/v1/namespaces/{ns}");
            while let Some(obj) = self.admin.get(&one) {
                if Instant::now() > deadline {
                    panic!(
                        "kube-testbed: namespace {ns} is still there {limit:?} after it was \
                         deleted (controllers running: {controlled}); its status: {}",
                        obj["status"]
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Removes the `kubernetes` finalizer of a deleted namespace, which lets the server
    /// remove it.
    fn finalize_namespace(&self, ns: &str) {
        let one = format!("/api/v1/namespaces/{ns}");
        if let Some(mut obj) = self.admin.get(&one) {
            obj["spec"]["finalizers"] = json!([]);
            let (code, v) = self
                .admin
                .send("PUT", &format!("{one}/finalize"), Some(&obj));
            if code != 200 && code != 404 {
                panic!("kube-testbed: finalize namespace {ns}: {code} {v}");
            }
            self.admin.send("DELETE", &one, None);
        }
    }

    /// Every namespaced resource the server serves that can be listed and deleted, found
    /// the way the namespace controller finds them (discovery of `/api/v1` and each group's
    /// preferred version): (collection prefix such as `/apis/apps/v1`, plural, whether it
    /// takes a collection delete). `None` when a discovery request fails.
    fn namespaced_resources(&self) -> Option<Vec<(String, String, bool)>> {
        let mut prefixes = vec!["/api/v1".to_string()];
        let (200, groups) = self.admin.try_send("GET", "/apis", None).ok()? else {
            return None;
        };
        for g in groups["groups"].as_array().into_iter().flatten() {
            prefixes.push(format!(
                "/apis/{}",
                g["preferredVersion"]["groupVersion"].as_str()?
            ));
        }
        let mut out = Vec::new();
        for prefix in prefixes {
            let (200, list) = self.admin.try_send("GET", &prefix, None).ok()? else {
                return None;
            };
            for r in list["resources"].as_array().into_iter().flatten() {
                let name = r["name"].as_str().unwrap_or_default();
                let verb = |v: &str| {
                    r["verbs"]
                        .as_array()
                        .is_some_and(|verbs| verbs.iter().any(|x| x == v))
                };
                if r["namespaced"] == true && !name.contains('/') && verb("list") && verb("delete")
                {
                    out.push((prefix.clone(), name.to_string(), verb("deletecollection")));
                }
            }
        }
        Some(out)
    }

    /// Empties a deleted (terminating) namespace of every kind the server serves, until a
    /// listing of every kind comes back empty: finalizers are dropped (nothing here would
    /// run them), pods go at once (grace period 0). True when it is empty; false, leaving
    /// the rest to the namespace controller, when discovery or a listing fails or objects
    /// are still there after `limit`.
    fn purge_namespace(&self, ns: &str, limit: Duration) -> bool {
        let Some(resources) = self.namespaced_resources() else {
            return false;
        };
        let deadline = Instant::now() + limit;
        loop {
            let mut left = 0;
            for (prefix, plural, collection_delete) in &resources {
                let collection = format!("{prefix}/namespaces/{ns}/{plural}");
                let Ok((200, list)) = self.admin.try_send("GET", &collection, None) else {
                    return false;
                };
                let items = list["items"].as_array().cloned().unwrap_or_default();
                left += items.len();
                let grace = if plural == "pods" {
                    "?gracePeriodSeconds=0"
                } else {
                    ""
                };
                for obj in &items {
                    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                    let one = format!("{collection}/{name}");
                    if obj["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| !f.is_empty())
                    {
                        let patch = json!({"metadata": {"finalizers": null}});
                        let _ = self.admin.try_send("PATCH", &one, Some(&patch));
                    }
                    if !collection_delete {
                        let _ = self
                            .admin
                            .try_send("DELETE", &format!("{one}{grace}"), None);
                    }
                }
                if *collection_delete && !items.is_empty() {
                    let _ = self
                        .admin
                        .try_send("DELETE", &format!("{collection}{grace}"), None);
                }
            }
            if left == 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Plane {
    /// Kills a process of the control plane with SIGKILL (`etcd` index 0, or
    /// `kube-apiserver` index i) and reaps it. For fault tests holding every server.
    pub fn kill(&self, name: &str, index: usize) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = procs
            .iter_mut()
            .find(|p| p.name == name && p.index == index)
            .and_then(|p| p.child.as_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops a process of the control plane with SIGKILL (as [`Plane::kill`]), to start it
    /// again later with [`Plane::resume`] ("stopped for longer than --lock-timeout").
    pub fn stop(&self, name: &str, index: usize) {
        self.kill(name, index);
    }

    /// Whether the process is running (started and not exited).
    pub fn running(&self, name: &str, index: usize) -> bool {
        !self.exited(name, index)
    }

    /// The number of API servers of the plane.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Starts a killed process again with the same flags and data, and waits until it
    /// serves (etcd healthy, the API server ready).
    pub fn restart(&self, name: &str, index: usize) {
        self.kill(name, index);
        self.resume(name, index);
    }

    /// Starts a stopped process again with the same flags and data (a running one is left
    /// alone), and waits until it serves: etcd healthy, the API server ready.
    pub fn resume(&self, name: &str, index: usize) {
        if !self.exited(name, index) {
            return;
        }
        let cmd = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs
                .iter()
                .find(|p| p.name == name && p.index == index)
                .map(|p| p.cmd)
                .unwrap_or_else(|| panic!("kube-testbed: no process {name} {index}"))
        };
        self.launch(name, cmd, index)
            .unwrap_or_else(|e| panic!("{e}"));
        let ready = if name == "etcd" {
            self.wait_etcd()
        } else {
            self.wait_apiserver(index)
        };
        ready.unwrap_or_else(|e| panic!("{e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_parse_into_events() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns1/secrets?labelSelector=owner%3Dhelm","verb":"list","user":{"username":"admin","groups":["system:masters"]},"sourceIPs":["127.0.0.1"],"userAgent":"guarded-upgrade/0.1.0","objectRef":{"resource":"secrets","namespace":"ns1","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200}}"#;
        let started = line.replace("ResponseComplete", "ResponseStarted");
        let events = audit::parse(&format!("{line}\n{started}\n"));
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.verb, "list");
        assert_eq!(e.path(), "/api/v1/namespaces/ns1/secrets");
        assert_eq!(e.query(), "labelSelector=owner%3Dhelm");
        assert_eq!(e.user, "admin");
        assert_eq!(e.code, 200);
        assert_eq!(e.resource.as_deref(), Some("secrets"));
        assert_eq!(e.namespace.as_deref(), Some("ns1"));
        assert!(!e.is_write());
        assert_eq!(e.method(), "GET");
    }

    #[test]
    fn the_pinned_kubernetes_version_is_read_from_go_mod() {
        let v = kubernetes_version();
        assert!(v.starts_with("v1.") && !v.contains(' '), "{v:?}");
    }

    #[test]
    fn paths_follow_the_resource_table() {
        assert_eq!(
            admin::path("leases", Some("ns1"), Some("helm-lock-db")),
            "/apis/coordination.k8s.io/v1/namespaces/ns1/leases/helm-lock-db"
        );
        assert_eq!(
            admin::path("namespaces", None, Some("x")),
            "/api/v1/namespaces/x"
        );
        assert_eq!(
            admin::path("secrets", None, None),
            "/api/v1/namespaces/default/secrets"
        );
    }
}
