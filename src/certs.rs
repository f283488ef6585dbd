//! A development certificate authority for a SPIFFE trust domain, so that
//! mTLS runs locally and in tests in one step: `meshctl certs` writes its
//! files, tests issue what they need in memory. Not for production: the CA
//! key lives wherever you write it.
//!
//! ```
//! let ca = mesh::certs::DevCa::new("demo.local").unwrap();
//! let reviews = ca.issue_for("reviews").unwrap();
//! assert!(reviews.cert_pem.contains("BEGIN CERTIFICATE"));
//! assert_eq!(reviews.id.as_str(), "spiffe://demo.local/reviews");
//! let identity = proxyless_core::identity::tls::Identity::from_pem(
//!     reviews.cert_pem.as_bytes(), reviews.key_pem.as_bytes(), ca.ca_pem().as_bytes()).unwrap();
//! assert_eq!(identity.spiffe_id(), Some(reviews.id));
//! ```

use proxyless_core::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// Errors of the development CA.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A CA for one trust domain.
#[derive(Debug)]
pub struct DevCa {
    trust_domain: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// An issued workload identity, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// The certificate chain: the workload's certificate, then the CA's.
    pub cert_pem: String,
    /// The workload's private key.
    pub key_pem: String,
}

/// What to put in an issued certificate besides its SPIFFE ID.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// Valid from.
    pub not_before: OffsetDateTime,
    /// Valid until.
    pub not_after: OffsetDateTime,
    /// DNS names and IP addresses, for clients that check host names
    /// (curl, openssl); mesh peers check the SPIFFE ID only.
    pub dns_names: Vec<String>,
    /// Whether the SPIFFE ID goes in as a URI SAN (tests of refusals turn
    /// it off to make a leaf without one).
    pub spiffe_san: bool,
    /// Whether the certificate says it is a CA (tests of refusals: a CA
    /// certificate presented as a leaf).
    pub is_ca: bool,
    /// The extended key usages; both server and client auth by default.
    pub server_auth: bool,
    /// See `server_auth`.
    pub client_auth: bool,
}

impl Default for IssueOptions {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
            dns_names: vec!["localhost".into(), "127.0.0.1".into()],
            spiffe_san: true,
            is_ca: false,
            server_auth: true,
            client_auth: true,
        }
    }
}

impl DevCa {
    /// A new CA for `trust_domain` (a fresh P-256 key).
    pub fn new(trust_domain: &str) -> Result<Self, Error> {
        proxyless_core::identity::validate_trust_domain(trust_domain)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("mesh development CA for {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
        })
    }

    /// The CA certificate: the trust bundle.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues `spiffe://TRUST-DOMAIN/NAME`.
    pub fn issue_for(&self, name: &str) -> Result<Issued, Error> {
        let id = SpiffeId::from_parts(&self.trust_domain, &format!("/{name}"))?;
        self.issue(&id, &IssueOptions::default())
    }

    /// Issues a certificate for `id` (client and server use).
    pub fn issue(&self, id: &SpiffeId, options: &IssueOptions) -> Result<Issued, Error> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            id.path().trim_start_matches('/').replace('/', "."),
        );
        params.distinguished_name = dn;
        if options.spiffe_san {
            params
                .subject_alt_names
                .push(SanType::URI(id.as_str().try_into()?));
        }
        for name in &options.dns_names {
            match name.parse::<std::net::IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params
                    .subject_alt_names
                    .push(SanType::DnsName(name.as_str().try_into()?)),
            }
        }
        params.is_ca = if options.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if options.is_ca {
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        params.extended_key_usages = [
            (options.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
            (options.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
        ]
        .into_iter()
        .filter_map(|(on, usage)| on.then_some(usage))
        .collect();
        params.use_authority_key_identifier_extension = true;
        params.not_before = options.not_before;
        params.not_after = options.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            id: id.clone(),
            cert_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem` into `dir` (created if needed).
    pub fn write_ca(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), self.ca_pem())?;
        Ok(())
    }
}

impl Issued {
    /// Writes `NAME.pem` and `NAME-key.pem` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), Error> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{name}.pem")), &self.cert_pem)?;
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&key_path, &self.key_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}
