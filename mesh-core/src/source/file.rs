//! A watched config file.
//!
//! Every [`POLL_INTERVAL`] a small thread (no runtime needed, and it sees
//! editors that replace the file by rename as well as those that write in
//! place) looks at the file's length and modification time, and reads it
//! only when they changed (and every few seconds regardless), so a large
//! file costs nothing while it stands still. A changed file that validates
//! is published; one that does not (an empty file, text that is not UTF-8,
//! any config problem) is logged with every problem and counted, and the
//! last good snapshot keeps serving. A file that vanishes keeps the last
//! good snapshot too. The thread ends when the last `Mesh` handle is
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
        spawn_watcher(&mesh, path, text, Target::Live)?;
        Ok(mesh)
    }

    /// Loads the config in `path` as this mesh's candidate for shadow
    /// evaluation ([`Mesh::set_candidate`]) and watches it: a valid change
    /// replaces the candidate, an invalid one is logged and the candidate
    /// loaded before stays. Fails if the file cannot be read or is
    /// invalid. `MESH_SHADOW_CONFIG` does this in [`Mesh::from_env`].
    pub fn watch_candidate_file(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref().to_path_buf();
        let text = read(&path)?;
        let config = parse(&text, &path)?;
        self.set_candidate(config, Source::File(path.clone()))?;
        spawn_watcher(self, path, text, Target::Candidate)
    }

    /// A mesh configured by the environment: `MESH_CONFIG` names a watched
    /// YAML/JSON file; else `MESH_CONTROL_PLANE` or an xDS bootstrap file
    /// (`MESH_XDS_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP`) names a control plane
    /// (feature `xds`; needs a tokio runtime). With nothing set the mesh is
    /// empty (every request passes through), which is said in one log line.
    /// `MESH_SERVICE` names this workload's [service](Mesh::service);
    /// `MESH_LOCALITY` (`region/zone/subzone`) says where it runs ([`Mesh::locality`]);
    /// `MESH_TLS_CERT`, `MESH_TLS_KEY` and `MESH_TLS_CA` its identity;
    /// `MESH_SHADOW_CONFIG` a candidate config file to evaluate beside the
    /// live one ([`Mesh::watch_candidate_file`]).
    ///
    /// This and [`Mesh::from_env_ready`] are the only constructors that
    /// read the environment: [`Mesh::from_config`] and [`Mesh::from_file`]
    /// read nothing but what they are given.
    pub fn from_env() -> Result<Mesh, ConfigError> {
        let mesh = Self::from_env_sources()?;
        if let Some(service) = std::env::var("MESH_SERVICE").ok().filter(|s| !s.is_empty()) {
            mesh.set_service(Some(&service));
        }
        if let Some(l) = std::env::var("MESH_LOCALITY")
            .ok()
            .filter(|s| !s.is_empty())
        {
            let locality = l.parse().map_err(|e: crate::config::LocalityError| {
                ConfigError::new(vec![crate::config::Problem::new(
                    crate::config::ProblemKind::InvalidValue,
                    "",
                    None,
                    format!("MESH_LOCALITY: {e}"),
                )])
            })?;
            mesh.set_locality(Some(locality));
        }
        if let Some(path) = std::env::var_os("MESH_SHADOW_CONFIG").filter(|v| !v.is_empty()) {
            mesh.watch_candidate_file(PathBuf::from(path))?;
        }
        Ok(mesh)
    }

    /// [`Mesh::from_env`], once it is serving a config: a control plane's
    /// first answer takes a moment, and requests sent before it would pass
    /// through unrouted. Fails if none arrives within `wait`, naming where
    /// it was expected from. Needs a tokio runtime with time enabled.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), proxyless_core::ReadyError> {
    /// let mesh = proxyless_core::Mesh::from_env_ready(std::time::Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_env_ready(wait: Duration) -> Result<Mesh, ReadyError> {
        let mesh = Self::from_env()?;
        if tokio::time::timeout(wait, mesh.ready()).await.is_err() {
            return Err(ReadyError::Timeout {
                from: mesh.snapshot().source().clone(),
                waited: wait,
            });
        }
        Ok(mesh)
    }

    fn from_env_sources() -> Result<Mesh, ConfigError> {
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        if set("MESH_SHADOW_CONFIG") && set("MESH_SHADOW_CONTROL_PLANE") {
            return Err(ConfigError::new(vec![crate::config::Problem::new(
                crate::config::ProblemKind::Syntax,
                "",
                None,
                "MESH_SHADOW_CONFIG and MESH_SHADOW_CONTROL_PLANE are both set: a mesh evaluates one candidate".to_owned(),
            )]));
        }
        let mesh = Self::from_env_live()?;
        #[cfg(feature = "xds")]
        {
            let refused = |e: &dyn std::fmt::Display| {
                ConfigError::new(vec![crate::config::Problem::new(
                    crate::config::ProblemKind::Syntax,
                    "",
                    None,
                    format!("MESH_SHADOW_CONTROL_PLANE: {e}"),
                )])
            };
            let settings =
                crate::xds::XdsSettings::candidate_from_env().map_err(|e| refused(&e))?;
            if let Some(settings) = settings {
                mesh.candidate_from_control_plane(settings)
                    .map_err(|e| refused(&e))?;
            }
        }
        Ok(mesh)
    }

    /// The live config's source.
    fn from_env_live() -> Result<Mesh, ConfigError> {
        #[cfg(not(feature = "xds"))]
        for var in [
            "MESH_CONTROL_PLANE",
            "MESH_XDS_BOOTSTRAP",
            "GRPC_XDS_BOOTSTRAP",
            "GRPC_XDS_BOOTSTRAP_CONFIG",
        ] {
            let set = std::env::var_os(var).is_some_and(|v| !v.is_empty());
            if set && std::env::var_os("MESH_CONFIG").is_none_or(|v| v.is_empty()) {
                return Err(ConfigError::new(vec![crate::config::Problem::new(
                    crate::config::ProblemKind::Syntax,
                    "",
                    None,
                    format!("{var} is set, but proxyless-core was built without its `xds` feature"),
                )]));
            }
        }
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
                        e.to_string(),
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

/// Why [`Mesh::from_env_ready`] returned no mesh.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadyError {
    /// The environment's config (or its identity) could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No config arrived in time.
    #[error("no config from {from} within {waited:?}")]
    Timeout {
        /// Where the config was expected from.
        from: Source,
        /// How long was waited.
        waited: Duration,
    },
}

