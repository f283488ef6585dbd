//! The `Mesh` handle: the live snapshot, its updates, and their sources.

use crate::config::{Config, ConfigError, Locality, Shared};
use crate::snapshot::{Snapshot, Source};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::watch;

/// A handle on the mesh: the current [`Snapshot`] and the machinery that
/// replaces it. Cheap to clone; all clones share one state.
///
/// ```
/// use proxyless_core::{Mesh, config::Config};
///
/// let mesh = Mesh::from_config(Config::from_yaml(r#"
/// services: [{ name: web, routes: [{ to: [web-v1] }] }]
/// backends: [{ name: web-v1, endpoints: ["127.0.0.1:8080"] }]
/// "#).unwrap()).unwrap();
/// let snap = mesh.snapshot();
/// assert_eq!(snap.version(), 1);
/// assert!(snap.service_for_host("web").is_some());
/// ```
#[derive(Clone, Debug)]
pub struct Mesh {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    current: ArcSwap<Snapshot>,
    /// Serializes publishers so versions appear in order.
    publish: Mutex<u64>,
    tx: watch::Sender<Arc<Snapshot>>,
    accepted: AtomicU64,
    rejected: AtomicU64,
    last_error: Mutex<Option<Arc<ConfigError>>>,
    last_update: Mutex<SystemTime>,
    service: Mutex<Option<Arc<str>>>,
    #[cfg(feature = "tls")]
    identity: arc_swap::ArcSwapOption<crate::identity::tls::Identity>,
    /// Named identity sources (certificate providers, SDS secrets).
    #[cfg(feature = "tls")]
    identity_sources: crate::identity::tls::Registry,
    /// The config source attached (the xDS client, or one of the
    /// application's), if any.
    source: std::sync::OnceLock<Arc<dyn ConfigSource>>,
    /// The DNS names of DNS backends, followed once a config has some and
    /// a tokio runtime is at hand.
    #[cfg(feature = "dns")]
    dns: std::sync::OnceLock<Arc<dyn Follower>>,
}

/// A lookup of a DNS backend's name, from [`Mesh::lookup`].
#[cfg(feature = "dns")]
pub type DnsLookup = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Vec<std::net::IpAddr>, crate::snapshot::LookupError>,
            > + Send,
    >,
>;

/// What follows the DNS names of the config's DNS backends for a mesh
/// (feature `dns`).
#[cfg(feature = "dns")]
pub(crate) trait Follower: crate::snapshot::DnsView + Send + Sync + std::fmt::Debug {
    /// Follows the names `config` uses (and drops the others).
    fn follow(self: Arc<Self>, config: &Config);
    /// The addresses of `host` for a connection, if a DNS backend names it.
    fn lookup(&self, host: &str) -> Option<DnsLookup>;
    /// Every followed name and how its lookups went.
    fn status(&self) -> serde_json::Value;
}

/// A wait for a host's config, from [`Mesh::demand`].
pub type DemandWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What a config source tells the mesh, beyond the configs it publishes
/// with [`Mesh::update`] (see the `source` module). Every method has a default:
/// a source implements what applies to it.
pub trait ConfigSource: Send + Sync + std::fmt::Debug {
    /// Asks for the config of `authority`, a host no service of the current
    /// config claims, for a source that fetches hosts when they are first
    /// called (as xDS does). Returns a wait the request holds (bounded by
    /// the source: it must end even if no answer comes), or `None` when
    /// there is nothing to wait for (the source does not fetch on demand,
    /// or it already answered for this host).
    fn demand(&self, authority: &str) -> Option<DemandWait> {
        let _ = authority;
        None
    }

    /// The source's own state as JSON, for the admin server: what it is
    /// connected to, what it holds, how fresh it is.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// Why the source works in a degraded way, if it does (its task failed
    /// and was restarted, and has not worked since). The admin server's
    /// `/ready` says so while the last good config serves.
    fn degraded(&self) -> Option<String> {
        None
    }
}

