//! Resolving the chart version `helm upgrade` would install.
//!
//! Follows helm's `LocateChart`: with `--repo` the chart is remote; otherwise a path that
//! exists locally is a chart directory or a packaged archive; otherwise it is a repo,
//! OCI or URL reference. Local charts are read directly (an archive without unpacking it to
//! disk); for repository charts an exact `--version` is taken as is and anything else is
//! asked of helm (`helm show chart`), which applies the repo index, constraints and
//! `--devel`. `oci://` charts are always asked of helm, even for an exact version: that is
//! what checks the registry is reachable and accepts the credentials before helm upgrades,
//! and what resolves tags and digests in the reference (`oci://host/repo/chart:1.2.3`,
//! `…@sha256:…`) exactly as helm will.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapters::helm::HelmCommand;
use crate::core::argv::HelmFlags;
use crate::core::version::is_exact_version;

/// Charts bigger than this are not read for their `Chart.yaml` (helm's own limit on a
/// `Chart.yaml` is far below).
const MAX_CHART_YAML_BYTES: u64 = 1024 * 1024;

/// The scheme of OCI chart references.
const OCI_PREFIX: &str = "oci://";

/// Where a chart comes from, as helm would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChartSource {
    /// An unpacked chart directory.
    Directory(PathBuf),
    /// A packaged chart (`.tgz`) on disk.
    Archive(PathBuf),
    /// `repo/name`, an URL or a name with `--repo`.
    Remote(String),
    /// `oci://registry/repository/chart[:tag][@digest]`.
    Oci(String),
}

impl ChartSource {
    /// Classifies the CHART argument like helm does.
    pub fn classify(chart: &str, flags: &HelmFlags) -> ChartSource {
        if flags.repo.is_none() {
            let path = Path::new(chart);
            if path.is_dir() {
                return ChartSource::Directory(path.to_path_buf());
            }
            if path.is_file() {
                return ChartSource::Archive(path.to_path_buf());
            }
            if chart.starts_with(OCI_PREFIX) {
                return ChartSource::Oci(chart.to_string());
            }
        }
        ChartSource::Remote(chart.to_string())
    }

    /// Short text for messages and the JSON report.
    pub fn describe(&self) -> &'static str {
        match self {
            ChartSource::Directory(_) => "directory",
            ChartSource::Archive(_) => "archive",
            ChartSource::Remote(_) => "remote",
            ChartSource::Oci(_) => "oci",
        }
    }
}

/// The chart and version helm would install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// Chart name, when known.
    pub chart_name: Option<String>,
    /// Chart version as written in the chart or `--version`.
    pub version: String,
    /// How it was found.
    pub source: ChartSource,
    /// Something the user should know (e.g. `--version` ignored for a local chart).
    pub note: Option<String>,
}

/// Longest wait for `helm show chart` (helm's own HTTP calls have no overall bound).
pub(crate) const SHOW_CHART_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Failures resolving the target version.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A chart directory or archive could not be read.
    #[error("cannot read chart {path:?}: {message}")]
    Local {
        /// The CHART argument.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// `helm show chart` failed.
    #[error("`helm show chart {chart}` failed (exit {code}): {stderr}")]
    ShowChart {
        /// The chart reference.
        chart: String,
        /// Helm's exit code.
        code: String,
        /// Helm's error output, trimmed.
        stderr: String,
    },
    /// `helm show chart` could not reach an OCI registry or was refused by it.
    #[error("OCI registry {registry} {} ({detail}); {}", problem.what(), problem.hint(registry))]
    Registry {
        /// `host[:port]` of the registry.
        registry: String,
        /// Unreachable or refused.
        problem: RegistryProblem,
        /// The helm call, its exit code and its error output.
        detail: String,
    },
    /// `helm show chart` answered something that is not a Chart.yaml.
    #[error("`helm show chart {chart}` printed no chart version: {message}")]
    ShowChartOutput {
        /// The chart reference.
        chart: String,
        /// What was wrong.
        message: String,
    },
}

/// Why an OCI registry could not answer `helm show chart`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryProblem {
    /// Connection refused, DNS, TLS: nothing usable answered.
    Unreachable,
    /// 401/403: no or wrong credentials.
    Denied,
}

