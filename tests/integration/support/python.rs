//! The Python tools some tests drive tether with (an SSE client library among them),
//! from the virtualenv `scripts/python-venv` makes out of `scripts/python-tools.txt`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The virtualenv's `python`: `TETHER_TEST_VENV` when `scripts/test` exported it, else
/// the one `scripts/python-venv` makes (or finds up to date) under `target/`.
pub fn python() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = std::env::var_os("TETHER_TEST_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(make_venv);
        let python = venv.join("bin/python");
        assert!(
            python.exists(),
            "no {} in TETHER_TEST_VENV: run ./scripts/test (or ./scripts/python-venv) first",
            python.display()
        );
        venv
    })
    .join("bin/python")
}

fn make_venv() -> PathBuf {
    let script = root().join("scripts/python-venv");
    let out = Command::new(&script).output().unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run ./scripts/test, which makes the Python test tools",
            script.display()
        )
    });
    assert!(
        out.status.success(),
        "{} failed ({}); run ./scripts/test, which makes the Python test tools:\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The repository, where the test scripts live.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
