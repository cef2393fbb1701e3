//! API-level tests of the stand-in: selectors, conflicts, patches, SSA, metadata-only
//! responses, Status shapes, faults and the request log.

use crate::common::*;
use kube_standin::{Fault, FaultAction, StandIn};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CM: &str = "/api/v1/namespaces/default/configmaps";

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn assert_status(r: &Resp, code: u16, reason: &str) -> Value {
    assert_eq!(r.status, code, "{}", String::from_utf8_lossy(&r.body));
    let s = r.json();
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["reason"], reason);
    assert_eq!(s["code"], code);
    assert_eq!(s["metadata"], json!({}));
    s
}

#[test]
fn label_and_field_selectors() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    for (n, l) in [
        ("a", json!({"app": "x", "tier": "web"})),
        ("b", json!({"app": "y", "tier": "db"})),
        ("c", json!({"app": "z"})),
    ] {
        assert_eq!(send_json(&u, "POST", CM, &cm(n, l)).status, 201);
    }
    let sel = |q: &str| names(&get(&u, &format!("{CM}?labelSelector={q}")).json());
    assert_eq!(sel("app%3Dx"), ["a"]);
    assert_eq!(sel("app%3D%3Dy"), ["b"]);
    assert_eq!(sel("app!%3Dx"), ["b", "c"]);
    assert_eq!(sel("app%20in%20(x%2Cz)"), ["a", "c"]);
    assert_eq!(sel("app%20notin%20(x%2Cz)"), ["b"]);
    assert_eq!(sel("tier"), ["a", "b"]);
    assert_eq!(sel("!tier"), ["c"]);
    assert_eq!(sel("tier%2Capp!%3Dy"), ["a"]);
    assert_eq!(sel("app%3Dx%2Ctier%3Ddb"), Vec::<String>::new());
    assert_status(
        &get(&u, &format!("{CM}?labelSelector=app%20in%20x")),
        400,
        "BadRequest",
    );
    let f = |q: &str| names(&get(&u, &format!("/api/v1/configmaps?fieldSelector={q}")).json());
    assert_eq!(f("metadata.name%3Db"), ["b"]);
    assert_eq!(
        f("metadata.namespace%3Ddefault%2Cmetadata.name!%3Db"),
        ["a", "c"]
    );
    assert_eq!(f("metadata.namespace%3Dother"), Vec::<String>::new());
    // Cluster-wide list spans namespaces and carries a list resourceVersion.
    s.create_namespace("other");
    send_json(
        &u,
        "POST",
        "/api/v1/namespaces/other/configmaps",
        &cm("d", json!({"app": "x"})),
    );
    let all = get(&u, "/api/v1/configmaps?labelSelector=app%3Dx").json();
    assert_eq!(names(&all), ["a", "d"]);
    assert_eq!(all["kind"], "ConfigMapList");
    assert!(all["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
}

#[test]
fn create_get_update_conflicts() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    let created = send_json(&u, "POST", CM, &cm("x", json!({}))).json();
    let rv1: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(created["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(created["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let st = assert_status(
        &send_json(&u, "POST", CM, &cm("x", json!({}))),
        409,
        "AlreadyExists",
    );
    assert_eq!(st["message"], "configmaps \"x\" already exists");
    assert_eq!(st["details"]["name"], "x");
    let st = assert_status(&get(&u, &format!("{CM}/nope")), 404, "NotFound");
    assert_eq!(st["message"], "configmaps \"nope\" not found");
    // generateName
    let g = send_json(
        &u,
        "POST",
        CM,
        &json!({"metadata": {"generateName": "gen-"}}),
    )
    .json();
    assert!(g["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    // PUT with current rv succeeds, stale rv conflicts, no rv is unconditional.
    let mut upd = created.clone();
    upd["data"]["k"] = json!("v2");
    let r = send_json(&u, "PUT", &format!("{CM}/x"), &upd);
    assert_eq!(r.status, 200);
    let rv2: u64 = r.json()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);
    let st = assert_status(
        &send_json(&u, "PUT", &format!("{CM}/x"), &upd),
        409,
        "Conflict",
    );
    assert!(st["message"].as_str().unwrap().contains("the object has been modified; please apply your changes to the latest version and try again"));
    upd["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    upd["data"]["k"] = json!("v3");
    assert_eq!(send_json(&u, "PUT", &format!("{CM}/x"), &upd).status, 200);
    assert_eq!(
        s.get("configmaps", Some("default"), "x").unwrap()["data"]["k"],
        "v3"
    );
    assert_status(
        &send_json(
            &u,
            "PUT",
            &format!("{CM}/missing"),
            &cm("missing", json!({})),
        ),
        404,
        "NotFound",
    );
    // Invalid names, bad bodies, strict namespaces.
    let st = assert_status(
        &send_json(&u, "POST", CM, &cm("Bad_Name", json!({}))),
        422,
        "Invalid",
    );
    assert!(st["message"]
        .as_str()
        .unwrap()
        .starts_with("ConfigMap \"Bad_Name\" is invalid"));
    assert_status(
        &request(
            &u,
            "POST",
            CM,
            &[("Content-Type", "application/json")],
            b"{nope",
        ),
        400,
        "BadRequest",
    );
    let st = assert_status(
        &send_json(
            &u,
            "POST",
            "/api/v1/namespaces/ghost/secrets",
            &json!({"metadata": {"name": "s"}}),
        ),
        404,
        "NotFound",
    );
    assert_eq!(st["message"], "namespaces \"ghost\" not found");
    assert_status(
        &request(&u, "POST", CM, &[("Content-Type", "text/plain")], b"x"),
        415,
        "UnsupportedMediaType",
    );
    assert_status(
        &get(&u, "/api/v1/namespaces/default/widgets"),
        404,
        "NotFound",
    );
    // Delete: 200 with the object, then 404.
    let d = request(&u, "DELETE", &format!("{CM}/x"), &[], b"");
    assert_eq!(d.status, 200);
    assert_eq!(d.json()["metadata"]["name"], "x");
    assert_status(
        &request(&u, "DELETE", &format!("{CM}/x"), &[], b""),
        404,
        "NotFound",
    );
}

#[test]
fn secrets_fold_string_data() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    let r = send_json(
        &u,
        "POST",
        "/api/v1/namespaces/default/secrets",
        &json!({"metadata": {"name": "s"}, "data": {"a": "YQ=="}, "stringData": {"b": "hello"}}),
    );
    assert_eq!(r.status, 201);
    let v = s.get("secrets", Some("default"), "s").unwrap();
    assert_eq!(v["data"], json!({"a": "YQ==", "b": "aGVsbG8="}));
    assert!(v.get("stringData").is_none());
    assert_eq!(v["type"], "Opaque");
    assert_status(
        &send_json(
            &u,
            "POST",
            "/api/v1/namespaces/default/secrets",
            &json!({"metadata": {"name": "t"}, "data": {"a": "not base64!"}}),
        ),
        400,
        "BadRequest",
    );
}

#[test]
fn patches() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    send_json(
        &u,
        "POST",
        CM,
        &json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}}),
    );
    let r = patch(
        &u,
        &format!("{CM}/p"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"a":null,"c":"3"}},"data":{"y":"22"}}"#,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["metadata"]["labels"], json!({"b": "2", "c": "3"}));
    assert_eq!(v["data"], json!({"x": "1", "y": "22"}));
    let r = patch(
        &u,
        &format!("{CM}/p"),
        "application/strategic-merge-patch+json",
        r#"{"$retainKeys":["data","metadata"],"data":{"x":null,"z":"3"},"metadata":{"labels":{"$patch":"delete"}}}"#,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"], json!({"y": "22", "z": "3"}));
    assert!(v["metadata"].get("labels").is_none());
    assert!(!v.to_string().contains("$patch") && !v.to_string().contains("$retainKeys"));
    let r = patch(
        &u,
        &format!("{CM}/p"),
        "application/json-patch+json",
        r#"[{"op":"test","path":"/data/y","value":"22"},{"op":"add","path":"/data/w","value":"4"},{"op":"remove","path":"/data/z"}]"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], json!({"y": "22", "w": "4"}));
    assert_status(
        &patch(
            &u,
            &format!("{CM}/p"),
            "application/json-patch+json",
            r#"[{"op":"test","path":"/data/y","value":"nope"}]"#,
        ),
        422,
        "Invalid",
    );
    assert_status(
        &patch(
            &u,
            &format!("{CM}/p"),
            "application/merge-patch+json",
            "{bad",
        ),
        400,
        "BadRequest",
    );
    assert_status(
        &patch(
            &u,
            &format!("{CM}/nope"),
            "application/merge-patch+json",
            "{}",
        ),
        404,
        "NotFound",
    );
    assert_status(
        &patch(&u, &format!("{CM}/p"), "text/plain", "{}"),
        415,
        "UnsupportedMediaType",
    );
    // Strategic merge on a Deployment merges containers by name.
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}},
        "spec": {"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}, {"name": "b", "image": "y:1"}]}}}});
    assert_eq!(
        send_json(
            &u,
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            &dep
        )
        .status,
        201
    );
    let r = patch(
        &u,
        "/apis/apps/v1/namespaces/default/deployments/d",
        "application/strategic-merge-patch+json",
        r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"a"},{"name":"b"}],"containers":[{"name":"a","image":"x:2"}]}}}}"#,
    );
    assert_eq!(r.status, 200);
    let c = &r.json()["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        c[0],
        json!({"name": "a", "image": "x:2", "ports": [{"containerPort": 80}]})
    );
    assert_eq!(c[1]["image"], "y:1");
    assert_eq!(r.json()["metadata"]["generation"], 2);
}

