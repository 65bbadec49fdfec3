//! The rendered bootstrap is accepted by the real Envoy (`envoy --mode validate`), both as a file
//! (`-c`) and inline (`--config-yaml`, how the Docker runtime passes it).
//!
//! Envoy: `ENVOY_BIN`, else `/work/main/.venv/bin/envoy`, else `envoy` on `PATH`. Without one the
//! test is skipped, unless `CI=true` (then it fails).
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use traffic_sidecar::bootstrap::{render, AdsApiType, BootstrapOptions};
use traffic_sidecar::PodRef;

fn envoy() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ENVOY_BIN").map(PathBuf::from),
        Some(PathBuf::from("/work/main/.venv/bin/envoy")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| {
            Command::new("envoy")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| PathBuf::from("envoy"))
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no Envoy binary under CI"
        );
        eprintln!("skip: no Envoy (set ENVOY_BIN)");
    }
    found
}

fn pod() -> PodRef {
    PodRef {
        uid: "3859d687-9149-4bc2-9f5d-f115c0506b70".into(),
        namespace: "shop".into(),
        name: "reviews-v1-55cbf59466-mwxj5".into(),
    }
}

fn validate(envoy: &PathBuf, args: &[&str]) {
    let out = Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "warn"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy rejected the bootstrap:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn envoy_accepts_the_bootstrap_for_every_api_type_and_address_kind() {
    let Some(envoy) = envoy() else { return };
    let dir = std::env::temp_dir().join(format!("traffic-sidecar-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (api, cp, fetch) in [
        (AdsApiType::Grpc, "10.201.0.1:18000", None),
        (
            AdsApiType::DeltaGrpc,
            "10.201.0.1:18000",
            Some(Duration::from_millis(2500)),
        ),
        (
            AdsApiType::Grpc,
            "traffic-control.traffic-system.svc.cluster.local:18000",
            None,
        ),
        (AdsApiType::DeltaGrpc, "[fd00::1]:18000", None),
    ] {
        let mut o = BootstrapOptions::new(cp);
        o.api_type = api;
        o.initial_fetch_timeout = fetch;
        let text = render(&pod(), &o).unwrap();
        let file = dir.join("bootstrap.json");
        std::fs::write(&file, &text).unwrap();
        validate(&envoy, &["-c", file.to_str().unwrap()]);
        validate(&envoy, &["--config-yaml", &text]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
