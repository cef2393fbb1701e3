//! Captures real helm release records (run by `fixtures/records/capture.sh`; ignored otherwise).
//!
//! For each helm version and storage driver it drives release `demo` through
//! install 1.0.0 -> upgrade 1.1.0 -> failing upgrade (chart `broken-1.3.0`, whose Deployment
//! name the API rejects with 422) -> `uninstall --keep-history`, and saves each record as the
//! stand-in stores it: `<out>/<helm>/<driver>/demo.v<N>.<status>.json`.

use kube_standin::testbed::{self, chart, Helm};
use kube_standin::StandIn;
use std::path::{Path, PathBuf};

fn save(standin: &StandIn, out: &Path, resource: &str, rev: u32) {
    let obj = standin
        .get(
            resource,
            Some("default"),
            &format!("sh.helm.release.v1.demo.v{rev}"),
        )
        .unwrap_or_else(|| panic!("record v{rev} missing in {resource}"));
    let status = obj["metadata"]["labels"]["status"]
        .as_str()
        .expect("status label")
        .to_string();
    std::fs::create_dir_all(out).unwrap();
    let file = out.join(format!("demo.v{rev}.{status}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&obj).unwrap() + "\n").unwrap();
    eprintln!("wrote {}", file.display());
}

#[test]
#[ignore = "writes fixtures; run fixtures/records/capture.sh"]
fn capture_records() {
    let root: PathBuf = std::env::var_os("STANDIN_RECORDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| testbed::fixtures_dir().join("records"));
    for (label, bin) in testbed::helms() {
        for (driver, resource) in [("secret", "secrets"), ("configmap", "configmaps")] {
            let standin = StandIn::start().unwrap();
            let helm = Helm::new(&bin, &standin).env("HELM_DRIVER", driver);
            let out = root.join(label).join(driver);
            let c100 = chart("demo", "1.0.0");
            let c110 = chart("demo", "1.1.0");
            let broken = chart("broken", "1.3.0");
            let r = helm.run(&["install", "demo", c100.to_str().unwrap(), "-n", "default"]);
            assert!(r.success, "{}", r.describe());
            let r = helm.run(&["upgrade", "demo", c110.to_str().unwrap(), "-n", "default"]);
            assert!(r.success, "{}", r.describe());
            save(&standin, &out, resource, 1);
            save(&standin, &out, resource, 2);
            let r = helm.run(&["upgrade", "demo", broken.to_str().unwrap(), "-n", "default"]);
            assert!(
                !r.success && r.stderr.contains("invalid"),
                "{label}: the broken upgrade must fail: {}",
                r.describe()
            );
            save(&standin, &out, resource, 3);
            let r = helm.run(&["uninstall", "demo", "-n", "default", "--keep-history"]);
            assert!(r.success, "{}", r.describe());
            save(&standin, &out, resource, 3);
        }
    }
}
