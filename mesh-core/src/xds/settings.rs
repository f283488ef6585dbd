//! Where the xDS client gets its config from, and as whom: settings in
//! code, from the environment, or from a gRPC bootstrap file.

use std::time::Duration;

/// Where to get config from, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSettings {
    /// The control plane, `http://host:port`.
    pub server: String,
    /// This node's id.
    pub node_id: String,
    /// This node's cluster (Istio puts the workload's namespace here).
    pub node_cluster: String,
    /// The listener names (service hosts) to subscribe to from the start;
    /// others are subscribed to when first called (see `on_demand`).
    pub services: Vec<String>,
    /// The protocol variant.
    pub api: Api,
    /// How long the first request to a host no service claims waits for
    /// the control plane's answer about it; `None` turns on-demand
    /// subscription off (only `services` are known).
    pub on_demand: Option<Duration>,
    /// For a server: its service name and the listener that carries its
    /// inbound policy (mTLS mode from the filter chains' TLS, authorization
    /// from the RBAC HTTP filters).
    pub inbound: Option<Inbound>,
    /// The node's metadata (a JSON object, sent as a `Struct`): the
    /// bootstrap's `node.metadata`, which istiod reads to know what kind of
    /// client it serves.
    pub node_metadata: Option<serde_json::Value>,
    /// The node's locality (region, zone, sub-zone), from the bootstrap.
    pub node_locality: Option<[String; 3]>,
    /// The bootstrap's `server_listener_resource_name_template` (`%s` is
    /// the listening address, `MESH_XDS_INBOUND_ADDR`), as Istio writes it
    /// for proxyless servers.
    pub server_listener_template: Option<String>,
    /// The largest single resource accepted, encoded; a larger one is
    /// NACKed by name (`MESH_XDS_MAX_RESOURCE_BYTES`, default 16 MiB).
    pub max_resource_bytes: usize,
    /// The largest response message read from the stream
    /// (`MESH_XDS_MAX_MESSAGE_BYTES`, default 256 MiB; gRPC's default of
    /// 4 MiB is too small for large meshes). A larger message ends the
    /// stream, which reconnects with backoff.
    pub max_message_bytes: usize,
    /// The bootstrap's `certificate_providers` (gRPC A29): `file_watcher`
    /// instances by name, which clusters' and listeners' TLS contexts name
    /// (`tls_certificate_provider_instance`,
    /// `ca_certificate_provider_instance`). Each becomes an identity source
    /// of the mesh ([`Mesh::set_identity_source`](crate::Mesh::set_identity_source)).
    pub certificate_providers:
        std::collections::BTreeMap<String, crate::identity::provider::FileWatcher>,
    /// An SDS server of its own (a node agent's socket, `unix:///path`, or
    /// `http://host:port`): the secrets clusters and listeners name are
    /// fetched from it over the Secret Discovery Service rather than over
    /// the ADS stream (`MESH_SDS_SERVER`).
    pub sds_server: Option<String>,
    /// Where the last known good config is kept (`MESH_STATE_DIR`; off
    /// when `None`): each config published from the control plane is
    /// written there, and a client that starts while its control plane is
    /// down serves it (marked stale) after [`state_wait`](Self::state_wait).
    pub state_dir: Option<std::path::PathBuf>,
    /// How long a starting client waits for its control plane before it
    /// serves the last known good config (`MESH_STATE_WAIT`, default 3 s).
    pub state_wait: Duration,
}

/// The default of [`XdsSettings::state_wait`].
pub const STATE_WAIT: Duration = Duration::from_secs(3);

/// The longest [`XdsSettings::state_wait`].
pub const MAX_STATE_WAIT: Duration = Duration::from_secs(600);

/// The default of [`XdsSettings::max_resource_bytes`].
pub const MAX_RESOURCE_BYTES: usize = 16 * 1024 * 1024;
/// The default of [`XdsSettings::max_message_bytes`].
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Which listener carries a server's inbound policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The service the policy governs (the server's `MESH_SERVICE`).
    pub service: String,
    /// The listener's name.
    pub listener: String,
}

