//! The settings shipped in deploy/ are settings `pulse serve` takes: the
//! Kubernetes ConfigMap's pulse.toml parses (an unknown or misspelt key is
//! an error) and says what the other manifests rely on.

use clap::Parser;
use pulse_server::config::{ServeArgs, parse_with_file};
use std::path::Path;

#[derive(Parser)]
struct TestArgs {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The block under `pulse.toml: |` in the ConfigMap, unindented.
fn configmap_toml() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/configmap.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    yaml.lines()
        .skip_while(|line| line.trim() != "pulse.toml: |")
        .skip(1)
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .map(|line| line.get(4..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_configmap_holds_settings_pulse_serve_takes() {
    let toml = configmap_toml();
    assert!(toml.contains("qdrant-url"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pulse.toml");
    std::fs::write(&file, &toml).unwrap();
    let args = parse_with_file::<TestArgs>(vec![
        "pulse".into(),
        "--config".into(),
        file.into_os_string(),
    ])
    .unwrap_or_else(|e| panic!("deploy/k8s/configmap.yaml: {e:#}"))
    .serve;
    assert_eq!(
        args.qdrant.qdrant_url.as_deref(),
        Some("http://qdrant:6334")
    );
    assert_eq!(args.qdrant.qdrant_replication, 2);
    assert_eq!(
        args.api_key_file.as_deref(),
        Some(Path::new("/etc/pulse/keys/api-keys")),
        "where deployment.yaml mounts the Secret"
    );
    let limits = args.key_limits().unwrap();
    assert_eq!(limits.requests_per_second, Some(50.0));
}

/// docs/operations.md carries `pulse serve --help` verbatim;
/// `scripts/config-reference` rewrites it when a flag changes.
#[test]
fn the_operations_guide_has_this_versions_flags() {
    // Without the environment: --help prints the values of PULSE_* variables.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
        .env_clear()
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let page = std::fs::read_to_string(path).unwrap();
    let documented = page
        .split_once("<!-- pulse serve --help -->\n```text\n")
        .and_then(|(_, rest)| rest.split_once("\n```\n<!-- end -->"))
        .map(|(block, _)| block)
        .expect("the reference block in docs/operations.md");
    assert_eq!(
        documented,
        help.trim_end(),
        "docs/operations.md is stale: run scripts/config-reference"
    );
}
