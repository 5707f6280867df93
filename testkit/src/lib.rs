//! Test support shared by pulse's crates: real Qdrant servers on loopback
//! ([`qdrant`]), so that no remote-store test has to skip for want of one.

pub mod qdrant;
