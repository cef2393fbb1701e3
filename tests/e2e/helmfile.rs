//! Real helmfile (v1.8.0, built from its Go module by `scripts/install-helmfile.sh`) with
//! the guard as its helm, on the real API server with helm 3.21.4 and 4.3.2: a helmfile.yaml
//! of four releases (two local charts, one from a chart repository on loopback, one from the
//! OCI registry), `needs:` ordering and `--concurrency 3`, run with `helmBinary:` naming the
//! shim and with the shim first on PATH. The recipe in docs/ci.md is what these runs do.

use std::path::{Path, PathBuf};

use kube_standin::testbed::copy_dir;

use crate::common::{bed, chart, guard_bin, run, serve_dir, Bed, Run};
use crate::servers::registry;

const NS: &str = "shared";

/// The helmfile version the test bed pins (testbed/helmfile/go.mod), e.g. `v1.8.0`.
fn helmfile_version() -> String {
    let go_mod = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/helmfile/go.mod");
    let text = std::fs::read_to_string(&go_mod).expect("read testbed/helmfile/go.mod");
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("github.com/helmfile/helmfile ")
                // `v1.8.0 // indirect`: the version is the first word.
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("testbed/helmfile/go.mod requires github.com/helmfile/helmfile")
}

/// The helmfile binary: `GU_HELMFILE`, else where `scripts/install-helmfile.sh` puts it.
fn helmfile_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GU_HELMFILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("GU_HELMFILE_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                })
                .join("guarded-upgrade/helmfile")
        });
    let bin = cache.join(helmfile_version()).join("helmfile");
    assert!(
        bin.is_file(),
        "helmfile is not built at {}: run ./scripts/install-helmfile.sh",
        bin.display()
    );
    bin
}

/// How helmfile finds the guard.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `helmBinary:` in helmfile.yaml names the shim; PATH has only the real helm.
    HelmBinary,
    /// No `helmBinary:`; the shim is first on PATH, the real helm after it.
    OnPath,
}

/// Chart versions of the four releases, as helmfile.yaml states them.
#[derive(Clone, Copy)]
struct Versions {
    /// `db`: local chart ./charts/db.
    db: &'static str,
    /// `web`: local chart ./charts/web, `needs: [shared/db]`.
    web: &'static str,
    /// `cache`: `local/demo` from the chart repository.
    cache: &'static str,
    /// `queue`: `oci/demo` from the OCI registry.
    queue: &'static str,
}

struct Project {
    b: Bed,
    mode: Mode,
    /// helmfile.yaml and charts/ live here (helmfile's working directory).
    dir: PathBuf,
    /// The `helm` symlink to the guard.
    shim: PathBuf,
    repo_url: String,
    /// `127.0.0.1:PORT/REPO` of the OCI charts.
    oci: String,
}

impl Project {
    fn new(label: &str, mode: Mode) -> Project {
        let b = bed(label);
        b.api.create_namespace(NS);
        let shim_dir = b.home().join("shim");
        std::fs::create_dir_all(&shim_dir).unwrap();
        let shim = shim_dir.join("helm");
        std::os::unix::fs::symlink(guard_bin(), &shim).unwrap();
        let dir = b.home().join("project");
        std::fs::create_dir_all(dir.join("charts")).unwrap();

        // A chart repository with demo 0.9.0–1.2.0 on loopback.
        let repo = b.home().join("repo");
        let packages = b.home().join("packages");
        for v in ["0.9.0", "1.0.0", "1.1.0", "1.2.0"] {
            for to in [&repo, &packages] {
                b.helm(&[
                    "package",
                    &chart(&format!("demo-{v}")),
                    "-d",
                    to.to_str().unwrap(),
                ])
                .expect_code(0, "helm package");
            }
        }
        let repo_url = serve_dir(repo.clone());
        b.helm(&["repo", "index", repo.to_str().unwrap(), "--url", &repo_url])
            .expect_code(0, "helm repo index");

        // The same charts in the OCI registry, under a repository of this test's own.
        let reg = registry();
        let oci = format!("{}/helmfile-{}-{mode:?}", reg.host, b.label).to_lowercase();
        for v in ["0.9.0", "1.0.0", "1.1.0", "1.2.0"] {
            let tgz = packages.join(format!("demo-{v}.tgz"));
            b.helm(&[
                "push",
                tgz.to_str().unwrap(),
                &format!("oci://{oci}"),
                "--plain-http",
            ])
            .expect_code(0, "helm push");
        }
        Project {
            b,
            mode,
            dir,
            shim,
            repo_url,
            oci,
        }
    }

