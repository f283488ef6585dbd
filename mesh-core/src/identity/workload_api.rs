//! The SPIFFE Workload API as an identity source (feature `spiffe`): the
//! X.509 SVID and trust bundles (the workload's own domain and the
//! federated ones) streamed by a SPIFFE agent such as SPIRE's over a Unix
//! socket (`SPIFFE_ENDPOINT_SOCKET`), applied to an [`Identity`] as they
//! rotate.
//!
//! The `spiffe` crate speaks the protocol: it connects (`unix:` or `tcp:`
//! endpoints), sends the `workload.spiffe.io` header, and parses and checks
//! each response (an SVID's leaf is not a CA, its key parses, bundles are
//! per trust domain). This module keeps the stream alive and turns what it
//! delivers into the mesh's identity: the default (first) SVID and every
//! bundle. A delivery that does not load, a refused connection, or a
//! stream that ends is recorded on the identity (its status and the admin
//! server's `/ready` name the socket and the reason) and the last good
//! identity keeps serving; the stream is reopened after a backoff of
//! 100 ms doubling to 30 s. The task ends only when the identity is
//! dropped.
//!
//! ```no_run
//! # async fn run() {
//! use proxyless_core::identity::tls::Identity;
//! use proxyless_core::identity::workload_api;
//! let identity = Identity::pending("unix:///run/spire/agent.sock");
//! workload_api::follow(&identity, "unix:///run/spire/agent.sock");
//! identity.ready().await;          // the first SVID and bundles
//! # }
//! ```

use super::tls::{Identity, IdentityError, Svid, TrustBundles, WeakIdentity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::pin::Pin;
use std::time::Duration;

/// The first wait before reopening a stream that failed, and the most.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// Follows the Workload API at `endpoint` (`unix:///path`, `unix:/path` or
/// `tcp://127.0.0.1:port`), applying each delivery to `identity`, in a
/// task on the current tokio runtime. Returns `false`, having recorded why
/// on the identity, when there is no runtime.
pub fn follow(identity: &Identity, endpoint: &str) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        let e = IdentityError::Material {
            what: "the SPIFFE Workload API".into(),
            problem: "following it needs a tokio runtime".into(),
        };
        identity.record_error(&e.from_source(endpoint));
        return false;
    };
    identity.set_source(endpoint);
    let weak = identity.downgrade();
    let endpoint = endpoint.to_owned();
    runtime.spawn(supervise(weak, endpoint));
    true
}

/// Runs the stream, reopening it after failures and restarting it after a
/// panic, until the identity is dropped.
async fn supervise(weak: WeakIdentity, endpoint: String) {
    let mut backoff = BACKOFF.0;
    loop {
        let run = tokio::spawn(stream_once(weak.clone(), endpoint.clone()));
        let delivered = match run.await {
            Ok(Ended::IdentityGone) => return,
            Ok(Ended::Failed { delivered, error }) => {
                if let Some(identity) = weak.upgrade() {
                    identity.record_error(&error.from_source(&endpoint));
                }
                delivered
            }
            Err(join) => {
                let error = IdentityError::Material {
                    what: "the Workload API stream".into(),
                    problem: format!("its task failed and is restarted: {join}"),
                };
                match weak.upgrade() {
                    Some(identity) => identity.record_error(&error.from_source(&endpoint)),
                    None => return,
                }
                false
            }
        };
        // A stream that delivered was healthy: start the backoff afresh.
        if delivered {
            backoff = BACKOFF.0;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

enum Ended {
    IdentityGone,
    Failed {
        delivered: bool,
        error: IdentityError,
    },
}

fn protocol_error(problem: impl std::fmt::Display) -> IdentityError {
    IdentityError::Material {
        what: "the Workload API".into(),
        problem: problem.to_string(),
    }
}

async fn stream_once(weak: WeakIdentity, endpoint: String) -> Ended {
    let failed = |delivered, error| Ended::Failed { delivered, error };
    let client = match spiffe::WorkloadApiClient::connect_to(&endpoint).await {
        Ok(c) => c,
        Err(e) => return failed(false, protocol_error(format!("cannot connect: {e}"))),
    };
    let stream = match client.stream_x509_contexts().await {
        Ok(s) => s,
        Err(e) => return failed(false, protocol_error(e)),
    };
    let mut stream: Pin<Box<_>> = Box::pin(stream);
    let mut delivered = false;
    loop {
        let next =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await;
        let Some(identity) = weak.upgrade() else {
            return Ended::IdentityGone;
        };
        match next {
            None => return failed(delivered, protocol_error("the stream ended")),
            Some(Err(e)) => return failed(delivered, protocol_error(e)),
            Some(Ok(context)) => match apply(&identity, &context) {
                Ok(()) => delivered = true,
                Err(e) => identity.record_error(&e.from_source(&endpoint)),
            },
        }
    }
}

/// Applies one delivery: the default SVID and every bundle.
fn apply(identity: &Identity, context: &spiffe::X509Context) -> Result<(), IdentityError> {
    let svid = context
        .default_svid()
        .ok_or_else(|| protocol_error("the response holds no SVID"))?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let svid = Svid::from_der(chain, key)?;
    let mut bundles = TrustBundles::new();
    for (domain, bundle) in context.bundle_set().iter() {
        let certificates = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        bundles.insert_der(domain.as_str(), certificates)?;
    }
    identity.set(svid, bundles)
}
