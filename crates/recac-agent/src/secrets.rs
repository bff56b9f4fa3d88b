//! The Secrets a task names, mounted by the operator as files
//! (`RECAC_SECRETS_DIR/<secret-name>/<key>`) into the agent's container or, with the secret
//! broker, only into the broker's, which hands them to the agent once ([`crate::broker`]); and
//! what the commands the model can influence get to see of the agent's credentials.
//!
//! Every value read is redacted from all output. A key named like an environment variable is
//! also a setting (see [`crate::settings::Settings::from_lookup`] for the precedence). Commands
//! the model can influence get none of these names unless `RECAC_SECRET_ENV_ALLOW` lists them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::process::CommandSpec;
use crate::settings::vars;

/// A Secret folder or key file that exists but cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets folder {}: {source}", .path.display())]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the secret file {}: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Names that are never passed to a command the model can influence, whatever the allow list
/// says: git gets its token only through its credential helper, and ssh its key only from a
/// private file named on git's own command line.
pub const NEVER_PASSED: &[&str] = &[vars::GIT_TOKEN, vars::GITHUB_TOKEN, vars::SSH_PRIVATE_KEY];

/// Whether `name` can be an environment variable (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The keys of the Secrets mounted under one folder.
#[derive(Clone, Default)]
pub struct SecretFiles {
    /// Keys named like environment variables, with their (trimmed) text.
    vars: BTreeMap<String, String>,
    /// Every value read (trimmed), whatever its key's name.
    values: Vec<Vec<u8>>,
}

impl fmt::Debug for SecretFiles {
    // Names only: the values are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFiles")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("values", &self.values.len())
            .finish()
    }
}

/// One key of one Secret as read, before trimming (the value is a secret: never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretEntry {
    /// The Secret's folder name (empty for a key mounted directly under the folder).
    pub secret: String,
    pub key: String,
    pub value: Vec<u8>,
}

impl fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretEntry({}, {} bytes)",
            self.origin(),
            self.value.len()
        )
    }
}

impl SecretEntry {
    /// `secret/key` (or `key`), for messages.
    pub fn origin(&self) -> String {
        if self.secret.is_empty() {
            self.key.clone()
        } else {
            format!("{}/{}", self.secret, self.key)
        }
    }
}

/// Reads every key of every Secret folder under `dir`, in the order [`SecretFiles`] takes
/// them; fails on the first folder or file that exists but cannot be read. A missing `dir`
/// holds no Secrets.
pub fn read_entries(dir: &Path) -> Result<Vec<SecretEntry>, SecretsError> {
    let (entries, mut errors) = scan(dir);
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// Folders in name order, keys in name order within each. Entries starting with `..` are
/// Kubernetes' bookkeeping (`..data` and its timestamped target) and are skipped; symlinks
/// are followed.
fn scan(dir: &Path) -> (Vec<SecretEntry>, Vec<SecretsError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let top = match sorted_entries(dir) {
        Ok(top) => top,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (entries, errors),
        Err(source) => {
            errors.push(SecretsError::Folder {
                path: dir.to_path_buf(),
                source,
            });
            return (entries, errors);
        }
    };
    let mut take = |result: Result<Option<SecretEntry>, SecretsError>| match result {
        Ok(Some(entry)) => entries.push(entry),
        Ok(None) => {}
        Err(e) => errors.push(e),
    };
    for (name, path) in top {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => match sorted_entries(&path) {
                Ok(keys) => {
                    for (key, key_path) in keys {
                        take(read_entry(&name, &key, &key_path));
                    }
                }
                Err(source) => take(Err(SecretsError::Folder { path, source })),
            },
            // A key mounted directly under the folder.
            Ok(_) => take(read_entry("", &name, &path)),
            Err(source) => take(Err(SecretsError::File { path, source })),
        }
    }
    (entries, errors)
}

