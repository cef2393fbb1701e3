//! `--debug` / `HELM_DEBUG=true`: what the tool does, on stderr, through `tracing`. Only
//! this crate's events are shown (kube's own spans carry more than we vouch for), and
//! nothing here logs a header, a body, a token or a key: requests are logged as method,
//! path with query, status and time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing_subscriber::fmt::FormatFields;

/// Turns on debug output for this process (idempotent): `debug: <message>` lines on stderr.
pub(crate) fn init() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("guarded_upgrade", tracing::Level::DEBUG);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(DebugLine);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

/// `debug: ` and the event's fields: the one line format of debug output.
struct DebugLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for DebugLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "debug: ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// A tower layer logging every API request the client sends.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RequestLog;

impl<S> tower::Layer<S> for RequestLog {
    type Service = RequestLogService<S>;
    fn layer(&self, inner: S) -> RequestLogService<S> {
        RequestLogService { inner }
    }
}

/// The service of [`RequestLog`].
#[derive(Clone, Debug)]
pub(crate) struct RequestLogService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for RequestLogService<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let ms = started.elapsed().as_millis();
            match &result {
                Ok(resp) => {
                    tracing::debug!("{method} {path} -> {} in {ms} ms", resp.status().as_u16())
                }
                Err(e) => tracing::debug!("{method} {path} -> failed in {ms} ms: {e}"),
            }
            result
        })
    }
}
