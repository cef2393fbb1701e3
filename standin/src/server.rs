//! The HTTP front: routing, content negotiation, faults, the request log and watches.

use crate::discovery::{self, find, ResourceType};
use crate::proto;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{res_key, PatchType, State, WatchEvent};
use crate::util::{parse_query, ApiError};
use crate::{Fault, FaultAction, RequestRecord};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// Response body type: either a full body or a watch stream.
pub type RespBody = BoxBody<Bytes, Infallible>;

/// State shared by all connections.
pub struct Shared {
    pub state: Mutex<State>,
    pub shutdown: watch::Receiver<bool>,
    /// What a request must present.
    pub auth: crate::Auth,
    /// Accepted bearer tokens -> user.
    pub tokens: std::collections::HashMap<String, String>,
}

impl Shared {
    /// Locks the state, recovering from a poisoned lock (a panicking handler must not wedge the server).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The error that makes hyper close a connection without answering (fault `Drop`).
#[derive(Debug)]
pub struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by injected fault")
    }
}
impl std::error::Error for Dropped {}

struct ChannelBody(mpsc::Receiver<Bytes>);
impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn json_response(code: u16, v: &Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<RespBody> {
    let mut r = json_response(e.code, &e.to_status());
    if e.code == 429 || e.code == 503 {
        r.headers_mut()
            .insert("Retry-After", hyper::header::HeaderValue::from_static("1"));
    }
    r
}

/// What the client wants back (from the Accept header).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Full,
    Metadata,
}

fn negotiate(accept: Option<&str>, listing: bool) -> Format {
    let Some(accept) = accept else {
        return Format::Full;
    };
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let mime = parts.next().unwrap_or("");
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let get = |k: &str| params.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
        let typed_ok = matches!(
            mime,
            "application/json"
                | "application/vnd.kubernetes.protobuf"
                | "application/yaml"
                | "*/*"
                | "application/*"
        );
        if !typed_ok {
            continue;
        }
        match (get("as"), get("g")) {
            (None, _) => return Format::Full,
            (Some("PartialObjectMetadataList"), Some("meta.k8s.io")) if listing => {
                return Format::Metadata
            }
            (Some("PartialObjectMetadata"), Some("meta.k8s.io")) => return Format::Metadata,
            _ => continue, // Table, aggregated discovery, ...: fall through to the next type
        }
    }
    Format::Full
}

fn metadata_only(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))})
}

fn render(obj: Value, fmt: Format) -> Value {
    match fmt {
        Format::Full => obj,
        Format::Metadata => metadata_only(&obj),
    }
}

