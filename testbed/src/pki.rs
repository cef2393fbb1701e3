//! The control plane's PKI: one CA signs the API server's serving certificate and the
//! client certificates tests ask for; a separate key signs service-account tokens.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A client certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The certificate, signed by the control plane's CA.
    pub cert_pem: String,
    /// Its ECDSA P-256 private key (PKCS#8).
    pub key_pem: String,
}

pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-testbed CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The serving certificate (PEM chain: leaf, CA) and key for localhost and 127.0.0.1.
    pub(crate) fn serving_cert(&self) -> (String, String) {
        let key = KeyPair::generate().expect("generate serving key");
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(sans).expect("serving params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign serving");
        (
            format!("{}{}", cert.pem(), self.ca_pem),
            key.serialize_pem(),
        )
    }

    /// A client certificate the API server authenticates as `user` (CN) in `groups` (O).
    pub(crate) fn client_cert(&self, user: &str, groups: &[&str]) -> ClientCert {
        let key = KeyPair::generate().expect("generate client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign client");
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A fresh ECDSA P-256 key pair, PEM: the private key (PKCS#8) signs service-account
/// tokens, the public key verifies them.
pub(crate) fn signing_key_pem() -> (String, String) {
    let key = KeyPair::generate().expect("generate signing key");
    (key.serialize_pem(), key.public_key_pem())
}

impl Pki {
    /// Like [`Pki::client_cert`], for a given private key (PKCS#8 PEM, e.g. an RSA fixture
    /// key: rcgen cannot generate RSA keys with the ring backend). The returned `key_pem`
    /// is the key as given.
    pub(crate) fn client_cert_with_key(
        &self,
        user: &str,
        groups: &[&str],
        key_pkcs8_pem: &str,
    ) -> ClientCert {
        let key = KeyPair::from_pem(key_pkcs8_pem).expect("client key (PKCS#8 PEM)");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign client");
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key_pkcs8_pem.to_string(),
        }
    }
}