impl RegistryProblem {
    fn what(self) -> &'static str {
        match self {
            RegistryProblem::Unreachable => "cannot be reached",
            RegistryProblem::Denied => "refused access",
        }
    }

    fn hint(self, registry: &str) -> String {
        match self {
            RegistryProblem::Unreachable => "check the address, that the registry is up, and \
                                             --plain-http / --ca-file / \
                                             --insecure-skip-tls-verify for how it serves"
                .to_string(),
            RegistryProblem::Denied => format!(
                "log in with `helm registry login {registry}` (helm's registry config: \
                 --registry-config or HELM_REGISTRY_CONFIG), or pass --username/--password"
            ),
        }
    }
}

#[derive(Deserialize)]
struct ChartYaml {
    name: Option<String>,
    version: Option<serde_yaml::Value>,
}

/// Reads `name` and `version` from Chart.yaml text.
pub fn parse_chart_yaml(text: &str) -> Result<(Option<String>, String), String> {
    let chart: ChartYaml =
        serde_yaml::from_str(text).map_err(|e| format!("Chart.yaml is not valid YAML: {e}"))?;
    let version = match chart.version {
        Some(serde_yaml::Value::String(s)) => s,
        // YAML may read `version: 1.0` as a number; helm reads it as text.
        Some(serde_yaml::Value::Number(n)) => n.to_string(),
        Some(_) => return Err("Chart.yaml `version` is not a string".into()),
        None => return Err("Chart.yaml has no `version`".into()),
    };
    if version.trim().is_empty() {
        return Err("Chart.yaml has an empty `version`".into());
    }
    Ok((chart.name, version))
}

/// Reads the top-level `Chart.yaml` out of a packaged chart without unpacking it to disk.
pub fn read_archive_chart_yaml(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a gzipped tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("corrupt archive: {e}"))?;
        let entry_path = entry
            .path()
            .map_err(|e| format!("corrupt archive: {e}"))?
            .into_owned();
        let parts: Vec<_> = entry_path.components().collect();
        // helm packages as `<chart>/Chart.yaml`; subcharts live deeper and must not match.
        if parts.len() == 2 && parts[1].as_os_str() == "Chart.yaml" {
            let mut text = String::new();
            entry
                .take(MAX_CHART_YAML_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read Chart.yaml in the archive: {e}"))?;
            return Ok(text);
        }
    }
    Err("the archive has no top-level Chart.yaml".into())
}

/// The chart name a remote reference implies, without asking the network.
pub fn remote_chart_name(reference: &str, flags: &HelmFlags) -> Option<String> {
    if flags.repo.is_some() {
        return Some(reference.to_string());
    }
    if reference.contains("://") && !reference.starts_with("oci://") {
        // An URL to a .tgz: the name is only known after download.
        return None;
    }
    let last = reference.trim_end_matches('/').rsplit('/').next()?;
    // `oci://host/charts/db:1.2.3` carries a tag after the name.
    let name = last.split(['@', ':']).next().unwrap_or(last);
    (!name.is_empty()).then(|| name.to_string())
}

/// `host[:port]` of an `oci://` reference.
pub fn oci_registry(reference: &str) -> Option<&str> {
    let rest = reference.strip_prefix(OCI_PREFIX)?;
    let host = rest.split('/').next().unwrap_or(rest);
    (!host.is_empty()).then_some(host)
}

/// Rejects chart arguments helm cannot use, before any I/O (a usage error, exit 2): a
/// digest belongs in an `oci://` reference, never in `--version` (helm reads `--version`
/// as a semver constraint and fails with "improper constraint").
pub(crate) fn check_usage(chart: &str, flags: &HelmFlags) -> Result<(), String> {
    let Some(version) = flags.version.as_deref() else {
        return Ok(());
    };
    let Some(at) = version.find("sha256:") else {
        return Ok(());
    };
    let digest = &version[at..];
    let suggestion = if chart.starts_with(OCI_PREFIX) {
        let base = chart.split('@').next().unwrap_or(chart);
        format!("{base}@{digest}")
    } else {
        format!("oci://REGISTRY/REPOSITORY/CHART@{digest}")
    };
    Err(format!(
        "--version {version:?} contains a digest; helm accepts only a version or a version \
         constraint there: put the digest in the chart reference instead ({suggestion})"
    ))
}

