//! Semantic checks over a decoded config: references, weights, ranges,
//! regexes, names, addresses and hosts. Every problem is collected.

use super::decode::child;
use super::error::{Problem, ProblemKind, did_you_mean, suggestion};
use super::model::*;
use super::shared::Shared;
use crate::identity::{SpiffeId, validate_trust_domain};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

struct V<'a> {
    lines: &'a HashMap<String, u32>,
    problems: Vec<Problem>,
}

impl V<'_> {
    fn add(&mut self, kind: ProblemKind, path: &str, msg: impl Into<String>) {
        let line = self.lines.get(path).copied();
        self.problems.push(Problem::new(kind, path, line, msg));
    }

    fn positive(&mut self, path: &str, d: Duration) {
        if d.is_zero() {
            self.add(ProblemKind::OutOfRange, path, "must be greater than zero");
        }
        self.at_most_max(path, d);
    }

    /// Durations built in code skip the parser's ceiling: checked here.
    fn at_most_max(&mut self, path: &str, d: Duration) {
        if d > super::MAX_DURATION {
            self.add(
                ProblemKind::OutOfRange,
                path,
                format!("{d:?} is longer than the maximum of 365 days"),
            );
        }
    }

    fn percent(&mut self, path: &str, p: f64) {
        if !(0.0..=100.0).contains(&p) {
            self.add(
                ProblemKind::OutOfRange,
                path,
                format!("{p} is not a percentage between 0 and 100"),
            );
        }
    }

    fn regex(&mut self, path: &str, re: &str) {
        if let Err(e) = super::regex::compile_regex(re) {
            let msg = format!("invalid regular expression: {}", last_line(&e.to_string()));
            self.add(ProblemKind::InvalidRegex, path, msg);
        }
    }

    fn method(&mut self, path: &str, m: &str) {
        let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
        if !ok {
            let msg = format!("`{m}` is not an HTTP method; write it in upper case, e.g. GET");
            self.add(ProblemKind::InvalidValue, path, msg);
        }
    }
}

/// The regex crate's message ends with the reason on its last line.
fn last_line(s: &str) -> &str {
    let line = s
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim();
    line.strip_prefix("error: ").unwrap_or(line)
}

