//! The secret values tether has read (probe passwords, webhook keys), remembered so that
//! any text bound for an output can be masked.
//!
//! Keeping secrets out of what tether itself writes is not enough: a server's reply can
//! echo what it was sent (Redis answers an unknown `AUTH` with the command's first
//! argument), and that reply becomes `last_error`, which reaches `/status`, the state
//! file, logs, metrics-free hook variables and `tether status`. Every error text from the
//! wire passes through [`mask`] before it is kept.
//!
//! Values are never forgotten: a rotated secret stays masked for the life of the
//! process, so an old one cannot leak from a late reply either.

use std::borrow::Cow;
use std::sync::RwLock;

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

#[cfg(test)]
mod tests {
    use super::*;

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
