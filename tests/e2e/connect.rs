//! Reaching the cluster the way helm does: guarded-upgrade and real helm against the real
//! API server, authenticated by its own authenticator (static tokens, client certificates)
//! and authorized by its RBAC, for every kubeconfig shape users bring (CA data and files,
//! tokens, token files, client certificates, exec plugins, flag-only connections,
//! KUBECONFIG lists, impersonation allowed and denied), and the refusals for broken ones:
//! each names the failure class, runs no helm and prints no secret.
//!
//! Two things only the HTTPS stand-in can do stay there: a CONNECT proxy tunnelling to a
//! name only the proxy resolves (the real serving certificate names only localhost and
//! 127.0.0.1), and a server whose certificate has expired.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine;
use kube_standin::proxy::ConnectProxy;
use kube_standin::{Auth, Options, TlsOptions};
use serde_json::json;

use crate::common::{bed, bed_with, chart, per_helm, per_helm_standin, Bed, Program, Run};

/// Every secret the tests invent carries this marker; none may ever be printed (nor may
/// the real server's tokens, see [`World::secrets`]).
const CANARY: &str = "CANARY";
const TOKEN: &str = "tok-CANARY-kubeconfig";
const FILE_TOKEN: &str = "tok-CANARY-file";
const FLAG_TOKEN: &str = "tok-CANARY-flag";
const EXEC_TOKEN: &str = "tok-CANARY-exec";
const PROXY_HOST: &str = "api.standin.test";
const TOOL_AGENT: &str = concat!("guarded-upgrade/", env!("CARGO_PKG_VERSION"));

fn options() -> Options {
    Options {
        tls: Some(TlsOptions {
            extra_sans: vec![PROXY_HOST.to_string()],
            expired: false,
        }),
        auth: Auth::TokenOrCert,
        tokens: vec![
            (TOKEN.into(), "token-user".into()),
            (FILE_TOKEN.into(), "file-user".into()),
            (FLAG_TOKEN.into(), "flag-user".into()),
            (EXEC_TOKEN.into(), "exec-user".into()),
        ],
        ..Options::default()
    }
}

fn indent(block: &str, by: usize) -> String {
    block
        .lines()
        .map(|l| format!("{}{l}\n", " ".repeat(by)))
        .collect()
}

/// A bearer token and the user the server authenticates it as.
#[derive(Clone)]
struct Ident {
    token: String,
    user: String,
}

/// The tokens each connection shape uses.
struct Tokens {
    /// `token:` in the kubeconfig.
    kubeconfig: Ident,
    /// `tokenFile:`.
    file: Ident,
    /// `--kube-token` / HELM_KUBETOKEN.
    flag: Ident,
    /// Printed by the exec plugin.
    exec: Ident,
}

/// One server per test (the real one, or an HTTPS stand-in), and a directory for
/// kubeconfigs and credentials.
struct World {
    bed: Bed,
    dir: tempfile::TempDir,
    tokens: Tokens,
}

/// Users the real server's kube-testbed tokens authenticate, and who has cluster-admin in
/// these tests (granted by [`World::real`]): alice (kubeconfig token), bob (token file and
/// exec plugin), carol (flags), and the client-certificate users. dave has no rights.
const ADMINS: &[&str] = &["alice", "bob", "carol", "rsa-user", "ec-user"];

fn subject(kind: &str, name: &str) -> serde_json::Value {
    json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name})
}

fn cluster_role_binding(
    name: &str,
    role: &str,
    subjects: Vec<serde_json::Value>,
) -> serde_json::Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

impl World {
    /// The real API server: its restricted users' tokens, cluster-admin granted to
    /// [`ADMINS`] through a ClusterRoleBinding (connection tests are about
    /// authentication; RBAC per command is proven by the lock and mutex suites).
    fn real(label: &str) -> World {
        let bed = bed(label);
        let c = bed.api.real();
        let ident = |user: &str| Ident {
            token: c.token(user).to_string(),
            user: user.to_string(),
        };
        let tokens = Tokens {
            kubeconfig: ident("alice"),
            file: ident("bob"),
            flag: ident("carol"),
            exec: ident("bob"),
        };
        bed.api.put_object(
            "clusterrolebindings",
            cluster_role_binding(
                "connect-admins",
                "cluster-admin",
                ADMINS.iter().map(|u| subject("User", u)).collect(),
            ),
        );
        World {
            bed,
            dir: tempfile::tempdir().expect("tempdir"),
            tokens,
        }
    }

    /// An HTTPS stand-in with token and certificate authentication.
    fn standin(label: &str) -> World {
        World::standin_with(label, options())
    }

    fn standin_with(label: &str, opts: Options) -> World {
        let ident = |token: &str, user: &str| Ident {
            token: token.to_string(),
            user: user.to_string(),
        };
        World {
            bed: bed_with(label, opts),
            dir: tempfile::tempdir().expect("tempdir"),
            tokens: Tokens {
                kubeconfig: ident(TOKEN, "token-user"),
                file: ident(FILE_TOKEN, "file-user"),
                flag: ident(FLAG_TOKEN, "flag-user"),
                exec: ident(EXEC_TOKEN, "exec-user"),
            },
        }
    }

