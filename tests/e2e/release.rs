//! The release artifacts: `scripts/release.sh` (run twice: the same bytes), served from
//! loopback, installed the way README.md and docs/plugin.md say — the binary by `curl` and
//! `sha256sum -c`, the helm plugin by `helm plugin install <URL of the tarball>`, verified
//! by helm 4 with a keyring holding the test's signing key — then `helm guard upgrade`
//! against the real API server. The signing key is generated here, never committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{bed, chart, helm_major, lines, run, serve_dir, serve_dir_typed, Bed, Run};

const NS: &str = "shared";
const TARGET: &str = "x86_64-unknown-linux-gnu";
const PLATFORM: &str = "linux-amd64";
/// The signing key's user id (test-only; generated per test process).
const SIGNER: &str = "guarded-upgrade release test <release-test@guarded-upgrade.invalid>";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What `scripts/release.sh` built, once per test process.
struct Dist {
    /// The first run's output directory, served under `repository`.
    dir: PathBuf,
    /// A loopback "repository" serving `dir` at `releases/download/v<version>/`, as
    /// `GU_REPOSITORY` in the docs.
    repository: String,
    /// A binary keyring with the signing key's public half (what `--keyring` takes).
    keyring: PathBuf,
    /// The signing key's fingerprint (upper-case hex, as helm prints it).
    fingerprint: String,
    /// The crate version (Cargo.toml).
    version: String,
    /// The commit --version must name.
    commit: String,
    _tmp: tempfile::TempDir,
}

fn sh(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn crate_version() -> String {
    let toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    toml.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version in Cargo.toml")
        .to_string()
}

fn dist() -> &'static Dist {
    static DIST: OnceLock<Dist> = OnceLock::new();
    DIST.get_or_init(build_dist)
}

fn build_dist() -> Dist {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A GPG home of its own (short path: gpg-agent's socket lives there).
    let gnupg = tempfile::Builder::new()
        .prefix("gu-gpg")
        .tempdir_in("/tmp")
        .expect("gnupg home");
    // The agent gpg starts for the key and the signatures is not left behind, also when
    // a step below fails.
    let agent = GpgAgent(gnupg.path().to_path_buf());
    let gpg = |args: &[&str]| {
        sh(
            Command::new("gpg")
                .env("GNUPGHOME", gnupg.path())
                .args(["--batch", "--quiet"])
                .args(args),
            &format!("gpg {args:?}"),
        )
    };
    gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        SIGNER,
        "rsa3072",
        "sign",
        "never",
    ]);
    let keyring = tmp.path().join("release-test.gpg");
    std::fs::write(
        &keyring,
        Command::new("gpg")
            .env("GNUPGHOME", gnupg.path())
            .args(["--batch", "--export", SIGNER])
            .output()
            .expect("gpg --export")
            .stdout,
    )
    .unwrap();

    let fingerprint = gpg(&["--with-colons", "--fingerprint", SIGNER])
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .and_then(|l| l.trim_end_matches(':').rsplit(':').next())
        .expect("fingerprint")
        .to_string();

    let version = crate_version();
    let first = tmp.path().join("dist");
    std::fs::create_dir_all(&first).unwrap();
    let repository = serve_release(&tmp.path().join("web"), &first, &version);
    let release = |out: &Path| {
        sh(
            Command::new(root().join("scripts/release.sh"))
                .env("GNUPGHOME", gnupg.path())
                .env("GU_SIGNING_KEY", SIGNER)
                .env("GU_DIST_DIR", out)
                .env("GU_REPOSITORY", &repository)
                .env("GU_RELEASE_TARGETS", TARGET),
            "scripts/release.sh",
        )
    };
    release(&first);
    // Reproducible: a second run gives the same bytes. The .prov files are the one
    // exception: each is clear-signed text, and an OpenPGP signature carries its signing
    // time, so only the signed text (name, version, the tarball's sha256) is the same.
    let second = tmp.path().join("dist-again");
    release(&second);
    let names = |dir: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&first), names(&second));
    for name in names(&first) {
        let (a, b) = (
            std::fs::read(first.join(&name)).unwrap(),
            std::fs::read(second.join(&name)).unwrap(),
        );
        if name.ends_with(".prov") {
            let signed = |prov: &[u8]| {
                let text = String::from_utf8(prov.to_vec()).expect("a .prov is text");
                let (message, _) = text
                    .split_once("-----BEGIN PGP SIGNATURE-----")
                    .unwrap_or_else(|| panic!("{name} is not clear-signed:\n{text}"));
                message.to_string()
            };
            assert_eq!(
                signed(&a),
                signed(&b),
                "{name}: the signed text differs between two runs of scripts/release.sh"
            );
        } else {
            assert!(
                a == b,
                "{name} differs between two runs of scripts/release.sh"
            );
        }
    }
    drop(agent);

    let git = |args: &[&str]| sh(Command::new("git").current_dir(root()).args(args), "git");
    let mut commit = git(&["rev-parse", "--short", "HEAD"]).trim().to_string();
    if !git(&["status", "--porcelain", "--untracked-files=no"])
        .trim()
        .is_empty()
    {
        commit.push_str("-dirty");
    }
    Dist {
        dir: first,
        repository,
        keyring,
        fingerprint,
        version,
        commit,
        _tmp: tmp,
    }
}