/// Checks `cfg`; `lines` maps field paths to source lines where known.
/// Services and backends shared with `known` (a config that passed, see
/// [`Shared`]) are checked only for what involves the rest of the config:
/// unique names and hosts, and the backends their routes name.
pub(crate) fn validate(
    cfg: &Config,
    lines: &HashMap<String, u32>,
    known: Option<&Config>,
) -> Vec<Problem> {
    let mut v = V {
        lines,
        problems: Vec::new(),
    };
    if cfg.version != 1 {
        let msg = format!(
            "version {} is not supported; this build reads version 1",
            cfg.version
        );
        v.add(ProblemKind::UnsupportedVersion, "version", msg);
    }
    if let Some(td) = &cfg.trust_domain
        && let Err(e) = validate_trust_domain(td)
    {
        v.add(
            ProblemKind::InvalidSpiffeId,
            "trust_domain",
            format!("`{td}`: {e}"),
        );
    }
    defaults(&mut v, &cfg.defaults);

    let known_services = Known::new(known.map(|k| k.services.as_slice()), &cfg.services);
    let known_backends = Known::new(known.map(|k| k.backends.as_slice()), &cfg.backends);
    let backend_names = Names::new(cfg.backends.iter().map(|b| b.name.as_str()));

    let mut seen_services = FastSet::with_capacity_and_hasher(cfg.services.len(), Fast::default());
    let mut host_owner: FastMap<Cow<'_, str>, &str> =
        FastMap::with_capacity_and_hasher(cfg.services.len(), Fast::default());
    for (i, s) in cfg.services.iter().enumerate() {
        let at = || format!("services[{i}]");
        let before = v.problems.len();
        name(
            &mut v,
            || child(&at(), "name"),
            &s.name,
            &mut seen_services,
            "service",
        );
        // A duplicate service already says so; its hosts would only repeat it.
        let duplicate = v.problems.len() > before;
        let hosts = s.host_names();
        let host_path = |j: usize| {
            if s.hosts.is_empty() {
                child(&at(), "name")
            } else {
                format!("{}.hosts[{j}]", at())
            }
        };
        let known = known_services.has(i, s);
        for (j, h) in hosts.iter().enumerate().filter(|_| !duplicate) {
            if !known && !is_hostname(h) {
                let msg =
                    format!("`{h}` is not a host name (letters, digits, `-` and `.`; no port)");
                v.add(ProblemKind::InvalidAddress, &host_path(j), msg);
                continue;
            }
            let key = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(h.to_ascii_lowercase())
            } else {
                Cow::Borrowed(h.as_str())
            };
            match host_owner.get(&key) {
                Some(owner) if *owner == s.name => {
                    let msg = format!("host `{h}` is listed twice");
                    v.add(ProblemKind::DuplicateName, &host_path(j), msg);
                }
                Some(owner) => {
                    let msg = format!("host `{h}` is already claimed by service `{owner}`");
                    v.add(ProblemKind::ConflictingHost, &host_path(j), msg);
                }
                None => {
                    host_owner.insert(key, &s.name);
                }
            }
        }
        if known {
            for (j, r) in s.routes.iter().enumerate() {
                let at = || format!("{}.routes[{j}]", at());
                for (k, wb) in r.to.iter().enumerate() {
                    reference(
                        &mut v,
                        || format!("{}.to[{k}].backend", at()),
                        &wb.backend,
                        &backend_names,
                    );
                }
                if let Some(m) = &r.mirror {
                    reference(
                        &mut v,
                        || format!("{}.mirror.backend", at()),
                        &m.backend,
                        &backend_names,
                    );
                }
            }
            continue;
        }
        let at = at();
        let mut route_names = HashSet::new();
        for (j, r) in s.routes.iter().enumerate() {
            route(
                &mut v,
                &format!("{at}.routes[{j}]"),
                r,
                &backend_names,
                &mut route_names,
            );
        }
    }

    let mut seen_backends = FastSet::with_capacity_and_hasher(cfg.backends.len(), Fast::default());
    for (i, b) in cfg.backends.iter().enumerate() {
        let at = || format!("backends[{i}]");
        if known_backends.has(i, b) {
            name(
                &mut v,
                || child(&at(), "name"),
                &b.name,
                &mut seen_backends,
                "backend",
            );
            continue;
        }
        backend(&mut v, &at(), b, &mut seen_backends);
    }

    let service_names = if cfg.inbound.is_empty() {
        Names::new(std::iter::empty())
    } else {
        Names::new(cfg.services.iter().map(|s| s.name.as_str()))
    };
    let mut seen_inbound = HashSet::new();
    for (i, p) in cfg.inbound.iter().enumerate() {
        let at = format!("inbound[{i}]");
        let sp = child(&at, "service");
        // A workload's own service need not be among those it calls (a
        // server fed by a control plane knows only its callees), so only a
        // near miss of a listed service is refused, as the typo it likely is.
        let near = if service_names.set.contains(p.service.as_str()) {
            String::new()
        } else {
            inbound_typo_of(&p.service, service_names.list.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default()
        };
        if !near.is_empty() {
            let msg = format!("no service named `{}`{near}", p.service);
            v.add(ProblemKind::UndefinedReference, &sp, msg);
        } else if !seen_inbound.insert(p.service.as_str()) {
            let msg = format!("service `{}` has more than one inbound policy", p.service);
            v.add(ProblemKind::DuplicateName, &sp, msg);
        }
        for (j, rule) in p.rules.iter().enumerate() {
            let rp = format!("{at}.rules[{j}]");
            for (k, from) in rule.from.iter().enumerate() {
                principal(&mut v, &format!("{rp}.from[{k}]"), from);
            }
            for (k, path) in rule.to.paths.iter().enumerate() {
                if !(path.starts_with('/') || path == "*") {
                    let msg = format!("`{path}` must start with `/` (or be `*`)");
                    v.add(
                        ProblemKind::InvalidValue,
                        &format!("{rp}.to.paths[{k}]"),
                        msg,
                    );
                }
            }
            for (k, m) in rule.to.methods.iter().enumerate() {
                v.method(&format!("{rp}.to.methods[{k}]"), m);
            }
        }
        if let Some(limit) = &p.rate_limit {
            rate_limit(&mut v, &child(&at, "rate_limit"), limit, true);
        }
        identity_sources(&mut v, &at, p.certificate.as_deref(), p.trust.as_deref());
    }
    v.problems
}