fn apply(u: &str, name: &str, manager: &str, force: bool, body: &str) -> Resp {
    let q = format!(
        "{CM}/{name}?fieldManager={manager}{}",
        if force { "&force=true" } else { "" }
    );
    patch(u, &q, "application/apply-patch+yaml", body)
}

#[test]
fn server_side_apply() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    let body = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  labels:\n    a: '1'\ndata:\n  x: '1'\n  y: '2'\n";
    let r = apply(&u, "ssa", "mgr1", false, body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let mf = &v["metadata"]["managedFields"];
    assert_eq!(mf.as_array().unwrap().len(), 1);
    assert_eq!(mf[0]["manager"], "mgr1");
    assert_eq!(mf[0]["operation"], "Apply");
    assert_eq!(mf[0]["fieldsType"], "FieldsV1");
    assert_eq!(
        mf[0]["fieldsV1"],
        json!({"f:data": {"f:x": {}, "f:y": {}}, "f:metadata": {"f:labels": {"f:a": {}}}})
    );
    // Re-apply is idempotent; apply without fieldManager is refused.
    assert_eq!(apply(&u, "ssa", "mgr1", false, body).status, 200);
    assert_status(
        &patch(
            &u,
            &format!("{CM}/ssa"),
            "application/apply-patch+yaml",
            body,
        ),
        400,
        "BadRequest",
    );
    // Another manager changing a field owned by mgr1: conflict naming the field.
    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  x: 'other'\n";
    let st = assert_status(&apply(&u, "ssa", "mgr2", false, other), 409, "Conflict");
    assert_eq!(st["details"]["causes"][0]["field"], ".data.x");
    assert!(st["message"]
        .as_str()
        .unwrap()
        .contains("conflict with \"mgr1\""));
    // Same value: no conflict, shared ownership.
    assert_eq!(
        apply(
            &u,
            "ssa",
            "mgr3",
            false,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  y: '2'\n"
        )
        .status,
        200
    );
    // force takes ownership.
    let r = apply(&u, "ssa", "mgr2", true, other);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"]["x"], "other");
    let m1 = v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "mgr1")
        .unwrap()
        .clone();
    assert!(m1["fieldsV1"]["f:data"].get("f:x").is_none());
    // mgr1 drops y (still owned by mgr3: kept) and label a (owned only by mgr1: removed).
    let r = apply(
        &u,
        "ssa",
        "mgr1",
        false,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  y: '2'\n",
    );
    let v = r.json();
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(v["data"], json!({"x": "other", "y": "2"}));
    assert!(
        v["metadata"]
            .get("labels")
            .is_none_or(|l| l.get("a").is_none()),
        "{v}"
    );
    // mgr3 drops y too: now nobody owns it, so it goes.
    let v = apply(
        &u,
        "ssa",
        "mgr3",
        false,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n",
    )
    .json();
    assert_eq!(
        v["data"],
        json!({"x": "other", "y": "2"}),
        "mgr1 still applies y"
    );
    // A JSON body is valid YAML too; a non-apply write moves fields to an Update entry.
    let r = patch(
        &u,
        &format!("{CM}/ssa"),
        "application/merge-patch+json",
        r#"{"data":{"x":"edited"}}"#,
    );
    let entries = r.json()["metadata"]["managedFields"].clone();
    let upd = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["operation"] == "Update")
        .unwrap()
        .clone();
    assert_eq!(upd["manager"], "standin-test");
    assert_eq!(upd["fieldsV1"], json!({"f:data": {"f:x": {}}}));
    let st = assert_status(&apply(&u, "ssa", "mgr2", false, other), 409, "Conflict");
    assert!(st["message"].as_str().unwrap().contains("standin-test"));
    // A JSON patch may rewrite managedFields wholesale (what Helm 4 does before switching to SSA).
    let r = patch(
        &u,
        &format!("{CM}/ssa"),
        "application/json-patch+json",
        r#"[{"op":"replace","path":"/metadata/managedFields","value":[{"manager":"helm","operation":"Apply","apiVersion":"v1","fieldsType":"FieldsV1","fieldsV1":{"f:data":{"f:x":{},"f:y":{}}}}]}]"#,
    );
    assert_eq!(r.status, 200);
    let mf = r.json()["metadata"]["managedFields"].clone();
    assert_eq!(mf.as_array().unwrap().len(), 1, "{mf}");
    assert_eq!(mf[0]["manager"], "helm");
    let r = apply(
        &u,
        "ssa",
        "helm",
        false,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ssa"},"data":{"x":"edited"}}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], json!({"x": "edited"}));
}