    /// Everything that must never be printed: the tokens in play.
    fn secrets(&self) -> Vec<String> {
        let mut all = vec![CANARY.to_string()];
        for i in [
            &self.tokens.kubeconfig,
            &self.tokens.file,
            &self.tokens.flag,
            &self.tokens.exec,
        ] {
            all.push(i.token.clone());
        }
        if let crate::common::Api::Real(c) = &self.bed.api {
            all.push(c.admin_token().to_string());
            for u in kube_testbed::RESTRICTED_USERS {
                all.push(c.token(u).to_string());
            }
        }
        all
    }

    #[track_caller]
    fn assert_no_secret(&self, run: &Run) {
        for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            for secret in self.secrets() {
                assert!(!text.contains(&secret), "a secret reached {name}:\n{text}");
            }
        }
    }

    fn ca_pem(&self) -> String {
        match &self.bed.api {
            crate::common::Api::Real(c) => c.ca_pem().to_string(),
            crate::common::Api::StandIn(s) => s.ca_pem().expect("HTTPS stand-in"),
        }
    }

    /// `token: …` user lines for an identity.
    fn token_user(&self, ident: &Ident) -> String {
        format!("token: {}", ident.token)
    }

    fn ca_data(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem())
    }

    /// Writes `name` in a subdirectory `sub` of the world's directory.
    fn file(&self, sub: &str, name: &str, content: &str) -> PathBuf {
        let dir = self.dir.path().join(sub);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    /// A kubeconfig in directory `name` with one context `ctx-NAME`, cluster lines and user
    /// lines (YAML, relative indentation).
    fn kubeconfig(&self, name: &str, server: &str, cluster: &str, user: &str) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c-{name}\n  cluster:\n    server: {server}\n{}contexts:\n- name: ctx-{name}\n  context:\n    cluster: c-{name}\n    user: u-{name}\ncurrent-context: ctx-{name}\nusers:\n- name: u-{name}\n  user:\n{}",
            indent(cluster, 4),
            indent(if user.is_empty() { "{}" } else { user }, 4)
        );
        self.file(name, "config", &text)
    }

    fn with_ca_data(&self, name: &str, user: &str) -> PathBuf {
        let cluster = format!("certificate-authority-data: {}", self.ca_data());
        self.kubeconfig(name, &self.bed.api.url(), &cluster, user)
    }

    fn upgrade(&self, release: &str, kubeconfig: &Path, extra_args: &[&str]) -> Run {
        self.run_tool(
            release,
            &[("KUBECONFIG", &kubeconfig.to_string_lossy())],
            extra_args,
            &[],
        )
    }

    fn run_tool(
        &self,
        release: &str,
        env: &[(&str, &str)],
        extra_args: &[&str],
        remove: &[&str],
    ) -> Run {
        let c = chart("demo-1.0.0");
        let mut args = vec!["upgrade", "--install", release, c.as_str(), "-n", "default"];
        args.extend_from_slice(extra_args);
        self.bed.run_with(Program::Guard, &args, env, remove)
    }

    /// Users the stand-in saw since the last clear, split into (tool, helm) requests.
    fn users(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut tool = BTreeSet::new();
        let mut helm = BTreeSet::new();
        for r in self.bed.api.requests() {
            let user = r.user.clone().unwrap_or_else(|| "anonymous".into());
            if r.user_agent.as_deref() == Some(TOOL_AGENT) {
                tool.insert(user);
            } else {
                helm.insert(user);
            }
        }
        (tool, helm)
    }

    /// The tool ran, helm installed the release, and both authenticated as `user`.
    #[track_caller]
    fn assert_installed_as(&self, run: &Run, release: &str, user: &str) {
        run.expect_code(0, &format!("{}: {release}", self.bed.label));
        let line = format!("install: \"{release}\" in \"default\" 1.0.0 (not installed yet)");
        assert!(
            run.stderr.lines().any(|l| l == line),
            "{}: wanted the line {line:?} in\n{}",
            self.bed.label,
            run.stderr
        );
        let (tool, helm) = self.users();
        let want = BTreeSet::from([user.to_string()]);
        assert_eq!(
            tool, want,
            "{}: the tool's identity for {release}",
            self.bed.label
        );
        assert_eq!(
            helm, want,
            "{}: helm's identity for {release}",
            self.bed.label
        );
        self.assert_no_secret(run);
        self.bed.api.clear_requests();
    }

    /// Refused before helm: exit 3, the exact error line, no helm request, no write.
    #[track_caller]
    fn assert_refused(&self, run: &Run, line: &str) {
        run.expect_code(3, &format!("{}: {line}", self.bed.label));
        assert_eq!(run.stderr, format!("{line}\n"), "{}", self.bed.label);
        assert!(run.stdout.is_empty(), "{}: {}", self.bed.label, run.stdout);
        let helm_requests: Vec<String> = self
            .bed
            .api
            .requests()
            .into_iter()
            .filter(|r| r.user_agent.as_deref() != Some(TOOL_AGENT))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(helm_requests.is_empty(), "helm ran: {helm_requests:?}");
        assert!(self.bed.writes().is_empty(), "{:?}", self.bed.writes());
        self.assert_no_secret(run);
        self.bed.api.clear_requests();
    }
}

