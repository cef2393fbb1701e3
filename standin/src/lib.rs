//! Kubernetes API stand-in: a small, stateful, in-memory HTTP server that speaks enough of the
//! Kubernetes REST API for the real helm binaries (v3.17.3 and v4.1.4) to install, upgrade,
//! roll back and uninstall releases against it. Test/dev tooling only; never shipped.
//!
//! See `docs/standin.md` for what is implemented and what is simplified.

mod discovery;
mod fields;
mod patch;
mod proto;
mod selector;
mod server;
mod store;
pub mod testbed;
mod tls;
mod util;

pub mod proxy;
pub use tls::{unrelated_ca_pem, ClientCert, KeyKind};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use server::Shared;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::State;
use tokio::sync::{broadcast, watch};

/// One request the stand-in served (control endpoints under `/_standin/` are not logged).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string (still percent-encoded).
    pub query: String,
    /// Content-Type request header.
    pub content_type: Option<String>,
    /// Accept request header.
    pub accept: Option<String>,
    /// HTTP status answered (0 when the connection was dropped by a fault).
    pub status: u16,
    /// Kubernetes verb: get list watch create update patch delete deletecollection, or "other".
    pub verb: String,
    /// Resource plural (`secrets`, `deployments`, `namespaces/status`), None for non-resource paths.
    pub resource: Option<String>,
    /// Namespace from the path, if any.
    pub namespace: Option<String>,
    /// Object name from the path, if any.
    pub name: Option<String>,
    /// The authenticated user (bearer token or client certificate), None when anonymous.
    #[serde(default)]
    pub user: Option<String>,
    /// `Impersonate-*` request headers as `Name: value`, in order.
    #[serde(default)]
    pub impersonate: Vec<String>,
    /// User-Agent request header.
    #[serde(default)]
    pub user_agent: Option<String>,
}

impl RequestRecord {
    /// Whether this request was a write (create, update, patch, delete, deletecollection).
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// A fault to inject into matching requests. `None` fields match anything.
///
/// Over HTTP (`POST /_standin/faults`) it is JSON such as
/// `{"verb":"update","resource":"secrets","name":null,"action":{"Status":500},"times":1}`,
/// `{"action":"Drop", ...}` or `{"action":{"Delay":{"secs":2,"nanos":0}}, ...}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// Kubernetes verb to match (see [`RequestRecord::verb`]).
    pub verb: Option<String>,
    /// Resource plural to match.
    pub resource: Option<String>,
    /// Object name to match.
    pub name: Option<String>,
    /// What to do with a matching request.
    pub action: FaultAction,
    /// How many matching requests to affect; None = until cleared.
    pub times: Option<u32>,
}

/// What an injected fault does.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum FaultAction {
    /// Answer with this HTTP status and a `Status` object with a fitting reason
    /// (500 InternalError, 503 ServiceUnavailable, 409 Conflict, 403 Forbidden,
    /// 429 TooManyRequests, 404 NotFound, ...). Nothing is changed in the store.
    Status(u16),
    /// Like `Status`, with `details.retryAfterSeconds` and a `Retry-After` header of this
    /// many seconds (what an API server sends with 429).
    StatusRetryAfter(u16, u32),
    /// Wait, then serve the request normally.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
    /// Serve the request normally (any write happens), then send the status line, the
    /// headers with the full `Content-Length` and only the first half of the body, and
    /// close the connection: the client sees an answer cut short mid-body.
    Truncate,
    /// Serve the request normally (any write happens), then answer a successful JSON
    /// body of the wrong shape: a list gets `"items": null`; an object gets another name
    /// (`metadata.name` + `-other`). Error answers and watches are sent unchanged.
    WrongShape,
}

/// A fault that lets the first `skip` matching requests through and then acts like
/// `fault` (see [`StandIn::inject_after`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArmedFault {
    /// Matching requests still to let through before the fault fires.
    pub skip: u32,
    /// The fault that fires once `skip` matching requests have passed.
    pub fault: Fault,
    /// Only requests whose User-Agent starts with this match (None: any).
    #[serde(default)]
    pub user_agent: Option<String>,
}

