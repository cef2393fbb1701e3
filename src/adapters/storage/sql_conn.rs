//! Connecting to PostgreSQL the way Helm's SQL driver does (`lib/pq`: v1.10.9 in helm 3.17
//! and 4.1, v1.12.3 in helm 3.21 and 4.3): the same connection string
//! (`HELM_DRIVER_SQL_CONNECTION_STRING`, URL or `key=value` form) and the same TLS modes:
//!
//! | `sslmode` | TLS | verification |
//! |---|---|---|
//! | unset, `require` | required | none; with an existing `sslrootcert`, the chain (as `verify-ca`) |
//! | `verify-ca` | required | the chain against `sslrootcert` (else the system roots), any host name |
//! | `verify-full` | required | the chain and the host name |
//! | `disable` | never | — |
//! | `prefer` | when the server offers it | none |
//! | `allow` | only when the server refuses a plain connection | none |
//!
//! `prefer` and `allow` came with lib/pq 1.12 (the newest helms); helm 3.17 and 4.1 refuse
//! them, and then fail on their own after the guard has decided. Anything else is refused. Client certificates
//! come from `sslcert`/`sslkey` (default `~/.postgresql/postgresql.crt` and `.key`).
//! tokio-postgres does not know the `ssl*` file options, so they are taken out of the string
//! here and turned into a rustls configuration.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// TLS settings taken out of a connection string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SslSettings {
    /// `sslmode`, empty when unset.
    pub mode: String,
    /// `sslrootcert`: a PEM file, or `system`.
    pub root_cert: Option<String>,
    /// `sslcert`.
    pub cert: Option<String>,
    /// `sslkey`.
    pub key: Option<String>,
}

/// How the connection is protected, decided from [`SslSettings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsMode {
    /// `sslmode=disable`.
    Disable,
    /// TLS without verifying the server.
    NoVerify,
    /// TLS verifying the chain, not the host name.
    VerifyCa,
    /// TLS verifying chain and host name.
    VerifyFull,
    /// `sslmode=prefer`: TLS without verification when the server offers it, else plain.
    Prefer,
    /// `sslmode=allow`: plain, and TLS without verification only when plain is refused.
    Allow,
}

impl SslSettings {
    /// The TLS mode lib/pq would use, or its error for an unsupported `sslmode`.
    pub(crate) fn tls_mode(&self) -> Result<TlsMode, String> {
        match self.mode.as_str() {
            "" | "require" => {
                // lib/pq: with a root certificate file present, `require` verifies the chain.
                let root_exists = self
                    .root_cert
                    .as_deref()
                    .is_some_and(|p| std::path::Path::new(p).is_file());
                Ok(if root_exists {
                    TlsMode::VerifyCa
                } else {
                    TlsMode::NoVerify
                })
            }
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" => Ok(TlsMode::VerifyFull),
            "disable" => Ok(TlsMode::Disable),
            "prefer" => Ok(TlsMode::Prefer),
            "allow" => Ok(TlsMode::Allow),
            other => Err(format!(
                "unsupported sslmode {other:?}; only \"require\" (default), \"verify-full\", \
                 \"verify-ca\", \"prefer\", \"allow\", and \"disable\" are supported (as by \
                 helm's SQL driver)"
            )),
        }
    }
}

