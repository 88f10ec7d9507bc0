//! The `flotilla` command as a shell sees it: completion scripts, one-line
//! errors, and logs as JSON. No cluster is needed.

use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_flotilla");

fn flotilla(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run flotilla")
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_flotilla()"),
        ("zsh", "#compdef flotilla"),
        ("fish", "complete -c flotilla"),
    ] {
        let o = flotilla(&["completions", shell], &[]);
        assert!(o.status.success(), "{shell}: {o:?}");
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        // Subcommands and their flags are in the script.
        assert!(
            script.contains("wipe-and-join"),
            "{shell} script lacks start's flags"
        );
    }
    let o = flotilla(&["completions", "tcsh"], &[]);
    assert!(!o.status.success(), "an unknown shell is refused");
}

/// A user error is one line on standard error, even with backtraces asked
/// for, and a failing exit status: errors of the command itself, and
/// arguments refused before it runs (a bad value, an unknown flag, a
/// missing one, which also name what was wrong).
#[test]
fn a_user_error_is_one_line_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let no_certs = dir.path().join("no-such-certs");
    let cases: [Vec<&str>; 2] = [
        vec![
            "start",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--dead-after",
            "1ms",
        ],
        vec![
            "init",
            "--endpoint",
            "127.0.0.1:9",
            "--certs-dir",
            no_certs.to_str().unwrap(),
        ],
    ];
    let refused_by_clap: [Vec<&str>; 3] = [
        vec!["get", "k", "--timeout", "soon"],
        vec!["get", "k", "--no-such-flag"],
        vec!["init"],
    ];
    for args in cases.into_iter().chain(refused_by_clap) {
        let o = flotilla(&args, &[("RUST_BACKTRACE", "1")]);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected, got:\n{err}");
        assert!(lines[0].starts_with("flotilla: "), "{err}");
        assert!(!err.contains("backtrace"), "{err}");
    }
}

/// With `--log-format json`, every log line is one JSON object with a level
/// and fields.
#[test]
fn logs_come_out_as_json_lines() {
    let o = flotilla(
        &["--log-format", "json", "demo", "--keys", "20"],
        &[("RUST_LOG", "info")],
    );
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the demo logs at info");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
}
