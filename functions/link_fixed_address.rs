//! Build script shared by the Lambda functions (and the hello-world they
//! are measured against): link each binary at a fixed address (`-no-pie`).
//!
//! A position-independent executable is relocated by the loader at every
//! start: the webhook function carried ~65,000 relative relocations (every
//! vtable and `&'static str` table), 1.6 MB of pages copied and written
//! before `main`, about a third of its cold start. Linked at a fixed
//! address the linker resolves them once. The trade is ASLR for the
//! executable's own image (libraries, heap and stacks are still
//! randomised), as Go binaries make by default; a function runs alone in
//! its Firecracker micro-VM. Only Linux linkers take the flag.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    // Runs again only if the manifest changes (or this script: it is rebuilt).
    println!("cargo:rerun-if-changed=Cargo.toml");
}
