//! The example configs shipped in `config/` are valid, and the effective config that
//! `tether check-config` prints for them is itself a config that tether accepts unchanged:
//! an operator can save that output and run on it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test, as users run it.
const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// The examples the README and the reference point at; the test must not pass on an
/// empty directory.
const DOCUMENTED_EXAMPLES: [&str; 2] = ["minimal.toml", "tether.toml"];

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .map(|entry| entry.expect("list config/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    for name in DOCUMENTED_EXAMPLES {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "config/{name} is missing"
        );
    }
    files
}

/// `tether check-config -c FILE`: the printed effective config, or why it was refused.
fn check_config(file: &Path) -> Result<String, String> {
    let output = Command::new(TETHER)
        .arg("check-config")
        .arg("-c")
        .arg(file)
        .env_remove("TETHER_CONFIG")
        .output()
        .unwrap_or_else(|err| panic!("start {TETHER}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ))
    }
}

/// Why `example` is not a valid config whose effective config round-trips, if it is not.
fn round_trip_failure(example: &Path, scratch: &Path) -> Option<String> {
    let effective = match check_config(example) {
        Ok(text) => text,
        Err(why) => return Some(format!("refused: {why}")),
    };
    if let Err(err) = effective.parse::<toml::Table>() {
        return Some(format!(
            "the effective config is not TOML: {err}\n{effective}"
        ));
    }
    let saved = scratch.join(example.file_name().expect("an example has a file name"));
    fs::write(&saved, &effective).unwrap_or_else(|err| panic!("write {}: {err}", saved.display()));
    match check_config(&saved) {
        Err(why) => Some(format!(
            "its effective config is refused: {why}\n--- effective config ---\n{effective}"
        )),
        Ok(again) if again != effective => Some(format!(
            "its effective config prints differently when checked again\n\
             --- first ---\n{effective}\n--- second ---\n{again}"
        )),
        Ok(_) => None,
    }
}

#[test]
fn every_example_config_is_valid_and_its_effective_config_round_trips() {
    let scratch = tempfile::tempdir().expect("create a scratch directory");
    let failures: Vec<String> = examples()
        .iter()
        .filter_map(|example| {
            let why = round_trip_failure(example, scratch.path())?;
            Some(format!("{}: {why}", example.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_reference_config_documents_the_check_timing_and_check_config_prints_it() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tether.toml");
    let text = fs::read_to_string(&reference).expect("read config/tether.toml");
    for key in ["check_interval = ", "check_timeout = "] {
        assert!(
            text.lines().any(|l| l.starts_with(key)),
            "config/tether.toml does not set {key:?}"
        );
    }
    let effective = check_config(&reference).expect("the reference config is valid");
    let table: toml::Table = effective.parse().expect("the effective config is TOML");
    let targets = table["targets"].as_array().expect("targets");
    let timing = |name: &str| {
        let t = targets
            .iter()
            .find(|t| t["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no target {name} in\n{effective}"));
        (
            t.get("check_interval").and_then(|v| v.as_str()),
            t.get("check_timeout").and_then(|v| v.as_str()),
        )
    };
    // Overridden, and inherited from [defaults].
    assert_eq!(timing("db"), (Some("5s"), Some("2s")));
    assert_eq!(timing("cache"), (Some("2s"), Some("1s")));
    // A tcp target has no check to time, though [defaults] sets one.
    let minimal = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/minimal.toml");
    let effective = check_config(&minimal).expect("the minimal config is valid");
    assert!(effective.contains("kind = \"tcp\""), "{effective}");
    assert!(!effective.contains("check_interval"), "{effective}");
}

/// The TOML of a ConfigMap's `tether.toml: |` block, as Kubernetes mounts it.
fn configmap_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "tether.toml: |");
    assert!(lines.next().is_some(), "no `tether.toml: |` block");
    let block: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    block
        .iter()
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_configmap_holds_a_config_tether_accepts() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/configmap.yaml");
    let text = configmap_toml(&fs::read_to_string(&manifest).unwrap());
    assert!(text.contains("[[targets]]"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tether.toml");
    fs::write(&file, &text).unwrap();
    if let Err(why) = check_config(&file) {
        panic!("{} is refused: {why}\n{text}", manifest.display());
    }
}

#[test]
fn the_container_image_and_compose_configs_are_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/docker");
    for name in ["tether.toml", "compose-tether.toml"] {
        if let Err(why) = check_config(&dir.join(name)) {
            panic!("deploy/docker/{name} is refused: {why}");
        }
    }
}