    /// Writes helmfile.yaml and the two local charts for `v`.
    fn write(&self, v: Versions) {
        for (name, version) in [("db", v.db), ("web", v.web)] {
            let to = self.dir.join("charts").join(name);
            let _ = std::fs::remove_dir_all(&to);
            copy_dir(Path::new(&self.b.versioned_chart(version)), &to);
        }
        let helm_binary = match self.mode {
            Mode::HelmBinary => format!("helmBinary: {}\n", self.shim.display()),
            Mode::OnPath => String::new(),
        };
        let yaml = format!(
            "{helm_binary}repositories:\n\
             \x20 - name: local\n    url: {repo}\n\
             \x20 - name: oci\n    url: {oci}\n    oci: true\n    plainHttp: true\n\
             releases:\n\
             \x20 - name: db\n    namespace: {NS}\n    chart: ./charts/db\n\
             \x20 - name: web\n    namespace: {NS}\n    chart: ./charts/web\n    needs:\n      - {NS}/db\n\
             \x20 - name: cache\n    namespace: {NS}\n    chart: local/demo\n    version: {cache}\n\
             \x20 - name: queue\n    namespace: {NS}\n    chart: oci/demo\n    version: {queue}\n",
            repo = self.repo_url,
            oci = self.oci,
            cache = v.cache,
            queue = v.queue,
        );
        std::fs::write(self.dir.join("helmfile.yaml"), yaml).unwrap();
    }

    /// PATH for helmfile: the shim first (OnPath), then the real helm, then the system.
    fn path(&self) -> String {
        let real = self.b.helm_bin.parent().unwrap().display().to_string();
        let system = std::env::var("PATH").unwrap_or_default();
        match self.mode {
            Mode::OnPath => format!("{}:{real}:{system}", self.shim.parent().unwrap().display()),
            Mode::HelmBinary => format!("{real}:{system}"),
        }
    }

    /// `helmfile ARGS` in the project, with the bed's cluster and helm homes.
    fn helmfile(&self, args: &[&str]) -> Run {
        self.helmfile_env(args, &[])
    }

    fn helmfile_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut cmd = self.b.command(helmfile_bin());
        cmd.current_dir(&self.dir)
            .env("PATH", self.path())
            // The shim goes by PATH (or GUARDED_UPGRADE_HELM), never by HELM_BIN.
            .env_remove("HELM_BIN")
            .args(args)
            .envs(extra.iter().copied());
        run(&mut cmd)
    }

    /// `helmfile sync` as docs/ci.md runs it.
    fn sync(&self) -> Run {
        self.helmfile_env(
            &["sync", "--concurrency", "3", "--enable-live-output"],
            &[("GUARDED_UPGRADE_MUTEX_TIMEOUT", "10m")],
        )
    }

    fn deployed(&self) -> Vec<(String, String, u64)> {
        ["db", "web", "cache", "queue"]
            .iter()
            .map(|r| {
                let (v, rev) = self.b.deployed(r, NS);
                (r.to_string(), v, rev)
            })
            .collect()
    }
}

fn all(db: &'static str, web: &'static str, cache: &'static str, queue: &'static str) -> Versions {
    Versions {
        db,
        web,
        cache,
        queue,
    }
}

fn want(rows: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    rows.iter()
        .map(|(r, v, n)| (r.to_string(), v.to_string(), *n))
        .collect()
}

/// Panics unless some line of helmfile's combined output is exactly `line`.
#[track_caller]
fn has_line(run: &Run, line: &str) {
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.lines().any(|l| l == line),
        "no line of helmfile's output is exactly\n  {line:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout,
        run.stderr
    );
}

