//! Choosing the cluster, namespace and storage driver the way helm does, and reaching it.
//!
//! Helm's precedence: `--kubeconfig` over `KUBECONFIG` (a list; missing and empty entries
//! are skipped, the first file to set a value wins) over `~/.kube/config` (in-cluster
//! config when none exists), `--kube-context` over `HELM_KUBECONTEXT` over the current
//! context, `-n/--namespace` over `HELM_NAMESPACE` over the context's namespace over
//! `default`. `--kube-apiserver`, `--kube-token`, `--kube-ca-file`,
//! `--kube-insecure-skip-tls-verify`, `--kube-tls-server-name`, `--kube-as-user` and
//! `--kube-as-group` (and their `HELM_KUBE*` twins) override the kubeconfig, or stand
//! alone without one. See `docs/connecting.md`.
//!
//! Submodules: [`proxy`] (which proxy, as Go decides), [`exec`] (credential plugins),
//! [`failure`] (classifying request errors), [`debug`] (`--debug` output).

mod debug;
mod exec;
mod failure;
mod proxy;
mod transport;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{AuthInfo, Kubeconfig};
use kube::{Client, Config};

use crate::adapters::inputs::Captured;
use crate::core::chain::error_chain;
use crate::core::flags::{cluster_flags, ClusterValues, Slot};

pub use exec::ExecError;
pub use failure::{ApiError, Endpoint};
pub use transport::Connections;

/// How long one request may wait for an answer. A hung server fails after this (requests
/// that time out are not retried), inside the 35 s the issue allows.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long TCP connect plus TLS handshake may take.
/// The most one watch lasts (its server-side `timeoutSeconds`): below [`REQUEST_TIMEOUT`],
/// which an idle watch would otherwise hit. A longer wait resumes from the last version seen.
pub(crate) const WATCH_SECONDS: u32 = 25;
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The User-Agent of every request, so audit logs can tell this tool from helm.
pub const USER_AGENT: &str = concat!("guarded-upgrade/", env!("CARGO_PKG_VERSION"));

/// Failures while choosing or connecting to the cluster. All are detected before any
/// request; every message says what to check and never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be read or used.
    #[error("cannot load the kubeconfig{}: {source}", path_note(.path))]
    Kubeconfig {
        /// The file involved, if one.
        path: Option<String>,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Neither a kubeconfig, nor `--kube-apiserver`, nor an in-cluster service account.
    #[error(
        "no cluster to talk to: no kubeconfig ({looked}), no --kube-apiserver/HELM_KUBEAPISERVER, \
         and not running in a pod; set KUBECONFIG or pass --kubeconfig"
    )]
    NoConfig {
        /// Where we looked.
        looked: String,
    },
    /// A server override was malformed.
    #[error("invalid --kube-apiserver/HELM_KUBEAPISERVER value {0:?}")]
    BadApiServer(String),
    /// The kubeconfig's server URL is malformed or missing.
    #[error("context {context:?}: cluster {cluster:?} has {problem}")]
    BadCluster {
        /// The context.
        context: String,
        /// The cluster entry.
        cluster: String,
        /// What is wrong.
        problem: String,
    },
    /// An exec credential plugin failed (never with its output or env), for the server and
    /// context it was to log in to, as every other connection error names them.
    #[error("API server {server}{}: {source}", .context.as_ref().map(|c| format!(" (context {c:?})")).unwrap_or_default())]
    Exec {
        /// The server URL.
        server: String,
        /// The kubeconfig context, if any.
        context: Option<String>,
        /// What failed (boxed: it is large and rare).
        #[source]
        source: Box<ExecError>,
    },
    /// The HTTP client could not be built (e.g. TLS material unusable).
    #[error("cannot build a Kubernetes client for {server}: {}", error_chain(.source))]
    Client {
        /// The server URL.
        server: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// The namespace the configuration yields (kubeconfig context, in-cluster service
    /// account) is not a DNS-1123 label: it would be spliced into API paths.
    #[error("the namespace from {from} is unusable: {source}; fix it there, or pass -n NAMESPACE")]
    InvalidNamespace {
        /// Where the namespace came from.
        from: String,
        /// What is wrong with it.
        #[source]
        source: crate::core::names::NameError,
    },
}

