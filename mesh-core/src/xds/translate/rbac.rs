//! Inbound policy over xDS: a server's listener (a socket listener, as
//! Istio serves proxyless gRPC servers) maps to an [`InboundPolicy`]: its
//! filter chains' downstream TLS to the mTLS mode, its RBAC HTTP filters to
//! authorization rules; and back, for the development control plane.
//!
//! Authorization cannot be half-honoured: dropping an allow policy denies
//! callers the control plane allows, dropping a deny policy lets through
//! callers it denies. So an RBAC rule our model cannot express exactly
//! (source IPs, ports, metadata, negations, regexes, ...) is an error, and
//! the listener is NACKed.

use super::type_url;
use crate::config::{AuthzAction, AuthzRule, AuthzTarget, InboundPolicy, MtlsMode};
use crate::xds::error::XdsError;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use prost::Message;

/// The name our development control plane gives a service's inbound
/// listener: this prefix and the service name.
pub const INBOUND_PREFIX: &str = "mesh/inbound/";

const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// The inbound policy of `service` that listener `l` describes.
pub fn inbound_of(
    l: &Listener,
    service: &str,
    warnings: &mut Vec<String>,
) -> Result<InboundPolicy, XdsError> {
    let at = format!("inbound listener `{}`", l.name);
    let chains: Vec<&FilterChain> = l
        .filter_chains
        .iter()
        .chain(l.default_filter_chain.as_ref())
        .collect();
    if chains.is_empty() {
        return Err(XdsError::new(format!("{at}: no filter chain")));
    }
    let mut tls = 0;
    let mut rbac: Option<Vec<Rbac>> = None;
    let mut sources: Option<super::sources::Sources> = None;
    for chain in &chains {
        match chain_tls(chain, &at)? {
            Some((true, named)) => {
                tls += 1;
                match &sources {
                    None => sources = Some(named),
                    Some(first) if *first == named => {}
                    Some(_) => {
                        return Err(XdsError::new(format!(
                            "{at}: TLS filter chains that name different identity sources are not supported"
                        )));
                    }
                }
            }
            Some((false, _)) => {
                return Err(XdsError::new(format!(
                    "{at}: TLS without client certificates is not supported (mTLS strict or permissive)"
                )));
            }
            None => {}
        }
        let filters = chain_rbac(chain, &at)?;
        match &rbac {
            None => rbac = Some(filters),
            Some(first) if *first == filters => {}
            Some(_) => {
                return Err(XdsError::new(format!(
                    "{at}: filter chains with different RBAC filters are not supported"
                )));
            }
        }
    }
    let mtls = if tls == chains.len() {
        MtlsMode::Strict
    } else if tls > 0 {
        MtlsMode::Permissive
    } else {
        MtlsMode::Disabled
    };
    let mut rules = Vec::new();
    for f in rbac.unwrap_or_default() {
        rules.extend(rules_of(&f, &at, warnings)?);
    }
    let rate_limit = chain_rate_limit(chains[0], &at, warnings)?;
    let (certificate, trust) = sources.unwrap_or_default();
    Ok(InboundPolicy {
        service: service.to_owned(),
        mtls,
        rules,
        rate_limit,
        certificate,
        trust,
    })
}

/// Whether a chain is TLS, and if so whether client certificates are
/// required and which identity sources it names.
fn chain_tls(
    chain: &FilterChain,
    at: &str,
) -> Result<Option<(bool, super::sources::Sources)>, XdsError> {
    let Some(ts) = &chain.transport_socket else {
        return Ok(None);
    };
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(XdsError::new(format!(
            "{at}: transport socket `{}` without a typed config",
            ts.name
        )));
    };
    if any.type_url != TLS_TYPE {
        return Err(XdsError::new(format!(
            "{at}: transport socket of type {} is not supported",
            any.type_url
        )));
    }
    let ctx = DownstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| XdsError::new(format!("{at}: cannot decode its DownstreamTlsContext: {e}")))?;
    let sources = super::sources::sources_of(ctx.common_tls_context.as_ref())
        .map_err(|e| XdsError::new(format!("{at}: {e}")))?;
    Ok(Some((
        ctx.require_client_certificate.is_some_and(|b| b.value),
        sources,
    )))
}