/// The variant of the ADS protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// State of the world (`StreamAggregatedResources`, Envoy's `GRPC`):
    /// every response carries every subscribed resource of its type.
    #[default]
    Sotw,
    /// Incremental (`DeltaAggregatedResources`, Envoy's `DELTA_GRPC`):
    /// responses carry only what changed or was removed, and subscriptions
    /// change by name. Cheaper for large meshes.
    Delta,
}

impl std::str::FromStr for Api {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, SettingsError> {
        match s.to_ascii_lowercase().as_str() {
            "sotw" | "grpc" | "state-of-the-world" => Ok(Api::Sotw),
            "delta" | "delta_grpc" | "incremental" => Ok(Api::Delta),
            other => Err(SettingsError::variable(
                "MESH_XDS_API",
                other,
                "expected `sotw` (state of the world) or `delta` (incremental)",
            )),
        }
    }
}

/// The default bound of an on-demand wait.
pub const ON_DEMAND_WAIT: Duration = Duration::from_secs(2);

impl XdsSettings {
    /// Settings for `server`, as node `node_id`, subscribing to `services`.
    pub fn new(server: &str, node_id: &str, services: Vec<String>) -> Self {
        Self {
            server: server.to_owned(),
            node_id: node_id.to_owned(),
            node_cluster: String::new(),
            services,
            api: Api::Sotw,
            on_demand: Some(ON_DEMAND_WAIT),
            inbound: None,
            node_metadata: None,
            node_locality: None,
            server_listener_template: None,
            max_resource_bytes: MAX_RESOURCE_BYTES,
            max_message_bytes: MAX_MESSAGE_BYTES,
            certificate_providers: Default::default(),
            sds_server: None,
            state_dir: None,
            state_wait: STATE_WAIT,
        }
    }

    /// The same settings for a server of `service`: its inbound policy
    /// comes from the listener our development control plane names
    /// [`INBOUND_PREFIX`](super::translate::INBOUND_PREFIX)`service`.
    pub fn serving(mut self, service: &str) -> Self {
        self.inbound = Some(Inbound {
            service: service.to_owned(),
            listener: format!("{}{service}", super::translate::INBOUND_PREFIX),
        });
        self
    }