/// Counters of config updates, for metrics and the admin server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpdateStatus {
    /// Updates accepted and published (the first load included).
    pub accepted: u64,
    /// Updates rejected (the last good snapshot kept serving).
    pub rejected: u64,
    /// The most recent rejection, if any.
    pub last_error: Option<Arc<ConfigError>>,
    /// When the current snapshot was published.
    pub last_update: SystemTime,
}

impl Mesh {
    fn with_snapshot(snapshot: Snapshot) -> Self {
        let snapshot = Arc::new(snapshot);
        let version = snapshot.version();
        let (tx, _) = watch::channel(snapshot.clone());
        Mesh {
            inner: Arc::new(Inner {
                current: ArcSwap::new(snapshot),
                publish: Mutex::new(version),
                tx,
                accepted: AtomicU64::new(u64::from(version > 0)),
                rejected: AtomicU64::new(0),
                last_error: Mutex::new(None),
                last_update: Mutex::new(SystemTime::now()),
                service: Mutex::new(None),
                #[cfg(feature = "tls")]
                identity: arc_swap::ArcSwapOption::empty(),
                #[cfg(feature = "tls")]
                identity_sources: Default::default(),
                source: std::sync::OnceLock::new(),
                #[cfg(feature = "dns")]
                dns: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A mesh with no config: every request passes through to the host it
    /// names. Its snapshot is version 0.
    pub fn empty() -> Self {
        Self::with_snapshot(Snapshot::empty(0))
    }

    /// A mesh waiting for its first config from `source` (not ready yet;
    /// requests pass through meanwhile).
    pub fn waiting(source: Source) -> Self {
        Self::with_snapshot(Snapshot::waiting(source))
    }

    /// A mesh serving `config`, validated first.
    pub fn from_config(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        unregistered_classifiers(&config)?;
        let snap = Snapshot::compile(config, 1, Source::Code).map_err(|e| match e {
            crate::snapshot::CompileError::Invalid(e) => e,
        })?;
        let mesh = Self::with_snapshot(snap);
        mesh.follow_dns(mesh.snapshot().config());
        Ok(mesh)
    }

    /// The current snapshot: one lock-free load. Hold it for one request,
    /// not across config changes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// Whether a config is serving: one has been published, or the mesh
    /// was made empty on purpose. A mesh waiting for its first config from
    /// a control plane is not ready, and its requests pass through to the
    /// hosts they name meanwhile. With the `tls` feature, a workload
    /// identity that is set but has never loaded (a Workload API socket
    /// that has not answered yet) also keeps the mesh not ready.
    pub fn is_ready(&self) -> bool {
        let snap = self.snapshot();
        let config = snap.version() > 0 || *snap.source() == Source::Empty;
        #[cfg(feature = "tls")]
        let config = config
            && self
                .inner
                .identity
                .load()
                .as_ref()
                .is_none_or(|i| i.is_ready())
            && self.inner.identity_sources.all_ready();
        config
    }

    /// Waits until [`is_ready`](Self::is_ready); bound it with a timeout of
    /// your own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use proxyless_core::{Mesh, config::Config, snapshot::Source};
    /// use std::time::Duration;
    ///
    /// let mesh = Mesh::waiting(Source::Code);
    /// assert!(!mesh.is_ready());
    /// let late = mesh.clone();
    /// tokio::spawn(async move { late.update(Config::default(), Source::Code) });
    /// tokio::time::timeout(Duration::from_secs(5), mesh.ready())
    ///     .await
    ///     .expect("a config within 5 s");
    /// assert!(mesh.is_ready());
    /// # }
    /// ```
    pub async fn ready(&self) {
        // Subscribed before looking, so a publish in between is not missed.
        let mut rx = self.inner.tx.subscribe();
        loop {
            #[cfg(feature = "tls")]
            {
                if let Some(identity) = self.identity() {
                    identity.ready().await;
                }
                for (_, source) in self.identity_sources() {
                    source.ready().await;
                }
            }
            if self.is_ready() {
                return;
            }
            let snap = self.snapshot();
            if snap.version() > 0 || *snap.source() == Source::Empty {
                continue; // ready but for an identity set meanwhile
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A subscription to new snapshots.
    pub fn subscribe(&self) -> Subscription {
        let mut rx = self.inner.tx.subscribe();
        rx.mark_unchanged();
        Subscription { rx }
    }

    /// Validates, compiles and publishes `config`; returns the new version.
    /// On error the current snapshot keeps serving, and the rejection is
    /// counted and logged.
    ///
    /// Services and backends shared with the running config (the same
    /// [`Shared`](crate::config::Shared) parts, as when the config was
    /// cloned from [`Snapshot::config`] and changed) are validated and
    /// compiled only for how they fit the rest, and their runtime state is
    /// kept by identity: a change costs what it touches.
    pub fn update(&self, mut config: Config, source: Source) -> Result<u64, ConfigError> {
        let running = self.snapshot();
        if let Err(e) = prepare(&mut config, running.config(), &source) {
            self.reject(e.clone());
            return Err(e);
        }
        let mut last = self.publishing();
        let version = *last + 1;
        // Validated above: compiled without validating again.
        let current = self.inner.current.load();
        let snap = Arc::new(Snapshot::compile_from(
            Arc::new(config),
            version,
            source,
            Some(&current),
            self.dns_view(),
        ));
        drop(current);
        *last = version;
        // Counters first, so whoever sees the new snapshot sees them too.
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        *self
            .inner
            .last_update
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = snap.created();
        self.install(snap.clone());
        drop(last);
        tracing::info!(version, source = %snap.source(), services = snap.services().len(), "mesh config published");
        self.follow_dns(snap.config());
        Ok(version)
    }

    /// The publish lock (the last version published): held while a
    /// snapshot is made and published, so versions appear in order.
    fn publishing(&self) -> std::sync::MutexGuard<'_, u64> {
        self.inner
            .publish
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `snap` the current snapshot and tells subscribers.
    fn install(&self, snap: Arc<Snapshot>) {
        self.inner.current.store(snap.clone());
        self.inner.tx.send_replace(snap);
    }

    /// What DNS answered so far, for compiling snapshots.
    fn dns_view(&self) -> &dyn crate::snapshot::DnsView {
        #[cfg(feature = "dns")]
        if let Some(r) = self.inner.dns.get() {
            return &**r;
        }
        &crate::snapshot::NoDns
    }

    #[cfg(feature = "dns")]
    pub(crate) fn dns_slot(&self) -> &std::sync::OnceLock<Arc<dyn Follower>> {
        &self.inner.dns
    }

    /// Follows the DNS names of `config`'s DNS backends (feature `dns`;
    /// needs a tokio runtime, else it starts with the first lookup a
    /// connection asks for).
    fn follow_dns(&self, config: &Config) {
        #[cfg(feature = "dns")]
        {
            if self.inner.dns.get().is_none() && !config.backends.iter().any(|b| b.dns.is_some()) {
                return;
            }
            if let Some(f) = self.dns_follower() {
                f.follow(config);
            }
        }
        #[cfg(not(feature = "dns"))]
        if config.backends.iter().any(|b| b.dns.is_some()) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("backends with `dns` need proxyless-core's `dns` feature; their names are looked up by the system per connection");
            });
        }
    }

    /// Publishes the running config again with what DNS answers now (the
    /// DNS task, when an answer changed): only backends whose answers
    /// changed are compiled again.
    #[cfg(feature = "dns")]
    pub(crate) fn republish_dns(&self) {
        let mut last = self.publishing();
        let current = self.inner.current.load_full();
        let snap = Snapshot::compile_from(
            current.config.clone(),
            *last + 1,
            current.source().clone(),
            Some(&current),
            self.dns_view(),
        );
        let same = snap.backends.len() == current.backends.len()
            && snap
                .backends
                .iter()
                .zip(&current.backends)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return;
        }
        *last = snap.version();
        let snap = Arc::new(snap);
        self.install(snap.clone());
        tracing::debug!(
            version = snap.version(),
            "mesh config published again with new DNS answers"
        );
    }

    /// The addresses of `host` when a DNS backend of the current config
    /// names it (feature `dns`): the last answer, or the first once it
    /// comes. `None` when no DNS backend names it (or without a tokio
    /// runtime), so the caller resolves it as it would otherwise. The
    /// mesh's HTTP connector asks this for every host it connects to.
    #[cfg(feature = "dns")]
    pub fn lookup(&self, host: &str) -> Option<DnsLookup> {
        self.dns_follower()?.lookup(host)
    }

    /// Every DNS name the mesh follows and how its lookups went (feature
    /// `dns`), for the admin server.
    #[cfg(feature = "dns")]
    pub fn dns_status(&self) -> serde_json::Value {
        self.inner
            .dns
            .get()
            .map_or(serde_json::Value::Array(Vec::new()), |r| r.status())
    }

    /// Records a rejected update (by a source that could not even decode
    /// it): counted, logged, and kept as the last error.
    pub fn reject(&self, error: ConfigError) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            current_version = self.snapshot().version(),
            "mesh config rejected, last good config keeps serving: {error}"
        );
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(error));
    }

