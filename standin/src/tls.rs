//! HTTPS for the stand-in: a throwaway CA made at start, a serving certificate for
//! `localhost`/`127.0.0.1` (plus any extra names), client certificates issued on demand, and
//! the rustls server configuration that asks for (but does not require) a client certificate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The key type of an issued client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    Ec,
    /// RSA 2048, PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`): a fixed test-only key from
    /// `fixtures/tls/` (rcgen cannot generate RSA keys with the ring backend).
    Rsa,
}

/// A client certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The certificate (signed by the stand-in's CA).
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// The stand-in's PKI: one CA signs the serving certificate and client certificates.
pub(crate) struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// DER of every client certificate issued, to the user it names (the CN).
    issued: Mutex<HashMap<Vec<u8>, String>>,
}

/// A fresh CA certificate in PEM, for "wrong CA" tests (trusts nothing the stand-in serves).
pub fn unrelated_ca_pem() -> String {
    let (pem, _, _) = new_ca("unrelated test CA");
    pem
}

fn new_ca(name: &str) -> (String, CertificateDer<'static>, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("generate CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), cert.der().clone(), Issuer::new(params, key))
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let (ca_pem, ca_der, issuer) = new_ca("kube-standin CA");
        Pki {
            ca_pem,
            ca_der,
            issuer,
            issued: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A serving certificate chain and key for `localhost`, `127.0.0.1` and `extra_sans`;
    /// with `expired`, valid only during the year 2000.
    pub(crate) fn server_cert(
        &self,
        extra_sans: &[String],
        expired: bool,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("generate server key");
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(extra_sans.iter().cloned());
        let mut params = CertificateParams::new(sans).expect("server params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-standin");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server cert");
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone(), self.ca_der.clone()], key_der)
    }

    /// Issues a client certificate for `user` (CN) and `groups` (O), remembered so requests
    /// presenting it authenticate as `user`.
    pub(crate) fn client_cert(&self, user: &str, groups: &[&str], kind: KeyKind) -> ClientCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key_pem) = match kind {
            KeyKind::Ec => {
                let key = KeyPair::generate().expect("generate client key");
                let cert = params.signed_by(&key, &self.issuer).expect("sign client");
                (cert, key.serialize_pem())
            }
            KeyKind::Rsa => {
                let dir = crate::testbed::fixtures_dir().join("tls");
                let read = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .unwrap_or_else(|e| panic!("fixtures/tls/{f}: {e}"))
                };
                let key = KeyPair::from_pem(&read("client-rsa.pk8")).expect("RSA key");
                let cert = params.signed_by(&key, &self.issuer).expect("sign client");
                (cert, read("client-rsa.key"))
            }
        };
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cert.der().to_vec(), user.to_string());
        ClientCert {
            cert_pem: cert.pem(),
            key_pem,
        }
    }

    /// The user a verified client certificate was issued to.
    pub(crate) fn user_of(&self, der: &[u8]) -> Option<String> {
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(der)
            .cloned()
    }

    /// The rustls configuration: serve `chain`, accept client certificates from our CA but do
    /// not require one (bearer tokens are checked per request), HTTP/1.1 only.
    pub(crate) fn server_config(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA into root store");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
