//! Choosing the cluster, namespace and storage driver the way helm does.
//!
//! Helm's precedence: `--kubeconfig` over `KUBECONFIG` over `~/.kube/config` (in-cluster
//! config when none exists), `--kube-context` over `HELM_KUBECONTEXT` over the current
//! context, `-n/--namespace` over `HELM_NAMESPACE` over the context's namespace over
//! `default`. `HELM_KUBEAPISERVER`/`--kube-apiserver` and `HELM_KUBETOKEN`/`--kube-token`
//! override the server and the bearer token.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::argv::HelmFlags;

/// Where helm keeps release records, from `HELM_DRIVER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// `secret`, `secrets` or unset: one Secret per revision (helm's default).
    Secret,
    /// `configmap`, `configmaps`: one ConfigMap per revision.
    ConfigMap,
    /// `sql`: rows in helm's PostgreSQL tables (`HELM_DRIVER_SQL_CONNECTION_STRING`).
    Sql,
}

impl DriverKind {
    /// Maps a `HELM_DRIVER` value to a supported driver, or explains why it is not.
    pub fn from_helm_driver(value: Option<&str>) -> Result<DriverKind, ClusterError> {
        match value.map(str::trim).unwrap_or("") {
            "" | "secret" | "secrets" => Ok(DriverKind::Secret),
            "configmap" | "configmaps" => Ok(DriverKind::ConfigMap),
            "sql" => Ok(DriverKind::Sql),
            other @ "memory" => Err(ClusterError::UnsupportedDriver(other.to_string())),
            other => Err(ClusterError::UnknownDriver(other.to_string())),
        }
    }

    /// The Kubernetes kind holding the records.
    pub fn kind(self) -> &'static str {
        match self {
            DriverKind::Secret => "Secret",
            DriverKind::ConfigMap => "ConfigMap",
            DriverKind::Sql => "SQL row",
        }
    }
}

/// Failures while choosing or connecting to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `HELM_DRIVER=memory`.
    #[error(
        "HELM_DRIVER={0} is not supported: helm keeps such releases only inside its own \
         process; guarded-upgrade reads releases from Secrets (default), ConfigMaps \
         (HELM_DRIVER=configmap) or PostgreSQL (HELM_DRIVER=sql); helm was not run"
    )]
    UnsupportedDriver(String),
    /// A `HELM_DRIVER` value helm itself does not know.
    #[error(
        "HELM_DRIVER={0:?} is not a helm storage driver (use secret, configmap, sql or memory)"
    )]
    UnknownDriver(String),
    /// The kubeconfig could not be read or used.
    #[error("cannot load the kubeconfig{}: {source}", path_note(.path))]
    Kubeconfig {
        /// The file named with `--kubeconfig`, if any.
        path: Option<String>,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A server or token override was malformed.
    #[error("invalid --kube-apiserver/HELM_KUBEAPISERVER value {0:?}")]
    BadApiServer(String),
    /// The HTTP client could not be built (e.g. TLS material unusable).
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

fn path_note(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!(" {p:?}")).unwrap_or_default()
}

/// Environment values helm reads, captured once so resolution is testable.
#[derive(Clone, Debug, Default)]
pub struct HelmEnv {
    /// `HELM_NAMESPACE`.
    pub namespace: Option<String>,
    /// `HELM_KUBECONTEXT`.
    pub kube_context: Option<String>,
    /// `HELM_KUBEAPISERVER`.
    pub kube_apiserver: Option<String>,
    /// `HELM_KUBETOKEN`.
    pub kube_token: Option<String>,
    /// `HELM_DRIVER`.
    pub driver: Option<String>,
    /// `HELM_KUBEASUSER`.
    pub kube_as_user: Option<String>,
    /// `HELM_KUBEASGROUPS` (comma-separated).
    pub kube_as_groups: Vec<String>,
    /// `HELM_KUBECAFILE`.
    pub kube_ca_file: Option<String>,
    /// `HELM_KUBETLS_SERVER_NAME`.
    pub kube_tls_server_name: Option<String>,
    /// `HELM_KUBEINSECURE_SKIP_TLS_VERIFY`.
    pub kube_insecure_skip_tls_verify: bool,
}

