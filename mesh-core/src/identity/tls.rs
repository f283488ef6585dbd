//! This workload's identity over rustls: its X.509 SVID (certificate chain
//! and key) and the trust bundle, loaded from PEM files, swappable while
//! serving (rotation), and the TLS configs built on them.
//!
//! Peers are verified the SPIFFE way: the certificate must chain to the
//! trust bundle and carry exactly one SPIFFE ID as a URI SAN; host names are
//! not checked. A client additionally requires the SPIFFE ID the backend
//! expects. Configs read the identity at each handshake, so a rotated SVID
//! or bundle applies to new handshakes while connections in flight go on.
//!
//! ```no_run
//! use proxyless_core::identity::tls::{Identity, IdentityFiles};
//! let files = IdentityFiles::from_env().expect("MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_CA");
//! let identity = Identity::load(&files)?;
//! println!("I am {}", identity.spiffe_id());
//! identity.watch(files);                         // rotation
//! let server = identity.server_config(true);     // client certificates required
//! # Ok::<(), proxyless_core::identity::tls::IdentityError>(())
//! ```

use super::{IdentityMatcher, SpiffeId, SpiffeIdError};
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// The PEM files of an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf.
    pub key: PathBuf,
    /// The trust bundle: the CA certificates peers must chain to.
    pub ca: PathBuf,
}

impl IdentityFiles {
    /// The files named by `MESH_TLS_CERT`, `MESH_TLS_KEY` and `MESH_TLS_CA`,
    /// when all three are set.
    pub fn from_env() -> Option<Self> {
        let var = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Some(Self {
            cert: var("MESH_TLS_CERT")?,
            key: var("MESH_TLS_KEY")?,
            ca: var("MESH_TLS_CA")?,
        })
    }
}

/// Why an identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or holds no usable PEM.
    #[error("{}: {what}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key does not belong to the certificate, or cannot be used.
    #[error("the key does not match the certificate or cannot be used: {0}")]
    Key(String),
    /// The certificate carries no SPIFFE ID, or more than one.
    #[error("the certificate must carry exactly one SPIFFE ID URI SAN: {0}")]
    NoSpiffeId(String),
    /// The SPIFFE ID in the certificate is malformed.
    #[error("the certificate's SPIFFE ID is malformed: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    /// A certificate could not be parsed.
    #[error("cannot parse a certificate: {0}")]
    Certificate(String),
}

/// The loaded material: everything a handshake reads, swapped as a whole.
struct Material {
    certified: Arc<CertifiedKey>,
    id: SpiffeId,
    roots: Vec<TrustAnchor<'static>>,
    /// DER of the bundle, kept for `debug`-free inspection and reloads.
    bundle: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Material")
            .field("id", &self.id)
            .field("chain_len", &self.certified.cert.len())
            .field("bundle_len", &self.bundle.len())
            .finish()
    }
}

/// This workload's identity, shared by its TLS configs; cheap to clone.
#[derive(Clone, Debug)]
pub struct Identity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    material: ArcSwap<Material>,
    provider: Arc<CryptoProvider>,
    clients: Mutex<HashMap<(IdentityMatcher, bool), Arc<rustls::ClientConfig>>>,
}

