//! The `neuroplastic` command-line program.
fn main() {
    println!("neuroplastic {}", env!("CARGO_PKG_VERSION"));
}
