//! The watched file: valid, invalid, valid again; the snapshot never empty.

use mesh_core::Mesh;
use mesh_core::route::{Decision, RequestParts, decide};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn config(backend_port: u16) -> String {
    format!(
        "services: [{{ name: api, routes: [{{ to: [b] }}] }}]\nbackends: [{{ name: b, endpoints: ['127.0.0.1:{backend_port}'] }}]\n"
    )
}

/// Replaces the file atomically, as editors and config-map updates do.
fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn endpoint_of(mesh: &Mesh) -> String {
    let snap = mesh.snapshot();
    let h = http::HeaderMap::new();
    match decide(&snap, &RequestParts::new("api", "GET", "/", None, &h), 0).unwrap() {
        Decision::Route(d) => d.backend.endpoints()[0].address.to_string(),
        Decision::Passthrough => "passthrough".into(),
    }
}

#[tokio::test]
async fn valid_invalid_valid_keeps_the_last_good_snapshot_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(1001)).unwrap();
    let mesh = Mesh::from_file(&path).unwrap();
    assert_eq!(mesh.snapshot().version(), 1);
    let mut sub = mesh.subscribe();

    // A reader that checks, all along, that the snapshot never goes empty
    // and versions never go backwards.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (mesh, stop, reads) = (mesh.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let snap = mesh.snapshot();
                assert!(!snap.is_empty(), "the snapshot went empty");
                assert!(snap.version() >= last, "version went backwards");
                last = snap.version();
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let started = Instant::now();
    write(&path, &config(1002));
    let snap = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.version(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(endpoint_of(&mesh), "127.0.0.1:1002");

    write(
        &path,
        "services: [{ name: api, routes: [{ to: [nope] }] }]\n",
    );
    wait_for("the rejection", || mesh.status().rejected == 1);
    let err = mesh.status().last_error.unwrap();
    assert_eq!(err.file.as_deref(), Some(path.as_path()));
    assert!(err.to_string().contains("no backend named `nope`"), "{err}");
    assert_eq!(mesh.snapshot().version(), 2);
    assert_eq!(endpoint_of(&mesh), "127.0.0.1:1002");

    write(&path, "this: is: not yaml: [\n");
    wait_for("the second rejection", || mesh.status().rejected == 2);
    assert_eq!(mesh.snapshot().version(), 2);

    write(&path, &config(1003));
    let snap = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.version(), 3);
    assert_eq!(endpoint_of(&mesh), "127.0.0.1:1003");
    assert_eq!(mesh.status().accepted, 3);

    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_deleted_file_keeps_the_last_good_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(1001)).unwrap();
    let mesh = Mesh::from_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(mesh_core::source::file::POLL_INTERVAL * 3);
    assert_eq!(mesh.snapshot().version(), 1);
    assert_eq!(endpoint_of(&mesh), "127.0.0.1:1001");
    write(&path, &config(1004));
    wait_for("the file to come back", || mesh.snapshot().version() == 2);
}

#[test]
fn an_invalid_file_at_start_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.json");
    std::fs::write(&path, "{\"services\": [{\"name\": \"x\", \"routs\": []}]}").unwrap();
    let err = Mesh::from_file(&path).unwrap_err();
    assert!(err.to_string().contains("mesh.json"), "{err}");
    assert!(err.to_string().contains("did you mean `routes`"), "{err}");
    assert!(Mesh::from_file(dir.path().join("missing.yaml")).is_err());
}

#[test]
fn updates_from_code_are_validated_and_versioned() {
    let mesh = Mesh::empty();
    assert!(mesh.snapshot().is_empty());
    assert_eq!(mesh.snapshot().version(), 0);
    let good = mesh_core::config::Config::from_yaml(&config(1)).unwrap();
    assert_eq!(
        mesh.update(good.clone(), mesh_core::snapshot::Source::Code)
            .unwrap(),
        1
    );
    let mut bad = good;
    bad.services[0].routes[0].to[0].backend = "missing".into();
    assert!(mesh.update(bad, mesh_core::snapshot::Source::Code).is_err());
    assert_eq!(mesh.snapshot().version(), 1);
    assert_eq!(mesh.status().rejected, 1);
}