#[test]
fn metadata_only_responses() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    send_json(&u, "POST", CM, &cm("m", json!({"a": "b"})));
    let accept = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let l = request(&u, "GET", CM, &[("Accept", accept)], b"").json();
    assert_eq!(l["kind"], "PartialObjectMetadataList");
    assert_eq!(l["apiVersion"], "meta.k8s.io/v1");
    let item = &l["items"][0];
    assert_eq!(item["kind"], "PartialObjectMetadata");
    assert_eq!(item["metadata"]["labels"]["a"], "b");
    assert!(item.get("data").is_none());
    let g = request(
        &u,
        "GET",
        &format!("{CM}/m"),
        &[(
            "Accept",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
        )],
        b"",
    )
    .json();
    assert_eq!(g["kind"], "PartialObjectMetadata");
    assert!(g.get("data").is_none());
    // Table is not served: falls back to the next acceptable type.
    let t = request(
        &u,
        "GET",
        &format!("{CM}/m"),
        &[(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )],
        b"",
    )
    .json();
    assert_eq!(t["kind"], "ConfigMap");
    // Aggregated discovery requests get the legacy documents as plain JSON.
    let r = request(
        &u,
        "GET",
        "/apis",
        &[(
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )],
        b"",
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["kind"], "APIGroupList");
}

