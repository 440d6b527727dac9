//! Content-trust test helpers: a TLS gateway with content trust enabled, tokens and the
//! `portcullis` CLI against it, bearer tokens for GUN scopes, the real `notary` CLI with a
//! private trust directory, and a small independent TUF signer (canonical JSON, ECDSA P-256
//! raw `r||s` signatures) that re-signs the fixtures captured from the notary CLI
//! (`tests/fixtures/trust/`, see `regenerate.sh` there).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};

use crate::docker::Docker;
use crate::gateway::{ADMIN_PASSWORD, Server, bin, json_output, password1, token_create_args};

/// One passphrase for every key the notary and docker CLIs create in tests.
pub const PASSPHRASE: &str = "trust-test-passphrase";
/// The fixture directory (metadata and keys captured from the notary CLI).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/trust");

/// `portcullis serve --tls-self-signed` with content trust switched on.
pub struct TrustGateway {
    pub server: Server,
    /// `<data>/tls/ca.pem`, the private CA that signed the serving certificate.
    pub ca: PathBuf,
    /// An HTTP client that trusts `ca`.
    pub http: Client,
}

impl TrustGateway {
    /// Starts in `dir/data` with `extra` `serve` arguments besides `--tls-self-signed`.
    pub fn start(dir: &Path, extra: &[&str]) -> TrustGateway {
        TrustGateway::start_with_env(dir, extra, &[])
    }

    /// Like [`TrustGateway::start`], with extra environment variables for the server.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> TrustGateway {
        let data = dir.join("data");
        // No grace: the test clients' idle keep-alive connections would hold the stop.
        let mut args = vec!["--tls-self-signed", "--shutdown-grace-seconds", "0"];
        args.extend_from_slice(extra);
        let server = Server::start_with_env(&data, Some(ADMIN_PASSWORD), &args, env);
        let ca = data.join("tls/ca.pem");
        let pem = std::fs::read(&ca).unwrap();
        let http = Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let gateway = TrustGateway { server, ca, http };
        gateway.portcullis(&["config", "content-trust", "update", "--status", "enabled"]);
        gateway
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        self.server.host()
    }

    /// The GUN of `repository` on this gateway: `127.0.0.1:PORT/<repository>`.
    pub fn gun(&self, repository: &str) -> String {
        format!("{}/{repository}", self.host())
    }

    /// `https://127.0.0.1:PORT/v2/<gun>/_trust/<rest>`.
    pub fn trust_url(&self, gun: &str, rest: &str) -> String {
        self.server.url(&format!("/v2/{gun}/_trust/{rest}"))
    }

    /// A docker CLI logged in to this gateway as `user`, trusting its CA for the trust
    /// server (`$DOCKER_CONFIG/tls/<host:port>/ca.crt`).
    pub fn docker(&self, user: &str, password: &str) -> Docker {
        let docker = Docker::new();
        let tls = docker.config_dir().join("tls").join(self.host());
        std::fs::create_dir_all(&tls).expect("docker tls directory");
        std::fs::copy(&self.ca, tls.join("ca.crt")).expect("the gateway's CA for docker");
        let login = docker.login(self.host(), user, password);
        assert!(
            login.status.success(),
            "docker login to {} as {user}: {}",
            self.host(),
            String::from_utf8_lossy(&login.stderr)
        );
        docker
    }

    /// Runs the CLI as the admin account, trusting the gateway's CA.
    pub fn portcullis_output(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("PORTCULLIS_REGISTRY", &self.server.base)
            .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("PORTCULLIS_CA_CERT", &self.ca)
            .output()
            .expect("run portcullis")
    }

    /// Runs the CLI as the admin account, asserts success, returns its JSON output (`Null`
    /// when it printed none).
    pub fn portcullis(&self, args: &[&str]) -> Value {
        json_output(args, &self.portcullis_output(args))
    }

    /// `portcullis token create --name NAME --repository REPO ACTIONS...`; returns password1.
    pub fn token(&self, name: &str, repository: &str, actions: &[&str]) -> String {
        password1(&self.portcullis(&token_create_args(name, repository, actions)))
    }

    /// A bearer token from the token endpoint for `repository:<gun>:<actions>` with `user`'s
    /// Basic credentials, as notary and docker ask for it. Returns the JWT and the actions
    /// it was granted on the GUN.
    pub fn bearer(&self, (user, password): (&str, &str), gun: &str, actions: &str) -> Bearer {
        let resp = self
            .http
            .get(self.server.url("/oauth2/token"))
            .query(&[
                ("scope", format!("repository:{gun}:{actions}")),
                ("account", user.to_owned()),
            ])
            .basic_auth(user, Some(password))
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "token for {gun} {actions}");
        let body: Value = resp.json().unwrap();
        let jwt = body["token"].as_str().unwrap().to_owned();
        let claims = jwt.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        let granted = claims["access"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["name"] == gun)
            .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        Bearer { jwt, granted }
    }

    /// GET `/v2/<gun>/_trust/<rest>` with an optional bearer token.
    pub fn get(&self, gun: &str, rest: &str, bearer: Option<&Bearer>) -> Response {
        let mut request = self.http.get(self.trust_url(gun, rest));
        if let Some(b) = bearer {
            request = request.bearer_auth(&b.jwt);
        }
        request.send().unwrap()
    }

    /// POST `/v2/<gun>/_trust/tuf/` with `parts` as notary sends them (multipart, part name
    /// `files`, file name = role).
    pub fn post_update(&self, gun: &str, bearer: &Bearer, parts: &[(&str, &[u8])]) -> Response {
        let (content_type, body) = multipart(parts);
        self.http
            .post(self.trust_url(gun, "tuf/"))
            .bearer_auth(&bearer.jwt)
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap()
    }
}

