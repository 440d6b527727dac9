//! Policy files: the built-in schema and base policies, user `*.cedar` files from the
//! policy directories, their parsing and strict validation, and error locations
//! (`file:line:column`) for everything a policy author can get wrong.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};

/// The schema every policy is validated against (built in).
pub const SCHEMA_SRC: &str = include_str!("../../policies/schema.cedarschema");
/// The shipped base policies (built in).
pub const BASE_SRC: &str = include_str!("../../policies/base.cedar");
/// How the built-in base file is named in messages and when found in a directory.
pub const BASE_FILE: &str = "base.cedar";
const SCHEMA_FILE: &str = "schema.cedarschema";

/// One problem in a policy file, located for the author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem has no position.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Why policies could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("built-in schema is invalid: {0}")]
    Schema(String),
    #[error("cannot build policy set: {0}")]
    Set(String),
}

fn join_lines(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses the built-in schema.
pub fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA_SRC)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| PolicyError::Schema(e.to_string()))
}

/// A policy file's name (as shown in messages), the name its un-annotated policies'
/// ids start with, and its text.
struct Source {
    name: String,
    id_base: String,
    text: String,
}

impl Source {
    fn file(path: &Path, text: String) -> Source {
        Source {
            name: path.display().to_string(),
            id_base: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            text,
        }
    }
}

/// A policy file pushed to the control plane (`portcullis policy push`): its file name
/// and text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyFile {
    pub name: String,
    pub text: String,
}

/// The pushed set loaded beside the directories' files: its version, or `None` for a
/// set being checked before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedSet {
    pub version: Option<i64>,
    pub files: Vec<PolicyFile>,
}

/// Most files one pushed set may have.
pub const MAX_PUSHED_FILES: usize = 1000;

impl PushedSet {
    fn sources(&self) -> Vec<Source> {
        let label = match self.version {
            Some(v) => format!("policy version {v}"),
            None => "pushed".to_owned(),
        };
        self.files
            .iter()
            .map(|f| Source {
                name: format!("{} ({label})", f.name),
                id_base: f.name.clone(),
                text: f.text.clone(),
            })
            .collect()
    }