/// A token bucket and its key; `inbound` allows keying by caller.
fn rate_limit(v: &mut V<'_>, at: &str, l: &RateLimit, inbound: bool) {
    for (field, n) in [
        ("max_tokens", l.max_tokens),
        ("tokens_per_fill", l.tokens_per_fill),
        ("max_keys", l.max_keys),
    ] {
        if n == 0 {
            v.add(
                ProblemKind::OutOfRange,
                &child(at, field),
                "must be at least 1",
            );
        }
    }
    if l.max_keys > MAX_RATE_LIMIT_KEYS {
        let msg = format!("{} is above the most, {MAX_RATE_LIMIT_KEYS}", l.max_keys);
        v.add(ProblemKind::OutOfRange, &child(at, "max_keys"), msg);
    }
    if l.fill_interval < Duration::from_millis(50) {
        let msg = format!(
            "{} is shorter than 50ms (Envoy's least)",
            super::format_duration(l.fill_interval)
        );
        v.add(ProblemKind::OutOfRange, &child(at, "fill_interval"), msg);
    }
    v.at_most_max(&child(at, "fill_interval"), l.fill_interval);
    match &l.per {
        Some(RateLimitKey::Caller) if !inbound => {
            let msg = "`caller` keys an inbound limit; a route's limit is this workload's own";
            v.add(ProblemKind::InvalidValue, &child(at, "per"), msg);
        }
        Some(RateLimitKey::Header(h)) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
            let msg = format!("`{h}` is not a valid header name");
            v.add(ProblemKind::InvalidValue, &child(at, "per"), msg);
        }
        _ => {}
    }
}

fn defaults(v: &mut V<'_>, d: &Defaults) {
    v.positive("defaults.timeout", d.timeout);
    v.positive("defaults.connect_timeout", d.connect_timeout);
    let b = &d.retry_budget;
    if !(0.0..=1000.0).contains(&b.ratio) {
        let msg = format!("{} is outside 0..=1000", b.ratio);
        v.add(ProblemKind::OutOfRange, "defaults.retry_budget.ratio", msg);
    }
    v.positive("defaults.retry_budget.ttl", b.ttl);
}

/// A name that must be given and unique; `path` is made only for a problem.
fn name<'a, S: std::hash::BuildHasher>(
    v: &mut V<'_>,
    path: impl FnOnce() -> String,
    name: &'a str,
    seen: &mut HashSet<&'a str, S>,
    what: &str,
) {
    if name.is_empty() {
        let msg = format!("a {what} name may not be empty");
        v.add(ProblemKind::InvalidValue, &path(), msg);
    } else if !seen.insert(name) {
        let msg = format!("{what} `{name}` is defined twice");
        v.add(ProblemKind::DuplicateName, &path(), msg);
    }
}