    /// The file the last known good config is kept in, with a state
    /// directory: `xds-<hash of the server and node id>.state` in it.
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        let dir = self.state_dir.as_ref()?;
        Some(super::client::persist::path(
            dir,
            &self.server,
            &self.node_id,
        ))
    }

    /// The same settings over the incremental (delta) variant.
    pub fn delta(mut self) -> Self {
        self.api = Api::Delta;
        self
    }

    /// From the environment: `MESH_CONTROL_PLANE` (`http://host:port`) or a
    /// gRPC-style bootstrap file (`MESH_XDS_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP`:
    /// `xds_servers[0].server_uri`, `node.id`, `node.cluster`); the services
    /// from `MESH_XDS_SERVICES` (comma-separated); the node id from
    /// `MESH_NODE_ID`, the bootstrap, or `MESH_SERVICE` and the host name;
    /// the variant from `MESH_XDS_API` (`sotw`, the default, or `delta`);
    /// the node's locality from `MESH_LOCALITY` (`region/zone/subzone`,
    /// over the bootstrap's); an SDS server of its own from
    /// `MESH_SDS_SERVER`; the last known good config's directory and wait
    /// from `MESH_STATE_DIR` and `MESH_STATE_WAIT`;
    /// the on-demand wait from `MESH_XDS_ON_DEMAND` (a duration such as
    /// `2s`, the default, or `off`).
    pub fn from_env() -> Result<Option<Self>, SettingsError> {
        let Some(s) = Self::from_env_sources()? else {
            return Ok(None);
        };
        s.with_env().map(Some)
    }

    /// The settings for a candidate config's control plane, when
    /// `MESH_SHADOW_CONTROL_PLANE` names one (see
    /// [`Mesh::candidate_from_control_plane`](crate::Mesh::candidate_from_control_plane)):
    /// those of [`XdsSettings::from_env`] (or, without a control plane of
    /// the live config's, the node and services the environment names)
    /// with that server, no inbound listener and no last known good.
    pub fn candidate_from_env() -> Result<Option<Self>, SettingsError> {
        let Some(server) = env_var("MESH_SHADOW_CONTROL_PLANE") else {
            return Ok(None);
        };
        refuse_tls("MESH_SHADOW_CONTROL_PLANE", &server)?;
        let mut s = match Self::from_env_sources()? {
            Some(s) => s,
            None => {
                let id = env_var("MESH_NODE_ID").unwrap_or_else(default_node_id);
                Self::new(&server, &id, services_from_env())
            }
        }
        .with_env()?;
        s.server = server;
        s.inbound = None;
        s.state_dir = None;
        Ok(Some(s))
    }

    /// These settings with what the environment's `MESH_*` variables say
    /// beyond the server and node.
    fn with_env(mut self) -> Result<Self, SettingsError> {
        let s = &mut self;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(api) = var("MESH_XDS_API") {
            s.api = api.parse()?;
        }
        if let Some(service) = var("MESH_SERVICE") {
            let listener = var("MESH_XDS_INBOUND_LISTENER").or_else(|| {
                // The bootstrap's template names it by the listening address.
                let template = s.server_listener_template.clone()?;
                Some(template.replace("%s", &var("MESH_XDS_INBOUND_ADDR")?))
            });
            *s = s.clone().serving(&service);
            if let (Some(inbound), Some(listener)) = (s.inbound.as_mut(), listener) {
                inbound.listener = listener;
            }
        }
        for (k, n) in [
            ("MESH_XDS_MAX_RESOURCE_BYTES", &mut s.max_resource_bytes),
            ("MESH_XDS_MAX_MESSAGE_BYTES", &mut s.max_message_bytes),
        ] {
            if let Some(v) = var(k) {
                *n = v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    SettingsError::variable(k, &v, "expected a number of bytes above zero")
                })?;
            }
        }
        if let Some(sds) = var("MESH_SDS_SERVER") {
            refuse_tls("MESH_SDS_SERVER", &sds)?;
            s.sds_server = Some(if sds.contains("://") || sds.starts_with("unix:") {
                sds
            } else {
                format!("http://{sds}")
            });
        }
        if let Some(l) = var("MESH_LOCALITY") {
            let l: crate::config::Locality =
                l.parse().map_err(|e: crate::config::LocalityError| {
                    SettingsError::variable("MESH_LOCALITY", &l, e)
                })?;
            s.node_locality = Some([l.region, l.zone, l.subzone]);
        }
        if let Some(dir) = var("MESH_STATE_DIR") {
            s.state_dir = Some(dir.into());
        }
        if let Some(w) = var("MESH_STATE_WAIT") {
            s.state_wait = crate::config::duration::parse_duration(&w)
                .ok()
                .filter(|d| *d <= MAX_STATE_WAIT)
                .ok_or_else(|| {
                    SettingsError::variable("MESH_STATE_WAIT", &w, "expected a duration up to 10m")
                })?;
        }
        if let Some(wait) = var("MESH_XDS_ON_DEMAND") {
            s.on_demand = match wait.as_str() {
                "off" | "false" | "0" => None,
                w => Some(
                    crate::config::duration::parse_duration(w)
                        .map_err(|e| SettingsError::variable("MESH_XDS_ON_DEMAND", w, e))?,
                ),
            };
        }
        Ok(self)
    }

    fn from_env_sources() -> Result<Option<Self>, SettingsError> {
        let var = env_var;
        let services = services_from_env();
        let default_id = default_node_id;
        if let Some(server) = var("MESH_CONTROL_PLANE") {
            refuse_tls("MESH_CONTROL_PLANE", &server)?;
            let id = var("MESH_NODE_ID").unwrap_or_else(default_id);
            return Ok(Some(Self::new(&server, &id, services)));
        }
        // A file, or (as gRPC also reads) the bootstrap's text itself.
        let (origin, text) = match var("MESH_XDS_BOOTSTRAP").or_else(|| var("GRPC_XDS_BOOTSTRAP")) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| SettingsError::bootstrap(&path, format!("cannot read it: {e}")))?;
                (path, text)
            }
            None => match var("GRPC_XDS_BOOTSTRAP_CONFIG") {
                Some(text) => ("GRPC_XDS_BOOTSTRAP_CONFIG".to_owned(), text),
                None => return Ok(None),
            },
        };
        let mut s = Self::from_bootstrap(&text, services).map_err(|e| e.with_origin(&origin))?;
        if s.node_id.is_empty() {
            s.node_id = default_id();
        }
        if let Some(id) = var("MESH_NODE_ID") {
            s.node_id = id;
        }
        Ok(Some(s))
    }

    /// From the text of a gRPC xDS bootstrap file (the format istio-agent
    /// and Traffic Director's generator write): `xds_servers[0].server_uri`
    /// (`host:port`, a URL, or istio-agent's `unix:///etc/istio/proxy/XDS`)
    /// with its `channel_creds`, `node.id` (empty if absent),
    /// `node.cluster` and `server_listener_resource_name_template`. Refuses
    /// what this client cannot honour instead of connecting without it:
    /// credentials other than `insecure`.
    pub fn from_bootstrap(text: &str, services: Vec<String>) -> Result<Self, SettingsError> {
        let b: Bootstrap = serde_json::from_str(text)
            .map_err(|e| SettingsError::bootstrap("bootstrap", e.to_string()))?;
        let server =
            b.xds_servers.into_iter().next().ok_or_else(|| {
                SettingsError::bootstrap("bootstrap", "no xds_servers[0].server_uri")
            })?;
        let uri = server.server_uri;
        let kinds: Vec<&str> = server
            .channel_creds
            .iter()
            .map(|c| c.kind.as_str())
            .collect();
        if !kinds.is_empty() && !kinds.contains(&"insecure") {
            return Err(SettingsError::bootstrap(
                "bootstrap",
                format!("xds_servers[0].channel_creds {kinds:?}: only `insecure` is supported"),
            ));
        }
        refuse_tls("xds_servers[0].server_uri", &uri)?;
        let server = if uri.contains("://") || uri.starts_with("unix:") {
            uri
        } else {
            format!("http://{uri}")
        };
        let node = b.node.unwrap_or_default();
        let mut s = Self::new(&server, &node.id, services);
        s.node_cluster = node.cluster;
        s.node_metadata = node.metadata.map(serde_json::Value::Object);
        s.node_locality = node.locality.map(|l| [l.region, l.zone, l.sub_zone]);
        s.server_listener_template = b.server_listener_resource_name_template;
        s.certificate_providers = certificate_providers(b.certificate_providers)?;
        Ok(s)
    }
}

