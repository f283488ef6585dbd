//! Route configurations -> the model's routes: matches, weighted
//! clusters, timeouts, retry policies, faults.

use crate::config::{
    Backoff, Fault, FaultAbort, FaultDelay, Name, PathMatch, RetryOn, RetryPolicy, Route,
    RouteMatch, StringMatch, WeightedBackend,
};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};

use super::{MAX_RETRIES, dur};
use crate::xds::error::{XdsError, at};

/// One xDS route of route configuration `rc_name` (its `i`th): the model's
/// route, the clusters it names added to `clusters`. Errors are located
/// inside the route (`match.headers[..]`, `route.retry_policy`, ...).
pub(super) fn route_of(
    xr: &envoy_types::pb::envoy::config::route::v3::Route,
    i: usize,
    rc_name: &str,
    clusters: &mut BTreeSet<Name>,
    warnings: &mut Vec<String>,
) -> Result<Route, XdsError> {
    let where_ = format!("route {i} of `{rc_name}`");
    let m = xr.r#match.as_ref().ok_or_else(|| at("match", "no match"))?;
    let matches = match_of(m).map_err(|e| e.at("match"))?;
    let action = match &xr.action {
        Some(route::Action::Route(a)) => a,
        _ => {
            return Err(at(
                "action",
                "only route actions are supported (not redirects or direct responses)",
            ));
        }
    };
    let to = backends_of(action, clusters).map_err(|e| e.at("route"))?;
    let timeout = dur(&action.timeout)
        .or_else(|| {
            action
                .max_stream_duration
                .as_ref()
                .and_then(|m| dur(&m.max_stream_duration))
        })
        .filter(|d| !d.is_zero());
    let retry = action
        .retry_policy
        .as_ref()
        .map(|p| retry_of(p, &where_, warnings));
    let mirror = action.request_mirror_policies.first().map(|m| {
        let backend = Name::new(&m.cluster);
        clusters.insert(backend.clone());
        let percent = percent_of(
            m.runtime_fraction
                .as_ref()
                .and_then(|f| f.default_value.as_ref()),
        );
        crate::config::Mirror { backend, percent }
    });
    let fault = faults_in(&xr.typed_per_filter_config, &where_, warnings)
        .map_err(|e| e.at("typed_per_filter_config"))?;
    let rate_limit = rate_limit_in(&xr.typed_per_filter_config, &where_, warnings)
        .map_err(|e| e.at("typed_per_filter_config"))?;
    let (retry, hedge) = hedge_of(xr, action, retry, &where_, warnings)?;
    Ok(Route {
        name: Some(if xr.name.is_empty() {
            Name::new(&format!("route-{i}"))
        } else {
            Name::new(&xr.name)
        }),
        matches,
        to,
        timeout,
        retry: retry.map(crate::config::Shared::new),
        fault: fault.map(Box::new),
        mirror: mirror.map(Box::new),
        rate_limit: rate_limit.map(Box::new),
        hedge: hedge.map(Box::new),
        classifier: None,
    })
}

/// A route match: path, `:method`, headers, query parameters; no
/// condition at all is an empty list (match everything).
fn match_of(
    m: &envoy_types::pb::envoy::config::route::v3::RouteMatch,
) -> Result<Vec<RouteMatch>, XdsError> {
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) if p == "/" || p.is_empty() => None,
        Some(route_match::PathSpecifier::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
        Some(route_match::PathSpecifier::Path(p)) => Some(PathMatch::Exact(p.clone())),
        Some(route_match::PathSpecifier::SafeRegex(r)) => Some(PathMatch::Regex(r.regex.clone())),
        Some(_) => {
            return Err(at(
                "path_specifier",
                "this kind of path match is not supported",
            ));
        }
        None => None,
    };
    let mut headers = BTreeMap::new();
    let mut methods = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let sm = header_match(h).map_err(|e| e.at(format!("headers[{i}]")))?;
        if h.name == ":method"
            && let StringMatch::Exact(m) = &sm
        {
            methods.push(m.clone());
            continue;
        }
        headers.insert(h.name.clone(), sm);
    }
    let mut query = BTreeMap::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let sm = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(s)) => string_match(s).ok_or_else(|| {
                at(
                    format!("query_parameters[{i}]"),
                    "query match not supported",
                )
            })?,
            Some(Q::PresentMatch(p)) => StringMatch::Present(*p),
            None => StringMatch::Present(true),
        };
        query.insert(q.name.clone(), sm);
    }
    if path.is_none() && headers.is_empty() && query.is_empty() && methods.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![RouteMatch {
        path,
        methods,
        headers,
        query,
    }])
}

