//! `meshctl`: check a mesh config before shipping it, and ask it where a
//! request would go.
//!
//! ```text
//! cargo run --example meshctl -- check mesh.yaml
//! cargo run --example meshctl -- route mesh.yaml GET http://reviews/ratings/1 -H x-user:tester
//! cargo run --example meshctl -- certs --trust-domain demo.local --out ./certs reviews productpage
//! cargo run --example meshctl -- shadow 127.0.0.1:9901
//! cargo run --example meshctl -- import [--check] [--out mesh.yaml] istio/*.yaml
//! ```
//!
//! `check` exits 0 with a one-line summary when the file is valid, and 1 with
//! every problem (file, line, field path, reason) when it is not. `route`
//! prints the route that matches and the backends its split would pick, with
//! their shares; it exits 1 when the mesh has no route for the request.
//! `certs` makes a development CA and, per named workload, `NAME.pem` (its
//! chain, SPIFFE ID `spiffe://TRUST-DOMAIN/NAME` unless `--id NAME=ID` says
//! otherwise) and `NAME-key.pem`, next to the trust bundle `ca.pem`; each
//! run makes a new CA, so issue every workload in one run. `shadow` reads
//! a running workload's shadow evaluation from its admin server (`/shadow`):
//! how many requests its candidate config would route differently, by
//! service and route, with the newest such requests; it exits 0 when none
//! would, 1 when some would (a gate before promoting the candidate), and 2
//! when the report cannot be read or no candidate is loaded. `import` reads
//! Istio (`VirtualService`, `DestinationRule`, `ServiceEntry`,
//! `PeerAuthentication`, `AuthorizationPolicy`) and App Mesh resources
//! (Kubernetes resources, or the JSON of `aws appmesh describe-*`) and
//! writes this mesh's config (to `--out`, else standard output); every
//! field not carried over as it was is listed on standard error by file,
//! line, resource, field path and reason. With `--check` nothing is
//! written and it exits 1 when anything would be lost or approximated.
//! `--trust-domain` (`cluster.local`), `--cluster-domain` (`cluster.local`)
//! and `--port` (80, for destinations that name none) say what the
//! resources leave implicit.

#![allow(clippy::print_stdout)]

use proxyless_core::config::Config;
use proxyless_core::route::{Decision, RequestParts, decide, match_route};
use proxyless_core::snapshot::{Snapshot, Source};
use std::process::ExitCode;

const USAGE: &str = "usage:
  meshctl check FILE
  meshctl route FILE METHOD URL [-H name:value]...
  meshctl certs --trust-domain TD --out DIR [--id NAME=spiffe://...]... NAME...
  meshctl shadow ADMIN_ADDR
  meshctl import [--check] [--out FILE] [--trust-domain TD] [--cluster-domain D] [--port N] FILE...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("check") => check(&args[1..]),
        Some("route") => route(&args[1..]),
        Some("certs") => certs(&args[1..]),
        Some("shadow") => shadow(&args[1..]),
        Some("import") => import(&args[1..]),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}

