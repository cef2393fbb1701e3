//! What a hard lock does to a real record: every release record captured from helm 3 and
//! helm 4 (fixtures/records) survives decode -> status pending-upgrade -> encode -> decode
//! with nothing but `info.status` changed.

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
