//! The API server's audit log, read back by tests: what a command asked of the real server.

use serde::Deserialize;
use serde_json::Value;

/// One completed request, as the API server audited it (`level: Metadata`).
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// Kubernetes verb: get list watch create update patch delete deletecollection, or the
    /// lower-case HTTP method for non-resource paths.
    pub verb: String,
    /// The request URI: path and query.
    pub request_uri: String,
    /// The authenticated user.
    pub user: String,
    /// The user acted as through `Impersonate-User`, if any.
    pub impersonated_user: Option<String>,
    /// The User-Agent header.
    pub user_agent: String,
    /// The HTTP status answered.
    pub code: u16,
    /// Resource plural (`secrets`, `leases`), with `/subresource` when there is one.
    pub resource: Option<String>,
    /// Namespace of the object, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
}

impl AuditEvent {
    /// Whether the request asked to change something (create, update, patch, delete,
    /// deletecollection), whatever the answer was.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// The HTTP method the verb was sent with.
    pub fn method(&self) -> &'static str {
        match self.verb.as_str() {
            "create" => "POST",
            "update" => "PUT",
            "patch" => "PATCH",
            "delete" | "deletecollection" => "DELETE",
            _ => "GET",
        }
    }

    /// The path part of the request URI.
    pub fn path(&self) -> &str {
        self.request_uri.split('?').next().unwrap_or_default()
    }

    /// The query part of the request URI (still percent-encoded), empty without one.
    pub fn query(&self) -> &str {
        self.request_uri
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    stage: String,
    verb: String,
    request_u_r_i: String,
    #[serde(default)]
    user: Value,
    #[serde(default)]
    impersonated_user: Value,
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    response_status: Value,
    #[serde(default)]
    object_ref: Value,
}

/// Parses the audit log lines that are completed requests (stage `ResponseComplete` or
/// `Panic`); a line that is not an audit event is a test-bed bug and panics.
pub(crate) fn parse(text: &str) -> Vec<AuditEvent> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let raw: Raw = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit log line is not an event ({e}): {line}"));
            if raw.stage != "ResponseComplete" && raw.stage != "Panic" {
                return None;
            }
            let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(String::from);
            let resource = str_of(&raw.object_ref, "resource").map(|r| {
                match str_of(&raw.object_ref, "subresource") {
                    Some(sub) => format!("{r}/{sub}"),
                    None => r,
                }
            });
            Some(AuditEvent {
                verb: raw.verb,
                request_uri: raw.request_u_r_i,
                user: str_of(&raw.user, "username").unwrap_or_default(),
                impersonated_user: str_of(&raw.impersonated_user, "username"),
                user_agent: raw.user_agent,
                code: raw
                    .response_status
                    .get("code")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u16,
                resource,
                namespace: str_of(&raw.object_ref, "namespace"),
                name: str_of(&raw.object_ref, "name"),
            })
        })
        .collect()
}

/// The audit policy: every request at `Metadata` level (never bodies: they hold release
/// values), except the test bed's own housekeeping, the server's loopback client and the
/// cluster's controllers (kube-controller-manager and the ServiceAccounts it acts as in
/// kube-system, kube-scheduler, kwok as its node): what a test reads back is what the
/// tests' programs asked.
pub(crate) const POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  users: [\"kube-testbed\", \"system:apiserver\", \"system:kube-controller-manager\", \"system:kube-scheduler\"]
- level: None
  userGroups: [\"system:serviceaccounts:kube-system\", \"system:nodes\"]
- level: None
  nonResourceURLs: [\"/healthz*\", \"/readyz*\", \"/livez*\"]
- level: Metadata
";
