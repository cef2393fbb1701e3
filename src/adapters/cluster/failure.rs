//! Classifying request-time failures: what went wrong talking to which API server, whether
//! retrying can help, and what to check. Every failed request becomes an [`ApiError`]
//! (through [`classify`]); [`connect`](super::connect) registers the server and context once.

use std::sync::OnceLock;
use std::time::Duration;

use crate::adapters::retry::{Retryable, Verdict};
use crate::core::chain::error_chain;

/// A failed request to the Kubernetes API server, said as the server answered it. What the
/// Kubernetes API is asked directly (the mutex's Lease, the admission enforcer's objects,
/// namespaces) fails with this; the Secret and ConfigMap drivers map it into the store's
/// error kinds (`storage::ErrorKind`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with a Status error.
    #[error("the API server answered {}: {message}", status_line(*code, reason))]
    Status {
        /// HTTP code.
        code: u16,
        /// Status reason, e.g. `Forbidden`.
        reason: String,
        /// Status message.
        message: String,
        /// `details.retryAfterSeconds`: when the server asked us to retry.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    /// A classified connection or identity failure naming the server and context
    /// (DNS, refused, TLS, 401, 403, timeout; see [`classify`]).
    #[error("{0}")]
    Connection(ConnectionFailure),
}

/// `500 InternalError`, or `500` when the Status gave no reason (an etcd failure does not).
fn status_line(code: u16, reason: &str) -> String {
    match reason.trim() {
        "" => code.to_string(),
        reason => format!("{code} {reason}"),
    }
}

impl ApiError {
    /// The HTTP code, when the server answered one (a classified 401 or 403 included).
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            ApiError::Connection(f) => f.code(),
            ApiError::Transport(_) => None,
        }
    }

    /// Worth retrying: server errors, throttling, refused and broken connections (TLS, DNS,
    /// 401/403 and timeouts are final).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Status { code, .. } => *code >= 500 || *code == 429,
            ApiError::Transport(_) => true,
            ApiError::Connection(f) => f.is_transient(),
        }
    }

    /// When the server asked to retry (`details.retryAfterSeconds`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The API's own words without who said them (a Status message, a classified
    /// failure's cause), for a note that already names the server.
    pub fn cause(&self) -> String {
        match self {
            ApiError::Connection(f) => f.cause.clone(),
            other => other.to_string(),
        }
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> ApiError {
        if let Some(failure) = classify(&e) {
            return ApiError::Connection(failure);
        }
        match e {
            kube::Error::Api(status) => ApiError::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
                retry_after: status
                    .details
                    .as_ref()
                    .map(|d| d.retry_after_seconds)
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(u64::from(s))),
            },
            other => ApiError::Transport(error_chain(&other)),
        }
    }
}

impl Retryable for ApiError {
    /// Transient errors are retried, after the server's hint when it gave one; everything
    /// else is final (a 409 included: the object moved on, only the caller can re-read).
    fn verdict(&self) -> Verdict {
        if self.is_transient() {
            Verdict::Retry {
                server_hint: self.retry_after(),
            }
        } else {
            Verdict::Final
        }
    }
}

/// The server and context this process talks to, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The API server URL.
    pub server: String,
    /// The kubeconfig context, None without a kubeconfig (flags or in-cluster).
    pub context: Option<String>,
    /// The per-request answer timeout.
    pub timeout: Duration,
}

/// Process-wide on purpose: `classify` runs on errors from every request (store, Lease,
/// enforcer, helm's dry run) to name the server and context, and one command talks to one
/// cluster; set once by `cluster::connect`, read only for error messages.
static ENDPOINT: OnceLock<Endpoint> = OnceLock::new();

/// Remembers the endpoint for [`classify`] (first call wins: one command, one cluster).
pub(crate) fn register(endpoint: Endpoint) {
    let _ = ENDPOINT.set(endpoint);
}

/// The endpoint registered by `connect`, if any.
pub fn endpoint() -> Option<&'static Endpoint> {
    ENDPOINT.get()
}

