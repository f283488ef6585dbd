//! This workload's identity over rustls: its X.509 SVID (certificate chain
//! and key) and trust bundles per trust domain, delivered by a source (PEM
//! files here; the SPIFFE Workload API, SDS secrets and gRPC certificate
//! providers elsewhere), swappable while serving (rotation), and the TLS
//! configs built on them.
//!
//! Peers are verified the SPIFFE way: the certificate must carry exactly
//! one SPIFFE ID as a URI SAN and chain to the bundle of that ID's trust
//! domain (federation: several domains, each vouching only for its own);
//! host names are not checked. A client additionally requires the SPIFFE ID
//! the backend expects. Configs read the identity at each handshake, so a
//! rotated SVID or bundle applies to new handshakes while connections in
//! flight go on ([`Identity::still_trusts`] tells a server or pool which of
//! them a bundle change has left unverified).
//!
//! ```no_run
//! use proxyless_core::identity::tls::{Identity, IdentityFiles};
//! let files = IdentityFiles::from_env().expect("MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_CA");
//! let identity = Identity::load(&files)?;
//! println!("I am {:?}", identity.spiffe_id());
//! identity.watch(files);                         // rotation
//! let server = identity.server_config(true);     // client certificates required
//! # Ok::<(), proxyless_core::identity::tls::IdentityError>(())
//! ```

use super::{IdentityMatcher, SpiffeId, SpiffeIdError};
use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::watch;

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
    /// Material that is not what it should be (PEM or DER that does not
    /// parse, an empty chain or bundle, too many certificates).
    #[error("{what}: {problem}")]
    Material {
        /// Which part: `certificate`, `key`, `trust bundle for <domain>`.
        what: String,
        /// What is wrong with it.
        problem: String,
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
    /// The SVID's validity period has ended (or not begun).
    #[error(
        "the SVID {id} is not valid now: valid from {not_before} to {not_after} (Unix seconds)"
    )]
    NotValidNow {
        /// The SVID's SPIFFE ID.
        id: SpiffeId,
        /// Its `notBefore`.
        not_before: u64,
        /// Its `notAfter`.
        not_after: u64,
    },
    /// The bundles hold none for the SVID's own trust domain, so no peer of
    /// that domain could be verified.
    #[error("no trust bundle for this workload's trust domain `{0}`")]
    NoOwnBundle(String),
    /// What a named source (a Workload API socket, an SDS secret, a
    /// certificate provider) delivered could not be used.
    #[error("{origin}: {error}")]
    Source {
        /// The source, as its settings name it.
        origin: String,
        /// What was wrong.
        error: Box<IdentityError>,
    },
}

impl IdentityError {
    /// The same error, naming the source it came from.
    pub fn from_source(self, origin: impl Into<String>) -> Self {
        Self::Source {
            origin: origin.into(),
            error: Box::new(self),
        }
    }

    fn material(what: impl Into<String>, problem: impl fmt::Display) -> Self {
        Self::Material {
            what: what.into(),
            problem: problem.to_string(),
        }
    }
}

/// The most certificates a chain or one trust domain's bundle may hold, and
/// the most trust domains a bundle set may hold: a source that sends more
/// is refused rather than believed.
pub const MAX_CERTIFICATES: usize = 1_000;

/// An X.509 SVID: a certificate chain (leaf first) carrying one SPIFFE ID,
/// and the leaf's private key, checked to belong together and to be valid
/// now. Cheap to clone.
#[derive(Clone)]
pub struct Svid {
    certified: Arc<CertifiedKey>,
    id: SpiffeId,
    not_before: u64,
    not_after: u64,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("chain_len", &self.certified.cert.len())
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Svid {
    /// An SVID from its DER chain (leaf first) and PKCS#8, PKCS#1 or SEC1
    /// key, refused when the key does not match, the leaf carries no single
    /// SPIFFE ID, or the leaf is not valid now.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let Some(leaf) = chain.first() else {
            return Err(IdentityError::material(
                "certificate",
                "holds no certificate",
            ));
        };
        if chain.len() > MAX_CERTIFICATES {
            let problem = format!(
                "a chain of {} certificates (at most {MAX_CERTIFICATES})",
                chain.len()
            );
            return Err(IdentityError::material("certificate", problem));
        }
        let id = spiffe_id_of(leaf)?;
        let (not_before, not_after) = super::x509::validity(leaf).ok_or_else(|| {
            IdentityError::Certificate("the leaf's validity period cannot be read".into())
        })?;
        let now = unix_now();
        if now < not_before || now > not_after {
            return Err(IdentityError::NotValidNow {
                id,
                not_before,
                not_after,
            });
        }
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        Ok(Self {
            certified: Arc::new(certified),
            id,
            not_before,
            not_after,
        })
    }

    /// An SVID from PEM text: the chain (leaf first) and the key.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, IdentityError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .take(MAX_CERTIFICATES + 1)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                IdentityError::material("certificate", format!("not PEM certificates: {e}"))
            })?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| IdentityError::material("key", format!("holds no private key: {e}")))?;
        Self::from_der(chain, key)
    }

    /// The SPIFFE ID the SVID carries.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// When the leaf stops being valid, in seconds since the Unix epoch.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// When the leaf starts being valid, in seconds since the Unix epoch.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Trust bundles, one per trust domain: the CA certificates a peer of that