/// A JWT and the actions it grants on the GUN it was asked for.
pub struct Bearer {
    pub jwt: String,
    pub granted: Vec<String>,
}

/// Status, first error code and first error's detail `Name` (notary's typed detail) of
/// an error response.
pub fn notary_error(resp: Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let text = resp.text().unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?} ({status})"));
    let error = &body["errors"][0];
    let code = error["code"].as_str().unwrap_or("").to_owned();
    let name = error["detail"]["Name"].as_str().unwrap_or("").to_owned();
    (status, code, name)
}

/// A `multipart/form-data` body like Go's `CreateFormFile("files", role)`.
pub fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "portcullis-trust-test-boundary";
    let mut body = Vec::new();
    for (role, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
                 filename=\"{role}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// The real `notary` CLI with its own trust directory, aimed at a gateway.
pub struct Notary {
    pub trust_dir: tempfile::TempDir,
    server: String,
    ca: PathBuf,
}

impl Notary {
    pub fn new(gateway: &TrustGateway) -> Notary {
        Notary {
            trust_dir: tempfile::tempdir().unwrap(),
            server: gateway.server.base.clone(),
            ca: gateway.ca.clone(),
        }
    }

    /// Runs `notary -s URL -d DIR --tlscacert CA args...`, with `user`'s credentials in
    /// `NOTARY_AUTH` (none: anonymous, and no prompt can be answered).
    pub fn output(&self, user: Option<(&str, &str)>, args: &[&str]) -> Output {
        let mut cmd = Command::new("notary");
        cmd.arg("-s")
            .arg(&self.server)
            .arg("-d")
            .arg(self.trust_dir.path())
            .arg("--tlscacert")
            .arg(&self.ca)
            .args(args)
            .env("HOME", self.trust_dir.path())
            .env_remove("NOTARY_AUTH")
            .stdin(Stdio::null());
        for role in ["ROOT", "TARGETS", "SNAPSHOT", "DELEGATION"] {
            cmd.env(format!("NOTARY_{role}_PASSPHRASE"), PASSPHRASE);
        }
        if let Some((u, p)) = user {
            cmd.env("NOTARY_AUTH", B64.encode(format!("{u}:{p}")));
        }
        cmd.output().expect("run notary")
    }

    /// Asserts success; returns stdout and stderr together.
    pub fn ok(&self, user: Option<(&str, &str)>, args: &[&str]) -> String {
        let (success, text) = self.run(user, args);
        assert!(success, "notary {} failed:\n{text}", args.join(" "));
        text
    }

    /// Asserts failure; returns stdout and stderr together.
    pub fn fails(&self, user: Option<(&str, &str)>, args: &[&str]) -> String {
        let (success, text) = self.run(user, args);
        assert!(!success, "notary {} succeeded:\n{text}", args.join(" "));
        text
    }

    fn run(&self, user: Option<(&str, &str)>, args: &[&str]) -> (bool, String) {
        let out = self.output(user, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// OLPC canonical JSON as notary writes it: sorted keys, no whitespace, only `"` and `\`
/// escaped, integers only.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            assert!(
                n.is_i64() || n.is_u64(),
                "canonical JSON has no floats: {n}"
            );
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// notary's key id: hex sha256 of the canonical `{"keytype","keyval":{"private":null,"public"}}`.
pub fn key_id(key: &Value) -> String {
    let public = json!({
        "keytype": key["keytype"],
        "keyval": {"private": null, "public": key["keyval"]["public"]},
    });
    hex::encode(Sha256::digest(canonical(&public)))
}

/// A snapshot/timestamp `meta` entry for `bytes`: base64 sha256 and sha512, length.
pub fn meta(bytes: &[u8]) -> Value {
    json!({
        "hashes": {
            "sha256": B64.encode(Sha256::digest(bytes)),
            "sha512": B64.encode(Sha512::digest(bytes)),
        },
        "length": bytes.len(),
    })
}

/// A metadata file: `{"signed":…,"signatures":[…]}`.
pub fn envelope(signed: &Value, signatures: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"signed": signed, "signatures": signatures})).unwrap()
}

/// A role's private key (ECDSA P-256) under the key id the role lists.
pub struct RoleKey {
    pub id: String,
    key: SigningKey,
}

