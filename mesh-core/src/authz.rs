//! Authorization of inbound requests by the inbound policy's rules, with
//! Istio's semantics: a deny rule that matches wins; otherwise, when the
//! policy has any allow rule, the request must match one; a policy with no
//! allow rules allows what it does not deny.
//!
//! A rule matches when its `from` (caller identities) and its `to` (paths
//! and methods) all match; an empty list matches anything. Caller forms:
//! an exact SPIFFE ID, a prefix ending in `*`, or `*` (any authenticated
//! caller). Path forms: exact, a prefix ending in `*`, or `*`.
//!
//! ```
//! use proxyless_core::config::{AuthzAction, AuthzRule, AuthzTarget, InboundPolicy};
//! use proxyless_core::authz::{Verdict, authorize};
//! use proxyless_core::identity::SpiffeId;
//!
//! let policy = InboundPolicy {
//!     service: "reviews".into(),
//!     rules: vec![AuthzRule {
//!         action: AuthzAction::Allow,
//!         from: vec!["spiffe://demo.local/ns/default/sa/productpage".into()],
//!         to: AuthzTarget { paths: vec!["/ratings/*".into()], methods: vec!["GET".into()] },
//!     }],
//!     ..Default::default()
//! };
//! let pp: SpiffeId = "spiffe://demo.local/ns/default/sa/productpage".parse().unwrap();
//! assert_eq!(authorize(&policy, Some(&pp), "GET", "/ratings/1"), Verdict::Allow);
//! assert!(matches!(authorize(&policy, None, "GET", "/ratings/1"), Verdict::Deny(_)));
//! ```

use crate::config::{AuthzAction, AuthzRule, InboundPolicy};
use crate::identity::SpiffeId;

/// The outcome of authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request through.
    Allow,
    /// Refuse it, for this reason (for the caller and the logs).
    Deny(String),
}

/// Decides whether `caller` (None: no verified identity) may send
/// `method path` to the service `policy` governs.
pub fn authorize(
    policy: &InboundPolicy,
    caller: Option<&SpiffeId>,
    method: &str,
    path: &str,
) -> Verdict {
    let matching = |rule: &&AuthzRule| rule_matches(rule, caller, method, path);
    if let Some((i, _)) = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.action == AuthzAction::Deny)
        .find(|(_, r)| matching(r))
    {
        return Verdict::Deny(format!(
            "denied by rule {i} of service `{}`",
            policy.service
        ));
    }
    let mut allows = policy
        .rules
        .iter()
        .filter(|r| r.action == AuthzAction::Allow)
        .peekable();
    if allows.peek().is_none() || allows.any(|r| matching(&r)) {
        return Verdict::Allow;
    }
    let who = caller.map_or_else(
        || "an unauthenticated caller".to_owned(),
        |c| format!("`{c}`"),
    );
    Verdict::Deny(format!(
        "no rule of service `{}` allows {who} to {method} {path}",
        policy.service
    ))
}

fn rule_matches(rule: &AuthzRule, caller: Option<&SpiffeId>, method: &str, path: &str) -> bool {
    let from_ok = rule.from.is_empty()
        || caller.is_some_and(|c| rule.from.iter().any(|p| principal_matches(p, c.as_str())));
    let path_ok = rule.to.paths.is_empty() || rule.to.paths.iter().any(|p| glob_prefix(p, path));
    let method_ok = rule.to.methods.is_empty() || rule.to.methods.iter().any(|m| m == method);
    from_ok && path_ok && method_ok
}

fn principal_matches(pattern: &str, id: &str) -> bool {
    glob_prefix(pattern, id)
}

/// `*` matches anything; `x*` matches what starts with `x`; else exact.
fn glob_prefix(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{AuthzAction::*, AuthzTarget};

    fn rule(action: AuthzAction, from: &[&str], paths: &[&str], methods: &[&str]) -> AuthzRule {
        AuthzRule {
            action,
            from: from.iter().map(|s| s.to_string()).collect(),
            to: AuthzTarget {
                paths: paths.iter().map(|s| s.to_string()).collect(),
                methods: methods.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    fn policy(rules: Vec<AuthzRule>) -> InboundPolicy {
        InboundPolicy {
            service: "reviews".into(),
            rules,
            ..Default::default()
        }
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn allow_deny_default_deny_and_wildcards() {
        let pp = id("spiffe://demo.local/ns/default/sa/productpage");
        let prod = id("spiffe://demo.local/ns/prod/sa/web");
        let other = id("spiffe://demo.local/ns/default/sa/other");
        let p = policy(vec![
            rule(
                Allow,
                &["spiffe://demo.local/ns/default/sa/productpage"],
                &["/ratings/*"],
                &["GET"],
            ),
            rule(Allow, &["spiffe://demo.local/ns/prod/*"], &[], &[]),
            rule(Deny, &[], &["/admin*"], &[]),
            rule(Allow, &["*"], &["/health"], &[]),
        ]);
        let ok = |c: Option<&SpiffeId>, m, path| authorize(&p, c, m, path) == Verdict::Allow;
        assert!(ok(Some(&pp), "GET", "/ratings/1"));
        assert!(!ok(Some(&pp), "POST", "/ratings/1"), "method not allowed");
        assert!(
            !ok(Some(&pp), "GET", "/reviews"),
            "path not allowed: default deny"
        );
        assert!(ok(Some(&prod), "DELETE", "/anything"), "prefix principal");
        assert!(
            !ok(Some(&prod), "GET", "/admin/users"),
            "deny wins over allow"
        );
        assert!(
            ok(Some(&other), "GET", "/health"),
            "`*` is any authenticated caller"
        );
        assert!(
            !ok(None, "GET", "/health"),
            "`*` is not the unauthenticated caller"
        );
        let Verdict::Deny(why) = authorize(&p, None, "GET", "/x") else {
            panic!()
        };
        assert!(why.contains("unauthenticated"), "{why}");
    }

    #[test]
    fn no_allow_rules_means_allow_what_is_not_denied() {
        let p = policy(vec![rule(Deny, &["spiffe://demo.local/sa/bad"], &[], &[])]);
        assert_eq!(authorize(&p, None, "GET", "/"), Verdict::Allow);
        assert!(matches!(
            authorize(&p, Some(&id("spiffe://demo.local/sa/bad")), "GET", "/"),
            Verdict::Deny(_)
        ));
        assert_eq!(authorize(&policy(vec![]), None, "GET", "/"), Verdict::Allow);
    }
}
