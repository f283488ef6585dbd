//! SDS secrets the development control plane serves beside a mesh's
//! config: over the ADS stream (Envoy's `sds_config: { ads: {} }`) and over
//! the Secret Discovery Service on its own (a node agent's socket), state
//! of the world or incremental. Secrets change while streams are open; each
//! subscribed stream is sent what changed.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config::TrustDomain,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use proxyless_core::xds::translate::type_url;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::watch;

/// The secrets served, by name; cheap to clone (clones share them).
#[derive(Debug, Clone)]
pub struct Secrets {
    current: Arc<watch::Sender<Arc<Served>>>,
}

/// One state of the secrets: each encoded, with its version.
#[derive(Debug, Default)]
pub(super) struct Served {
    pub(super) generation: u64,
    pub(super) by_name: BTreeMap<String, (Any, String)>,
}

impl Default for Secrets {
    fn default() -> Self {
        Self {
            current: Arc::new(watch::Sender::new(Arc::default())),
        }
    }
}

fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(pem.to_owned())),
        ..Default::default()
    })
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `secret` (replacing one of its name).
    pub fn set(&self, secret: Secret) {
        let any = Any {
            type_url: type_url::SECRET.to_owned(),
            value: secret.encode_to_vec(),
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        any.value.hash(&mut h);
        let version = format!("{:016x}", h.finish());
        self.current.send_modify(|s| {
            let mut next = Served {
                generation: s.generation + 1,
                by_name: s.by_name.clone(),
            };
            next.by_name.insert(secret.name.clone(), (any, version));
            *s = Arc::new(next);
        });
    }

    /// Serves a `tls_certificate` secret: a certificate chain and its key (PEM).
    pub fn set_certificate(&self, name: &str, chain_pem: &str, key_pem: &str) {
        self.set(Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(chain_pem),
                private_key: inline(key_pem),
                ..Default::default()
            })),
        });
    }

    /// Serves a `validation_context` secret trusting `ca_pem` for any trust
    /// domain (Istio's `ROOTCA`).
    pub fn set_trusted_ca(&self, name: &str, ca_pem: &str) {
        self.set(Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(ca_pem),
                    ..Default::default()
                },
            )),
        });
    }

    /// Serves a `validation_context` secret with Envoy's SPIFFE validator:
    /// one bundle per trust domain (federation).
    pub fn set_spiffe_bundles(&self, name: &str, bundles: &[(&str, &str)]) {
        let config = SpiffeCertValidatorConfig {
            trust_domains: bundles
                .iter()
                .map(|(domain, pem)| TrustDomain {
                    name: (*domain).to_owned(),
                    trust_bundle: inline(pem),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.set(Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                custom_validator_config: Some(
                    envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                        name: "envoy.tls.cert_validator.spiffe".into(),
                        typed_config: Some(Any {
                            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig".into(),
                            value: config.encode_to_vec(),
                        }),
                    },
                ),
                ..Default::default()
            })),
        });
    }

    /// Stops serving the secret `name`.
    pub fn remove(&self, name: &str) {
        self.current.send_modify(|s| {
            let mut next = Served {
                generation: s.generation + 1,
                by_name: s.by_name.clone(),
            };
            next.by_name.remove(name);
            *s = Arc::new(next);
        });
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<Served>> {
        self.current.subscribe()
    }
}

impl Served {
    /// A state-of-the-world response: every subscribed secret served.
    pub(super) fn respond(&self, names: &[String], nonce: String) -> DiscoveryResponse {
        let wildcard = names.is_empty() || names.iter().any(|n| n == "*");
        DiscoveryResponse {
            version_info: self.generation.to_string(),
            resources: self
                .by_name
                .iter()
                .filter(|(n, _)| wildcard || names.contains(n))
                .map(|(_, (any, _))| any.clone())
                .collect(),
            type_url: type_url::SECRET.to_owned(),
            nonce,
            ..Default::default()
        }
    }

    /// An incremental response for a subscription to `names` (all when
    /// `wildcard`) whose client holds `sent` (name to version): what is new
    /// or changed, and what it holds or asked for that is gone; `None`
    /// when nothing is.
    pub(super) fn diff(
        &self,
        wildcard: bool,
        names: &BTreeSet<String>,
        sent: &mut BTreeMap<String, Option<String>>,
        nonce: String,
    ) -> Option<DeltaDiscoveryResponse> {
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let covered: BTreeSet<&String> = if wildcard {
            self.by_name.keys().chain(names).collect()
        } else {
            names.iter().collect()
        };
        for name in covered {
            match self.by_name.get(name) {
                Some((any, version))
                    if sent.get(name).and_then(Option::as_ref) != Some(version) =>
                {
                    sent.insert(name.clone(), Some(version.clone()));
                    resources.push(Resource {
                        name: name.clone(),
                        version: version.clone(),
                        resource: Some(any.clone()),
                        ..Default::default()
                    });
                }
                Some(_) => {}
                None if sent.get(name) != Some(&None) => {
                    sent.insert(name.clone(), None);
                    removed.push(name.clone());
                }
                None => {}
            }
        }
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: self.generation.to_string(),
            resources,
            type_url: type_url::SECRET.to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}
