//! Exec credential plugins (`users[].user.exec`), run the way client-go runs them: once per
//! command, told whether it may prompt (`interactive` is true only when standard input is
//! a terminal and `interactiveMode` is not `Never`), with `apiVersion: .../v1` requiring
//! `interactiveMode`. Nothing the plugin prints on stdout and no `env` value ever reaches a
//! message: failures name the command, its exit code and the first line of its stderr.

use std::io::IsTerminal;
use std::time::Duration;

use kube::config::{ExecConfig, ExecInteractiveMode};

/// How long a plugin that cannot prompt may take (client-go has no limit; we bound every wait).
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

const V1: &str = "client.authentication.k8s.io/v1";
const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";

/// What a plugin returned.
#[derive(Clone)]
pub(crate) struct Credential {
    /// Bearer token.
    pub(crate) token: Option<String>,
    /// Client certificate and key (PEM).
    pub(crate) client_cert: Option<(String, String)>,
    /// `status.expirationTimestamp`, as given.
    pub(crate) expires: Option<String>,
    /// The same, parsed.
    expires_at: Option<jiff::Timestamp>,
}

impl Credential {
    /// Still valid 10 s from now (the margin keeps a request from starting with a
    /// credential about to lapse); a credential without expiry stays valid.
    fn is_fresh(&self) -> bool {
        self.expires_at
            .is_none_or(|t| jiff::Timestamp::now() + jiff::SignedDuration::from_secs(10) < t)
    }
}

/// Credentials by exec configuration, kept for the life of the process while unexpired.
/// Process-wide on purpose: kube's client calls the auth layer per request, on connections
/// that outlive any one call site, and an exec plugin (a cloud CLI) must not run once per
/// request; keyed by the whole exec configuration, so two configurations never share a
/// credential.
static CACHE: std::sync::Mutex<Vec<(String, Credential)>> = std::sync::Mutex::new(Vec::new());

/// The plugin's credential: from the cache while unexpired, else from one run.
pub(crate) async fn credential(
    exec: &ExecConfig,
    user: &str,
    server: &str,
) -> Result<Credential, ExecError> {
    validate(exec, user)?;
    // The key holds env values in memory only; it is never printed.
    let key = format!(
        "{server}\n{}",
        serde_json::to_string(exec).unwrap_or_default()
    );
    let cached = {
        let cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .find(|(k, c)| *k == key && c.is_fresh())
            .map(|(_, c)| c.clone())
    };
    if let Some(c) = cached {
        tracing::debug!("credentials: exec plugin credential reused (unexpired)");
        return Ok(c);
    }
    let fresh = run(exec, user, server).await?;
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|(k, _)| *k != key);
    cache.push((key, fresh.clone()));
    Ok(fresh)
}

/// An exec plugin that could not give a credential. Never carries its stdout or env.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The kubeconfig's exec block is unusable; helm rejects it too.
    #[error("exec plugin of user {user:?}: {problem}")]
    Config {
        /// Kubeconfig user.
        user: String,
        /// What is wrong.
        problem: String,
    },
    /// The command could not be started.
    #[error("exec plugin {command:?} of user {user:?} could not be started: {cause}{hint}")]
    Start {
        /// Kubeconfig user.
        user: String,
        /// The command.
        command: String,
        /// OS error.
        cause: String,
        /// `installHint`, when given.
        hint: String,
    },
    /// The command exited non-zero.
    #[error("exec plugin {command:?} of user {user:?} failed with exit code {code}{}", stderr_note(.stderr))]
    Failed {
        /// Kubeconfig user.
        user: String,
        /// The command.
        command: String,
        /// Exit code (-1 when killed by a signal).
        code: i32,
        /// First line of stderr.
        stderr: String,
    },
    /// The command ran too long.
    #[error("exec plugin {command:?} of user {user:?} did not finish within {secs}s")]
    Timeout {
        /// Kubeconfig user.
        user: String,
        /// The command.
        command: String,
        /// The limit.
        secs: u64,
    },
    /// The command's output is not a usable ExecCredential.
    #[error(
        "exec plugin {command:?} of user {user:?} printed no usable ExecCredential: {problem}"
    )]
    BadOutput {
        /// Kubeconfig user.
        user: String,
        /// The command.
        command: String,
        /// What is wrong (never the output itself).
        problem: String,
    },
}