fn read(path: &Path) -> Result<String, ConfigError> {
    // Judged before reading: a huge file is refused without being read.
    let len = std::fs::metadata(path)
        .map_err(|e| file_problem(path, format!("cannot read the file: {e}")))?
        .len();
    let limit = crate::config::MAX_CONFIG_BYTES;
    if usize::try_from(len).map_or(true, |l| l > limit) {
        return Err(file_problem(
            path,
            format!("the file is {len} bytes, over the limit of {limit}"),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| file_problem(path, format!("cannot read the file: {e}")))?;
    text_of(bytes, path)
}

fn text_of(bytes: Vec<u8>, path: &Path) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        file_problem(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn file_problem(path: &Path, msg: String) -> ConfigError {
    ConfigError::new(vec![crate::config::Problem::new(
        crate::config::ProblemKind::Syntax,
        "",
        None,
        msg,
    )])
    .in_file(path)
}

fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    Config::parse(text, Format::of_path(path)).map_err(|e| e.in_file(path))
}

/// What is known of the file without reading it: its inode (an editor's
/// or a ConfigMap's rename makes a new one), length and modification time.
/// The file is read when this changes; when the modification time is so
/// recent that a second write in the same clock tick could hide behind it
/// (git's "racy clean" case: file times are coarse); and every
/// [`FULL_READ_EVERY`] polls whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            inode,
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    /// Whether a write within the last [`RACY`] could share this stamp.
    fn is_racy(&self) -> bool {
        self.modified
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < RACY)
    }
}

/// How recent a modification time is too recent to trust.
const RACY: Duration = Duration::from_secs(2);

