//! Helpers for tests that run the real helm binaries against a [`StandIn`].
//!
//! ```no_run
//! use kube_standin::{StandIn, testbed::{self, Helm}};
//! let standin = StandIn::start().unwrap();
//! for (label, bin) in testbed::helms() {
//!     let helm = Helm::new(&bin, &standin);
//!     let out = helm.run(&["list", "-A", "-o", "json"]);
//!     assert!(out.success, "{label}: {}", out.describe());
//! }
//! ```

use crate::StandIn;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GU_HELM_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("guarded-upgrade").join("helm")
}

fn helm_at(env: &str, version: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(version).join("helm"));
    if !path.is_file() {
        panic!(
            "helm {version} not found at {}; run scripts/install-helm.sh",
            path.display()
        );
    }
    path
}

/// helm v3.17.3: `$GU_HELM3`, else `<cache>/v3.17.3/helm`. Panics when missing (never skips).
pub fn helm3() -> PathBuf {
    helm_at("GU_HELM3", "v3.17.3")
}

/// helm v4.1.4: `$GU_HELM4`, else `<cache>/v4.1.4/helm`. Panics when missing (never skips).
pub fn helm4() -> PathBuf {
    helm_at("GU_HELM4", "v4.1.4")
}

/// helm v3.21.4 (built from the Go module): `$GU_HELM3_NEWEST`, else `<cache>/v3.21.4/helm`.
pub fn helm_newest3() -> PathBuf {
    helm_at("GU_HELM3_NEWEST", "v3.21.4")
}

/// helm v4.3.2 (built from the Go module): `$GU_HELM4_NEWEST`, else `<cache>/v4.3.2/helm`.
pub fn helm_newest4() -> PathBuf {
    helm_at("GU_HELM4_NEWEST", "v4.3.2")
}

/// The oldest supported helm 3 and helm 4 (3.17.3, 4.1.4), labelled `helm3` and `helm4`.
pub fn helms() -> Vec<(&'static str, PathBuf)> {
    vec![("helm3", helm3()), ("helm4", helm4())]
}

/// The repository's `fixtures/` directory (charts, captured records).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
}

/// A chart directory under `fixtures/charts/`, e.g. `chart("demo", "1.0.0")`.
pub fn chart(name: &str, version: &str) -> PathBuf {
    fixtures_dir()
        .join("charts")
        .join(format!("{name}-{version}"))
}

/// Copies the directory tree `from` to `to` (a chart copy a test may edit).
///
/// # Panics
/// On any I/O error (a test-setup mistake).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// What a helm run produced.
#[derive(Debug, Clone)]
pub struct HelmOutput {
    /// Exit status was 0.
    pub success: bool,
    /// Exit code, None when killed by a signal.
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// The command line, for messages.
    pub command: String,
}

impl HelmOutput {
    /// A multi-line description (command, exit code, stdout, stderr) for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
    /// Panics with [`HelmOutput::describe`] unless the run succeeded; returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success, "helm failed: {}", self.describe());
        self
    }
    /// stdout parsed as JSON (panics with the full output otherwise).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("helm output is not JSON ({e}): {}", self.describe()))
    }
}

/// Runs a helm binary against a stand-in with an isolated environment: `KUBECONFIG` is the
/// stand-in's kubeconfig; `HELM_CACHE_HOME`, `HELM_CONFIG_HOME`, `HELM_DATA_HOME` live in a
/// private tempdir; every other inherited `HELM_*` variable (e.g. `HELM_DRIVER`,
/// `HELM_NAMESPACE`) is removed unless set with [`Helm::env`] or per run.
pub struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Helm {
    /// A runner for `bin` talking to `standin`.
    pub fn new(bin: &Path, standin: &StandIn) -> Helm {
        Helm::with_kubeconfig(bin, standin.kubeconfig())
    }

    /// A runner for `bin` using any kubeconfig (e.g. of a `kube-standin serve` process).
    pub fn with_kubeconfig(bin: &Path, kubeconfig: &Path) -> Helm {
        Helm {
            bin: bin.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            home: tempfile::Builder::new()
                .prefix("standin-helm-")
                .tempdir()
                .expect("tempdir"),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable for every run (e.g. `HELM_DRIVER=configmap`).
    pub fn env(mut self, key: &str, value: &str) -> Helm {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The helm binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A `Command` with the isolated environment, for callers that need more control.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("HELM_"))
        {
            cmd.env_remove(k);
        }
        cmd.env_remove("KUBECONFIG");
        let home = self.home.path();
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs helm with `args`.
    pub fn run(&self, args: &[&str]) -> HelmOutput {
        self.run_env(args, &[])
    }

    /// Runs helm with `args` and extra environment variables for this run only.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> HelmOutput {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let command = format!("{} {}", self.bin.display(), args.join(" "));
        match cmd.output() {
            Ok(out) => HelmOutput {
                success: out.status.success(),
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                command,
            },
            Err(e) => HelmOutput {
                success: false,
                code: None,
                stdout: String::new(),
                stderr: format!("cannot run helm: {e}"),
                command,
            },
        }
    }
}