fn route<'a>(
    v: &mut V<'_>,
    at: &str,
    r: &'a Route,
    backends: &Names<'_>,
    seen: &mut HashSet<&'a str>,
) {
    if let Some(n) = &r.name {
        name(v, || child(at, "name"), n, seen, "route");
    }
    for (k, m) in r.matches.iter().enumerate() {
        let mp = if r.matches.len() == 1 {
            child(at, "match")
        } else {
            format!("{at}.match[{k}]")
        };
        match &m.path {
            Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) if !p.starts_with('/') => {
                let msg = format!("`{p}` must start with `/`");
                let kind = if matches!(m.path, Some(PathMatch::Exact(_))) {
                    "exact"
                } else {
                    "prefix"
                };
                v.add(ProblemKind::InvalidValue, &format!("{mp}.path.{kind}"), msg);
            }
            Some(PathMatch::Regex(re)) => v.regex(&format!("{mp}.path.regex"), re),
            _ => {}
        }
        for (j, meth) in m.methods.iter().enumerate() {
            let p = if m.methods.len() == 1 {
                format!("{mp}.methods")
            } else {
                format!("{mp}.methods[{j}]")
            };
            v.method(&p, meth);
        }
        for (h, sm) in &m.headers {
            let hp = format!("{mp}.headers.{h}");
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                v.add(
                    ProblemKind::InvalidValue,
                    &hp,
                    format!("`{h}` is not a valid header name"),
                );
            }
            if let StringMatch::Regex(re) = sm {
                v.regex(&child(&hp, "regex"), re);
            }
        }
        for (q, sm) in &m.query {
            if let StringMatch::Regex(re) = sm {
                v.regex(&format!("{mp}.query.{q}.regex"), re);
            }
        }
    }

    if r.to.is_empty() {
        v.add(
            ProblemKind::MissingField,
            &child(at, "to"),
            "a route needs at least one backend",
        );
    }
    let mut total: u64 = 0;
    for (j, wb) in r.to.iter().enumerate() {
        reference(v, || format!("{at}.to[{j}].backend"), &wb.backend, backends);
        total += u64::from(wb.weight);
    }
    if !r.to.is_empty() && total == 0 {
        v.add(
            ProblemKind::ZeroWeight,
            &child(at, "to"),
            "the weights add up to zero",
        );
    }
    if let Some(t) = r.timeout {
        v.positive(&child(at, "timeout"), t);
    }
    if let Some(rp) = &r.retry {
        let p = child(at, "retry");
        if rp.attempts == 0 || rp.attempts > 10 {
            let msg = format!(
                "{} is outside 1..=10 (attempts include the first)",
                rp.attempts
            );
            v.add(ProblemKind::OutOfRange, &child(&p, "attempts"), msg);
        }
        if let Some(t) = rp.per_try_timeout {
            v.positive(&child(&p, "per_try_timeout"), t);
        }
        for (k, code) in rp.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                let msg = format!("{code} is not an HTTP status");
                v.add(
                    ProblemKind::OutOfRange,
                    &format!("{p}.retriable_status_codes[{k}]"),
                    msg,
                );
            }
        }
        if rp.on.contains(&RetryOn::RetriableStatusCodes) && rp.retriable_status_codes.is_empty() {
            let msg = "`retriable-status-codes` is listed but `retriable_status_codes` is empty";
            v.add(ProblemKind::MissingField, &child(&p, "on"), msg);
        }
        v.positive(&format!("{p}.backoff.base"), rp.backoff.base);
        v.at_most_max(&format!("{p}.backoff.max"), rp.backoff.max);
        if rp.backoff.max < rp.backoff.base {
            v.add(
                ProblemKind::OutOfRange,
                &format!("{p}.backoff.max"),
                "is shorter than `base`",
            );
        }
    }
    if let Some(f) = &r.fault {
        let p = child(at, "fault");
        if let Some(d) = &f.delay {
            v.positive(&format!("{p}.delay.fixed"), d.fixed);
            v.percent(&format!("{p}.delay.percent"), d.percent);
        }
        if let Some(a) = &f.abort {
            if !(200..=599).contains(&a.status) {
                let msg = format!("{} is not an HTTP status in 200..=599", a.status);
                v.add(ProblemKind::OutOfRange, &format!("{p}.abort.status"), msg);
            }
            v.percent(&format!("{p}.abort.percent"), a.percent);
        }
    }
    if let Some(m) = &r.mirror {
        let p = child(at, "mirror");
        reference(v, || child(&p, "backend"), &m.backend, backends);
        v.percent(&child(&p, "percent"), m.percent);
    }
    if let Some(limit) = &r.rate_limit {
        rate_limit(v, &child(at, "rate_limit"), limit, false);
    }
    if let Some(h) = &r.hedge {
        let p = child(at, "hedge");
        if !(2..=5).contains(&h.attempts) {
            let msg = format!("{} attempts; a hedging policy makes 2 to 5", h.attempts);
            v.add(ProblemKind::OutOfRange, &child(&p, "attempts"), msg);
        }
        match h.delay {
            HedgeDelay::Fixed(d) => v.positive(&child(&p, "delay"), d),
            HedgeDelay::Percentile(q) if !(50.0..=99.9).contains(&q) => {
                let msg = format!("p{q} is outside p50 to p99.9");
                v.add(ProblemKind::OutOfRange, &child(&p, "delay"), msg);
            }
            _ => {}
        }
        if !(h.budget_percent > 0.0 && h.budget_percent <= 100.0) {
            let msg = format!("{} is not a percentage above 0", h.budget_percent);
            v.add(ProblemKind::OutOfRange, &child(&p, "budget_percent"), msg);
        }
        if r.retry.is_some() {
            let msg = "a route has a retry policy or a hedging policy, not both (as in gRPC)";
            v.add(ProblemKind::InvalidValue, &p, msg);
        }
    }
}