impl RoleKey {
    /// `{"keyid","method":"ecdsa","sig"}` over the canonical form of `signed` (raw r||s).
    pub fn sign(&self, signed: &Value) -> Value {
        let signature: Signature = self.key.sign(&canonical(signed));
        json!({"keyid": self.id, "method": "ecdsa", "sig": B64.encode(signature.to_bytes())})
    }

    /// The same signature DER-encoded, which notary (and the gateway) must refuse.
    pub fn sign_der(&self, signed: &Value) -> Value {
        let signature: Signature = self.key.sign(&canonical(signed));
        json!({"keyid": self.id, "method": "ecdsa", "sig": B64.encode(signature.to_der())})
    }

    /// `signed` as a file carrying this key's signature.
    pub fn file(&self, signed: &Value) -> Vec<u8> {
        envelope(signed, vec![self.sign(signed)])
    }
}

/// The files and keys the notary CLI produced for one GUN (root v1 with an `ecdsa-x509`
/// root key whose CN is the GUN; targets and snapshot signed by client-held keys).
pub struct Fixture {
    pub gun: String,
    pub root: Vec<u8>,
    pub targets: Vec<u8>,
    pub snapshot: Vec<u8>,
    pub timestamp: Vec<u8>,
    pub root_key: RoleKey,
    pub targets_key: RoleKey,
    pub snapshot_key: RoleKey,
}

/// Fixture files ready to upload to one gateway (root lists that gateway's timestamp key).
pub struct Bound {
    pub root: Vec<u8>,
    pub targets: Vec<u8>,
    pub snapshot: Vec<u8>,
}

impl Bound {
    /// The multipart parts of an initial publish, as `notary init -p` sends them.
    pub fn parts(&self) -> Vec<(&str, &[u8])> {
        vec![
            ("root", self.root.as_slice()),
            ("targets", self.targets.as_slice()),
            ("snapshot", self.snapshot.as_slice()),
        ]
    }
}

impl Fixture {
    pub fn load() -> Fixture {
        let dir = Path::new(FIXTURES);
        let read = |name: &str| {
            std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
        };
        let root = read("metadata/root.json");
        let signed: Value = serde_json::from_slice(&root).unwrap();
        let key = |role: &str| {
            let pem = String::from_utf8(read(&format!("keys/{role}.pem"))).unwrap();
            RoleKey {
                id: signed["signed"]["roles"][role]["keyids"][0]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                key: SigningKey::from(p256::SecretKey::from_pkcs8_pem(&pem).unwrap()),
            }
        };
        Fixture {
            gun: String::from_utf8(read("gun.txt"))
                .unwrap()
                .trim()
                .to_owned(),
            targets: read("metadata/targets.json"),
            snapshot: read("metadata/snapshot.json"),
            timestamp: read("metadata/timestamp.json"),
            root_key: key("root"),
            targets_key: key("targets"),
            snapshot_key: key("snapshot"),
            root,
        }
    }

    /// The `signed` part of a fixture file.
    pub fn signed(bytes: &[u8]) -> Value {
        let file: Value = serde_json::from_slice(bytes).unwrap();
        file["signed"].clone()
    }

    /// Root with its timestamp key replaced by `timestamp_key` (a gateway's
    /// `timestamp.key` answer), re-signed; the snapshot re-made for that root and
    /// re-signed; targets verbatim.
    pub fn bind(&self, timestamp_key: &Value) -> Bound {
        let root = self.root_with_timestamp_key(timestamp_key);
        let root = self.root_key.file(&root);
        let snapshot = self.snapshot_for(&root, &self.targets, 0);
        Bound {
            root,
            targets: self.targets.clone(),
            snapshot,
        }
    }

    /// Root's `signed` with `timestamp_key` as its only timestamp key.
    pub fn root_with_timestamp_key(&self, timestamp_key: &Value) -> Value {
        let mut root = Fixture::signed(&self.root);
        let old = root["roles"]["timestamp"]["keyids"][0]
            .as_str()
            .unwrap()
            .to_owned();
        let id = key_id(timestamp_key);
        let keys = root["keys"].as_object_mut().unwrap();
        keys.remove(&old);
        keys.insert(
            id.clone(),
            json!({
                "keytype": timestamp_key["keytype"],
                "keyval": {"private": null, "public": timestamp_key["keyval"]["public"]},
            }),
        );
        root["roles"]["timestamp"]["keyids"] = json!([id]);
        root
    }

    /// A snapshot file for `root` and `targets`, the fixture's version plus `bump`, signed
    /// by the snapshot key.
    pub fn snapshot_for(&self, root: &[u8], targets: &[u8], bump: u64) -> Vec<u8> {
        let mut snapshot = Fixture::signed(&self.snapshot);
        snapshot["meta"]["root"] = meta(root);
        snapshot["meta"]["targets"] = meta(targets);
        bump_version(&mut snapshot, bump);
        self.snapshot_key.file(&snapshot)
    }
}

/// Adds `by` to a role's `version`.
pub fn bump_version(signed: &mut Value, by: u64) {
    let version = signed["version"].as_u64().unwrap();
    signed["version"] = json!(version + by);
}