/// The first install: every release installed, `web` only after `db` is deployed.
fn first_sync(p: &Project) {
    p.write(all("1.0.0", "1.0.0", "1.0.0", "1.0.0"));
    p.b.api.clear_requests();
    let first = p.sync();
    first.expect_code(0, "helmfile sync (install)");
    for r in ["db", "web", "cache", "queue"] {
        has_line(
            &first,
            &format!("install: \"{r}\" in \"{NS}\" 1.0.0 (not installed yet)"),
        );
    }
    assert_eq!(
        p.deployed(),
        want(&[
            ("db", "1.0.0", 1),
            ("web", "1.0.0", 1),
            ("cache", "1.0.0", 1),
            ("queue", "1.0.0", 1)
        ])
    );
    // needs: the first request about `web` (the guard reading its records) comes after
    // helm marked db's record deployed (its last write).
    let requests = p.b.api.requests();
    let db_done = requests
        .iter()
        .rposition(|r| r.is_write() && r.path.ends_with("/sh.helm.release.v1.db.v1"))
        .expect("helm wrote db's record");
    let web_first = requests
        .iter()
        .position(|r| r.query.contains("name%3Dweb") || r.path.contains(".web."))
        .expect("requests about web");
    assert!(
        db_done < web_first,
        "web was started before db was deployed: {:#?}",
        &requests[web_first.min(db_done)..=web_first.max(db_done)]
    );
}

/// The second sync changes nothing: every release skipped, not one write.
fn second_sync_skips_all(p: &Project) {
    p.b.api.clear_requests();
    let again = p.sync();
    again.expect_code(0, "helmfile sync (again)");
    for r in ["db", "web", "cache", "queue"] {
        has_line(
            &again,
            &format!(
                "skip: release \"{r}\" in \"{NS}\" is at 1.0.0 (revision 1); target 1.0.0 is \
                 not newer (policy newer; use --min-version-policy newer-or-equal to re-apply)"
            ),
        );
    }
    assert_eq!(p.b.writes(), Vec::<String>::new(), "a no-op sync wrote");
}