impl HelmEnv {
    /// Reads the variables from the process environment; empty values count as unset.
    pub fn from_process() -> HelmEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        HelmEnv {
            namespace: var("HELM_NAMESPACE"),
            kube_context: var("HELM_KUBECONTEXT"),
            kube_apiserver: var("HELM_KUBEAPISERVER"),
            kube_token: var("HELM_KUBETOKEN"),
            driver: var("HELM_DRIVER"),
            kube_as_user: var("HELM_KUBEASUSER"),
            kube_as_groups: var("HELM_KUBEASGROUPS")
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            kube_ca_file: var("HELM_KUBECAFILE"),
            kube_tls_server_name: var("HELM_KUBETLS_SERVER_NAME"),
            kube_insecure_skip_tls_verify: var("HELM_KUBEINSECURE_SKIP_TLS_VERIFY")
                .is_some_and(|v| v == "true" || v == "1"),
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
}

/// Flags that select the cluster, with helm's names and environment defaults. Parsed by
/// clap for the lock commands; taken from helm's argv (`From<&HelmFlags>`) for
/// `upgrade`/`check`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterFlags {
    /// Namespace of the release (default: $HELM_NAMESPACE, the context's namespace, `default`)
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubeconfig context (default: $HELM_KUBECONTEXT, the current context)
    #[arg(long)]
    pub kube_context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config)
    #[arg(long)]
    pub kubeconfig: Option<String>,
    /// API server address (default: $HELM_KUBEAPISERVER)
    #[arg(long)]
    pub kube_apiserver: Option<String>,
    /// Bearer token (default: $HELM_KUBETOKEN)
    #[arg(long)]
    pub kube_token: Option<String>,
    /// Skip TLS verification of the API server
    #[arg(long)]
    pub kube_insecure_skip_tls_verify: bool,
    /// Impersonate this user (default: $HELM_KUBEASUSER)
    #[arg(long)]
    pub kube_as_user: Option<String>,
    /// Impersonate this group; repeatable (default: $HELM_KUBEASGROUPS)
    #[arg(long)]
    pub kube_as_group: Vec<String>,
    /// CA bundle (PEM) of the API server (default: $HELM_KUBECAFILE)
    #[arg(long)]
    pub kube_ca_file: Option<String>,
    /// Server name for TLS verification (default: $HELM_KUBETLS_SERVER_NAME)
    #[arg(long)]
    pub kube_tls_server_name: Option<String>,
}

impl From<&HelmFlags> for ClusterFlags {
    fn from(flags: &HelmFlags) -> ClusterFlags {
        ClusterFlags {
            namespace: flags.namespace.clone(),
            kube_context: flags.kube_context.clone(),
            kubeconfig: flags.kubeconfig.clone(),
            kube_apiserver: flags.kube_apiserver.clone(),
            kube_token: flags.kube_token.clone(),
            kube_insecure_skip_tls_verify: flags.kube_insecure_skip_tls_verify,
            kube_as_user: flags.kube_as_user.clone(),
            kube_as_group: flags.kube_as_group.clone(),
            kube_ca_file: flags.kube_ca_file.clone(),
            kube_tls_server_name: flags.kube_tls_server_name.clone(),
        }
    }
}