fn path_note(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(" {p:?}")).unwrap_or_default()
}

fn kubeconfig_error(path: Option<&str>, message: impl Into<String>) -> ClusterError {
    ClusterError::Kubeconfig {
        path: path.map(str::to_string),
        source: message.into().into(),
    }
}

/// Environment values helm reads, captured once so resolution is testable.
#[derive(Clone, Debug, Default)]
pub struct HelmEnv {
    /// The cluster variables (`HELM_NAMESPACE`, `HELM_KUBECONTEXT`, …, `HELM_DEBUG`): the
    /// variable of each cluster row of the flag table.
    pub cluster: ClusterValues,
    /// `HELM_DRIVER`.
    pub driver: Option<String>,
}

impl HelmEnv {
    /// Reads the variables from the process environment; empty values count as unset.
    pub fn from_process() -> HelmEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        HelmEnv {
            cluster: crate::core::flags::cluster_env(var),
            driver: var("HELM_DRIVER"),
        }
    }
}

/// The cluster connection and namespace a command works in.
pub struct ClusterTarget {
    /// A ready client.
    pub client: Client,
    /// The release namespace, resolved as helm resolves it.
    pub namespace: String,
    /// The kubeconfig user of the chosen context, used as the default "who" of a lock.
    pub user: Option<String>,
    /// What the client's connections speak, as they open.
    pub connections: Connections,
}

/// Flags that select the cluster, with helm's names and environment defaults: the cluster
/// rows of the flag table (`core::flags`), taken from helm's argv by the splitter for
/// `upgrade`/`check` and parsed by clap for the lock commands (the `clap` impls below).
pub type ClusterFlags = ClusterValues;