/// The crypto provider for every config: aws-lc-rs, chosen explicitly so a
/// second provider in the graph can never make rustls guess.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Identity {
    /// Loads the identity in `files`.
    pub fn load(files: &IdentityFiles) -> Result<Self, IdentityError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| IdentityError::File {
                path: p.to_owned(),
                what: e.to_string(),
            })
        };
        Self::from_pem_with_paths(
            &read(&files.cert)?,
            &read(&files.key)?,
            &read(&files.ca)?,
            Some(files),
        )
    }

    /// An identity from PEM text: the certificate chain, the key, the bundle.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, IdentityError> {
        Self::from_pem_with_paths(cert, key, ca, None)
    }

    fn from_pem_with_paths(
        cert: &[u8],
        key: &[u8],
        ca: &[u8],
        files: Option<&IdentityFiles>,
    ) -> Result<Self, IdentityError> {
        let provider = provider();
        let material = load_material(cert, key, ca, files, &provider)?;
        Ok(Self {
            inner: Arc::new(Inner {
                material: ArcSwap::from_pointee(material),
                provider,
                clients: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The SPIFFE ID this workload presents.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.inner.material.load().id.clone()
    }

    /// Replaces the identity with the one in `files` if it loads; on error
    /// the current identity stays.
    pub fn reload(&self, files: &IdentityFiles) -> Result<(), IdentityError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| IdentityError::File {
                path: p.to_owned(),
                what: e.to_string(),
            })
        };
        self.replace_pem(&read(&files.cert)?, &read(&files.key)?, &read(&files.ca)?)
    }

    /// Replaces the identity with PEM text if it loads.
    pub fn replace_pem(&self, cert: &[u8], key: &[u8], ca: &[u8]) -> Result<(), IdentityError> {
        let material = load_material(cert, key, ca, None, &self.inner.provider)?;
        let id = material.id.clone();
        self.inner.material.store(Arc::new(material));
        tracing::info!(spiffe_id = %id, "workload identity loaded");
        Ok(())
    }

    /// Watches `files` and reloads on change (every `interval`); a change
    /// that does not load is logged and the current identity kept. The
    /// watcher ends when the last handle on this identity is dropped.
    pub fn watch(&self, files: IdentityFiles) {
        self.watch_every(files, Duration::from_millis(500));
    }

    /// [`watch`](Self::watch) with a chosen interval.
    pub fn watch_every(&self, files: IdentityFiles, interval: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stamp = |f: &IdentityFiles| -> Option<Vec<u8>> {
            let mut all = Vec::new();
            for p in [&f.cert, &f.key, &f.ca] {
                all.extend(std::fs::read(p).ok()?);
                all.push(0);
            }
            Some(all)
        };
        let mut last = stamp(&files);
        let spawned = std::thread::Builder::new()
            .name("mesh-identity-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { return };
                    let now = stamp(&files);
                    if now.is_none() || now == last {
                        continue;
                    }
                    // Let writers finish all three files.
                    std::thread::sleep(interval / 4);
                    let settled = stamp(&files);
                    if settled != now {
                        continue;
                    }
                    let identity = Identity { inner };
                    match identity.reload(&files) {
                        Ok(()) => {}
                        Err(e) => tracing::error!(
                            "new workload identity refused, the current one keeps serving: {e}"
                        ),
                    }
                    last = settled;
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot watch the identity files: {e}");
        }
    }

    /// A server config: presents this identity, verifies callers against the
    /// bundle; `require_client_cert` makes a client certificate mandatory.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let verifier = Arc::new(SpiffeClientVerifier {
            inner: self.inner.clone(),
            mandatory: require_client_cert,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_client_cert_verifier(verifier))
            .map(|b| b.with_cert_resolver(Arc::new(Resolver(self.inner.clone()))))
            .unwrap_or_else(unreachable_config);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client config that presents this identity and accepts only a
    /// server whose SPIFFE ID `expected` matches; `h2` offers HTTP/2 by
    /// ALPN, else HTTP/1.1. Configs are cached per (identities, protocol);
    /// the cache is cleared when it grows past [`CLIENT_CONFIG_CACHE`]
    /// entries, so a control plane that keeps naming new identities cannot
    /// grow it without bound.
    pub fn client_config(&self, expected: &IdentityMatcher, h2: bool) -> Arc<rustls::ClientConfig> {
        let key = (expected.clone(), h2);
        let mut cache = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(&key) {
            return c.clone();
        }
        if cache.len() >= CLIENT_CONFIG_CACHE {
            cache.clear();
        }
        let verifier = Arc::new(SpiffeServerVerifier {
            inner: self.inner.clone(),
            expected: expected.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_cert_resolver(Arc::new(Resolver(self.inner.clone())))
            })
            .unwrap_or_else(unreachable_config);
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let config = Arc::new(config);
        cache.insert(key, config.clone());
        config
    }
}

/// The most client configs [`Identity::client_config`] keeps.
pub const CLIENT_CONFIG_CACHE: usize = 1024;

/// The provider always supports its own safe defaults.
fn unreachable_config<T>(e: rustls::Error) -> T {
    panic!("rustls rejected its own default protocol versions: {e}")
}

