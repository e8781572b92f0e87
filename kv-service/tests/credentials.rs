//! kv-service authenticates to a nats-server that requires user/password, a token, an NKey, a
//! `.creds` file (operator/JWT mode) or a TLS client certificate, from environment variables, and
//! never writes the secret to its log.

mod common;

use std::time::Duration;

use common::process::{Running, ready};
use serde_json::json;
use test_support::NatsServer;
use test_support::call;
use test_support::envelope;

/// Starts nats-server with `authorization { … }` and returns it with its config folder.
fn server_requiring(authorization: &str) -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, format!("authorization {{ {authorization} }}\n")).unwrap();
    (NatsServer::start_with_config(&config), dir)
}

/// Runs kv-service with `env`, checks it serves a set/get for a client connecting with
/// `client_options`, stops it with SIGTERM and returns its log.
async fn serves_with(
    nats: &NatsServer,
    env: &[(&str, &str)],
    client_options: async_nats::ConnectOptions,
) -> String {
    let mut service = Running::start_in(&nats.url(), tempfile::tempdir().unwrap(), env);
    let client = client_options
        .connect(nats.url())
        .await
        .expect("test client authenticates");
    ready(&client).await;
    assert_eq!(
        call(
            &client,
            "set",
            json!({"plugin_name": "p", "key": "k", "value": "v"})
        )
        .await,
        envelope::ok()
    );
    assert_eq!(
        call(&client, "get", json!({"plugin_name": "p", "key": "k"})).await,
        envelope::found(json!("v"))
    );
    service.signal("-TERM");
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.success(), "{log}");
    log
}