fn stderr_note(line: &str) -> String {
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}

/// Checks the exec block before any request, as client-go does when building the client.
pub(crate) fn validate(exec: &ExecConfig, user: &str) -> Result<(), ExecError> {
    let config = |problem: String| ExecError::Config {
        user: user.to_string(),
        problem,
    };
    let version = exec.api_version.as_deref().unwrap_or("");
    if version != V1 && version != V1BETA1 {
        return Err(config(format!(
            "apiVersion {version:?} is not supported (use {V1} or {V1BETA1})"
        )));
    }
    if exec.command.as_deref().unwrap_or("").is_empty() {
        return Err(config("no command".into()));
    }
    if version == V1 && exec.interactive_mode.is_none() {
        return Err(config(format!(
            "interactiveMode must be specified for apiVersion {V1} (Never, IfAvailable or Always)"
        )));
    }
    if matches!(exec.interactive_mode, Some(ExecInteractiveMode::Always))
        && !std::io::stdin().is_terminal()
    {
        return Err(config(
            "interactiveMode is Always but standard input is not a terminal".into(),
        ));
    }
    Ok(())
}

/// Runs the plugin once and returns its credential.
async fn run(exec: &ExecConfig, user: &str, server: &str) -> Result<Credential, ExecError> {
    validate(exec, user)?;
    let command = exec.command.clone().unwrap_or_default();
    let version = exec.api_version.clone().unwrap_or_default();
    let interactive = !matches!(exec.interactive_mode, Some(ExecInteractiveMode::Never))
        && std::io::stdin().is_terminal();
    let mut spec = serde_json::json!({ "interactive": interactive });
    if exec.provide_cluster_info {
        spec["cluster"] = serde_json::json!({ "server": server });
    }
    let info = serde_json::json!({
        "apiVersion": version,
        "kind": "ExecCredential",
        "spec": spec,
    });
    let mut cmd = tokio::process::Command::new(&command);
    cmd.args(exec.args.iter().flatten())
        .env("KUBERNETES_EXEC_INFO", info.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for var in exec.drop_env.iter().flatten() {
        cmd.env_remove(var);
    }
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            cmd.env(name, value);
        }
    }
    if interactive {
        // The plugin may prompt: it gets the terminal, and its stderr is the user's.
        cmd.stdin(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit());
    } else {
        cmd.stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
    }
    let child = cmd.spawn().map_err(|e| ExecError::Start {
        user: user.to_string(),
        command: command.clone(),
        cause: e.to_string(),
        hint: exec
            .install_hint
            .as_deref()
            .map(|h| format!(" ({})", h.trim()))
            .unwrap_or_default(),
    })?;
    let waited = if interactive {
        child.wait_with_output().await
    } else {
        match tokio::time::timeout(EXEC_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => out,
            Err(_) => {
                return Err(ExecError::Timeout {
                    user: user.to_string(),
                    command,
                    secs: EXEC_TIMEOUT.as_secs(),
                })
            }
        }
    };
    let output = waited.map_err(|e| ExecError::Start {
        user: user.to_string(),
        command: command.clone(),
        cause: e.to_string(),
        hint: String::new(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(ExecError::Failed {
            user: user.to_string(),
            command,
            code: output.status.code().unwrap_or(-1),
            stderr: stderr.lines().next().unwrap_or("").trim().to_string(),
        });
    }
    parse_credential(&output.stdout, &version).map_err(|problem| ExecError::BadOutput {
        user: user.to_string(),
        command,
        problem,
    })
}

/// Reads an ExecCredential; errors describe the shape, never the content.
fn parse_credential(stdout: &[u8], version: &str) -> Result<Credential, String> {
    let value: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|_| "stdout is not JSON".to_string())?;
    if value["kind"] != "ExecCredential" {
        return Err("kind is not ExecCredential".into());
    }
    if value["apiVersion"] != version {
        return Err(format!(
            "apiVersion is not {version:?} (the one the kubeconfig asks for)"
        ));
    }
    let status = &value["status"];
    let text = |key: &str| {
        status[key]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let token = text("token");
    let client_cert = match (text("clientCertificateData"), text("clientKeyData")) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("status has only one of clientCertificateData and clientKeyData".into()),
    };
    if token.is_none() && client_cert.is_none() {
        return Err("status has neither a token nor a client certificate".into());
    }
    let expires = text("expirationTimestamp");
    let expires_at = match &expires {
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|_| "expirationTimestamp is not an RFC 3339 time".to_string())?,
        ),
        None => None,
    };
    Ok(Credential {
        token,
        client_cert,
        expires,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_shapes() {
        let v = V1BETA1;
        let ok = parse_credential(
            format!(r#"{{"kind":"ExecCredential","apiVersion":"{v}","status":{{"token":"t"}}}}"#)
                .as_bytes(),
            v,
        )
        .unwrap();
        assert_eq!(ok.token.as_deref(), Some("t"));
        let errors = [
            ("not json SECRET".to_string(), "stdout is not JSON"),
            (
                format!(r#"{{"kind":"ExecCredential","apiVersion":"{v}","status":{{}}}}"#),
                "status has neither a token nor a client certificate",
            ),
            (
                format!(r#"{{"kind":"ExecCredential","apiVersion":"{V1}","status":{{"token":"SECRET"}}}}"#),
                "apiVersion is not \"client.authentication.k8s.io/v1beta1\" (the one the kubeconfig asks for)",
            ),
        ];
        for (out, want) in errors {
            let err = parse_credential(out.as_bytes(), v).err().unwrap();
            assert_eq!(err, want);
            assert!(!err.contains("SECRET"));
        }
    }

    /// A plugin that counts its runs in `log` and returns a token expiring at `expires`.
    fn counting_plugin(dir: &std::path::Path, name: &str, expires: &str) -> ExecConfig {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join(name);
        let log = dir.join(format!("{name}.log"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho run >> '{}'\nprintf '{{\"apiVersion\":\"{V1BETA1}\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"t\",\"expirationTimestamp\":\"{expires}\"}}}}'\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        ExecConfig {
            api_version: Some(V1BETA1.into()),
            command: Some(script.to_string_lossy().into_owned()),
            ..Default::default()
        }
    }

    fn run_count(dir: &std::path::Path, name: &str) -> usize {
        std::fs::read_to_string(dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .count()
    }

    #[tokio::test]
    async fn credentials_are_cached_while_unexpired() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = counting_plugin(dir.path(), "fresh", "2999-01-01T00:00:00Z");
        for _ in 0..3 {
            let c = credential(&fresh, "u", "https://a").await.unwrap();
            assert_eq!(c.token.as_deref(), Some("t"));
        }
        assert_eq!(run_count(dir.path(), "fresh"), 1);
        // Another server is another credential.
        credential(&fresh, "u", "https://b").await.unwrap();
        assert_eq!(run_count(dir.path(), "fresh"), 2);
        let lapsed = counting_plugin(dir.path(), "lapsed", "2000-01-01T00:00:00Z");
        for _ in 0..2 {
            credential(&lapsed, "u", "https://a").await.unwrap();
        }
        assert_eq!(run_count(dir.path(), "lapsed"), 2);
    }

    #[test]
    fn v1_needs_interactive_mode() {
        let exec = ExecConfig {
            api_version: Some(V1.into()),
            command: Some("plugin".into()),
            ..Default::default()
        };
        let err = validate(&exec, "ci").unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec plugin of user \"ci\": interactiveMode must be specified for apiVersion \
             client.authentication.k8s.io/v1 (Never, IfAvailable or Always)"
        );
        let beta = ExecConfig {
            api_version: Some(V1BETA1.into()),
            ..exec
        };
        validate(&beta, "ci").unwrap();
    }
}