/// One header condition (inverted only as "absent").
fn header_match(
    h: &envoy_types::pb::envoy::config::route::v3::HeaderMatcher,
) -> Result<StringMatch, XdsError> {
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as H;
    let unsupported = || XdsError::new(format!("header `{}` match not supported", h.name));
    // The deprecated forms are still what many control planes send.
    #[allow(deprecated)]
    let sm = match &h.header_match_specifier {
        Some(H::ExactMatch(v)) => StringMatch::Exact(v.clone()),
        Some(H::PrefixMatch(v)) => StringMatch::Prefix(v.clone()),
        Some(H::SafeRegexMatch(r)) => StringMatch::Regex(r.regex.clone()),
        Some(H::PresentMatch(p)) => StringMatch::Present(*p != h.invert_match),
        Some(H::StringMatch(s)) => string_match(s).ok_or_else(unsupported)?,
        _ => return Err(unsupported()),
    };
    if h.invert_match && !matches!(h.header_match_specifier, Some(H::PresentMatch(_))) {
        return Err(XdsError::new("inverted header matches are not supported"));
    }
    Ok(sm)
}

/// The weighted backends of a route action, each added to `clusters`.
fn backends_of(
    action: &envoy_types::pb::envoy::config::route::v3::RouteAction,
    clusters: &mut BTreeSet<Name>,
) -> Result<Vec<WeightedBackend>, XdsError> {
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => {
            let backend = Name::new(c);
            clusters.insert(backend.clone());
            Ok(vec![WeightedBackend { backend, weight: 1 }])
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => Ok(wc
            .clusters
            .iter()
            .map(|c| {
                let backend = Name::new(&c.name);
                clusters.insert(backend.clone());
                WeightedBackend {
                    backend,
                    weight: c.weight.as_ref().map_or(0, |w| w.value),
                }
            })
            .collect()),
        _ => Err(at(
            "cluster_specifier",
            "route to a cluster header or plugin is not supported",
        )),
    }
}

/// A retry policy: what the model has no condition for is a warning, more
/// retries than the model allows are clamped (with a warning).
fn retry_of(
    p: &envoy_types::pb::envoy::config::route::v3::RetryPolicy,
    where_: &str,
    warnings: &mut Vec<String>,
) -> RetryPolicy {
    let mut on = Vec::new();
    for cond in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        match RetryOn::ALL.iter().find(|(n, _)| *n == cond) {
            Some((_, v)) => on.push(*v),
            None => warnings.push(format!(
                "{where_}: retry_on `{cond}` is not supported, ignored"
            )),
        }
    }
    let d = Backoff::default();
    let back = p.retry_back_off.as_ref();
    let base = back.and_then(|b| dur(&b.base_interval)).unwrap_or(d.base);
    let retries = p.num_retries.as_ref().map_or(1, |n| n.value);
    if retries > MAX_RETRIES {
        warnings.push(format!(
            "{where_}: num_retries {retries} clamped to the supported maximum of {MAX_RETRIES}"
        ));
    }
    RetryPolicy {
        attempts: retries.min(MAX_RETRIES) + 1,
        per_try_timeout: dur(&p.per_try_timeout),
        on,
        retriable_status_codes: p
            .retriable_status_codes
            .iter()
            .map(|c| u16::try_from(*c).unwrap_or(u16::MAX))
            .collect(),
        backoff: Backoff {
            base,
            max: back
                .and_then(|b| dur(&b.max_interval))
                .unwrap_or_else(|| base.saturating_mul(10).min(crate::config::MAX_DURATION)),
        },
        ..RetryPolicy::default()
    }
}

/// A percentage from xDS's fraction (of a hundred, ten thousand or a
/// million).
fn percent_of(f: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>) -> f64 {
    f.map_or(100.0, |f| {
        let d = match f.denominator {
            1 => 10_000.0,
            2 => 1_000_000.0,
            _ => 100.0,
        };
        (f64::from(f.numerator) * 100.0 / d).min(100.0)
    })
}

