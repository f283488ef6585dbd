//! The last known good config, kept on disk (`MESH_STATE_DIR`): the
//! resources of each config the client published from its control plane,
//! as received, so that a client that starts while its control plane is
//! down can serve what it served last instead of nothing.
//!
//! One file per (control plane, node), written whole to a temporary name,
//! synced and renamed over the old one, so a reader sees the old file or
//! the new one, never half of one. Layout:
//!
//! ```text
//! "MESHLKG1"                  magic and format version
//! u32 LE, header              JSON: server, node, written (Unix seconds)
//! u64 LE, body                length-delimited google.protobuf.Any, one per resource
//! u32 LE                      CRC-32 of everything before it
//! ```
//!
//! A file that is truncated, corrupt (its checksum does not match), of
//! another format version, or written for another control plane or node is
//! refused with what was wrong, and never served. Secrets are not written
//! (they carry private keys); identities come from their own sources.

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"MESHLKG1";

/// The largest state file read (a client at its message limits holds far
/// less).
pub(crate) const MAX_STATE_BYTES: u64 = 512 * 1024 * 1024;

/// Why a state file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PersistError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not a state file of this format, or is cut short or
    /// corrupt.
    #[error("{path} is refused: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// A state file read back.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The resources, as received.
    pub(crate) resources: Vec<Any>,
    /// When it was written.
    pub(crate) written: SystemTime,
}

/// The state file of `server` and `node` in `dir`.
pub(crate) fn path(dir: &Path, server: &str, node: &str) -> PathBuf {
    // FNV-1a: a stable name across runs and builds (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server.bytes().chain([0]).chain(node.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    dir.join(format!("xds-{h:016x}.state"))
}

