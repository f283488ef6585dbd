//! A watched config file.
//!
//! The file is read again every [`POLL_INTERVAL`] by a small thread (no
//! runtime needed, and it sees editors that replace the file by rename as
//! well as those that write in place). A changed file that validates is
//! published; one that does not is logged with every problem and counted,
//! and the last good snapshot keeps serving. A file that vanishes keeps the
//! last good snapshot too. The thread ends when the last `Mesh` handle is
//! dropped.

use crate::config::{Config, ConfigError, Format};
use crate::mesh::Mesh;
use crate::snapshot::Source;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long changed content must stay unchanged before it is read as a
/// new config.
const SETTLE: Duration = Duration::from_millis(50);

impl Mesh {
    /// A mesh serving the config in `path`, watched for changes. Fails if
    /// the file cannot be read or is invalid.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Mesh, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let text = read(&path)?;
        let config = parse(&text, &path)?;
        let mesh = Mesh::empty();
        #[cfg(feature = "tls")]
        load_identity(&mesh, config.identity.as_ref(), path.parent())?;
        mesh.update(config, Source::File(path.clone()))?;
        spawn_watcher(&mesh, path, text)?;
        Ok(mesh)
    }

    /// A mesh configured by the environment: `MESH_CONFIG` names a watched
    /// YAML/JSON file; else `MESH_CONTROL_PLANE` or an xDS bootstrap file
    /// (`MESH_XDS_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP`) names a control plane
    /// (feature `xds`; needs a tokio runtime). With nothing set the mesh is
    /// empty (every request passes through), which is said in one log line.
    pub fn from_env() -> Result<Mesh, ConfigError> {
        #[cfg(feature = "xds")]
        if std::env::var_os("MESH_CONFIG").is_none_or(|v| v.is_empty()) {
            let settings = crate::xds::XdsSettings::from_env().map_err(|e| {
                ConfigError::new(vec![crate::config::Problem::new(
                    crate::config::ProblemKind::Syntax,
                    "",
                    None,
                    format!("xDS bootstrap: {e}"),
                )])
            })?;
            if let Some(settings) = settings {
                let (mesh, _status) = Mesh::from_control_plane(settings).map_err(|e| {
                    ConfigError::new(vec![crate::config::Problem::new(
                        crate::config::ProblemKind::Syntax,
                        "",
                        None,
                        e,
                    )])
                })?;
                #[cfg(feature = "tls")]
                load_identity(&mesh, None, None)?;
                return Ok(mesh);
            }
        }
        match std::env::var_os("MESH_CONFIG").filter(|v| !v.is_empty()) {
            Some(path) => Mesh::from_file(PathBuf::from(path)),
            None => {
                tracing::info!(
                    "no MESH_CONFIG set: the mesh is empty and every request passes through to the host it names"
                );
                let mesh = Mesh::empty();
                #[cfg(feature = "tls")]
                load_identity(&mesh, None, None)?;
                Ok(mesh)
            }
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(vec![crate::config::Problem::new(
            crate::config::ProblemKind::Syntax,
            "",
            None,
            format!("cannot read the file: {e}"),
        )])
        .in_file(path)
    })
}

fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    Config::parse(text, Format::of_path(path)).map_err(|e| e.in_file(path))
}

fn spawn_watcher(mesh: &Mesh, path: PathBuf, mut last: String) -> Result<(), ConfigError> {
    let weak = mesh.downgrade();
    let name = format!("mesh-config-watch:{}", path.display());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut missing_logged = false;
            loop {
                std::thread::sleep(POLL_INTERVAL);
                let Some(mesh) = Mesh::upgrade(&weak) else {
                    return;
                };
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        if !missing_logged {
                            tracing::warn!(file = %path.display(), "cannot read the mesh config, last good config keeps serving: {e}");
                            missing_logged = true;
                        }
                        continue;
                    }
                };
                missing_logged = false;
                if text == last {
                    continue;
                }
                // A writer may be half way through the file: act only on
                // content that stays the same for a short while.
                std::thread::sleep(SETTLE);
                match std::fs::read_to_string(&path) {
                    Ok(again) if again == text => {}
                    _ => continue,
                }
                match parse(&text, &path) {
                    Ok(cfg) => {
                        let _ = mesh.update(cfg, Source::File(path.clone()));
                    }
                    Err(e) => mesh.reject(e),
                }
                last = text;
            }
        })
        .map(|_| ())
        .map_err(|e| {
            ConfigError::new(vec![crate::config::Problem::new(
                crate::config::ProblemKind::Syntax,
                "",
                None,
                format!("cannot start the file watcher: {e}"),
            )])
        })
}

/// Loads and watches this workload's identity: from `MESH_TLS_CERT`,
/// `MESH_TLS_KEY` and `MESH_TLS_CA` when set, else from the config's
/// `identity` (paths relative to the config file's directory).
#[cfg(feature = "tls")]
fn load_identity(
    mesh: &Mesh,
    from_config: Option<&crate::config::IdentityFiles>,
    base: Option<&Path>,
) -> Result<(), ConfigError> {
    use crate::identity::tls::{Identity, IdentityFiles};
    let resolve = |p: &str| match base {
        Some(b) if Path::new(p).is_relative() => b.join(p),
        _ => PathBuf::from(p),
    };
    let files = IdentityFiles::from_env().or_else(|| {
        from_config.map(|f| IdentityFiles {
            cert: resolve(&f.cert),
            key: resolve(&f.key),
            ca: resolve(&f.ca),
        })
    });
    let Some(files) = files else {
        return Ok(());
    };
    let identity = Identity::load(&files).map_err(|e| {
        ConfigError::new(vec![crate::config::Problem::new(
            crate::config::ProblemKind::Identity,
            "identity",
            None,
            format!("cannot load this workload's identity: {e}"),
        )])
    })?;
    identity.watch(files);
    mesh.set_identity(identity);
    Ok(())
}
