//! gRPC's `file_watcher` certificate provider (gRPC A29) as an identity
//! source: the files an agent (istio-agent, a cert-manager CSI driver)
//! writes and rotates, named by an instance of a gRPC bootstrap's
//! `certificate_providers`:
//!
//! ```json
//! "certificate_providers": {
//!   "default": {
//!     "plugin_name": "file_watcher",
//!     "config": {
//!       "certificate_file": "/var/lib/istio/data/cert-chain.pem",
//!       "private_key_file": "/var/lib/istio/data/key.pem",
//!       "ca_certificate_file": "/var/lib/istio/data/root-cert.pem",
//!       "refresh_interval": "900s"
//!     }
//!   }
//! }
//! ```
//!
//! Clusters and listeners then name the instance in their TLS contexts
//! (`tls_certificate_provider_instance`, `ca_certificate_provider_instance`).
//! The files are read at once and again every `refresh_interval` (gRPC's
//! default, 10 minutes, when absent); a change is applied when it has
//! settled (the same bytes twice in a row) and loads, else it is recorded
//! on the identity and the last good files keep serving. The CA file is a
//! bundle of no particular trust domain ([`TrustBundles::set_any_domain`]).
//!
//! ```no_run
//! use proxyless_core::identity::provider::FileWatcher;
//! use std::time::Duration;
//! let provider = FileWatcher {
//!     certificate_file: Some("/certs/cert-chain.pem".into()),
//!     private_key_file: Some("/certs/key.pem".into()),
//!     ca_certificate_file: Some("/certs/root-cert.pem".into()),
//!     refresh_interval: Duration::from_secs(600),
//! };
//! let identity = provider.start("default");
//! println!("{:?}", identity.status());
//! ```

use super::tls::{Identity, IdentityError, Svid, TrustBundles};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A `file_watcher` provider instance's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWatcher {
    /// The certificate chain, leaf first (PEM); with `private_key_file`.
    pub certificate_file: Option<PathBuf>,
    /// The leaf's key (PEM); with `certificate_file`.
    pub private_key_file: Option<PathBuf>,
    /// The CA certificates that verify peers (PEM).
    pub ca_certificate_file: Option<PathBuf>,
    /// How often the files are read again.
    pub refresh_interval: Duration,
}

/// gRPC's default refresh interval.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);

/// The shortest and longest refresh intervals accepted.
pub const REFRESH_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(86_400));

/// Why a provider's config cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate provider `{instance}`: {problem}")]
pub struct ProviderError {
    /// The instance name.
    pub instance: String,
    /// What is wrong.
    pub problem: String,
}

impl FileWatcher {
    /// Checks the config: the certificate and key come together, at least
    /// one of them or the CA file is named, and the interval is within
    /// [`REFRESH_BOUNDS`].
    pub fn check(&self, instance: &str) -> Result<(), ProviderError> {
        let problem = |p: &str| {
            Err(ProviderError {
                instance: instance.to_owned(),
                problem: p.to_owned(),
            })
        };
        if self.certificate_file.is_some() != self.private_key_file.is_some() {
            return problem("`certificate_file` and `private_key_file` go together");
        }
        if self.certificate_file.is_none() && self.ca_certificate_file.is_none() {
            return problem("names no file (`certificate_file` or `ca_certificate_file`)");
        }
        let (min, max) = REFRESH_BOUNDS;
        if self.refresh_interval < min || self.refresh_interval > max {
            return problem("`refresh_interval` must be between 100ms and 1 day");
        }
        Ok(())
    }