/// domain must chain to. Several domains are federation: a peer is verified
/// only against its own domain's bundle, so one domain's CA can never vouch
/// for another's identities. Cheap to clone.
#[derive(Clone, Default)]
pub struct TrustBundles {
    domains: BTreeMap<String, Arc<Bundle>>,
    /// CAs not tied to a trust domain (see [`TrustBundles::set_any_domain`]).
    any: Option<Arc<Bundle>>,
}

struct Bundle {
    der: Vec<CertificateDer<'static>>,
    roots: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.domains.iter().map(|(d, b)| (d.as_str(), b.der.len())))
            .entries(self.any.iter().map(|b| ("*", b.der.len())))
            .finish()
    }
}

impl PartialEq for TrustBundles {
    fn eq(&self, other: &Self) -> bool {
        self.domains.len() == other.domains.len()
            && self.any.as_ref().map(|b| &b.der) == other.any.as_ref().map(|b| &b.der)
            && self
                .domains
                .iter()
                .zip(&other.domains)
                .all(|((a, x), (b, y))| a == b && x.der == y.der)
    }
}

impl TrustBundles {
    /// No bundles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `trust_domain`'s bundle to `certificates` (DER), replacing any
    /// it had.
    pub fn insert_der(
        &mut self,
        trust_domain: &str,
        certificates: Vec<CertificateDer<'static>>,
    ) -> Result<(), IdentityError> {
        let what = format!("trust bundle for `{trust_domain}`");
        SpiffeId::new(&format!("spiffe://{trust_domain}"))
            .map_err(|e| IdentityError::material(&what, format!("not a trust domain: {e}")))?;
        if !self.domains.contains_key(trust_domain) && self.domains.len() >= MAX_CERTIFICATES {
            let problem = format!("more than {MAX_CERTIFICATES} trust domains");
            return Err(IdentityError::material(&what, problem));
        }
        let bundle = bundle(&what, certificates)?;
        self.domains
            .insert(trust_domain.to_owned(), Arc::new(bundle));
        Ok(())
    }

    /// Sets CAs that are not tied to a trust domain: they verify peers of
    /// any domain without a bundle of its own. This is what a bare CA file
    /// means (a gRPC certificate provider's `ca_certificate_file`, an SDS
    /// validation context, Istio's root certificate): the CA is trusted
    /// for whatever it signs, and the SPIFFE IDs the backend expects or the
    /// authorization rules still decide who is accepted.
    pub fn set_any_domain(
        &mut self,
        certificates: Vec<CertificateDer<'static>>,
    ) -> Result<(), IdentityError> {
        self.any = Some(Arc::new(bundle("CA certificates", certificates)?));
        Ok(())
    }

    /// [`set_any_domain`](Self::set_any_domain) from PEM text.
    pub fn set_any_domain_pem(&mut self, pem: &[u8]) -> Result<(), IdentityError> {
        let certificates = pem_certificates(pem, "CA certificates")?;
        self.set_any_domain(certificates)
    }

    /// Sets `trust_domain`'s bundle from PEM text.
    pub fn insert_pem(&mut self, trust_domain: &str, pem: &[u8]) -> Result<(), IdentityError> {
        let certificates = pem_certificates(pem, &format!("trust bundle for `{trust_domain}`"))?;
        self.insert_der(trust_domain, certificates)
    }

    /// The trust domains with a bundle (`*` for CAs of any domain).
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.domains
            .keys()
            .map(String::as_str)
            .chain(self.any.iter().map(|_| "*"))
    }

    /// The CA certificates of `trust_domain`'s bundle.
    pub fn certificates(&self, trust_domain: &str) -> Option<&[CertificateDer<'static>]> {
        self.domains.get(trust_domain).map(|b| b.der.as_slice())
    }

    /// How many bundles there are (CAs of any domain count as one).
    pub fn len(&self) -> usize {
        self.domains.len() + usize::from(self.any.is_some())
    }

    /// Whether there is no bundle at all.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.any.is_none()
    }

    /// The anchors that verify a peer of `trust_domain`: its own bundle,
    /// else the CAs of any domain.
    fn roots(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        self.domains
            .get(trust_domain)
            .or(self.any.as_ref())
            .map(|b| b.roots.as_slice())
    }
}

fn pem_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    CertificateDer::pem_slice_iter(pem)
        .take(MAX_CERTIFICATES + 1)
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::material(what, format!("not PEM certificates: {e}")))
}

