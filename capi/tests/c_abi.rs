//! The C interface as C sees it: the committed header is what cbindgen
//! generates from `src/lib.rs` today, and the C examples and the README's C
//! snippet compile with the system C compiler (`cc`) against the static
//! library and run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn capi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder cargo put this test binary's libraries in (`target/<profile>`):
/// the test runs from `target/<profile>/deps/`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn generated_header() -> String {
    let dir = capi_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("capi/cbindgen.toml reads");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen reads src/lib.rs");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_is_up_to_date() {
    let path = capi_dir().join("include/neuroplastic.h");
    let now = generated_header();
    if std::env::var_os("NEUROPLASTIC_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == now,
        "capi/include/neuroplastic.h is out of date with capi/src/lib.rs; regenerate it with\n  NEUROPLASTIC_BLESS=1 cargo test --release -p neuroplastic-capi --test c_abi\n--- generated ---\n{now}"
    );
}

/// Compiles `source` against the static library and the header, runs it,
/// and returns its standard output (failing with both streams otherwise).
fn compile_and_run(source: &Path, name: &str) -> String {
    let lib = lib_dir().join("libneuroplastic_c.a");
    assert!(
        lib.exists(),
        "{} was not built: run `cargo build --release -p neuroplastic-capi` first (.ci/run does)",
        lib.display()
    );
    let exe = std::env::temp_dir().join(format!("neuroplastic-{name}-{}", std::process::id()));
    // $CC may carry flags ("gcc -fsanitize=address"), as make allows.
    let cc = std::env::var("CC").ok().filter(|c| !c.trim().is_empty()).unwrap_or_else(|| "cc".into());
    let mut words = cc.split_whitespace();
    let out = Command::new(words.next().unwrap_or("cc"))
        .args(words)
        .arg("-std=c99")
        .arg("-Wall")
        .arg("-Werror")
        .arg(source)
        .arg("-I")
        .arg(capi_dir().join("include"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("could not run the C compiler `{cc}`: {e}"));
    assert!(out.status.success(), "{cc} failed on {}:\n{}", source.display(), String::from_utf8_lossy(&out.stderr));
    let run = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_file(&exe);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{} exited with {}:\n{stdout}\n{}",
        source.display(),
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

#[test]
fn c_example_checks_gradients_against_finite_differences() {
    let out = compile_and_run(&capi_dir().join("examples/gradcheck.c"), "gradcheck");
    print!("{out}");
    assert!(out.lines().last() == Some("ok"), "{out}");
    assert!(
        out.contains("\"dy: expected shape (2, 5, 6) (60 elements), got 3"),
        "the bad dy is named with its shape: {out}"
    );
}

#[test]
fn c_example_checks_the_meta_gradient_and_meta_trains() {
    let out = compile_and_run(&capi_dir().join("examples/meta_sgd.c"), "meta_sgd");
    print!("{out}");
    assert!(out.lines().last() == Some("ok"), "{out}");
    assert!(out.contains("reference vs finite differences") && out.contains("held-out tasks"), "{out}");
    assert!(
        out.contains(
            "\"inner_x: expected 480 floats (p = 4, s = 5, bi = 8, bo = 16, D = 3, 1 target column(s)), got 479\""
        ),
        "the short inner_x is named with its shape: {out}"
    );
}

/// The C blocks of the README's "Use it from C" section, compiled and run
/// in order; each block's output must match the `text` block after it.
#[test]
fn readme_c_snippets_run() {
    let readme = std::fs::read_to_string(capi_dir().join("../README.md")).unwrap();
    let start = readme.find("## Use it from C").expect("README has a \"Use it from C\" section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |k| k + 3)];
    let blocks: Vec<(&str, &str)> =
        section.split("```").skip(1).step_by(2).map(|b| b.split_once('\n').unwrap_or((b, ""))).collect();
    let mut ran = 0;
    for (k, (lang, body)) in blocks.iter().enumerate() {
        if *lang != "c" {
            continue;
        }
        let src = std::env::temp_dir().join(format!("neuroplastic-readme-{k}-{}.c", std::process::id()));
        std::fs::write(&src, body).unwrap();
        // Removed even when the block fails to build or run.
        struct Remove<'a>(&'a Path);
        impl Drop for Remove<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(self.0);
            }
        }
        let _remove = Remove(&src);
        let out = compile_and_run(&src, &format!("readme-{k}"));
        let expected = blocks.get(k + 1).filter(|(l, _)| *l == "text").map(|(_, b)| *b);
        let expected = expected.expect("each C block is followed by a text block with its output");
        assert_eq!(out.trim_end(), expected.trim_end(), "README C block {k}");
        ran += 1;
    }
    assert!(ran >= 1, "no C block in the section");
}