impl clap::Args for ClusterValues {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cluster_flags().fold(cmd, |cmd, (flag, cluster)| {
            let mut arg = clap::Arg::new(flag.long).long(flag.long).help(cluster.help);
            if let Some(short) = flag.short {
                arg = arg.short(short);
            }
            arg = match cluster.slot {
                Slot::Text(_) => arg
                    .action(clap::ArgAction::Set)
                    .value_name(cluster.value_name),
                Slot::List(_) => arg
                    .action(clap::ArgAction::Append)
                    .value_name(cluster.value_name),
                Slot::Switch(_) => arg.action(clap::ArgAction::SetTrue),
            };
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ClusterValues {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut values = ClusterValues::default();
        values.update_from_arg_matches(matches)?;
        Ok(values)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for (flag, cluster) in cluster_flags() {
            match cluster.slot {
                Slot::Text(field) => {
                    if let Some(value) = matches.get_one::<String>(flag.long) {
                        *field(self) = Some(value.clone());
                    }
                }
                Slot::List(field) => {
                    if let Some(values) = matches.get_many::<String>(flag.long) {
                        *field(self) = values.cloned().collect();
                    }
                }
                Slot::Switch(field) => {
                    if matches.get_flag(flag.long) {
                        *field(self) = true;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The kubeconfig files in effect and their merge.
struct Loaded {
    config: Kubeconfig,
    files: Vec<String>,
}

/// Finds and merges the kubeconfig as client-go does. None when there is none at all.
fn load_kubeconfig(
    flags: &ClusterFlags,
    captured: &Captured,
) -> Result<(Option<Loaded>, String), ClusterError> {
    let read = |path: &str| read_kubeconfig(path, captured);
    if let Some(path) = &flags.kubeconfig {
        // An explicit file must exist (client-go: ExplicitPath).
        let config = read(path)?;
        tracing::debug!("kubeconfig: {path} (--kubeconfig)");
        return Ok((
            Some(Loaded {
                config,
                files: vec![path.clone()],
            }),
            String::new(),
        ));
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let mut merged: Option<Kubeconfig> = None;
        let mut files = Vec::new();
        for path in std::env::split_paths(&list) {
            if path.as_os_str().is_empty() {
                continue;
            }
            let shown = path.display().to_string();
            if !path.exists() && !captured.holds(&shown) {
                tracing::debug!("kubeconfig: {shown} (from KUBECONFIG) does not exist, skipped");
                continue;
            }
            let next = read(&shown)?;
            tracing::debug!("kubeconfig: {shown} (from KUBECONFIG)");
            files.push(shown.clone());
            merged = Some(match merged {
                None => next,
                // The first file to set a value wins.
                Some(first) => first.merge(next).map_err(|e| ClusterError::Kubeconfig {
                    path: Some(shown),
                    source: Box::new(e),
                })?,
            });
        }
        let looked = format!("KUBECONFIG={} has no existing file", list.to_string_lossy());
        return Ok((merged.map(|config| Loaded { config, files }), looked));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let default = home.map(|h| h.join(".kube").join("config"));
    match default {
        Some(path) if path.exists() => {
            let shown = path.display().to_string();
            let config = read(&shown)?;
            tracing::debug!("kubeconfig: {shown} (default)");
            Ok((
                Some(Loaded {
                    config,
                    files: vec![shown],
                }),
                String::new(),
            ))
        }
        Some(path) => Ok((None, format!("{} does not exist", path.display()))),
        None => Ok((None, "HOME is not set".into())),
    }
}

/// One kubeconfig file, parsed as kube (and client-go) parse it. A captured input (a
/// `/dev/fd` pipe) is parsed from the captured bytes, which helm is handed too; its
/// relative file names are taken relative to the file's directory, as for any file.
fn read_kubeconfig(path: &str, captured: &Captured) -> Result<Kubeconfig, ClusterError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| ClusterError::Kubeconfig {
        path: Some(path.to_string()),
        source,
    };
    if !captured.holds(path) {
        let config = Kubeconfig::read_from(path).map_err(|e| failed(Box::new(e)))?;
        return refuse_read_once_references(path, config);
    }
    let bytes = captured.read(path).map_err(|e| failed(Box::new(e)))?;
    let text = String::from_utf8(bytes).map_err(|e| failed(Box::new(e)))?;
    let mut config = Kubeconfig::from_yaml(&text).map_err(|e| failed(Box::new(e)))?;
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    let absolute = |file: &mut Option<String>| {
        if let Some(f) = file
            .as_mut()
            .filter(|f| Path::new(f.as_str()).is_relative())
        {
            *f = dir.join(f.as_str()).display().to_string();
        }
    };
    for cluster in config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
    {
        absolute(&mut cluster.certificate_authority);
    }
    for auth in config
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        absolute(&mut auth.client_certificate);
        absolute(&mut auth.client_key);
        absolute(&mut auth.token_file);
        if let Some(exec) = auth.exec.as_mut() {
            if exec.command.as_deref().is_some_and(|c| c.contains('/')) {
                absolute(&mut exec.command);
            }
        }
    }
    refuse_read_once_references(path, config)
}

/// A file a kubeconfig names (`certificate-authority`, `client-certificate`, `client-key`,
/// `tokenFile`) that can be read only once (a pipe, `/dev/fd/N`, a socket) is refused: the
/// guard would drain it and helm, reading it again, would get nothing (or fail after the
/// guard decided). Its `-data` form, or a regular file, is read as often as needed.
fn refuse_read_once_references(path: &str, config: Kubeconfig) -> Result<Kubeconfig, ClusterError> {
    use crate::adapters::inputs::{read_once, ReadOnce};
    let mut named: Vec<(String, &str, &Option<String>)> = Vec::new();
    for c in &config.clusters {
        if let Some(cluster) = &c.cluster {
            let owner = format!("cluster {:?}", c.name);
            named.push((
                owner,
                "certificate-authority",
                &cluster.certificate_authority,
            ));
        }
    }
    for a in &config.auth_infos {
        if let Some(auth) = &a.auth_info {
            for (field, file) in [
                ("client-certificate", &auth.client_certificate),
                ("client-key", &auth.client_key),
                ("tokenFile", &auth.token_file),
            ] {
                named.push((format!("user {:?}", a.name), field, file));
            }
        }
    }
    for (owner, field, file) in named {
        let Some(file) = file.as_deref() else {
            continue;
        };
        match read_once(file, false) {
            Some(ReadOnce::Replay(_)) | Some(ReadOnce::Refuse("a named pipe" | "a socket")) => {
                return Err(kubeconfig_error(
                    Some(path),
                    format!(
                        "{field} of {owner} is {file}, which can be read only once: the \
                         guard and helm would each read it, and helm would get nothing. \
                         Use {} or a regular file",
                        if field == "tokenFile" {
                            "token".to_string()
                        } else {
                            format!("{field}-data")
                        }
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(config)
}

/// A kube `Config` from the chosen context of a kubeconfig, with its context and user names.
fn config_from_kubeconfig(
    loaded: &Loaded,
    context_override: Option<&str>,
) -> Result<(Config, String, Option<String>, AuthInfo), ClusterError> {
    let kc = &loaded.config;
    let file = loaded.files.first().map(String::as_str);
    let context_name = context_override
        .map(str::to_string)
        .or_else(|| kc.current_context.clone().filter(|c| !c.is_empty()))
        .ok_or_else(|| {
            kubeconfig_error(
                file,
                "no current-context is set; pass --kube-context or set HELM_KUBECONTEXT",
            )
        })?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| {
            let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
            kubeconfig_error(
                file,
                format!(
                    "context {context_name:?} not found (contexts: {})",
                    known.join(", ")
                ),
            )
        })?;
    let cluster_name = context.cluster.clone();
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| {
            kubeconfig_error(
                file,
                format!(
                    "context {context_name:?} names cluster {cluster_name:?}, which is not defined"
                ),
            )
        })?;
    let user_name = context.user.clone();
    let auth_info = match &user_name {
        Some(user) => kc
            .auth_infos
            .iter()
            .find(|a| &a.name == user)
            .and_then(|a| a.auth_info.clone())
            .ok_or_else(|| {
                kubeconfig_error(
                    file,
                    format!("context {context_name:?} names user {user:?}, which is not defined"),
                )
            })?,
        None => AuthInfo::default(),
    };
    let bad_cluster = |problem: String| ClusterError::BadCluster {
        context: context_name.clone(),
        cluster: cluster_name.clone(),
        problem,
    };
    let server = cluster.server.clone().unwrap_or_default();
    if server.is_empty() {
        return Err(bad_cluster("no server".into()));
    }
    let url: http::Uri = server
        .parse()
        .map_err(|_| bad_cluster(format!("an invalid server URL {server:?}")))?;
    let mut config = Config::new(url);
    if let Some(data) = &cluster.certificate_authority_data {
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| bad_cluster("certificate-authority-data that is not base64".into()))?;
        let certs = pem_certificates(&String::from_utf8_lossy(&pem))
            .map_err(|e| bad_cluster(format!("unusable certificate-authority-data: {e}")))?;
        config.root_cert = Some(certs);
    } else if let Some(path) = &cluster.certificate_authority {
        config.root_cert = Some(read_pem_certificates(
            path,
            "certificate-authority",
            &Captured::default(),
        )?);
    }
    config.accept_invalid_certs = cluster.insecure_skip_tls_verify.unwrap_or(false);
    config.tls_server_name = cluster.tls_server_name.clone();
    config.proxy_url = match cluster.proxy_url.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => Some(
            p.parse()
                .map_err(|_| bad_cluster(format!("an invalid proxy-url {p:?}")))?,
        ),
        None => None,
    };
    if let Some(ns) = context.namespace.clone().filter(|n| !n.is_empty()) {
        config.default_namespace = ns;
    }
    Ok((config, context_name, user_name, auth_info))
}

/// Turns on debug output (`--debug`, `HELM_DEBUG=true`) for this process.
pub(crate) fn init_debug() {
    debug::init();
}

/// Builds the client and resolves the namespace exactly as helm would for these flags.
/// Reads files and may run an exec plugin, but sends no request.
pub async fn connect(flags: &ClusterFlags, env: &HelmEnv) -> Result<ClusterTarget, ClusterError> {
    connect_with(flags, env, &Captured::default()).await
}

/// [`connect`], reading the kubeconfig files and `--kube-ca-file` a capture holds (pipes
/// helm is handed the same bytes of) from the capture.
pub(crate) async fn connect_with(
    flags: &ClusterFlags,
    env: &HelmEnv,
    captured: &Captured,
) -> Result<ClusterTarget, ClusterError> {
    let context_override = flags
        .kube_context
        .clone()
        .or(env.cluster.kube_context.clone());
    let apiserver = flags
        .kube_apiserver
        .clone()
        .or(env.cluster.kube_apiserver.clone());
    let (loaded, looked) = load_kubeconfig(flags, captured)?;
    // A kubeconfig without any context adds nothing to --kube-apiserver (client-go merges
    // an empty config with the overrides).
    let loaded = loaded.filter(|l| {
        let contextless = l.config.contexts.is_empty() && context_override.is_none();
        !(contextless && apiserver.is_some())
    });
    let (mut config, context, user, mut auth_info) = match &loaded {
        Some(loaded) => {
            let (config, context, user, auth) =
                config_from_kubeconfig(loaded, context_override.as_deref())?;
            tracing::debug!(
                "context: {context} (user {})",
                user.as_deref().unwrap_or("none")
            );
            (config, Some(context), user, auth)
        }
        // helm's flag-only connection: --kube-apiserver and friends, no kubeconfig.
        None if apiserver.is_some() => {
            tracing::debug!("no kubeconfig ({looked}); using --kube-apiserver");
            let url = parse_apiserver(apiserver.as_deref().unwrap_or_default())?;
            (Config::new(url), None, None, AuthInfo::default())
        }
        // No kubeconfig anywhere: helm (client-go) falls back to in-cluster config.
        None => match Config::incluster() {
            Ok(config) => {
                tracing::debug!("no kubeconfig ({looked}); using the in-cluster service account");
                let auth = config.auth_info.clone();
                (config, None, None, auth)
            }
            Err(_) => return Err(ClusterError::NoConfig { looked }),
        },
    };
    if let Some(server) = &apiserver {
        config.cluster_url = parse_apiserver(server)?;
    }
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    tracing::debug!("server: {server}");
    if let Some(token) = flags.kube_token.clone().or(env.cluster.kube_token.clone()) {
        // An explicit token replaces every other way the user would authenticate.
        auth_info.token = Some(token.into());
        auth_info.token_file = None;
        auth_info.exec = None;
    }
    let user_label = user.clone().unwrap_or_else(|| "(flags)".into());
    resolve_credentials(&mut auth_info, &user_label, &server, context.as_deref()).await?;
    if let Some(token) = &auth_info.token {
        use secrecy::ExposeSecret;
        if http::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).is_err() {
            return Err(kubeconfig_error(
                loaded.as_ref().and_then(|l| l.files.first().map(String::as_str)),
                format!(
                    "the bearer token of user {user_label:?} contains characters an HTTP header cannot carry (a line break?)"
                ),
            ));
        }
    }
    config.auth_info = auth_info;
    // Read with the identity helm will act as, so RBAC answers are the same for both.
    if let Some(user) = flags
        .kube_as_user
        .clone()
        .or(env.cluster.kube_as_user.clone())
    {
        config.auth_info.impersonate = Some(user);
    }
    let groups = if flags.kube_as_group.is_empty() {
        env.cluster.kube_as_group.clone()
    } else {
        flags.kube_as_group.clone()
    };
    if !groups.is_empty() {
        config.auth_info.impersonate_groups = Some(groups);
    }
    if let Some(path) = flags
        .kube_ca_file
        .clone()
        .or(env.cluster.kube_ca_file.clone())
    {
        config.root_cert = Some(read_pem_certificates(&path, "--kube-ca-file", captured)?);
    }
    if flags.kube_insecure_skip_tls_verify || env.cluster.kube_insecure_skip_tls_verify {
        // helm drops the CA when told to skip verification.
        config.accept_invalid_certs = true;
        config.root_cert = None;
    } else if config.accept_invalid_certs && config.root_cert.is_some() {
        // client-go refuses the combination; so does helm.
        return Err(kubeconfig_error(
            loaded
                .as_ref()
                .and_then(|l| l.files.first().map(String::as_str)),
            "insecure-skip-tls-verify is set together with a certificate authority \
             (certificate-authority, certificate-authority-data or --kube-ca-file), which helm \
             refuses too; remove one",
        ));
    }
    if let Some(name) = flags
        .kube_tls_server_name
        .clone()
        .or(env.cluster.kube_tls_server_name.clone())
    {
        config.tls_server_name = Some(name);
    }
    // Proxies as Go decides them; a kubeconfig proxy-url wins and ignores NO_PROXY.
    if config.proxy_url.is_none() {
        let proxy_env = proxy::ProxyEnv::from_process();
        if let Some(p) = proxy::proxy_for(&config.cluster_url, &proxy_env) {
            config.proxy_url = Some(p.parse().map_err(|_| {
                kubeconfig_error(
                    None,
                    format!("HTTPS_PROXY/HTTP_PROXY value {p:?} is not a URL"),
                )
            })?);
        }
    }
    match &config.proxy_url {
        Some(p) => tracing::debug!("proxy: {}", redact_userinfo(&p.to_string())),
        None => tracing::debug!("proxy: none (direct connection)"),
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    // One retry policy (the storage layer's, transient failures only), not two.
    config.default_retry = false;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    let (namespace, from) = match flags.namespace.clone() {
        Some(ns) => (ns, "-n/--namespace".to_string()),
        None => match env.cluster.namespace.clone() {
            Some(ns) => (ns, "HELM_NAMESPACE".to_string()),
            None => (
                config.default_namespace.clone(),
                match (&context, &loaded) {
                    (Some(context), _) => format!("kubeconfig context {context:?}"),
                    (None, None) if apiserver.is_none() => {
                        "the in-cluster service account".to_string()
                    }
                    _ => "the default".to_string(),
                },
            ),
        },
    };
    // Every source, not only -n: the namespace is spliced into API and Lease paths.
    crate::core::names::validate_namespace(&namespace)
        .map_err(|source| ClusterError::InvalidNamespace { from, source })?;
    tracing::debug!("namespace: {namespace}");
    failure::register(Endpoint {
        server: server.clone(),
        context: context.clone(),
        timeout: REQUEST_TIMEOUT,
    });
    let (client, connections) =
        transport::client(config, &server).map_err(|source| ClusterError::Client {
            server: server.clone(),
            source,
        })?;
    Ok(ClusterTarget {
        client,
        namespace,
        user,
        connections,
    })
}

/// Turns `tokenFile` and `exec` into the token or client certificate they yield, once.
async fn resolve_credentials(
    auth: &mut AuthInfo,
    user: &str,
    server: &str,
    context: Option<&str>,
) -> Result<(), ClusterError> {
    if let Some(path) = auth.token_file.take() {
        // helm trims the file: `echo $TOKEN > file` leaves a newline.
        let text = std::fs::read_to_string(&path).map_err(|e| {
            kubeconfig_error(Some(&path), format!("tokenFile of user {user:?}: {e}"))
        })?;
        let token = text.trim();
        if auth.token.is_none() {
            auth.token = Some(token.to_string().into());
        }
        tracing::debug!("credentials: token from tokenFile {path} (redacted)");
    }
    if let Some(exec_config) = auth.exec.take() {
        let command = exec_config.command.clone().unwrap_or_default();
        tracing::debug!("credentials: running exec plugin {command:?}");
        let credential = exec::credential(&exec_config, user, server)
            .await
            .map_err(|source| ClusterError::Exec {
                server: server.to_string(),
                context: context.map(str::to_string),
                source: Box::new(source),
            })?;
        tracing::debug!(
            "credentials: exec plugin gave a {} (redacted){}",
            if credential.token.is_some() {
                "token"
            } else {
                "client certificate"
            },
            credential
                .expires
                .as_deref()
                .map(|t| format!(", expires {t}"))
                .unwrap_or_default()
        );
        if let Some(token) = credential.token {
            auth.token = Some(token.into());
        }
        if let Some((cert, key)) = credential.client_cert {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            auth.client_certificate = None;
            auth.client_key = None;
            auth.client_certificate_data = Some(b64.encode(cert));
            auth.client_key_data = Some(b64.encode(key).into());
        }
    } else if auth.token.is_some() {
        tracing::debug!("credentials: bearer token (redacted)");
    }
    if auth.client_certificate.is_some() || auth.client_certificate_data.is_some() {
        tracing::debug!("credentials: client certificate (key redacted)");
    }
    Ok(())
}

/// `--kube-apiserver`: a URL, or `host:port` meaning https as in client-go.
fn parse_apiserver(value: &str) -> Result<http::Uri, ClusterError> {
    let text = if value.contains("://") {
        value.to_string()
    } else {
        format!("https://{value}")
    };
    text.parse::<http::Uri>()
        .ok()
        .filter(|u| u.host().is_some())
        .ok_or_else(|| ClusterError::BadApiServer(value.to_string()))
}

/// A proxy URL without its password, for debug output.
fn redact_userinfo(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://REDACTED@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// DER certificates from a PEM bundle file (`--kube-ca-file`, `certificate-authority`).
fn read_pem_certificates(
    path: &str,
    what: &str,
    captured: &Captured,
) -> Result<Vec<Vec<u8>>, ClusterError> {
    let bytes = captured
        .read(path)
        .map_err(|e| kubeconfig_error(Some(path), format!("{what}: {e}")))?;
    let text = String::from_utf8_lossy(&bytes);
    pem_certificates(&text).map_err(|e| kubeconfig_error(Some(path), format!("{what}: {e}")))
}

/// DER certificates from PEM text.
fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine;
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b64 = body.take().unwrap_or_default();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("bad PEM certificate: {e}"))?;
            certs.push(der);
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// Creates `namespace` if it does not exist (what `helm --create-namespace` does); true
/// when this call created it.
pub(crate) async fn ensure_namespace(client: &Client, namespace: &str) -> Result<bool, ApiError> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    if crate::adapters::retry::run(&format!("reading namespace {namespace:?}"), || async {
        Ok::<_, ApiError>(api.get_opt(namespace).await?)
    })
    .await?
    .is_some()
    {
        return Ok(false);
    }
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(namespace.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&kube::api::PostParams::default(), &ns).await {
        Ok(_) => Ok(true),
        Err(e) => {
            let e = ApiError::from(e);
            // Someone else (a concurrent pipeline) created it first: fine.
            if e.code() == Some(409) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file a kubeconfig names on a pipe is refused, naming field, owner and path; the
    /// same kubeconfig with a regular file loads. Every file field counts.
    #[test]
    fn kubeconfig_files_that_can_be_read_once_are_refused() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two descriptors it returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let pipe = format!("/dev/fd/{}", fds[0]);
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("file");
        std::fs::write(&regular, "x").unwrap();
        let regular = regular.display().to_string();
        let path = dir.path().join("config");
        let path = path.to_str().unwrap();
        let fields = [
            (
                "certificate-authority",
                "cluster \"c\"",
                "certificate-authority-data",
            ),
            (
                "client-certificate",
                "user \"u\"",
                "client-certificate-data",
            ),
            ("client-key", "user \"u\"", "client-key-data"),
            ("tokenFile", "user \"u\"", "token"),
        ];
        for (field, owner, instead) in fields {
            let config = |file: &str| {
                let (ca, user) = match field {
                    "certificate-authority" => (format!("    {field}: {file}\n"), String::new()),
                    _ => (String::new(), format!("    {field}: {file}\n")),
                };
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    \
                     server: https://127.0.0.1:1\n{ca}users:\n- name: u\n  user:\n{user}\
                     contexts:\n- name: x\n  context: {{cluster: c, user: u}}\n\
                     current-context: x\n"
                )
            };
            std::fs::write(path, config(&pipe)).unwrap();
            let err = read_kubeconfig(path, &Captured::default()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot load the kubeconfig {path:?}: {field} of {owner} is {pipe}, which \
                     can be read only once: the guard and helm would each read it, and helm \
                     would get nothing. Use {instead} or a regular file"
                ),
                "{field}"
            );
            std::fs::write(path, config(&regular)).unwrap();
            assert!(
                read_kubeconfig(path, &Captured::default()).is_ok(),
                "{field}"
            );
        }
        // SAFETY: closing the two descriptors pipe(2) gave us.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    /// The lock commands' cluster flags come from the same rows as helm's argv's: clap
    /// and the argv splitter give the same values for the same words.
    #[test]
    fn clap_and_the_splitter_read_the_cluster_flags_alike() {
        use clap::{Args, FromArgMatches};
        let words = "-n x --kube-context c --kubeconfig /k --kube-apiserver https://k \
                     --kube-token t --kube-insecure-skip-tls-verify --kube-as-user u \
                     --kube-as-group a --kube-as-group b --kube-ca-file ca \
                     --kube-tls-server-name api --debug";
        let words: Vec<&str> = words.split_whitespace().collect();
        let cmd = ClusterValues::augment_args(clap::Command::new("t"));
        let matches = cmd
            .try_get_matches_from(std::iter::once("t").chain(words.iter().copied()))
            .unwrap();
        let from_clap = ClusterValues::from_arg_matches(&matches).unwrap();
        let argv: Vec<String> = ["db", "c"]
            .iter()
            .chain(words.iter())
            .map(|s| s.to_string())
            .collect();
        let split = crate::core::argv::split(&argv, crate::core::argv::Mode::Upgrade).unwrap();
        assert_eq!(from_clap, split.helm.cluster);
        assert_eq!(from_clap.kube_as_group, ["a", "b"]);
        assert!(from_clap.debug && from_clap.kube_insecure_skip_tls_verify);
    }

    #[test]
    fn pem_bundles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(
            &path,
            "junk\n-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n\
             -----BEGIN CERTIFICATE-----\nBAU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let none = Captured::default();
        let certs = read_pem_certificates(path.to_str().unwrap(), "--kube-ca-file", &none).unwrap();
        assert_eq!(certs, vec![vec![0, 1, 2, 3], vec![4, 5]]);
        std::fs::write(&path, "no certificate here").unwrap();
        let err =
            read_pem_certificates(path.to_str().unwrap(), "--kube-ca-file", &none).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
