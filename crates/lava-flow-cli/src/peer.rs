//! A peer process of this program (`bench-peer`, `demo-peer`): started with a Unix socket to
//! connect to, and the byte-level helpers both sides use on that socket.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};

use crate::error::{Error, Result};

/// An OS error of `call` as lava-flow's `Error::Ffi`.
pub fn io(call: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Lava(lava_flow::Error::os(call, &e))
}

/// Writes all of `bytes`.
pub fn put(stream: &UnixStream, bytes: &[u8]) -> Result<()> {
    (&*stream).write_all(bytes).map_err(io("write"))
}

/// Fills `buf`.
pub fn get(stream: &UnixStream, buf: &mut [u8]) -> Result<()> {
    (&*stream).read_exact(buf).map_err(io("read"))
}

/// Starts this program as `lava-flow SUBCOMMAND SOCKET` and returns it with the connection it
/// made.
pub fn spawn(subcommand: &str) -> Result<(Child, UnixStream)> {
    let path = std::env::temp_dir().join(format!("lava-flow-{subcommand}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io("bind"))?;
    let child = Command::new(std::env::current_exe().map_err(io("current_exe"))?)
        .arg(subcommand)
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(io("spawn"))?;
    let accepted = listener.accept().map_err(io("accept"));
    let _ = std::fs::remove_file(&path);
    Ok((child, accepted?.0))
}
