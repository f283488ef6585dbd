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
