//! Generates the OpenGL function table (feature `opengl`): GL 4.5 core and the external-object
//! extensions of both platforms (`_fd` and `_win32`: a table loads what the context has), from
//! the Khronos registry bundled with `gl_generator`. `GL_NV_timeline_semaphore`
//! is newer than that registry and is declared by hand in `src/opengl/sys.rs`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_OPENGL").is_none() {
        return;
    }
    use gl_generator::{Api, Fallbacks, Profile, Registry, StructGenerator};
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut file = std::fs::File::create(out.join("gl_bindings.rs")).expect("create gl_bindings.rs");
    Registry::new(
        Api::Gl,
        (4, 5),
        Profile::Core,
        Fallbacks::None,
        [
            "GL_EXT_memory_object",
            "GL_EXT_memory_object_fd",
            "GL_EXT_memory_object_win32",
            "GL_EXT_semaphore",
            "GL_EXT_semaphore_fd",
            "GL_EXT_semaphore_win32",
        ],
    )
    .write_bindings(StructGenerator, &mut file)
    .expect("write gl_bindings.rs");
}