/// The fault of a fault filter's config; what our model cannot express is
/// named in a warning (faults are a testing aid: leaving one out never
/// lets traffic through that should not go).
fn fault_of(
    hf: &envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault,
    where_: &str,
    warnings: &mut Vec<String>,
) -> Option<Fault> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
    let delay = hf
        .delay
        .as_ref()
        .and_then(|d| match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fixed)) => Some(FaultDelay {
                fixed: dur(&Some(*fixed)).unwrap_or_default(),
                percent: percent_of(d.percentage.as_ref()),
            }),
            _ => {
                warnings.push(format!(
                    "{where_}: fault delay from a request header is not supported, ignored"
                ));
                None
            }
        });
    let abort = hf.abort.as_ref().and_then(|a| match &a.error_type {
        Some(ErrorType::HttpStatus(code)) => Some(FaultAbort {
            status: u16::try_from(*code).unwrap_or(500),
            percent: percent_of(a.percentage.as_ref()),
        }),
        Some(ErrorType::GrpcStatus(_)) => {
            warnings.push(format!("{where_}: fault abort with a gRPC status is not supported (use an HTTP status), ignored"));
            None
        }
        _ => {
            warnings.push(format!("{where_}: fault abort from a request header is not supported, ignored"));
            None
        }
    });
    if !hf.headers.is_empty() || !hf.downstream_nodes.is_empty() || !hf.upstream_cluster.is_empty()
    {
        warnings.push(format!("{where_}: fault conditions (headers, nodes, cluster) are not supported; the fault applies to every request"));
    }
    if hf.max_active_faults.is_some() || hf.response_rate_limit.is_some() {
        warnings.push(format!(
            "{where_}: fault max_active_faults / response_rate_limit are not supported, ignored"
        ));
    }
    (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
}