/// Splits a connection string into what tokio-postgres understands (with `sslmode` set to
/// `disable`, `prefer` or `require`; `allow` starts as `disable`) and the TLS settings.
pub(crate) fn split_connection_string(text: &str) -> Result<(String, SslSettings), String> {
    let text = text.trim();
    let url = text.starts_with("postgres://") || text.starts_with("postgresql://");
    let mut pairs = if url {
        url_params(text)?
    } else {
        keyword_params(text)?
    };
    let mut ssl = SslSettings::default();
    pairs.retain(|(k, v)| {
        let slot = match k.as_str() {
            "sslmode" => {
                ssl.mode = v.clone();
                return false;
            }
            "sslrootcert" => &mut ssl.root_cert,
            "sslcert" => &mut ssl.cert,
            "sslkey" => &mut ssl.key,
            // lib/pq sends SNI for host names by default; rustls does the same.
            "sslsni" => return false,
            _ => return true,
        };
        *slot = Some(v.clone()).filter(|v| !v.is_empty());
        false
    });
    let tokio_mode = match ssl.tls_mode()? {
        TlsMode::Disable | TlsMode::Allow => "disable",
        TlsMode::Prefer => "prefer",
        TlsMode::NoVerify | TlsMode::VerifyCa | TlsMode::VerifyFull => "require",
    };
    pairs.push(("sslmode".into(), tokio_mode.into()));
    let rebuilt = if url {
        let base = text.split('?').next().unwrap_or(text);
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        format!("{base}?{}", query.join("&"))
    } else {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok((rebuilt, ssl))
}

/// The query parameters of a URL connection string, percent-decoded.
fn url_params(text: &str) -> Result<Vec<(String, String)>, String> {
    let Some((_, query)) = text.split_once('?') else {
        return Ok(Vec::new());
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "invalid percent-encoding in the connection string".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the connection string is not UTF-8".to_string())
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `key = value` pairs of a keyword/value connection string (libpq's rules: values are
/// unquoted words or single-quoted with backslash escapes).
fn keyword_params(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!(
                "connection string option {key:?} has no `=value` (expected key=value pairs \
                 or a postgres:// URL)"
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(format!(
                            "connection string option {key:?} has an unterminated quoted value"
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// The rustls client configuration for `mode` (not called for [`TlsMode::Disable`]).
pub(crate) fn client_config(
    mode: TlsMode,
    ssl: &SslSettings,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Disable | TlsMode::NoVerify | TlsMode::Prefer | TlsMode::Allow => {
            Arc::new(NoVerification(provider))
        }
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = Arc::new(root_store(ssl.root_cert.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if mode == TlsMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let home = std::env::var("HOME").ok().filter(|h| !h.is_empty());
    let default_file = |name: &str| {
        home.as_ref()
            .map(|h| format!("{h}/.postgresql/{name}"))
            .filter(|p| std::path::Path::new(p).is_file())
    };
    let cert = ssl.cert.clone().or_else(|| default_file("postgresql.crt"));
    match cert {
        Some(cert) if std::path::Path::new(&cert).is_file() => {
            let key = ssl
                .key
                .clone()
                .or_else(|| default_file("postgresql.key"))
                .ok_or_else(|| format!("sslcert {cert:?} is set but no sslkey"))?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("sslcert {cert:?}: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("sslkey {key:?}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn root_store(root_cert: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) if path != "system" => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("sslrootcert {path:?}: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {path:?}: no usable PEM certificate"));
            }
        }
        _ => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(
                    "no system root certificates found; set sslrootcert in the connection \
                     string"
                        .into(),
                );
            }
        }
    }
    Ok(roots)
}

/// `sslmode=require`: encrypted, the server is not verified (as lib/pq does).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The handshake signature is still checked: only the identity is not.
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must verify, the host name need not match.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_strings_lose_their_ssl_file_options() {
        let (rest, ssl) = split_connection_string(
            "postgres://u:p%40ss@db.example:5433/helm?sslmode=verify-full&sslrootcert=/etc/ca%20x.pem&application_name=gu",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example:5433/helm?application_name=gu&sslmode=require"
        );
        assert_eq!(ssl.mode, "verify-full");
        assert_eq!(ssl.root_cert.as_deref(), Some("/etc/ca x.pem"));
        assert_eq!(ssl.tls_mode(), Ok(TlsMode::VerifyFull));
        rest.parse::<tokio_postgres::Config>().unwrap();
    }

    #[test]
    fn keyword_strings() {
        let (rest, ssl) = split_connection_string(
            "host=127.0.0.1 port = 5432 user=helm password='a \\'b' dbname=helm sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            rest,
            "host='127.0.0.1' port='5432' user='helm' password='a \\'b' dbname='helm' \
             sslmode='disable'"
        );
        assert_eq!(ssl.tls_mode(), Ok(TlsMode::Disable));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a 'b"[..]));
        assert!(split_connection_string("host").is_err());
        assert!(split_connection_string("password='open").is_err());
    }

    #[test]
    fn ssl_modes_follow_lib_pq() {
        let mode = |m: &str, root: Option<&str>| {
            SslSettings {
                mode: m.into(),
                root_cert: root.map(str::to_string),
                ..Default::default()
            }
            .tls_mode()
        };
        assert_eq!(mode("", None), Ok(TlsMode::NoVerify));
        assert_eq!(mode("require", None), Ok(TlsMode::NoVerify));
        assert_eq!(
            mode("require", Some("/nonexistent.pem")),
            Ok(TlsMode::NoVerify)
        );
        assert_eq!(
            mode("require", Some("/etc/hostname")),
            Ok(TlsMode::VerifyCa)
        );
        assert_eq!(mode("verify-ca", None), Ok(TlsMode::VerifyCa));
        assert_eq!(mode("disable", None), Ok(TlsMode::Disable));
        assert_eq!(mode("prefer", None), Ok(TlsMode::Prefer));
        assert_eq!(mode("allow", None), Ok(TlsMode::Allow));
        assert_eq!(
            mode("sometimes", None).unwrap_err(),
            "unsupported sslmode \"sometimes\"; only \"require\" (default), \"verify-full\", \
             \"verify-ca\", \"prefer\", \"allow\", and \"disable\" are supported (as by \
             helm's SQL driver)"
        );
        let (rest, _) = split_connection_string("postgres://h/db?sslmode=prefer").unwrap();
        assert_eq!(rest, "postgres://h/db?sslmode=prefer");
        // allow starts in plain text; TLS is the second try.
        let (rest, _) = split_connection_string("postgres://h/db?sslmode=allow").unwrap();
        assert_eq!(rest, "postgres://h/db?sslmode=disable");
        // Unset means require: tokio-postgres is told to require TLS.
        let (rest, _) = split_connection_string("postgres://h/db").unwrap();
        assert_eq!(rest, "postgres://h/db?sslmode=require");
    }

    #[test]
    fn tls_configs_build() {
        let ssl = SslSettings::default();
        client_config(TlsMode::NoVerify, &ssl).unwrap();
        let missing = SslSettings {
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = client_config(TlsMode::VerifyFull, &missing).unwrap_err();
        assert!(
            err.starts_with("sslrootcert \"/nonexistent/ca.pem\""),
            "{err}"
        );
    }
}
