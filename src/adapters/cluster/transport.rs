//! The HTTP client under kube's `Client`: HTTP/2 where the server offers it (ALPN, as
//! kube-apiserver does), HTTP/1.1 otherwise.
//!
//! kube's own stack (`ClientBuilder::try_from`) speaks HTTP/1.1 only (its connector enables
//! only `http1`; kube-rs issue 1923), so two requests in flight at once need two TCP
//! connections and two TLS handshakes. Over HTTP/2 they share one connection: `check` reads
//! the mutex Lease while the records are read, on the connection the first request opened
//! ([`Connections::multiplexed`]).
//!
//! The stack is kube's, layer for layer (base URI, authorization, extra headers such as
//! impersonation and the User-Agent, connect/read/write timeouts), with the TLS
//! configuration kube derives from the kubeconfig; only the connector also offers `h2`.
//! Through a proxy (`proxy-url`, `HTTPS_PROXY`) kube's own stack is used as it is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use kube::client::ConfigExt;
use kube::{Client, Config};
use tokio::sync::watch;
use tower::{BoxError, ServiceBuilder};

use super::debug::RequestLog;

/// What the client's connections turned out to be, as answers arrive on them.
#[derive(Clone, Debug)]
pub struct Connections {
    /// `Some(true)` once an answer arrived over HTTP/2.
    opened: watch::Receiver<Option<bool>>,
}

impl Connections {
    /// A client whose connections are never reported (kube's own stack, through a proxy):
    /// never multiplexed.
    fn unreported() -> Connections {
        let (_, opened) = watch::channel(None);
        Connections { opened }
    }

    /// Resolves once an answer arrived over a connection that carries several requests at
    /// once (HTTP/2): that connection is then in the pool, and the next request shares it.
    /// Never when the connections are HTTP/1.1 (a second request in flight would open a
    /// second connection) or no answer arrives. (A connection that has just opened is not
    /// enough: until hyper pools it, a request checked out meanwhile opens another.)
    pub async fn multiplexed(&self) {
        let mut opened = self.opened.clone();
        if opened.wait_for(|o| *o == Some(true)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The client for `config`: ours (HTTP/2 or HTTP/1.1 by ALPN) on a direct connection,
/// kube's (HTTP/1.1) through a proxy. `server` names the server in debug output.
pub(super) fn client(config: Config, server: &str) -> Result<(Client, Connections), kube::Error> {
    if config.proxy_url.is_some() {
        let client = kube::client::ClientBuilder::try_from(config)?
            .with_layer(&RequestLog)
            .build();
        return Ok((client, Connections::unreported()));
    }
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls_pki_types::ServerName::try_from(name.clone())
            .map_err(kube::client::RustlsTlsError::InvalidServerName)
            .map_err(kube::Error::RustlsTls)?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    let reporting = Reporting {
        inner: tls.enable_all_versions().wrap_connector(tcp),
        server: Arc::from(server),
    };
    let mut connector = hyper_timeout::TimeoutConnector::new(reporting);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    // The read timeout counts from the last request written, not from when the connection
    // last carried one: an HTTP/2 connection is read all the time it is open.
    connector.set_reset_reader_on_write(true);
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let (seen, opened) = watch::channel(None);
    let seen = Arc::new(seen);
    let service = ServiceBuilder::new()
        .layer(RequestLog)
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .map_response(move |answer: http::Response<hyper::body::Incoming>| {
            if answer.version() == http::Version::HTTP_2 {
                seen.send_if_modified(|s| s.replace(true) != Some(true));
            }
            answer
        })
        .service(http);
    let client = Client::new(service, config.default_namespace.clone());
    Ok((client, Connections { opened }))
}

/// A connector that says (`--debug`) what each connection it opened speaks: one line per
/// connection.
#[derive(Clone)]
struct Reporting<C> {
    inner: C,
    server: Arc<str>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<C> tower::Service<http::Uri> for Reporting<C>
where
    C: tower::Service<http::Uri>,
    C::Response: Connection + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Send + 'static,
{
    type Response = C::Response;
    type Error = C::Error;
    type Future = BoxFuture<Result<C::Response, C::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let server = Arc::clone(&self.server);
        Box::pin(async move {
            let connection = connecting.await?;
            let h2 = connection.connected().is_negotiated_h2();
            tracing::debug!(
                "connected to {server} ({})",
                if h2 { "HTTP/2" } else { "HTTP/1.1" }
            );
            Ok(connection)
        })
    }
}
