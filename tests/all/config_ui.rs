//! Config errors as data: each `tests/ui/NAME.toml` is checked with `sluice check`, which must fail
//! with exactly the messages in `tests/ui/NAME.stderr`. Every example in `config/` must pass.
//!
//! After an intended change to messages, regenerate the expectations with
//! `SLUICE_BLESS=1 cargo test --test all config_ui::` and review the diff.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{repo_root, run_on_config, sluice_bin};

fn check(relative: &Path) -> std::process::Output {
    Command::new(sluice_bin())
        .current_dir(repo_root())
        .arg("check")
        .arg("--config")
        .arg(relative)
        .output()
        .unwrap()
}

/// The `*.toml` files in `dir` (relative to the repository), sorted.
fn toml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_ui_case_fails_with_its_expected_messages() {
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let cases = toml_files("tests/ui");
    assert!(
        cases.len() >= 10,
        "expected the ui cases in tests/ui, found {}",
        cases.len()
    );

    let mut failures = Vec::new();
    for case in cases {
        let relative = case.strip_prefix(repo_root()).unwrap();
        let out = check(relative);
        let stderr = String::from_utf8(out.stderr).unwrap();
        let expected_path = case.with_extension("stderr");
        if out.status.success() {
            failures.push(format!(
                "{}: `sluice check` succeeded; it must fail",
                relative.display()
            ));
            continue;
        }
        if bless {
            std::fs::write(&expected_path, &stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if stderr != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{stderr}",
                relative.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_example_config_passes_check() {
    let configs = toml_files("config");
    assert!(!configs.is_empty());
    for config in configs {
        let out = check(config.strip_prefix(repo_root()).unwrap());
        assert!(
            out.status.success(),
            "{}:\n{}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn run_refuses_a_bad_config_with_the_same_messages() {
    let out = Command::new(sluice_bin())
        .current_dir(repo_root())
        .args(["run", "--config", "tests/ui/dangling-references.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "tests/ui/dangling-references.toml:10:12: `route[0].upstream`: route `users` names unknown upstream `user`"
        ),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = check(Path::new("config/no-such-file.toml"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config/no-such-file.toml") && stderr.contains("cannot read config file"),
        "{stderr}"
    );
}

#[test]
fn an_unresolvable_target_is_a_located_load_error() {
    // Host names are resolved at load; `.invalid` never resolves (RFC 6761).
    let (_dir, path, out) = run_on_config(
        "check",
        "[upstreams.users]\ntargets = [\"127.0.0.1:3000\", \"users.invalid:3000\"]\n\n[[route]]\nname = \"users\"\nupstream = \"users\"\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:2:30: `upstreams.users.targets[1]`: cannot resolve target `users.invalid:3000`: ",
        path.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[test]
fn run_refuses_a_taken_listen_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, _path, out) = run_on_config(
        "run",
        &format!(
            "[server]\nlisten = [\"{addr}\"]\n[upstreams.u]\ntargets = [\"127.0.0.1:1\"]\n[[route]]\nname = \"r\"\nupstream = \"u\"\n"
        ),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: cannot listen on `{addr}`: Address already in use")),
        "{stderr}"
    );
}