/// A parsed request path.
enum Route {
    Json(Value),
    NotFound,
    Resource {
        rt: &'static ResourceType,
        namespace: Option<String>,
        name: Option<String>,
        sub: Option<String>,
    },
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Route::Json(discovery::version()),
        ["healthz"] | ["livez"] | ["readyz"] => Route::Json(json!("ok")),
        ["api"] => Route::Json(discovery::api_versions()),
        ["api", v] => discovery::api_resource_list("", v).map_or(Route::NotFound, Route::Json),
        ["apis"] => Route::Json(discovery::api_group_list()),
        ["apis", g] => {
            let list = discovery::api_group_list();
            list["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == json!(g)).cloned())
                .map_or(Route::NotFound, |mut x| {
                    x["kind"] = json!("APIGroup");
                    x["apiVersion"] = json!("v1");
                    Route::Json(x)
                })
        }
        ["apis", g, v] => discovery::api_resource_list(g, v).map_or(Route::NotFound, Route::Json),
        ["openapi", "v3"] => Route::Json(discovery::openapi_v3_root()),
        ["openapi", "v3", "api", v] => {
            discovery::openapi_v3_doc("", v).map_or(Route::NotFound, Route::Json)
        }
        ["openapi", "v3", "apis", g, v] => {
            discovery::openapi_v3_doc(g, v).map_or(Route::NotFound, Route::Json)
        }
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let r = resource_route_inner(group, version, rest);
    match &r {
        // Unknown subresources are 404, like the real API.
        Route::Resource {
            rt, sub: Some(sub), ..
        } if !(sub == "status"
            || (sub == "finalize" && rt.plural == "namespaces")
            || (sub == "scale" && rt.group == "apps")) =>
        {
            Route::NotFound
        }
        _ => r,
    }
}

fn resource_route_inner(group: &str, version: &str, rest: &[&str]) -> Route {
    let s = |x: Option<&&str>| x.map(|v| v.to_string());
    if rest.len() >= 3 && rest[0] == "namespaces" {
        if let Some(rt) = find(group, version, rest[2]).filter(|rt| rt.namespaced) {
            if rest.len() > 5 {
                return Route::NotFound;
            }
            return Route::Resource {
                rt,
                namespace: Some(rest[1].to_string()),
                name: s(rest.get(3)),
                sub: s(rest.get(4)),
            };
        }
    }
    match find(group, version, rest[0]) {
        Some(rt) if rest.len() <= 3 => {
            if rt.namespaced && rest.len() > 1 {
                return Route::NotFound;
            }
            Route::Resource {
                rt,
                namespace: None,
                name: s(rest.get(1)),
                sub: s(rest.get(2)),
            }
        }
        _ => Route::NotFound,
    }
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Handles one HTTP request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    cert_user: Option<String>,
) -> Result<Response<RespBody>, Dropped> {
    let method = req.method().as_str().to_string();
    let token_user = header(&req, "authorization")
        .and_then(|h| h.strip_prefix("Bearer ").map(str::to_string))
        .and_then(|t| shared.tokens.get(t.trim()).cloned());
    let impersonate: Vec<String> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("impersonate-"))
        .map(|(k, v)| format!("{}: {}", k.as_str(), v.to_str().unwrap_or("?")))
        .collect();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = header(&req, "content-type");
    let accept = header(&req, "accept");
    let user_agent = header(&req, "user-agent").unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    if let Some(rest) = path.strip_prefix("/_standin/") {
        return Ok(control(&shared, &method, rest, &body));
    }
    let q = parse_query(&query);
    let qget = |k: &str| q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.as_str());
    let watching = matches!(qget("watch"), Some("true") | Some("1"));
    let r = route(&path);
    let mut record = RequestRecord {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        accept: accept.clone(),
        status: 0,
        verb: "other".into(),
        resource: None,
        namespace: None,
        name: None,
        user: None,
        impersonate,
        user_agent: Some(user_agent.clone()).filter(|u| !u.is_empty()),
    };
    // Kubernetes tries every authenticator; the first that succeeds names the user.
    let (user, allowed) = match shared.auth {
        crate::Auth::None => (cert_user.clone().or(token_user.clone()), true),
        crate::Auth::Token => (token_user.clone(), token_user.is_some()),
        crate::Auth::ClientCert => (cert_user.clone(), cert_user.is_some()),
        crate::Auth::TokenOrCert => {
            let u = cert_user.clone().or(token_user.clone());
            (u.clone(), u.is_some())
        }
    };
    record.user = user;
    if !allowed {
        record.status = 401;
        shared.lock().log.push(record);
        return Ok(error_response(&ApiError::for_code(401)));
    }
    if let Route::Resource {
        rt,
        namespace,
        name,
        sub,
    } = &r
    {
        record.resource = Some(match sub {
            Some(s) => format!("{}/{s}", rt.plural),
            None => rt.plural.to_string(),
        });
        record.namespace = namespace.clone();
        record.name = name.clone();
        record.verb = match (method.as_str(), name.is_some()) {
            ("GET", true) => "get",
            ("GET", false) if watching => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => "other",
        }
        .into();
    } else if method == "GET" {
        record.verb = "get".into();
    }
    let action = {
        let mut st = shared.lock();
        take_armed(&mut st.armed, &record).or_else(|| take_fault(&mut st.faults, &record))
    };
    match action {
        Some(FaultAction::Drop) => {
            shared.lock().log.push(record);
            return Err(Dropped);
        }
        Some(FaultAction::Status(code)) => {
            record.status = code;
            let error = match (&r, code) {
                (Route::Resource { rt, .. }, 403) => forbidden(&record, rt.group),
                _ => ApiError::for_code(code),
            };
            shared.lock().log.push(record);
            return Ok(error_response(&error));
        }
        Some(FaultAction::StatusRetryAfter(code, secs)) => {
            record.status = code;
            shared.lock().log.push(record);
            let e = ApiError::for_code(code).with_details(json!({ "retryAfterSeconds": secs }));
            let mut r = error_response(&e);
            r.headers_mut()
                .insert("Retry-After", hyper::header::HeaderValue::from(secs));
            return Ok(r);
        }
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultAction::Truncate) | Some(FaultAction::WrongShape) | None => {}
    }
    let resp = match r {
        Route::Json(v) => {
            if method == "GET" {
                json_response(200, &v)
            } else {
                error_response(&ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                ))
            }
        }
        Route::NotFound => error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        Route::Resource {
            rt,
            namespace,
            name,
            sub,
        } => {
            let ctx = Ctx {
                shared: &shared,
                rt,
                namespace,
                name,
                sub,
                q: &q,
                content_type: content_type.as_deref(),
                accept: accept.as_deref(),
                user_agent: &user_agent,
                body: &body,
            };
            match resource(ctx, &record.verb) {
                Ok(r) => r,
                Err(e) => error_response(&e),
            }
        }
    };
    record.status = resp.status().as_u16();
    let watch = record.verb == "watch";
    shared.lock().log.push(record);
    match action {
        Some(FaultAction::Truncate) if !watch => Ok(truncate(resp).await),
        Some(FaultAction::WrongShape) if !watch => Ok(wrong_shape(resp).await),
        _ => Ok(resp),
    }
}

