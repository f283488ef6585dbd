//! The watched file: valid, invalid, valid again; the snapshot never empty.

use proxyless_core::Mesh;
use proxyless_core::route::{Decision, RequestParts, decide};
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
    std::thread::sleep(proxyless_core::source::file::POLL_INTERVAL * 3);
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
    let good = proxyless_core::config::Config::from_yaml(&config(1)).unwrap();
    assert_eq!(
        mesh.update(good.clone(), proxyless_core::snapshot::Source::Code)
            .unwrap(),
        1
    );
    let mut bad = good;
    bad.services[0].routes[0].to[0].backend = "missing".into();
    assert!(
        mesh.update(bad, proxyless_core::snapshot::Source::Code)
            .is_err()
    );
    assert_eq!(mesh.snapshot().version(), 1);
    assert_eq!(mesh.status().rejected, 1);
}

/// A truncated file (a failed template render, a `>` redirect) and a file
/// that is not UTF-8 are rejected, counted and named; the last good config
/// keeps serving. (An empty file used to be taken as a mesh with no
/// services: every call passed through to names that do not resolve.)
#[test]
fn an_emptied_or_binary_file_is_rejected_and_the_last_good_config_serves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(1001)).unwrap();
    let mesh = Mesh::from_file(&path).unwrap();
    for (i, (bytes, words)) in [
        (&b""[..], "the document is empty"),
        (&b"# only a comment\n"[..], "the document is empty"),
        (&b"services: [\xff\xfe]\n"[..], "not UTF-8"),
    ]
    .into_iter()
    .enumerate()
    {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let want = i as u64 + 1;
        wait_for("the rejection", || mesh.status().rejected == want);
        let err = mesh.status().last_error.unwrap().to_string();
        assert!(err.contains(words) && err.contains("mesh.yaml"), "{err}");
        assert_eq!(mesh.snapshot().version(), 1);
        assert_eq!(endpoint_of(&mesh), "127.0.0.1:1001");
    }
    // Truncated in place (same file, shorter): seen by its length.
    std::fs::write(&path, config(1002)).unwrap();
    wait_for("the good file", || mesh.snapshot().version() == 2);
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    wait_for("the truncation", || mesh.status().rejected == 4);
    assert_eq!(endpoint_of(&mesh), "127.0.0.1:1002");
    // An empty file at start is an error, not an empty mesh.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let err = Mesh::from_file(&empty).unwrap_err().to_string();
    assert!(err.contains("the document is empty"), "{err}");
}