/// One key file; `None` for a folder (only `items` with nested paths make folders here; the
/// operator mounts none).
fn read_entry(secret: &str, key: &str, path: &Path) -> Result<Option<SecretEntry>, SecretsError> {
    let file_error = |source| SecretsError::File {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(file_error)?.is_dir() {
        return Ok(None);
    }
    let value = std::fs::read(path).map_err(file_error)?;
    Ok(Some(SecretEntry {
        secret: secret.to_string(),
        key: key.to_string(),
        value,
    }))
}

impl SecretFiles {
    /// Reads every key of every Secret folder under `dir`; fails on the first folder or file
    /// that exists but cannot be read. A missing `dir` holds no Secrets.
    pub fn read(dir: &Path) -> Result<Self, SecretsError> {
        Ok(Self::from_entries(&read_entries(dir)?))
    }

    /// Reads what can be read under `dir`, skipping what cannot (for a redactor set up before
    /// the settings report those errors).
    pub fn read_lenient(dir: &Path) -> Self {
        Self::from_entries(&scan(dir).0)
    }

    /// The Secrets from their keys as read (from the folder, or from the secret broker, which
    /// read the same folder in its own container). When two Secrets hold the same key, the
    /// later entry (the Secret whose name sorts last) wins, as the last `envFrom` source did.
    pub fn from_entries(entries: &[SecretEntry]) -> Self {
        let mut files = Self::default();
        for entry in entries {
            files.accept(entry);
        }
        files
    }

    fn accept(&mut self, entry: &SecretEntry) {
        let value = entry.value.trim_ascii();
        if value.is_empty() {
            return;
        }
        self.values.push(value.to_vec());
        if !is_env_name(&entry.key) {
            return;
        }
        let key = entry.key.as_str();
        match std::str::from_utf8(value) {
            Ok(text) => {
                if self
                    .vars
                    .insert(key.to_string(), text.to_string())
                    .is_some()
                {
                    tracing::warn!(
                        key,
                        secret = %entry.secret,
                        "the key is in more than one Secret: the one whose name sorts last wins"
                    );
                }
            }
            Err(_) => tracing::warn!(
                key,
                secret = %entry.secret,
                "the value is not text: it is redacted but not a setting"
            ),
        }
    }

    /// The value of a key named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The keys named like environment variables.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// Every value read.
    pub fn values(&self) -> &[Vec<u8>] {
        &self.values
    }
}

/// `(name, path)` of the entries of `dir` in name order, without those starting with `..`.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Parses `RECAC_SECRET_ENV_ALLOW`: names separated by commas (or whitespace).
pub fn parse_allow(raw: &str) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    for name in raw
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|n| !n.is_empty())
    {
        if !is_env_name(name) {
            return Err(format!("`{name}` is not an environment variable name"));
        }
        out.insert(name.to_string());
    }
    Ok(out)
}

/// What the commands the model can influence (tests, tool commands, an external agent CLI) get
/// of the credentials: none, except the names the allow list passes.
#[derive(Clone, Default)]
pub struct ChildEnv {
    /// Every credential name: the known ones and each Secret key named like a variable, with
    /// its value when it has one.
    credentials: BTreeMap<String, Option<String>>,
    allow: BTreeSet<String>,
}

impl fmt::Debug for ChildEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildEnv")
            .field("withheld", &self.credentials.keys().collect::<Vec<_>>())
            .field("allow", &self.allow)
            .finish()
    }
}

