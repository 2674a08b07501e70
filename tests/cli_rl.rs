//! `neuroplastic train cue-reward|maze` and `neuroplastic experiment`: tiny
//! runs end to end (log, checkpoint, resume, table, figure) and clear errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn np(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neuroplastic")).args(args).output().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("neuroplastic-cli-rl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SMALL: [&str; 6] = ["--hidden", "6", "--batch", "2", "--threads", "1"];

#[test]
fn train_then_resume_continues_the_run() {
    let out = tmp("train");
    let o = out.to_str().unwrap();
    let mut a = vec!["train", "maze", "--steps", "12", "--variant", "retroactive", "--updates", "3", "--out", o];
    a.extend(SMALL);
    let r = np(&a);
    assert!(r.status.success(), "{}", stderr(&r));
    let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + 3, "{log}");
    // A second run into the same folder without --resume is refused.
    let r = np(&a);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("--resume"), "{}", stderr(&r));
    // Resumed to 5 updates: the first 3 rows are unchanged.
    let mut b = a.clone();
    b[7] = "5";
    b.push("--resume");
    let r = np(&b);
    assert!(r.status.success(), "{}", stderr(&r));
    let log5 = std::fs::read_to_string(out.join("log.csv")).unwrap();
    assert_eq!(log5.lines().count(), 1 + 5);
    assert!(log5.starts_with(&log), "resumed log:\n{log5}\nfirst log:\n{log}");
    // Resuming with another variant is refused.
    b[5] = "plastic";
    let r = np(&b);
    assert!(!r.status.success() && stderr(&r).contains("another run"), "{}", stderr(&r));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn experiment_writes_table_and_figure() {
    let out = tmp("exp");
    let o = out.to_str().unwrap();
    let mut a = vec![
        "experiment",
        "cue-reward",
        "--steps",
        "10",
        "--bits",
        "5",
        "--variants",
        "rnn,modulated",
        "--seeds",
        "2",
        "--updates",
        "2",
        "--out",
        o,
        "--quiet",
    ];
    a.extend(SMALL);
    let r = np(&a);
    assert!(r.status.success(), "{}", stderr(&r));
    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(table.contains("| rnn |") && table.contains("| modulated |"), "{table}");
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("modulated"));
    for run in ["rnn-seed0", "rnn-seed1", "modulated-seed0", "modulated-seed1"] {
        assert!(out.join("runs").join(format!("{run}.csv")).exists(), "{run}");
    }
    // Run again with --resume: finished runs are read back, the table is the same.
    a.push("--resume");
    let r = np(&a);
    assert!(r.status.success(), "{}", stderr(&r));
    let again = std::fs::read_to_string(out.join("results.md")).unwrap();
    let body = |t: &str| t.lines().filter(|l| l.starts_with('|')).map(String::from).collect::<Vec<_>>();
    assert_eq!(body(&again), body(&table));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = tmp("bad");
    let o = out.to_str().unwrap();
    let r = np(&["train", "cue-reward", "--variant", "hebbian", "--updates", "1", "--out", o]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("unknown variant `hebbian`"), "{}", stderr(&r));
    let r = np(&["train", "cue-reward", "--batch", "0", "--updates", "1", "--out", o]);
    assert!(!r.status.success() && stderr(&r).contains("batch"), "{}", stderr(&r));
    let r = np(&["experiment", "maze", "--variants", "rnn,bogus", "--out", o]);
    assert!(!r.status.success() && stderr(&r).contains("unknown variant `bogus`"), "{}", stderr(&r));
    std::fs::remove_dir_all(&out).ok();
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_and_the_run_resumes() {
    let out = tmp("sigint");
    let o = out.to_str().unwrap();
    let mut a = vec!["train", "cue-reward", "--steps", "10", "--bits", "4", "--updates", "1000000", "--out", o];
    a.extend(SMALL);
    a.extend(["--checkpoint-every", "1", "--quiet"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_neuroplastic")).args(&a).spawn().unwrap();
    let ckpt = out.join("checkpoint.safetensors");
    let t0 = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "a stopped run exits with 130");
    let st = neuroplastic::rl::RunState::read(&ckpt).unwrap();
    let done = st.step();
    assert!((1..1_000_000).contains(&done), "{done} updates saved");
    // Resume to two more updates than were saved.
    let more = (done + 2).to_string();
    let mut b = a.clone();
    b[7] = &more;
    b.push("--resume");
    let r = np(&b);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(neuroplastic::rl::RunState::read(&ckpt).unwrap().step(), done + 2);
    std::fs::remove_dir_all(&out).ok();
}
