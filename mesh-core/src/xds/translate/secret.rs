//! What an SDS secret delivers, checked: a `tls_certificate` secret an SVID
//! (certificate chain and key); a `validation_context` secret trust
//! bundles: its `trusted_ca` as CAs of any trust domain, and with Envoy's
//! SPIFFE certificate validator (`custom_validator_config` of type
//! `SPIFFECertValidatorConfig`) one bundle per trust domain (federation).
//! Material must come inline (`inline_bytes`, `inline_string`): a control
//! plane cannot make this process read a file or an environment variable of
//! its choosing.

use crate::identity::tls::{Svid, TrustBundles};
use crate::xds::error::XdsError;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
};
use prost::Message;

/// What a secret delivers.
#[derive(Debug)]
pub enum SecretMaterial {
    /// A certificate chain and key.
    Svid(Svid),
    /// Trust bundles.
    Bundles(TrustBundles),
}

/// The material of `s`, checked (an SVID valid now whose key matches; a
/// non-empty set of bundles).
pub fn secret_material(s: &Secret) -> Result<SecretMaterial, XdsError> {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            let chain = inline(
                c.certificate_chain.as_ref(),
                "tls_certificate.certificate_chain",
            )?;
            let key = inline(c.private_key.as_ref(), "tls_certificate.private_key")?;
            Svid::from_pem(&chain, &key)
                .map(SecretMaterial::Svid)
                .map_err(|e| XdsError::new(format!("tls_certificate: {e}")))
        }
        Some(secret::Type::ValidationContext(v)) => bundles(v).map(SecretMaterial::Bundles),
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
        let e = secret_material(&Secret::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("neither"), "{e}");
        let empty = CertificateValidationContext::default();
        assert!(bundles(&empty).is_err());
    }
}
