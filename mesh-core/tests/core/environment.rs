//! Which constructors read the environment: only `from_env` and
//! `from_env_ready`. Setting a variable in this process is unsafe (and
//! forbidden here), so the checks run in a child of this test binary with
//! the variables set, and the parent asserts the child passed.

use proxyless_core::Mesh;
use proxyless_core::config::{Config, Format};
use std::process::Command;

/// Set in the child; the child's half of each test runs only under it.
const CHILD: &str = "PROXYLESS_ENV_TEST_CHILD";

/// Runs `test` (this binary's test of that name) in a child with `vars`,
/// and asserts it passed; returns whether this is the child.
fn in_child(test: &str, vars: &[(&str, &str)]) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--test-threads", "1"])
        .env(CHILD, "1");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

#[test]
fn a_mesh_built_in_code_reads_no_environment() {
    let name = "environment::a_mesh_built_in_code_reads_no_environment";
    if !in_child(
        name,
        &[
            ("MESH_SERVICE", "reviews"),
            ("MESH_CONFIG", "/nonexistent.yaml"),
        ],
    ) {
        return;
    }
    let config = Config::parse("version: 1\n", Format::Yaml).unwrap();
    let mesh = Mesh::from_config(config).unwrap();
    assert_eq!(mesh.service(), None, "from_config took MESH_SERVICE");
    assert_eq!(Mesh::empty().service(), None, "empty took MESH_SERVICE");
    let mesh = mesh.with_service("ratings");
    assert_eq!(mesh.service().as_deref(), Some("ratings"));
    mesh.set_service(None);
    assert_eq!(mesh.service(), None);
}

#[test]
fn from_env_names_the_service_and_fails_on_a_missing_file() {
    let name = "environment::from_env_names_the_service_and_fails_on_a_missing_file";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, "version: 1\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    if !in_child(name, &[("MESH_SERVICE", "reviews"), ("MESH_CONFIG", &file)]) {
        return;
    }
    let path = std::env::var("MESH_CONFIG").unwrap();
    let mesh = Mesh::from_env().unwrap();
    assert_eq!(mesh.service().as_deref(), Some("reviews"));
    assert!(mesh.is_ready());
    std::fs::remove_file(&path).unwrap();
    let err = Mesh::from_env().unwrap_err().to_string();
    assert!(err.contains("cannot read the file"), "{err}");
}

/// `SPIFFE_ENDPOINT_SOCKET` without identity files: the Workload API is
/// followed, and until it answers the mesh is not ready and the identity
/// says which socket it waits for and why.
#[cfg(feature = "spiffe")]
#[test]
fn from_env_follows_the_workload_api_and_is_not_ready_until_it_answers() {
    let name = "environment::from_env_follows_the_workload_api_and_is_not_ready_until_it_answers";
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}", dir.path().join("agent.sock").display());
    if !in_child(name, &[("SPIFFE_ENDPOINT_SOCKET", &socket)]) {
        return;
    }
    // Outside a runtime: refused by name.
    let err = Mesh::from_env().unwrap_err().to_string();
    assert!(
        err.contains("SPIFFE_ENDPOINT_SOCKET") && err.contains("runtime"),
        "{err}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mesh = Mesh::from_env().unwrap();
        let identity = mesh.identity().expect("an identity waiting for the agent");
        assert!(!mesh.is_ready(), "ready without an identity");
        let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let error = loop {
            if let Some(e) = identity.status().last_error {
                break e;
            }
            assert!(std::time::Instant::now() < deadline, "no error recorded");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(
            error.starts_with(&endpoint) && error.contains("cannot connect"),
            "{error}"
        );
        assert_eq!(identity.status().svid_source, endpoint);
        assert!(!mesh.is_ready());
    });
}

/// `MESH_SHADOW_CONFIG`: the file is loaded as the candidate beside the
/// live config; an invalid candidate fails `from_env` naming the file; the
/// two shadow variables together are refused by name.
#[test]
fn from_env_loads_a_candidate_file_for_shadow_evaluation() {
    let name = "environment::from_env_loads_a_candidate_file_for_shadow_evaluation";
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("mesh.yaml");
    let yaml = "services: [{ name: web, routes: [{ to: [web-v1] }] }]\nbackends: [{ name: web-v1, endpoints: ['127.0.0.1:1'] }, { name: web-v2, endpoints: ['127.0.0.1:2'] }]\n";
    std::fs::write(&live, yaml).unwrap();
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(&candidate, yaml.replace("to: [web-v1]", "to: [web-v2]")).unwrap();
    let (live, candidate) = (live.to_str().unwrap(), candidate.to_str().unwrap());
    if !in_child(
        name,
        &[("MESH_CONFIG", live), ("MESH_SHADOW_CONFIG", candidate)],
    ) {
        return;
    }
    // The child's own paths are those the parent made.
    let candidate = std::env::var("MESH_SHADOW_CONFIG").unwrap();
    let mesh = Mesh::from_env().unwrap();
    let c = mesh.candidate().expect("the candidate is loaded");
    assert_eq!(c.report().source(), format!("file:{candidate}"));
    assert_eq!(
        mesh.snapshot().config().services[0].routes[0].to[0].backend,
        "web-v1"
    );
    std::fs::write(
        candidate,
        "services: [{ name: web, routes: [{ to: [nowhere] }] }]\n",
    )
    .unwrap();
    let err = Mesh::from_env().unwrap_err().to_string();
    assert!(
        err.contains("candidate.yaml") && err.contains("nowhere"),
        "{err}"
    );
}

#[cfg(feature = "xds")]
#[test]
fn from_env_refuses_two_candidates() {
    let name = "environment::from_env_refuses_two_candidates";
    if !in_child(
        name,
        &[
            ("MESH_SHADOW_CONFIG", "/nonexistent.yaml"),
            ("MESH_SHADOW_CONTROL_PLANE", "http://127.0.0.1:1"),
        ],
    ) {
        return;
    }
    let err = Mesh::from_env().unwrap_err().to_string();
    assert!(
        err.contains("MESH_SHADOW_CONFIG and MESH_SHADOW_CONTROL_PLANE"),
        "{err}"
    );
}
