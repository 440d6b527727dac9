//! The storage a test's gateway (`portcullis serve`) or store (`portcullis-storage
//! serve`) runs on: [`Backend::Local`], the data directory (blob files and `meta.redb`,
//! the default), or [`Backend::S3Pg`], blobs under a fresh prefix of this binary's
//! SeaweedFS and metadata in a fresh database of its PostgreSQL. A [`Storage`] names one
//! such place; every process started from it shares it. [`backend_matrix!`] runs one test
//! body on both backends.

use std::path::Path;

use crate::gateway::{ADMIN_PASSWORD, Server};
use crate::postgres::Postgres;
use crate::seaweedfs::{S3Target, SeaweedFs};
use crate::store;

/// The two backends the issue holds every real client to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3Pg,
}

impl Backend {
    /// A fresh, empty place of this kind for one test.
    pub fn storage(self) -> Storage {
        match self {
            Backend::Local => Storage::default(),
            Backend::S3Pg => Storage::default()
                .s3(SeaweedFs::shared().target())
                .postgres(Postgres::shared().database()),
        }
    }
}

/// Where blobs and metadata live besides the data directory: an S3 target
/// (`--storage`), a PostgreSQL database (`--metadata`), both or neither.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    pub s3: Option<S3Target>,
    /// `postgres://…` of the database.
    pub postgres: Option<String>,
}

impl Storage {
    /// Blobs on `target` (a test that stops S3 gives its own server's target).
    pub fn s3(self, target: S3Target) -> Storage {
        Storage {
            s3: Some(target),
            ..self
        }
    }

    /// Metadata in the database at `url`.
    pub fn postgres(self, url: String) -> Storage {
        Storage {
            postgres: Some(url),
            ..self
        }
    }

    /// The `serve` arguments that select this storage (the same for both binaries).
    pub fn args(&self) -> Vec<&str> {
        let mut args = Vec::new();
        if let Some(s3) = &self.s3 {
            args.extend(["--storage", s3.url.as_str()]);
        }
        if let Some(url) = &self.postgres {
            args.extend(["--metadata", url.as_str()]);
        }
        args
    }

    /// The environment that reaches the S3 target (none without one).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.s3.iter().flat_map(S3Target::env).collect()
    }

    /// `portcullis serve` in `data_dir` on this storage, the admin's password
    /// [`ADMIN_PASSWORD`], with `extra` arguments.
    pub fn gateway(&self, data_dir: &Path, extra: &[&str]) -> Server {
        self.serve(data_dir, Some(ADMIN_PASSWORD), extra, &[])
    }

    /// Like [`Storage::gateway`], as [`Server::start_with_env`] takes its arguments.
    pub fn serve(
        &self,
        data_dir: &Path,
        admin_password: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let (args, env) = self.command_line(extra, env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = Server::start_with_env(data_dir, admin_password, &args, &env);
        self.assert_not_local(data_dir);
        server
    }

    /// `portcullis-storage serve` in `data_dir` on this storage, with `extra` arguments.
    pub fn store(&self, data_dir: &Path, extra: &[&str]) -> store::Server {
        let (args, env) = self.command_line(extra, &[]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = store::Server::start_in_with_env(data_dir, &args, &env);
        self.assert_not_local(data_dir);
        server
    }

    /// A started process made none of the local stores this storage replaces (both
    /// binaries make them at start), so a test on S3 + PostgreSQL cannot pass on the data
    /// directory unnoticed.
    fn assert_not_local(&self, data_dir: &Path) {
        if self.s3.is_some() {
            let blobs = data_dir.join("blobs");
            assert!(!blobs.exists(), "{} exists with --storage", blobs.display());
        }
        if self.postgres.is_some() {
            let meta = data_dir.join("meta.redb");
            assert!(!meta.exists(), "{} exists with --metadata", meta.display());
        }
    }

    /// The storage's arguments and environment followed by the caller's.
    fn command_line<'a>(
        &'a self,
        extra: &[&'a str],
        env: &[(&'a str, &str)],
    ) -> (Vec<&'a str>, Vec<(&'a str, String)>) {
        let mut args = self.args();
        args.extend_from_slice(extra);
        let mut vars = self.env();
        vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        (args, vars)
    }
}

/// Runs each named test body, a `fn NAME(backend: Backend)` of the calling crate, as two
/// tests: `local::NAME` and `s3_pg::NAME`.
#[macro_export]
macro_rules! backend_matrix {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::backend::Backend::Local);
                }
            )*
        }
        mod s3_pg {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::backend::Backend::S3Pg);
                }
            )*
        }
    };
}