/// CA data, a CA file relative to the kubeconfig, a token, and a token file with a
/// trailing newline (relative too): the real server's static tokens.
fn ca_and_tokens(label: &str) {
    let w = World::real(label);
    let kc_user = w.tokens.kubeconfig.clone();
    let user = w.token_user(&kc_user);
    let kc = w.with_ca_data("ca-data", &user);
    w.assert_installed_as(&w.upgrade("ca-data", &kc, &[]), "ca-data", &kc_user.user);

    w.file("ca-file", "ca.crt", &w.ca_pem());
    let kc = w.kubeconfig(
        "ca-file",
        &w.bed.api.url(),
        "certificate-authority: ca.crt",
        &user,
    );
    w.assert_installed_as(&w.upgrade("ca-file", &kc, &[]), "ca-file", &kc_user.user);

    let file_user = w.tokens.file.clone();
    w.file("token-file", "token", &format!("{}\n", file_user.token));
    let kc = w.with_ca_data("token-file", "tokenFile: token");
    w.assert_installed_as(
        &w.upgrade("token-file", &kc, &[]),
        "token-file",
        &file_user.user,
    );

    // The lock commands connect the same way.
    let kc_env = kc.to_string_lossy().into_owned();
    for args in [
        vec!["lock", "token-file", "-n", "default", "--reason", "freeze"],
        vec!["status", "token-file", "-n", "default"],
        vec!["locks", "-A"],
        vec!["unlock", "token-file", "-n", "default"],
    ] {
        let run = w
            .bed
            .run_with(Program::Guard, &args, &[("KUBECONFIG", &kc_env)], &[]);
        run.expect_code(0, &args.join(" "));
        w.assert_no_secret(&run);
    }
    let (tool, helm) = w.users();
    assert_eq!(tool, BTreeSet::from([file_user.user.clone()]));
    assert!(helm.is_empty(), "{helm:?}");
}

