//! Test component: stamps `one`; see `versioned.rs`.
const VERSION: &str = "one";
include!("versioned.rs");