fn refused(nats: &NatsServer, env: &[(&str, &str)]) -> String {
    let mut service = Running::start_in(&nats.url(), tempfile::tempdir().unwrap(), env);
    let (status, log) = service.wait(Duration::from_secs(10));
    assert!(
        !status.success(),
        "kv-service must not start without valid credentials: {log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let (nats, _dir) = server_requiring(r#"user: "kv", password: "pw-s3cret-9""#);
    let log = serves_with(
        &nats,
        &[
            ("NATS_USER", "kv"),
            ("NATS_PASSWORD", "pw-s3cret-9"),
            ("RUST_LOG", "debug"),
        ],
        async_nats::ConnectOptions::with_user_and_password("kv".into(), "pw-s3cret-9".into()),
    )
    .await;
    assert!(
        !log.contains("pw-s3cret-9"),
        "the password leaked into the log"
    );
    let log = refused(
        &nats,
        &[("NATS_USER", "kv"), ("NATS_PASSWORD", "wrong-pw-7")],
    );
    assert!(log.contains("cannot connect to NATS at"), "{log}");
    assert!(!log.contains("wrong-pw-7"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let (nats, _dir) = server_requiring(r#"token: "tok-s3cret-42""#);
    let log = serves_with(
        &nats,
        &[("NATS_TOKEN", "tok-s3cret-42"), ("RUST_LOG", "debug")],
        async_nats::ConnectOptions::with_token("tok-s3cret-42".into()),
    )
    .await;
    assert!(
        !log.contains("tok-s3cret-42"),
        "the token leaked into the log"
    );
    let log = refused(&nats, &[]);
    assert!(log.contains("cannot connect to NATS at"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_seed_file() {
    let service_key = nkeys::KeyPair::new_user();
    let client_key = nkeys::KeyPair::new_user();
    let (nats, dir) = server_requiring(&format!(
        r#"users: [ {{ nkey: "{}" }}, {{ nkey: "{}" }} ]"#,
        service_key.public_key(),
        client_key.public_key()
    ));
    let seed = service_key.seed().unwrap();
    let seed_file = dir.path().join("kv.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let log = serves_with(
        &nats,
        &[
            ("NATS_NKEY_SEED_FILE", seed_file.to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
        async_nats::ConnectOptions::with_nkey(client_key.seed().unwrap()),
    )
    .await;
    assert!(!log.contains(&seed), "the seed leaked into the log");
    let missing = refused(&nats, &[("NATS_NKEY_SEED_FILE", "/nonexistent/kv.nk")]);
    assert!(
        missing.contains("cannot read the NKey seed file /nonexistent/kv.nk"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_private_ca() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["kv-service".into()]);
    let ca_file = file("ca.pem", ca.pem());
    let server_cert = file("server.pem", server_cert);
    let server_key = file("server-key.pem", server_key);
    let client_cert = file("client.pem", client_cert);
    let client_key = file("client-key.pem", client_key);
    let config = file(
        "nats.conf",
        format!(
            "tls {{ cert_file: \"{server_cert}\", key_file: \"{server_key}\", ca_file: \"{ca_file}\", verify: true }}\n"
        ),
    );
    let nats = NatsServer::start_with_config(&config);

    let client_options = async_nats::ConnectOptions::new()
        .add_root_certificates(ca_file.clone().into())
        .add_client_certificate(client_cert.clone().into(), client_key.clone().into())
        .require_tls(true);
    serves_with(
        &nats,
        &[
            ("NATS_TLS_CA", ca_file.as_str()),
            ("NATS_TLS_CERT", client_cert.as_str()),
            ("NATS_TLS_KEY", client_key.as_str()),
        ],
        client_options,
    )
    .await;
    // Without a client certificate the server refuses kv-service.
    let log = refused(&nats, &[("NATS_TLS_CA", ca_file.as_str())]);
    assert!(log.contains("cannot connect to NATS at"), "{log}");
}

/// A NATS JWT in the nats-io/jwt v2 format: base64url(header) . base64url(claims) .
/// base64url(ed25519 signature by `issuer` over the first two parts), with `nats.type` = `kind`.
fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    kind: &str,
    mut nats: serde_json::Value,
) -> String {
    use data_encoding::BASE64URL_NOPAD;
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    nats["type"] = json!(kind);
    nats["version"] = json!(2);
    let claims = json!({
        // The Go library hashes the claims for the id; the server only needs it to be unique.
        "jti": format!("{kind}-{subject}-{issued_at}"),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": kind,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
}

/// A new unlimited account signed by `operator`: its key pair and JWT. nats-server reads an
/// absent limit as 0 (a `conn` of 0 refuses every connection), so each is spelled out as -1.
fn account(operator: &nkeys::KeyPair) -> (nkeys::KeyPair, String) {
    let account = nkeys::KeyPair::new_account();
    let limits = json!({
        "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
    });
    let jwt = nats_jwt(
        operator,
        &account.public_key(),
        "account",
        json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}}}),
    );
    (account, jwt)
}

/// A new user of `account`: a `.creds` file's contents, its JWT and its seed. Like the account,
/// it needs explicit -1 limits: a `subs` or `payload` of 0 forbids subscribing or publishing.
fn user_creds(account: &nkeys::KeyPair) -> (String, String, String) {
    let user = nkeys::KeyPair::new_user();
    let jwt = nats_jwt(
        account,
        &user.public_key(),
        "user",
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    let seed = user.seed().unwrap();
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    );
    (creds, jwt, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_file_against_an_operator_mode_server() {
    let operator = nkeys::KeyPair::new_operator();
    let operator_jwt = nats_jwt(&operator, &operator.public_key(), "operator", json!({}));
    let (account_key, account_jwt) = account(&operator);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "operator: \"{operator_jwt}\"\nresolver: MEMORY\n\
             resolver_preload: {{ {}: \"{account_jwt}\" }}\n",
            account_key.public_key()
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with_config(&config);

    let (service_creds, service_jwt, service_seed) = user_creds(&account_key);
    let creds_file = dir.path().join("kv.creds");
    std::fs::write(&creds_file, &service_creds).unwrap();
    let (client_creds, _, _) = user_creds(&account_key);
    let log = serves_with(
        &nats,
        &[
            ("NATS_CREDS", creds_file.to_str().unwrap()),
            ("RUST_LOG", "trace"),
        ],
        async_nats::ConnectOptions::with_credentials(&client_creds).unwrap(),
    )
    .await;
    // The log is at trace, so a secret logged at any level would show.
    assert!(log.contains(" TRACE "), "{log}");
    let signature = service_jwt.rsplit('.').next().unwrap();
    for (secret, what) in [
        (service_jwt.as_str(), "user JWT"),
        (signature, "user JWT signature"),
        (service_seed.as_str(), "seed"),
    ] {
        assert!(!log.contains(secret), "the {what} leaked into the log");
    }

    // A user of an account the operator never signed is refused, and says why.
    let (rogue_account, _) = account(&nkeys::KeyPair::new_operator());
    let (rogue_creds, rogue_jwt, rogue_seed) = user_creds(&rogue_account);
    let rogue_file = dir.path().join("rogue.creds");
    std::fs::write(&rogue_file, rogue_creds).unwrap();
    let log = refused(
        &nats,
        &[
            ("NATS_CREDS", rogue_file.to_str().unwrap()),
            ("RUST_LOG", "trace"),
        ],
    );
    assert!(log.contains("cannot connect to NATS at"), "{log}");
    assert!(log.contains("authorization violation"), "{log}");
    assert!(
        !log.contains(&rogue_jwt) && !log.contains(&rogue_seed),
        "{log}"
    );
}
