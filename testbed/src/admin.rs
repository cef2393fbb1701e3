//! The test bed's own client of the API server: an admin token (user `kube-testbed`, left
//! out of the audit log) over HTTPS trusting the test CA. For setup, reset and read-back.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// Where a resource lives: the API path prefix and whether it is namespaced.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kind {
    pub(crate) plural: &'static str,
    pub(crate) prefix: &'static str,
    pub(crate) namespaced: bool,
}

/// The resources tests and helm touch. Namespaced ones are emptied between tests.
pub(crate) const KINDS: &[Kind] = &[
    kind("namespaces", "/api/v1", false),
    kind("nodes", "/api/v1", false),
    kind("secrets", "/api/v1", true),
    kind("configmaps", "/api/v1", true),
    kind("services", "/api/v1", true),
    kind("serviceaccounts", "/api/v1", true),
    kind("pods", "/api/v1", true),
    kind("events", "/api/v1", true),
    kind("deployments", "/apis/apps/v1", true),
    kind("replicasets", "/apis/apps/v1", true),
    kind("statefulsets", "/apis/apps/v1", true),
    kind("daemonsets", "/apis/apps/v1", true),
    kind("jobs", "/apis/batch/v1", true),
    kind("leases", "/apis/coordination.k8s.io/v1", true),
    kind("roles", "/apis/rbac.authorization.k8s.io/v1", true),
    kind("rolebindings", "/apis/rbac.authorization.k8s.io/v1", true),
    kind("clusterroles", "/apis/rbac.authorization.k8s.io/v1", false),
    kind(
        "clusterrolebindings",
        "/apis/rbac.authorization.k8s.io/v1",
        false,
    ),
    kind("horizontalpodautoscalers", "/apis/autoscaling/v2", true),
    kind("cronjobs", "/apis/batch/v1", true),
    kind("persistentvolumes", "/api/v1", false),
    kind(
        "customresourcedefinitions",
        "/apis/apiextensions.k8s.io/v1",
        false,
    ),
    kind(
        "validatingwebhookconfigurations",
        "/apis/admissionregistration.k8s.io/v1",
        false,
    ),
    kind(
        "validatingadmissionpolicies",
        "/apis/admissionregistration.k8s.io/v1",
        false,
    ),
    kind(
        "validatingadmissionpolicybindings",
        "/apis/admissionregistration.k8s.io/v1",
        false,
    ),
];

const fn kind(plural: &'static str, prefix: &'static str, namespaced: bool) -> Kind {
    Kind {
        plural,
        prefix,
        namespaced,
    }
}

pub(crate) fn kind_of(plural: &str) -> Kind {
    *KINDS
        .iter()
        .find(|k| k.plural == plural)
        .unwrap_or_else(|| panic!("kube-testbed does not know the resource {plural:?}"))
}

/// The URL path of a collection or (with `name`) of one object.
pub(crate) fn path(plural: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    let k = kind_of(plural);
    let mut p = k.prefix.to_string();
    if k.namespaced {
        let ns = namespace.unwrap_or("default");
        p.push_str(&format!("/namespaces/{ns}"));
    }
    p.push('/');
    p.push_str(plural);
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

#[derive(Clone)]
pub(crate) struct Admin {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Admin {
    pub(crate) fn new(base: &str, ca_pem: &str, token: &str) -> Admin {
        let ca = Certificate::from_pem(ca_pem.as_bytes()).expect("test CA PEM");
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .user_agent("kube-testbed")
            .build()
            .into();
        Admin {
            agent,
            base: base.to_string(),
            token: format!("Bearer {token}"),
        }
    }

    /// Sends a request; returns the status and the JSON body (Null when there is none).
    /// Panics on a transport error: the test bed's server is gone, nothing to test.
    pub(crate) fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_send(method, path, body)
            .unwrap_or_else(|e| panic!("kube-testbed: {method} {path}: {e}"))
    }

    pub(crate) fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ureq::Error> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_str();
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", auth).call()?,
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", auth)
                .call()?,
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", auth)
                .send_json(b)?,
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", auth)
                .send_json(b)?,
            ("PATCH", Some(b)) => self
                .agent
                .patch(&url)
                .header("Authorization", auth)
                .content_type("application/merge-patch+json")
                .send(serde_json::to_vec(b).expect("json"))?,
            _ => panic!("kube-testbed: unsupported request {method} without a body"),
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// GET that must succeed or be 404 (None).
    pub(crate) fn get(&self, path: &str) -> Option<Value> {
        match self.send("GET", path, None) {
            (200, v) => Some(v),
            (404, _) => None,
            (code, v) => panic!("kube-testbed: GET {path}: {code} {v}"),
        }
    }
}
