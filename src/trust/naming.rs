//! The names of trust data: notary roles, which version of a role a request asks for,
//! and the repository a GUN (globally unique name) names. Pure parsing, shared by the
//! gateway's request classifier and the trust service.

use crate::identity::pattern::is_valid_repository_name;

/// A role name that is not one of notary's valid roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid role {0:?}: expected root, targets, snapshot, timestamp or targets/<name>")]
pub struct InvalidRole(pub String);

/// A validated role name: `root`, `targets`, `snapshot`, `timestamp`, or a delegation
/// `targets/<...>` (`^[-a-z0-9_/]+$`, < 256 chars, path-clean, a `.json` suffix stripped).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(String);

impl Role {
    /// Parses a role name as notary's `data.ValidRole` does, after stripping `.json`.
    pub fn parse(s: &str) -> Result<Role, InvalidRole> {
        let name = s.strip_suffix(".json").unwrap_or(s);
        let base = matches!(name, "root" | "targets" | "snapshot" | "timestamp");
        if base || is_delegation(name) {
            Ok(Role(name.to_owned()))
        } else {
            Err(InvalidRole(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn root() -> Role {
        Role("root".to_owned())
    }

    pub fn targets() -> Role {
        Role("targets".to_owned())
    }

    pub fn snapshot() -> Role {
        Role("snapshot".to_owned())
    }

    pub fn timestamp() -> Role {
        Role("timestamp".to_owned())
    }

    /// Timestamp and snapshot: the roles whose keys the server may hold and whose files
    /// it signs.
    pub fn is_server_managed(&self) -> bool {
        matches!(self.as_str(), "timestamp" | "snapshot")
    }

    /// The delegation docker signs tags with.
    pub fn releases() -> Role {
        Role("targets/releases".to_owned())
    }

    /// `targets` or a delegation below it.
    pub fn is_targets(&self) -> bool {
        self.0 == "targets" || self.is_delegation()
    }

    /// A `targets/...` delegation.
    pub fn is_delegation(&self) -> bool {
        self.0.starts_with("targets/")
    }

    /// The delegating role: `targets/a/b` → `targets/a`, `targets/a` → `targets`; None otherwise.
    pub fn parent(&self) -> Option<Role> {
        if !self.is_delegation() {
            return None;
        }
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| Role(parent.to_owned()))
    }

    /// Path depth, for processing shallower targets roles first (notary's `RoleList` order).
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// notary's `IsDelegation`: `targets/` prefix, allowed characters, length, and `path.Clean`
/// being the identity (no empty, `.` or `..` segment, no trailing slash).
fn is_delegation(name: &str) -> bool {
    let chars_ok = name
        .bytes()
        .all(|b| matches!(b, b'-' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'/'));
    let clean = name
        .split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    name.starts_with("targets/") && chars_ok && name.len() < 256 && clean
}

/// Which version of a role a GET asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRef {
    /// `<role>.json`
    Current(Role),
    /// `<role>.<sha256 hex>.json` (lowercase hex)
    Checksum { role: Role, sha256: String },
    /// `<version>.<role>.json`
    Version { role: Role, version: u64 },
}

/// `samples/app` from `127.0.0.1:5443/samples/app`: the first component is a host when it
/// contains `.` or `:` or is `localhost` (docker's rule). `None` when the GUN has no host
/// part or the rest is not a valid repository name.
pub fn gun_repository(gun: &str) -> Option<&str> {
    let (host, repository) = gun.split_once('/')?;
    let hostlike = host.contains('.') || host.contains(':') || host == "localhost";
    let host_chars = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    (hostlike && host_chars && is_valid_repository_name(repository)).then_some(repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_notary_valid_role() {
        for ok in [
            "root",
            "targets",
            "snapshot",
            "timestamp",
            "targets/releases",
            "targets/a/b-c_1",
        ] {
            assert_eq!(Role::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(
            Role::parse("targets/releases.json").unwrap().as_str(),
            "targets/releases"
        );
        assert_eq!(Role::parse("root.json").unwrap(), Role::root());
        let long = format!("targets/{}", "a".repeat(248));
        for bad in [
            "",
            "Root",
            "targets/",
            "targets//a",
            "targets/a/",
            "targets/../root",
            "targets/A",
            "targets/a.b",
            "other",
            "snapshot/x",
            long.as_str(),
        ] {
            assert!(Role::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Role::parse(&format!("targets/{}", "a".repeat(247))).is_ok());
    }

    #[test]
    fn parents_and_depth() {
        let role = Role::parse("targets/a/b").unwrap();
        assert_eq!(role.parent(), Some(Role::parse("targets/a").unwrap()));
        assert_eq!(
            Role::parse("targets/a").unwrap().parent(),
            Some(Role::targets())
        );
        assert_eq!(Role::targets().parent(), None);
        assert_eq!(role.depth(), 3);
        assert!(role.is_targets() && !Role::root().is_targets());
    }

    #[test]
    fn guns_name_a_host_and_a_repository() {
        for (gun, repository) in [
            ("127.0.0.1:5443/samples/app", Some("samples/app")),
            ("localhost/app", Some("app")),
            ("registry.example.com/a/b/c", Some("a/b/c")),
            ("[::1]:5443/app", Some("app")),
            ("samples/app", None),
            ("app", None),
            ("localhost:5443/", None),
            ("localhost:5443/Bad", None),
            ("host name:1/app", None),
        ] {
            assert_eq!(gun_repository(gun), repository, "{gun}");
        }
    }
}
