//! A config file, as YAML and as JSON: decoding and validation never
//! panic; whatever validates compiles, routes a few requests, and goes
//! through the xDS translation both ways without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyless_core::config::{Config, Format};
use proxyless_core::route::{RequestParts, decide};
use proxyless_core::snapshot::{Snapshot, Source};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Yaml, Format::Json] {
        let Ok(cfg) = Config::parse(text, format) else {
            continue;
        };
        exercise(cfg);
    }
});

fn exercise(cfg: Config) {
    let resources = proxyless_core::xds::translate::from_config(&cfg);
    let names: Vec<proxyless_core::config::Name> =
        cfg.services.iter().map(|s| s.name.clone()).collect();
    let _ = proxyless_core::xds::translate::to_config(
        &resources,
        names.iter(),
        &Default::default(),
        &mut Vec::new(),
        &mut Default::default(),
    );
    let Ok(snap) = Snapshot::compile(cfg, 1, Source::Code) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", http::HeaderValue::from_static("tester"));
    for service in snap.config().services.iter().take(4) {
        for host in service.hosts.iter().chain([&service.name]).take(4) {
            for (path, sample) in [("/", 0), ("/a/b?x=1", u64::MAX), ("/ratings/1", 1 << 63)] {
                let parts = RequestParts::new(host, "GET", path, Some("x=1"), &headers);
                let _ = decide(&snap, &parts, sample);
            }
        }
    }
}
