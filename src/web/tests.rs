//! Router tests (filled below).