/// A gRPC xDS bootstrap file: the fields this client reads (others are
/// ignored).
#[derive(Debug, serde::Deserialize)]
struct Bootstrap {
    #[serde(default)]
    xds_servers: Vec<BootstrapServer>,
    node: Option<BootstrapNode>,
    server_listener_resource_name_template: Option<String>,
    #[serde(default)]
    certificate_providers: std::collections::BTreeMap<String, BootstrapProvider>,
}

#[derive(Debug, serde::Deserialize)]
struct BootstrapProvider {
    plugin_name: String,
    #[serde(default)]
    config: serde_json::Map<String, serde_json::Value>,
}

/// The most certificate provider instances a bootstrap may declare.
const MAX_CERTIFICATE_PROVIDERS: usize = 64;

/// The bootstrap's provider instances, each checked; an instance this
/// client cannot run (another plugin, a config it cannot read) refuses the
/// bootstrap by name rather than leaving clusters that name it without
/// their certificates.
fn certificate_providers(
    declared: std::collections::BTreeMap<String, BootstrapProvider>,
) -> Result<std::collections::BTreeMap<String, crate::identity::provider::FileWatcher>, SettingsError>
{
    use crate::identity::provider::{DEFAULT_REFRESH, FileWatcher, parse_json_duration};
    if declared.len() > MAX_CERTIFICATE_PROVIDERS {
        return Err(SettingsError::bootstrap(
            "bootstrap",
            format!("certificate_providers: more than {MAX_CERTIFICATE_PROVIDERS} instances"),
        ));
    }
    let mut out = std::collections::BTreeMap::new();
    for (name, p) in declared {
        let at = format!("certificate_providers.{name}");
        let refuse =
            |problem: String| SettingsError::bootstrap("bootstrap", format!("{at}: {problem}"));
        if name.is_empty()
            || name.starts_with(crate::xds::translate::SDS_PREFIX)
            || name.len() > 256
        {
            return Err(refuse(
                "an instance name is 1 to 256 characters, not starting with `sds:`".into(),
            ));
        }
        if p.plugin_name != "file_watcher" {
            return Err(refuse(format!(
                "plugin `{}` is not supported (only `file_watcher`)",
                p.plugin_name
            )));
        }
        let path = |key: &str| -> Result<Option<std::path::PathBuf>, SettingsError> {
            match p.config.get(key) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.into())),
                Some(other) => Err(refuse(format!("config.{key} must be a path, not {other}"))),
            }
        };
        let refresh_interval = match p.config.get("refresh_interval") {
            None => DEFAULT_REFRESH,
            Some(serde_json::Value::String(s)) => parse_json_duration(s).ok_or_else(|| {
                refuse(format!(
                    "config.refresh_interval `{s}` is not a duration such as `600s`"
                ))
            })?,
            Some(other) => {
                return Err(refuse(format!(
                    "config.refresh_interval must be a string such as `600s`, not {other}"
                )));
            }
        };
        let watcher = FileWatcher {
            certificate_file: path("certificate_file")?,
            private_key_file: path("private_key_file")?,
            ca_certificate_file: path("ca_certificate_file")?,
            refresh_interval,
        };
        watcher.check(&name).map_err(|e| refuse(e.problem))?;
        out.insert(name, watcher);
    }
    Ok(out)
}