/// Stops the gpg-agent of a GPG home when dropped.
struct GpgAgent(PathBuf);

impl Drop for GpgAgent {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.0)
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// Serves `dist` as `<root>/releases/download/v<version>/` of a loopback web server (the
/// layout the docs and cargo binstall's pkg-url expect) that names each file's type as a
/// release host does (a tarball is `application/gzip`); returns the root URL.
fn serve_release(web: &Path, dist: &Path, version: &str) -> String {
    serve_dir_typed(release_layout(web, dist, version))
}

/// The same layout served without `Content-Type` headers.
fn serve_release_untyped(web: &Path, dist: &Path, version: &str) -> String {
    serve_dir(release_layout(web, dist, version))
}

fn release_layout(web: &Path, dist: &Path, version: &str) -> PathBuf {
    let releases = web.join("releases/download");
    std::fs::create_dir_all(&releases).unwrap();
    std::os::unix::fs::symlink(dist, releases.join(format!("v{version}"))).unwrap();
    web.to_path_buf()
}

/// dist/ holds exactly the documented files, checksums.txt verifies, and the binary, the
/// plugin manifest and Cargo.toml name one version (and --version the commit).
#[test]
fn release_artifacts() {
    let d = dist();
    let v = &d.version;
    let mut names: Vec<String> = std::fs::read_dir(&d.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "INSTALL.md".to_string(),
            "checksums.txt".into(),
            format!("guard-{v}-{PLATFORM}.tgz"),
            format!("guard-{v}-{PLATFORM}.tgz.prov"),
            format!("guarded-upgrade-{v}-{TARGET}.tar.gz"),
            format!("guarded-upgrade-{v}.cdx.json"),
            "guarded-upgrade-release-key.gpg".into(),
        ]
    );
    let sums = std::fs::read_to_string(d.dir.join("checksums.txt")).unwrap();
    let listed: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").expect("sha256sum format").1)
        .collect();
    assert_eq!(
        listed,
        [
            format!("guard-{v}-{PLATFORM}.tgz"),
            format!("guarded-upgrade-{v}-{TARGET}.tar.gz"),
            format!("guarded-upgrade-{v}.cdx.json"),
            "guarded-upgrade-release-key.gpg".into(),
        ]
    );
    sh(
        Command::new("sha256sum")
            .args(["-c", "checksums.txt"])
            .current_dir(&d.dir),
        "sha256sum -c",
    );

    // The binary tarball: one directory, the binary and the README, fixed owner and time.
    let tarball = d.dir.join(format!("guarded-upgrade-{v}-{TARGET}.tar.gz"));
    let listing = sh(
        Command::new("tar").args(["-tvzf", tarball.to_str().unwrap()]),
        "tar -t",
    );
    let entries: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let top = format!("guarded-upgrade-{v}-{TARGET}");
    assert_eq!(
        entries.iter().map(|e| e[5]).collect::<Vec<_>>(),
        [
            format!("{top}/"),
            format!("{top}/README.md"),
            format!("{top}/guarded-upgrade")
        ]
    );
    assert!(entries.iter().all(|e| e[1] == "0/0"), "{listing}");
    let plugin = d.dir.join(format!("guard-{v}-{PLATFORM}.tgz"));
    let listing = sh(
        Command::new("tar").args(["-tzf", plugin.to_str().unwrap()]),
        "tar -t",
    );
    // plugin.yaml at the root (helm 3 looks only there), directories before their files.
    assert_eq!(
        lines(&listing),
        [
            "bin/",
            "bin/guarded-upgrade",
            "completion.yaml",
            "plugin.yaml",
            "scripts/",
            "scripts/helm-plugin-install.sh"
        ]
    );

    // One version: Cargo.toml, plugin.yaml (in the tarball too) and --version.
    let x = tempfile::tempdir().unwrap();
    sh(
        Command::new("tar")
            .args(["-xzf", tarball.to_str().unwrap(), "-C"])
            .arg(x.path()),
        "tar -x",
    );
    let version = sh(
        Command::new(x.path().join(&top).join("guarded-upgrade")).arg("--version"),
        "--version",
    );
    assert_eq!(
        version.trim(),
        format!("guarded-upgrade {v} (commit {})", d.commit)
    );
    let manifest = std::fs::read_to_string(root().join("plugin.yaml")).unwrap();
    assert!(
        lines(&manifest).contains(&format!("version: {v}").as_str()),
        "plugin.yaml's version is not the crate's {v}"
    );
    sh(
        Command::new("tar")
            .args(["-xzf", plugin.to_str().unwrap(), "-C"])
            .arg(x.path()),
        "tar -x plugin",
    );
    assert_eq!(
        std::fs::read_to_string(x.path().join("plugin.yaml")).unwrap(),
        manifest
    );

    // The SBOM: CycloneDX JSON describing this crate at this version, with its runtime
    // dependencies (kube among them) and none of the test-only ones.
    let sbom: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.dir.join(format!("guarded-upgrade-{v}.cdx.json"))).unwrap(),
    )
    .expect("SBOM is JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["metadata"]["component"]["name"], "guarded-upgrade");
    assert_eq!(sbom["metadata"]["component"]["version"], v.as_str());
    let components: Vec<&str> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for dep in ["kube", "tokio", "clap", "rustls"] {
        assert!(components.contains(&dep), "{dep} missing from the SBOM");
    }
    for test_only in ["kube-standin", "kube-testbed", "proptest", "tempfile"] {
        assert!(
            !components.contains(&test_only),
            "{test_only} is test-only but in the SBOM"
        );
    }

    // cargo binstall (not run here: it is not built on this project's machines, see
    // docs/release.md). Its templates in Cargo.toml, filled in the way binstall fills
    // them, name exactly what release.sh wrote: pkg-url the binary tarball (downloaded
    // from the loopback release), bin-dir the binary inside it. README.md's binstall
    // command passes the same pkg-url with `{ repo }` spelled `$GU_REPOSITORY`.
    let toml = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let binstall = toml
        .split("[package.metadata.binstall]")
        .nth(1)
        .expect("[package.metadata.binstall] in Cargo.toml");
    let binstall = binstall.split("\n[").next().unwrap();
    let field = |key: &str| {
        binstall
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{key} in [package.metadata.binstall]"))
            .to_string()
    };
    // binstall's values for this target (`{ binary-ext }` is ".exe" on Windows only).
    let expand = |template: &str, repo: &str| {
        let out = template
            .replace("{ repo }", repo)
            .replace("{ name }", "guarded-upgrade")
            .replace("{ version }", v)
            .replace("{ target }", TARGET)
            .replace("{ bin }", "guarded-upgrade")
            .replace("{ binary-ext }", "");
        assert!(!out.contains('{'), "a template key left in {out}");
        out
    };
    let pkg_url = field("pkg-url");
    assert_eq!(field("pkg-fmt"), "tgz");
    assert_eq!(
        expand(&pkg_url, &d.repository),
        download(
            &d.repository,
            &format!("guarded-upgrade-{v}-{TARGET}.tar.gz")
        )
    );
    let fetched = x.path().join("binstall.tar.gz");
    sh(
        Command::new("curl")
            .args(["-fsS", "-o"])
            .arg(&fetched)
            .arg(expand(&pkg_url, &d.repository)),
        "curl pkg-url",
    );
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&tarball).unwrap());
    let bin_dir = expand(&field("bin-dir"), &d.repository);
    assert_eq!(bin_dir, format!("{top}/guarded-upgrade"));
    assert!(x.path().join(&bin_dir).is_file());
    let command = readme_recipe("binstall");
    let readme_url = command
        .split_once("--pkg-url \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .unwrap_or_else(|| panic!("no --pkg-url \"…\" in README's binstall command:\n{command}"))
        .0;
    assert_eq!(readme_url, pkg_url.replace("{ repo }", "$GU_REPOSITORY"));
    assert!(
        command.starts_with("cargo binstall --git \"$GU_REPOSITORY\""),
        "{command}"
    );
}