/// A bundle of `certificates`, each usable as a trust anchor.
fn bundle(what: &str, certificates: Vec<CertificateDer<'static>>) -> Result<Bundle, IdentityError> {
    if certificates.is_empty() {
        return Err(IdentityError::material(what, "holds no certificate"));
    }
    if certificates.len() > MAX_CERTIFICATES {
        let problem = format!(
            "{} certificates (at most {MAX_CERTIFICATES})",
            certificates.len()
        );
        return Err(IdentityError::material(what, problem));
    }
    let roots = certificates
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| IdentityError::material(what, format!("{e:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Bundle {
        der: certificates,
        roots,
    })
}

/// One part of an identity (the SVID, or the trust bundles) as its source
/// last delivered it: the last good value, the source's name, its last
/// error, and a change counter.
#[derive(Debug)]
struct Slot<T> {
    current: ArcSwapOption<T>,
    /// Whether its source delivers this part at all (a certificate
    /// provider with only a CA file delivers no SVID).
    expected: bool,
    origin: Mutex<String>,
    error: Mutex<Option<String>>,
    changes: watch::Sender<u64>,
}

impl<T> Slot<T> {
    fn new(origin: &str, value: Option<T>) -> Arc<Self> {
        Self::expecting(origin, value, true)
    }

    fn expecting(origin: &str, value: Option<T>, expected: bool) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::new(value.map(Arc::new)),
            expected,
            origin: Mutex::new(origin.to_owned()),
            error: Mutex::new(None),
            changes: watch::Sender::new(0),
        })
    }

    /// Loaded, or never to be loaded by its source.
    fn ready(&self) -> bool {
        !self.expected || self.current.load().is_some()
    }

    fn store(&self, value: T) {
        self.current.store(Some(Arc::new(value)));
        *lock(&self.error) = None;
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn fail(&self, error: String) {
        *lock(&self.error) = Some(error);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What an identity holds and where it came from, for readiness checks and
/// the admin server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityStatus {
    /// Where the SVID comes from (a file, a socket, an SDS secret).
    pub svid_source: String,
    /// Where the trust bundles come from.
    pub trust_source: String,
    /// The SPIFFE ID presented, once an SVID has loaded.
    pub spiffe_id: Option<SpiffeId>,
    /// When the SVID expires (Unix seconds).
    pub not_after: Option<u64>,
    /// The trust domains with a bundle.
    pub trust_domains: Vec<String>,
    /// The last error of either source since its last good delivery.
    pub last_error: Option<String>,
    /// Whether what its sources deliver has loaded.
    pub ready: bool,
}

impl IdentityStatus {
    /// Whether both an SVID and bundles have loaded (the last good ones
    /// serve even while a source reports errors).
    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

/// This workload's identity, shared by its TLS configs; cheap to clone.
///
/// It holds an SVID and trust bundles, each delivered by a source (PEM
/// files, the SPIFFE Workload API, an SDS secret, a certificate provider)
/// and replaced while serving: each handshake reads the current ones. An
/// identity made [`pending`](Self::pending) has neither until its source
/// delivers; handshakes fail meanwhile and [`is_ready`](Self::is_ready)
/// says no. A delivery that does not load is recorded as the source's
/// error and the last good material keeps serving.
#[derive(Clone, Debug)]
pub struct Identity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    svid: Arc<Slot<Svid>>,
    trust: Arc<Slot<TrustBundles>>,
    provider: Arc<CryptoProvider>,
    clients: Mutex<HashMap<(IdentityMatcher, bool), Arc<rustls::ClientConfig>>>,
}

/// The crypto provider for every config: aws-lc-rs, chosen explicitly so a
/// second provider in the graph can never make rustls guess.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Identity {
    fn from_slots(svid: Arc<Slot<Svid>>, trust: Arc<Slot<TrustBundles>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                svid,
                trust,
                provider: provider(),
                clients: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// An identity waiting for `source` (its name in errors and status) to
    /// deliver an SVID and bundles.
    pub fn pending(source: impl Into<String>) -> Self {
        let source = source.into();
        Self::from_slots(Slot::new(&source, None), Slot::new(&source, None))
    }

    /// An identity waiting for `source` to deliver only the parts it says:
    /// an SVID (`svid`), trust bundles (`trust`), or both. A part it does
    /// not deliver does not hold readiness back; such an identity is meant
    /// to be combined ([`with_trust_of`](Self::with_trust_of)).
    pub fn pending_parts(source: impl Into<String>, svid: bool, trust: bool) -> Self {
        let source = source.into();
        Self::from_slots(
            Slot::expecting(&source, None, svid),
            Slot::expecting(&source, None, trust),
        )
    }

    /// An identity of `svid`, trusting `bundles`, which must hold the SVID's
    /// own trust domain.
    pub fn new(svid: Svid, bundles: TrustBundles, source: &str) -> Result<Self, IdentityError> {
        own_bundle(&svid, &bundles)?;
        Ok(Self::from_slots(
            Slot::new(source, Some(svid)),
            Slot::new(source, Some(bundles)),
        ))
    }

    /// A handle that does not keep this identity alive (for a source's
    /// task, which ends when the identity is dropped).
    pub fn downgrade(&self) -> WeakIdentity {
        WeakIdentity(Arc::downgrade(&self.inner))
    }

    /// An identity that presents this one's SVID and verifies peers with
    /// `other`'s bundles, each still following its own source (gRPC's
    /// certificate providers name the two separately).
    #[must_use]
    pub fn with_trust_of(&self, other: &Identity) -> Identity {
        Self::from_slots(self.inner.svid.clone(), other.inner.trust.clone())
    }

    /// Loads the identity in `files`; the bundle file is the SVID's own
    /// trust domain's.
    pub fn load(files: &IdentityFiles) -> Result<Self, IdentityError> {
        let (svid, bundles) = read_files(files)?;
        Self::new(svid, bundles, &files.cert.display().to_string())
    }

    /// An identity from PEM text: the certificate chain, the key, and the
    /// bundle of the SVID's own trust domain.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, IdentityError> {
        let (svid, bundles) = from_pem_parts(cert, key, ca)?;
        Self::new(svid, bundles, "PEM")
    }

    /// The SPIFFE ID this workload presents, once an SVID has loaded.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.inner
            .svid
            .current
            .load()
            .as_ref()
            .map(|s| s.id.clone())
    }

    /// The current SVID.
    pub fn svid(&self) -> Option<Arc<Svid>> {
        self.inner.svid.current.load_full()
    }

    /// The current trust bundles.
    pub fn bundles(&self) -> Option<Arc<TrustBundles>> {
        self.inner.trust.current.load_full()
    }

    /// Whether an SVID and bundles have loaded.
    pub fn is_ready(&self) -> bool {
        self.inner.svid.ready() && self.inner.trust.ready()
    }

    /// What this identity holds, where from, and its sources' last errors.
    pub fn status(&self) -> IdentityStatus {
        let svid = self.svid();
        let bundles = self.bundles();
        // The errors of the parts the sources deliver (one error recorded
        // on both parts of one source is shown once).
        let (svid_slot, trust_slot) = (&self.inner.svid, &self.inner.trust);
        let mut errors: Vec<String> = [
            svid_slot.expected.then(|| lock(&svid_slot.error).clone()),
            trust_slot.expected.then(|| lock(&trust_slot.error).clone()),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .collect();
        errors.dedup();
        IdentityStatus {
            svid_source: lock(&self.inner.svid.origin).clone(),
            trust_source: lock(&self.inner.trust.origin).clone(),
            spiffe_id: svid.as_ref().map(|s| s.id.clone()),
            not_after: svid.as_ref().map(|s| s.not_after),
            trust_domains: bundles
                .map(|b| b.trust_domains().map(str::to_owned).collect())
                .unwrap_or_default(),
            last_error: (!errors.is_empty()).then(|| errors.join("; ")),
            ready: self.is_ready(),
        }
    }

    /// Replaces the SVID and bundles together (a Workload API update); the
    /// bundles must hold the SVID's own trust domain.
    pub fn set(&self, svid: Svid, bundles: TrustBundles) -> Result<(), IdentityError> {
        own_bundle(&svid, &bundles)?;
        let id = svid.id.clone();
        let domains = bundles.len();
        self.inner.trust.store(bundles);
        self.inner.svid.store(svid);
        tracing::info!(spiffe_id = %id, trust_domains = domains, "workload identity loaded");
        Ok(())
    }

    /// Replaces the SVID alone (an SDS certificate secret).
    pub fn set_svid(&self, svid: Svid) {
        tracing::info!(spiffe_id = %svid.id, "workload SVID loaded");
        self.inner.svid.store(svid);
    }

    /// Replaces the trust bundles alone (an SDS validation secret); an
    /// empty set is refused.
    pub fn set_bundles(&self, bundles: TrustBundles) -> Result<(), IdentityError> {
        if bundles.is_empty() {
            return Err(IdentityError::material("trust bundles", "none given"));
        }
        tracing::info!(trust_domains = bundles.len(), "trust bundles loaded");
        self.inner.trust.store(bundles);
        Ok(())
    }

    /// Records that the source failed to deliver (`error` names it); the
    /// last good material keeps serving, and [`status`](Self::status)
    /// reports the error until the next good delivery.
    pub fn record_error(&self, error: &IdentityError) {
        tracing::error!("workload identity not updated, the last good one keeps serving: {error}");
        // On each part the source delivers: the next good delivery of that
        // part clears it.
        let (svid, trust) = (&self.inner.svid, &self.inner.trust);
        if svid.expected || !trust.expected {
            svid.fail(error.to_string());
        }
        if trust.expected {
            trust.fail(error.to_string());
        }
    }

    /// Renames the sources (shown in [`status`](Self::status)).
    pub fn set_source(&self, source: &str) {
        *lock(&self.inner.svid.origin) = source.to_owned();
        *lock(&self.inner.trust.origin) = source.to_owned();
    }

    /// A receiver that changes whenever the SVID, the bundles or a source's
    /// error changes (rotation, a new bundle, a failure).
    pub fn changes(&self) -> IdentityChanges {
        IdentityChanges {
            svid: self.inner.svid.changes.subscribe(),
            trust: self.inner.trust.changes.subscribe(),
        }
    }

    /// Waits until an SVID and bundles have loaded; bound it with a
    /// timeout of your own.
    pub async fn ready(&self) {
        let mut changes = self.changes();
        while !self.is_ready() {
            if !changes.changed().await {
                return;
            }
        }
    }

    /// Whether a peer chain (leaf first) that verified at its handshake
    /// still verifies against the current bundles; a connection whose peer
    /// no longer does (its CA was removed) should be closed.
    pub fn still_trusts(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        // Either usage: the check is the chain to a current anchor.
        [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ]
        .into_iter()
        .any(|usage| verify_chain(&self.inner, leaf, intermediates, UnixTime::now(), usage).is_ok())
    }

    /// Replaces the identity with the one in `files` if it loads; on error
    /// the current identity stays and the error is recorded.
    pub fn reload(&self, files: &IdentityFiles) -> Result<(), IdentityError> {
        let result = read_files(files).and_then(|(svid, bundles)| self.set(svid, bundles));
        if let Err(e) = &result {
            self.record_error(e);
        }
        result
    }

    /// Replaces the identity with PEM text if it loads.
    pub fn replace_pem(&self, cert: &[u8], key: &[u8], ca: &[u8]) -> Result<(), IdentityError> {
        let (svid, bundles) = from_pem_parts(cert, key, ca)?;
        self.set(svid, bundles)
    }

    /// Watches `files` and reloads on change (every `interval`); a change
    /// that does not load is logged and the current identity kept. The
    /// watcher ends when the last handle on this identity is dropped.
    pub fn watch(&self, files: IdentityFiles) {
        self.watch_every(files, Duration::from_millis(500));
    }

    /// [`watch`](Self::watch) with a chosen interval.
    pub fn watch_every(&self, files: IdentityFiles, interval: Duration) {
        let paths = vec![files.cert.clone(), files.key.clone(), files.ca.clone()];
        // A refusal is recorded (and logged) by `reload`.
        let load = move |identity: &Identity| drop(identity.reload(&files));
        if let Err(e) = self.poll_files("mesh-identity-watch", paths, interval, load) {
            tracing::error!("cannot watch the identity files: {e}");
        }
    }

    /// Polls `paths` every `interval` on a thread of its own until this
    /// identity is dropped, and calls `load` when their bytes changed and
    /// then held still for a moment (a writer finishing several files), or
    /// while the identity has not loaded yet. The one file watcher of the
    /// file source and of gRPC's `file_watcher` certificate provider.
    pub(crate) fn poll_files(
        &self,
        thread: &str,
        paths: Vec<PathBuf>,
        interval: Duration,
        load: impl Fn(&Identity) + Send + 'static,
    ) -> std::io::Result<()> {
        let weak = self.downgrade();
        let stamp = move || -> Option<Vec<u8>> {
            let mut all = Vec::new();
            for p in &paths {
                all.extend(std::fs::read(p).ok()?);
                all.push(0);
            }
            Some(all)
        };
        let mut last = stamp();
        std::thread::Builder::new()
            .name(thread.to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(identity) = weak.upgrade() else {
                        return;
                    };
                    let now = stamp();
                    if now == last && identity.is_ready() {
                        continue;
                    }
                    std::thread::sleep(interval.min(Duration::from_millis(500)) / 4);
                    if stamp() != now {
                        continue;
                    }
                    load(&identity);
                    last = now;
                }
            })
            .map(drop)
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
        let mut cache = lock(&self.inner.clients);
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

