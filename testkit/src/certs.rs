//! Test certificates made with openssl.

use std::path::Path;
use std::process::Command;

use crate::process::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = run(Command::new(require("openssl", "openssl"))
        .args(args)
        .current_dir(dir));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and a certificate signed by the test CA (`ca.pem`/`ca.key`):
/// `<name>.key`, `<name>.pem`, with `ext` as the v3 extensions.
fn signed_cert(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, pem, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ],
    );
    std::fs::write(dir.join(&extf), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extf,
        ],
    );
}

/// Generates a test CA (`ca.pem`), a server certificate for
/// 127.0.0.1/localhost (`server.pem`, `server.key`) and a client
/// certificate (`client.pem`, `client.key`), all with openssl.
pub fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=firehose test CA",
        ],
    );
    signed_cert(
        dir,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed_cert(
        dir,
        "client",
        "/CN=firehose-test-client",
        "extendedKeyUsage=clientAuth\n",
    );
}

/// Path of `name` inside `dir` as a string, for command-line flags.
pub fn path_str(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

/// A broker's TLS listener for a test: the certificates of [`make_certs`]
/// in `dir`, and the flags that serve them (`--mqtts` on a free loopback
/// port, `--cert`, `--key`), to pass with any others.
pub struct TlsListener {
    flags: Vec<String>,
}

impl TlsListener {
    /// Makes the certificates in `dir` (its `ca.pem` is what clients trust).
    pub fn new(dir: &Path) -> TlsListener {
        make_certs(dir);
        TlsListener {
            flags: vec![
                "--mqtts".into(),
                "127.0.0.1:0".into(),
                "--cert".into(),
                path_str(dir, "server.pem"),
                "--key".into(),
                path_str(dir, "server.key"),
            ],
        }
    }

    /// The broker flags.
    pub fn flags(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }
}