fn helmfile_helm_binary(label: &str) {
    let p = Project::new(label, Mode::HelmBinary);
    first_sync(&p);
    second_sync_skips_all(&p);

    // One release set older: skipped with its skip line; the others proceed.
    p.write(all("1.1.0", "1.1.0", "0.9.0", "1.1.0"));
    let older = p.sync();
    older.expect_code(0, "helmfile sync (cache older)");
    has_line(
        &older,
        &format!(
            "skip: release \"cache\" in \"{NS}\" is at 1.0.0 (revision 1); target 0.9.0 would \
             be a downgrade"
        ),
    );
    for r in ["db", "web", "queue"] {
        has_line(
            &older,
            &format!("upgrade: \"{r}\" in \"{NS}\" 1.0.0 -> 1.1.0"),
        );
    }
    assert_eq!(
        p.deployed(),
        want(&[
            ("db", "1.1.0", 2),
            ("web", "1.1.0", 2),
            ("cache", "1.0.0", 1),
            ("queue", "1.1.0", 2)
        ])
    );

    // A locked release (web) and a hard-locked one (db): both skipped, helmfile exits 0.
    p.b.guard(&["lock", "web", "-n", NS, "--reason", "freeze"])
        .expect_code(0, "lock web");
    p.b.guard(&["lock", "db", "-n", NS, "--hard", "--reason", "migration"])
        .expect_code(0, "lock --hard db");
    p.write(all("1.2.0", "1.2.0", "1.0.0", "1.1.0"));
    p.b.api.clear_requests();
    let locked = p.sync();
    locked.expect_code(0, "helmfile sync (locked)");
    // The guard's own skip lines, whatever else the lock's description says.
    let out = format!("{}{}", locked.stdout, locked.stderr);
    for (r, kind) in [("web", "soft"), ("db", "hard")] {
        let start = format!("skip: release \"{r}\" in \"{NS}\" is at 1.1.0 (revision 2");
        assert!(
            out.lines().any(|l| l.starts_with(&start)
                && l.contains("target 1.2.0 not applied: ")
                && l.contains(&format!("{kind} lock"))),
            "no {kind}-lock skip line for {r}:\n{out}"
        );
    }
    assert_eq!(
        p.b.writes(),
        Vec::<String>::new(),
        "locked releases were written"
    );
    assert_eq!(p.b.deployed("web", NS), ("1.1.0".into(), 2));

    // list and status reach the real helm untouched: the same as helmfile with real helm.
    let direct = |args: &[&str]| {
        let mut all = vec!["--helm-binary", p.b.helm_bin.to_str().unwrap()];
        all.extend_from_slice(args);
        p.helmfile(&all)
    };
    let (shim_list, real_list) = (p.helmfile(&["list"]), direct(&["list"]));
    shim_list.expect_code(0, "helmfile list");
    assert_eq!(
        (&shim_list.stdout, shim_list.code),
        (&real_list.stdout, real_list.code),
        "helmfile list through the shim"
    );
    // helmfile logs helm's status output (its info log goes to stderr).
    let status = p.helmfile(&["status", "--concurrency", "1"]);
    status.expect_code(0, "helmfile status");
    for r in ["db", "web", "cache", "queue"] {
        has_line(&status, &format!("NAME: {r}"));
    }

    // A refusal: queue's record cannot be read. helmfile fails and names the release; the
    // guard never ran helm for it.
    let record = "sh.helm.release.v1.queue.v2";
    let original =
        p.b.api
            .get("secrets", Some(NS), record)
            .expect("queue's record");
    let mut broken = original.clone();
    broken["data"]["release"] = serde_json::json!("bm90IGEgcmVsZWFzZQ==");
    p.b.api.put_object("secrets", broken);
    p.write(all("1.2.0", "1.2.0", "1.0.0", "1.2.0"));
    let refused = p.sync();
    assert_ne!(refused.code, 0, "a refusal must fail helmfile");
    let out = format!("{}{}", refused.stdout, refused.stderr);
    // The guard's refusal (exit 3) reaches helmfile's output, and helmfile names the release.
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "guarded-upgrade: error: release \"queue\" in namespace \"{NS}\": reading the \
             deployed release: cannot decode Secret \"{record}\""
        ))),
        "no refusal line from the guard:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("in ./helmfile.yaml: failed processing release queue: ")),
        "{out}"
    );
    has_line(&refused, "  exit status 3");
    // helm's own history skips a record it cannot decode, so the records are read
    // directly: the broken one is untouched and there is no revision 3.
    assert_eq!(
        p.b.api
            .get("secrets", Some(NS), record)
            .map(|s| s["data"]["release"].clone()),
        Some(serde_json::json!("bm90IGEgcmVsZWFzZQ==")),
        "queue's broken record was rewritten"
    );
    assert_eq!(
        p.b.api
            .get("secrets", Some(NS), "sh.helm.release.v1.queue.v3"),
        None,
        "helm must not have run for queue"
    );

    // destroy passes through: with the record whole again and the hard lock lifted, every
    // release is uninstalled.
    let mut restored = original;
    restored["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    p.b.api.put_object("secrets", restored);
    p.b.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock db");
    let destroy = p.helmfile(&["destroy", "--concurrency", "3"]);
    destroy.expect_code(0, "helmfile destroy");
    let left = p.b.helm(&["list", "-n", NS, "-q", "-a"]);
    assert_eq!(left.stdout, "", "releases left after destroy");
}

/// The shim first on PATH (no helmBinary): install, a no-op sync, destroy.
fn helmfile_shim_on_path(label: &str) {
    let p = Project::new(label, Mode::OnPath);
    first_sync(&p);
    second_sync_skips_all(&p);
    let destroy = p.helmfile(&["destroy", "--concurrency", "3"]);
    destroy.expect_code(0, "helmfile destroy");
    let left = p.b.helm(&["list", "-n", NS, "-q", "-a"]);
    assert_eq!(left.stdout, "", "releases left after destroy");
}

mod helm3 {
    #[test]
    fn helmfile_helm_binary() {
        super::helmfile_helm_binary("helm3");
    }
    #[test]
    fn helmfile_shim_on_path() {
        super::helmfile_shim_on_path("helm3");
    }
}
mod helm4 {
    #[test]
    fn helmfile_helm_binary() {
        super::helmfile_helm_binary("helm4");
    }
    #[test]
    fn helmfile_shim_on_path() {
        super::helmfile_shim_on_path("helm4");
    }
}
