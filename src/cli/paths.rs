//! Output paths checked against input paths before a command computes
//! anything: an output that is one of the inputs (the same path, another
//! spelling of it, a symbolic or hard link to it) would replace the user's
//! file with the result.

use std::path::Path;

/// Whether `a` and `b` name the same existing file (through any path or link).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Errors when the output `out` (given with flag `out_flag`) is one of
/// `inputs` (`(flag, path)`), naming both flags and paths.
pub fn refuse_overwrite(out_flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> Result<(), String> {
    for (flag, input) in inputs {
        if same_file(out, input) {
            let how = if out == *input { "the same path" } else { "the same file, through another path or a link" };
            return Err(format!(
                "{out_flag} {} is {flag} {} ({how}): writing the result there would replace that input. \
                 Choose another {out_flag}",
                out.display(),
                input.display()
            ));
        }
    }
    Ok(())
}

/// Checks before a command computes anything that `path` (given as
/// `flag`, e.g. `--out`) can be written: it names a file (no trailing `/` or
/// `.`, not an existing folder, not a device, pipe or socket), its folder
/// exists and takes a new file, and an existing file there is not
/// read-only. A run that computed for an hour must not end on "no such
/// directory" or "not a directory".
pub fn check_writable(flag: &str, path: &Path) -> Result<(), String> {
    let shown = path.display();
    let text = path.as_os_str().to_string_lossy();
    if text.is_empty() {
        return Err(format!("{flag}: the path is empty, expected a file name"));
    }
    // `Path` drops a trailing `/` and `.`: look at the text itself.
    let last = text.rsplit(std::path::is_separator).next().unwrap_or("");
    if last.is_empty() || last == "." || last == ".." || path.is_dir() {
        return Err(format!("{flag} {shown}: names a folder, expected a file name in it"));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        return Err(format!("{flag} {shown}: the folder {} does not exist", dir.display()));
    }
    if !dir.is_dir() {
        return Err(format!("{flag} {shown}: {} is not a folder", dir.display()));
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(format!(
                "{flag} {shown}: exists and is not a regular file (a device, pipe or socket); expected a file name"
            ));
        }
        Ok(m) if m.permissions().readonly() => {
            return Err(format!("{flag} {shown}: the file is read-only; make it writable or choose another name"));
        }
        _ => {}
    }
    let probe = dir.join(format!(".neuroplastic-probe{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("{flag} {shown}: cannot write in {}: {e}", dir.display()))
}

/// An error about the file `path`, given on the command line as `label`
/// (`--model m.safetensors`, `--model OML=m.safetensors`), worded
/// `{label}: {what}`: the loaders' own messages start with the path, which
/// `label` holds and is not repeated.
pub fn flagged(label: &str, path: &Path, e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    let e = e.strip_prefix(&format!("{}: ", path.display())).unwrap_or(&e);
    format!("{label}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_file_is_found_through_other_paths_and_links() {
        let d = std::env::temp_dir().join(format!("neuroplastic-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let m = d.join("m.safetensors");
        std::fs::write(&m, b"model").unwrap();
        std::fs::write(d.join("other"), b"model").unwrap();
        let dotted = d.join("sub").join("..").join("m.safetensors");
        assert!(same_file(&m, &m));
        assert!(same_file(&m, &dotted));
        assert!(!same_file(&m, &d.join("other")), "equal contents are not the same file");
        assert!(!same_file(&m, &d.join("absent")));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&m, d.join("sym")).unwrap();
            std::fs::hard_link(&m, d.join("hard")).unwrap();
            assert!(same_file(&d.join("sym"), &m));
            assert!(same_file(&d.join("hard"), &m));
        }
        let e = refuse_overwrite("--out", &dotted, &[("--episode", &d.join("other")), ("--model", &m)]).unwrap_err();
        assert!(e.contains("--out") && e.contains("--model") && e.contains("another path"), "{e}");
        assert!(refuse_overwrite("--out", &d.join("g"), &[("--model", &m)]).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
