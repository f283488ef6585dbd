//! A SPIFFE agent for tests and the demo: the Workload API's X.509 half
//! (`proto/workload.proto`) on a Unix socket, serving SVIDs issued by
//! development CAs and sending each workload the new one when told to
//! rotate, as SPIRE's agent does. It checks the `workload.spiffe.io: true`
//! header the standard requires, and answers `PERMISSION_DENIED` while it
//! has no identity to give (SPIRE's answer before a workload is attested).
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh::certs::Error> {
//! use mesh::certs::DevCa;
//! use mesh::workload_api::{Agent, Delivery};
//! let ca = DevCa::new("demo.local")?;
//! let dir = tempfile::tempdir()?;
//! let agent = Agent::start(&dir.path().join("agent.sock")).await?;
//! agent.deliver(Delivery::of(&ca.issue_for("reviews")?, &ca)?);
//! println!("SPIFFE_ENDPOINT_SOCKET={}", agent.endpoint());
//! # Ok(()) }
//! ```

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("_");
}

use crate::certs::{DevCa, Error, Issued};
use generated::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use generated::{X509svid, X509svidRequest, X509svidResponse};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// What the agent gives its workloads: one SVID, its domain's bundle and
/// the federated ones, as DER. `None` in the agent means "no identity".
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// The chain, leaf first, DER concatenated.
    pub chain: Vec<u8>,
    /// The leaf's PKCS#8 key.
    pub key: Vec<u8>,
    /// The own trust domain's CA certificates, DER concatenated.
    pub bundle: Vec<u8>,
    /// Federated trust domains' bundles.
    pub federated: HashMap<String, Vec<u8>>,
}

impl Delivery {
    /// `issued` (its leaf only, as SPIRE sends no root) with `ca`'s bundle.
    pub fn of(issued: &Issued, ca: &DevCa) -> Result<Self, Error> {
        let leaf = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .next()
            .ok_or("no certificate in the issued chain")??;
        let key = PrivatePkcs8KeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
        Ok(Self {
            spiffe_id: issued.id.to_string(),
            chain: leaf.to_vec(),
            key: key.secret_pkcs8_der().to_vec(),
            bundle: der_of(&ca.ca_pem())?,
            federated: HashMap::new(),
        })
    }

    /// The same, also trusting `trust_domain`'s `ca`.
    pub fn federate(mut self, trust_domain: &str, ca: &DevCa) -> Result<Self, Error> {
        self.federated
            .insert(trust_domain.to_owned(), der_of(&ca.ca_pem())?);
        Ok(self)
    }
}

fn der_of(pem: &str) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert: CertificateDer<'static> = cert?;
        out.extend_from_slice(cert.as_ref());
    }
    Ok(out)
}

/// A running agent; stops when dropped, ending its open streams with
/// `UNAVAILABLE` as an agent that exits would.
#[derive(Debug)]
pub struct Agent {
    current: watch::Sender<Option<Delivery>>,
    stop: watch::Sender<bool>,
    path: PathBuf,
    streams: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.server.abort();
    }
}

impl Agent {
    /// Serves the Workload API on a Unix socket at `path`, with no identity
    /// until [`deliver`](Self::deliver).
    pub async fn start(path: &Path) -> Result<Self, Error> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let (current, _) = watch::channel(None);
        let (stop, _) = watch::channel(false);
        let streams = Arc::new(AtomicU64::new(0));
        let service = Service {
            current: current.clone(),
            stop: stop.clone(),
            streams: streams.clone(),
        };
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(Self {
            current,
            stop,
            path: path.to_owned(),
            streams,
            server,
        })
    }

    /// The endpoint as `SPIFFE_ENDPOINT_SOCKET` names it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Gives every workload `delivery` now (open streams get it at once).
    pub fn deliver(&self, delivery: Delivery) {
        self.current.send_replace(Some(delivery));
    }

    /// Takes the identity away: new streams are refused with
    /// `PERMISSION_DENIED`; open ones keep what they had.
    pub fn revoke(&self) {
        self.current.send_replace(None);
    }

    /// How many `FetchX509SVID` streams have been opened.
    pub fn streams_opened(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
struct Service {
    current: watch::Sender<Option<Delivery>>,
    stop: watch::Sender<bool>,
    streams: Arc<AtomicU64>,
}

type Stream = Pin<Box<dyn futures_core::Stream<Item = Result<X509svidResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Stream;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let header = request.metadata().get("workload.spiffe.io");
        if header.and_then(|v| v.to_str().ok()) != Some("true") {
            return Err(Status::invalid_argument("security header missing"));
        }
        let mut rx = self.current.subscribe();
        let mut stop = self.stop.subscribe();
        if rx.borrow_and_update().is_none() {
            return Err(Status::permission_denied("no identity issued"));
        }
        self.streams.fetch_add(1, Ordering::Relaxed);
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let delivery = rx.borrow_and_update().clone();
                if let Some(d) = delivery
                    && tx.send(Ok(response(d))).await.is_err()
                {
                    return;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = stop.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the agent stopped"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

fn response(d: Delivery) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: d.spiffe_id,
            x509_svid: d.chain,
            x509_svid_key: d.key,
            bundle: d.bundle,
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: d.federated,
    }
}