#[test]
fn faults_and_request_log() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    s.clear_requests();
    s.inject(Fault {
        verb: Some("create".into()),
        resource: Some("configmaps".into()),
        name: None,
        action: FaultAction::Status(503),
        times: Some(1),
    });
    assert_status(
        &send_json(&u, "POST", CM, &cm("f", json!({}))),
        503,
        "ServiceUnavailable",
    );
    assert!(s.get("configmaps", Some("default"), "f").is_none());
    assert_eq!(
        send_json(&u, "POST", CM, &cm("f", json!({}))).status,
        201,
        "times=1 fault is used up"
    );
    for (code, reason) in [
        (500, "InternalError"),
        (409, "Conflict"),
        (403, "Forbidden"),
        (429, "TooManyRequests"),
        (404, "NotFound"),
    ] {
        s.inject(Fault {
            verb: Some("get".into()),
            resource: Some("configmaps".into()),
            name: Some("f".into()),
            action: FaultAction::Status(code),
            times: None,
        });
        assert_status(&get(&u, &format!("{CM}/f")), code, reason);
        assert_status(&get(&u, &format!("{CM}/f")), code, reason);
        s.clear_faults();
    }
    s.inject(Fault {
        verb: Some("get".into()),
        resource: None,
        name: Some("f".into()),
        action: FaultAction::Drop,
        times: Some(1),
    });
    assert!(
        try_request(&u, "GET", &format!("{CM}/f"), &[], b"").is_err(),
        "dropped connection"
    );
    s.inject(Fault {
        verb: None,
        resource: Some("configmaps".into()),
        name: Some("f".into()),
        action: FaultAction::Delay(Duration::from_millis(300)),
        times: Some(1),
    });
    let t = Instant::now();
    assert_eq!(get(&u, &format!("{CM}/f")).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Faults over HTTP, and the log over HTTP (control paths are not logged).
    let f = json!({"verb": "delete", "resource": "configmaps", "name": "f", "action": {"Status": 500}, "times": 1});
    assert_eq!(send_json(&u, "POST", "/_standin/faults", &f).status, 201);
    assert_status(
        &request(&u, "DELETE", &format!("{CM}/f"), &[], b""),
        500,
        "InternalError",
    );
    assert_eq!(
        send_json(
            &u,
            "POST",
            "/_standin/faults",
            &json!({"verb": "get", "action": "Drop", "resource": null, "name": null, "times": null})
        )
        .status,
        201
    );
    assert_eq!(
        request(&u, "DELETE", "/_standin/faults", &[], b"").status,
        200
    );
    assert_eq!(get(&u, &format!("{CM}/f")).status, 200);
    let log = s.requests();
    let over_http: Vec<kube_standin::RequestRecord> =
        serde_json::from_value(get(&u, "/_standin/requests").json()).unwrap();
    assert_eq!(log, over_http);
    assert!(log.iter().all(|r| !r.path.starts_with("/_standin")));
    let verbs: Vec<(&str, u16)> = log.iter().map(|r| (r.verb.as_str(), r.status)).collect();
    assert_eq!(
        &verbs[..3],
        &[("create", 503), ("create", 201), ("get", 500)]
    );
    assert!(
        verbs.contains(&("get", 0)),
        "dropped request logged with status 0"
    );
    let del = log.iter().find(|r| r.verb == "delete").unwrap();
    assert!(del.is_write());
    assert_eq!(
        (
            del.resource.as_deref(),
            del.namespace.as_deref(),
            del.name.as_deref(),
            del.status
        ),
        (Some("configmaps"), Some("default"), Some("f"), 500)
    );
    assert!(!log[3].is_write());
    assert_eq!(log[0].content_type.as_deref(), Some("application/json"));
    s.clear_requests();
    assert!(s.requests().is_empty());
    request(&u, "DELETE", "/_standin/requests", &[], b"");
}