/// The fault among per-filter configs (a route's or a virtual host's);
/// other filters' configs are named in a warning.
pub(super) fn faults_in(
    configs: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any>,
    where_: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Fault>, XdsError> {
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    let mut fault = None;
    for (name, any) in configs {
        if any.type_url == LOCAL_RATELIMIT {
            // Read by `rate_limit_in`.
            continue;
        }
        if any.type_url == <HttpFault as prost::Name>::type_url() {
            let hf = HttpFault::decode(any.value.as_slice()).map_err(|e| {
                at(
                    format!("[`{name}`]"),
                    format!("cannot decode the fault config: {e}"),
                )
            })?;
            fault = fault_of(&hf, where_, warnings);
        } else {
            warnings.push(format!(
                "{where_}: per-filter config `{name}` ({}) is ignored",
                any.type_url
            ));
        }
    }
    Ok(fault)
}

/// The key of a route's `filter_metadata` that carries its whole hedging
/// policy as JSON (`{"json": ...}`), which Envoy's hedge policy cannot
/// express (a percentile delay, the budget); Envoy ignores it.
pub(super) const HEDGE_METADATA: &str = "proxyless.hedge";

/// A route's hedging policy: the mesh's metadata when present; else
/// Envoy's `hedge_policy` with `hedge_on_per_try_timeout`, whose retry
/// policy's per-try timeout is the delay and its retries the hedges. A
/// hedged route does not retry (as in gRPC): its retry conditions are
/// named in a warning.
fn hedge_of(
    xr: &envoy_types::pb::envoy::config::route::v3::Route,
    action: &envoy_types::pb::envoy::config::route::v3::RouteAction,
    retry: Option<crate::config::RetryPolicy>,
    where_: &str,
    warnings: &mut Vec<String>,
) -> Result<
    (
        Option<crate::config::RetryPolicy>,
        Option<crate::config::HedgePolicy>,
    ),
    XdsError,
> {
    use crate::config::{HedgeDelay, HedgePolicy};
    if let Some(json) = super::metadata_json(xr.metadata.as_ref(), HEDGE_METADATA) {
        let policy: HedgePolicy = crate::config::part_from_json(json, "hedge")
            .map_err(|e| at("metadata", format!("{HEDGE_METADATA}: {e}")))?;
        return Ok((None, Some(policy)));
    }
    let Some(h) = &action.hedge_policy else {
        return Ok((retry, None));
    };
    let per_try = retry.as_ref().and_then(|r| r.per_try_timeout);
    let (Some(r), Some(delay), true) = (&retry, per_try, h.hedge_on_per_try_timeout) else {
        warnings.push(format!(
            "{where_}: a hedge policy is applied only with hedge_on_per_try_timeout and a per-try timeout; ignored"
        ));
        return Ok((retry, None));
    };
    if !r.on.is_empty() {
        warnings.push(format!(
            "{where_}: a route hedged on per-try timeouts does not also retry: its retry conditions are not applied"
        ));
    }
    let hedge = HedgePolicy {
        attempts: r.attempts.clamp(2, 5),
        delay: HedgeDelay::Fixed(delay),
        ..HedgePolicy::default()
    };
    Ok((None, Some(hedge)))
}

/// The type URL of Envoy's local rate limit filter's config.
pub(super) const LOCAL_RATELIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// A route's local rate limit from its per-filter configs.
pub(super) fn rate_limit_in(
    configs: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any>,
    where_: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<crate::config::RateLimit>, XdsError> {
    let mut out = None;
    for (name, any) in configs
        .iter()
        .filter(|(_, a)| a.type_url == LOCAL_RATELIMIT)
    {
        out = rate_limit_of(any, &format!("{where_}: `{name}`"), warnings)
            .map_err(|e| e.at(format!("[`{name}`]")))?;
    }
    Ok(out)
}

/// Envoy's `LocalRateLimit` as the model's: its token bucket, when the
/// filter is enabled and enforced (both default to 0% in Envoy: off).
/// Descriptors, partial percentages and a status other than 429 are named
/// in warnings.
pub(super) fn rate_limit_of(
    any: &envoy_types::pb::google::protobuf::Any,
    where_: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<crate::config::RateLimit>, XdsError> {
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    let l = LocalRateLimit::decode(any.value.as_slice())
        .map_err(|e| at("typed_config", format!("LocalRateLimit: {e}")))?;
    let Some(tb) = &l.token_bucket else {
        return Ok(None);
    };
    let percent =
        |f: &Option<envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent>| {
            f.as_ref()
                .and_then(|f| f.default_value.as_ref())
                .map_or(0.0, |p| {
                    let denominator = match p.denominator {
                        1 => 10_000.0,
                        2 => 1_000_000.0,
                        _ => 100.0,
                    };
                    f64::from(p.numerator) * 100.0 / denominator
                })
        };
    let (enabled, enforced) = (percent(&l.filter_enabled), percent(&l.filter_enforced));
    if enabled <= 0.0 || enforced <= 0.0 {
        warnings.push(format!(
            "{where_}: a local rate limit that is not enabled and enforced is ignored"
        ));
        return Ok(None);
    }
    if enabled < 100.0 || enforced < 100.0 {
        warnings.push(format!(
            "{where_}: a local rate limit enabled or enforced for part of the requests is enforced for all"
        ));
    }
    if !l.descriptors.is_empty() {
        warnings.push(format!(
            "{where_}: local rate limit descriptors are ignored (the route's bucket applies)"
        ));
    }
    if l.status.as_ref().is_some_and(|s| s.code != 429) {
        warnings.push(format!("{where_}: a refusal is answered with 429"));
    }
    Ok(Some(crate::config::RateLimit {
        max_tokens: tb.max_tokens,
        tokens_per_fill: tb.tokens_per_fill.as_ref().map_or(1, |v| v.value),
        fill_interval: super::dur(&tb.fill_interval).unwrap_or_default(),
        ..crate::config::RateLimit::default()
    }))
}

/// The fault filter's own config in a connection manager, the default for
/// routes that set none.
pub(super) fn hcm_fault(
    hcm: &HttpConnectionManager,
    listener: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Fault>, XdsError> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    let mut configs = std::collections::HashMap::new();
    for f in &hcm.http_filters {
        if let Some(ConfigType::TypedConfig(any)) = &f.config_type
            && any.type_url.ends_with(".fault.v3.HTTPFault")
        {
            configs.insert(f.name.clone(), any.clone());
        }
    }
    faults_in(&configs, &format!("listener `{listener}`"), warnings)
}

fn string_match(
    s: &envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher,
) -> Option<StringMatch> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as P;
    if s.ignore_case {
        return None;
    }
    Some(match s.match_pattern.as_ref()? {
        P::Exact(v) => StringMatch::Exact(v.clone()),
        P::Prefix(v) => StringMatch::Prefix(v.clone()),
        P::SafeRegex(r) => StringMatch::Regex(r.regex.clone()),
        _ => return None,
    })
}