/// A body that sends its bytes, pauses (so hyper flushes the head and those bytes to the
/// socket), then ends without a size hint: hyper trusts the `Content-Length` header and
/// closes the connection because the body ended short of it.
struct ShortBody(Option<Bytes>, Pin<Box<tokio::time::Sleep>>);
impl Body for ShortBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(b) = self.0.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        self.1.as_mut().poll(cx).map(|()| None)
    }
}

/// Fault `Truncate`: the full status line and headers (with the full `Content-Length`),
/// half of the body, then the connection is closed.
async fn truncate(resp: Response<RespBody>) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    let full = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    parts.headers.insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(full.len()),
    );
    let half = full.slice(..full.len() / 2);
    let pause = Box::pin(tokio::time::sleep(Duration::from_millis(20)));
    Response::from_parts(parts, ShortBody(Some(half), pause).boxed())
}

/// Fault `WrongShape`: a successful JSON list loses its `items`, a successful object
/// another name; anything else is sent unchanged.
async fn wrong_shape(resp: Response<RespBody>) -> Response<RespBody> {
    let (parts, body) = resp.into_parts();
    let full = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let code = parts.status.as_u16();
    let reshaped = match serde_json::from_slice::<Value>(&full) {
        Ok(v) if parts.status.is_success() => reshape(v),
        _ => None,
    };
    match reshaped {
        Some(v) => {
            let mut r = json_response(code, &v);
            for (k, val) in parts.headers.iter() {
                if k != hyper::header::CONTENT_LENGTH {
                    r.headers_mut().insert(k.clone(), val.clone());
                }
            }
            r
        }
        None => Response::from_parts(parts, Full::new(full).boxed()),
    }
}

/// The wrong-shaped version of a successful answer, if it has a shape to break.
fn reshape(mut v: Value) -> Option<Value> {
    if let Some(list) = v.as_object_mut().filter(|o| o.contains_key("items")) {
        list.remove("items");
        return Some(v);
    }
    let name = v.pointer("/metadata/name")?.as_str()?.to_string();
    v["metadata"]["name"] = Value::String(format!("{name}-other"));
    Some(v)
}

/// The first armed fault that is due for this request; every matching armed fault that
/// is not yet due counts this request as one of those it lets through.
fn take_armed(armed: &mut Vec<crate::ArmedFault>, rec: &RequestRecord) -> Option<FaultAction> {
    let mut fired = None;
    for (i, a) in armed.iter_mut().enumerate() {
        let agent_ok = a.user_agent.as_deref().is_none_or(|prefix| {
            rec.user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with(prefix))
        });
        if !agent_ok || !fault_matches(&a.fault, rec) {
            continue;
        }
        if a.skip > 0 {
            a.skip -= 1;
        } else if fired.is_none() {
            fired = Some(i);
        }
    }
    let idx = fired?;
    let f = &mut armed[idx].fault;
    let action = f.action.clone();
    if let Some(t) = f.times.as_mut() {
        *t -= 1;
        if *t == 0 {
            armed.remove(idx);
        }
    }
    Some(action)
}

