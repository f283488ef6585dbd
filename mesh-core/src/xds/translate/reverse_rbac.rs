//! An inbound policy -> a server's inbound listener (socket listener,
//! downstream TLS per the mTLS mode, an RBAC HTTP filter per rule set),
//! for the development control plane.

use crate::config::{AuthzAction, AuthzRule, InboundPolicy, MtlsMode};
use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, TransportSocket, address, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as Rules, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::Message;

pub(super) fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn exact(v: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(v.to_owned())),
        ignore_case: false,
    }
}

/// A path or principal of ours (`x`, `x*`, `*`) as a string matcher;
/// `None` for `*`.
fn pattern(v: &str) -> Option<StringMatcher> {
    if v == "*" {
        return None;
    }
    Some(match v.strip_suffix('*') {
        Some(prefix) => StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Prefix(prefix.to_owned())),
            ignore_case: false,
        },
        None => exact(v),
    })
}

fn or_rules(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set { rules })),
    }
}

/// One rule of ours as an RBAC policy.
fn policy_of(rule: &AuthzRule) -> Policy {
    let any_permission = Permission {
        rule: Some(permission::Rule::Any(true)),
    };
    let mut and = Vec::new();
    if !rule.to.paths.is_empty() {
        and.push(or_rules(
            rule.to
                .paths
                .iter()
                .map(|p| match pattern(p) {
                    None => any_permission.clone(),
                    Some(m) => Permission {
                        rule: Some(permission::Rule::UrlPath(PathMatcher {
                            rule: Some(path_matcher::Rule::Path(m)),
                        })),
                    },
                })
                .collect(),
        ));
    }
    if !rule.to.methods.is_empty() {
        and.push(or_rules(
            rule.to
                .methods
                .iter()
                .map(|m| Permission {
                    rule: Some(permission::Rule::Header(HeaderMatcher {
                        name: ":method".into(),
                        header_match_specifier: Some(
                            header_matcher::HeaderMatchSpecifier::StringMatch(exact(m)),
                        ),
                        ..Default::default()
                    })),
                })
                .collect(),
        ));
    }
    let permission = if and.is_empty() {
        any_permission
    } else {
        Permission {
            rule: Some(permission::Rule::AndRules(permission::Set { rules: and })),
        }
    };
    let principals = if rule.from.is_empty() {
        vec![Principal {
            identifier: Some(principal::Identifier::Any(true)),
        }]
    } else {
        vec![Principal {
            identifier: Some(principal::Identifier::OrIds(principal::Set {
                ids: rule
                    .from
                    .iter()
                    .map(|id| Principal {
                        identifier: Some(principal::Identifier::Authenticated(
                            principal::Authenticated {
                                principal_name: pattern(id),
                            },
                        )),
                    })
                    .collect(),
            })),
        }]
    };
    Policy {
        permissions: vec![permission],
        principals,
        ..Default::default()
    }
}

/// The policy's rules as RBAC filters: deny first, then allow.
fn rbac_filters(p: &InboundPolicy) -> Vec<HttpFilter> {
    let mut http_filters = Vec::new();
    for (action, code) in [(AuthzAction::Deny, 1), (AuthzAction::Allow, 0)] {
        let policies: std::collections::HashMap<String, Policy> = p
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.action == action)
            .map(|(i, r)| (format!("rule-{i:03}"), policy_of(r)))
            .collect();
        if policies.is_empty() {
            continue;
        }
        let rbac = Rbac {
            rules: Some(Rules {
                action: code,
                policies,
                ..Default::default()
            }),
            ..Default::default()
        };
        http_filters.push(HttpFilter {
            name: format!(
                "envoy.filters.http.rbac.{}",
                if code == 1 { "deny" } else { "allow" }
            ),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&rbac))),
            ..Default::default()
        });
    }
    http_filters
}

/// A service's inbound policy as the listener a server subscribes to,
/// named `name`: deny rules in one RBAC filter, allow rules in the next
/// (so deny wins, and once any allow rule exists the rest is denied), and
/// a filter chain per accepted transport.
pub fn inbound_listener(p: &InboundPolicy, name: &str) -> Listener {
    let mut http_filters = rbac_filters(p);
    if let Some(l) = &p.rate_limit {
        http_filters.push(HttpFilter {
            name: super::reverse::RATELIMIT_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                super::reverse::local_rate_limit(l),
            )),
            is_optional: true,
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: "inbound".into(),
        http_filters,
        ..Default::default()
    };
    let chain = |tls: bool| FilterChain {
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
        }],
        transport_socket: tls.then(|| TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                &DownstreamTlsContext {
                    require_client_certificate: Some(BoolValue { value: true }),
                    common_tls_context: named_sources(p),
                    ..Default::default()
                },
            ))),
        }),
        ..Default::default()
    };
    let filter_chains = match p.mtls {
        MtlsMode::Strict => vec![chain(true)],
        MtlsMode::Disabled => vec![chain(false)],
        _ => vec![chain(true), chain(false)],
    };
    Listener {
        name: name.to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            })),
        }),
        filter_chains,
        ..Default::default()
    }
}

/// The listener's TLS context naming the policy's identity sources, if it
/// names any.
fn named_sources(
    p: &InboundPolicy,
) -> Option<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext> {
    if p.certificate.is_none() && p.trust.is_none() {
        return None;
    }
    let mut common = Default::default();
    super::sources::name_sources(
        &mut common,
        p.certificate.as_deref(),
        p.trust.as_deref(),
        Default::default(),
    );
    Some(common)
}