/// An [`Identity`] that is not kept alive by this handle.
#[derive(Clone, Debug)]
pub struct WeakIdentity(Weak<Inner>);

impl WeakIdentity {
    /// The identity, unless every [`Identity`] handle on it was dropped.
    pub fn upgrade(&self) -> Option<Identity> {
        self.0.upgrade().map(|inner| Identity { inner })
    }
}

/// Why no identity could be made for a TLS side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityUnavailable {
    /// No source named, and this workload has no identity.
    #[error(
        "this workload has no identity (set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_CA, or SPIFFE_ENDPOINT_SOCKET)"
    )]
    NoWorkloadIdentity,
    /// A source the config names is not registered (a certificate provider
    /// instance the bootstrap does not declare, an SDS secret not
    /// subscribed).
    #[error("identity source `{0}` is not known to this workload")]
    UnknownSource(String),
}

/// The identity sources a mesh knows by name (certificate provider
/// instances, SDS secrets), and the identities made of them, kept so a
/// pair of names always gives the same identity (and its cached client
/// configs).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sources: Mutex<BTreeMap<String, Identity>>,
    made: Mutex<HashMap<SourcePair, Identity>>,
}

/// The (certificate, trust) source names an identity was made of.
type SourcePair = (Option<String>, Option<String>);

