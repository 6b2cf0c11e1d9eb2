//! The secret values tether has read (probe passwords, webhook keys), remembered so that
//! any text bound for an output can be masked.
//!
//! Keeping secrets out of what tether itself writes is not enough: a server's reply can
//! echo what it was sent (Redis answers an unknown `AUTH` with the command's first
//! argument), and that reply becomes `last_error`, which reaches `/status`, the state
//! file, logs, metrics-free hook variables and `tether status`. Every error text from the
//! wire passes through [`mask`] before it is shown.
//!
//! Values are never forgotten: a rotated secret stays masked for the life of the
//! process, so an old one cannot leak from a late reply either.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// What replaces a secret in text.
pub const MASK: &str = "[redacted]";

static KNOWN: RwLock<Vec<Box<str>>> = RwLock::new(Vec::new());

/// Names of the environment variables tether reads secrets from.
static VARIABLES: RwLock<Vec<Box<str>>> = RwLock::new(Vec::new());

/// Remembers `name` as a variable holding a secret: hooks do not inherit it.
pub fn withhold(name: &str) {
    let mut vars = VARIABLES.write().unwrap_or_else(|p| p.into_inner());
    if !vars.iter().any(|v| &**v == name) {
        vars.push(name.into());
    }
}

/// The variables hooks must not inherit: every one any config of this process read a
/// secret from (a variable dropped from a reloaded config may still hold one).
pub fn variables() -> Vec<Box<str>> {
    VARIABLES.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Remembers `value` as a secret to mask from now on. Empty values are ignored.
pub fn remember(value: &str) {
    if value.is_empty() {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    if !known.iter().any(|k| &**k == value) {
        known.push(value.into());
        // Longest first, so a secret that contains another is masked whole.
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }
}

/// `text` with every remembered secret replaced by [`MASK`].
pub fn mask(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Cow::Borrowed(text);
    for secret in known.iter() {
        if out.contains(&**secret) {
            out = Cow::Owned(out.replace(&**secret, MASK));
        }
    }
    out
}

// === Secret sources ===

/// Where a secret is read from: an environment variable, or a file (a Kubernetes Secret
/// volume, which is updated in place when the secret rotates).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Source {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A source that could not be read.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{source_name}: {why}")]
pub struct ReadError {
    pub source_name: Source,
    pub why: String,
}

/// The values last read, by source. Never shrinks: several configs (an embedding
/// program's sidecars, or the configs of successive reloads) may name the same source.
static VALUES: RwLock<BTreeMap<Source, Arc<[u8]>>> = RwLock::new(BTreeMap::new());

/// Reads one source now. A file's trailing line break is not part of the secret (most
/// editors and `echo` add one). An unset variable or an empty value is an error.
pub fn read(source: &Source) -> Result<Arc<[u8]>, ReadError> {
    let fail = |why: String| ReadError {
        source_name: source.clone(),
        why,
    };
    let mut value = match source {
        Source::Env(var) => std::env::var_os(var)
            .ok_or_else(|| fail("not set".to_owned()))?
            .into_encoded_bytes(),
        Source::File(path) => std::fs::read(path).map_err(|e| fail(e.to_string()))?,
    };
    if matches!(source, Source::File(_)) {
        while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(fail("empty".to_owned()));
    }
    if let Ok(text) = std::str::from_utf8(&value) {
        remember(text);
    }
    Ok(value.into())
}

/// What one start or reload read of a config's secrets: each source's value, or why it
/// could not be read. Every consumer (probes, webhook keys) takes its values from here,
/// so a source is read once per (re)load and all of them see the same value.
#[derive(Debug, Default)]
pub struct Loaded {
    read: BTreeMap<Source, Result<Arc<[u8]>, ReadError>>,
}

impl Loaded {
    /// What this load got from `source`; `None` if the config does not name it.
    pub fn get(&self, source: &Source) -> Option<&Result<Arc<[u8]>, ReadError>> {
        self.read.get(source)
    }

    pub fn errors(&self) -> impl Iterator<Item = &ReadError> {
        self.read.values().filter_map(|r| r.as_ref().err())
    }
}

/// Reads every source of a config, at start and on each reload, and keeps the values
/// for [`current`]. Sources that fail keep their previous value there, if any; the
/// errors are in the result for the caller to decide on (a webhook key is required, a
/// probe password fails its checks).
pub fn load<'a>(sources: impl IntoIterator<Item = &'a Source>) -> Loaded {
    let mut loaded = Loaded::default();
    for source in sources {
        if !loaded.read.contains_key(source) {
            loaded.read.insert(source.clone(), read(source));
        }
    }
    let mut values = VALUES.write().unwrap_or_else(|p| p.into_inner());
    for (source, value) in &loaded.read {
        if let Ok(value) = value {
            values.insert(source.clone(), value.clone());
        }
    }
    loaded
}

/// The value of `source` as last loaded, or read now if it never was (a checker run
/// without a sidecar around it).
pub fn current(source: &Source) -> Result<Arc<[u8]>, ReadError> {
    if let Some(v) = VALUES.read().unwrap_or_else(|p| p.into_inner()).get(source) {
        return Ok(v.clone());
    }
    let value = read(source)?;
    VALUES
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(source.clone(), value.clone());
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_secret_is_read_without_its_line_break_and_masked_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "file-secret-for-masking-7c1\n").unwrap();
        let source = Source::File(path.clone());
        assert_eq!(load([&source]).errors().count(), 0);
        assert_eq!(&*current(&source).unwrap(), b"file-secret-for-masking-7c1");
        assert_eq!(mask("x file-secret-for-masking-7c1 y"), "x [redacted] y");
        // Rotated in place: the next load has the new value.
        std::fs::write(&path, "rotated-secret-for-masking-7c1").unwrap();
        assert_eq!(load([&source]).errors().count(), 0);
        assert_eq!(
            &*current(&source).unwrap(),
            b"rotated-secret-for-masking-7c1"
        );
        // Gone: the error says which, and the last value stays.
        std::fs::remove_file(&path).unwrap();
        let loaded = load([&source]);
        let errors: Vec<_> = loaded.errors().collect();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("file "), "{}", errors[0]);
        assert_eq!(
            &*current(&source).unwrap(),
            b"rotated-secret-for-masking-7c1"
        );
    }

    #[test]
    fn remembered_secrets_are_masked_wherever_they_appear() {
        remember("s3cr3t-value-for-masking");
        remember("s3cr3t-value-for-masking-longer");
        let text = "ERR unknown command 'AUTH', with args beginning with: 's3cr3t-value-for-masking-longer' and s3cr3t-value-for-masking";
        let masked = mask(text);
        assert!(!masked.contains("s3cr3t"), "{masked}");
        assert_eq!(masked.matches(MASK).count(), 2, "{masked}");
        assert_eq!(mask("nothing secret here"), "nothing secret here");
    }
}