impl ChildEnv {
    /// The policy for these credential `names`, passing `allow`; `value` gives a name's value
    /// (from the environment or a Secret file).
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a str>,
        allow: BTreeSet<String>,
        value: impl Fn(&str) -> Option<String>,
    ) -> Self {
        for name in NEVER_PASSED {
            if allow.contains(*name) {
                tracing::warn!(
                    name,
                    "{} lists {name}, which is never passed to commands (only git gets it, through its credential helper or its ssh command)",
                    vars::SECRET_ENV_ALLOW
                );
            }
        }
        let credentials = names
            .into_iter()
            .map(|n| (n.to_string(), value(n)))
            .collect();
        Self { credentials, allow }
    }

    /// Whether `name` is withheld from the commands the model runs.
    pub fn withholds(&self, name: &str) -> bool {
        self.credentials.contains_key(name) && !self.passes(name, &[])
    }

    fn passes(&self, name: &str, extra: &[&str]) -> bool {
        !NEVER_PASSED.contains(&name) && (self.allow.contains(name) || extra.contains(&name))
    }

    /// Scrubs a command the model can influence: every credential is removed from its
    /// environment, except the allowed ones, which are set (a Secret file's value is not in
    /// the agent's own environment to inherit).
    pub fn apply(&self, spec: &mut CommandSpec) {
        self.apply_passing(spec, &[]);
    }

    /// As [`ChildEnv::apply`], also passing the names in `extra`.
    pub fn apply_passing(&self, spec: &mut CommandSpec, extra: &[&str]) {
        for (name, value) in &self.credentials {
            if self.passes(name, extra) {
                spec.remove_env.retain(|n| n != name);
                if let Some(value) = value {
                    spec.env.retain(|(n, _)| n != name);
                    spec.env.push((name.clone(), value.clone()));
                }
            } else if !spec.remove_env.contains(name) {
                spec.remove_env.push(name.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::Duration;

    /// A Secret folder laid out as the kubelet does: key symlinks into `..data`, a symlink to a
    /// timestamped folder.
    fn mount(root: &Path, secret: &str, keys: &[(&str, &str)]) {
        let dir = root.join(secret);
        let stamp = dir.join("..2026_01_01_00_00_00.000000001");
        std::fs::create_dir_all(&stamp).unwrap();
        for (key, value) in keys {
            std::fs::write(stamp.join(key), value).unwrap();
            symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
        symlink(stamp.file_name().unwrap(), dir.join("..data")).unwrap();
    }

    #[test]
    fn reads_kubernetes_secret_volumes() {
        let root = tempfile::tempdir().unwrap();
        mount(
            root.path(),
            "a-creds",
            &[("OPENAI_API_KEY", "sk-from-file\n"), ("tls.key", "KEYDATA")],
        );
        mount(
            root.path(),
            "b-db",
            &[
                ("DB_PASSWORD", "pw-1"),
                ("OPENAI_API_KEY", "later"),
                ("EMPTY", ""),
            ],
        );
        std::fs::write(
            root.path().join("b-db/..2026_01_01_00_00_00.000000001/..x"),
            "x",
        )
        .unwrap();
        let files = SecretFiles::read(root.path()).unwrap();
        assert_eq!(files.get("DB_PASSWORD"), Some("pw-1"));
        assert_eq!(files.get("OPENAI_API_KEY"), Some("later"));
        assert_eq!(files.get("tls.key"), None);
        assert_eq!(
            files.names().collect::<Vec<_>>(),
            vec!["DB_PASSWORD", "OPENAI_API_KEY"]
        );
        let mut values: Vec<&[u8]> = files.values().iter().map(Vec::as_slice).collect();
        values.sort();
        assert_eq!(
            values,
            vec![&b"KEYDATA"[..], b"later", b"pw-1", b"sk-from-file"]
        );
        assert!(!format!("{files:?}").contains("pw-1"));
        // No folder, no Secrets.
        let none = SecretFiles::read(&root.path().join("missing")).unwrap();
        assert!(none.values().is_empty());
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("GOOD"), "good-value").unwrap();
        // A dangling symlink stands for a file that cannot be read (the tests may run as root,
        // which permissions would not stop).
        symlink("..data/GONE", dir.join("GONE")).unwrap();
        let err = SecretFiles::read(root.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("secret file") && text.contains("s/GONE"),
            "{text}"
        );
        let lenient = SecretFiles::read_lenient(root.path());
        assert_eq!(lenient.get("GOOD"), Some("good-value"));
        // A file where the folder should be.
        let file = root.path().join("s/GOOD");
        assert!(matches!(
            SecretFiles::read(&file.join("x")),
            Err(SecretsError::Folder { .. })
        ));
    }

    #[test]
    fn allow_lists_and_names() {
        assert!(is_env_name("DB_PASSWORD") && is_env_name("_x1"));
        assert!(!is_env_name("1X") && !is_env_name("tls.key") && !is_env_name(""));
        assert_eq!(
            parse_allow(" A, B C,,").unwrap(),
            ["A", "B", "C"].map(String::from).into()
        );
        assert!(parse_allow("A,b-c").unwrap_err().contains("b-c"));
    }

    #[test]
    fn child_env_withholds_all_but_allowed() {
        let env = ChildEnv::new(
            [
                "DB_PASSWORD",
                "PUBLIC_TOKEN",
                "RECAC_GIT_TOKEN",
                "OPENAI_API_KEY",
            ],
            parse_allow("PUBLIC_TOKEN,RECAC_GIT_TOKEN").unwrap(),
            |n| Some(format!("value-of-{n}")),
        );
        let mut spec = CommandSpec::new("sh", &[], "/", Duration::from_secs(1));
        env.apply(&mut spec);
        for name in [
            "DB_PASSWORD",
            "RECAC_GIT_TOKEN",
            "OPENAI_API_KEY",
            "GITHUB_TOKEN",
        ] {
            assert!(spec.remove_env.iter().any(|n| n == name), "{name}");
        }
        assert_eq!(
            spec.env,
            vec![(
                "PUBLIC_TOKEN".to_string(),
                "value-of-PUBLIC_TOKEN".to_string()
            )]
        );
        assert!(env.withholds("DB_PASSWORD") && !env.withholds("PUBLIC_TOKEN"));

        let mut spec = CommandSpec::new("agent", &[], "/", Duration::from_secs(1));
        env.apply_passing(&mut spec, &[vars::OPENAI_API_KEY, vars::GIT_TOKEN]);
        assert!(!spec.remove_env.iter().any(|n| n == "OPENAI_API_KEY"));
        assert!(spec.remove_env.iter().any(|n| n == "RECAC_GIT_TOKEN"));
        assert!(spec.env.contains(&(
            "OPENAI_API_KEY".to_string(),
            "value-of-OPENAI_API_KEY".to_string()
        )));
    }
}