#[test]
fn watch_streams_events() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    send_json(&u, "POST", CM, &cm("w1", json!({"w": "yes"})));
    let u2 = u.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        send_json(&u2, "POST", CM, &cm("w2", json!({"w": "yes"})));
        send_json(&u2, "POST", CM, &cm("ignored", json!({"w": "no"})));
        request(&u2, "DELETE", &format!("{CM}/w1"), &[], b"");
    });
    let r = get(&u, &format!("{CM}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1&labelSelector=w%3Dyes"));
    writer.join().unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("ADDED".into(), "w1".into()),
            ("BOOKMARK".into(), "".into()),
            ("ADDED".into(), "w2".into()),
            ("DELETED".into(), "w1".into())
        ]
    );
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // Resuming from a resourceVersion replays what happened since.
    let rv = events[1]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap();
    let r = get(
        &u,
        &format!("{CM}?watch=1&resourceVersion={rv}&timeoutSeconds=1"),
    );
    let types: Vec<String> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["ADDED", "ADDED", "DELETED"]);
}

#[test]
fn deployment_controller_and_put_object() {
    let s = StandIn::start().unwrap();
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let r = send_json(
        &s.url(),
        "POST",
        "/apis/apps/v1/namespaces/default/deployments",
        &dep,
    );
    assert_eq!(r.status, 201);
    let d = s.get("deployments", Some("default"), "web").unwrap();
    assert_eq!(d["status"]["readyReplicas"], 2);
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    let rs = s.list("replicasets", Some("default"));
    assert_eq!(rs.len(), 1);
    assert_eq!(
        rs[0]["metadata"]["ownerReferences"][0]["uid"],
        d["metadata"]["uid"]
    );
    assert_eq!(s.list("pods", Some("default")).len(), 2);
    request(
        &s.url(),
        "DELETE",
        "/apis/apps/v1/namespaces/default/deployments/web",
        &[],
        b"",
    );
    assert!(
        s.list("replicasets", Some("default")).is_empty() && s.list("pods", None).is_empty(),
        "dependents collected"
    );
    let put = s.put_object("leases", json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "kube-system"}, "spec": {"holderIdentity": "me"}}));
    assert!(put["metadata"]["resourceVersion"].is_string() && put["metadata"]["uid"].is_string());
    let got = get(
        &s.url(),
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/l",
    )
    .json();
    assert_eq!(got["spec"]["holderIdentity"], "me");
    assert!(s.get("namespaces", None, "kube-public").is_some());
    s.stop();
}