/// The local rate limit of a chain's HTTP connection manager, if any.
fn chain_rate_limit(
    chain: &FilterChain,
    at: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<crate::config::RateLimit>, XdsError> {
    for (name, any) in chain_http_filters(chain, at)? {
        if any.type_url == super::routes::LOCAL_RATELIMIT {
            let where_ = format!("{at}: `{name}`");
            return super::routes::rate_limit_of(&any, &where_, warnings)
                .map_err(|e| XdsError::new(format!("{where_}: {e}")));
        }
    }
    Ok(None)
}

/// The RBAC filters of a chain's HTTP connection manager, in order.
fn chain_rbac(chain: &FilterChain, at: &str) -> Result<Vec<Rbac>, XdsError> {
    let mut out = Vec::new();
    for (name, any) in chain_http_filters(chain, at)? {
        if any.type_url == RBAC_TYPE {
            out.push(Rbac::decode(any.value.as_slice()).map_err(|e| {
                XdsError::new(format!("{at}: cannot decode RBAC filter `{name}`: {e}"))
            })?);
        }
    }
    Ok(out)
}

/// The HTTP filters (name and typed config) of a chain's HTTP connection
/// managers, in order.
fn chain_http_filters(
    chain: &FilterChain,
    at: &str,
) -> Result<Vec<(String, envoy_types::pb::google::protobuf::Any)>, XdsError> {
    let mut out = Vec::new();
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url != type_url::HCM {
            continue;
        }
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            XdsError::new(format!(
                "{at}: cannot decode its HttpConnectionManager: {e}"
            ))
        })?;
        for hf in hcm.http_filters {
            if let Some(http_filter::ConfigType::TypedConfig(any)) = hf.config_type {
                out.push((hf.name, any));
            }
        }
    }
    Ok(out)
}