/// What kind of failure it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The server's host name does not resolve.
    Dns {
        /// The host looked up.
        host: String,
    },
    /// Nothing listens at the address.
    Refused,
    /// The certificate chain does not lead to a trusted CA.
    TlsTrust,
    /// The certificate does not name the host (or `tls-server-name`).
    TlsName,
    /// The certificate's validity period does not include now.
    CertExpired,
    /// Some other TLS failure (protocol, rejected client certificate, ...).
    Tls,
    /// The credentials were rejected (HTTP 401).
    Unauthorized,
    /// The identity may not do this (HTTP 403).
    Forbidden {
        /// What was refused, e.g. `list resource "secrets" in the namespace "prod"`, from
        /// the API's answer; None when the answer does not say.
        what: Option<String>,
    },
    /// No answer in time (connection or response).
    Timeout,
    /// The HTTP proxy did not open a tunnel.
    Proxy,
    /// The connection broke (reset, closed early).
    Broken,
    /// The client could not use the credentials (e.g. an auth provider failed).
    Credentials,
}

/// A classified failure, naming the server and context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionFailure {
    /// The kind of failure.
    pub class: FailureClass,
    /// The low-level cause, secrets-free (TLS alert, OS error, API message).
    pub cause: String,
    /// The server and context.
    pub endpoint: Endpoint,
}

impl ConnectionFailure {
    /// Only failures that can go away by themselves are worth retrying.
    pub fn is_transient(&self) -> bool {
        matches!(self.class, FailureClass::Refused | FailureClass::Broken)
    }

    /// The HTTP code for 401/403.
    pub fn code(&self) -> Option<u16> {
        match self.class {
            FailureClass::Unauthorized => Some(401),
            FailureClass::Forbidden { .. } => Some(403),
            _ => None,
        }
    }

    fn headline(&self) -> String {
        match &self.class {
            FailureClass::Dns { host } => format!("DNS lookup of {host:?} failed"),
            FailureClass::Refused => "connection refused".into(),
            FailureClass::TlsTrust => {
                "TLS: the server's certificate is not signed by a trusted CA".into()
            }
            FailureClass::TlsName => {
                "TLS: the server's certificate is not valid for the server name".into()
            }
            FailureClass::CertExpired => {
                "TLS: the server's certificate has expired or is not yet valid".into()
            }
            FailureClass::Tls => "TLS handshake failed".into(),
            FailureClass::Unauthorized => "401 Unauthorized: the credentials were rejected".into(),
            // The API's own sentence names user, verb, resource and namespace.
            FailureClass::Forbidden { .. } if !self.cause.is_empty() => {
                format!("403 Forbidden: {}", self.cause)
            }
            FailureClass::Forbidden { .. } => "403 Forbidden".into(),
            FailureClass::Timeout => format!(
                "no answer in time ({}s to connect, {}s to answer)",
                super::CONNECT_TIMEOUT.as_secs(),
                self.endpoint.timeout.as_secs()
            ),
            FailureClass::Proxy => "the HTTP proxy did not open a tunnel".into(),
            FailureClass::Broken => "the connection broke".into(),
            FailureClass::Credentials => "cannot use the kubeconfig user's credentials".into(),
        }
    }