/// Hashing for tables this process alone fills and probes (seeded per
/// process), faster than the standard one.
type Fast = foldhash::fast::RandomState;
type FastSet<T> = HashSet<T, Fast>;
type FastMap<K, V> = HashMap<K, V, Fast>;

/// The parts of a config that a known-good config shares.
struct Known<'a, T> {
    known: &'a [Shared<T>],
    /// When the two lists do not line up: the shared parts' addresses.
    unaligned: Option<FastSet<usize>>,
}

impl<'a, T> Known<'a, T> {
    fn new(known: Option<&'a [Shared<T>]>, parts: &[Shared<T>]) -> Self {
        let known = known.unwrap_or_default();
        // A config made from the known one by changing parts keeps their
        // places; otherwise look the parts up.
        let unaligned = (known.len() != parts.len() && !known.is_empty())
            .then(|| known.iter().map(Shared::addr).collect());
        Self { known, unaligned }
    }

    /// Whether `part`, at index `i`, is shared with the known config.
    fn has(&self, i: usize, part: &Shared<T>) -> bool {
        match &self.unaligned {
            Some(set) => set.contains(&Shared::addr(part)),
            None => self.known.get(i).is_some_and(|k| Shared::same(k, part)),
        }
    }
}

/// Names defined in a config: looked up by hash (a config may define
/// 100,000), listed in order for suggestions.
struct Names<'a> {
    list: Vec<&'a str>,
    set: FastSet<&'a str>,
}

impl<'a> Names<'a> {
    fn new(names: impl Iterator<Item = &'a str>) -> Self {
        let list: Vec<&str> = names.collect();
        let set = list.iter().copied().collect();
        Self { list, set }
    }
}

/// A reference to a backend; `path` is made only when it names none.
fn reference(v: &mut V<'_>, path: impl FnOnce() -> String, name: &str, backends: &Names<'_>) {
    if !backends.set.contains(name) {
        let msg = format!(
            "no backend named `{name}`{}",
            suggestion(name, backends.list.iter().copied())
        );
        v.add(ProblemKind::UndefinedReference, &path(), msg);
    }
}

