//! The `payg` binary itself: configuration errors, migrate, user management.

use std::process::Command;

use crate::helpers::{PASSWORD, PG_SERVER, TEST_JWT_SECRET, TestApp, TestDb, scalar_i64};

fn payg(db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payg"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn bad_configuration_stops_with_one_line_naming_the_variable() {
    let out = payg("postgres://postgres@127.0.0.1:5432/unused")
        .env("JWT_SECRET", "too-short")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    assert!(!stderr.contains("too-short"), "the secret itself is not echoed");

    let out = payg("postgres://postgres@127.0.0.1:5432/unused")
        .env("PAYG_BILLING_TZ", "Mars/Olympus_Mons")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("PAYG_BILLING_TZ"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_a_missing_database_and_is_idempotent() {
    let name = format!("payg_test_cli_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{PG_SERVER}/{name}");
    // Reuse TestDb's drop to clean up whatever the CLI creates.
    let guard = TestDb {
        name: name.clone(),
        url: url.clone(),
    };
    for _ in 0..2 {
        let out = payg(&url).arg("migrate").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let apis = scalar_i64(&guard, "SELECT count(*) AS n FROM apis").await;
    assert!(apis >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_create_users_and_grant_roles_from_the_cli() {
    let app = TestApp::spawn().await;
    let out = payg(&app.db.url)
        .args(["user", "create", "--email", "Finance@Example.com", "--role", "finance"])
        .env("PAYG_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = app.token_for("finance@example.com").await;
    let me: serde_json::Value = app.get_json("/api/v1/me", &token).await;
    assert_eq!(me["role"], "finance");

    let out = payg(&app.db.url)
        .args(["user", "role", "finance@example.com", "admin"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let me: serde_json::Value = app.get_json("/api/v1/me", &token).await;
    assert_eq!(me["role"], "admin");

    let out = payg(&app.db.url)
        .args(["user", "role", "nobody@example.com", "admin"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // A short password or a duplicate is refused and stores nothing.
    let out = payg(&app.db.url)
        .args(["user", "create", "--email", "x@example.com"])
        .env("PAYG_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = payg(&app.db.url)
        .args(["user", "create", "--email", "FINANCE@example.com"])
        .env("PAYG_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(app.count_users().await, 1);
}

/// Reads the child's output until `marker` appears (or it ends).
fn read_until(out: &mut impl std::io::Read, seen: &mut String, marker: &str) {
    let mut buf = [0u8; 256];
    while !seen.contains(marker) {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_prompt_does_not_echo() {
    use std::io::Write;
    use std::process::Stdio;
    let app = TestApp::spawn().await;
    // `script` gives the command a real terminal; whatever the terminal
    // echoes comes back on its output.
    let command = format!(
        "{} user create --email typed@example.com --role consumer",
        env!("CARGO_BIN_EXE_payg")
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &app.db.url)
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the command on a terminal");
    let (mut input, mut output) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    // A prompt that never comes must fail the test, not hang it.
    let pid = child.id();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(20));
        // Only if that pid is still our `script` (pids are reused).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("typed@example.com") {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    let mut seen = String::new();
    for prompt in ["password", "again"] {
        read_until(&mut output, &mut seen, prompt);
        assert!(seen.contains(prompt), "the prompt is shown: {seen:?}");
        // Let the prompt switch echo off before typing (as a person would).
        std::thread::sleep(std::time::Duration::from_millis(200));
        input.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
        input.flush().unwrap();
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut output, &mut rest).unwrap();
    seen.push_str(&rest);
    assert!(child.wait().unwrap().success(), "{seen}");
    assert!(!seen.contains(PASSWORD), "the typed password was echoed: {seen:?}");
    assert_eq!(app.login("typed@example.com", PASSWORD).await.status(), 200);
}