fn check(args: &[String]) -> Result<ExitCode, String> {
    let [file] = args else {
        return Err(USAGE.to_owned());
    };
    match Config::from_path(file) {
        Ok(cfg) => {
            let routes: usize = cfg.services.iter().map(|s| s.routes.len()).sum();
            let endpoints: usize = cfg.backends.iter().map(|b| b.endpoints.len()).sum();
            println!(
                "{file}: valid: {} services, {routes} routes, {} backends, {endpoints} endpoints, {} inbound policies",
                cfg.services.len(),
                cfg.backends.len(),
                cfg.inbound.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn route(args: &[String]) -> Result<ExitCode, String> {
    let [file, method, url, rest @ ..] = args else {
        return Err(USAGE.to_owned());
    };
    let mut headers = http::HeaderMap::new();
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let (Some(h), "-H") = (rest.next(), flag.as_str()) else {
            return Err(format!("unexpected argument `{flag}`\n{USAGE}"));
        };
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not name:value"))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|e| format!("header name `{k}`: {e}"))?;
        let value = http::HeaderValue::from_str(v.trim())
            .map_err(|e| format!("header value `{v}`: {e}"))?;
        headers.append(name, value);
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("URL `{url}`: {e}"))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .ok_or_else(|| format!("URL `{url}` has no host; write it as http://HOST/PATH"))?;
    let cfg = Config::from_path(file).map_err(|e| e.to_string())?;
    let snap = Snapshot::compile(cfg, 1, Source::File(file.into())).map_err(|e| e.to_string())?;
    let req = RequestParts::new(authority, method, uri.path(), uri.query(), &headers);

    match decide(&snap, &req, 0) {
        Err(no_route) => {
            println!("no route: {no_route}");
            Ok(ExitCode::from(1))
        }
        Ok(Decision::Passthrough) => {
            println!(
                "host `{}` belongs to no service: passthrough to {authority} as addressed",
                req.host()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Decision::Route(_)) => {
            let Some(service) = snap.service_for_host(req.host()) else {
                return Err("internal: the service vanished".to_owned());
            };
            let Some(r) = match_route(service, &req) else {
                return Err("internal: the route vanished".to_owned());
            };
            println!("service  {}", service.name());
            println!("route    {}", r.name());
            println!(
                "timeout  {}",
                proxyless_core::config::format_duration(r.timeout())
            );
            if let Some(retry) = r.retry() {
                let on: Vec<String> = retry.on.iter().map(ToString::to_string).collect();
                println!("retry    {} attempts, on {}", retry.attempts, on.join(", "));
            }
            if let Some((h, _)) = r.hedge() {
                let delay = match h.delay {
                    proxyless_core::config::HedgeDelay::Fixed(d) => {
                        proxyless_core::config::format_duration(d)
                    }
                    proxyless_core::config::HedgeDelay::Percentile(p) => {
                        format!("the route's p{p} latency")
                    }
                    _ => "?".to_owned(),
                };
                println!(
                    "hedge    up to {} attempts, the next after {delay}; at most {}% of requests",
                    h.attempts, h.budget_percent
                );
            }
            if let Some((limit, _)) = r.rate_limit() {
                let per = match &limit.per {
                    Some(proxyless_core::config::RateLimitKey::Header(h)) => {
                        format!(", per value of `{h}`")
                    }
                    Some(proxyless_core::config::RateLimitKey::Path) => ", per path".to_owned(),
                    _ => String::new(),
                };
                println!(
                    "limit    {} per {}, bursts of {}{per}; refused: 429 / UNAVAILABLE, never retried",
                    limit.tokens_per_fill,
                    proxyless_core::config::format_duration(limit.fill_interval),
                    limit.max_tokens
                );
            }
            let total = r.split().total() as f64;
            println!("backends");
            for (idx, weight) in r.split().items() {
                let Some(b) = snap.backend(idx) else { continue };
                let eps: Vec<&str> = b.endpoints().iter().map(|e| &*e.address).collect();
                println!(
                    "  {:>5.1}%  {}  [{}]",
                    weight as f64 * 100.0 / total,
                    b.name(),
                    eps.join(", ")
                );
            }
            if let Some((b, pct)) = r.mirror().and_then(|(i, p)| Some((snap.backend(i)?, p))) {
                println!("mirror   {pct}% to {}", b.name());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn certs(args: &[String]) -> Result<ExitCode, String> {
    let (mut td, mut out, mut ids, mut names) = (None, None, Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--trust-domain" => td = it.next().cloned(),
            "--out" => out = it.next().cloned(),
            "--id" => {
                let spec = it.next().ok_or(USAGE)?;
                let (name, id) = spec
                    .split_once('=')
                    .ok_or_else(|| format!("--id `{spec}` is not NAME=spiffe://..."))?;
                let id: proxyless_core::identity::SpiffeId =
                    id.parse().map_err(|e| format!("--id `{spec}`: {e}"))?;
                ids.push((name.to_owned(), id));
            }
            flag if flag.starts_with("--") => {
                return Err(format!("unknown flag `{flag}`\n{USAGE}"));
            }
            name => names.push(name.to_owned()),
        }
    }
    let (Some(td), Some(out)) = (td, out) else {
        return Err(USAGE.to_owned());
    };
    if names.is_empty() {
        return Err(format!("name at least one workload\n{USAGE}"));
    }
    let out = std::path::PathBuf::from(out);
    let ca = mesh::certs::DevCa::new(&td).map_err(|e| format!("trust domain `{td}`: {e}"))?;
    ca.write_ca(&out).map_err(|e| e.to_string())?;
    println!("{}", out.join("ca.pem").display());
    for name in &names {
        let issued = match ids.iter().find(|(n, _)| n == name) {
            Some((_, id)) => ca.issue(id, &mesh::certs::IssueOptions::default()),
            None => ca.issue_for(name),
        }
        .map_err(|e| format!("{name}: {e}"))?;
        issued.write(&out, name).map_err(|e| e.to_string())?;
        println!(
            "{}  {}",
            out.join(format!("{name}.pem")).display(),
            issued.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn shadow(args: &[String]) -> Result<ExitCode, String> {
    let [admin] = args else {
        return Err(USAGE.to_owned());
    };
    let addr = admin.trim_start_matches("http://").trim_end_matches('/');
    let (status, body) = get(addr, "/shadow")?;
    if status != 200 {
        return Err(format!("{addr}/shadow answered {status}: {}", body.trim()));
    }
    let r: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{addr}/shadow: not JSON: {e}"))?;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (evaluated, differing) = (n(&r["evaluated"]), n(&r["differing"]));
    let c = &r["candidate"];
    println!(
        "candidate  {} ({} services)",
        c["source"].as_str().unwrap_or("?"),
        n(&c["services"])
    );
    let share = if evaluated == 0 {
        0.0
    } else {
        differing as f64 * 100.0 / evaluated as f64
    };
    println!(
        "evaluated  {evaluated} requests; {differing} ({share:.1}%) would be routed differently"
    );
    let differences = r["differences"].as_array().cloned().unwrap_or_default();
    if !differences.is_empty() {
        println!(
            "\n{:>9}  {:<16} {:<36} candidate",
            "requests", "service", "live"
        );
        for d in &differences {
            let service = d["live"]["service"]
                .as_str()
                .or(d["candidate"]["service"].as_str())
                .unwrap_or("-");
            println!(
                "{:>9}  {:<16} {:<36} {}",
                n(&d["requests"]),
                service,
                outcome(&d["live"]),
                outcome(&d["candidate"])
            );
        }
    }
    let other = n(&r["other_differences"]);
    if other > 0 {
        println!("{other:>9}  (differences of further kinds, counted together)");
    }
    let samples = r["samples"].as_array().cloned().unwrap_or_default();
    if !samples.is_empty() {
        println!("\nnewest differing requests");
        for s in samples.iter().rev().take(10) {
            println!(
                "  {} {}{}: {} | {}",
                s["method"].as_str().unwrap_or("?"),
                s["authority"].as_str().unwrap_or("?"),
                s["path"].as_str().unwrap_or("?"),
                outcome(&s["live"]),
                outcome(&s["candidate"])
            );
        }
    }
    Ok(if differing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// An outcome from `/shadow`, in a line.
fn outcome(o: &serde_json::Value) -> String {
    let s = |k: &str| o[k].as_str().unwrap_or("?").to_owned();
    match o["outcome"].as_str() {
        Some("routed") => format!("{} -> {}", s("route"), s("backend")),
        Some("passthrough") => "passthrough".to_owned(),
        Some("unknown_host") => "refused: unknown host".to_owned(),
        Some("no_matching_route") => "refused: no route".to_owned(),
        Some("no_backend") => format!("{}: no backend", s("route")),
        _ => "?".to_owned(),
    }
}

/// `GET path` from the admin server at `addr` (bounded in time and size):
/// its status and body.
fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| format!("admin address `{addr}`: {e}"))?;
    let wait = std::time::Duration::from_secs(5);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<bytes::Bytes>>();
        let resp = tokio::time::timeout(wait, client.get(uri))
            .await
            .map_err(|_| format!("{addr}: no answer within {wait:?}"))?
            .map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(wait, Limited::new(resp.into_body(), 16 << 20).collect())
            .await
            .map_err(|_| format!("{addr}: the answer did not end within {wait:?}"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    })
}

fn import(args: &[String]) -> Result<ExitCode, String> {
    use proxyless_core::import::{LossKind, Options};
    let mut options = Options::default();
    let (mut check, mut out, mut files) = (false, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--check" => check = true,
            "--out" => out = Some(value()?),
            "--trust-domain" => options.trust_domain = value()?,
            "--cluster-domain" => options.cluster_domain = value()?,
            "--port" => {
                let v = value()?;
                options.default_port = v
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("--port `{v}`: expected a port number"))?;
            }
            f if f.starts_with("--") => return Err(format!("unknown option `{f}`\n{USAGE}")),
            f => files.push(f.to_owned()),
        }
    }
    if files.is_empty() {
        return Err(USAGE.to_owned());
    }
    let mut texts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        texts.push((f.as_str(), text));
    }
    let inputs: Vec<(&str, &str)> = texts.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let imported = proxyless_core::import::import(&inputs, &options).map_err(|e| e.to_string())?;
    for loss in &imported.losses {
        eprintln!("{loss}");
    }
    let lost = imported
        .losses
        .iter()
        .filter(|l| l.kind == LossKind::Dropped)
        .count();
    let approximated = imported.losses.len() - lost;
    let c = &imported.config;
    eprintln!(
        "{} resources read: {} services, {} backends, {} inbound policies; {lost} fields lost, {approximated} approximated",
        imported.read.len(),
        c.services.len(),
        c.backends.len(),
        c.inbound.len()
    );
    if check {
        return Ok(if imported.lossy() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let yaml = format!(
        "# Made by `meshctl import` from {}.\n# {lost} fields lost and {approximated} approximated: see its report.\n{}",
        files.join(", "),
        c.to_yaml_short()
    );
    match out {
        Some(path) => std::fs::write(&path, yaml).map_err(|e| format!("{path}: {e}"))?,
        None => print!("{yaml}"),
    }
    Ok(ExitCode::SUCCESS)
}
