//! `ripple-bench`: a load generator for Yjs WebSocket servers and the report of the side-by-side
//! comparison (`bench/compare.sh`).
//!
//! Every simulated client is a real yrs document on its own WebSocket ([`conn::Conn`]), driven
//! by one task; [`session::Session`] steps many of them through connect → run → drain → finish;
//! [`scenario`] holds the five scenarios (fanout, connect, bigdoc, burst, idle); [`procstat`]
//! samples the server's and the driver's CPU and memory from `/proc`; [`report`] prints a table
//! and one JSON line per run; [`compare`] turns the JSON lines of several runs into one markdown
//! table and an SVG chart. [`wire`] frames messages for y-websocket or Hocuspocus.
//!
//! This crate is deliberately outside the `ripple` binary's dependency tree.

pub mod compare;
pub mod conn;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod session;
pub mod wire;
