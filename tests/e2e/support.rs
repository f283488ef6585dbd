//! Shared helpers: meshes from YAML with real echo backends.

use mesh::echo::{Echo, EchoHandle};
use mesh_core::Mesh;
use mesh_core::config::Config;
use mesh_hyper::Client;
use std::collections::BTreeMap;

pub fn mesh(yaml: &str) -> Mesh {
    Mesh::from_config(Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))).unwrap()
}

pub async fn echo(name: &str) -> EchoHandle {
    Echo::new(name)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap()
}

/// Outcome counts of `n` GETs: `x-backend` values for answers, the error
/// kind's name for failures, `http_NNN` for non-2xx answers.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u32,
    pub by_backend: BTreeMap<String, u32>,
    pub errors: BTreeMap<String, u32>,
}

impl Tally {
    pub fn share(&self, backend: &str) -> f64 {
        let total: u32 = self.by_backend.values().sum();
        f64::from(self.by_backend.get(backend).copied().unwrap_or(0)) / f64::from(total.max(1))
    }

    pub fn failed(&self) -> u32 {
        self.errors.values().sum()
    }
}

/// Sends `n` requests, `concurrency` at a time.
pub async fn run(client: &Client, url: &str, n: u32, concurrency: u32) -> Tally {
    let url = url.to_owned();
    run_with(client, n, concurrency, move |_| {
        http::Request::get(url.as_str())
    })
    .await
}

pub async fn run_with(
    client: &Client,
    n: u32,
    concurrency: u32,
    make: impl Fn(u32) -> http::request::Builder + Send + Sync + 'static,
) -> Tally {
    let make = std::sync::Arc::new(make);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, make, next) = (client.clone(), make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return t;
                }
                let req = make(i)
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                match client.request(req).await {
                    Ok(resp) => {
                        if let Some(b) = resp.headers().get("x-backend") {
                            *t.by_backend
                                .entry(b.to_str().unwrap().to_owned())
                                .or_default() += 1;
                        }
                        if resp.status().is_success() {
                            t.ok += 1;
                        } else {
                            *t.errors
                                .entry(format!("http_{}", resp.status().as_u16()))
                                .or_default() += 1;
                        }
                        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    }
                    Err(e) => {
                        let kind = mesh_tower::error::ErrorKind::of(&*e);
                        *t.errors.entry(kind.as_str().to_owned()).or_default() += 1;
                    }
                }
            }
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.unwrap();
        all.ok += t.ok;
        for (k, v) in t.by_backend {
            *all.by_backend.entry(k).or_default() += v;
        }
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    all
}