/// Options for [`StandIn::start_with`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Port to bind on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// Where to write the kubeconfig (default: a file in the stand-in's own tempdir).
    pub kubeconfig: Option<PathBuf>,
    /// Extra namespaces to create besides default, kube-system and kube-public.
    pub namespaces: Vec<String>,
    /// Serve HTTPS instead of plain HTTP.
    pub tls: Option<TlsOptions>,
    /// Which credentials a request must carry (default: none).
    pub auth: Auth,
    /// Bearer tokens accepted, each with the user it authenticates as. The kubeconfig's
    /// `standin-dummy-token` (user `standin`) is always accepted.
    pub tokens: Vec<(String, String)>,
}

/// How the HTTPS front is set up.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// DNS names or IPs for the serving certificate besides `localhost` and `127.0.0.1`.
    pub extra_sans: Vec<String>,
    /// Serve a certificate that expired in 2001 (for negative tests).
    pub expired: bool,
}

/// What a request must present to be served (control endpoints are never checked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// Anything goes (a presented token or certificate is still logged as the user).
    #[default]
    None,
    /// A known bearer token.
    Token,
    /// A client certificate issued by [`StandIn::client_cert`] (HTTPS only).
    ClientCert,
    /// Either of the two.
    TokenOrCert,
}

/// The token the generated kubeconfig carries; it authenticates as user `standin`.
pub const DEFAULT_TOKEN: &str = "standin-dummy-token";