fn backend<'a>(v: &mut V<'_>, at: &str, b: &'a Backend, seen: &mut FastSet<&'a str>) {
    name(v, || child(at, "name"), &b.name, seen, "backend");
    let mut addrs = HashSet::new();
    for (j, ep) in b.endpoints.iter().enumerate() {
        let ep_at = format!("{at}.endpoints[{j}]");
        if let Err(why) = check_address(&ep.address) {
            v.add(
                ProblemKind::InvalidAddress,
                &ep_at,
                format!("`{}`: {why}", ep.address),
            );
        } else if !addrs.insert(ep.address.as_str()) {
            v.add(
                ProblemKind::DuplicateName,
                &ep_at,
                format!("`{}` is listed twice", ep.address),
            );
        }
        if ep.weight == 0 {
            v.add(
                ProblemKind::ZeroWeight,
                &ep_at,
                "an endpoint weight must be at least 1",
            );
        }
        if ep.priority > MAX_PRIORITY {
            let msg = format!(
                "{} is above the highest priority, {MAX_PRIORITY}",
                ep.priority
            );
            v.add(ProblemKind::OutOfRange, &child(&ep_at, "priority"), msg);
        }
    }
    if let Some(lb) = &b.locality_lb {
        locality_lb(v, &child(at, "locality_lb"), lb);
    }
    if let Some(dns) = &b.dns {
        dns_discovery(v, at, b, dns);
    }
    if let LoadBalancer::RingHash { header } | LoadBalancer::Maglev { header } = &b.load_balancer
        && http::HeaderName::from_bytes(header.as_bytes()).is_err()
    {
        let msg = format!("`{header}` is not a valid header name");
        v.add(ProblemKind::InvalidValue, &child(at, "load_balancer"), msg);
    }
    if let Some(cb) = &b.circuit_breaker {
        let p = child(at, "circuit_breaker");
        for (f, val) in [
            ("max_requests", cb.max_requests),
            ("max_pending", cb.max_pending),
        ] {
            if val == 0 {
                v.add(ProblemKind::OutOfRange, &child(&p, f), "must be at least 1");
            }
        }
    }
    if let Some(od) = &b.outlier_detection {
        let p = child(at, "outlier_detection");
        if od.max_ejection_percent > 100 {
            let msg = format!("{} is not a percentage", od.max_ejection_percent);
            v.add(
                ProblemKind::OutOfRange,
                &child(&p, "max_ejection_percent"),
                msg,
            );
        }
        v.positive(&child(&p, "base_ejection"), od.base_ejection);
        v.at_most_max(&child(&p, "max_ejection"), od.max_ejection);
        if od.max_ejection < od.base_ejection {
            v.add(
                ProblemKind::OutOfRange,
                &child(&p, "max_ejection"),
                "is shorter than `base_ejection`",
            );
        }
    }
    if let Some(a) = &b.adaptive_concurrency {
        adaptive_concurrency(v, &child(at, "adaptive_concurrency"), a);
    }
    if let Some(tls) = &b.tls
        && tls.mode == BackendTlsMode::Mutual
    {
        let at = child(at, "tls");
        if tls.identity.is_none() && tls.identities.is_empty() {
            let msg = "mutual TLS needs the `identity` (SPIFFE ID) the endpoints must present";
            v.add(ProblemKind::MissingField, &at, msg);
        }
        for (i, p) in tls.identities.iter().enumerate() {
            if let Err(e) = crate::identity::IdentityMatcher::new([p.as_str()]) {
                v.add(
                    ProblemKind::InvalidSpiffeId,
                    &format!("{}[{i}]", child(&at, "identities")),
                    e.to_string(),
                );
            }
        }
        if let Some(sni) = &tls.sni
            && !is_dns_name(sni)
        {
            let msg = format!("`{sni}` is not a DNS name");
            v.add(ProblemKind::InvalidValue, &child(&at, "sni"), msg);
        }
        identity_sources(v, &at, tls.certificate.as_deref(), tls.trust.as_deref());
    }
}

/// The most requests an adaptive limit lets out at once.
pub(crate) const MAX_ADAPTIVE_LIMIT: u32 = 100_000;

/// An adaptive concurrency limit's bounds: 1 <= min <= initial <= max <=
/// 100,000; a tolerance of 1 to 10; a window of 1 ms to 1 min; a probe
/// interval of 1 s to 1 day.
fn adaptive_concurrency(v: &mut V<'_>, at: &str, a: &super::AdaptiveConcurrency) {
    if a.min_limit == 0 {
        v.add(
            ProblemKind::OutOfRange,
            &child(at, "min_limit"),
            "must be at least 1",
        );
    }
    if a.max_limit > MAX_ADAPTIVE_LIMIT || a.max_limit < a.min_limit {
        let msg = format!(
            "{} is not between `min_limit` ({}) and {MAX_ADAPTIVE_LIMIT}",
            a.max_limit, a.min_limit
        );
        v.add(ProblemKind::OutOfRange, &child(at, "max_limit"), msg);
    }
    if !(a.min_limit..=a.max_limit).contains(&a.initial_limit) {
        let msg = format!(
            "{} is not between `min_limit` ({}) and `max_limit` ({})",
            a.initial_limit, a.min_limit, a.max_limit
        );
        v.add(ProblemKind::OutOfRange, &child(at, "initial_limit"), msg);
    }
    if !(1.0..=10.0).contains(&a.tolerance) {
        let msg = format!("{} is not between 1 and 10", a.tolerance);
        v.add(ProblemKind::OutOfRange, &child(at, "tolerance"), msg);
    }
    for (f, d, lo, hi) in [
        (
            "window",
            a.window,
            Duration::from_millis(1),
            Duration::from_secs(60),
        ),
        (
            "probe_interval",
            a.probe_interval,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        ),
    ] {
        if !(lo..=hi).contains(&d) {
            let msg = format!(
                "{} is not between {} and {}",
                super::format_duration(d),
                super::format_duration(lo),
                super::format_duration(hi)
            );
            v.add(ProblemKind::OutOfRange, &child(at, f), msg);
        }
    }
}

