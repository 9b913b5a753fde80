//! Links release builds of `ward` with the function order of link/symbol-order.txt.
//!
//! The list (made by bench/symbol-order.sh) holds every function a proxy runs from start-up
//! through its first requests. Laid out together, they are a few megabytes of text instead of
//! pages all over the binary, which the kernel maps in with their neighbours: an idle proxy's
//! resident memory is mostly the text it has touched (docs/PERFORMANCE.md). Names the list
//! holds and the binary lacks are skipped, so a stale list costs memory, never correctness.

use std::env;
use std::path::Path;

const ORDER: &str = "link/symbol-order.txt";

fn main() {
    println!("cargo::rerun-if-changed={ORDER}");
    println!("cargo::rerun-if-env-changed=WARD_SYMBOL_ORDER");
    println!("cargo::rerun-if-env-changed=RUSTC_LINKER");
    // Debug builds (tests) gain nothing from it and would only relink for it.
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    // `--symbol-ordering-file` is lld's; rustc links this target with its own lld by default.
    // A linker or link flags of the user's own may not take it: then link as they say.
    let lld = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu")
        && env::var_os("RUSTC_LINKER").is_none()
        && !env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    let wanted = env::var("WARD_SYMBOL_ORDER").as_deref() != Ok("0");
    let Ok(dir) = env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = Path::new(&dir).join(ORDER);
    if release && lld && wanted && order.is_file() {
        // `-Xlinker` passes each argument whole: `-Wl,` would split a path at its commas.
        for arg in [
            format!("--symbol-ordering-file={}", order.display()),
            "--no-warn-symbol-ordering".to_owned(),
        ] {
            println!("cargo::rustc-link-arg-bins=-Xlinker");
            println!("cargo::rustc-link-arg-bins={arg}");
        }
    }
}
