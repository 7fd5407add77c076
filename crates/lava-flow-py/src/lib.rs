//! The Python module `lava_flow`: lava-flow's allocator, buffers and timeline semaphores, and
//! zero-copy sharing of its buffers with PyTorch, CuPy and JAX through DLPack and the CUDA array
//! interface. Guide: `docs/python.md`; tests: `crates/lava-flow-py/tests` (pytest).

mod allocator;
mod buffer;
mod bytes;
mod cuda_view;
mod dlpack;
mod dtype;
mod errors;
// `lava_flow.ipc` and pickling: fds over Unix sockets (`SCM_RIGHTS`, `DupFd`), Unix only.
#[cfg(unix)]
mod ipc;
mod ring;
mod semaphore;
mod stream;

use pyo3::prelude::*;

/// The module.
#[pymodule(name = "_lava_flow")]
fn lava_flow_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<allocator::MemoryAllocator>()?;
    m.add_function(wrap_pyfunction!(allocator::default_allocator, m)?)?;
    m.add_class::<allocator::MemoryLocation>()?;
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<buffer::ArrayView>()?;
    m.add_class::<buffer::Transfer>()?;
    m.add_class::<semaphore::TimelineSemaphore>()?;
    m.add_class::<cuda_view::CudaView>()?;
    m.add_class::<ring::Ring>()?;
    m.add_class::<ring::RingCursor>()?;
    m.add_class::<ring::FrameStep>()?;
    m.add_function(wrap_pyfunction!(ring::batch_for_latency, m)?)?;
    errors::register(m)?;
    #[cfg(unix)]
    ipc::register(m)?;
    Ok(())
}