/// Client certificates signed by the real server's client CA: RSA (the key as PKCS#1) as
/// files relative to the kubeconfig, EC (PKCS#8) as data. The server takes the user from
/// the CN.
fn client_certificates(label: &str) {
    let w = World::real(label);
    let tls = kube_standin::testbed::fixtures_dir().join("tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("fixtures/tls");
    let rsa = w
        .bed
        .api
        .real()
        .client_cert_with_key("rsa-user", &["devs"], &read("client-rsa.pk8"));
    w.file("rsa", "client.crt", &rsa.cert_pem);
    // The same RSA key in its PKCS#1 form ("BEGIN RSA PRIVATE KEY").
    w.file("rsa", "client.key", &read("client-rsa.key"));
    let kc = w.with_ca_data(
        "rsa",
        "client-certificate: client.crt\nclient-key: client.key",
    );
    w.assert_installed_as(&w.upgrade("rsa", &kc, &[]), "rsa", "rsa-user");

    let ec = w.bed.api.real().client_cert("ec-user", &[]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kc = w.with_ca_data(
        "ec",
        &format!(
            "client-certificate-data: {}\nclient-key-data: {}",
            b64(&ec.cert_pem),
            b64(&ec.key_pem)
        ),
    );
    w.assert_installed_as(&w.upgrade("ec", &kc, &[]), "ec", "ec-user");
}

/// A plugin script that logs each run (with the `interactive` it was told and whether the
/// kubeconfig env reached it), then prints a credential (`token`) or fails.
fn plugin(w: &World, name: &str, api_version: &str, token: &str, fail: bool) -> (PathBuf, PathBuf) {
    let log = w.dir.path().join(name).join("runs.log");
    let body = if fail {
        // A real plugin might print its token before failing: it must not be shown.
        format!(
            "echo '{token}'\necho 'login failed: no browser' >&2\necho 'second line' >&2\nexit 1\n"
        )
    } else {
        format!(
            "printf '{{\"apiVersion\":\"{api_version}\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{token}\"}}}}'\n"
        )
    };
    let script = format!(
        "#!/bin/sh\ncase \"$KUBERNETES_EXEC_INFO\" in *'\"interactive\":false'*) i=false;; *) i=other;; esac\necho \"run interactive=$i env=$PLUGIN_ENV\" >> '{}'\n{body}",
        log.display()
    );
    let path = w.file(name, "plugin.sh", &script);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (path, log)
}

fn exec_user(command: &Path, api_version: &str, mode: Option<&str>) -> String {
    let mode = mode
        .map(|m| format!("\n  interactiveMode: {m}"))
        .unwrap_or_default();
    format!(
        "exec:\n  apiVersion: {api_version}\n  command: {}\n  env:\n  - name: PLUGIN_ENV\n    value: env-{CANARY}{mode}",
        command.display()
    )
}

fn runs(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

const V1: &str = "client.authentication.k8s.io/v1";
const V1BETA1: &str = "client.authentication.k8s.io/v1beta1";

/// Exec plugins, v1beta1 and v1, printing a real server token: run once by the tool, told
/// it is not interactive (no terminal), their env reaches them; v1 without interactiveMode
/// is refused before any request, as helm refuses it.
fn exec_plugins(label: &str) {
    let w = World::real(label);
    let exec = w.tokens.exec.clone();
    for (name, version, mode) in [("exec-beta", V1BETA1, None), ("exec-v1", V1, Some("Never"))] {
        let (script, log) = plugin(&w, name, version, &exec.token, false);
        let kc = w.with_ca_data(name, &exec_user(&script, version, mode));
        let kc_env = kc.to_string_lossy().into_owned();
        // `check` runs no helm: every plugin run is the tool's.
        let c = chart("demo-1.0.0");
        let run = w.bed.run_with(
            Program::Guard,
            &["check", name, &c, "-n", "default"],
            &[("KUBECONFIG", &kc_env)],
            &[],
        );
        run.expect_code(0, name);
        w.assert_no_secret(&run);
        assert_eq!(
            runs(&log),
            vec![format!("run interactive=false env=env-{CANARY}")],
            "{label} {name}: the tool runs the plugin exactly once"
        );
        w.bed.api.clear_requests();
        w.assert_installed_as(&w.upgrade(name, &kc, &[]), name, &exec.user);
    }

    let (script, log) = plugin(&w, "exec-v1-bare", V1, &exec.token, false);
    let kc = w.with_ca_data("exec-v1-bare", &exec_user(&script, V1, None));
    let run = w.upgrade("exec-v1-bare", &kc, &[]);
    w.assert_refused(
        &run,
        &format!(
            "guarded-upgrade: error: cannot decide for release \"exec-v1-bare\": API server {} \
             (context \"ctx-exec-v1-bare\"): exec plugin of user \"u-exec-v1-bare\": \
             interactiveMode must be specified for apiVersion client.authentication.k8s.io/v1 \
             (Never, IfAvailable or Always); helm was not run",
            w.bed.api.url()
        ),
    );
    assert!(runs(&log).is_empty(), "the plugin must not run");
    assert!(
        w.bed.api.requests().is_empty(),
        "no request before the refusal"
    );
    // helm (the control) refuses this kubeconfig too.
    let kc_env = kc.to_string_lossy().into_owned();
    let helm = w.bed.run_with(
        Program::Helm,
        &["list", "-n", "default"],
        &[("KUBECONFIG", &kc_env)],
        &[],
    );
    assert_ne!(
        helm.code, 0,
        "{label}: helm accepted a v1 exec without interactiveMode"
    );
}

/// helm's flag-only connection (flags and HELM_KUBE* twins, no kubeconfig anywhere), and
/// a KUBECONFIG list whose first entries are missing or empty.
fn flag_only_and_lists(label: &str) {
    let w = World::real(label);
    let flag = w.tokens.flag.clone();
    let ca = w.file("flags", "ca.crt", &w.ca_pem());
    let ca = ca.to_string_lossy().into_owned();
    let url = w.bed.api.url();
    let run = w.run_tool(
        "flags",
        &[],
        &[
            "--kube-apiserver",
            &url,
            "--kube-token",
            &flag.token,
            "--kube-ca-file",
            &ca,
        ],
        &["KUBECONFIG"],
    );
    w.assert_installed_as(&run, "flags", &flag.user);
    let run = w.run_tool(
        "flag-env",
        &[
            ("HELM_KUBEAPISERVER", &url),
            ("HELM_KUBETOKEN", &flag.token),
            ("HELM_KUBECAFILE", &ca),
        ],
        &[],
        &["KUBECONFIG"],
    );
    w.assert_installed_as(&run, "flag-env", &flag.user);

    // Flags override the kubeconfig: a wrong tls-server-name (the real serving certificate
    // names localhost and 127.0.0.1), an untrusted CA.
    let kc_user = w.tokens.kubeconfig.clone();
    let cluster = format!(
        "certificate-authority-data: {}\ntls-server-name: other.test",
        w.ca_data()
    );
    let kc = w.kubeconfig("tls-name", &url, &cluster, &w.token_user(&kc_user));
    let kc_env = kc.to_string_lossy().into_owned();
    let run = w.run_tool(
        "tls-name",
        &[("KUBECONFIG", &kc_env)],
        &["--kube-tls-server-name", "localhost"],
        &[],
    );
    w.assert_installed_as(&run, "tls-name", &kc_user.user);
    let other_ca =
        base64::engine::general_purpose::STANDARD.encode(kube_standin::unrelated_ca_pem());
    let cluster = format!("certificate-authority-data: {other_ca}");
    let kc = w.kubeconfig("insecure", &url, &cluster, &w.token_user(&kc_user));
    let kc_env = kc.to_string_lossy().into_owned();
    let run = w.run_tool(
        "insecure",
        &[("KUBECONFIG", &kc_env)],
        &["--kube-insecure-skip-tls-verify"],
        &[],
    );
    w.assert_installed_as(&run, "insecure", &kc_user.user);

    let kc = w.with_ca_data("listed", &w.token_user(&kc_user));
    let missing = w.dir.path().join("missing").join("config");
    let list = format!("{}::{}", missing.display(), kc.display());
    let run = w.run_tool("listed", &[("KUBECONFIG", &list)], &[], &[]);
    w.assert_installed_as(&run, "listed", &kc_user.user);
}

/// `--kube-as-user`/`--kube-as-group` reach the real server from the tool and from helm,
/// and its RBAC decides: dave (no rights of his own) may impersonate user erin and group
/// ops only (a ClusterRole with `impersonate` on those names), and only group ops has
/// rights. So erin+ops works for both programs; impersonating someone else is denied by
/// the server (`cannot impersonate`), and erin without ops is denied for lack of rights,
/// which proves the group header reached the server.
fn impersonation(label: &str) {
    let w = World::real(label);
    w.bed.api.put_object(
        "clusterroles",
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "impersonate-erin-ops"},
            "rules": [
                {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
                 "resourceNames": ["erin"]},
                {"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"],
                 "resourceNames": ["ops"]},
            ],
        }),
    );
    w.bed.api.put_object(
        "clusterrolebindings",
        cluster_role_binding(
            "dave-impersonates",
            "impersonate-erin-ops",
            vec![subject("User", "dave")],
        ),
    );
    w.bed.api.put_object(
        "clusterrolebindings",
        cluster_role_binding("ops-admins", "cluster-admin", vec![subject("Group", "ops")]),
    );
    let dave = Ident {
        token: w.bed.api.real().token("dave").to_string(),
        user: "dave".into(),
    };
    let kc = w.with_ca_data("imp", &w.token_user(&dave));
    w.bed.api.clear_requests();
    let run = w.upgrade(
        "imp",
        &kc,
        &["--kube-as-user", "erin", "--kube-as-group", "ops"],
    );
    run.expect_code(0, "impersonation");
    w.assert_no_secret(&run);
    // Per request: who authenticated, and as whom it acted (the audit log's user and
    // impersonatedUser).
    let mut tool = BTreeSet::new();
    let mut helm = BTreeSet::new();
    for r in w.bed.api.requests() {
        let seen = format!(
            "{} as [{}] -> {}",
            r.user.clone().unwrap_or_default(),
            r.impersonate.join(", "),
            r.status
        );
        if r.user_agent.as_deref() == Some(TOOL_AGENT) {
            tool.insert(seen);
        } else {
            helm.insert(seen);
        }
    }
    assert!(!helm.is_empty(), "{label}: helm made no request");
    for (who, seen) in [("the tool", &tool), ("helm", &helm)] {
        for s in seen.iter() {
            assert!(
                s.starts_with("dave as [Impersonate-User: erin] -> "),
                "{label}: {who}: {seen:?}"
            );
        }
    }
    assert_eq!(b_deployed(&w, "imp"), "1.0.0");
    w.bed.api.clear_requests();

    let url = w.bed.api.url();
    let prefix = |rel: &str| {
        format!(
            "guarded-upgrade: error: release \"{rel}\" in namespace \"default\": reading the deployed release: listing Secret records: API server {url} (context \"ctx-imp\"): 403 Forbidden: "
        )
    };
    // Impersonating a user dave may not impersonate.
    let run = w.upgrade(
        "imp-frank",
        &kc,
        &["--kube-as-user", "frank", "--kube-as-group", "ops"],
    );
    w.assert_refused(
        &run,
        &format!(
            "{}users \"frank\" is forbidden: User \"dave\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope; grant this identity the permission (RBAC), or use a context/--kube-as-user that has it; helm was not run",
            prefix("imp-frank")
        ),
    );
    // Impersonating a group dave may not impersonate.
    let run = w.upgrade(
        "imp-admins",
        &kc,
        &["--kube-as-user", "erin", "--kube-as-group", "admins"],
    );
    w.assert_refused(
        &run,
        &format!(
            "{}groups \"admins\" is forbidden: User \"dave\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope; grant this identity the permission (RBAC), or use a context/--kube-as-user that has it; helm was not run",
            prefix("imp-admins")
        ),
    );
    // erin alone has no rights: the group is what grants them.
    let run = w.upgrade("imp-nogroup", &kc, &["--kube-as-user", "erin"]);
    w.assert_refused(
        &run,
        &format!(
            "{}secrets is forbidden: User \"erin\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\"; grant this identity the permission (RBAC), or use a context/--kube-as-user that has it; helm was not run",
            prefix("imp-nogroup")
        ),
    );
}

