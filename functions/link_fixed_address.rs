//! Build script shared by the Lambda functions (and the hello-world they
//! are measured against): link each binary at a fixed address (`-no-pie`),
//! and, when it is built never to unwind, without unwind tables.
//!
//! A position-independent executable is relocated by the loader at every
//! start: the webhook function carried ~65,000 relative relocations (every
//! vtable and `&'static str` table), 1.6 MB of pages copied and written
//! before `main`, about a third of its cold start. Linked at a fixed
//! address the linker resolves them once. The trade is ASLR for the
//! executable's own image (libraries, heap and stacks are still
//! randomised), as Go binaries make by default; a function runs alone in
//! its Firecracker micro-VM. Only Linux linkers take the flag.
//!
//! Unwind tables (`.eh_frame`) were 1.1 MB of each bootstrap, a tenth of
//! its zipped size, and a binary built with `panic = "abort"` (the release
//! profile the functions ship with) never unwinds: a panic ends the
//! process, and a backtrace of a stripped binary names nothing anyway.
//! rustc keeps emitting them whatever `-C force-unwind-tables` says (the
//! standard library comes with its own), so the linker drops them, and
//! with them the `.eh_frame_hdr` index: with no index, a backtrace asked
//! for (`RUST_BACKTRACE`) is empty instead of read from a missing table.
//! Only the `release` profile drops them: it is the one with `panic =
//! "abort"` (workspace Cargo.toml) that `cargo lambda build --release` and
//! `sam build` use. Builds that unwind (tests, the `serve` profile) keep
//! both. Cargo tells a build script neither the profile's name nor its
//! panic strategy (`CARGO_CFG_PANIC` is the target's default, `unwind`),
//! so the name is read from `OUT_DIR`: `…/<profile>/build/<package>/out`.

/// Given to the linker after its default script.
const DROP_UNWIND_TABLES: &str = "SECTIONS
{
  /DISCARD/ : { *(.eh_frame) *(.eh_frame.*) }
}
INSERT AFTER .text;
";

fn main() {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    if env("CARGO_CFG_TARGET_OS") == "linux" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
        let out_dir = env("OUT_DIR");
        if profile(&out_dir) == Some("release") {
            drop_unwind_tables(&out_dir);
        }
    }
    // Runs again only if the manifest changes (or this script: it is rebuilt).
    println!("cargo:rerun-if-changed=Cargo.toml");
}

/// The profile's directory: the one holding `build/<package>/out`.
fn profile(out_dir: &str) -> Option<&str> {
    let build = std::path::Path::new(out_dir).parent()?.parent()?;
    if build.file_name()? != "build" {
        return None;
    }
    build.parent()?.file_name()?.to_str()
}

fn drop_unwind_tables(out_dir: &str) {
    let script = std::path::Path::new(out_dir).join("drop-unwind-tables.ld");
    if let Err(err) = std::fs::write(&script, DROP_UNWIND_TABLES) {
        // The binary is still right, only bigger.
        println!(
            "cargo:warning=keeping unwind tables: cannot write {}: {err}",
            script.display()
        );
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