/// Classifies a failed `helm show chart` on an OCI reference: an unreachable registry or
/// refused credentials become [`TargetError::Registry`] naming the registry; anything else
/// (e.g. no such version) stays a plain `ShowChart` failure.
fn oci_failure(reference: &str, code: String, stderr: String) -> TargetError {
    let registry = oci_registry(reference).unwrap_or(reference).to_string();
    let lower = stderr.to_ascii_lowercase();
    let unreachable = [
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "connection reset",
        "tls: ",
        "x509: ",
        "server gave http response to https client",
    ];
    // Helm 3 says "pull access denied … authorization failed: no basic auth credentials",
    // helm 4 "basic credential not found" or the registry's "401 Unauthorized".
    let unauthorized = [
        "unauthorized",
        "forbidden",
        "authorization failed",
        "access denied",
        "credential",
    ];
    let problem = if unreachable.iter().any(|n| lower.contains(n)) {
        RegistryProblem::Unreachable
    } else if unauthorized.iter().any(|n| lower.contains(n)) {
        RegistryProblem::Denied
    } else {
        return TargetError::ShowChart {
            chart: reference.to_string(),
            code,
            stderr,
        };
    };
    TargetError::Registry {
        registry,
        problem,
        detail: format!("`helm show chart {reference}` exit {code}: {stderr}"),
    }
}

/// The `helm show chart` call that tells which version helm would pick.
pub fn show_chart_command(helm: &Path, chart: &str, flags: &HelmFlags) -> HelmCommand {
    let mut args: Vec<String> = vec!["show".into(), "chart".into(), chart.into()];
    let mut value = |flag: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(format!("--{flag}={v}"));
        }
    };
    value("version", &flags.version);
    value("repo", &flags.repo);
    value("username", &flags.username);
    value("password", &flags.password);
    value("ca-file", &flags.ca_file);
    value("cert-file", &flags.cert_file);
    value("key-file", &flags.key_file);
    value("keyring", &flags.keyring);
    value("registry-config", &flags.registry_config);
    value("repository-config", &flags.repository_config);
    value("repository-cache", &flags.repository_cache);
    let switches = [
        ("devel", flags.devel),
        ("insecure-skip-tls-verify", flags.insecure_skip_tls_verify),
        ("plain-http", flags.plain_http),
        ("pass-credentials", flags.pass_credentials),
    ];
    for (flag, on) in switches {
        if on {
            args.push(format!("--{flag}"));
        }
    }
    HelmCommand {
        program: helm.to_path_buf(),
        args,
    }
}