fn b_deployed(w: &World, release: &str) -> String {
    w.bed.deployed(release, "default").0
}

/// HTTPS_PROXY tunnels to a name only the proxy resolves; NO_PROXY covering the server
/// sends the tool (and helm) direct, where that name does not resolve; a kubeconfig
/// proxy-url works without any environment. Stand-in only: its serving certificate carries
/// the proxy-only name; the real server's names localhost and 127.0.0.1 only.
fn through_a_connect_proxy(label: &str) {
    let w = World::standin(label);
    let proxy = ConnectProxy::start().expect("proxy");
    let server = format!("https://{PROXY_HOST}:{}", w.bed.api.port());
    let cluster = format!("certificate-authority-data: {}", w.ca_data());
    let kc = w.kubeconfig("proxied", &server, &cluster, &format!("token: {TOKEN}"));
    let kc_env = kc.to_string_lossy().into_owned();
    let proxy_url = proxy.url();
    let run = w.run_tool(
        "proxied",
        &[
            ("KUBECONFIG", &kc_env),
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "10.0.0.0/8,.example.com"),
        ],
        &[],
        &[],
    );
    w.assert_installed_as(&run, "proxied", "token-user");
    let tunnels: BTreeSet<String> = proxy.requests().into_iter().collect();
    assert_eq!(
        tunnels,
        BTreeSet::from([format!("CONNECT {PROXY_HOST}:{}", w.bed.api.port())])
    );

    proxy.clear();
    let run = w.run_tool(
        "bypassed",
        &[
            ("KUBECONFIG", &kc_env),
            ("https_proxy", &proxy_url),
            ("NO_PROXY", ".standin.test"),
        ],
        &[],
        &[],
    );
    let first = run.stderr.lines().next().unwrap_or_default().to_string();
    let want_prefix = format!(
        "guarded-upgrade: error: release \"bypassed\" in namespace \"default\": reading the deployed release: listing Secret records: API server {server} (context \"ctx-proxied\"): DNS lookup of \"{PROXY_HOST}\" failed ("
    );
    assert!(first.starts_with(&want_prefix), "{label}: {first}");
    assert!(
        first.ends_with("); check the server address in the kubeconfig (or --kube-apiserver), DNS, and HTTPS_PROXY/NO_PROXY; helm was not run"),
        "{label}: {first}"
    );
    run.expect_code(3, "bypassed");
    assert!(
        proxy.requests().is_empty(),
        "NO_PROXY ignored: {:?}",
        proxy.requests()
    );

    let cluster = format!("{cluster}\nproxy-url: {proxy_url}");
    let kc = w.kubeconfig("proxy-url", &server, &cluster, &format!("token: {TOKEN}"));
    w.assert_installed_as(&w.upgrade("proxy-url", &kc, &[]), "proxy-url", "token-user");
    assert!(!proxy.requests().is_empty(), "proxy-url not used");
}