    /// The names must be distinct plain `*.cedar` file names (they name the files'
    /// policies), at most [`MAX_PUSHED_FILES`] of them.
    pub fn check_names(files: &[PolicyFile]) -> Result<(), PolicyError> {
        let mut diags = Vec::new();
        if files.len() > MAX_PUSHED_FILES {
            diags.push(Diagnostic {
                file: "pushed set".into(),
                line: 0,
                column: 0,
                message: format!(
                    "{} files; at most {MAX_PUSHED_FILES} may be pushed",
                    files.len()
                ),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for file in files {
            let stem = file.name.strip_suffix(".cedar").unwrap_or_default();
            let plain = !stem.is_empty()
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            let message = if !plain {
                "is not a plain `*.cedar` file name (letters, digits, `.`, `_`, `-`)"
            } else if !seen.insert(file.name.as_str()) {
                "is pushed twice"
            } else {
                continue;
            };
            diags.push(Diagnostic {
                file: format!("`{}`", file.name),
                line: 0,
                column: 0,
                message: message.into(),
            });
        }
        if diags.is_empty() {
            Ok(())
        } else {
            Err(PolicyError::Invalid(diags))
        }
    }
}

/// Base policies plus every `*.cedar` file directly in `dirs`, the listed `files` and
/// the `pushed` set, parsed, given unique ids and validated together in strict mode. A
/// `base.cedar` identical to the shipped one is the shipped copy and is skipped; a
/// `schema.cedarschema` that differs from the built-in schema is an error (the schema
/// cannot be changed).
pub fn load_policies(
    schema: &Schema,
    dirs: &[PathBuf],
    files: &[PathBuf],
    pushed: Option<&PushedSet>,
) -> Result<Vec<Policy>, PolicyError> {
    let mut sources = vec![Source {
        name: format!("{BASE_FILE} (built in)"),
        id_base: BASE_FILE.to_owned(),
        text: BASE_SRC.to_owned(),
    }];
    for dir in dirs {
        check_schema_copy(dir)?;
        for path in cedar_files(dir)? {
            let text = read(&path)?;
            let is_shipped_base = path.file_name().is_some_and(|n| n == BASE_FILE)
                && text.trim_end() == BASE_SRC.trim_end();
            if !is_shipped_base {
                sources.push(Source::file(&path, text));
            }
        }
    }
    for path in files {
        sources.push(Source::file(path, read(path)?));
    }
    if let Some(pushed) = pushed {
        PushedSet::check_names(&pushed.files)?;
        sources.extend(pushed.sources());
    }

    let mut diags = Vec::new();
    let mut policies = Vec::new();
    let mut origin: HashMap<PolicyId, usize> = HashMap::new();
    for (index, source) in sources.iter().enumerate() {
        match parse_file(source) {
            Ok(parsed) => {
                for policy in parsed {
                    if let Some(first) = origin.get(policy.id()) {
                        diags.push(Diagnostic {
                            file: source.name.clone(),
                            line: 0,
                            column: 0,
                            message: format!(
                                "duplicate policy id `{}` (already used in {})",
                                policy.id(),
                                sources[*first].name
                            ),
                        });
                        continue;
                    }
                    origin.insert(policy.id().clone(), index);
                    policies.push(policy);
                }
            }
            Err(mut errs) => diags.append(&mut errs),
        }
    }
    if !diags.is_empty() {
        return Err(PolicyError::Invalid(diags));
    }

    let set = PolicySet::from_policies(policies.iter().cloned()).map_err(|e| {
        PolicyError::Invalid(vec![Diagnostic {
            file: "policies".into(),
            line: 0,
            column: 0,
            message: e.to_string(),
        }])
    })?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    for err in result.validation_errors() {
        let source = origin.get(err.policy_id()).and_then(|i| sources.get(*i));
        let (file, text) = source.map_or(("policies", ""), |s| (s.name.as_str(), &s.text));
        diags.push(locate(
            file,
            text,
            err,
            format!("policy `{}`: {err}", err.policy_id()),
        ));
    }
    if diags.is_empty() {
        Ok(policies)
    } else {
        Err(PolicyError::Invalid(diags))
    }
}

/// The files of `dir` to push (`portcullis policy push`): every `*.cedar` directly in
/// it, but a `base.cedar` identical to the shipped one (the built-in copy is loaded
/// anyway), after the same schema check as loading the directory.
pub fn pushable_files(dir: &Path) -> Result<Vec<PolicyFile>, PolicyError> {
    check_schema_copy(dir)?;
    let mut files = Vec::new();
    for path in cedar_files(dir)? {
        let text = read(&path)?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if !(name == BASE_FILE && text.trim_end() == BASE_SRC.trim_end()) {
            files.push(PolicyFile { name, text });
        }
    }
    Ok(files)
}

/// Parses one file; un-annotated policies get the id `<file>#<n>`, annotated ones
/// their `@id`. Templates are refused (scope maps are the only parameterized policies).
fn parse_file(source: &Source) -> Result<Vec<Policy>, Vec<Diagnostic>> {
    let set = PolicySet::from_str(&source.text).map_err(|errs| {
        errs.iter()
            .map(|e| locate(&source.name, &source.text, e, e.to_string()))
            .collect::<Vec<_>>()
    })?;
    if set.templates().next().is_some() {
        return Err(vec![Diagnostic {
            file: source.name.clone(),
            line: 0,
            column: 0,
            message: "policy templates (`?principal`, `?resource`) are not supported".into(),
        }]);
    }
    let base = &source.id_base;
    Ok(set
        .policies()
        .map(|p| {
            let id = p
                .annotation("id")
                .map_or_else(|| format!("{base}#{}", p.id()), ToOwned::to_owned);
            p.new_id(PolicyId::new(id))
        })
        .collect())
}

/// The position of a Cedar diagnostic's first label within `text`.
fn locate(file: &str, text: &str, diag: &dyn miette::Diagnostic, message: String) -> Diagnostic {
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let (line, column) = match offset {
        Some(offset) if offset <= text.len() => line_column(text, offset),
        _ => (0, 0),
    };
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

fn check_schema_copy(dir: &Path) -> Result<(), PolicyError> {
    let path = dir.join(SCHEMA_FILE);
    if !path.exists() {
        return Ok(());
    }
    if read(&path)?.trim_end() != SCHEMA_SRC.trim_end() {
        return Err(PolicyError::Invalid(vec![Diagnostic {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: "differs from the schema built into portcullis; the schema cannot be changed by policy files".into(),
        }]));
    }
    Ok(())
}

/// `*.cedar` files directly in `dir`, sorted by name (subdirectories are not loaded).
fn cedar_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "cedar") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// What the reloader watches: name, size and mtime of every policy file in `dirs`.
pub fn fingerprint(dirs: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let watched = path
                .extension()
                .is_some_and(|e| e == "cedar" || e == "cedarschema");
            if let (true, Ok(meta)) = (watched, entry.metadata()) {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn shipped_schema_and_base_validate() {
        let schema = schema().unwrap();
        let policies = load_policies(&schema, &[], &[], None).unwrap();
        assert!(policies.len() >= 8);
        assert!(policies.iter().all(|p| p.annotation("id").is_some()));
    }

    #[test]
    fn shipped_policies_directory_loads_without_duplicates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let schema = schema().unwrap();
        let from_dir = load_policies(&schema, &[dir], &[], None).unwrap();
        assert_eq!(
            from_dir.len(),
            load_policies(&schema, &[], &[], None).unwrap().len()
        );
    }

    #[test]
    fn syntax_error_reports_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "broken.cedar",
            "// ok\npermit(principal, action, resource);\nforbid(principal, action resource);\n",
        );
        let err = load_policies(&schema().unwrap(), &[tmp.path().into()], &[], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("broken.cedar:3:"), "{text}");
    }

    #[test]
    fn unguarded_optional_attribute_is_rejected_with_line() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "tags.cedar",
            "@id(\"no-latest\")\nforbid(principal, action, resource)\nwhen { context.tag == \"latest\" };\n",
        );
        let err = load_policies(&schema().unwrap(), &[tmp.path().into()], &[], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("tags.cedar:3:"), "{text}");
        assert!(text.contains("no-latest"), "{text}");
    }

    #[test]
    fn duplicate_ids_and_changed_schema_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "dup.cedar",
            "@id(\"base/admin\")\npermit(principal, action, resource);\n",
        );
        let err = load_policies(&schema().unwrap(), &[tmp.path().into()], &[], None).unwrap_err();
        assert!(err.to_string().contains("duplicate policy id `base/admin`"));

        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "schema.cedarschema", "entity X;");
        let err = load_policies(&schema().unwrap(), &[tmp.path().into()], &[], None).unwrap_err();
        assert!(err.to_string().contains("schema.cedarschema"));
    }

    #[test]
    fn unannotated_policies_get_file_based_ids() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "a.cedar",
            "forbid(principal, action, resource);",
        );
        write(
            tmp.path(),
            "b.cedar",
            "forbid(principal, action, resource);",
        );
        let policies = load_policies(&schema().unwrap(), &[tmp.path().into()], &[], None).unwrap();
        let ids: Vec<String> = policies.iter().map(|p| p.id().to_string()).collect();
        assert!(ids.contains(&"a.cedar#policy0".to_owned()), "{ids:?}");
        assert!(ids.contains(&"b.cedar#policy0".to_owned()), "{ids:?}");
    }
}
