//! Where a TLS context's certificate and trust come from: the identity
//! sources it names, both ways.
//!
//! gRPC's proxyless xDS (A29) names certificate provider instances of the
//! bootstrap (`tls_certificate_provider_instance`, and the validation
//! context's `ca_certificate_provider_instance`); Envoy-based meshes name
//! SDS secrets (`tls_certificate_sds_secret_configs`,
//! `validation_context_sds_secret_config`). The mesh keeps one namespace of
//! identity sources: a provider instance by its name, an SDS secret as
//! `sds:<name>`. A context that names neither uses this workload's own
//! identity. A context that names a source in a way this client cannot
//! follow (certificates inline, a provider plugin by config, more than one
//! certificate) is refused by name.

use crate::xds::error::XdsError;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    SdsSecretConfig,
};

/// The prefix of an SDS secret's name among identity sources.
pub const SDS_PREFIX: &str = "sds:";

/// The longest identity source name accepted from a control plane.
pub(super) const MAX_SOURCE_NAME: usize = 256;

/// The identity sources a TLS context names: (certificate, trust).
pub(super) type Sources = (Option<String>, Option<String>);

/// The sources `common` names.
pub fn sources_of(common: Option<&CommonTlsContext>) -> Result<Sources, XdsError> {
    let Some(common) = common else {
        return Ok((None, None));
    };
    if !common.tls_certificates.is_empty() {
        return Err(XdsError::new(
            "certificates inline in the TLS context are not supported: name a certificate provider instance or an SDS secret",
        ));
    }
    #[allow(deprecated)]
    let provider = match (
        &common.tls_certificate_provider_instance,
        &common.tls_certificate_certificate_provider_instance,
    ) {
        (Some(p), _) => Some(instance(&p.instance_name)?),
        (None, Some(p)) => Some(instance(&p.instance_name)?),
        (None, None) => None,
    };
    let certificate = match (
        provider,
        common.tls_certificate_sds_secret_configs.as_slice(),
    ) {
        (Some(p), []) => Some(p),
        (None, []) => None,
        (None, [one]) => Some(secret(one)?),
        _ => {
            return Err(XdsError::new(
                "a TLS context may name one certificate: one provider instance or one SDS secret",
            ));
        }
    };
    let trust = match &common.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(v)) => validation(v)?,
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(secret(s)?),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            let default = c.default_validation_context.as_ref();
            match (&c.validation_context_sds_secret_config, default) {
                (Some(s), _) => Some(secret(s)?),
                (None, Some(v)) => validation(v)?,
                (None, None) => None,
            }
        }
        #[allow(deprecated)]
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(p)) => {
            Some(instance(&p.instance_name)?)
        }
        #[allow(deprecated)]
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => {
            return Err(XdsError::new(
                "a certificate provider given by its config is not supported: name a bootstrap instance",
            ));
        }
    };
    Ok((certificate, trust))
}

fn validation(v: &CertificateValidationContext) -> Result<Option<String>, XdsError> {
    if v.trusted_ca.is_some() && v.ca_certificate_provider_instance.is_none() {
        return Err(XdsError::new(
            "a trusted CA inline in the validation context is not supported: name a certificate provider instance or an SDS secret",
        ));
    }
    v.ca_certificate_provider_instance
        .as_ref()
        .map(|p| instance(&p.instance_name))
        .transpose()
}

fn instance(name: &str) -> Result<String, XdsError> {
    let name = checked(name)?;
    if name.starts_with(SDS_PREFIX) {
        return Err(XdsError::new(format!(
            "certificate provider instance `{name}`: names starting with `{SDS_PREFIX}` are SDS secrets'"
        )));
    }
    Ok(name)
}

fn secret(s: &SdsSecretConfig) -> Result<String, XdsError> {
    Ok(format!("{SDS_PREFIX}{}", checked(&s.name)?))
}

fn checked(name: &str) -> Result<String, XdsError> {
    if name.is_empty() || name.len() > MAX_SOURCE_NAME || name.chars().any(char::is_control) {
        return Err(XdsError::new(format!(
            "identity source name `{}` must be 1 to {MAX_SOURCE_NAME} printable characters",
            name.escape_debug()
        )));
    }
    Ok(name.to_owned())
}

/// The TLS context fields that name `certificate` and `trust`, for the
/// development control plane: an SDS secret over ADS, or a provider
/// instance. `validation` is the context the trust goes into (with the
/// SAN matchers already in it).
pub(super) fn name_sources(
    common: &mut CommonTlsContext,
    certificate: Option<&str>,
    trust: Option<&str>,
    mut validation: CertificateValidationContext,
) {
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ConfigSource, config_source::ConfigSourceSpecifier,
    };
    let sds = |name: &str| SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }),
    };
    let plugin = |name: &str| CertificateProviderPluginInstance {
        instance_name: name.to_owned(),
        certificate_name: String::new(),
    };
    match certificate.map(|c| (c, c.strip_prefix(SDS_PREFIX))) {
        Some((_, Some(secret))) => common.tls_certificate_sds_secret_configs = vec![sds(secret)],
        Some((name, None)) => common.tls_certificate_provider_instance = Some(plugin(name)),
        None => {}
    }
    common.validation_context_type = match trust.map(|t| (t, t.strip_prefix(SDS_PREFIX))) {
        Some((_, Some(secret))) => Some(ValidationContextType::CombinedValidationContext(
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(validation),
                validation_context_sds_secret_config: Some(sds(secret)),
                ..Default::default()
            },
        )),
        Some((name, None)) => {
            validation.ca_certificate_provider_instance = Some(plugin(name));
            Some(ValidationContextType::ValidationContext(validation))
        }
        None => Some(ValidationContextType::ValidationContext(validation)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(certificate: Option<&str>, trust: Option<&str>) -> Sources {
        let mut common = CommonTlsContext::default();
        name_sources(&mut common, certificate, trust, Default::default());
        sources_of(Some(&common)).unwrap()
    }

    #[test]
    fn provider_instances_and_sds_secrets_go_both_ways() {
        for (c, t) in [
            (None, None),
            (Some("default"), Some("default")),
            (Some("sds:default"), Some("sds:ROOTCA")),
            (Some("default"), Some("sds:ROOTCA")),
            (None, Some("roots")),
        ] {
            let got = round_trip(c, t);
            assert_eq!((got.0.as_deref(), got.1.as_deref()), (c, t));
        }
    }

    #[test]
    fn what_cannot_be_followed_is_refused_by_name() {
        use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
        let inline = CommonTlsContext {
            tls_certificates: vec![Default::default()],
            ..Default::default()
        };
        let e = sources_of(Some(&inline)).unwrap_err().to_string();
        assert!(e.contains("inline"), "{e}");
        let two = CommonTlsContext {
            tls_certificate_provider_instance: Some(CertificateProviderPluginInstance {
                instance_name: "a".into(),
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: "b".into(),
                sds_config: None,
            }],
            ..Default::default()
        };
        let e = sources_of(Some(&two)).unwrap_err().to_string();
        assert!(e.contains("one certificate"), "{e}");
        let ca = CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(Specifier::Filename("/ca.pem".into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let e = sources_of(Some(&ca)).unwrap_err().to_string();
        assert!(e.contains("trusted CA inline"), "{e}");
        let long = CommonTlsContext {
            tls_certificate_provider_instance: Some(CertificateProviderPluginInstance {
                instance_name: "x".repeat(300),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(sources_of(Some(&long)).is_err());
    }
}