    /// Counters of accepted and rejected updates.
    pub fn status(&self) -> UpdateStatus {
        UpdateStatus {
            accepted: self.inner.accepted.load(Ordering::Relaxed),
            rejected: self.inner.rejected.load(Ordering::Relaxed),
            last_error: self
                .inner
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            last_update: *self
                .inner
                .last_update
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// This workload's service name, if set: its inbound policy (mTLS
    /// mode, authorization) is the one servers made from this mesh apply.
    /// [`Mesh::from_env`] sets it from `MESH_SERVICE`; a mesh built in code
    /// has none until [`Mesh::set_service`].
    pub fn service(&self) -> Option<Arc<str>> {
        self.inner
            .service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Names this workload's service (for servers made from now on), or
    /// clears it with `None`. Every clone of this mesh sees it.
    pub fn set_service(&self, service: Option<&str>) {
        *self
            .inner
            .service
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            service.filter(|s| !s.is_empty()).map(Arc::from);
    }

    /// This mesh with its service named `service` (see [`Mesh::set_service`]).
    #[must_use]
    pub fn with_service(self, service: &str) -> Self {
        self.set_service(Some(service));
        self
    }

    /// Where this workload runs, if known: its clients prefer endpoints
    /// near it (see [`LocalityLb`](crate::config::LocalityLb)).
    /// [`Mesh::from_env`] sets it from `MESH_LOCALITY`
    /// (`region/zone/subzone`), or else from the xDS bootstrap's
    /// `node.locality`.
    pub fn locality(&self) -> Option<Locality> {
        self.snapshot().locality().cloned()
    }

    /// Sets where this workload runs (or clears it with `None`). It takes
    /// effect at once: the current config is published again, as a new
    /// version, with the new locality.
    ///
    /// ```
    /// use proxyless_core::{Mesh, config::Locality};
    /// let mesh = Mesh::empty();
    /// mesh.set_locality(Some("us-east1/us-east1-b".parse().unwrap()));
    /// assert_eq!(mesh.locality().unwrap().zone, "us-east1-b");
    /// ```
    pub fn set_locality(&self, locality: Option<Locality>) {
        let locality = locality.filter(|l| !l.is_empty()).map(Arc::new);
        let mut last = self.publishing();
        let current = self.inner.current.load_full();
        if current.locality == locality {
            return;
        }
        // A mesh still waiting for its first config stays waiting.
        let version = match current.version() {
            0 => 0,
            v => v + 1,
        };
        let snap = Arc::new(current.relocated(version, locality));
        *last = version;
        self.install(snap);
        tracing::info!(version, locality = ?self.snapshot().locality().map(ToString::to_string), "workload locality set");
    }

    /// Loads `config` as a candidate beside the live config, for shadow
    /// evaluation ([`crate::shadow`]): every request the live config
    /// decides is also decided under the candidate, with the same random
    /// draw, and where the two differ the difference is counted in the
    /// candidate's [report](crate::shadow::Report) (see
    /// [`Mesh::candidate`]). Nothing is ever sent by the candidate's
    /// decision, and the live config is untouched.
    ///
    /// An invalid candidate is refused with every problem, and a candidate
    /// already loaded stays. A candidate from the same `source` with the
    /// same services as the one loaded (a control plane's endpoint update,
    /// say) keeps its report; any other starts a new one. Replaces the
    /// candidate from any other source.
    ///
    /// ```
    /// use proxyless_core::{Mesh, config::Config, snapshot::Source};
    ///
    /// let live = r#"
    /// services: [{ name: web, routes: [{ to: [web-v1] }] }]
    /// backends: [{ name: web-v1, endpoints: ["127.0.0.1:8080"] }, { name: web-v2, endpoints: ["127.0.0.1:8081"] }]
    /// "#;
    /// let mesh = Mesh::from_config(Config::from_yaml(live).unwrap()).unwrap();
    /// let candidate = Config::from_yaml(&live.replace("to: [web-v1]", "to: [web-v2]")).unwrap();
    /// mesh.set_candidate(candidate, Source::Code).unwrap();
    /// assert_eq!(mesh.candidate().unwrap().report().source(), "code");
    /// ```
    pub fn set_candidate(&self, mut config: Config, source: Source) -> Result<(), ConfigError> {
        // As a live update: what equals the candidate loaded before is
        // shared with it, and neither validated nor compiled again.
        let before = self.snapshot().candidate().cloned();
        let empty = Config::default();
        let previous = before.as_ref().map_or(&empty, |c| c.snapshot.config());
        if let Err(e) = prepare(&mut config, previous, &source) {
            tracing::warn!(%source, "candidate config refused; the candidate loaded before (if any) stays: {e}");
            return Err(e);
        }
        let old = before.as_ref().map(|c| &c.snapshot);
        let compiled = Snapshot::compile_from(Arc::new(config), 0, source, old, self.dns_view());
        let mut last = self.publishing();
        let current = self.inner.current.load_full();
        let report = match current.candidate() {
            Some(old)
                if old.snapshot.source == compiled.source
                    && old.snapshot.config.services == compiled.config.services =>
            {
                old.report.clone()
            }
            _ => Arc::new(crate::shadow::Report::new(compiled.source.to_string())),
        };
        let services = compiled.services.len();
        let candidate = crate::snapshot::Candidate {
            snapshot: compiled,
            report,
        };
        let version = match current.version() {
            0 => 0,
            v => v + 1,
        };
        let snap = current.with_candidate(version, Some(Arc::new(candidate)));
        *last = version;
        self.install(Arc::new(snap));
        tracing::info!(
            version,
            services,
            "candidate config loaded for shadow evaluation"
        );
        Ok(())
    }

    /// Unloads the candidate config, if any, and returns it with its final
    /// report.
    pub fn clear_candidate(&self) -> Option<Arc<crate::snapshot::Candidate>> {
        let mut last = self.publishing();
        let current = self.inner.current.load_full();
        let was = current.candidate().cloned()?;
        let version = match current.version() {
            0 => 0,
            v => v + 1,
        };
        *last = version;
        self.install(Arc::new(current.with_candidate(version, None)));
        tracing::info!(version, "candidate config unloaded");
        Some(was)
    }

    /// The candidate config loaded beside the live one, with its report,
    /// if any (see [`Mesh::set_candidate`]).
    pub fn candidate(&self) -> Option<Arc<crate::snapshot::Candidate>> {
        self.snapshot().candidate().cloned()
    }

    /// This mesh with its locality set (see [`Mesh::set_locality`]).
    #[must_use]
    pub fn with_locality(self, locality: Locality) -> Self {
        self.set_locality(Some(locality));
        self
    }

    /// This workload's identity, if one is loaded.
    #[cfg(feature = "tls")]
    pub fn identity(&self) -> Option<crate::identity::tls::Identity> {
        self.inner.identity.load_full().map(|i| (*i).clone())
    }

    /// Sets this workload's identity (used for mTLS by clients and servers
    /// made from this mesh from now on).
    #[cfg(feature = "tls")]
    pub fn set_identity(&self, identity: crate::identity::tls::Identity) {
        tracing::info!(spiffe_id = ?identity.spiffe_id(), "workload identity set");
        self.inner.identity.store(Some(Arc::new(identity)));
        self.inner.identity_sources.forget_made();
    }

    /// Registers `identity` as the source `name` (a certificate provider
    /// instance of a gRPC bootstrap, `sds:<secret>` for an SDS secret),
    /// which backends' and listeners' TLS settings can name
    /// (`certificate`, `trust`). Until it has loaded, the mesh is not
    /// ready.
    #[cfg(feature = "tls")]
    pub fn set_identity_source(&self, name: &str, identity: crate::identity::tls::Identity) {
        tracing::info!(source = name, "identity source registered");
        self.inner.identity_sources.set(name, identity);
    }

    /// Forgets the identity source `name` (the config no longer names it).
    #[cfg(feature = "tls")]
    pub fn remove_identity_source(&self, name: &str) {
        tracing::info!(source = name, "identity source dropped");
        self.inner.identity_sources.remove(name);
    }

    /// The identity source registered as `name`.
    #[cfg(feature = "tls")]
    pub fn identity_source(&self, name: &str) -> Option<crate::identity::tls::Identity> {
        self.inner.identity_sources.get(name)
    }

    /// Every registered identity source, by name.
    #[cfg(feature = "tls")]
    pub fn identity_sources(&self) -> Vec<(String, crate::identity::tls::Identity)> {
        self.inner.identity_sources.all()
    }

    /// The identity a TLS side uses when its settings name `certificate`
    /// and `trust` sources (see [`BackendTls`](crate::config::BackendTls)):
    /// this workload's identity when neither is named.
    #[cfg(feature = "tls")]
    pub fn identity_for(
        &self,
        certificate: Option<&str>,
        trust: Option<&str>,
    ) -> Result<crate::identity::tls::Identity, crate::identity::tls::IdentityUnavailable> {
        self.inner
            .identity_sources
            .identity_for(certificate, trust, self.identity())
    }

    /// For a host no service claims: asks the config source for it, if the
    /// source fetches on demand (an xDS client subscribes to the host's
    /// listener the first time it is called), and returns a wait that ends
    /// when the host's config is served, the control plane says it has
    /// none, or the source's bound passes. `None` when there is nothing to
    /// wait for: the source does not fetch on demand, or it already
    /// answered for this host. The route layer calls this before passing a
    /// request through.
    ///
    /// ```
    /// let mesh = proxyless_core::Mesh::empty();
    /// assert!(mesh.demand("reviews:9080").is_none()); // no source to ask
    /// ```
    pub fn demand(&self, authority: &str) -> Option<DemandWait> {
        self.inner.source.get()?.demand(authority)
    }

    /// The config source's own state as JSON, when it keeps one: for a
    /// control plane, the connection, what is subscribed and held, the
    /// versions accepted, the last NACK and how long ago the last ACK was
    /// (how stale the serving config may be). The admin server shows it at
    /// `/xds`.
    pub fn source_status(&self) -> Option<serde_json::Value> {
        self.inner.source.get()?.status()
    }

    /// Why the config source is degraded, if it is: its task failed and was
    /// restarted and has not applied an update since. The last good config
    /// keeps serving meanwhile; the admin server's `/ready` says so.
    pub fn degraded(&self) -> Option<String> {
        self.inner.source.get()?.degraded()
    }

    /// Attaches the config source that feeds this mesh (its configs come
    /// through [`Mesh::update`]): its on-demand fetching, status and
    /// health are then the mesh's. One source per mesh: a second is
    /// refused and handed back.
    pub fn attach_source(
        &self,
        source: Arc<dyn ConfigSource>,
    ) -> Result<(), Arc<dyn ConfigSource>> {
        self.inner.source.set(source)
    }

    /// Whether `other` is a handle on the same mesh.
    pub fn same_as(&self, other: &Mesh) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    #[cfg(feature = "xds")]
    pub(crate) fn downgrade_xds(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    #[cfg(feature = "xds")]
    pub(crate) fn upgrade_xds(weak: &std::sync::Weak<Inner>) -> Option<Mesh> {
        weak.upgrade().map(|inner| Mesh { inner })
    }

    #[cfg(any(feature = "fs", feature = "dns"))]
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    #[cfg(any(feature = "fs", feature = "dns"))]
    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Mesh> {
        weak.upgrade().map(|inner| Mesh { inner })
    }
}

/// New snapshots as they are published.
#[derive(Debug)]
pub struct Subscription {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Subscription {
    /// Waits for a snapshot newer than the last one seen and returns it;
    /// `None` once the mesh is gone. A slow subscriber sees the newest
    /// snapshot, not every intermediate one; versions only ever increase.
    pub async fn next(&mut self) -> Option<Arc<Snapshot>> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// The latest snapshot, without waiting.
    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }
}

/// Makes the services and backends of `config` that equal the running
/// config's (by name and value) the running config's own [`Shared`] parts,
/// so that a config read afresh (a file edited, a config built in code)
/// costs what changed, as one built from the running config does.
///
/// [`Shared`]: crate::config::Shared
fn share_unchanged(config: &mut Config, running: &Config) {
    fn share<T: PartialEq>(new: &mut [Shared<T>], old: &[Shared<T>], name: impl Fn(&T) -> &str) {
        let mut by_name: Option<std::collections::HashMap<&str, &Shared<T>>> = None;
        for (i, n) in new.iter_mut().enumerate() {
            // Configs read or built again keep their order: the part at
            // the same place is the one to compare with.
            let o = match old.get(i) {
                Some(o) if name(o) == name(n) => o,
                _ => {
                    let by_name =
                        by_name.get_or_insert_with(|| old.iter().map(|o| (name(o), o)).collect());
                    match by_name.get(name(n)) {
                        Some(o) => o,
                        None => continue,
                    }
                }
            };
            if !Shared::same(n, o) && **n == **o {
                *n = o.clone();
            }
        }
    }
    share(&mut config.services, &running.services, |s| s.name.as_str());
    share(&mut config.backends, &running.backends, |b| b.name.as_str());
}

/// Refuses a config naming a classifier no code registered (the names
/// are the process's, not the config's: `meshctl check` cannot know them,
/// so this is checked where a mesh takes the config).
/// Readies `config` to replace `running`: the services and backends equal
/// to the running ones become the running ones' shared parts, and the rest
/// is validated (with the classifiers it names registered). An error
/// names the file the config came from, if any.
fn prepare(config: &mut Config, running: &Config, source: &Source) -> Result<(), ConfigError> {
    // Anything a published snapshot holds has passed validation.
    share_unchanged(config, running);
    let valid = config
        .validate_since(Some(running))
        .and_then(|()| unregistered_classifiers(config));
    valid.map_err(|e| match source {
        Source::File(p) => e.in_file(p),
        _ => e,
    })
}

fn unregistered_classifiers(config: &Config) -> Result<(), ConfigError> {
    use crate::config::{Problem, ProblemKind};
    use crate::policy::classify;
    let mut problems = Vec::new();
    for (si, s) in config.services.iter().enumerate() {
        let named = std::iter::once((format!("services[{si}].classifier"), &s.classifier)).chain(
            s.routes.iter().enumerate().map(|(ri, r)| {
                (
                    format!("services[{si}].routes[{ri}].classifier"),
                    &r.classifier,
                )
            }),
        );
        for (path, name) in named {
            let Some(name) = name else { continue };
            if classify::registered(name).is_none() {
                let shown: String = name.chars().take(80).collect();
                let known = classify::names();
                let known = if known.is_empty() {
                    "none is".to_owned()
                } else {
                    format!("registered: {}", known.join(", "))
                };
                problems.push(Problem::new(
                    ProblemKind::UndefinedReference,
                    path,
                    None,
                    format!("names classifier `{shown}`, which no code registered ({known})"),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::new(problems))
    }
}
