//! Istio and App Mesh resources (YAML or JSON, many documents): importing
//! never panics, and a config it makes is valid and reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyless_core::config::Config;
use proxyless_core::import::{Options, import};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = import(&[("fuzz.yaml", text)], &Options::default()) else {
        return;
    };
    assert!(out.config.validate().is_ok(), "an import is valid");
    let yaml = out.config.to_yaml_short();
    let back = Config::from_yaml(&yaml);
    assert!(back.is_ok_and(|c| c == out.config), "what import writes reads back:\n{yaml}");
    for loss in &out.losses {
        let _ = loss.to_string();
    }
});
