//! Puts `memory.x` on the linker's search path and the edge model file (`$EDGE_MODEL`, default
//! `model.dbt` beside this file) where `include_bytes!` finds it.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("copying memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=EDGE_MODEL");
    let model = std::env::var_os("EDGE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("model.dbt"));
    println!("cargo:rerun-if-changed={}", model.display());
    if let Err(e) = std::fs::copy(&model, out.join("model.dbt")) {
        eprintln!(
            "cannot read the edge model {}: {e}\nexport one with `deberta export --format edge \
             --dtype int8 ...` and set EDGE_MODEL (scripts/edge-test.sh does both)",
            model.display()
        );
        std::process::exit(1);
    }
}