    fn hint(&self) -> &'static str {
        match self.class {
            FailureClass::Dns { .. } => {
                "check the server address in the kubeconfig (or --kube-apiserver), DNS, and HTTPS_PROXY/NO_PROXY"
            }
            FailureClass::Refused => {
                "check that the API server is up and the address and port are right"
            }
            FailureClass::TlsTrust => {
                "check certificate-authority/certificate-authority-data in the kubeconfig or --kube-ca-file"
            }
            FailureClass::TlsName => {
                "check the server address, or set tls-server-name/--kube-tls-server-name to a name the certificate carries"
            }
            FailureClass::CertExpired => {
                "renew the API server certificate, or check this machine's clock"
            }
            FailureClass::Tls => {
                "check the client certificate and key, and that the server speaks HTTPS"
            }
            FailureClass::Unauthorized => {
                "check the token, tokenFile, client certificate or exec plugin of the kubeconfig user (or --kube-token); it may have expired"
            }
            FailureClass::Forbidden { .. } => {
                "grant this identity the permission (RBAC), or use a context/--kube-as-user that has it"
            }
            FailureClass::Timeout => {
                "check that the address is the API server and that it is healthy; a proxy or firewall may be swallowing requests"
            }
            FailureClass::Proxy => "check HTTPS_PROXY/HTTP_PROXY/NO_PROXY or the kubeconfig proxy-url",
            FailureClass::Broken => "retry; if this persists, check the network path to the server",
            FailureClass::Credentials => "check the user entry of the kubeconfig context",
        }
    }
}

impl std::fmt::Display for ConnectionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "API server {}", self.endpoint.server)?;
        if let Some(ctx) = &self.endpoint.context {
            write!(f, " (context {ctx:?})")?;
        }
        write!(f, ": {}", self.headline())?;
        let cause_in_headline = matches!(self.class, FailureClass::Forbidden { .. });
        if !self.cause.is_empty() && !cause_in_headline {
            write!(f, " ({})", self.cause)?;
        }
        write!(f, "; {}", self.hint())
    }
}

impl std::error::Error for ConnectionFailure {}

/// Classifies a failed request against the registered endpoint. None for API answers that
/// are not about connecting or identity (404, 409, 5xx, ...): those keep their own meaning.
pub fn classify(err: &kube::Error) -> Option<ConnectionFailure> {
    let endpoint = endpoint().cloned().unwrap_or_else(|| Endpoint {
        server: "(unknown)".into(),
        context: None,
        timeout: super::REQUEST_TIMEOUT,
    });
    classify_for(err, &endpoint)
}

/// [`classify`] for an explicit endpoint.
pub fn classify_for(err: &kube::Error, endpoint: &Endpoint) -> Option<ConnectionFailure> {
    let failure = |class, cause: String| {
        Some(ConnectionFailure {
            class,
            cause,
            endpoint: endpoint.clone(),
        })
    };
    if let kube::Error::Api(status) = err {
        return match status.code {
            401 => failure(FailureClass::Unauthorized, String::new()),
            403 => failure(
                FailureClass::Forbidden {
                    what: forbidden_what(&status.message),
                },
                status.message.clone(),
            ),
            _ => None,
        };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return failure(tls_class(tls), tls.to_string());
        }
        chain.push(e.to_string());
        source = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return failure(FailureClass::Refused, String::new())
                }
                std::io::ErrorKind::TimedOut => {
                    return failure(FailureClass::Timeout, String::new())
                }
                _ => {}
            }
            // `io::Error::source` skips the wrapped error itself (e.g. a rustls::Error).
            if let Some(inner) = io.get_ref() {
                source = Some(inner);
            }
        }
    }
    // Each layer's text once: wrappers often repeat their source's message.
    let text = chain.iter().fold(String::new(), |mut text, part| {
        if !text.contains(part.as_str()) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(part);
        }
        text
    });
    if text.contains("dns error") || text.contains("failed to lookup address") {
        let host = endpoint
            .server
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        let cause = chain.last().cloned().unwrap_or_default();
        return failure(FailureClass::Dns { host }, cause);
    }
    if text.contains("tunnel") || text.contains("proxy") {
        return failure(
            FailureClass::Proxy,
            chain.last().cloned().unwrap_or_default(),
        );
    }
    if text.to_ascii_lowercase().contains("timed out") || text.contains("deadline") {
        return failure(FailureClass::Timeout, String::new());
    }
    match err {
        kube::Error::Auth(_) => failure(FailureClass::Credentials, text),
        // Connection-level trouble (reset, closed, incomplete message): may pass.
        kube::Error::HyperError(_) | kube::Error::Service(_) => failure(FailureClass::Broken, text),
        _ => None,
    }
}

