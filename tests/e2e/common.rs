//! Shared end-to-end harness: a running API stand-in, one real helm binary, and runners
//! for helm and guarded-upgrade with an isolated environment.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kube_standin::testbed::copy_dir;
use kube_standin::{RequestRecord, StandIn};

/// Runs each scenario `fn name(label: &str)` against the real API server (see [`Api`]) with
/// the newest helm 3 and helm 4 the project supports, as separate #[test]s (`helm3::name`,
/// `helm4::name`) so they run in parallel and fail separately.
#[allow(unused_macros)]
macro_rules! per_helm {
    ($($name:ident),* $(,)?) => {
        mod helm3 { $( #[test] fn $name() { super::$name("helm3"); } )* }
        mod helm4 { $( #[test] fn $name() { super::$name("helm4"); } )* }
    };
}
#[allow(unused_imports)]
pub(crate) use per_helm;

/// Like [`per_helm`], plus the oldest supported helm 3 and helm 4 (`helm3_17::name`,
/// `helm4_1::name`): the compatibility subset that proves both ends of the range.
#[allow(unused_macros)]
macro_rules! per_helm_compat {
    ($($name:ident),* $(,)?) => {
        mod helm3 { $( #[test] fn $name() { super::$name("helm3"); } )* }
        mod helm4 { $( #[test] fn $name() { super::$name("helm4"); } )* }
        mod helm3_17 { $( #[test] fn $name() { super::$name("helm3.17"); } )* }
        mod helm4_1 { $( #[test] fn $name() { super::$name("helm4.1"); } )* }
    };
}
#[allow(unused_imports)]
pub(crate) use per_helm_compat;

/// Runs each scenario against the API stand-in (helm 3.17.3 and 4.1.4): for what only the
/// stand-in can do, injecting faults by request position (`standin_helm3::name`, ...).
#[allow(unused_macros)]
macro_rules! per_helm_standin {
    ($($name:ident),* $(,)?) => {
        mod standin_helm3 { $( #[test] fn $name() { super::$name("standin-helm3"); } )* }
        mod standin_helm4 { $( #[test] fn $name() { super::$name("standin-helm4"); } )* }
    };
}
#[allow(unused_imports)]
pub(crate) use per_helm_standin;

/// The helm major version a label names (`helm3`, `helm3.17`, `standin-helm3` → 3).
pub fn helm_major(label: &str) -> u8 {
    if label.contains("helm4") {
        4
    } else {
        assert!(label.contains("helm3"), "unknown helm label {label:?}");
        3
    }
}

/// Whether a label runs against the API stand-in rather than the real API server.
pub fn on_standin(label: &str) -> bool {
    label.starts_with("standin-")
}

/// The helm binary a label names, and the label as a `&'static str`.
fn helm_for(label: &str) -> (&'static str, PathBuf) {
    use kube_standin::testbed as tb;
    match label {
        "helm3" => ("helm3", tb::helm_newest3()),
        "helm4" => ("helm4", tb::helm_newest4()),
        "helm3.17" => ("helm3.17", tb::helm3()),
        "helm4.1" => ("helm4.1", tb::helm4()),
        "standin-helm3" => ("standin-helm3", tb::helm3()),
        "standin-helm4" => ("standin-helm4", tb::helm4()),
        other => panic!("unknown helm label {other:?}"),
    }
}

/// The API server a bed talks to: the real kube-apiserver (a server of the process's control
/// plane, leased for the test and empty when leased), or the in-repo stand-in (faults by
/// request position). Both answer the same questions tests ask of "the cluster".
pub enum Api {
    /// A real kube-apiserver with etcd (`kube-testbed`).
    Real(kube_testbed::Cluster),
    /// The API stand-in (`kube-standin`).
    StandIn(StandIn),
}

impl Api {
    /// The stand-in, for fault injection. Panics on the real server: a test that injects
    /// faults must run with a `standin-` label.
    pub fn standin(&self) -> &StandIn {
        match self {
            Api::StandIn(s) => s,
            Api::Real(_) => {
                panic!("this test injects faults: run it on the stand-in (per_helm_standin!)")
            }
        }
    }

    /// The real server. Panics on the stand-in.
    pub fn real(&self) -> &kube_testbed::Cluster {
        match self {
            Api::Real(c) => c,
            Api::StandIn(_) => panic!("this test needs the real API server"),
        }
    }

    /// Whether this is the real API server.
    pub fn is_real(&self) -> bool {
        matches!(self, Api::Real(_))
    }

    /// The server URL.
    pub fn url(&self) -> String {
        match self {
            Api::Real(c) => c.url(),
            Api::StandIn(s) => s.url(),
        }
    }

    /// The server port.
    pub fn port(&self) -> u16 {
        match self {
            Api::Real(c) => c.port(),
            Api::StandIn(s) => s.port(),
        }
    }

    /// The admin kubeconfig of the server.
    pub fn kubeconfig(&self) -> &Path {
        match self {
            Api::Real(c) => c.kubeconfig(),
            Api::StandIn(s) => s.kubeconfig(),
        }
    }

    /// The name of the kubeconfig's context (and cluster).
    pub fn context(&self) -> &'static str {
        match self {
            Api::Real(_) => "testbed",
            Api::StandIn(_) => "standin",
        }
    }

    /// Creates a namespace unless it exists.
    pub fn create_namespace(&self, name: &str) {
        match self {
            Api::Real(c) => c.create_namespace(name),
            Api::StandIn(s) => s.create_namespace(name),
        }
    }

    /// One object by resource plural, None when absent.
    pub fn get(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<serde_json::Value> {
        match self {
            Api::Real(c) => c.get(resource, namespace, name),
            Api::StandIn(s) => s.get(resource, namespace, name),
        }
    }

    /// Every object of a resource in a namespace (all namespaces with None).
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<serde_json::Value> {
        match self {
            Api::Real(c) => c.list(resource, namespace),
            Api::StandIn(s) => s.list(resource, namespace),
        }
    }

    /// Creates or replaces an object (test setup), unconditionally.
    pub fn put_object(&self, resource: &str, obj: serde_json::Value) -> serde_json::Value {
        match self {
            Api::Real(c) => c.put_object(resource, obj),
            Api::StandIn(s) => s.put_object(resource, obj),
        }
    }

    /// Deletes an object (test setup); true when it existed.
    pub fn delete_object(&self, resource: &str, namespace: Option<&str>, name: &str) -> bool {
        match self {
            Api::Real(c) => c.delete_object(resource, namespace, name),
            Api::StandIn(s) => s.delete_object(resource, namespace, name),
        }
    }

    /// The requests the tests' programs made since the bed started or the last
    /// [`Api::clear_requests`]: the stand-in's request log, or the real server's audit log
    /// (the test bed's own housekeeping left out). Content types are unknown on the real
    /// server.
    pub fn requests(&self) -> Vec<RequestRecord> {
        match self {
            Api::StandIn(s) => s.requests(),
            Api::Real(c) => c
                .requests()
                .into_iter()
                .map(|e| RequestRecord {
                    method: e.method().to_string(),
                    path: e.path().to_string(),
                    query: e.query().to_string(),
                    content_type: None,
                    accept: None,
                    status: e.code,
                    verb: e.verb.clone(),
                    resource: e.resource.clone(),
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    user: Some(e.user.clone()),
                    impersonate: e
                        .impersonated_user
                        .iter()
                        .map(|u| format!("Impersonate-User: {u}"))
                        .collect(),
                    user_agent: Some(e.user_agent.clone()),
                })
                .collect(),
        }
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        match self {
            Api::Real(c) => c.clear_requests(),
            Api::StandIn(s) => s.clear_requests(),
        }
    }

    /// Stand-in only: adds a fault.
    pub fn inject(&self, fault: kube_standin::Fault) {
        self.standin().inject(fault)
    }

    /// Stand-in only: adds a fault that fires after `skip` matching requests.
    pub fn inject_after(&self, skip: u32, fault: kube_standin::Fault) {
        self.standin().inject_after(skip, fault)
    }

    /// Stand-in only: adds an armed fault.
    pub fn arm(&self, armed: kube_standin::ArmedFault) {
        self.standin().arm(armed)
    }

    /// Stand-in only: removes every fault.
    pub fn clear_faults(&self) {
        self.standin().clear_faults()
    }
}

/// One test's world: an API server, a helm version, private helm home directories.
pub struct Bed {
    /// The API server (real or stand-in).
    pub api: Api,
    /// The helm label (`helm3`, `helm4`, `helm3.17`, `helm4.1`, `standin-helm3`, ...).
    pub label: &'static str,
    /// The helm binary.
    pub helm_bin: PathBuf,
    home: tempfile::TempDir,
}

/// What a process did.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with the full output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Run {
        assert_eq!(
            self.code, code,
            "{what}: exit {} (wanted {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics, showing all of stderr, unless one line of stderr is exactly `expected`.
    #[track_caller]
    pub fn assert_stderr_line(&self, expected: &str) -> &Run {
        assert_has_line("stderr", &self.stderr, expected);
        self
    }

    /// Panics, showing all of stdout, unless one line of stdout is exactly `expected`.
    #[track_caller]
    pub fn assert_stdout_line(&self, expected: &str) -> &Run {
        assert_has_line("stdout", &self.stdout, expected);
        self
    }

    /// Panics, showing all of stderr, unless its first line is exactly `expected` (for clap's
    /// errors, whose later lines are clap's hints).
    #[track_caller]
    pub fn assert_first_stderr_line(&self, expected: &str) -> &Run {
        if self.stderr.lines().next() != Some(expected) {
            panic!(
                "the first line of stderr is not exactly\n     {expected:?}\n--- stderr\n{}",
                numbered(&self.stderr)
            );
        }
        self
    }

    /// Panics unless stderr is exactly these lines (each ended by a newline), nothing else.
    #[track_caller]
    pub fn assert_stderr(&self, expected: &[&str]) -> &Run {
        assert_exact("stderr", &self.stderr, expected);
        self
    }

    /// Panics unless stdout is exactly these lines (each ended by a newline), nothing else.
    #[track_caller]
    pub fn assert_stdout(&self, expected: &[&str]) -> &Run {
        assert_exact("stdout", &self.stdout, expected);
        self
    }

    /// Panics unless stderr is exactly the one error line `guarded-upgrade: error: {message}`.
    #[track_caller]
    pub fn assert_error(&self, message: &str) -> &Run {
        self.assert_stderr(&[&format!("guarded-upgrade: error: {message}")])
    }

    /// Panics unless stderr is `retries` retry notices about `what` (`guarded-upgrade:
    /// retrying {what} in …`, then one `giving up {what} after {retries + 1} attempts …`),
    /// then exactly the error line `guarded-upgrade: error: {message}`.
    #[track_caller]
    pub fn assert_error_after_retries(&self, what: &str, retries: usize, message: &str) -> &Run {
        let lines: Vec<&str> = self.stderr.lines().collect();
        let shown = numbered(&self.stderr);
        assert_eq!(lines.len(), retries + 2, "stderr:\n{shown}");
        for line in &lines[..retries] {
            assert!(
                line.starts_with(&format!("guarded-upgrade: retrying {what} in ")),
                "not a retry notice about {what}: {line:?}\nstderr:\n{shown}"
            );
        }
        let give_up = format!(
            "guarded-upgrade: giving up {what} after {} attempts in ",
            retries + 1
        );
        assert!(
            lines[retries].starts_with(&give_up),
            "wanted {give_up:?}…\nstderr:\n{shown}"
        );
        assert_eq!(
            lines[retries + 1],
            format!("guarded-upgrade: error: {message}"),
            "stderr:\n{shown}"
        );
        self
    }
}

/// Each line of `text`, numbered and quoted so trailing or doubled spaces show.
fn numbered(text: &str) -> String {
    if text.is_empty() {
        return "    (empty)\n".to_string();
    }
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:>4} {l:?}\n", i + 1))
        .collect()
}

#[track_caller]
fn assert_has_line(stream: &str, text: &str, expected: &str) {
    assert!(
        !expected.contains('\n'),
        "expected line contains a newline: {expected:?}"
    );
    if !text.lines().any(|l| l == expected) {
        panic!(
            "no line of {stream} is exactly\n     {expected:?}\n--- {stream}\n{}",
            numbered(text)
        );
    }
}

#[track_caller]
fn assert_exact(stream: &str, text: &str, expected: &[&str]) {
    let want: String = expected.iter().map(|l| format!("{l}\n")).collect();
    if text != want {
        panic!(
            "{stream} is not exactly the expected lines\n--- expected\n{}--- {stream}\n{}\
             --- raw: expected {want:?}, got {text:?}",
            numbered(&want),
            numbered(text)
        );
    }
}

/// A bed for one helm label (see [`helm_for`]): the real API server unless the label
/// starts with `standin-`.
pub fn bed(label: &str) -> Bed {
    let (label, bin) = helm_for(label);
    Bed::new(label, bin)
}

/// Path of a fixture chart directory, e.g. `chart("demo-1.0.0")`.
pub fn chart(name: &str) -> String {
    let path = kube_standin::testbed::fixtures_dir()
        .join("charts")
        .join(name);
    assert!(path.is_dir(), "missing fixture chart {}", path.display());
    path.to_string_lossy().into_owned()
}

/// A bed on a real API server whose controllers run (kube-controller-manager,
/// kube-scheduler, kwok with one fake node): Deployments roll out, pods become Ready, Jobs
/// complete, so `helm --wait`, `--atomic`/`--rollback-on-failure` and hook Jobs really run.
pub fn bed_with_controllers(label: &str) -> Bed {
    assert!(
        !on_standin(label),
        "controllers run on the real API server only"
    );
    let (label, bin) = helm_for(label);
    Bed {
        api: Api::Real(kube_testbed::cluster_with_controllers()),
        label,
        helm_bin: bin,
        home: tempfile::tempdir().expect("tempdir"),
    }
}

impl Bed {
    fn new(label: &'static str, helm_bin: PathBuf) -> Bed {
        let api = if on_standin(label) {
            Api::StandIn(StandIn::start().expect("start the API stand-in"))
        } else {
            Api::Real(kube_testbed::cluster())
        };
        Bed {
            api,
            label,
            helm_bin,
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Isolated helm environment: kubeconfig of the stand-in, private caches.
    fn env(&self, cmd: &mut Command) {
        let home = self.home.path();
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("KUBECONFIG", self.api.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("HELM_BIN", &self.helm_bin);
    }

    /// The private home directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Runs real helm.
    pub fn helm(&self, args: &[&str]) -> Run {
        self.helm_env(args, &[])
    }

    /// Runs real helm with extra environment.
    pub fn helm_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(&self.helm_bin);
        self.env(&mut cmd);
        cmd.args(args).envs(extra.iter().copied());
        Run::from(cmd.output().expect("run helm"))
    }

    /// Runs guarded-upgrade.
    pub fn guard(&self, args: &[&str]) -> Run {
        self.guard_env(args, &[])
    }

    /// Runs guarded-upgrade with no kubeconfig anywhere (no `KUBECONFIG`, an empty `HOME`)
    /// and `HELM_KUBEAPISERVER` pointing at the stand-in, so any API call reaches its log.
    pub fn guard_no_kubeconfig(&self, args: &[&str]) -> Run {
        let home = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guarded-upgrade"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("HELM_KUBEAPISERVER", self.api.url())
            .env("HELM_BIN", &self.helm_bin)
            .args(args);
        Run::from(cmd.output().expect("run guarded-upgrade"))
    }

    /// Runs guarded-upgrade with extra environment.
    pub fn guard_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guarded-upgrade"));
        self.env(&mut cmd);
        cmd.args(args).envs(extra.iter().copied());
        Run::from(cmd.output().expect("run guarded-upgrade"))
    }

    /// `helm get metadata` as JSON.
    pub fn metadata(&self, release: &str, ns: &str) -> serde_json::Value {
        let run = self.helm(&["get", "metadata", release, "-n", ns, "-o", "json"]);
        run.expect_code(0, "helm get metadata");
        serde_json::from_str(&run.stdout).expect("helm get metadata json")
    }

    /// Deployed chart version and revision per `helm get metadata`.
    pub fn deployed(&self, release: &str, ns: &str) -> (String, u64) {
        let m = self.metadata(release, ns);
        (
            m["version"].as_str().unwrap_or_default().to_string(),
            m["revision"].as_u64().unwrap_or_default(),
        )
    }

    /// `helm history -o json`.
    pub fn history(&self, release: &str, ns: &str) -> Vec<serde_json::Value> {
        let run = self.helm(&["history", release, "-n", ns, "-o", "json"]);
        run.expect_code(0, "helm history");
        serde_json::from_str(&run.stdout).expect("helm history json")
    }

    /// Number of write requests the stand-in saw since the last clear.
    pub fn writes(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.is_write())
            .map(|r| format!("{} {}?{} -> {}", r.method, r.path, r.query, r.status))
            .collect()
    }
}

impl Bed {
    /// A copy of the `demo` chart at any `version` (templates of demo-1.2.0), for versions
    /// the fixtures do not carry (e.g. 1.4.3, 1.7.0).
    pub fn versioned_chart(&self, version: &str) -> String {
        let dir = self.home().join("charts").join(format!("demo-{version}"));
        if !dir.exists() {
            copy_dir(Path::new(&chart("demo-1.2.0")), &dir);
            let chart_yaml = dir.join("Chart.yaml");
            let text = std::fs::read_to_string(&chart_yaml).expect("Chart.yaml");
            let text: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("version:") {
                        format!("version: {version}")
                    } else if l.starts_with("appVersion:") {
                        format!("appVersion: \"{version}\"")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(&chart_yaml, text + "\n").expect("write Chart.yaml");
        }
        dir.to_string_lossy().into_owned()
    }
}

impl Bed {
    /// Starts guarded-upgrade without waiting, in its own process group (so a test can kill
    /// it together with its helm child), with stdout/stderr captured.
    pub fn guard_spawn(&self, args: &[&str]) -> std::process::Child {
        self.guard_spawn_env(args, &[])
    }

    /// [`Bed::guard_spawn`] with extra environment.
    pub fn guard_spawn_env(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guarded-upgrade"));
        self.env(&mut cmd);
        cmd.args(args)
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        cmd.spawn().expect("spawn guarded-upgrade")
    }
}

/// Waits for a spawned child and collects its output.
pub fn finish(child: std::process::Child) -> Run {
    Run::from(child.wait_with_output().expect("wait for child"))
}

/// A static file server on 127.0.0.1 for one directory; lives as long as the test process.
pub fn serve_dir(dir: PathBuf) -> String {
    serve(dir, false)
}

/// [`serve_dir`], answering with a `Content-Type` by file name as a release host does:
/// `application/gzip` for `.tgz` and `.tar.gz`, `application/octet-stream` for the rest.
/// helm 3 installs a plugin from a URL only when a HEAD request on it answers a gzip type
/// (docs/plugin.md).
pub fn serve_dir_typed(dir: PathBuf) -> String {
    serve(dir, true)
}

fn serve(dir: PathBuf, typed: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                // Drain headers.
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let mut words = request_line.split_whitespace();
                let head = words.next() == Some("HEAD");
                let path = words.next().unwrap_or("/");
                let file = dir.join(path.trim_start_matches('/'));
                let mut stream = &stream;
                match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => {
                        let content_type = if !typed {
                            String::new()
                        } else if path.ends_with(".tgz") || path.ends_with(".tar.gz") {
                            "Content-Type: application/gzip\r\n".to_string()
                        } else {
                            "Content-Type: application/octet-stream\r\n".to_string()
                        };
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{content_type}Connection: close\r\n\r\n",
                            body.len()
                        );
                        if !head {
                            let _ = stream.write_all(&body);
                        }
                    }
                    _ => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A bed whose stand-in is started with `opts` (HTTPS, authentication, ...), with the helm
/// of `label` (its `standin-` prefix optional).
pub fn bed_with(label: &str, opts: kube_standin::Options) -> Bed {
    let (label, bin) = helm_for(&format!("standin-{}", label.trim_start_matches("standin-")));
    Bed {
        api: Api::StandIn(StandIn::start_with(opts).expect("start the API stand-in")),
        label,
        helm_bin: bin,
        home: tempfile::tempdir().expect("tempdir"),
    }
}

/// Which program [`Bed::run_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Real helm.
    Helm,
    /// guarded-upgrade.
    Guard,
}

impl Bed {
    /// Runs helm or guarded-upgrade with extra environment, after removing the variables
    /// in `remove` (e.g. `KUBECONFIG` for a flag-only connection).
    pub fn run_with(
        &self,
        program: Program,
        args: &[&str],
        extra: &[(&str, &str)],
        remove: &[&str],
    ) -> Run {
        let bin: &Path = match program {
            Program::Helm => &self.helm_bin,
            Program::Guard => Path::new(env!("CARGO_BIN_EXE_guarded-upgrade")),
        };
        let mut cmd = Command::new(bin);
        self.env(&mut cmd);
        for key in remove {
            cmd.env_remove(key);
        }
        cmd.args(args).envs(extra.iter().copied());
        Run::from(cmd.output().expect("run"))
    }
}

impl Bed {
    /// Any program with the bed's isolated environment (the caller adds args, env, cwd).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.env(&mut cmd);
        cmd
    }
}

/// Runs a prepared command to completion.
pub fn run(cmd: &mut Command) -> Run {
    Run::from(cmd.output().expect("run command"))
}

/// The guarded-upgrade binary under test.
pub fn guard_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_guarded-upgrade"))
}

/// The lines of `text` (for whole-line assertions).
pub fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

// ---- h16b (lock, mutex, rbac, realonly): an interposer in front of the real server ----

/// A plain-HTTP front for the real API server that forwards every request as the test
/// bed's admin, and runs `before(method, path_and_query)` first: a test makes a real
/// conflicting write there, at exactly the moment the tool is about to write, so the real
/// server answers the tool's write with its own 409. Runs `body` with the path of a
/// kubeconfig (context `testbed`) pointing at the front; stops when `body` returns.
/// Returns what `body` returned and every forwarded request as `METHOD path?query -> code`
/// (the test bed's admin is left out of the audit log, so these are not in
/// `b.api.requests()`).
pub fn with_interposer<R>(
    b: &Bed,
    before: impl Fn(&str, &str) + Sync,
    body: impl FnOnce(&Path) -> R,
) -> (R, Vec<String>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = b.api.real();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let kubeconfig = b.home().join(format!("kubeconfig-interposer-{port}"));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: \
             http://127.0.0.1:{port}\nusers:\n- name: admin\n  user:\n    token: interposed\n\
             contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: admin\n\
             current-context: testbed\n"
        ),
    )
    .expect("write kubeconfig");
    let stop = AtomicBool::new(false);
    let seen = std::sync::Mutex::new(Vec::new());
    let out = std::thread::scope(|scope| {
        let before = &before;
        let stop_ref = &stop;
        let seen = &seen;
        scope.spawn(move || {
            for stream in listener.incoming() {
                if stop_ref.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                scope.spawn(move || {
                    if let Some(line) = interpose_one(cluster, stream, before) {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    }
                });
            }
        });
        let out = body(&kubeconfig);
        stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
        out
    });
    (out, seen.into_inner().unwrap_or_else(|p| p.into_inner()))
}

fn interpose_one(
    cluster: &kube_testbed::Cluster,
    stream: std::net::TcpStream,
    before: &(impl Fn(&str, &str) + Sync),
) -> Option<String> {
    use std::io::Read;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked" {
                chunked = true;
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return None;
    }
    while chunked {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk[..size]);
        chunked = size > 0;
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if json.is_none() && method != "GET" && method != "DELETE" {
        eprintln!(
            "interposer: {method} {target}: body {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    before(&method, &target);
    let (code, answer) = cluster.request(&method, &target, json.as_ref());
    let text = answer.to_string();
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    Some(format!("{method} {target} -> {code}"))
}

/// Binds `rules` (RBAC PolicyRules) to `user` in `ns` through the Role `grant-<user>`
/// (replacing an earlier grant to the same user there).
pub fn grant(b: &Bed, ns: &str, user: &str, rules: &[serde_json::Value]) {
    let name = format!("grant-{user}");
    b.api.put_object(
        "roles",
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": ns},
            "rules": rules,
        }),
    );
    b.api.put_object(
        "rolebindings",
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }),
    );
}

/// What helm needs to install and upgrade the fixture charts (and their hook Jobs): every
/// verb on the core, apps and batch groups. Nothing on Leases.
pub fn helm_rules() -> Vec<serde_json::Value> {
    vec![serde_json::json!({
        "apiGroups": ["", "apps", "batch"],
        "resources": ["*"],
        "verbs": ["*"],
    })]
}

/// A `demo` chart at `version` with a pre-upgrade/pre-install hook Job that never
/// completes on the real server (no controllers): helm writes its pending record, then
/// waits on the hook, which keeps it busy for as long as a test needs.
pub fn hooked_chart(b: &Bed, version: &str) -> String {
    let dir = b.home().join("charts").join(format!("hooked-{version}"));
    copy_dir(Path::new(&b.versioned_chart(version)), &dir);
    let dir = dir.to_string_lossy().into_owned();
    std::fs::write(
        Path::new(&dir).join("templates").join("hook.yaml"),
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-hook\n  \
         annotations:\n    helm.sh/hook: pre-upgrade,pre-install\nspec:\n  template:\n    \
         spec:\n      restartPolicy: Never\n      containers:\n        - name: wait\n          \
         image: registry.invalid/wait:1\n",
    )
    .expect("write the hook");
    dir
}

// ---- h16a (guard, unchanged, repo, usage, argv, retry, matrix on the real server) ----

/// Grants `user` a Role `name` in `ns` holding exactly `rules` (RBAC PolicyRules), bound
/// to the user by a RoleBinding of the same name.
pub fn grant_role(b: &Bed, user: &str, ns: &str, name: &str, rules: serde_json::Value) {
    b.api.put_object(
        "roles",
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns},
            "rules": rules,
        }),
    );
    b.api.put_object(
        "rolebindings",
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }),
    );
}

/// A loopback port nothing listens on (bound, then closed).
pub fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// A copy of the bed's admin kubeconfig (CA and credentials kept) in its home, its server
/// replaced by `server`.
pub fn kubeconfig_with_server(b: &Bed, server: &str) -> PathBuf {
    let text = std::fs::read_to_string(b.api.kubeconfig()).expect("read kubeconfig");
    let url = b.api.url();
    assert!(text.contains(&url), "the kubeconfig names {url}");
    let path = b.home().join("kubeconfig-elsewhere");
    std::fs::write(&path, text.replace(&url, server)).expect("write kubeconfig");
    path
}

/// Waits (bounded) until the real server's authorizer allows `user` to `verb` `resource`
/// (`group/resource`, or a core resource) in `ns`: RBAC objects take effect through the
/// server's caches, a moment after they are written.
pub fn wait_allowed(b: &Bed, user: &str, ns: &str, verb: &str, resource: &str) {
    let (group, resource) = resource.split_once('/').unwrap_or(("", resource));
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": {
            "namespace": ns, "verb": verb, "group": group, "resource": resource}},
    });
    let started = std::time::Instant::now();
    loop {
        let (code, answer) = b.api.real().request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(&review),
        );
        if code == 201 && answer["status"]["allowed"] == true {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{user} is still not allowed to {verb} {resource} in {ns}: {code} {answer}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A TCP front of the bed's server that counts the connections made through it (TLS
/// passes through untouched: the server's certificate names 127.0.0.1, whatever the port).
pub struct Front {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Front {
    /// A front forwarding to the bed's server.
    pub fn of(b: &Bed) -> Front {
        use std::sync::atomic::Ordering;
        let upstream_port = b.api.port();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Front {
            port,
            accepted,
            stop,
        }
    }

    /// The server URL through the front.
    pub fn url(&self, b: &Bed) -> String {
        let scheme = b
            .api
            .url()
            .split("://")
            .next()
            .unwrap_or("https")
            .to_string();
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Connections made through the front since the last call.
    pub fn take_connections(&self) -> usize {
        self.accepted.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