fn fault_matches(f: &Fault, rec: &RequestRecord) -> bool {
    f.verb.as_ref().is_none_or(|v| *v == rec.verb)
        && f.resource
            .as_ref()
            .is_none_or(|r| Some(r) == rec.resource.as_ref())
        && f.name.as_ref().is_none_or(|n| Some(n) == rec.name.as_ref())
        && f.times != Some(0)
}

/// A 403 worded as the real API's RBAC denial, naming user, verb, resource and namespace.
fn forbidden(rec: &RequestRecord, group: &str) -> ApiError {
    let resource = rec.resource.clone().unwrap_or_default();
    let user = rec.user.as_deref().unwrap_or("system:anonymous");
    let scope = match &rec.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    // The real server names the resource qualified by its group (`leases.coordination.k8s.io
    // "x" is forbidden`), the core group's bare (`secrets "x" is forbidden`).
    let qualified = if group.is_empty() {
        resource.clone()
    } else {
        format!("{resource}.{group}")
    };
    let subject = match &rec.name {
        Some(name) => format!("{qualified} \"{name}\""),
        None => qualified,
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{group}\"{scope}",
            rec.verb
        ),
    )
    .with_details(match &rec.name {
        Some(name) => json!({"name": name, "group": group, "kind": resource}),
        None => json!({"group": group, "kind": resource}),
    })
}

fn take_fault(faults: &mut Vec<Fault>, rec: &RequestRecord) -> Option<FaultAction> {
    let idx = faults.iter().position(|f| fault_matches(f, rec))?;
    let f = &mut faults[idx];
    let action = f.action.clone();
    if let Some(t) = f.times.as_mut() {
        *t -= 1;
        if *t == 0 {
            faults.remove(idx);
        }
    }
    Some(action)
}

/// A posted fault: the `Fault` JSON, with an optional `"skip": N` (and `"user_agent"`)
/// that arms it (`StandIn::arm`).
type Posted = (Option<(u32, Option<String>)>, Fault);
fn parse_fault(body: &[u8]) -> Result<Posted, serde_json::Error> {
    let mut v: Value = serde_json::from_slice(body)?;
    let obj = v.as_object_mut();
    let (skip, agent) = match obj {
        Some(o) => (o.remove("skip"), o.remove("user_agent")),
        None => (None, None),
    };
    let agent: Option<String> = match agent {
        Some(a) => serde_json::from_value(a)?,
        None => None,
    };
    let skip = match skip {
        Some(s) => Some((serde_json::from_value::<u32>(s)?, agent)),
        None => None,
    };
    Ok((skip, serde_json::from_value(v)?))
}

fn control(shared: &Shared, method: &str, rest: &str, body: &[u8]) -> Response<RespBody> {
    match (method, rest) {
        ("GET", "requests") => json_response(
            200,
            &serde_json::to_value(&shared.lock().log).unwrap_or_default(),
        ),
        ("DELETE", "requests") => {
            shared.lock().log.clear();
            json_response(200, &json!({}))
        }
        ("POST", "faults") => match parse_fault(body) {
            Ok((Some((skip, user_agent)), fault)) => {
                shared.lock().armed.push(crate::ArmedFault {
                    skip,
                    fault,
                    user_agent,
                });
                json_response(201, &json!({}))
            }
            Ok((None, f)) => {
                shared.lock().faults.push(f);
                json_response(201, &json!({}))
            }
            Err(e) => error_response(&ApiError::bad_request(format!("invalid fault: {e}"))),
        },
        ("GET", "faults") => json_response(
            200,
            &serde_json::to_value(&shared.lock().faults).unwrap_or_default(),
        ),
        ("DELETE", "faults") => {
            let mut st = shared.lock();
            st.faults.clear();
            st.armed.clear();
            json_response(200, &json!({}))
        }
        _ => error_response(&ApiError::new(
            404,
            "NotFound",
            "unknown stand-in control endpoint",
        )),
    }
}

struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    q: &'a [(String, String)],
    content_type: Option<&'a str>,
    accept: Option<&'a str>,
    user_agent: &'a str,
    body: &'a [u8],
}