fn tls_class(e: &rustls::Error) -> FailureClass {
    match e {
        rustls::Error::InvalidCertificate(cert) => {
            let name = format!("{cert:?}");
            if name.starts_with("Expired") || name.starts_with("NotValidYet") {
                FailureClass::CertExpired
            } else if name.starts_with("NotValidForName") {
                FailureClass::TlsName
            } else if name.starts_with("UnknownIssuer") || name.starts_with("BadSignature") {
                FailureClass::TlsTrust
            } else {
                FailureClass::Tls
            }
        }
        _ => FailureClass::Tls,
    }
}

/// `list resource "secrets" in the namespace "prod"` from the API's 403 message
/// (`secrets is forbidden: User "bob" cannot list resource "secrets" in API group "" in
/// the namespace "prod"`); None when the message has another shape.
fn forbidden_what(message: &str) -> Option<String> {
    let (_, rest) = message.split_once(" cannot ")?;
    Some(rest.replace(" in API group \"\"", ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            server: "https://api.example.com:6443".into(),
            context: Some("prod".into()),
            timeout: Duration::from_secs(30),
        }
    }

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn identity_answers_name_server_and_context() {
        let unauthorized = classify_for(&api(401, "Unauthorized"), &endpoint()).unwrap();
        assert_eq!(
            unauthorized.to_string(),
            "API server https://api.example.com:6443 (context \"prod\"): 401 Unauthorized: \
             the credentials were rejected; check the token, tokenFile, client certificate or \
             exec plugin of the kubeconfig user (or --kube-token); it may have expired"
        );
        assert!(!unauthorized.is_transient());
        let forbidden = classify_for(
            &api(
                403,
                "secrets is forbidden: User \"bob\" cannot list resource \"secrets\" in API group \"\" in the namespace \"prod\"",
            ),
            &endpoint(),
        )
        .unwrap();
        assert_eq!(
            forbidden.class,
            FailureClass::Forbidden {
                what: Some("list resource \"secrets\" in the namespace \"prod\"".into())
            }
        );
        let bare = classify_for(&api(403, "forbidden"), &endpoint()).unwrap();
        assert_eq!(bare.class, FailureClass::Forbidden { what: None });
        assert!(
            bare.to_string()
                .contains(": 403 Forbidden: forbidden; grant"),
            "{bare}"
        );
        assert!(classify_for(&api(409, "conflict"), &endpoint()).is_none());
        assert!(classify_for(&api(500, "boom"), &endpoint()).is_none());
    }

    fn status(code: u16, reason: &str, message: &str) -> ApiError {
        ApiError::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    #[test]
    fn transient_api_errors() {
        for code in [500, 503, 429] {
            assert!(status(code, "", "").is_transient(), "{code}");
        }
        for code in [400, 403, 404, 409, 410, 422] {
            assert!(!status(code, "", "").is_transient(), "{code}");
        }
        assert!(ApiError::Transport("reset".into()).is_transient());
    }

    #[test]
    fn api_errors_without_a_reason_read_cleanly() {
        let message = "rpc error: code = Unavailable";
        assert_eq!(
            status(500, "", message).to_string(),
            "the API server answered 500: rpc error: code = Unavailable"
        );
        assert_eq!(
            status(500, "InternalError", message).to_string(),
            "the API server answered 500 InternalError: rpc error: code = Unavailable"
        );
    }

    #[test]
    fn only_passing_failures_are_transient() {
        let make = |class| ConnectionFailure {
            class,
            cause: String::new(),
            endpoint: endpoint(),
        };
        assert!(make(FailureClass::Refused).is_transient());
        assert!(make(FailureClass::Broken).is_transient());
        for class in [
            FailureClass::Dns { host: "x".into() },
            FailureClass::TlsTrust,
            FailureClass::TlsName,
            FailureClass::CertExpired,
            FailureClass::Unauthorized,
            FailureClass::Timeout,
            FailureClass::Proxy,
        ] {
            assert!(!make(class.clone()).is_transient(), "{class:?}");
        }
    }
}