/// The file's bytes for `resources` (type URL and encoding of each, as
/// received: written as the `Any` that carried it, without copying it into
/// one first).
pub(crate) fn encode<'a>(
    server: &str,
    node: &str,
    written: SystemTime,
    resources: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Vec<u8> {
    let secs = written
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = serde_json::json!({ "server": server, "node": node, "written": secs }).to_string();
    let mut body = Vec::new();
    for (type_url, value) in resources {
        put_any(type_url, value, &mut body);
    }
    let mut out = Vec::with_capacity(body.len() + header.len() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Appends `google.protobuf.Any { type_url, value }`, length-delimited, as
/// prost encodes it (fields 1 and 2, each left out when empty).
fn put_any(type_url: &str, value: &[u8], out: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let fields = [(1, type_url.as_bytes()), (2, value)];
    let len: usize = fields
        .iter()
        .filter(|(_, b)| !b.is_empty())
        .map(|(tag, b)| key_len(*tag) + encoded_len_varint(b.len() as u64) + b.len())
        .sum();
    encode_varint(len as u64, out);
    for (tag, b) in fields.into_iter().filter(|(_, b)| !b.is_empty()) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (of
/// this process and write alone, so two writers never share one), synced,
/// then renamed over it. The directory is made if it is missing.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("state.{}.{n}.tmp", std::process::id()));
    let written = write_synced(&tmp, bytes);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_synced(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    // The config decides routing and authorization: only this workload's
    // user may read or replace it.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    let mut f = open.open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Reads the state file at `path`, written for `server` and `node`.
pub(crate) fn load(path: &Path, server: &str, node: &str) -> Result<Loaded, PersistError> {
    let bad = |why: String| PersistError::Invalid {
        path: path.to_owned(),
        why,
    };
    let read = |source| PersistError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_STATE_BYTES {
        return Err(bad(format!(
            "{len} bytes, over the limit of {MAX_STATE_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(read)?;
    decode(&bytes, server, node).map_err(|d| bad(d.0))
}

/// What is wrong with a state file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage(pub(crate) String);

/// The checks and the parse of [`load`], on bytes.
pub(crate) fn decode(bytes: &[u8], server: &str, node: &str) -> Result<Loaded, Damage> {
    let short = || Damage("truncated".to_owned());
    if bytes.len() < MAGIC.len() + 4 + 8 + 4 {
        return Err(short());
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return if bytes.starts_with(b"MESHLKG") {
            Err(Damage("written in another format version".to_owned()))
        } else {
            Err(Damage("not a state file".to_owned()))
        };
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    let mut rest = &content[MAGIC.len()..];
    let header_len = take_u32(&mut rest).ok_or_else(short)? as usize;
    let header = take(&mut rest, header_len).ok_or_else(short)?;
    let body_len = take_u64(&mut rest).ok_or_else(short)?;
    let body_len = usize::try_from(body_len).map_err(|_| short())?;
    let body = take(&mut rest, body_len).ok_or_else(short)?;
    if !rest.is_empty() {
        return Err(Damage(format!("{} bytes after its end", rest.len())));
    }
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(content) != want {
        return Err(Damage("its checksum does not match: corrupt".to_owned()));
    }
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| Damage(format!("its header: {e}")))?;
    let field = |k: &str| {
        header
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    };
    if field("server") != server || field("node") != node {
        return Err(Damage(format!(
            "written for control plane `{}` and node `{}`, not `{server}` and `{node}`",
            field("server"),
            field("node")
        )));
    }
    let secs = header
        .get("written")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| Damage("its header has no `written` time".to_owned()))?;
    let mut resources = Vec::new();
    let mut body = body;
    while !body.is_empty() {
        let any = Any::decode_length_delimited(&mut body)
            .map_err(|e| Damage(format!("resource {}: {e}", resources.len())))?;
        resources.push(any);
    }
    Ok(Loaded {
        resources,
        written: UNIX_EPOCH + Duration::from_secs(secs),
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let b = take(rest, 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn take_u64(rest: &mut &[u8]) -> Option<u64> {
    let b = take(rest, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Vec<Any> {
        vec![
            Any {
                type_url: "t/one".into(),
                value: vec![1, 2, 3],
            },
            Any {
                type_url: "t/two".into(),
                value: Vec::new(),
            },
        ]
    }

    fn encoded(t: SystemTime) -> Vec<u8> {
        let s = sample();
        let each = s.iter().map(|a| (a.type_url.as_str(), a.value.as_slice()));
        encode("http://cp:18000", "node-a", t, each)
    }

    /// Each resource is written as prost writes the `Any` that carried it,
    /// so files written either way read the same.
    #[test]
    fn resources_are_written_as_their_anys() {
        let mut ours = Vec::new();
        let mut prosts = Vec::new();
        for a in sample().iter().chain([&Any::default()]) {
            put_any(&a.type_url, &a.value, &mut ours);
            a.encode_length_delimited(&mut prosts).unwrap();
        }
        assert_eq!(ours, prosts);
    }

    #[test]
    fn a_file_reads_back_and_every_kind_of_damage_is_refused_by_name() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let bytes = encoded(t);
        let back = decode(&bytes, "http://cp:18000", "node-a").unwrap();
        assert_eq!((back.resources, back.written), (sample(), t));
        // Every cut is refused, none panics.
        for n in 0..bytes.len() {
            assert!(
                decode(&bytes[..n], "http://cp:18000", "node-a").is_err(),
                "{n}"
            );
        }
        // Every flipped byte is refused.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, "http://cp:18000", "node-a").is_err(), "{i}");
        }
        let mut b = bytes.clone();
        b[20] ^= 1;
        assert!(
            decode(&b, "http://cp:18000", "node-a")
                .unwrap_err()
                .0
                .contains("checksum")
        );
        let err = decode(&bytes, "http://cp:18000", "node-b").unwrap_err().0;
        assert!(err.contains("node `node-a`"), "{err}");
        let mut b = bytes.clone();
        b[7] = b'2';
        assert!(
            decode(&b, "x", "y")
                .unwrap_err()
                .0
                .contains("format version")
        );
        assert_eq!(
            decode(b"hello there, this is not a state file", "x", "y")
                .unwrap_err()
                .0,
            "not a state file"
        );
    }

    #[test]
    fn the_file_name_is_stable_and_per_server_and_node() {
        let dir = Path::new("/state");
        let a = path(dir, "http://cp:18000", "node-a");
        assert_eq!(a, path(dir, "http://cp:18000", "node-a"));
        assert_ne!(a, path(dir, "http://cp:18000", "node-b"));
        assert_ne!(a, path(dir, "http://cp:18001", "node-a"));
        assert!(a.to_string_lossy().starts_with("/state/xds-"));
    }

    #[test]
    fn writes_replace_the_file_whole_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet is made.
        let p = path(&dir.path().join("new"), "s", "n");
        write(&p, b"first").unwrap();
        write(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        // Writers at once (two clients of one node in a process) each use
        // a temporary file of their own: the file is one of theirs, whole.
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || write(&p, &vec![i; 100_000]).unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let last = std::fs::read(&p).unwrap();
        assert!(last.len() == 100_000 && last.iter().all(|b| *b == last[0]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "only the workload's user");
        }
        let left: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the state file is left");
        // A directory that cannot be made is an error, not a panic.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        assert!(write(&path(&blocked, "s", "n"), b"x").is_err());
    }
}
