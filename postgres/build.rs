//! `sqlx::migrate!()` embeds the migrations at compile time; this makes Cargo rebuild the crate
//! when one of them changes (as `sqlx migrate build-script` writes it).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