    /// An identity following these files: loaded now (a failure is
    /// recorded on it, and it stays pending), then re-read every
    /// `refresh_interval` by a thread that ends when the identity is
    /// dropped.
    pub fn start(&self, instance: &str) -> Identity {
        let origin = format!("certificate provider `{instance}`");
        let identity = Identity::pending_parts(
            origin.as_str(),
            self.certificate_file.is_some(),
            self.ca_certificate_file.is_some(),
        );
        self.load(&identity, &origin);
        let paths = self.files().cloned().collect();
        let this = self.clone();
        let watch = identity.poll_files(
            &format!("mesh-provider-{instance}"),
            paths,
            self.refresh_interval,
            move |identity| this.load(identity, &origin),
        );
        if let Err(e) = watch {
            let e = IdentityError::Material {
                what: "its file watcher".into(),
                problem: e.to_string(),
            };
            identity.record_error(&e.from_source(format!("certificate provider `{instance}`")));
        }
        identity
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [
            &self.certificate_file,
            &self.private_key_file,
            &self.ca_certificate_file,
        ]
        .into_iter()
        .flatten()
    }

    fn load(&self, identity: &Identity, origin: &str) {
        if let Err(e) = self.try_load(identity) {
            identity.record_error(&e.from_source(origin));
        }
    }

    fn try_load(&self, identity: &Identity) -> Result<(), IdentityError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| IdentityError::File {
                path: p.to_owned(),
                what: e.to_string(),
            })
        };
        let svid = match (&self.certificate_file, &self.private_key_file) {
            (Some(c), Some(k)) => {
                Some(
                    Svid::from_pem(&read(c)?, &read(k)?).map_err(|e| IdentityError::File {
                        path: c.clone(),
                        what: e.to_string(),
                    })?,
                )
            }
            _ => None,
        };
        let bundles = match &self.ca_certificate_file {
            Some(ca) => {
                let mut b = TrustBundles::new();
                b.set_any_domain_pem(&read(ca)?)
                    .map_err(|e| IdentityError::File {
                        path: ca.clone(),
                        what: e.to_string(),
                    })?;
                Some(b)
            }
            None => None,
        };
        // Both parts checked before either is applied.
        if let Some(b) = bundles {
            identity.set_bundles(b)?;
        }
        if let Some(svid) = svid {
            identity.set_svid(svid);
        }
        Ok(())
    }
}

/// Parses a protobuf JSON duration (`"600s"`, `"0.5s"`), as a bootstrap
/// writes `refresh_interval`.
pub fn parse_json_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_durations_are_read_as_protobuf_writes_them() {
        assert_eq!(parse_json_duration("600s"), Some(Duration::from_secs(600)));
        assert_eq!(
            parse_json_duration("0.1s"),
            Some(Duration::from_millis(100))
        );
        for bad in ["600", "-1s", "NaNs", "infs", "1e400s", "s", ""] {
            assert_eq!(parse_json_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_config_that_cannot_work_is_refused_by_name() {
        let ok = FileWatcher {
            certificate_file: Some("c".into()),
            private_key_file: Some("k".into()),
            ca_certificate_file: None,
            refresh_interval: DEFAULT_REFRESH,
        };
        assert_eq!(ok.check("default"), Ok(()));
        let no_key = FileWatcher {
            private_key_file: None,
            ..ok.clone()
        };
        let e = no_key.check("default").unwrap_err().to_string();
        assert!(
            e.starts_with("certificate provider `default`: `certificate_file`"),
            "{e}"
        );
        let nothing = FileWatcher {
            certificate_file: None,
            private_key_file: None,
            ..ok.clone()
        };
        assert!(nothing.check("x").is_err());
        let too_fast = FileWatcher {
            refresh_interval: Duration::from_millis(1),
            ..ok
        };
        assert!(too_fast.check("x").is_err());
    }

    #[test]
    fn a_missing_file_leaves_the_instance_pending_with_the_path_in_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let provider = FileWatcher {
            certificate_file: None,
            private_key_file: None,
            ca_certificate_file: Some(dir.path().join("root-cert.pem")),
            refresh_interval: Duration::from_millis(100),
        };
        let identity = provider.start("roots");
        assert!(!identity.is_ready());
        let status = identity.status();
        let error = status.last_error.unwrap();
        assert!(
            error.starts_with("certificate provider `roots`: ") && error.contains("root-cert.pem"),
            "{error}"
        );
        assert_eq!(status.svid_source, "certificate provider `roots`");
    }
}