/// The fenced block after `<!-- recipe: NAME -->` in README.md.
fn readme_recipe(name: &str) -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let marker = format!("<!-- recipe: {name} -->");
    let mut doc = readme.lines().skip_while(|l| l.trim() != marker).skip(1);
    let fence = doc
        .next()
        .unwrap_or_else(|| panic!("no recipe {name} in README.md"));
    assert!(fence.trim().starts_with("```"), "{fence}");
    doc.take_while(|l| !l.trim().starts_with("```"))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("\n")
}

/// README's install without Rust, verbatim: download, `sha256sum -c`, unpack; and the same
/// with a tampered download, which must stop before anything is installed.
#[test]
fn readme_install_without_rust() {
    let d = dist();
    let script = readme_recipe("install-binary");
    let install = |url: &str| {
        let home = tempfile::tempdir().unwrap();
        let out = run(Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(home.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home.path())
            .env("GU_REPOSITORY", url));
        let installed = home.path().join(".local/bin/guarded-upgrade").exists();
        (out, installed, home)
    };
    let (ok, installed, _home) = install(&d.repository);
    ok.expect_code(0, "README install");
    assert!(installed);
    assert_eq!(
        lines(&ok.stdout).last().copied(),
        Some(format!("guarded-upgrade {} (commit {})", d.version, d.commit).as_str()),
        "{}",
        ok.stdout
    );
    // A tarball that is not the one checksums.txt names: sha256sum -c fails, nothing is
    // installed.
    let bad = tampered(d, &format!("guarded-upgrade-{}-{TARGET}.tar.gz", d.version));
    let (refused, installed, _home) = install(&bad);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(!installed, "a tampered binary was installed");
    assert!(
        refused.stdout.contains("FAILED") || refused.stderr.contains("FAILED"),
        "{}{}",
        refused.stdout,
        refused.stderr
    );
}

