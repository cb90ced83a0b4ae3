//! Test component: stamps `two`; the same middleware as `version-one` (`../version-one/src/versioned.rs`).
const VERSION: &str = "two";
include!("../../version-one/src/versioned.rs");
