//! DNS discovery (feature `dns`): the names of the current config's DNS
//! backends, each followed by a task of its own.
//!
//! A name is looked up (A and AAAA, with hickory-resolver) when a config
//! first names it, and again when its records' TTL runs out, clamped to the
//! backend's `min_refresh` and `max_refresh`. A lookup that fails keeps the
//! last answer and is tried again after `min_refresh`, doubling up to
//! `max_refresh`. When an answer differs from the last, the mesh publishes
//! its config again: only the backends whose answers changed are compiled
//! again, and the data path keeps the state of the addresses that stayed
//! (it is keyed by address). A name no backend names any more is dropped
//! at its next lookup.
//!
//! The mesh's HTTP connector asks [`Mesh::lookup`] for the names DNS
//! backends use, so that the first request to a name waits for its first
//! lookup and no request waits after that.

use crate::Mesh;
use crate::config::{Config, Dns, DnsMode, MAX_DNS_ADDRESSES};
use crate::snapshot::{Addresses, DnsView, LookupError, split_host_port};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How long one lookup may take, all attempts included.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A name as a backend looks it up: with which servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    servers: Arc<[SocketAddr]>,
    host: Arc<str>,
}

/// What the mesh knows of one name.
#[derive(Debug)]
struct Name {
    /// The last good answer (`None` until the first).
    answer: watch::Sender<Option<Addresses>>,
    status: Mutex<Status>,
    /// The refresh bounds of the backends naming it (the tightest).
    bounds: Mutex<(Duration, Duration)>,
}

#[derive(Debug, Default, Clone)]
struct Status {
    lookups: u64,
    failures: u32,
    last_ok: Option<SystemTime>,
    last_error: Option<String>,
    next: Option<SystemTime>,
    truncated: bool,
}

/// The DNS names a mesh follows.
#[derive(Debug)]
pub(crate) struct Resolver {
    mesh: Weak<crate::mesh::Inner>,
    runtime: tokio::runtime::Handle,
    names: Mutex<HashMap<Key, Arc<Name>>>,
    /// The names the current config uses.
    wanted: Mutex<HashSet<Key>>,
    resolvers: Mutex<HashMap<Arc<[SocketAddr]>, TokioResolver>>,
}

impl Resolver {
    /// A resolver for `mesh`, whose tasks run on `runtime`.
    pub(crate) fn new(mesh: &Mesh, runtime: tokio::runtime::Handle) -> Self {
        Self {
            mesh: mesh.downgrade(),
            runtime,
            names: Mutex::default(),
            wanted: Mutex::default(),
            resolvers: Mutex::default(),
        }
    }

    /// Follows the names of `config`'s DNS backends: new ones are looked
    /// up at once; ones it no longer names are dropped at their next turn.
    pub(crate) fn follow(self: &Arc<Self>, config: &Config) {
        let mut wanted = HashSet::new();
        let mut bounds: HashMap<Key, (Duration, Duration)> = HashMap::new();
        for b in config.backends.iter() {
            let Some(dns) = &b.dns else {
                continue;
            };
            let servers = servers_of(dns);
            for e in &b.endpoints {
                let Some((host, _)) = split_host_port(&e.address) else {
                    continue;
                };
                let key = Key {
                    servers: servers.clone(),
                    host: host.into(),
                };
                let range = (dns.min_refresh, dns.max_refresh);
                bounds
                    .entry(key.clone())
                    .and_modify(|(lo, hi)| {
                        *lo = (*lo).min(range.0);
                        *hi = (*hi).min(range.1).max(*lo);
                    })
                    .or_insert(range);
                wanted.insert(key);
            }
        }
        // Wanted first: a task started below looks at it.
        *lock(&self.wanted) = wanted;
        let mut names = lock(&self.names);
        for (key, range) in bounds {
            match names.get(&key) {
                Some(name) => *lock(&name.bounds) = range,
                None => {
                    let name = Arc::new(Name {
                        answer: watch::Sender::new(None),
                        status: Mutex::default(),
                        bounds: Mutex::new(range),
                    });
                    names.insert(key.clone(), name.clone());
                    let this = Arc::downgrade(self);
                    self.runtime.spawn(follow_name(this, key, name));
                }
            }
        }
    }