fn tampered_dir(name: &str) -> PathBuf {
    dist()._tmp.path().join(format!("tampered-{name}"))
}

/// `name` in the release served at `repository`.
fn download(repository: &str, name: &str) -> String {
    format!("{repository}/releases/download/v{}/{name}", dist().version)
}

/// A copy of dist/ served as a release of a repository of its own (the URL returned),
/// with `name` replaced by a different tarball (one file inside changed, repacked); its
/// .prov and checksums.txt are the originals. Made once per name.
fn tampered(d: &Dist, name: &str) -> String {
    static SERVED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut served = SERVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, url)) = served.iter().find(|(n, _)| n == name) {
        return url.clone();
    }
    let dir = tampered_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&d.dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let x = d._tmp.path().join(format!("unpacked-{name}"));
    std::fs::create_dir_all(&x).unwrap();
    sh(
        Command::new("tar")
            .args(["-xzf", dir.join(name).to_str().unwrap(), "-C"])
            .arg(&x),
        "tar -x",
    );
    // The binary tarball has one top directory with README.md; the plugin tarball has
    // completion.yaml at its root.
    let changed = std::fs::read_dir(&x)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("README.md").exists())
        .map(|p| p.join("README.md"))
        .unwrap_or_else(|| x.join("completion.yaml"));
    let mut text = std::fs::read(&changed).unwrap();
    text.extend_from_slice(b"\n# tampered\n");
    std::fs::write(&changed, text).unwrap();
    let mut members: Vec<String> = std::fs::read_dir(&x)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    members.sort();
    sh(
        Command::new("tar")
            .args(["-czf", dir.join(name).to_str().unwrap(), "-C"])
            .arg(&x)
            .args(&members),
        "tar -c",
    );
    let url = serve_release(
        &d._tmp.path().join(format!("web-tampered-{name}")),
        &dir,
        &d.version,
    );
    served.push((name.to_string(), url.clone()));
    url
}

