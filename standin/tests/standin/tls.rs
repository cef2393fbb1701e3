//! The HTTPS front: generated certificates, bearer-token and client-certificate
//! authentication, 401 Status answers, and identity plus Impersonate-* in the request log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use kube_standin::{Auth, ClientCert, KeyKind, Options, StandIn, TlsOptions, DEFAULT_TOKEN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn https(opts: Options) -> StandIn {
    StandIn::start_with(Options {
        tls: Some(opts.tls.clone().unwrap_or_default()),
        ..opts
    })
    .expect("start")
}

/// One GET over TLS, trusting `ca_pem`, naming the server `name`. Ok((status, body)).
fn get(
    standin: &StandIn,
    ca_pem: &str,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
    cert: Option<&ClientCert>,
) -> Result<(u16, String), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let server = ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", standin.port())).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // The server closes after answering; a TLS close_notify may be missing.
    let _ = tls.read_to_end(&mut response).map_err(|e| e.to_string());
    if response.is_empty() {
        return Err(tls
            .conn
            .process_new_packets()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no response".into()));
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn https_kubeconfig_trusts_the_generated_ca() {
    let s = https(Options::default());
    assert!(s.url().starts_with("https://127.0.0.1:"), "{}", s.url());
    let ca = s.ca_pem().unwrap();
    let kubeconfig = std::fs::read_to_string(s.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains("certificate-authority-data: "),
        "{kubeconfig}"
    );
    for name in ["localhost", "127.0.0.1"] {
        let (status, _) = get(&s, &ca, name, "/version", &[], None).unwrap();
        assert_eq!(status, 200, "{name}");
    }
    let err = get(&s, &ca, "other.test", "/version", &[], None).unwrap_err();
    assert!(
        err.contains("certificate not valid for name \"other.test\""),
        "{err}"
    );
    let err = get(
        &s,
        &kube_standin::unrelated_ca_pem(),
        "localhost",
        "/version",
        &[],
        None,
    )
    .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn an_expired_certificate_is_served_on_request() {
    let s = https(Options {
        tls: Some(TlsOptions {
            extra_sans: vec![],
            expired: true,
        }),
        ..Options::default()
    });
    let err = get(&s, &s.ca_pem().unwrap(), "localhost", "/version", &[], None).unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");
}

/// status, user, Impersonate-* headers, User-Agent.
type LogLine = (u16, Option<String>, Vec<String>, Option<String>);

#[test]
fn authentication_and_identity_in_the_log() {
    let s = https(Options {
        auth: Auth::TokenOrCert,
        tokens: vec![("secret-token".into(), "alice".into())],
        ..Options::default()
    });
    let ca = s.ca_pem().unwrap();
    let path = "/api/v1/namespaces/default/secrets";
    let (status, body) = get(&s, &ca, "localhost", path, &[], None).unwrap();
    assert_eq!(status, 401);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );
    let (status, _) = get(
        &s,
        &ca,
        "localhost",
        path,
        &[("Authorization", "Bearer wrong"), ("User-Agent", "probe/1")],
        None,
    )
    .unwrap();
    assert_eq!(status, 401);
    let (status, _) = get(
        &s,
        &ca,
        "localhost",
        path,
        &[
            ("Authorization", "Bearer secret-token"),
            ("Impersonate-User", "bob"),
            ("Impersonate-Group", "ops"),
        ],
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = get(
        &s,
        &ca,
        "localhost",
        path,
        &[("Authorization", &format!("Bearer {DEFAULT_TOKEN}"))],
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    for kind in [KeyKind::Ec, KeyKind::Rsa] {
        let cert = s.client_cert("carol", &["devs"], kind);
        let (status, _) = get(&s, &ca, "localhost", path, &[], Some(&cert)).unwrap();
        assert_eq!(status, 200, "{kind:?}");
    }
    let log: Vec<LogLine> = s
        .requests()
        .into_iter()
        .map(|r| (r.status, r.user, r.impersonate, r.user_agent))
        .collect();
    assert_eq!(
        log,
        vec![
            (401, None, vec![], None),
            (401, None, vec![], Some("probe/1".into())),
            (
                200,
                Some("alice".into()),
                vec![
                    "impersonate-user: bob".into(),
                    "impersonate-group: ops".into()
                ],
                None
            ),
            (200, Some("standin".into()), vec![], None),
            (200, Some("carol".into()), vec![], None),
            (200, Some("carol".into()), vec![], None),
        ]
    );
}

#[test]
fn a_token_only_server_ignores_client_certificates() {
    let s = https(Options {
        auth: Auth::Token,
        ..Options::default()
    });
    let cert = s.client_cert("carol", &[], KeyKind::Ec);
    let (status, _) = get(
        &s,
        &s.ca_pem().unwrap(),
        "localhost",
        "/api/v1/secrets",
        &[],
        Some(&cert),
    )
    .unwrap();
    assert_eq!(status, 401);
}
