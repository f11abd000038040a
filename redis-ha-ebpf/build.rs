use which::which;

/// Rebuild the program when bpf-linker changes: the linker, not rustc, emits the final object
/// (and its BTF), so a new linker can change the output with no source change.
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found: run `cargo xtask build`, which installs it (see README)");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