    fn resolver(
        &self,
        servers: &Arc<[SocketAddr]>,
        host: &str,
    ) -> Result<TokioResolver, LookupError> {
        let mut resolvers = lock(&self.resolvers);
        if let Some(r) = resolvers.get(servers) {
            return Ok(r.clone());
        }
        let mut opts = ResolverOpts::default();
        // The mesh keeps answers itself, refreshed as their TTLs say.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| LookupError::new(host, format!("the system's DNS config: {e}")))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for s in servers.iter() {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[s.ip()],
                    s.port(),
                    true,
                ));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        };
        let resolver = builder.with_options(opts).build();
        resolvers.insert(servers.clone(), resolver.clone());
        Ok(resolver)
    }

    fn name(&self, dns: &Dns, host: &str) -> Option<Arc<Name>> {
        let key = Key {
            servers: servers_of(dns),
            host: host.into(),
        };
        lock(&self.names).get(&key).cloned()
    }

    /// The name `host` as some DNS backend of the current config looks it
    /// up, if one does.
    fn name_for_host(&self, host: &str) -> Option<Arc<Name>> {
        let names = lock(&self.names);
        names
            .iter()
            .find(|(k, _)| &*k.host == host)
            .map(|(_, n)| n.clone())
    }

    /// The addresses of `host` for a connection: the last answer, or the
    /// first once it comes (within the lookup's time); `None` when no DNS
    /// backend names `host`.
    pub(crate) fn lookup(
        &self,
        host: &str,
    ) -> Option<impl std::future::Future<Output = Result<Addresses, LookupError>> + Send + 'static>
    {
        let name = self.name_for_host(host)?;
        let host = host.to_owned();
        Some(async move {
            let mut rx = name.answer.subscribe();
            let first = tokio::time::timeout(LOOKUP_TIMEOUT, rx.wait_for(Option::is_some)).await;
            match first {
                Ok(Ok(answer)) => answer
                    .clone()
                    .ok_or_else(|| LookupError::new(&host, "no answer")),
                _ => {
                    let why = lock(&name.status).last_error.clone();
                    let reason = match why {
                        Some(w) => format!("no answer yet (the last lookup: {w})"),
                        None => format!("no answer within {LOOKUP_TIMEOUT:?}"),
                    };
                    Err(LookupError::new(&host, reason))
                }
            }
        })
    }

    /// Every followed name and how its lookups went, for the admin server.
    pub(crate) fn status(&self) -> serde_json::Value {
        let names = lock(&self.names);
        let mut out: Vec<serde_json::Value> = names
            .iter()
            .map(|(k, n)| {
                let st = lock(&n.status).clone();
                let answer = n.answer.borrow().clone();
                let ago = |t: Option<SystemTime>| {
                    t.and_then(|t| SystemTime::now().duration_since(t).ok())
                        .map(|d| d.as_secs_f64())
                };
                let due = st
                    .next
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .map(|d| d.as_secs_f64());
                serde_json::json!({
                    "name": &*k.host,
                    "servers": k.servers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "addresses": answer.map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>()),
                    "lookups": st.lookups,
                    "consecutive_failures": st.failures,
                    "last_error": st.last_error,
                    "seconds_since_answer": ago(st.last_ok),
                    "next_lookup_in_seconds": due,
                    "truncated": st.truncated,
                })
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::Value::Array(out)
    }
}

impl crate::mesh::Follower for Resolver {
    fn follow(self: Arc<Self>, config: &Config) {
        Resolver::follow(&self, config);
    }

    fn lookup(&self, host: &str) -> Option<crate::DnsLookup> {
        let wait = Resolver::lookup(self, host)?;
        Some(Box::pin(async move { wait.await.map(|a| a.to_vec()) }))
    }

    fn status(&self) -> serde_json::Value {
        Resolver::status(self)
    }
}

