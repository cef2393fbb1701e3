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
}

impl DriverKind {
    /// Maps a `HELM_DRIVER` value to a supported driver, or explains why it is not.
    pub fn from_helm_driver(value: Option<&str>) -> Result<DriverKind, ClusterError> {
        match value.map(str::trim).unwrap_or("") {
            "" | "secret" | "secrets" => Ok(DriverKind::Secret),
            "configmap" | "configmaps" => Ok(DriverKind::ConfigMap),
            other @ ("sql" | "memory") => Err(ClusterError::UnsupportedDriver(other.to_string())),
            other => Err(ClusterError::UnknownDriver(other.to_string())),
        }
    }

    /// The Kubernetes kind holding the records.
    pub fn kind(self) -> &'static str {
        match self {
            DriverKind::Secret => "Secret",
            DriverKind::ConfigMap => "ConfigMap",
        }
    }
}

/// Failures while choosing or connecting to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `HELM_DRIVER=sql|memory`.
    #[error(
        "HELM_DRIVER={0} is not supported yet: guarded-upgrade reads releases from Secrets \
         (default) or ConfigMaps (HELM_DRIVER=configmap); helm was not run"
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

/// Flags that select the cluster, shared by every subcommand.
#[derive(Clone, Debug, Default)]
pub struct ClusterFlags {
    /// `-n/--namespace`.
    pub namespace: Option<String>,
    /// `--kube-context`.
    pub kube_context: Option<String>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<String>,
    /// `--kube-apiserver`.
    pub kube_apiserver: Option<String>,
    /// `--kube-token`.
    pub kube_token: Option<String>,
    /// `--kube-insecure-skip-tls-verify`.
    pub kube_insecure_skip_tls_verify: bool,
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
    let (mut config, user) = match &flags.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(kubeconfig_err(Some(path.clone())))?;
            let user = context_user(&kc, context.as_deref());
            let config = Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(kubeconfig_err(Some(path.clone())))?;
            (config, user)
        }
        None => match Kubeconfig::from_env().map_err(kubeconfig_err(None))? {
            Some(kc) => {
                let user = context_user(&kc, context.as_deref());
                let config = Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(kubeconfig_err(None))?;
                (config, user)
            }
            None => match Kubeconfig::read() {
                Ok(kc) => {
                    let user = context_user(&kc, context.as_deref());
                    let config = Config::from_custom_kubeconfig(kc, &options)
                        .await
                        .map_err(kubeconfig_err(None))?;
                    (config, user)
                }
                // No kubeconfig anywhere: helm (client-go) falls back to in-cluster config.
                Err(read_err) => match Config::incluster() {
                    Ok(config) => (config, None),
                    Err(_) => return Err(kubeconfig_err(None)(read_err)),
                },
            },
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
    if flags.kube_insecure_skip_tls_verify {
        config.accept_invalid_certs = true;
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
        let sql = DriverKind::from_helm_driver(Some("sql")).unwrap_err();
        assert!(sql.to_string().contains("not supported yet"), "{sql}");
        let mem = DriverKind::from_helm_driver(Some("memory")).unwrap_err();
        assert!(mem.to_string().contains("HELM_DRIVER=memory"), "{mem}");
        assert!(matches!(
            DriverKind::from_helm_driver(Some("etcd")),
            Err(ClusterError::UnknownDriver(_))
        ));
    }
}