#[derive(Debug, serde::Deserialize)]
struct BootstrapServer {
    server_uri: String,
    #[serde(default)]
    channel_creds: Vec<ChannelCreds>,
}

#[derive(Debug, serde::Deserialize)]
struct ChannelCreds {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Default, serde::Deserialize)]
struct BootstrapNode {
    #[serde(default)]
    id: String,
    #[serde(default)]
    cluster: String,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    locality: Option<BootstrapLocality>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct BootstrapLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    sub_zone: String,
}

/// A TLS control plane is refused at start-up, by name, rather than
/// retried forever with an error at every connect.
fn refuse_tls(origin: &str, uri: &str) -> Result<(), SettingsError> {
    if uri.starts_with("https://") {
        return Err(SettingsError::Tls {
            origin: origin.to_owned(),
            uri: uri.to_owned(),
        });
    }
    Ok(())
}

/// Why the xDS client's settings could not be read, or the client started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// An environment variable with a value that cannot be used.
    #[error("{name} `{value}`: {expected}")]
    Variable {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A bootstrap file that cannot be read or used.
    #[error("{origin}: {problem}")]
    Bootstrap {
        /// The file (or `GRPC_XDS_BOOTSTRAP_CONFIG`).
        origin: String,
        /// What is wrong, with the field.
        problem: String,
    },
    /// A control plane over TLS, which this client does not speak yet.
    #[error(
        "{origin} `{uri}`: TLS to the control plane is not supported yet; use its plaintext port (istiod: 15010) or istio-agent's Unix socket"
    )]
    Tls {
        /// Where the address came from.
        origin: String,
        /// The address.
        uri: String,
    },
    /// No tokio runtime to run the client on.
    #[error("the xDS client needs a tokio runtime")]
    NoRuntime,
}

impl SettingsError {
    fn variable(name: &str, value: &str, expected: impl std::fmt::Display) -> Self {
        Self::Variable {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: expected.to_string(),
        }
    }

    fn bootstrap(origin: &str, problem: impl Into<String>) -> Self {
        Self::Bootstrap {
            origin: origin.to_owned(),
            problem: problem.into(),
        }
    }

    /// The same error, naming the bootstrap's real origin.
    fn with_origin(self, origin: &str) -> Self {
        match self {
            Self::Bootstrap { problem, .. } => Self::bootstrap(origin, problem),
            Self::Tls { origin: field, uri } => Self::Tls {
                origin: format!("{origin}: {field}"),
                uri,
            },
            other => other,
        }
    }
}
/// An environment variable's value, unless unset or empty.
fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// `MESH_XDS_SERVICES`, split.
fn services_from_env() -> Vec<String> {
    env_var("MESH_XDS_SERVICES")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// `$MESH_SERVICE~$HOSTNAME`, as Istio names nodes.
fn default_node_id() -> String {
    let host = env_var("HOSTNAME").unwrap_or_else(|| "localhost".into());
    format!(
        "{}~{host}",
        env_var("MESH_SERVICE").unwrap_or_else(|| "mesh".into())
    )
}