/// README's plugin recipe, verbatim (helm 4), or with its helm 3 line instead of the
/// helm 4 one, run with `helm` the bed's helm, in a directory holding ./chart and
/// values.yaml, against the bed's API server; no cargo on PATH.
fn plugin_recipe(b: &Bed, repository: &str) -> Run {
    let recipe = readme_recipe("install-plugin");
    let script: Vec<String> = recipe
        .lines()
        .filter_map(|l| {
            if helm_major(b.label) == 4 {
                Some(l.to_string())
            } else if l.ends_with("# helm 4") {
                None
            } else {
                Some(l.strip_prefix("# helm 3: ").unwrap_or(l).to_string())
            }
        })
        .collect();
    let job = b.home().join("job");
    kube_standin::testbed::copy_dir(Path::new(&chart("demo-1.0.0")), &job.join("chart"));
    std::fs::write(job.join("values.yaml"), "message: from the recipe\n").unwrap();
    run(b
        .command("bash")
        .args(["-euo", "pipefail", "-c", &script.join("\n")])
        .current_dir(&job)
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", b.helm_bin.parent().unwrap().display()),
        )
        .env("HELM_PLUGINS", b.home().join("data").join("plugins"))
        .env("GU_REPOSITORY", repository))
}

/// helm with the bed's homes, plugins in `$HELM_DATA_HOME/plugins`, and no cargo on PATH.
fn helm(b: &Bed, args: &[&str]) -> Run {
    run(b
        .command(&b.helm_bin)
        .args(args)
        .env("HELM_PLUGINS", b.home().join("data").join("plugins"))
        .env("PATH", "/usr/bin:/bin"))
}