/// Broken credentials and trust against the real server: each refused with its class,
/// naming server and context. A rejected token is the server's 401, a missing right its
/// RBAC 403 in its own words, a wrong CA or name its real serving certificate.
fn refusals_name_the_failure(label: &str) {
    let w = World::real(label);
    let url = w.bed.api.url();
    let kc_user = w.tokens.kubeconfig.clone();
    let prefix = |rel: &str, ctx: &str| {
        format!(
            "guarded-upgrade: error: release \"{rel}\" in namespace \"default\": reading the deployed release: listing Secret records: API server {url} (context \"ctx-{ctx}\"): "
        )
    };
    let kc = w.with_ca_data("wrong-token", "token: tok-CANARY-wrong");
    let run = w.upgrade("wrong-token", &kc, &[]);
    w.assert_refused(
        &run,
        &format!(
            "{}401 Unauthorized: the credentials were rejected; check the token, tokenFile, client certificate or exec plugin of the kubeconfig user (or --kube-token); it may have expired; helm was not run",
            prefix("wrong-token", "wrong-token")
        ),
    );

    // insecure-skip-tls-verify with a CA: helm refuses it, so do we, before any request.
    let cluster = format!(
        "certificate-authority-data: {}\ninsecure-skip-tls-verify: true",
        w.ca_data()
    );
    let kc = w.kubeconfig("both", &url, &cluster, &w.token_user(&kc_user));
    let run = w.upgrade("both", &kc, &[]);
    w.assert_refused(
        &run,
        &format!(
            "guarded-upgrade: error: cannot decide for release \"both\": cannot load the kubeconfig {:?}: insecure-skip-tls-verify is set together with a certificate authority (certificate-authority, certificate-authority-data or --kube-ca-file), which helm refuses too; remove one; helm was not run",
            kc.display().to_string()
        ),
    );
    assert!(w.bed.api.requests().is_empty());
    let kc_env = kc.to_string_lossy().into_owned();
    let helm = w.bed.run_with(
        Program::Helm,
        &["list", "-n", "default"],
        &[("KUBECONFIG", &kc_env)],
        &[],
    );
    assert_ne!(helm.code, 0, "{label}: helm is the control");

    // A token no HTTP header can carry is refused before any request.
    let kc = w.with_ca_data("bad-token", "token: \"tok-CANARY\\nsecond\"");
    let run = w.upgrade("bad-token", &kc, &[]);
    w.assert_refused(
        &run,
        &format!(
            "guarded-upgrade: error: cannot decide for release \"bad-token\": cannot load the kubeconfig {:?}: the bearer token of user \"u-bad-token\" contains characters an HTTP header cannot carry (a line break?); helm was not run",
            kc.display().to_string()
        ),
    );
    assert!(w.bed.api.requests().is_empty());

    // RBAC says no: dave authenticates but has no rights; the server's sentence names
    // user, verb, resource and namespace.
    let dave = Ident {
        token: w.bed.api.real().token("dave").to_string(),
        user: "dave".into(),
    };
    let kc = w.with_ca_data("forbidden", &w.token_user(&dave));
    let run = w.upgrade("forbidden", &kc, &[]);
    w.assert_refused(
        &run,
        &format!(
            "{}403 Forbidden: secrets is forbidden: User \"dave\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\"; grant this identity the permission (RBAC), or use a context/--kube-as-user that has it; helm was not run",
            prefix("forbidden", "forbidden")
        ),
    );

    let other_ca =
        base64::engine::general_purpose::STANDARD.encode(kube_standin::unrelated_ca_pem());
    let kc = w.kubeconfig(
        "wrong-ca",
        &url,
        &format!("certificate-authority-data: {other_ca}"),
        &w.token_user(&kc_user),
    );
    let run = w.upgrade("wrong-ca", &kc, &[]);
    w.assert_refused(
        &run,
        &format!(
            "{}TLS: the server's certificate is not signed by a trusted CA (invalid peer certificate: UnknownIssuer); check certificate-authority/certificate-authority-data in the kubeconfig or --kube-ca-file; helm was not run",
            prefix("wrong-ca", "wrong-ca")
        ),
    );

    let kc = w.kubeconfig(
        "wrong-name",
        &url,
        &format!(
            "certificate-authority-data: {}\ntls-server-name: other.test",
            w.ca_data()
        ),
        &w.token_user(&kc_user),
    );
    let run = w.upgrade("wrong-name", &kc, &[]);
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "{}TLS: the server's certificate is not valid for the server name (",
            prefix("wrong-name", "wrong-name")
        )) && first.ends_with("); check the server address, or set tls-server-name/--kube-tls-server-name to a name the certificate carries; helm was not run"),
        "{label}: {first}"
    );
    w.assert_refused(&run, first);

    let exec = w.tokens.exec.clone();
    let (script, log) = plugin(&w, "exec-fail", V1BETA1, &exec.token, true);
    let kc = w.with_ca_data("exec-fail", &exec_user(&script, V1BETA1, None));
    let run = w.upgrade("exec-fail", &kc, &[]);
    w.assert_refused(
        &run,
        &format!(
            "guarded-upgrade: error: cannot decide for release \"exec-fail\": API server {} (context \"ctx-exec-fail\"): exec plugin \"{}\" of user \"u-exec-fail\" failed with exit code 1: login failed: no browser; helm was not run",
            w.bed.api.url(),
            script.display()
        ),
    );
    assert_eq!(runs(&log).len(), 1, "run once, not retried");
}