/// The rules of one RBAC filter.
fn rules_of(f: &Rbac, at: &str, warnings: &mut Vec<String>) -> Result<Vec<AuthzRule>, XdsError> {
    if f.matcher.is_some() {
        return Err(XdsError::new(format!(
            "{at}: RBAC with a matcher tree is not supported (use rules)"
        )));
    }
    if f.shadow_rules.is_some() || f.shadow_matcher.is_some() {
        warnings.push(format!(
            "{at}: RBAC shadow rules are not enforced (they only log), ignored"
        ));
    }
    let Some(rules) = &f.rules else {
        return Ok(Vec::new()); // No rules: the filter lets everything through.
    };
    let action = match rules.action {
        0 => AuthzAction::Allow,
        1 => AuthzAction::Deny,
        _ => {
            warnings.push(format!(
                "{at}: an RBAC filter with action LOG enforces nothing, ignored"
            ));
            return Ok(Vec::new());
        }
    };
    // Policies in name order, so the same resources give the same config.
    let mut policies: Vec<(&String, &Policy)> = rules.policies.iter().collect();
    policies.sort_by_key(|(name, _)| name.as_str());
    if policies.is_empty() && action == AuthzAction::Allow {
        // An allow filter with no policy allows nobody.
        return Ok(vec![AuthzRule {
            action: AuthzAction::Deny,
            ..Default::default()
        }]);
    }
    let mut out = Vec::new();
    for (name, p) in policies {
        let at = format!("{at}: RBAC policy `{name}`");
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(XdsError::new(format!(
                "{at}: conditions (CEL) are not supported"
            )));
        }
        let from = principals(&p.principals, &at)?;
        for perm in &p.permissions {
            for to in targets(perm, &at)? {
                out.push(AuthzRule {
                    action,
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    Ok(out)
}

/// The callers a policy's principals (any of them) admit: empty for any
/// caller at all, else SPIFFE IDs, `prefix*` forms and `*` (any
/// authenticated caller).
fn principals(ps: &[Principal], at: &str) -> Result<Vec<String>, XdsError> {
    let mut out = Vec::new();
    for p in ps {
        match principal_ids(p, at)? {
            None => return Ok(Vec::new()),
            Some(ids) => out.extend(ids),
        }
    }
    Ok(out)
}

/// `None` for any caller at all.
fn principal_ids(p: &Principal, at: &str) -> Result<Option<Vec<String>>, XdsError> {
    use principal::Identifier as I;
    match &p.identifier {
        Some(I::Any(true)) => Ok(None),
        Some(I::Authenticated(a)) => match &a.principal_name {
            None => Ok(Some(vec!["*".into()])),
            Some(m) => Ok(Some(vec![spiffe_match(m, at)?])),
        },
        Some(I::OrIds(set)) => {
            let mut out = Vec::new();
            for id in &set.ids {
                match principal_ids(id, at)? {
                    None => return Ok(None),
                    Some(ids) => out.extend(ids),
                }
            }
            Ok(Some(out))
        }
        Some(I::AndIds(set)) if set.ids.len() == 1 => principal_ids(&set.ids[0], at),
        _ => Err(XdsError::new(format!(
            "{at}: this kind of principal is not supported (only any, authenticated SPIFFE IDs, and their or)"
        ))),
    }
}

fn spiffe_match(m: &StringMatcher, at: &str) -> Result<String, XdsError> {
    use string_matcher::MatchPattern as P;
    match (&m.match_pattern, m.ignore_case) {
        (Some(P::Exact(id)), false) => Ok(id.clone()),
        (Some(P::Prefix(p)), false) => Ok(format!("{p}*")),
        _ => Err(XdsError::new(format!(
            "{at}: principal names match exactly or by prefix (case-sensitive) only"
        ))),
    }
}

/// The requests a permission admits, as targets any of which matches.
fn targets(p: &Permission, at: &str) -> Result<Vec<AuthzTarget>, XdsError> {
    use permission::Rule as R;
    match &p.rule {
        Some(R::Any(true)) => Ok(vec![AuthzTarget::default()]),
        Some(R::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(m)),
        })) => Ok(vec![AuthzTarget {
            paths: vec![path_match(m, at)?],
            methods: Vec::new(),
        }]),
        Some(R::Header(h)) if h.name == ":method" => Ok(vec![AuthzTarget {
            paths: Vec::new(),
            methods: vec![exact_header(h, at)?],
        }]),
        Some(R::Header(h)) if h.name == ":path" => {
            let m = header_string(h, at)?;
            Ok(vec![AuthzTarget {
                paths: vec![path_match(&m, at)?],
                methods: Vec::new(),
            }])
        }
        Some(R::OrRules(set)) => {
            let mut out = Vec::new();
            for r in &set.rules {
                out.extend(targets(r, at)?);
            }
            let open = |t: &AuthzTarget| t.paths.is_empty() && t.methods.is_empty();
            if out.iter().any(open) {
                return Ok(vec![AuthzTarget::default()]);
            }
            // An or of paths alone (or methods alone) is one target's list.
            let merged = if out.iter().all(|t| t.methods.is_empty()) {
                AuthzTarget {
                    paths: out.iter().flat_map(|t| t.paths.clone()).collect(),
                    methods: Vec::new(),
                }
            } else if out.iter().all(|t| t.paths.is_empty()) {
                AuthzTarget {
                    paths: Vec::new(),
                    methods: out.iter().flat_map(|t| t.methods.clone()).collect(),
                }
            } else {
                return Ok(out);
            };
            Ok(vec![merged])
        }
        Some(R::AndRules(set)) => {
            let mut acc = vec![AuthzTarget::default()];
            for r in &set.rules {
                let next = targets(r, at)?;
                let mut product = Vec::new();
                for a in &acc {
                    for b in &next {
                        product.push(both(a, b, at)?);
                    }
                }
                acc = product;
            }
            Ok(acc)
        }
        _ => Err(XdsError::new(format!(
            "{at}: this kind of permission is not supported (only any, paths, :method, and their and/or)"
        ))),
    }
}

/// Both targets at once; one side must leave each dimension open (our
/// rules hold lists that match any of their entries).
fn both(a: &AuthzTarget, b: &AuthzTarget, at: &str) -> Result<AuthzTarget, XdsError> {
    let pick = |x: &Vec<String>, y: &Vec<String>| -> Result<Vec<String>, XdsError> {
        match (x.is_empty(), y.is_empty()) {
            (true, _) => Ok(y.clone()),
            (_, true) => Ok(x.clone()),
            _ if x == y => Ok(x.clone()),
            _ => Err(XdsError::new(format!(
                "{at}: an and of two path (or two method) conditions is not supported"
            ))),
        }
    };
    Ok(AuthzTarget {
        paths: pick(&a.paths, &b.paths)?,
        methods: pick(&a.methods, &b.methods)?,
    })
}

fn path_match(m: &StringMatcher, at: &str) -> Result<String, XdsError> {
    use string_matcher::MatchPattern as P;
    match (&m.match_pattern, m.ignore_case) {
        (Some(P::Exact(p)), false) => Ok(p.clone()),
        (Some(P::Prefix(p)), false) if p == "/" || p.is_empty() => Ok("*".into()),
        (Some(P::Prefix(p)), false) => Ok(format!("{p}*")),
        _ => Err(XdsError::new(format!(
            "{at}: paths match exactly or by prefix (case-sensitive) only"
        ))),
    }
}

fn header_string(h: &HeaderMatcher, at: &str) -> Result<StringMatcher, XdsError> {
    use header_matcher::HeaderMatchSpecifier as H;
    if h.invert_match {
        return Err(XdsError::new(format!(
            "{at}: inverted header matches are not supported"
        )));
    }
    #[allow(deprecated)]
    let pattern = match &h.header_match_specifier {
        Some(H::ExactMatch(v)) => string_matcher::MatchPattern::Exact(v.clone()),
        Some(H::PrefixMatch(v)) => string_matcher::MatchPattern::Prefix(v.clone()),
        Some(H::StringMatch(s)) => return Ok(s.clone()),
        _ => {
            return Err(XdsError::new(format!(
                "{at}: header `{}` match not supported",
                h.name
            )));
        }
    };
    Ok(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn exact_header(h: &HeaderMatcher, at: &str) -> Result<String, XdsError> {
    match header_string(h, at)? {
        StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(v)),
            ignore_case: false,
        } => Ok(v),
        _ => Err(XdsError::new(format!("{at}: methods match exactly only"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::reverse_rbac::{any, inbound_listener};
    use super::*;
    use crate::config::Config;
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::config::rbac::v3::Rbac as Rules;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

    fn policy() -> InboundPolicy {
        let cfg = Config::from_yaml(
            r#"
inbound:
  - service: reviews
    mtls: strict
    rules:
      - action: deny
        to: { paths: ["/admin*"] }
      - from: ["spiffe://demo.local/productpage"]
        to: { paths: ["/ratings/*", "/health"], methods: [GET, HEAD] }
      - from: ["*"]
        to: { paths: ["/health"] }
      - from: ["spiffe://demo.local/ops/*"]
    rate_limit: { max_tokens: 100, tokens_per_fill: 20, fill_interval: 200ms }
"#,
        )
        .unwrap();
        cfg.inbound[0].clone()
    }

    #[test]
    fn an_inbound_policy_goes_through_rbac_and_back() {
        for mtls in [MtlsMode::Strict, MtlsMode::Permissive, MtlsMode::Disabled] {
            let mut p = policy();
            p.mtls = mtls;
            if mtls != MtlsMode::Disabled {
                // The listener's TLS names where its identity comes from.
                p.certificate = Some("default".into());
                p.trust = Some("sds:ROOTCA".into());
            }
            let l = inbound_listener(&p, "mesh/inbound/reviews");
            let mut warnings = Vec::new();
            let back = inbound_of(&l, "reviews", &mut warnings).unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(back, p);
        }
    }

    #[test]
    fn an_allow_filter_without_policies_allows_nobody() {
        let mut p = policy();
        p.rules.clear();
        let mut l = inbound_listener(&p, "x");
        // Put an empty ALLOW filter in front of the router.
        let rbac = Rbac {
            rules: Some(Rules::default()),
            ..Default::default()
        };
        let chain = &mut l.filter_chains[0];
        let Some(filter::ConfigType::TypedConfig(a)) = &chain.filters[0].config_type else {
            unreachable!()
        };
        let mut hcm = HttpConnectionManager::decode(a.value.as_slice()).unwrap();
        hcm.http_filters.insert(
            0,
            HttpFilter {
                name: "rbac".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(&rbac))),
                ..Default::default()
            },
        );
        chain.filters[0].config_type = Some(filter::ConfigType::TypedConfig(any(&hcm)));
        let back = inbound_of(&l, "reviews", &mut Vec::new()).unwrap();
        assert_eq!(
            back.rules,
            [AuthzRule {
                action: AuthzAction::Deny,
                ..Default::default()
            }]
        );
    }

    #[test]
    fn what_authorization_cannot_express_is_refused_by_name() {
        let mut p = policy();
        p.rules.truncate(1);
        let l = inbound_listener(&p, "x");
        let with = |perm: Permission, l: &Listener| {
            let mut l = l.clone();
            let chain = &mut l.filter_chains[0];
            let Some(filter::ConfigType::TypedConfig(a)) = &chain.filters[0].config_type else {
                unreachable!()
            };
            let mut hcm = HttpConnectionManager::decode(a.value.as_slice()).unwrap();
            let Some(http_filter::ConfigType::TypedConfig(r)) = &hcm.http_filters[0].config_type
            else {
                unreachable!()
            };
            let mut rbac = Rbac::decode(r.value.as_slice()).unwrap();
            let rules = rbac.rules.as_mut().unwrap();
            let policy = rules.policies.values_mut().next().unwrap();
            policy.permissions = vec![perm];
            hcm.http_filters[0].config_type =
                Some(http_filter::ConfigType::TypedConfig(any(&rbac)));
            chain.filters[0].config_type = Some(filter::ConfigType::TypedConfig(any(&hcm)));
            inbound_of(&l, "reviews", &mut Vec::new())
        };
        let port = with(
            Permission {
                rule: Some(permission::Rule::DestinationPort(8080)),
            },
            &l,
        )
        .unwrap_err()
        .to_string();
        assert!(
            port.contains("permission is not supported") && port.contains("RBAC policy"),
            "{port}"
        );
        let not = with(
            Permission {
                rule: Some(permission::Rule::NotRule(Box::new(Permission {
                    rule: Some(permission::Rule::Any(true)),
                }))),
            },
            &l,
        )
        .unwrap_err()
        .to_string();
        assert!(not.contains("not supported"), "{not}");
        // TLS that does not ask for client certificates is refused too.
        let mut one_way = l.clone();
        one_way.filter_chains[0].transport_socket = Some(TransportSocket {
            name: "tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                &DownstreamTlsContext::default(),
            ))),
        });
        let e = inbound_of(&one_way, "reviews", &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without client certificates"), "{e}");
    }
}