impl Ctx<'_> {
    fn q(&self, k: &str) -> Option<&str> {
        self.q
            .iter()
            .find(|(qk, _)| qk == k)
            .map(|(_, v)| v.as_str())
    }
    /// The field manager: `?fieldManager=`, else the User-Agent's first segment, as the real API does.
    fn manager(&self) -> String {
        if let Some(m) = self.q("fieldManager").filter(|m| !m.is_empty()) {
            return m.to_string();
        }
        let ua = self.user_agent.split('/').next().unwrap_or("").trim();
        if ua.is_empty() {
            "unknown".into()
        } else {
            ua.to_string()
        }
    }
    fn mime(&self) -> String {
        self.content_type
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }
    fn decode_object(&self) -> Result<Value, ApiError> {
        match self.mime().as_str() {
            "application/json" | "" | "*/*" => serde_json::from_slice(self.body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"))),
            "application/yaml" => yaml(self.body),
            "application/vnd.kubernetes.protobuf" => proto::decode(self.body).map_err(|e| ApiError::bad_request(format!("invalid protobuf body: {e}"))),
            other => Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"))),
        }
    }
}

fn yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_yaml::from_slice::<Value>(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

fn resource(ctx: Ctx<'_>, verb: &str) -> Result<Response<RespBody>, ApiError> {
    let rt = ctx.rt;
    let ns = ctx.namespace.clone().unwrap_or_default();
    if let Some(sub) = &ctx.sub {
        // Subresources: status can be read; writes and anything else are refused.
        if sub == "status" && verb == "get" {
        } else {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the stand-in does not implement {verb} on {}/{sub}",
                    rt.plural
                ),
            ));
        }
    }
    let name = ctx.name.clone().unwrap_or_default();
    let fmt = negotiate(ctx.accept, verb == "list" || verb == "watch");
    let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let ns_filter = ctx.namespace.as_deref().filter(|_| rt.namespaced);
    match verb {
        "get" => {
            let st = ctx.shared.lock();
            let obj = st
                .get(rt, &ns, &name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(rt.plural, rt.group, &name))?;
            Ok(json_response(200, &render(obj, fmt)))
        }
        "list" => {
            let st = ctx.shared.lock();
            let items: Vec<Value> = st
                .list(rt, ns_filter, &labels, &fields)
                .into_iter()
                .map(|o| render(o, fmt))
                .collect();
            let (kind, av) = match fmt {
                Format::Full => (format!("{}List", rt.kind), rt.api_version()),
                Format::Metadata => ("PartialObjectMetadataList".into(), "meta.k8s.io/v1".into()),
            };
            // As kube-apiserver: an empty metadata list is `"items": null` (a nil Go slice),
            // a full list always has an array.
            let items = match fmt {
                Format::Metadata if items.is_empty() => Value::Null,
                _ => Value::Array(items),
            };
            Ok(json_response(
                200,
                &json!({"kind": kind, "apiVersion": av, "metadata": {"resourceVersion": st.rv().to_string()}, "items": items}),
            ))
        }
        "watch" => watch_stream(&ctx, ns_filter.map(str::to_string), labels, fields, fmt),
        "create" => {
            let obj = ctx.decode_object()?;
            let created = ctx.shared.lock().create(rt, &ns, obj, &ctx.manager())?;
            Ok(json_response(201, &created))
        }
        "update" => {
            let obj = ctx.decode_object()?;
            let updated = ctx
                .shared
                .lock()
                .update(rt, &ns, &name, obj, &ctx.manager())?;
            Ok(json_response(200, &updated))
        }
        "patch" => {
            let ptype = match ctx.mime().as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/json-patch+json" => PatchType::Json,
                "application/apply-patch+yaml" => PatchType::Apply,
                other => {
                    return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})")))
                }
            };
            let body: Value = if ptype == PatchType::Apply {
                yaml(ctx.body)?
            } else {
                serde_json::from_slice(ctx.body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch body: {e}")))?
            };
            if ptype == PatchType::Apply && ctx.q("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request("PATCH, application/apply-patch+yaml requests require the fieldManager parameter to be set"));
            }
            let force = matches!(ctx.q("force"), Some("true") | Some("1"));
            let mut st = ctx.shared.lock();
            let existed = st.get(rt, &ns, &name).is_some();
            let obj = st.patch(rt, &ns, &name, ptype, &body, &ctx.manager(), force)?;
            Ok(json_response(if existed { 200 } else { 201 }, &obj))
        }
        "delete" => {
            let obj = ctx.shared.lock().delete(rt, &ns, &name)?;
            Ok(json_response(200, &obj))
        }
        "deletecollection" => {
            let mut st = ctx.shared.lock();
            let victims = st.list(rt, ns_filter, &labels, &fields);
            let mut items = Vec::new();
            for v in victims {
                let vns = v
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let vname = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if let Ok(o) = st.delete(rt, &vns, &vname) {
                    items.push(o);
                }
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": st.rv().to_string()}, "items": items}),
            ))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn event_line(etype: &str, obj: Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": etype, "object": obj})).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

/// Starts a streaming watch: initial events (per `sendInitialEvents`/`resourceVersion`), then
/// live events until `timeoutSeconds`, the client going away, or the server stopping.
fn watch_stream(
    ctx: &Ctx<'_>,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    fmt: Format,
) -> Result<Response<RespBody>, ApiError> {
    let rt = ctx.rt;
    let res = res_key(rt);
    let matches = {
        let ns = ns.clone();
        let res = res.clone();
        move |ev: &WatchEvent| {
            ev.res == res
                && ns.as_ref().is_none_or(|n| *n == ev.namespace)
                && labels.matches(&ev.object)
                && fields.matches(&ev.object)
        }
    };
    let send_initial = ctx.q("sendInitialEvents") == Some("true");
    let rv_param = ctx.q("resourceVersion").unwrap_or("").to_string();
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let (rx, initial, start_rv) = {
        let st = ctx.shared.lock();
        let rx = st.subscribe();
        let cur = st.rv();
        let mut initial: Vec<Bytes> = Vec::new();
        let all = || -> Vec<Value> {
            st.list(
                rt,
                ns.as_deref(),
                &LabelSelector::default(),
                &FieldSelector::default(),
            )
        };
        if send_initial || rv_param.is_empty() || rv_param == "0" {
            for o in all() {
                let ev = WatchEvent {
                    etype: "ADDED",
                    res: res.clone(),
                    namespace: o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    rv: cur,
                    object: o,
                };
                if matches(&ev) {
                    initial.push(event_line("ADDED", render(ev.object, fmt)));
                }
            }
            if send_initial {
                let bookmark = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": cur.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                initial.push(event_line("BOOKMARK", bookmark));
            }
        } else {
            let since: u64 = rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}"))
            })?;
            match st.history_since(&res, since) {
                Ok(evs) => {
                    for ev in evs.iter().filter(|e| matches(e)) {
                        initial.push(event_line(ev.etype, render(ev.object.clone(), fmt)));
                    }
                }
                Err(e) => initial.push(event_line("ERROR", e.to_status())),
            }
        }
        (rx, initial, cur)
    };
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let mut shutdown = ctx.shared.shutdown.clone();
    tokio::spawn(async move {
        let mut rx: broadcast::Receiver<Arc<WatchEvent>> = rx;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv > start_rv && matches(&ev) && tx.send(event_line(ev.etype, render(ev.object.clone(), fmt))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(ChannelBody(body_rx).boxed())
        .expect("valid response"))
}

#[cfg(test)]
mod forbidden_wording {
    use super::*;

    fn record(resource: &str, name: Option<&str>) -> RequestRecord {
        RequestRecord {
            method: "GET".into(),
            path: String::new(),
            query: String::new(),
            content_type: None,
            accept: None,
            status: 0,
            verb: "get".into(),
            resource: Some(resource.into()),
            namespace: Some("ns1".into()),
            name: name.map(String::from),
            user: Some("alice".into()),
            impersonate: Vec::new(),
            user_agent: None,
        }
    }

    /// Worded as kube-apiserver v1.37 words it (seen on the real server in the e2e tests).
    #[test]
    fn grouped_resources_are_qualified_by_their_group() {
        assert_eq!(
            forbidden(
                &record("leases", Some("helm-lock-db")),
                "coordination.k8s.io"
            )
            .message,
            "leases.coordination.k8s.io \"helm-lock-db\" is forbidden: User \"alice\" cannot \
             get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"ns1\""
        );
        assert_eq!(
            forbidden(&record("secrets", None), "").message,
            "secrets is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \
             \"\" in the namespace \"ns1\""
        );
    }
}