/// A running stand-in API server. Stops when dropped.
pub struct StandIn {
    shared: Arc<Shared>,
    pki: Option<Arc<tls::Pki>>,
    url: String,
    kubeconfig: PathBuf,
    shutdown: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl StandIn {
    /// Starts on 127.0.0.1 with a free port, its own tokio runtime (background threads) and
    /// a kubeconfig in its own tempdir; namespaces default, kube-system and kube-public exist.
    pub fn start() -> std::io::Result<StandIn> {
        StandIn::start_with(Options::default())
    }

    /// Like [`StandIn::start`], with a chosen port, kubeconfig path and extra namespaces.
    pub fn start_with(opts: Options) -> std::io::Result<StandIn> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-standin")
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", opts.port))?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let pki = opts.tls.as_ref().map(|_| Arc::new(tls::Pki::new()));
        let scheme = if pki.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let dir = tempfile::Builder::new().prefix("kube-standin-").tempdir()?;
        let kubeconfig = opts
            .kubeconfig
            .clone()
            .unwrap_or_else(|| dir.path().join("kubeconfig"));
        if let Some(parent) = kubeconfig.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&url, pki.as_ref().map(|p| p.ca_pem())),
        )?;
        let mut tokens: std::collections::HashMap<String, String> =
            opts.tokens.iter().cloned().collect();
        tokens.insert(DEFAULT_TOKEN.to_string(), "standin".to_string());
        let (events, _) = broadcast::channel(4096);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(events)),
            shutdown: shutdown_rx.clone(),
            auth: opts.auth,
            tokens,
        });
        let tls_config = match (&pki, &opts.tls) {
            (Some(pki), Some(t)) => {
                let (chain, key) = pki.server_cert(&t.extra_sans, t.expired);
                Some(pki.server_config(chain, key))
            }
            _ => None,
        };
        let mut standin = StandIn {
            shared: shared.clone(),
            pki: pki.clone(),
            url,
            kubeconfig,
            shutdown,
            runtime: None,
            _dir: dir,
        };
        for ns in ["default", "kube-system", "kube-public"]
            .iter()
            .map(|s| s.to_string())
            .chain(opts.namespaces.iter().cloned())
        {
            standin.create_namespace(&ns);
        }
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        runtime.spawn(accept_loop(listener, shared, shutdown_rx, tls_config, pki));
        standin.runtime = Some(runtime);
        Ok(standin)
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with [`Options::tls`].
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The port the stand-in listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The CA certificate (PEM) that signed the serving certificate, with [`Options::tls`].
    pub fn ca_pem(&self) -> Option<String> {
        self.pki.as_ref().map(|p| p.ca_pem().to_string())
    }

    /// Issues a client certificate for `user` (CN) and `groups` (O) that this stand-in
    /// accepts. Panics without [`Options::tls`] (a test-setup mistake).
    pub fn client_cert(&self, user: &str, groups: &[&str], kind: KeyKind) -> ClientCert {
        self.pki
            .as_ref()
            .expect("client certificates need Options::tls")
            .client_cert(user, groups, kind)
    }

    /// The kubeconfig file: context `standin`, server = [`StandIn::url`], dummy token user.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The request log, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// Adds a fault (checked in insertion order; the first matching one applies).
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    /// Adds a fault that lets the first `skip` requests matching it pass untouched and
    /// then fires on the following ones (`times` of them, or until cleared). With `verb`,
    /// `resource` and `name` all `None` it selects by position in the request log: with
    /// `times: Some(1)` it hits exactly the request `skip` requests from now (0-based),
    /// whatever it is. Armed faults are checked before the ones added with [`Self::inject`];
    /// each request counts down every armed fault it matches.
    pub fn inject_after(&self, skip: u32, fault: Fault) {
        self.arm(ArmedFault {
            skip,
            fault,
            user_agent: None,
        });
    }

    /// Adds an armed fault (see [`Self::inject_after`]); with `user_agent` set, only
    /// requests whose User-Agent starts with it are counted and hit, e.g. the requests of
    /// one program while another (helm) talks to the same server.
    pub fn arm(&self, armed: ArmedFault) {
        self.shared.lock().armed.push(armed);
    }

    /// Removes every fault, armed ones included.
    pub fn clear_faults(&self) {
        let mut st = self.shared.lock();
        st.faults.clear();
        st.armed.clear();
    }

    /// Creates a namespace if it does not exist.
    pub fn create_namespace(&self, name: &str) {
        let mut st = self.shared.lock();
        let rt = discovery::find_plural("namespaces").expect("namespaces are served");
        if st.get(rt, "", name).is_none() {
            let _ = st.put_direct(rt, serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
        }
    }

    /// One stored object by resource plural (`secrets`, `deployments`, `namespaces`, ...).
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let rt = discovery::find_plural(resource)?;
        self.shared
            .lock()
            .get(rt, namespace.unwrap_or(""), name)
            .cloned()
    }

    /// All stored objects of a resource (in one namespace, or all when None).
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(rt) = discovery::find_plural(resource) else {
            return vec![];
        };
        self.shared
            .lock()
            .list(rt, namespace, &Default::default(), &Default::default())
    }

    /// Creates or replaces an object directly in the store (test setup): assigns
    /// resourceVersion, uid and creationTimestamp, keeps `status` as given, emits watch events.
    /// The namespace defaults to `default` and need not exist.
    ///
    /// # Panics
    /// If the resource is unknown or the object is invalid (a test-setup mistake).
    pub fn put_object(&self, resource: &str, obj: Value) -> Value {
        let rt = discovery::find_plural(resource)
            .unwrap_or_else(|| panic!("kube-standin does not serve {resource:?}"));
        match self.shared.lock().put_direct(rt, obj) {
            Ok(v) => v,
            Err(e) => panic!("put_object({resource}): {}", e.message),
        }
    }

    /// Deletes an object directly from the store (test setup and reset between runs),
    /// emitting a watch event; true when it existed. Owned objects are deleted with it.
    pub fn delete_object(&self, resource: &str, namespace: Option<&str>, name: &str) -> bool {
        let Some(rt) = discovery::find_plural(resource) else {
            return false;
        };
        self.shared
            .lock()
            .delete(rt, namespace.unwrap_or(""), name)
            .is_ok()
    }

    /// Stops the server (same as dropping it).
    pub fn stop(self) {}
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.runtime.take() {
            // shutdown_background never blocks, so this is safe inside an async context too.
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<Arc<rustls::ServerConfig>>,
    pki: Option<Arc<tls::Pki>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let conn_shutdown = shutdown.clone();
                let acceptor = acceptor.clone();
                let pki = pki.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(stream, shared, None, conn_shutdown).await,
                        Some(acceptor) => {
                            // A client that rejects our certificate ends here.
                            let Ok(tls) = acceptor.accept(stream).await else { return };
                            let user = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|leaf| pki.as_ref()?.user_of(leaf));
                            serve(tls, shared, user, conn_shutdown).await
                        }
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves HTTP/1.1 on one connection; `cert_user` is who its client certificate names.
async fn serve<S>(
    stream: S,
    shared: Arc<Shared>,
    cert_user: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        server::handle(shared.clone(), req, cert_user.clone())
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {}
    }
}

fn kubeconfig_yaml(url: &str, ca_pem: Option<&str>) -> String {
    use base64::Engine;
    let ca = ca_pem
        .map(|pem| {
            let data = base64::engine::general_purpose::STANDARD.encode(pem);
            format!("\n    certificate-authority-data: {data}")
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {url}{ca}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\ncurrent-context: standin\nusers:\n- name: standin\n  user:\n    token: {DEFAULT_TOKEN}\npreferences: {{}}\n"
    )
}
