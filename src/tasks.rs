//! Tasks that generate episodes procedurally (seeded).