/// The longest identity source name.
const MAX_IDENTITY_SOURCE: usize = 256;

/// Names of identity sources (`certificate`, `trust`): 1 to 256 printable
/// characters.
fn identity_sources(v: &mut V<'_>, at: &str, certificate: Option<&str>, trust: Option<&str>) {
    for (field, name) in [("certificate", certificate), ("trust", trust)] {
        let Some(name) = name else { continue };
        if name.is_empty() || name.len() > MAX_IDENTITY_SOURCE || name.chars().any(char::is_control)
        {
            let msg = format!(
                "an identity source name is 1 to {MAX_IDENTITY_SOURCE} printable characters (a certificate provider instance, or `sds:<secret>`)"
            );
            v.add(ProblemKind::InvalidValue, &child(at, field), msg);
        }
    }
}

fn dns_discovery(v: &mut V<'_>, at: &str, b: &Backend, dns: &Dns) {
    let p = child(at, "dns");
    if dns.mode == DnsMode::Logical && b.endpoints.len() != 1 {
        let msg = format!(
            "a `logical` DNS backend has exactly one endpoint (it has {})",
            b.endpoints.len()
        );
        v.add(ProblemKind::OutOfRange, &child(at, "endpoints"), msg);
    }
    if dns.servers.len() > MAX_DNS_SERVERS {
        let msg = format!("{} servers; at most {MAX_DNS_SERVERS}", dns.servers.len());
        v.add(ProblemKind::OutOfRange, &child(&p, "servers"), msg);
    }
    for (i, s) in dns.servers.iter().enumerate() {
        if s.parse::<std::net::SocketAddr>().is_err() {
            let msg = format!("`{s}` is not `ip:port`");
            v.add(
                ProblemKind::InvalidAddress,
                &format!("{p}.servers[{i}]"),
                msg,
            );
        }
    }
    v.positive(&child(&p, "min_refresh"), dns.min_refresh);
    v.at_most_max(&child(&p, "max_refresh"), dns.max_refresh);
    if dns.max_refresh < dns.min_refresh {
        let msg = "is shorter than `min_refresh`";
        v.add(ProblemKind::OutOfRange, &child(&p, "max_refresh"), msg);
    }
    for (j, ep) in b.endpoints.iter().enumerate() {
        if !ep.healthy {
            let msg = "a DNS backend's endpoints are its names; health comes from the lookups";
            v.add(
                ProblemKind::InvalidValue,
                &format!("{at}.endpoints[{j}].healthy"),
                msg,
            );
        }
    }
}