/// A server whose certificate expired. Stand-in only: the real server's certificate is
/// valid, and a test cannot make it expire.
fn an_expired_certificate_is_refused(label: &str) {
    let ew = World::standin_with(
        label,
        Options {
            tls: Some(TlsOptions {
                extra_sans: vec![],
                expired: true,
            }),
            ..Options::default()
        },
    );
    let kc = ew.with_ca_data("expired", &format!("token: {TOKEN}"));
    let run = ew.upgrade("expired", &kc, &[]);
    let url = ew.bed.api.url();
    ew.assert_refused(
        &run,
        &format!(
            "guarded-upgrade: error: release \"expired\" in namespace \"default\": reading the deployed release: listing Secret records: API server {url} (context \"ctx-expired\"): TLS: the server's certificate has expired or is not yet valid ({}); renew the API server certificate, or check this machine's clock; helm was not run",
            expired_cause(&run)
        ),
    );
}

/// rustls words the expiry with timestamps; the test fixes everything around it.
fn expired_cause(run: &Run) -> String {
    let line = run.stderr.lines().next().unwrap_or_default();
    line.split_once("not yet valid (")
        .and_then(|(_, rest)| rest.split_once("); renew"))
        .map(|(cause, _)| cause.to_string())
        .unwrap_or_default()
}