/// README's plugin install from the release URL: verified by helm 4 with the release's key,
/// unverified by helm 3; the bundled binary runs without cargo; the recipe's guarded
/// upgrade lands on the real API server; a downgrade through the plugin is skipped.
fn plugin_from_release_url(label: &str) {
    let d = dist();
    let b = bed(label);
    b.api.create_namespace(NS);
    if helm_major(label) == 3 {
        // helm 3 takes an http(s) URL for a plugin tarball only when a HEAD request on it
        // answers a gzip Content-Type; otherwise it tries the URL as a VCS repository.
        let untyped = serve_release_untyped(
            &d._tmp.path().join(format!("web-untyped-{label}")),
            &d.dir,
            &d.version,
        );
        let h = PluginHome::new(b.helm_bin.clone());
        let name = format!("guard-{}-{PLATFORM}.tgz", d.version);
        let refused = h.helm(&["plugin", "install", &download(&untyped, &name)]);
        refused.expect_code(1, "helm 3, a tarball URL without a gzip Content-Type");
        refused.assert_stderr_line("Error: Cannot detect VCS");
        h.assert_not_installed();
    }
    let installed = plugin_recipe(&b, &d.repository);
    installed.expect_code(0, "README's plugin recipe");
    let out = lines(&installed.stdout);
    let at = out
        .iter()
        .position(|l| *l == "Installed plugin: guard")
        .unwrap_or_else(|| panic!("{}", installed.stdout));
    if helm_major(label) == 4 {
        // Verification is on by default in helm 4: the signature and the sum were checked.
        let sum = std::fs::read_to_string(d.dir.join("checksums.txt")).unwrap();
        let sum = sum
            .lines()
            .find(|l| l.ends_with(&format!("  guard-{}-{PLATFORM}.tgz", d.version)))
            .and_then(|l| l.split_once("  "))
            .unwrap()
            .0
            .to_string();
        assert_eq!(out[..at].len(), 4, "{}", installed.stdout);
        assert_eq!(out[0], "Verifying plugin signature...");
        assert_eq!(out[1], format!("Signed by: {SIGNER}"));
        assert_eq!(
            out[2],
            format!("Using Key With Fingerprint: {}", d.fingerprint)
        );
        assert_eq!(out[3], format!("Plugin Hash Verified: sha256:{sum}"));
    } else {
        assert_eq!(at, 0, "{}", installed.stdout);
    }
    // The hook found the bundled binary: no build, no cargo (not on PATH); then the
    // recipe's upgrade decided to install.
    let err = lines(&installed.stderr);
    assert_eq!(
        err[..2],
        [
            format!(
                "guarded-upgrade plugin: installed guarded-upgrade {} (commit {})",
                d.version, d.commit
            ),
            format!("install: \"db\" in \"{NS}\" 1.0.0 (not installed yet)"),
        ],
        "{}",
        installed.stderr
    );
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));

    let listed = helm(&b, &["plugin", "list"]);
    let row = lines(&listed.stdout)
        .into_iter()
        .find(|l| l.starts_with("guard"))
        .unwrap_or_else(|| panic!("{}", listed.stdout))
        .to_string();
    assert!(
        row.split_whitespace().any(|w| w == d.version),
        "helm plugin list: {row}"
    );
    let version = helm(&b, &["guard", "--version"]);
    version.expect_code(0, "helm guard --version");
    assert_eq!(
        version.stdout.trim(),
        format!("guarded-upgrade {} (commit {})", d.version, d.commit)
    );
    let down = helm(
        &b,
        &["guard", "upgrade", "db", &chart("demo-0.9.0"), "-n", NS],
    );
    down.expect_code(0, "helm guard upgrade (downgrade)");
    assert_eq!(
        lines(&down.stderr)[0],
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 0.9.0 would be a \
         downgrade"
    );
    assert_eq!(b.deployed("db", NS), ("1.0.0".into(), 1));
}

/// A private helm home for a helm that talks to no cluster (plugin installs only).
struct PluginHome {
    helm: PathBuf,
    home: tempfile::TempDir,
}

