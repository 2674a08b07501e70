//! Error values. Every failure the crate can detect in its inputs is one of
//! these, and each names the offending argument, what it got and what was
//! expected: the kernels never panic on bad input.

use std::fmt;

/// A shape, printed as `(2, 3, 4)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        for (k, d) in self.0.iter().enumerate() {
            if k > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() == 1 {
            write!(f, ",")?;
        }
        write!(f, ")")
    }
}

impl From<&[usize]> for Shape {
    fn from(s: &[usize]) -> Self {
        Shape(s.to_vec())
    }
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor has the wrong number of elements for the shape it must have.
    #[error("{arg}: expected shape {expected} ({} elements), got {got} elements{}", elements(expected), if note.is_empty() { String::new() } else { format!(" ({note})") })]
    Shape {
        /// The argument or tensor name.
        arg: String,
        /// The shape that was expected.
        expected: Shape,
        /// The number of elements received.
        got: usize,
        /// What the expected shape follows from, e.g. "N = 12, I = 7".
        note: String,
    },
    /// A tensor read from a file has a different shape than required.
    #[error("{arg}: expected shape {expected}, got shape {got}")]
    ShapeMismatch {
        /// The argument or tensor name.
        arg: String,
        /// The shape that was expected.
        expected: Shape,
        /// The shape received.
        got: Shape,
    },
    /// A size or count that must be positive is zero.
    #[error("{arg} must be at least 1, got 0")]
    Empty {
        /// The argument.
        arg: String,
    },
    /// A scalar value is outside its allowed range.
    #[error("{arg} = {} is out of range: expected {expected}", number(*value))]
    Range {
        /// The argument.
        arg: String,
        /// The offending value.
        value: f64,
        /// The allowed range, in words.
        expected: String,
    },
    /// A tensor holds NaN or ±∞ where the caller asked for a finiteness check.
    #[error("{arg}: element {index} is not finite ({value})")]
    NonFinite {
        /// The tensor.
        arg: String,
        /// Flat index of the first offending element.
        index: usize,
        /// The value found.
        value: f64,
    },
    /// Options that cannot go together, or a configuration the layer does not support.
    #[error("{arg}: {message}")]
    Config {
        /// The option or argument.
        arg: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// A backend, library or device is not available on this machine.
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// The backend asked for.
        backend: String,
        /// Why, and what to install.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A computation would need more memory than the machine has: refused
    /// before anything is allocated (see [`crate::limits`]).
    #[error("{arg}: {message}")]
    Memory {
        /// The argument, flag or file whose size is too large.
        arg: String,
        /// Bytes the computation needs.
        needed: u128,
        /// Bytes available (`None`: unknown, and the size is beyond any allocation).
        available: Option<u128>,
        /// What the memory is for, its largest parts, and what to change.
        message: String,
    },
    /// A value left the f32 range (or became NaN) during a computation.
    #[error("{quantity}: {message}")]
    Overflow {
        /// The quantity and where: e.g. "pre-activation a (episode 0, step 12, neuron 3)".
        quantity: String,
        /// What happened and what usually causes it.
        message: String,
    },
    /// A file is readable but its contents are not what was expected.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong, naming the tensor or metadata key.
        message: String,
    },
}

/// The number of elements of a shape, or `None` when it does not fit in `usize`.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The element count of a shape in words (a shape built from absurd sizes may overflow).
fn elements(shape: &Shape) -> String {
    match element_count(&shape.0) {
        Some(n) => n.to_string(),
        None => "more than usize::MAX".into(),
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that `data` has exactly the number of elements of `expected`.
pub(crate) fn check_len(arg: &str, len: usize, expected: &[usize], note: impl FnOnce() -> String) -> Result<()> {
    // Checked: in release builds a wrapped product of absurd sizes could match `len`.
    if element_count(expected) != Some(len) {
        return Err(Error::Shape { arg: arg.to_string(), expected: Shape(expected.to_vec()), got: len, note: note() });
    }
    Ok(())
}

/// Checks that every element of `data` is finite.
pub(crate) fn check_finite<F: Copy + Into<f64>>(arg: &str, data: &[F]) -> Result<()> {
    for (index, &v) in data.iter().enumerate() {
        let v: f64 = v.into();
        if !v.is_finite() {
            return Err(Error::NonFinite { arg: arg.to_string(), index, value: v });
        }
    }
    Ok(())
}

/// Checks that a learning-rate–like scalar lies in `[0, 1]`.
pub(crate) fn check_unit(arg: &str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Error::Range { arg: arg.to_string(), value, expected: "a number in [0, 1]".into() });
    }
    Ok(())
}

/// A number for messages: plain when moderate (`1.5`, `0.003`), in exponent
/// form when very large or small (`1e30`, `1e-9`), never 300 digits.
pub fn number(v: f64) -> String {
    if v != 0.0 && v.is_finite() && (v.abs() >= 1e5 || v.abs() < 1e-4) { format!("{v:e}") } else { format!("{v}") }
}