/// Builds the client and resolves the namespace exactly as helm would for these flags.
pub async fn connect(flags: &ClusterFlags, env: &HelmEnv) -> Result<ClusterTarget, ClusterError> {
    let context = flags.kube_context.clone().or(env.kube_context.clone());
    let options = KubeConfigOptions {
        context: context.clone(),
        cluster: None,
        user: None,
    };
    let kubeconfig_err = |path: Option<String>| {
        move |e: kube::config::KubeconfigError| ClusterError::Kubeconfig {
            path,
            source: Box::new(e),
        }
    };
    // Which kubeconfig, as client-go picks it: --kubeconfig, $KUBECONFIG, ~/.kube/config.
    let path = flags.kubeconfig.clone();
    let found = match &path {
        Some(p) => Ok(Kubeconfig::read_from(p).map_err(kubeconfig_err(path.clone()))?),
        None => match Kubeconfig::from_env().map_err(kubeconfig_err(None))? {
            Some(kc) => Ok(kc),
            None => Kubeconfig::read(),
        },
    };
    let (mut config, user) = match found {
        Ok(kc) => {
            let user = context_user(&kc, context.as_deref());
            let config = Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(kubeconfig_err(path))?;
            (config, user)
        }
        // No kubeconfig anywhere: helm (client-go) falls back to in-cluster config.
        Err(read_err) => match Config::incluster() {
            Ok(config) => (config, None),
            Err(_) => return Err(kubeconfig_err(None)(read_err)),
        },
    };
    if let Some(server) = flags.kube_apiserver.clone().or(env.kube_apiserver.clone()) {
        config.cluster_url = server
            .parse()
            .map_err(|_| ClusterError::BadApiServer(server.clone()))?;
    }
    if let Some(token) = flags.kube_token.clone().or(env.kube_token.clone()) {
        config.auth_info.token = Some(token.into());
    }
    if flags.kube_insecure_skip_tls_verify || env.kube_insecure_skip_tls_verify {
        config.accept_invalid_certs = true;
    }
    // Read with the identity helm will act as, so RBAC answers are the same for both.
    if let Some(user) = flags.kube_as_user.clone().or(env.kube_as_user.clone()) {
        config.auth_info.impersonate = Some(user);
    }
    let groups = if flags.kube_as_group.is_empty() {
        env.kube_as_groups.clone()
    } else {
        flags.kube_as_group.clone()
    };
    if !groups.is_empty() {
        config.auth_info.impersonate_groups = Some(groups);
    }
    if let Some(path) = flags.kube_ca_file.clone().or(env.kube_ca_file.clone()) {
        config.root_cert = Some(read_pem_certificates(&path)?);
    }
    if let Some(name) = flags
        .kube_tls_server_name
        .clone()
        .or(env.kube_tls_server_name.clone())
    {
        config.tls_server_name = Some(name);
    }
    // Fail fast on an unreachable server; transient errors are retried by the caller.
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    let namespace = flags
        .namespace
        .clone()
        .or(env.namespace.clone())
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(ClusterError::Client)?;
    Ok(ClusterTarget {
        client,
        namespace,
        user,
    })
}

/// DER certificates from a PEM bundle (`--kube-ca-file`).
fn read_pem_certificates(path: &str) -> Result<Vec<Vec<u8>>, ClusterError> {
    use base64::Engine;
    let bad = |message: String| ClusterError::Kubeconfig {
        path: Some(path.to_string()),
        source: message.into(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("--kube-ca-file: {e}")))?;
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b64 = body.take().unwrap_or_default();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| bad(format!("--kube-ca-file: bad PEM certificate: {e}")))?;
            certs.push(der);
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if certs.is_empty() {
        return Err(bad("--kube-ca-file: no PEM certificate found".into()));
    }
    Ok(certs)
}

/// The user name of a kubeconfig context (the current one when `context` is None).
fn context_user(kc: &Kubeconfig, context: Option<&str>) -> Option<String> {
    let name = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())?;
    kc.contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let certs = read_pem_certificates(path.to_str().unwrap()).unwrap();
        assert_eq!(certs, vec![vec![0, 1, 2, 3], vec![4, 5]]);
        std::fs::write(&path, "no certificate here").unwrap();
        let err = read_pem_certificates(path.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn helm_driver_values() {
        assert_eq!(
            DriverKind::from_helm_driver(None).unwrap(),
            DriverKind::Secret
        );
        for v in ["", "secret", "secrets"] {
            assert_eq!(
                DriverKind::from_helm_driver(Some(v)).unwrap(),
                DriverKind::Secret
            );
        }
        for v in ["configmap", "configmaps"] {
            assert_eq!(
                DriverKind::from_helm_driver(Some(v)).unwrap(),
                DriverKind::ConfigMap
            );
        }
        assert_eq!(
            DriverKind::from_helm_driver(Some("sql")).unwrap(),
            DriverKind::Sql
        );
        let mem = DriverKind::from_helm_driver(Some("memory")).unwrap_err();
        assert!(mem.to_string().contains("HELM_DRIVER=memory"), "{mem}");
        assert!(matches!(
            DriverKind::from_helm_driver(Some("etcd")),
            Err(ClusterError::UnknownDriver(_))
        ));
    }
}
