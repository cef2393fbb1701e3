//! Target resolution for repository charts: a real chart repository (`helm repo index`)
//! served over loopback, with helm picking the version for constraints.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use common::{bed, chart, Bed};

const NS: &str = "shared";

/// A static file server on 127.0.0.1 for one directory; lives as long as the test process.
fn serve(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    return;
                }
                // Drain headers.
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/");
                let file = dir.join(path.trim_start_matches('/'));
                let mut stream = &stream;
                match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(&body);
                    }
                    _ => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn repo(b: &Bed) -> String {
    let dir = b.home().join("repo");
    for v in ["0.9.0", "1.0.0", "1.1.0", "1.2.0"] {
        b.helm(&[
            "package",
            &chart(&format!("demo-{v}")),
            "-d",
            dir.to_str().unwrap(),
        ])
        .expect_code(0, "helm package");
    }
    let url = serve(dir.clone());
    b.helm(&["repo", "index", dir.to_str().unwrap(), "--url", &url])
        .expect_code(0, "helm repo index");
    b.helm(&["repo", "add", "local", &url])
        .expect_code(0, "helm repo add");
    url
}

fn repo_constraints(label: &str) {
    let b = bed(label);
    b.api.create_namespace(NS);
    let url = repo(&b);
    b.guard(&[
        "upgrade",
        "db",
        "local/demo",
        "--version",
        "1.0.0",
        "-n",
        NS,
    ])
    .expect_code(0, "install exact 1.0.0");
    assert_eq!(b.deployed("db", NS).0, "1.0.0");

    // `^1` resolves (through helm) to the highest 1.x: 1.2.0.
    let run = b.guard(&[
        "check",
        "db",
        "local/demo",
        "--version",
        "^1",
        "-n",
        NS,
        "-o",
        "json",
    ]);
    run.expect_code(0, "check ^1");
    let json: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(json["target"]["version"], "1.2.0", "{json}");
    assert_eq!(json["action"], "upgrade");

    // `~0.9` is older than what runs: a downgrade, skipped.
    let run = b.guard(&["upgrade", "db", "local/demo", "--version", "~0.9", "-n", NS]);
    run.expect_code(0, "~0.9");
    assert!(run.stderr.contains("downgrade"), "{}", run.stderr);

    // No --version: helm picks the latest, 1.2.0; also via --repo URL.
    let run = b.guard(&["upgrade", "db", "demo", "--repo", &url, "-n", NS]);
    run.expect_code(0, "--repo latest");
    assert!(run.stderr.contains("1.0.0 -> 1.2.0"), "{}", run.stderr);
    assert_eq!(b.deployed("db", NS).0, "1.2.0");

    // A constraint nothing satisfies: helm cannot resolve it, we refuse (exit 3).
    let run = b.guard(&["upgrade", "db", "local/demo", "--version", ">=5", "-n", NS]);
    run.expect_code(3, "unresolvable");
    assert!(
        run.stderr.contains("resolving the target chart version"),
        "{}",
        run.stderr
    );
}

#[test]
fn helm3_repo_constraints() {
    repo_constraints("helm3");
}

#[test]
fn helm4_repo_constraints() {
    repo_constraints("helm4");
}