/// The most identities made of named sources a mesh keeps (configs name
/// pairs; a control plane naming ever new ones cannot grow it unbounded).
const MADE_IDENTITIES: usize = 256;

impl Registry {
    pub(crate) fn set(&self, name: &str, identity: Identity) {
        lock(&self.sources).insert(name.to_owned(), identity);
        lock(&self.made).clear();
    }

    pub(crate) fn remove(&self, name: &str) {
        lock(&self.sources).remove(name);
        lock(&self.made).clear();
    }

    pub(crate) fn get(&self, name: &str) -> Option<Identity> {
        lock(&self.sources).get(name).cloned()
    }

    /// Whether every registered source has loaded (no copies made).
    pub(crate) fn all_ready(&self) -> bool {
        lock(&self.sources).values().all(Identity::is_ready)
    }

    pub(crate) fn all(&self) -> Vec<(String, Identity)> {
        lock(&self.sources)
            .iter()
            .map(|(n, i)| (n.clone(), i.clone()))
            .collect()
    }

    /// The workload identity changed: identities made with it are stale.
    pub(crate) fn forget_made(&self) {
        lock(&self.made).clear();
    }

    /// The identity presenting `certificate`'s SVID and trusting `trust`'s
    /// bundles (each: a named source, or `workload`); a named certificate
    /// source without a named trust source brings its own bundles.
    pub(crate) fn identity_for(
        &self,
        certificate: Option<&str>,
        trust: Option<&str>,
        workload: Option<Identity>,
    ) -> Result<Identity, IdentityUnavailable> {
        if certificate.is_none() && trust.is_none() {
            return workload.ok_or(IdentityUnavailable::NoWorkloadIdentity);
        }
        let key = (certificate.map(str::to_owned), trust.map(str::to_owned));
        if let Some(made) = lock(&self.made).get(&key) {
            return Ok(made.clone());
        }
        let find = |name: Option<&str>| match name {
            Some(n) => self
                .get(n)
                .ok_or_else(|| IdentityUnavailable::UnknownSource(n.to_owned())),
            None => workload
                .clone()
                .ok_or(IdentityUnavailable::NoWorkloadIdentity),
        };
        let presented = find(certificate)?;
        let made = match (certificate, trust) {
            (Some(c), Some(t)) if c == t => presented,
            (Some(_), None) => presented,
            _ => presented.with_trust_of(&find(trust)?),
        };
        let mut cache = lock(&self.made);
        if cache.len() >= MADE_IDENTITIES {
            cache.clear();
        }
        cache.insert(key, made.clone());
        Ok(made)
    }
}