fn locality_lb(v: &mut V<'_>, at: &str, lb: &LocalityLb) {
    if !(1.0..=10.0).contains(&lb.overprovisioning) {
        let msg = format!("{} is outside 1.0 to 10.0", lb.overprovisioning);
        v.add(ProblemKind::OutOfRange, &child(at, "overprovisioning"), msg);
    }
    for (field, len) in [
        ("failover", lb.failover.len()),
        ("distribute", lb.distribute.len()),
        ("weights", lb.weights.len()),
    ] {
        if len > MAX_LOCALITY_RULES {
            let msg = format!("{len} entries; at most {MAX_LOCALITY_RULES}");
            v.add(ProblemKind::OutOfRange, &child(at, field), msg);
        }
    }
    let mut from_regions = HashSet::new();
    for (i, f) in lb.failover.iter().enumerate() {
        let p = format!("{at}.failover[{i}]");
        for (field, region) in [("from", &f.from), ("to", &f.to)] {
            if region.is_empty() || region.contains(['/', '*']) || region.len() > MAX_LOCALITY_PART
            {
                let msg = format!("`{region}` is not a region name");
                v.add(ProblemKind::InvalidValue, &child(&p, field), msg);
            }
        }
        if f.from == f.to {
            v.add(
                ProblemKind::InvalidValue,
                &p,
                "a region cannot fail over to itself",
            );
        }
        if !from_regions.insert(f.from.as_str()) {
            let msg = format!("region `{}` has two failover targets", f.from);
            v.add(ProblemKind::DuplicateName, &child(&p, "from"), msg);
        }
    }
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        let msg = "`distribute` and `failover` exclude each other (as in Istio)";
        v.add(ProblemKind::InvalidValue, at, msg);
    }
    for (i, d) in lb.distribute.iter().enumerate() {
        let p = format!("{at}.distribute[{i}]");
        if let Err(e) = check_locality_pattern(&d.from) {
            v.add(ProblemKind::InvalidValue, &child(&p, "from"), e.to_string());
        }
        if d.to.len() > MAX_LOCALITY_RULES {
            let msg = format!("{} entries; at most {MAX_LOCALITY_RULES}", d.to.len());
            v.add(ProblemKind::OutOfRange, &child(&p, "to"), msg);
        }
        let mut sum = 0u64;
        for (pattern, percent) in &d.to {
            if let Err(e) = check_locality_pattern(pattern) {
                v.add(
                    ProblemKind::InvalidValue,
                    &format!("{p}.to.{pattern}"),
                    e.to_string(),
                );
            }
            sum += u64::from(*percent);
        }
        if sum != 100 {
            let msg = format!("the percents add up to {sum}, not 100");
            v.add(ProblemKind::OutOfRange, &child(&p, "to"), msg);
        }
    }
    for (key, weight) in &lb.weights {
        let p = format!("{at}.weights.{key}");
        if let Err(e) = key.parse::<Locality>() {
            v.add(ProblemKind::InvalidValue, &p, e.to_string());
        }
        if *weight == 0 {
            v.add(
                ProblemKind::ZeroWeight,
                &p,
                "a locality weight must be at least 1",
            );
        }
    }
}

/// A DNS host name as SNI carries it: dot-separated labels of letters,
/// digits and `-` (not at either end), at most 63 bytes each, 253 in all.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `*`, a SPIFFE ID, or a SPIFFE ID prefix ending in `*`.
fn principal(v: &mut V<'_>, path: &str, p: &str) {
    if p == "*" {
        return;
    }
    let result = match p.strip_suffix('*') {
        // A prefix may end mid-segment (`spiffe://td/ns/prod-*`); check what
        // is there by completing it to a full ID.
        Some(prefix) => SpiffeId::new(&format!("{}x", prefix.trim_end_matches('/'))).map(|_| ()),
        None => SpiffeId::new(p).map(|_| ()),
    };
    if let Err(e) = result {
        let msg = format!("`{p}` is not a SPIFFE ID, a prefix ending in `*`, or `*`: {e}");
        v.add(ProblemKind::InvalidSpiffeId, path, msg);
    }
}

/// A DNS host name or an IP literal, without a port.
pub(crate) fn is_hostname(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The listed service an inbound policy's `service` is a likely typo of:
/// a near miss, unless the workload is named for a version or part of it
/// (`reviews-v1` beside `reviews`) or the other way round.
pub(crate) fn inbound_typo_of<'a>(
    service: &str,
    services: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    did_you_mean(service, services).filter(|s| !extends(service, s) && !extends(s, service))
}

/// Whether `name` is `base` with a separated part after it (`base-v1`,
/// `base.canary`, `base_2`).
fn extends(name: &str, base: &str) -> bool {
    name.strip_prefix(base)
        .is_some_and(|rest| rest.len() > 1 && rest.starts_with(['-', '.', '_']))
}

/// `ip:port`, `[ipv6]:port` or `dns-name:port`.
pub(crate) fn check_address(a: &str) -> Result<(), &'static str> {
    if let Ok(sa) = a.parse::<std::net::SocketAddr>() {
        return match sa.port() {
            0 => Err("the port must be a number in 1..=65535"),
            _ => Ok(()),
        };
    }
    let (host, port) = a.rsplit_once(':').ok_or("needs a port (`host:port`)")?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("the port must be a number in 1..=65535"),
        Ok(_) => {}
    }
    if host.starts_with('[') || host.contains(':') {
        return Err("not a valid IPv6 address (write `[addr]:port`)");
    }
    if !is_hostname(host) {
        return Err("the host is neither an IP address nor a DNS name");
    }
    Ok(())
}