per_helm!(
    ca_and_tokens,
    client_certificates,
    exec_plugins,
    flag_only_and_lists,
    impersonation,
    refusals_name_the_failure,
);

per_helm_standin!(through_a_connect_proxy, an_expired_certificate_is_refused);

/// `--debug` (and HELM_DEBUG=true) say which kubeconfig, context, server and requests,
/// with no secret (the real server).
#[test]
fn debug_output_names_the_path_and_hides_secrets() {
    let w = World::real("helm4");
    let kc = w.with_ca_data("dbg", &w.token_user(&w.tokens.kubeconfig));
    let kc_env = kc.to_string_lossy().into_owned();
    let c = chart("demo-1.0.0");
    // `status` of a release that does not exist exits 3 after its requests.
    for (args, env, code) in [
        (
            vec!["check", "dbg", c.as_str(), "-n", "default", "--debug"],
            vec![],
            0,
        ),
        (
            vec!["check", "dbg", c.as_str(), "-n", "default"],
            vec![("HELM_DEBUG", "true")],
            0,
        ),
        (vec!["status", "dbg", "-n", "default", "--debug"], vec![], 3),
    ] {
        let mut env = env;
        env.push(("KUBECONFIG", kc_env.as_str()));
        let run = w.bed.run_with(Program::Guard, &args, &env, &[]);
        run.expect_code(code, "debug run");
        w.assert_no_secret(&run);
        let lines: Vec<&str> = run.stderr.lines().collect();
        let has = |want: &str| lines.iter().any(|l| l.ends_with(want));
        assert!(
            has(&format!("kubeconfig: {kc_env} (from KUBECONFIG)")),
            "{}",
            run.stderr
        );
        assert!(has("context: ctx-dbg (user u-dbg)"), "{}", run.stderr);
        assert!(
            has(&format!("server: {}", w.bed.api.url())),
            "{}",
            run.stderr
        );
        assert!(
            has("credentials: bearer token (redacted)"),
            "{}",
            run.stderr
        );
        assert!(has("proxy: none (direct connection)"), "{}", run.stderr);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("GET /api/v1/namespaces/default/secrets?")
                    && l.contains(" -> 200 in ")
                    && l.ends_with(" ms")),
            "{}",
            run.stderr
        );
    }
    // Without --debug there is none of it.
    let run = w.bed.run_with(
        Program::Guard,
        &["check", "dbg", c.as_str(), "-n", "default"],
        &[("KUBECONFIG", kc_env.as_str())],
        &[],
    );
    assert!(!run.stderr.contains("server: "), "{}", run.stderr);
}

/// A server that accepts connections and never answers fails within the bound, once. (No
/// request reaches the bed's server: an unleased stand-in bed only runs the tool.)
#[test]
fn a_hung_server_fails_in_bounded_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let w = World::standin("helm4");
    let url = format!("https://{addr}");
    let started = std::time::Instant::now();
    let run = w.run_tool(
        "hung",
        &[],
        &[
            "--kube-apiserver",
            &url,
            "--kube-token",
            FLAG_TOKEN,
            "--kube-insecure-skip-tls-verify",
        ],
        &["KUBECONFIG"],
    );
    let took = started.elapsed();
    run.expect_code(3, "hung server");
    assert_eq!(
        run.stderr,
        format!(
            "guarded-upgrade: error: release \"hung\" in namespace \"default\": reading the deployed release: listing Secret records: API server {url}: no answer in time (10s to connect, 30s to answer); check that the address is the API server and that it is healthy; a proxy or firewall may be swallowing requests; helm was not run\n"
        )
    );
    assert!(took < std::time::Duration::from_secs(35), "took {took:?}");
}

/// Nothing listening: "connection refused" is transient, retried briefly, then reported
/// naming the server (no context without a kubeconfig). (A real "API down": a port with
/// nothing on it.)
#[test]
fn a_refused_connection_is_retried_then_named() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let w = World::standin("helm4");
    let url = format!("https://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let run = w.run_tool(
        "refused",
        &[],
        &["--kube-apiserver", &url, "--kube-token", FLAG_TOKEN],
        &["KUBECONFIG"],
    );
    run.expect_code(3, "refused");
    run.assert_error_after_retries(
        "listing Secrets (name=refused,owner=helm) in namespace \"default\"",
        3,
        &format!(
            "release \"refused\" in namespace \"default\": reading the deployed release: listing \
             Secret records: API server {url}: connection refused; check that the API server is \
             up and the address and port are right; helm was not run"
        ),
    );
    w.assert_no_secret(&run);
    // Retried, not forever: three waits of "equal jitter" on 0.3, 0.6 and 1.2 s backoffs
    // (each half fixed, half random) are 1.05 to 2.1 s in all.
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1050) && took < std::time::Duration::from_secs(10),
        "took {took:?}"
    );
}