/// Notices of an identity's changes (see [`Identity::changes`]).
#[derive(Debug)]
pub struct IdentityChanges {
    svid: watch::Receiver<u64>,
    trust: watch::Receiver<u64>,
}

impl IdentityChanges {
    /// Waits for the next change; `false` once the identity is gone.
    pub async fn changed(&mut self) -> bool {
        use std::future::Future;
        use std::task::Poll;
        let mut svid = std::pin::pin!(self.svid.changed());
        let mut trust = std::pin::pin!(self.trust.changed());
        std::future::poll_fn(|cx| {
            for changed in [svid.as_mut(), trust.as_mut()] {
                if let Poll::Ready(r) = changed.poll(cx) {
                    return Poll::Ready(r.is_ok());
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// The bundles must let this workload verify peers of its own domain.
fn own_bundle(svid: &Svid, bundles: &TrustBundles) -> Result<(), IdentityError> {
    let domain = svid.id.trust_domain();
    if bundles.roots(domain).is_none() {
        return Err(IdentityError::NoOwnBundle(domain.to_owned()));
    }
    Ok(())
}

fn read_files(files: &IdentityFiles) -> Result<(Svid, TrustBundles), IdentityError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| IdentityError::File {
            path: p.to_owned(),
            what: e.to_string(),
        })
    };
    let (cert, key, ca) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
    let name = |path: &Path, e: IdentityError| match e {
        IdentityError::Material { problem, .. } => IdentityError::File {
            path: path.to_owned(),
            what: problem,
        },
        other => other.from_source(path.display().to_string()),
    };
    let svid = Svid::from_pem(&cert, &key).map_err(|e| match &e {
        IdentityError::Material { what, .. } if what == "key" => name(&files.key, e),
        _ => name(&files.cert, e),
    })?;
    let mut bundles = TrustBundles::new();
    bundles
        .insert_pem(svid.id.trust_domain(), &ca)
        .map_err(|e| name(&files.ca, e))?;
    Ok((svid, bundles))
}

fn from_pem_parts(
    cert: &[u8],
    key: &[u8],
    ca: &[u8],
) -> Result<(Svid, TrustBundles), IdentityError> {
    let svid = Svid::from_pem(cert, key)?;
    let mut bundles = TrustBundles::new();
    bundles.insert_pem(svid.id.trust_domain(), ca)?;
    Ok((svid, bundles))
}

/// The most client configs [`Identity::client_config`] keeps.
pub const CLIENT_CONFIG_CACHE: usize = 1024;

/// The provider always supports its own safe defaults.
fn unreachable_config<T>(e: rustls::Error) -> T {
    panic!("rustls rejected its own default protocol versions: {e}")
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

impl Resolver {
    /// The current SVID's key; none while the identity is pending, which
    /// fails the handshake.
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .svid
            .current
            .load()
            .as_ref()
            .map(|s| s.certified.clone())
    }
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
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

/// Chains `end_entity` to the bundle of the trust domain its SPIFFE ID
/// names, for `usage`, and returns that ID. The ID is read before the chain
/// is trusted only to choose the bundle: a certificate is verified by its
/// own domain's CAs or not at all, so one domain's CA cannot vouch for
/// another's identities.
fn verify_chain(
    inner: &Inner,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<SpiffeId, rustls::Error> {
    let id = spiffe_id_of(end_entity).map_err(|e| refuse(format!("peer certificate: {e}")))?;
    let bundles = inner.trust.current.load();
    let Some(bundles) = bundles.as_ref() else {
        return Err(refuse("no trust bundle has loaded yet".into()));
    };
    let Some(roots) = bundles.roots(id.trust_domain()) else {
        return Err(refuse(format!(
            "peer {id}: no trust bundle for trust domain `{}`",
            id.trust_domain()
        )));
    };
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| refuse(format!("unparsable peer certificate: {e:?}")))?;
    ee.verify_for_usage(
        algorithms(inner).all,
        roots,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    /// A CA of one trust domain, for these tests.
    struct Ca {
        issuer: rcgen::Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
    }

    impl Ca {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self {
                der: cert.der().clone(),
                issuer: rcgen::Issuer::new(params, key),
            }
        }

        fn issue(&self, id: &str, days: std::ops::Range<i64>) -> Svid {
            let (chain, key) = self.issue_der(id, days);
            Svid::from_der(chain, key).unwrap()
        }

        fn issue_der(
            &self,
            id: &str,
            days: std::ops::Range<i64>,
        ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .subject_alt_names
                .push(SanType::URI(id.try_into().unwrap()));
            let now =
                rcgen::date_time_ymd(2026, 1, 1) + Duration::from_secs(unix_now() - 1_767_225_600);
            let at = |d: i64| {
                let span = Duration::from_secs(d.unsigned_abs() * 86_400);
                if d >= 0 { now + span } else { now - span }
            };
            params.not_before = at(days.start);
            params.not_after = at(days.end);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            (vec![cert.der().clone()], der)
        }

        fn bundle(&self, domain: &str) -> TrustBundles {
            let mut b = TrustBundles::new();
            b.insert_der(domain, vec![self.der.clone()]).unwrap();
            b
        }
    }

    fn identity(ca: &Ca, id: &str, bundles: TrustBundles) -> Identity {
        Identity::new(ca.issue(id, -1..30), bundles, "test").unwrap()
    }

    /// Two CAs, and `spiffe://home.test/me` trusting both domains.
    fn federated() -> (Ca, Ca, Identity) {
        let (home, partner) = (Ca::new(), Ca::new());
        let mut bundles = home.bundle("home.test");
        bundles
            .insert_der("partner.test", vec![partner.der.clone()])
            .unwrap();
        let me = identity(&home, "spiffe://home.test/me", bundles);
        (home, partner, me)
    }

    #[test]
    fn a_federated_domain_is_verified_by_its_own_bundle_only() {
        let (home, partner, me) = federated();
        let trusted = |svid: &Svid| me.still_trusts(svid.chain());
        assert!(trusted(&home.issue("spiffe://home.test/peer", -1..30)));
        assert!(trusted(
            &partner.issue("spiffe://partner.test/peer", -1..30)
        ));
        // Each CA vouches for its own domain only.
        assert!(!trusted(&home.issue("spiffe://partner.test/peer", -1..30)));
        assert!(!trusted(&partner.issue("spiffe://home.test/peer", -1..30)));
        // A domain without a bundle.
        assert!(!trusted(
            &home.issue("spiffe://elsewhere.test/peer", -1..30)
        ));
    }

    #[test]
    fn a_bundle_change_that_drops_a_ca_is_seen_by_still_trusts() {
        let (home, partner, me) = federated();
        let peer = partner.issue("spiffe://partner.test/peer", -1..30);
        assert!(me.still_trusts(peer.chain()));
        let mut changes = me.changes();
        me.set_bundles(home.bundle("home.test")).unwrap();
        assert!(!me.still_trusts(peer.chain()));
        let changed = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(changes.changed());
        assert!(changed, "a bundle change is notified");
    }

    #[test]
    fn a_pending_identity_is_not_ready_until_both_parts_load() {
        let ca = Ca::new();
        let me = Identity::pending("unix:///run/spire.sock");
        assert!(!me.is_ready() && me.spiffe_id().is_none());
        assert!(!me.still_trusts(ca.issue("spiffe://home.test/x", -1..30).chain()));
        me.set_svid(ca.issue("spiffe://home.test/me", -1..30));
        assert!(!me.is_ready(), "an SVID without bundles");
        me.set_bundles(ca.bundle("home.test")).unwrap();
        assert!(me.is_ready());
        let status = me.status();
        assert_eq!(status.svid_source, "unix:///run/spire.sock");
        assert_eq!(status.trust_domains, ["home.test"]);
        assert!(status.is_ready() && status.last_error.is_none());
    }

    #[test]
    fn bad_deliveries_are_refused_with_their_reason_and_the_last_good_serves() {
        let (home, other) = (Ca::new(), Ca::new());
        let me = identity(&home, "spiffe://home.test/me", home.bundle("home.test"));
        let good = me.svid().unwrap().chain()[0].clone();

        let (chain, key) = home.issue_der("spiffe://home.test/me", -30..-1);
        let expired = Svid::from_der(chain, key).unwrap_err().to_string();
        assert!(
            expired.contains("spiffe://home.test/me") && expired.contains("not valid now"),
            "{expired}"
        );

        let (chain, _) = home.issue_der("spiffe://home.test/me", -1..30);
        let (_, other_key) = other.issue_der("spiffe://home.test/me", -1..30);
        let mismatched = Svid::from_der(chain, other_key).unwrap_err();
        assert!(matches!(mismatched, IdentityError::Key(_)), "{mismatched}");

        let no_own = me
            .set(
                home.issue("spiffe://home.test/me", -1..30),
                other.bundle("other.test"),
            )
            .unwrap_err();
        assert!(no_own.to_string().contains("home.test"), "{no_own}");
        me.record_error(&no_own.from_source("unix:///run/spire.sock"));

        assert!(
            me.set_bundles(TrustBundles::new()).is_err(),
            "an empty bundle set"
        );
        let empty = TrustBundles::new()
            .insert_der("home.test", vec![])
            .unwrap_err();
        assert!(
            empty.to_string().contains("holds no certificate"),
            "{empty}"
        );
        let bad_domain = TrustBundles::new()
            .insert_der("Home.Test", vec![home.der.clone()])
            .unwrap_err();
        assert!(
            bad_domain.to_string().contains("not a trust domain"),
            "{bad_domain}"
        );

        // The last good identity still serves; the error is reported.
        assert_eq!(me.svid().unwrap().chain()[0], good);
        assert!(me.is_ready());
        let error = me.status().last_error.unwrap();
        assert!(
            error.starts_with("unix:///run/spire.sock: no trust bundle"),
            "{error}"
        );
        // The next good delivery clears it.
        me.set(
            home.issue("spiffe://home.test/me", -1..30),
            home.bundle("home.test"),
        )
        .unwrap();
        assert_eq!(me.status().last_error, None);
    }

    #[test]
    fn a_sources_error_clears_with_its_next_good_delivery_of_the_part_it_delivers() {
        let ca = Ca::new();
        let roots = Identity::pending_parts("SDS secret `ROOTCA`", false, true);
        roots.record_error(&IdentityError::material("trusted_ca", "not PEM"));
        assert!(roots.status().last_error.is_some());
        roots.set_bundles(ca.bundle("home.test")).unwrap();
        assert_eq!(roots.status().last_error, None, "{:?}", roots.status());
        let certificate = Identity::pending_parts("SDS secret `default`", true, false);
        certificate.record_error(&IdentityError::material("tls_certificate", "expired"));
        certificate.set_svid(ca.issue("spiffe://home.test/me", -1..30));
        assert_eq!(certificate.status().last_error, None);
        // A source of both parts: shown once, cleared by a whole delivery.
        let both = Identity::pending("unix:///agent.sock");
        both.record_error(&IdentityError::material(
            "the Workload API",
            "no identity issued",
        ));
        let error = both.status().last_error.unwrap();
        assert_eq!(error.matches("no identity issued").count(), 1, "{error}");
        both.set(
            ca.issue("spiffe://home.test/me", -1..30),
            ca.bundle("home.test"),
        )
        .unwrap();
        assert_eq!(both.status().last_error, None);
    }

    #[test]
    fn trust_from_another_identity_follows_that_identitys_source() {
        let (home, partner) = (Ca::new(), Ca::new());
        let certs = identity(&home, "spiffe://home.test/me", home.bundle("home.test"));
        let roots = Identity::pending("roots");
        let both = certs.with_trust_of(&roots);
        assert!(!both.is_ready());
        roots.set_bundles(partner.bundle("partner.test")).unwrap();
        assert!(both.is_ready());
        assert_eq!(both.spiffe_id().unwrap().as_str(), "spiffe://home.test/me");
        assert!(both.still_trusts(partner.issue("spiffe://partner.test/x", -1..30).chain()));
        assert!(!both.still_trusts(home.issue("spiffe://home.test/x", -1..30).chain()));
    }
}
