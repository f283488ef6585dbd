//! SDS secrets: which secrets the config names (a cluster's or listener's
//! TLS context, as `sds:<name>` identity sources), and handing what a
//! secret delivers ([`secret_material`]) to its identity source. A secret
//! that does not load NACKs the response that carried it; its identity
//! source keeps its last good material and reports the error.

use crate::config::Config;
use crate::identity::tls::Identity;
use crate::mesh::Mesh;
use crate::xds::error::XdsError;
use crate::xds::translate::{
    Changes, Resources, SDS_PREFIX, SecretMaterial, secret_material, type_url,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use std::collections::BTreeMap;

/// How the config uses a secret: as a certificate, as trust, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Uses {
    certificate: bool,
    trust: bool,
}

/// The secrets `cfg` names (without the `sds:` prefix), with their uses.
pub(super) fn named(cfg: &Config) -> BTreeMap<String, Uses> {
    let mut out: BTreeMap<String, Uses> = BTreeMap::new();
    let mut note = |name: Option<&String>, certificate: bool| {
        if let Some(secret) = name.and_then(|n| n.strip_prefix(SDS_PREFIX)) {
            let uses = out.entry(secret.to_owned()).or_default();
            uses.certificate |= certificate;
            uses.trust |= !certificate;
        }
    };
    for tls in cfg.backends.iter().filter_map(|b| b.tls.as_ref()) {
        note(tls.certificate.as_ref(), true);
        note(tls.trust.as_ref(), false);
    }
    for p in &cfg.inbound {
        note(p.certificate.as_ref(), true);
        note(p.trust.as_ref(), false);
    }
    out
}

/// Registers an identity source for each named secret not yet registered
/// (or whose uses grew), and drops those no longer named.
pub(super) fn register(mesh: &Mesh, was: &BTreeMap<String, Uses>, now: &BTreeMap<String, Uses>) {
    for (name, uses) in now {
        if was.get(name) != Some(uses) {
            let source = format!("{SDS_PREFIX}{name}");
            let pending = Identity::pending_parts(
                format!("SDS secret `{name}`"),
                uses.certificate,
                uses.trust,
            );
            mesh.set_identity_source(&source, pending);
        }
    }
    for name in was.keys().filter(|n| !now.contains_key(*n)) {
        mesh.remove_identity_source(&format!("{SDS_PREFIX}{name}"));
    }
}

/// Loads every secret the response changed (or whose identity source is
/// new) and, if all load, hands each to its identity source.
pub(super) fn apply(mesh: &Mesh, resources: &Resources, changes: &Changes) -> Result<(), XdsError> {
    let mut changed = Vec::new();
    for (name, held) in resources.secrets() {
        let source = format!("{SDS_PREFIX}{name}");
        // A changed secret, or one whose source was registered anew.
        let fresh = mesh.identity_source(&source).is_some_and(|i| !i.is_ready());
        if fresh || changes.touched(type_url::SECRET, name) {
            changed.push((name.as_str(), held.get()));
        }
    }
    apply_list(mesh, changed.iter().map(|(n, s)| (*n, s)))
}

/// Loads `secrets` and, if all load, hands each to its identity source;
/// the first that does not load is the NACK's reason (recorded on its
/// source too).
pub(super) fn apply_list<'a>(
    mesh: &Mesh,
    secrets: impl Iterator<Item = (&'a str, &'a Secret)>,
) -> Result<(), XdsError> {
    let mut loaded = Vec::new();
    for (name, secret) in secrets {
        let source = format!("{SDS_PREFIX}{name}");
        match secret_material(secret) {
            Ok(m) => loaded.push((source, m)),
            Err(e) => {
                if let Some(identity) = mesh.identity_source(&source) {
                    identity.record_error(&crate::identity::tls::IdentityError::Material {
                        what: format!("SDS secret `{name}`"),
                        problem: e.to_string(),
                    });
                }
                return Err(e.in_resource("Secret", name));
            }
        }
    }
    for (source, m) in loaded {
        let Some(identity) = mesh.identity_source(&source) else {
            continue;
        };
        match m {
            SecretMaterial::Svid(svid) => identity.set_svid(svid),
            SecretMaterial::Bundles(bundles) => identity
                .set_bundles(bundles)
                .map_err(|e| XdsError::new(e.to_string()))?,
        }
    }
    Ok(())
}