/// Every this many polls the file is read even if its stamp is unchanged.
const FULL_READ_EVERY: u32 = 50;

/// What a watched file configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The live config.
    Live,
    /// The candidate evaluated beside it.
    Candidate,
}

fn spawn_watcher(
    mesh: &Mesh,
    path: PathBuf,
    last: String,
    target: Target,
) -> Result<(), ConfigError> {
    let weak = mesh.downgrade();
    let name = format!("mesh-config-watch:{}", path.display());
    let mut last = last.into_bytes();
    let mut last_stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
    let err_path = path.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut missing_logged = false;
            let mut polls = 0u32;
            loop {
                std::thread::sleep(POLL_INTERVAL);
                let Some(mesh) = Mesh::upgrade(&weak) else {
                    return;
                };
                polls = polls.wrapping_add(1);
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        if !missing_logged {
                            tracing::warn!(file = %path.display(), "cannot read the mesh config, last good config keeps serving: {e}");
                            missing_logged = true;
                        }
                        continue;
                    }
                };
                missing_logged = false;
                let now = Some(Stamp::of(&meta));
                if now == last_stamp
                    && !now.is_some_and(|s| s.is_racy())
                    && !polls.is_multiple_of(FULL_READ_EVERY)
                {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                if bytes == last {
                    last_stamp = now;
                    continue;
                }
                // A writer may be half way through the file: act only on
                // content that stays the same for a short while.
                std::thread::sleep(SETTLE);
                match std::fs::read(&path) {
                    Ok(again) if again == bytes => {}
                    _ => continue,
                }
                last_stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
                let parsed = text_of(bytes.clone(), &path).and_then(|t| parse(&t, &path));
                match (parsed, target) {
                    (Ok(cfg), Target::Live) => {
                        let _ = mesh.update(cfg, Source::File(path.clone()));
                    }
                    (Err(e), Target::Live) => mesh.reject(e),
                    // Refusals are logged by `set_candidate`.
                    (Ok(cfg), Target::Candidate) => {
                        let _ = mesh.set_candidate(cfg, Source::File(path.clone()));
                    }
                    (Err(e), Target::Candidate) => {
                        tracing::warn!(file = %path.display(), "candidate config refused; the candidate loaded before stays: {e}");
                    }
                }
                last = bytes;
            }
        })
        .map(|_| ())
        .map_err(|e| file_problem(&err_path, format!("cannot start the file watcher: {e}")))
}

/// Loads and watches this workload's identity: from `MESH_TLS_CERT`,
/// `MESH_TLS_KEY` and `MESH_TLS_CA` when set, else from the config's
/// `identity` (paths relative to the config file's directory), else from
/// the SPIFFE Workload API at `SPIFFE_ENDPOINT_SOCKET`.
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
        return follow_workload_api(mesh);
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

/// The identity from the SPIFFE Workload API when `SPIFFE_ENDPOINT_SOCKET`
/// is set: pending (the mesh is not ready) until the agent delivers.
#[cfg(feature = "tls")]
fn follow_workload_api(mesh: &Mesh) -> Result<(), ConfigError> {
    let Some(endpoint) = std::env::var("SPIFFE_ENDPOINT_SOCKET")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return Ok(());
    };
    let problem = |message: String| {
        ConfigError::new(vec![crate::config::Problem::new(
            crate::config::ProblemKind::Identity,
            "identity",
            None,
            message,
        )])
    };
    #[cfg(feature = "spiffe")]
    {
        let identity = crate::identity::tls::Identity::pending(endpoint.as_str());
        if !crate::identity::workload_api::follow(&identity, &endpoint) {
            return Err(problem(format!(
                "SPIFFE_ENDPOINT_SOCKET={endpoint}: the Workload API is followed by a task, which needs a tokio runtime"
            )));
        }
        mesh.set_identity(identity);
        Ok(())
    }
    #[cfg(not(feature = "spiffe"))]
    {
        let _ = mesh;
        Err(problem(format!(
            "SPIFFE_ENDPOINT_SOCKET={endpoint} is set, but proxyless-core was built without its `spiffe` feature (or set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_CA)"
        )))
    }
}
