//! The command's own errors: what went wrong in `lava-flow` itself (bad options, wrong data, a
//! consumer not built in), beside the library's errors, which it wraps.

use std::path::PathBuf;

/// Why a `lava-flow` command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lava-flow call failed (its error names the API, call and reason).
    #[error(transparent)]
    Lava(#[from] lava_flow::Error),
    /// Options out of range, or options that do not go together.
    #[error("{0}")]
    Usage(String),
    /// The consumer asked for is not in this build.
    #[cfg_attr(all(feature = "cuda", feature = "opengl", feature = "opencl"), allow(dead_code))]
    #[error("the {consumer} consumer: this lava-flow was built without the feature `{feature}`")]
    NotBuilt { consumer: &'static str, feature: &'static str },
    /// Data came out wrong: a frame checksum, a copy.
    #[error("{0}")]
    WrongData(String),
    /// The validation layer reported messages (each printed before).
    #[error("{0} validation message(s)")]
    Validation(usize),
    /// A shader of the command's own did not compile.
    #[error("compute shader: {0}")]
    Shader(String),
    /// A file could not be written (`bench --json`, Unix only).
    #[cfg_attr(not(unix), allow(dead_code))]
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    /// The JSON report could not be made.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer process sent what this one does not understand.
    #[cfg_attr(not(all(unix, feature = "cuda")), allow(dead_code))]
    #[error("{0}")]
    Protocol(String),
}

/// The command's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
