//! SDS secrets over the ADS stream: which secrets the config names (a
//! cluster's or listener's TLS context, as `sds:<name>` identity sources),
//! and what a held secret delivers to its identity source.
//!
//! A `tls_certificate` secret delivers an SVID (certificate chain and key);
//! a `validation_context` secret delivers trust bundles: its `trusted_ca`
//! as CAs of any trust domain, or, with Envoy's SPIFFE certificate
//! validator (`custom_validator_config` of type `SPIFFECertValidatorConfig`),
//! one bundle per trust domain (federation). Material must come inline
//! (`inline_bytes`, `inline_string`): a control plane cannot make this
//! process read a file or an environment variable of its choosing. A secret
//! that does not load NACKs the response that carried it; its identity
//! source keeps its last good material and reports the error.

use crate::config::Config;
use crate::identity::tls::{Identity, Svid, TrustBundles};
use crate::mesh::Mesh;
use crate::xds::error::XdsError;
use crate::xds::translate::{Changes, Resources, SDS_PREFIX, type_url};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
};
use prost::Message;
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

/// What a secret delivers.
enum Material {
    Svid(Svid),
    Bundles(TrustBundles),
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
        match material(secret) {
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
            Material::Svid(svid) => identity.set_svid(svid),
            Material::Bundles(bundles) => identity
                .set_bundles(bundles)
                .map_err(|e| XdsError::new(e.to_string()))?,
        }
    }
    Ok(())
}

fn material(s: &Secret) -> Result<Material, XdsError> {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            let chain = inline(
                c.certificate_chain.as_ref(),
                "tls_certificate.certificate_chain",
            )?;
            let key = inline(c.private_key.as_ref(), "tls_certificate.private_key")?;
            Svid::from_pem(&chain, &key)
                .map(Material::Svid)
                .map_err(|e| XdsError::new(format!("tls_certificate: {e}")))
        }
        Some(secret::Type::ValidationContext(v)) => bundles(v).map(Material::Bundles),
        _ => Err(XdsError::new(
            "holds neither a tls_certificate nor a validation_context",
        )),
    }
}

/// A validation context's bundles: per trust domain from the SPIFFE
/// validator, else its `trusted_ca` for any domain.
fn bundles(v: &CertificateValidationContext) -> Result<TrustBundles, XdsError> {
    const SPIFFE: &str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
    let mut out = TrustBundles::new();
    let bad =
        |e: crate::identity::tls::IdentityError| XdsError::new(format!("validation_context: {e}"));
    if let Some(custom) = &v.custom_validator_config {
        let config = custom.typed_config.as_ref().filter(|c| c.type_url == SPIFFE).ok_or_else(|| {
            XdsError::new(format!(
                "validation_context: custom validator `{}` is not supported (only the SPIFFE validator)",
                custom.name
            ))
        })?;
        let spiffe = SpiffeCertValidatorConfig::decode(config.value.as_slice())
            .map_err(|e| XdsError::new(format!("SPIFFECertValidatorConfig: {e}")))?;
        for d in &spiffe.trust_domains {
            let at = format!("trust_domains[{}].trust_bundle", d.name);
            out.insert_pem(&d.name, &inline(d.trust_bundle.as_ref(), &at)?)
                .map_err(bad)?;
        }
    }
    if v.trusted_ca.is_some() {
        out.set_any_domain_pem(&inline(
            v.trusted_ca.as_ref(),
            "validation_context.trusted_ca",
        )?)
        .map_err(bad)?;
    }
    if out.is_empty() {
        return Err(XdsError::new(
            "validation_context: no trusted_ca and no SPIFFE trust domain",
        ));
    }
    Ok(out)
}

/// The bytes of an inline data source.
fn inline(d: Option<&DataSource>, at: &str) -> Result<Vec<u8>, XdsError> {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(Specifier::Filename(_) | Specifier::EnvironmentVariable(_)) => {
            Err(XdsError::new(format!(
                "{at}: only inline material is accepted (a control plane does not choose files or variables to read)"
            )))
        }
        None => Err(XdsError::new(format!("{at}: missing"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_empty_material_is_refused_by_field() {
        let file = DataSource {
            specifier: Some(Specifier::Filename("/etc/shadow".into())),
            ..Default::default()
        };
        let e = inline(Some(&file), "tls_certificate.private_key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("private_key") && e.contains("inline"), "{e}");
        let e = material(&Secret::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("neither"), "{e}");
        let empty = CertificateValidationContext::default();
        assert!(bundles(&empty).is_err());
    }
}
