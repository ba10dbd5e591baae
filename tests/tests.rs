//! Integration tests: the real node on loopback with temp dirs. One binary (autotests =
//! false) so the suite links once.

mod common;

mod api;
mod capture;
mod daemon;
mod dicom;
mod export;
mod fuzz_regressions;
mod matching;
mod package;
mod rejects;
mod retention;
mod security;
mod transit;
mod ui;
mod uplink;