fn load_material(
    cert: &[u8],
    key: &[u8],
    ca: &[u8],
    files: Option<&IdentityFiles>,
    provider: &CryptoProvider,
) -> Result<Material, IdentityError> {
    let path = |pick: fn(&IdentityFiles) -> &PathBuf, default: &str| {
        files.map_or_else(|| PathBuf::from(default), |f| pick(f).clone())
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::File {
            path: path(|f| &f.cert, "certificate"),
            what: format!("not PEM certificates: {e}"),
        })?;
    if chain.is_empty() {
        return Err(IdentityError::File {
            path: path(|f| &f.cert, "certificate"),
            what: "holds no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| IdentityError::File {
        path: path(|f| &f.key, "key"),
        what: format!("holds no private key: {e}"),
    })?;
    let bundle: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca)
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::File {
            path: path(|f| &f.ca, "trust bundle"),
            what: format!("not PEM certificates: {e}"),
        })?;
    if bundle.is_empty() {
        return Err(IdentityError::File {
            path: path(|f| &f.ca, "trust bundle"),
            what: "holds no certificate".into(),
        });
    }
    let roots = bundle
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| IdentityError::Certificate(format!("trust bundle: {e:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let id = spiffe_id_of(&chain[0])?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    Ok(Material {
        certified: Arc::new(certified),
        id,
        roots,
        bundle,
    })
}

/// The one SPIFFE ID in a certificate's URI SANs.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| IdentityError::Certificate(format!("{e:?}")))?;
    let uris: Vec<&str> = ee.valid_uri_names().collect();
    let spiffe: Vec<&&str> = uris.iter().filter(|u| u.starts_with("spiffe://")).collect();
    match spiffe.as_slice() {
        [one] => Ok(SpiffeId::new(one)?),
        [] => Err(IdentityError::NoSpiffeId(format!("URI SANs: {uris:?}"))),
        many => Err(IdentityError::NoSpiffeId(format!("found {}", many.len()))),
    }
}

#[derive(Debug)]
struct Resolver(Arc<Inner>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material.load().certified.clone())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.material.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn algorithms(inner: &Inner) -> &WebPkiSupportedAlgorithms {
    &inner.provider.signature_verification_algorithms
}

/// A verification failure rustls can carry, with our words.
fn refuse(msg: String) -> rustls::Error {
    #[derive(Debug)]
    struct Refused(String);
    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Refused {}
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused(msg)),
    )))
}

/// Chains `end_entity` to the bundle for `usage` and returns its SPIFFE ID.
fn verify_chain(
    inner: &Inner,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, rustls::Error> {
    let material = inner.material.load();
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| refuse(format!("unparsable peer certificate: {e:?}")))?;
    ee.verify_for_usage(
        algorithms(inner).all,
        &material.roots,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
        }
        webpki::Error::CertNotValidYet { .. } => {
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
        }
        webpki::Error::UnknownIssuer => {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        }
        other => refuse(format!("peer certificate does not verify: {other:?}")),
    })?;
    let id = spiffe_id_of(end_entity).map_err(|e| refuse(format!("peer certificate: {e}")))?;
    // The bundle is this trust domain's: a certificate it signed for
    // another trust domain is not a member of either (no federation).
    if id.trust_domain() != material.id.trust_domain() {
        return Err(refuse(format!(
            "peer {id} is not in trust domain {}",
            material.id.trust_domain()
        )));
    }
    Ok(id)
}

/// The handshake-signature checks both verifiers make the same way, with
/// the provider's algorithms (`self.inner`).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms(&self.inner))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms(&self.inner))
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            algorithms(&self.inner).supported_schemes()
        }
    };
}

/// The client's check of a server: chain, then the expected SPIFFE IDs.
#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: Arc<Inner>,
    expected: IdentityMatcher,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_chain(
            &self.inner,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if !self.expected.matches(&id) {
            return Err(refuse(format!(
                "server presented {id}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The server's check of a client: chain and a SPIFFE ID (which the server
/// reads after the handshake for authorization).
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<Inner>,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain(
            &self.inner,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The SPIFFE ID of a verified peer, from its certificate chain as rustls
/// reports it after the handshake.
pub fn peer_spiffe_id(chain: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    spiffe_id_of(chain?.first()?).ok()
}
