//! Faults selected by position (`inject_after`, `"skip"` over HTTP) and the two body faults
//! (`Truncate`, `WrongShape`).

use crate::common::*;
use kube_standin::{ArmedFault, Fault, FaultAction, StandIn};
use serde_json::{json, Value};

const CM: &str = "/api/v1/namespaces/default/configmaps";

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"a": "b"}}, "data": {"k": "v"}})
}

fn any(action: FaultAction, times: Option<u32>) -> Fault {
    Fault {
        verb: None,
        resource: None,
        name: None,
        action,
        times,
    }
}

#[test]
fn inject_after_hits_exactly_the_kth_request() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    assert_eq!(send_json(&u, "POST", CM, &cm("a")).status, 201);
    // The request 2 from now (0-based) and only that one fails, whatever it is.
    s.inject_after(2, any(FaultAction::Status(500), Some(1)));
    s.clear_requests();
    let codes: Vec<u16> = (0..5).map(|_| get(&u, &format!("{CM}/a")).status).collect();
    assert_eq!(codes, [200, 200, 500, 200, 200]);
    let logged: Vec<u16> = s.requests().iter().map(|r| r.status).collect();
    assert_eq!(logged, codes);
}

#[test]
fn inject_after_counts_only_matching_requests() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    assert_eq!(send_json(&u, "POST", CM, &cm("a")).status, 201);
    // Let one list through, then fail every list; gets are neither counted nor hit.
    s.inject_after(
        1,
        Fault {
            verb: Some("list".into()),
            resource: Some("configmaps".into()),
            name: None,
            action: FaultAction::Status(503),
            times: None,
        },
    );
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
    assert_eq!(get(&u, CM).status, 200);
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
    assert_eq!(get(&u, CM).status, 503);
    assert_eq!(get(&u, CM).status, 503);
    s.clear_faults();
    assert_eq!(get(&u, CM).status, 200);
    // Over HTTP: a posted fault with "skip" is armed; DELETE clears armed faults too.
    let f = json!({"verb": "get", "resource": "configmaps", "name": "a", "action": {"Status": 409}, "times": 1, "skip": 1});
    assert_eq!(send_json(&u, "POST", "/_standin/faults", &f).status, 201);
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
    assert_eq!(get(&u, &format!("{CM}/a")).status, 409);
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
    let f = json!({"verb": null, "resource": null, "name": null, "action": "Drop", "times": null, "skip": 0});
    assert_eq!(send_json(&u, "POST", "/_standin/faults", &f).status, 201);
    assert_eq!(
        request(&u, "DELETE", "/_standin/faults", &[], b"").status,
        200
    );
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
    let bad = json!({"action": "Drop", "verb": null, "resource": null, "name": null, "times": null, "skip": -1});
    assert_eq!(send_json(&u, "POST", "/_standin/faults", &bad).status, 400);
}

#[test]
fn truncate_cuts_the_body_after_the_write() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    s.inject(any(FaultAction::Truncate, Some(1)));
    let r = try_request(
        &u,
        "POST",
        CM,
        &[("Content-Type", "application/json")],
        cm("t").to_string().as_bytes(),
    )
    .expect("status line and headers arrive");
    assert_eq!(r.status, 201);
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(r.body.len() < length, "{} of {length} bytes", r.body.len());
    assert!(!r.body.is_empty());
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    // The write happened; the full answer starts with the bytes that were sent.
    let stored = s.get("configmaps", Some("default"), "t").expect("created");
    let full = get(&u, &format!("{CM}/t"));
    assert!(full.body.starts_with(&r.body[..r.body.len().min(20)]));
    assert_eq!(stored["metadata"]["name"], "t");
    let log = s.requests();
    assert_eq!(
        log.first().map(|r| (r.verb.as_str(), r.status)),
        Some(("create", 201))
    );
}

#[test]
fn wrong_shape_breaks_lists_and_names_but_not_errors() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    assert_eq!(send_json(&u, "POST", CM, &cm("w")).status, 201);
    s.inject(any(FaultAction::WrongShape, Some(3)));
    let list = get(&u, CM);
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"], Value::Null);
    let one = get(&u, &format!("{CM}/w"));
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["metadata"]["name"], "w-other");
    assert_eq!(one.json()["data"]["k"], "v");
    // An error answer keeps its shape (and uses up the third time).
    let missing = get(&u, &format!("{CM}/nope"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["reason"], "NotFound");
    // The store itself is untouched.
    assert_eq!(get(&u, &format!("{CM}/w")).json()["metadata"]["name"], "w");
    assert_eq!(get(&u, CM).json()["items"].as_array().unwrap().len(), 1);
}

#[test]
fn armed_faults_can_select_one_client_by_user_agent() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    assert_eq!(send_json(&u, "POST", CM, &cm("a")).status, 201);
    s.arm(ArmedFault {
        skip: 0,
        fault: any(FaultAction::Status(500), None),
        user_agent: Some("someone-else/".into()),
    });
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
    s.clear_faults();
    // The test client is `standin-test/1.0`: its second request is hit.
    let f = json!({"verb": null, "resource": null, "name": null, "action": {"Status": 403}, "times": 1, "skip": 1, "user_agent": "standin-test/"});
    assert_eq!(send_json(&u, "POST", "/_standin/faults", &f).status, 201);
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
    assert_eq!(get(&u, &format!("{CM}/a")).status, 403);
    assert_eq!(get(&u, &format!("{CM}/a")).status, 200);
}

#[test]
fn delete_object_removes_directly() {
    let s = StandIn::start().unwrap();
    let u = s.url();
    assert_eq!(send_json(&u, "POST", CM, &cm("d")).status, 201);
    assert!(s.delete_object("configmaps", Some("default"), "d"));
    assert!(!s.delete_object("configmaps", Some("default"), "d"));
    assert_eq!(get(&u, &format!("{CM}/d")).status, 404);
    assert!(s.requests().iter().all(|r| r.verb != "delete"));
}