/// Resolves the target: local charts from disk, exact versions as given, the rest by helm.
pub(crate) fn resolve(
    chart: &str,
    flags: &HelmFlags,
    helm: Option<&Path>,
    captured: &crate::adapters::inputs::Captured,
) -> Result<ResolvedTarget, TargetError> {
    let source = ChartSource::classify(chart, flags);
    let local = |text: Result<String, String>| -> Result<ResolvedTarget, TargetError> {
        let local_err = |message: String| TargetError::Local {
            path: chart.to_string(),
            message,
        };
        let (name, version) = parse_chart_yaml(&text.map_err(local_err)?).map_err(local_err)?;
        // helm ignores --version for local charts; say so when it would have mattered.
        let note = flags
            .version
            .as_ref()
            .filter(|v| v.trim() != version)
            .map(|v| {
                format!("--version {v} is ignored for a local chart; the chart itself is {version}")
            });
        Ok(ResolvedTarget {
            chart_name: name,
            version,
            source: source.clone(),
            note,
        })
    };
    match &source {
        ChartSource::Directory(dir) => {
            let path = dir.join("Chart.yaml");
            local(std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display())))
        }
        ChartSource::Archive(path) => local(read_archive_chart_yaml(path)),
        ChartSource::Remote(reference) | ChartSource::Oci(reference) => {
            let oci = matches!(source, ChartSource::Oci(_));
            let exact = flags.version.as_deref().filter(|v| is_exact_version(v));
            if let (Some(version), false) = (exact, oci) {
                return Ok(ResolvedTarget {
                    chart_name: remote_chart_name(reference, flags),
                    version: version.trim().to_string(),
                    source,
                    note: None,
                });
            }
            let helm = helm.ok_or_else(|| TargetError::ShowChart {
                chart: reference.clone(),
                code: "-".into(),
                stderr: "no helm binary to ask".into(),
            })?;
            let command = show_chart_command(helm, reference, flags);
            let failed = |stderr: String| TargetError::ShowChart {
                chart: reference.clone(),
                code: "-".into(),
                stderr,
            };
            // Repository files given as pipes (`--ca-file <(…)`) were captured: helm reads
            // the same bytes here and in the real run.
            let handle = crate::adapters::inputs::feed(command.to_expression(), captured.feeds())
                .stdout_capture()
                .stderr_capture()
                .unchecked()
                .start()
                .map_err(|e| failed(e.to_string()))?;
            // Repository and registry lookups can hang: the wait is bounded and named.
            let handle = std::sync::Arc::new(handle);
            let output = crate::adapters::helm::wait_bounded(&handle, SHOW_CHART_TIMEOUT)
                .map_err(|e| failed(e.to_string()))?
                .ok_or_else(|| {
                    failed(format!(
                        "helm show chart did not finish within {}s (resolving the chart \
                         version from its repository or registry); check that it is reachable",
                        SHOW_CHART_TIMEOUT.as_secs()
                    ))
                })?;
            if !output.status.success() {
                let code = output
                    .status
                    .code()
                    .map_or_else(|| "signal".into(), |c| c.to_string());
                let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
                return Err(if oci {
                    oci_failure(reference, code, stderr)
                } else {
                    TargetError::ShowChart {
                        chart: reference.clone(),
                        code,
                        stderr,
                    }
                });
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let (name, version) =
                parse_chart_yaml(&text).map_err(|message| TargetError::ShowChartOutput {
                    chart: reference.clone(),
                    message,
                })?;
            Ok(ResolvedTarget {
                chart_name: name.or_else(|| remote_chart_name(reference, flags)),
                version,
                source,
                note: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> HelmFlags {
        HelmFlags::default()
    }

    #[test]
    fn chart_yaml_versions() {
        let (name, v) = parse_chart_yaml("apiVersion: v2\nname: db\nversion: 1.2.3\n").unwrap();
        assert_eq!((name.as_deref(), v.as_str()), (Some("db"), "1.2.3"));
        let (_, v) = parse_chart_yaml("name: db\nversion: 1.0\n").unwrap();
        assert_eq!(v, "1.0");
        assert!(parse_chart_yaml("name: db\n")
            .unwrap_err()
            .contains("no `version`"));
        assert!(parse_chart_yaml("name: [db\n")
            .unwrap_err()
            .contains("not valid YAML"));
    }

    #[test]
    fn remote_names() {
        let f = flags();
        assert_eq!(
            remote_chart_name("bitnami/postgresql", &f).as_deref(),
            Some("postgresql")
        );
        assert_eq!(
            remote_chart_name("oci://registry.example/charts/db", &f).as_deref(),
            Some("db")
        );
        assert_eq!(
            remote_chart_name("oci://registry.example/charts/db:1.2.3", &f).as_deref(),
            Some("db")
        );
        assert_eq!(
            remote_chart_name("https://example.com/db-1.0.0.tgz", &f),
            None
        );
        let with_repo = HelmFlags {
            repo: Some("https://charts.example".into()),
            ..flags()
        };
        assert_eq!(remote_chart_name("db", &with_repo).as_deref(), Some("db"));
    }

    #[test]
    fn show_chart_passes_resolution_flags_only() {
        let f = HelmFlags {
            version: Some("^1".into()),
            devel: true,
            username: Some("u".into()),
            plain_http: true,
            cluster: crate::core::flags::ClusterValues {
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..flags()
        };
        let cmd = show_chart_command(Path::new("/bin/helm"), "repo/db", &f);
        assert_eq!(
            cmd.args,
            [
                "show",
                "chart",
                "repo/db",
                "--version=^1",
                "--username=u",
                "--devel",
                "--plain-http"
            ]
        );
    }

    #[test]
    fn local_directory_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("db");
        std::fs::create_dir(&chart).unwrap();
        std::fs::write(chart.join("Chart.yaml"), "name: db\nversion: 2.0.0\n").unwrap();
        let f = HelmFlags {
            version: Some("1.0.0".into()),
            ..flags()
        };
        let t = resolve(chart.to_str().unwrap(), &f, None, &Default::default()).unwrap();
        assert_eq!(t.version, "2.0.0");
        assert!(matches!(t.source, ChartSource::Directory(_)));
        assert!(t.note.unwrap().contains("--version 1.0.0 is ignored"));

        // Package it (with a subchart whose Chart.yaml must not be picked).
        let tgz = dir.path().join("db-2.0.0.tgz");
        let file = std::fs::File::create(&tgz).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::best(),
        ));
        let mut add = |path: &str, body: &str| {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, body.as_bytes())
                .unwrap();
        };
        add("db/charts/sub/Chart.yaml", "name: sub\nversion: 9.9.9\n");
        add("db/Chart.yaml", "name: db\nversion: 2.0.0\n");
        builder.into_inner().unwrap().finish().unwrap();
        let t = resolve(tgz.to_str().unwrap(), &flags(), None, &Default::default()).unwrap();
        assert_eq!(
            (t.chart_name.as_deref(), t.version.as_str()),
            (Some("db"), "2.0.0")
        );

        let bogus = dir.path().join("bogus.tgz");
        std::fs::write(&bogus, b"not an archive").unwrap();
        let err =
            resolve(bogus.to_str().unwrap(), &flags(), None, &Default::default()).unwrap_err();
        assert!(err.to_string().contains("cannot read chart"), "{err}");
    }

    #[test]
    fn oci_references() {
        let f = flags();
        let oci = "oci://127.0.0.1:5000/charts/db";
        assert_eq!(ChartSource::classify(oci, &f), ChartSource::Oci(oci.into()));
        assert_eq!(ChartSource::classify(oci, &f).describe(), "oci");
        assert_eq!(oci_registry(oci), Some("127.0.0.1:5000"));
        assert_eq!(oci_registry("oci://ghcr.io"), Some("ghcr.io"));
        assert_eq!(oci_registry("repo/db"), None);
        // An exact version is still asked of helm: without one, resolution fails.
        let exact = HelmFlags {
            version: Some("1.0.0".into()),
            ..flags()
        };
        assert!(matches!(
            resolve(oci, &exact, None, &Default::default()),
            Err(TargetError::ShowChart { .. })
        ));
    }

    #[test]
    fn digest_in_version_is_a_usage_error() {
        let with = |v: &str| HelmFlags {
            version: Some(v.into()),
            ..flags()
        };
        assert_eq!(check_usage("oci://r/c/db", &with("^1")), Ok(()));
        assert_eq!(check_usage("oci://r/c/db", &flags()), Ok(()));
        assert_eq!(
            check_usage("oci://r/c/db:1.0.0", &with("sha256:ab12")).unwrap_err(),
            "--version \"sha256:ab12\" contains a digest; helm accepts only a version or a \
             version constraint there: put the digest in the chart reference instead \
             (oci://r/c/db:1.0.0@sha256:ab12)"
        );
        assert!(check_usage("repo/db", &with("1.0.0@sha256:ab"))
            .unwrap_err()
            .ends_with("(oci://REGISTRY/REPOSITORY/CHART@sha256:ab)"));
    }

    #[test]
    fn oci_failures_name_the_registry() {
        let r = "oci://127.0.0.1:5999/charts/db";
        let down = oci_failure(
            r,
            "1".into(),
            "Error: Get \"http://127.0.0.1:5999/v2/charts/db/tags/list\": dial tcp \
             127.0.0.1:5999: connect: connection refused"
                .into(),
        );
        assert!(
            matches!(&down, TargetError::Registry { problem: RegistryProblem::Unreachable, registry, .. } if registry == "127.0.0.1:5999")
        );
        let denied = oci_failure(r, "1".into(), "Error: pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials".into());
        assert!(
            denied
                .to_string()
                .starts_with("OCI registry 127.0.0.1:5999 refused access"),
            "{denied}"
        );
        assert!(denied
            .to_string()
            .ends_with("log in with `helm registry login 127.0.0.1:5999` (helm's registry config: --registry-config or HELM_REGISTRY_CONFIG), or pass --username/--password"));
        let missing = oci_failure(
            r,
            "1".into(),
            "Error: 127.0.0.1:5999/charts/db:9.0.0: not found".into(),
        );
        assert!(matches!(missing, TargetError::ShowChart { .. }));
    }

    #[test]
    fn exact_remote_version_needs_no_helm() {
        let f = HelmFlags {
            version: Some("1.4.0".into()),
            ..flags()
        };
        let t = resolve("repo/db", &f, None, &Default::default()).unwrap();
        assert_eq!(t.version, "1.4.0");
        assert_eq!(t.chart_name.as_deref(), Some("db"));
    }
}