impl Mesh {
    /// The mesh's DNS follower, made on first use inside a tokio runtime.
    pub(crate) fn dns_follower(&self) -> Option<Arc<dyn crate::mesh::Follower>> {
        if let Some(f) = self.dns_slot().get() {
            return Some(f.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let made = self.dns_slot().get_or_init(|| {
            let r: Arc<dyn crate::mesh::Follower> = Arc::new(Resolver::new(self, runtime));
            r
        });
        // The config published before there was a follower.
        made.clone().follow(self.snapshot().config());
        Some(made.clone())
    }
}

impl DnsView for Resolver {
    fn addresses(&self, dns: &Dns, host: &str) -> Option<Addresses> {
        if dns.mode != DnsMode::Strict {
            return None;
        }
        self.name(dns, host)?.answer.borrow().clone()
    }
}

fn servers_of(dns: &Dns) -> Arc<[SocketAddr]> {
    dns.servers.iter().filter_map(|s| s.parse().ok()).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Looks `key` up now and then, for as long as the config names it and
/// the mesh lives.
async fn follow_name(resolver: Weak<Resolver>, key: Key, name: Arc<Name>) {
    loop {
        let Some(r) = resolver.upgrade() else {
            return;
        };
        if !lock(&r.wanted).contains(&key) {
            lock(&r.names).remove(&key);
            return;
        }
        let (min, max) = *lock(&name.bounds);
        let result = match r.resolver(&key.servers, &key.host) {
            Ok(resolver) => lookup_once(&resolver, &key.host).await,
            Err(e) => Err(e),
        };
        let wait = match result {
            Ok((mut addresses, ttl)) => {
                let truncated = addresses.len() > MAX_DNS_ADDRESSES;
                addresses.truncate(MAX_DNS_ADDRESSES);
                let changed = name
                    .answer
                    .borrow()
                    .as_deref()
                    .is_none_or(|before| before != addresses.as_slice());
                if changed {
                    name.answer.send_replace(Some(addresses.into()));
                }
                let mut st = lock(&name.status);
                st.lookups += 1;
                st.failures = 0;
                st.last_ok = Some(SystemTime::now());
                st.last_error = None;
                st.truncated = truncated;
                drop(st);
                record(&key.host, "ok");
                if truncated {
                    tracing::warn!(name = %key.host, "DNS answered more than {MAX_DNS_ADDRESSES} addresses; the first are used");
                }
                if changed && let Some(mesh) = Mesh::upgrade(&r.mesh) {
                    tracing::info!(name = %key.host, "DNS answer changed");
                    mesh.republish_dns();
                }
                ttl.clamp(min, max)
            }
            Err(e) => {
                let mut st = lock(&name.status);
                st.lookups += 1;
                st.failures = st.failures.saturating_add(1);
                let backoff = min
                    .saturating_mul(1u32 << st.failures.min(16).saturating_sub(1))
                    .min(max);
                tracing::warn!(name = %key.host, error = %e.reason, retry_in_ms = backoff.as_millis() as u64, "DNS lookup failed; the last answer stands");
                st.last_error = Some(e.reason);
                drop(st);
                record(&key.host, "error");
                backoff
            }
        };
        lock(&name.status).next = SystemTime::now().checked_add(wait);
        drop(r);
        tokio::time::sleep(wait).await;
    }
}

/// One lookup: the addresses in the order given, and how long they hold.
async fn lookup_once(
    resolver: &TokioResolver,
    host: &str,
) -> Result<(Vec<IpAddr>, Duration), LookupError> {
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(host))
        .await
        .map_err(|_| LookupError::new(host, format!("no answer within {LOOKUP_TIMEOUT:?}")))?
        .map_err(|e| LookupError::new(host, e.to_string()))?;
    let ttl = answer
        .valid_until()
        .saturating_duration_since(Instant::now());
    let mut addresses: Vec<IpAddr> = Vec::new();
    for ip in answer.iter() {
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    if addresses.is_empty() {
        return Err(LookupError::new(host, "no addresses"));
    }
    Ok((addresses, ttl))
}

/// `mesh_dns_lookups_total{name, result}`.
const LOOKUPS: &str = "mesh_dns_lookups_total";

fn record(name: &str, result: &'static str) {
    metrics::counter!(LOOKUPS, "name" => name.to_owned(), "result" => result).increment(1);
}

/// Describes the DNS metrics to the installed recorder.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        LOOKUPS,
        metrics::Unit::Count,
        "DNS lookups of backends' names, by name and result."
    );
}
