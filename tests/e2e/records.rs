//! What a hard lock does to a real record: every release record captured from helm 3 and
//! helm 4 (fixtures/records) survives decode -> status pending-upgrade -> encode -> decode
//! with nothing but `info.status` changed; and on the real API server, `lock --hard` and
//! `unlock` of the captured records leave the releases exactly as helm wrote them.

use std::path::Path;

use base64::Engine;
use guarded_upgrade::release::{
    decode_release, decode_release_json, encode_release_json, set_release_status, ReleaseStatus,
};

#[test]
fn captured_records_survive_a_status_rewrite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/records");
    let mut seen = 0;
    for helm in ["helm3", "helm4"] {
        for kind in ["secret", "configmap"] {
            let dir = root.join(helm).join(kind);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .flatten()
                .map(|f| f.path())
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
                .collect();
            files.sort();
            assert!(!files.is_empty(), "no records in {}", dir.display());
            for path in files {
                let what = path.display().to_string();
                let object: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let data = object["data"]["release"].as_str().expect(&what);
                // Secret data carries the API's own base64 layer on top of helm's.
                let encoded = if kind == "secret" {
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .expect(&what)
                } else {
                    data.as_bytes().to_vec()
                };
                let original = decode_release_json(&encoded).expect(&what);
                let summary = decode_release(&encoded).expect(&what);

                let mut changed = original.clone();
                set_release_status(&mut changed, "pending-upgrade").expect(&what);
                let re = encode_release_json(&changed).expect(&what);
                let back = decode_release_json(re.as_bytes()).expect(&what);

                assert_eq!(back["info"]["status"], "pending-upgrade", "{what}");
                let mut restored = back.clone();
                restored["info"]["status"] = original["info"]["status"].clone();
                assert_eq!(restored, original, "{what}: more than info.status changed");
                // Key order too (helm does not care, but we promise to change nothing else).
                assert_eq!(
                    serde_json::to_string(&restored).unwrap(),
                    serde_json::to_string(&original).unwrap(),
                    "{what}"
                );
                let back_summary = decode_release(re.as_bytes()).expect(&what);
                assert_eq!(back_summary.status, ReleaseStatus::PendingUpgrade, "{what}");
                assert_eq!(
                    (
                        &back_summary.name,
                        back_summary.revision,
                        &back_summary.chart_version,
                        &back_summary.apply_method
                    ),
                    (
                        &summary.name,
                        summary.revision,
                        &summary.chart_version,
                        &summary.apply_method
                    ),
                    "{what}"
                );
                assert_eq!(
                    summary.apply_method.is_some(),
                    helm == "helm4",
                    "{what}: apply_method"
                );

                // And back again, as unlock does.
                let mut unlocked = back;
                set_release_status(&mut unlocked, summary.status.as_str()).expect(&what);
                let re2 = encode_release_json(&unlocked).expect(&what);
                assert_eq!(
                    decode_release_json(re2.as_bytes()).unwrap(),
                    original,
                    "{what}"
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 16, "captured records");
}

/// A captured record as a new object for `namespace`: the server's own fields dropped.
fn as_new_object(path: &Path, namespace: &str) -> serde_json::Value {
    let mut object: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let meta = object["metadata"].as_object_mut().expect("metadata");
    for field in [
        "resourceVersion",
        "uid",
        "managedFields",
        "creationTimestamp",
    ] {
        meta.remove(field);
    }
    meta.insert("namespace".into(), namespace.into());
    object
}

/// On the real API server, for the captured Secret and ConfigMap records of the label's
/// helm major (revision 1 superseded, 2 deployed): `lock --hard` marks the latest record
/// pending-upgrade (nothing else in it changed), `unlock` restores both records' releases
/// (key order included), and the label's helm reads the history afterwards.
fn captured_records_survive_a_hard_lock_on_the_real_server(label: &str) {
    let b = crate::common::bed(label);
    let helm = format!("helm{}", crate::common::helm_major(label));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/records");
    for (kind, plural, driver) in [
        ("secret", "secrets", "secret"),
        ("configmap", "configmaps", "configmap"),
    ] {
        let ns = format!("records-{kind}");
        b.api.create_namespace(&ns);
        let dir = root.join(&helm).join(kind);
        let mut originals = Vec::new();
        for file in ["demo.v1.superseded.json", "demo.v2.deployed.json"] {
            let object = as_new_object(&dir.join(file), &ns);
            let stored = b.api.put_object(plural, object.clone());
            assert_eq!(stored["data"], object["data"], "{kind} {file}");
            originals.push(object);
        }
        let env = [("HELM_DRIVER", driver)];
        let what = format!("{helm} {kind}");
        b.guard_env(
            &["lock", "demo", "-n", &ns, "--hard", "--reason", "freeze"],
            &env,
        )
        .expect_code(0, &format!("{what}: lock --hard"));
        let latest = b
            .api
            .get(plural, Some(&ns), "sh.helm.release.v1.demo.v2")
            .expect("latest record");
        let decode = |object: &serde_json::Value| {
            let data = object["data"]["release"].as_str().expect("release data");
            let encoded = if kind == "secret" {
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap()
            } else {
                data.as_bytes().to_vec()
            };
            decode_release_json(&encoded).unwrap()
        };
        let mut locked = decode(&latest);
        assert_eq!(locked["info"]["status"], "pending-upgrade", "{what}");
        locked["info"]["status"] = "deployed".into();
        assert_eq!(
            locked,
            decode(&originals[1]),
            "{what}: more than the status changed"
        );
        b.guard_env(&["unlock", "demo", "-n", &ns], &env)
            .expect_code(0, &format!("{what}: unlock"));
        for original in &originals {
            let name = original["metadata"]["name"].as_str().unwrap();
            let now = b.api.get(plural, Some(&ns), name).expect("record");
            // The same release, key order included (helm's gzip bytes are not promised:
            // a rewritten record is compressed anew).
            assert_eq!(
                serde_json::to_string(&decode(&now)).unwrap(),
                serde_json::to_string(&decode(original)).unwrap(),
                "{what}: {name}"
            );
            assert_eq!(
                now["metadata"]["labels"]["status"], original["metadata"]["labels"]["status"],
                "{what}: {name}"
            );
        }
        let history = b.helm_env(&["history", "demo", "-n", &ns, "-o", "json"], &env);
        history.expect_code(0, &format!("{what}: helm history"));
        let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
        assert_eq!(history[1]["status"], "deployed", "{what}: {history}");
    }
}

crate::common::per_helm!(captured_records_survive_a_hard_lock_on_the_real_server);