impl PluginHome {
    fn new(helm: PathBuf) -> PluginHome {
        PluginHome {
            helm,
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn helm(&self, args: &[&str]) -> Run {
        let home = self.home.path();
        run(Command::new(&self.helm)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("HELM_PLUGINS", home.join("data").join("plugins")))
    }

    fn assert_not_installed(&self) {
        let listed = self.helm(&["plugin", "list"]);
        assert!(
            !listed.stdout.lines().any(|l| l.starts_with("guard")),
            "{}",
            listed.stdout
        );
        assert!(!self.home.path().join("data/plugins/guard").exists());
    }
}

/// helm 4 refuses what it cannot verify: a tarball that is not the signed one, a keyring
/// without the signing key, and a tarball without its .prov. Nothing is installed.
fn plugin_verification_refusals(helm_bin: PathBuf) {
    let d = dist();
    let name = format!("guard-{}-{PLATFORM}.tgz", d.version);
    let keyring = d.keyring.to_str().unwrap();

    let h = PluginHome::new(helm_bin.clone());
    let bad = tampered(d, &name);
    let refused = h.helm(&[
        "plugin",
        "install",
        &download(&bad, &name),
        "--keyring",
        keyring,
    ]);
    refused.expect_code(1, "tampered tarball");
    refused.assert_stderr_line(&format!(
        "Error: plugin verification failed: sha256 sum does not match for {name}: \"sha256:{}\" \
         != \"sha256:{}\"",
        sha256_of(&d.dir.join(&name)),
        sha256_of(&tampered_dir(&name).join(&name)),
    ));
    h.assert_not_installed();

    // A keyring without the signing key.
    let h = PluginHome::new(helm_bin.clone());
    let other = h.home.path().join("other.gpg");
    std::fs::write(&other, b"").unwrap();
    let unknown = h.helm(&[
        "plugin",
        "install",
        &download(&d.repository, &name),
        "--keyring",
        other.to_str().unwrap(),
    ]);
    assert_ne!(unknown.code, 0, "{}", unknown.stdout);
    assert!(
        unknown.stderr.contains("plugin verification failed"),
        "{}",
        unknown.stderr
    );
    h.assert_not_installed();

    // No .prov next to the tarball.
    let h = PluginHome::new(helm_bin);
    let bare = h.home.path().join("served");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(d.dir.join(&name), bare.join(&name)).unwrap();
    // Served without Content-Type: helm 4 takes the URL for a tarball by its suffix.
    let bare_url = serve_dir(bare);
    let unsigned = h.helm(&[
        "plugin",
        "install",
        &format!("{bare_url}/{name}"),
        "--keyring",
        keyring,
    ]);
    unsigned.expect_code(1, "no .prov");
    unsigned
        .assert_stderr_line("Error: plugin verification failed: no provenance file (.prov) found");
    h.assert_not_installed();
}

fn sha256_of(path: &Path) -> String {
    sh(Command::new("sha256sum").arg(path), "sha256sum")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The newest and the oldest helm 3 and helm 4, each on the real API server.
mod plugin_from_release {
    #[test]
    fn helm3() {
        super::plugin_from_release_url("helm3");
    }
    #[test]
    fn helm4() {
        super::plugin_from_release_url("helm4");
    }
    #[test]
    fn helm3_17() {
        super::plugin_from_release_url("helm3.17");
    }
    #[test]
    fn helm4_1() {
        super::plugin_from_release_url("helm4.1");
    }
}

/// Plugin verification exists in helm 4 only: the newest and the oldest supported helm 4.
mod helm4_only {
    use kube_standin::testbed::{helm4, helm_newest4};

    #[test]
    fn plugin_verification_refusals() {
        super::plugin_verification_refusals(helm_newest4());
    }

    #[test]
    fn plugin_verification_refusals_oldest() {
        super::plugin_verification_refusals(helm4());
    }
}

/// docs/ci.md's GitHub install step is README.md's binary recipe (one recipe, tested by
/// `readme_install_without_rust`), plus the line that puts the binary on the job's PATH.
#[test]
fn ci_install_step_is_the_readme_recipe() {
    let ci = std::fs::read_to_string(root().join("docs/ci.md")).unwrap();
    let mut step = ci
        .lines()
        .skip_while(|l| l.trim() != "- name: Install guarded-upgrade")
        .skip_while(|l| l.trim() != "run: |")
        .skip(1)
        .take_while(|l| l.starts_with("          "))
        .map(str::trim)
        .collect::<Vec<_>>();
    assert_eq!(
        step.pop(),
        Some("echo \"$HOME/.local/bin\" >> \"$GITHUB_PATH\"")
    );
    let readme = readme_recipe("install-binary");
    let mut recipe: Vec<&str> = readme.lines().collect();
    let version = recipe.pop().unwrap();
    assert!(
        version.starts_with("~/.local/bin/guarded-upgrade --version"),
        "{version}"
    );
    assert_eq!(step, recipe);
}
