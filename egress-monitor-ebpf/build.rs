//! The kernel object is linked by `bpf-linker`, which cargo does not know about: rebuild when the
//! linker binary changes, so a re-installed linker never leaves a stale object behind.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
