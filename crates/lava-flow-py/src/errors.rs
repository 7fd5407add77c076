//! lava-flow's errors as Python exceptions: one class per kind of error, each a subclass of
//! `lava_flow.LavaFlowError` and of the built-in exception a Python user would catch for it
//! (`ValueError` for bad arguments, `MemoryError` for a full heap, `TimeoutError`), carrying the
//! Rust error's message.

use lava_flow::Error;
use pyo3::exceptions::{PyException, PyMemoryError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The exception classes, by name, with their documentation.
const CLASSES: [(&str, &str); 9] = [
    ("LavaFlowError", "Base class of every lava_flow error."),
    ("DriverError", "A Vulkan, CUDA, OpenCL or GL call failed: the message names the call and the error."),
    ("UnsupportedError", "The driver or device cannot do this (an export, an import, a location)."),
    ("LibraryNotFoundError", "A driver library (libvulkan, libcuda, ...) could not be loaded."),
    ("InvalidArgumentError", "A bad argument: a size of 0 or past the heap, a range outside the buffer, ..."),
    ("UnknownDeviceError", "No Vulkan device has this device_id."),
    ("DeviceMismatchError", "An object of one GPU was given to another GPU's API object."),
    ("OutOfMemoryError", "The heap (or the allocator's heap budget) is full: the message names the heap."),
    ("TimeoutError", "A wait ran out of time."),
];

static TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// Creates the classes (`type(name, bases, namespace)`, since some have two bases) and adds them
/// to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let types = TYPES.get_or_try_init(py, || create(py))?;
    for ((name, _), ty) in CLASSES.iter().zip(types) {
        m.add(*name, ty.bind(py))?;
    }
    Ok(())
}

fn create(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    let metatype = py.get_type::<PyType>();
    let mut types: Vec<Py<PyType>> = Vec::with_capacity(CLASSES.len());
    for (i, (name, doc)) in CLASSES.iter().enumerate() {
        let bases = if i == 0 {
            PyTuple::new(py, [py.get_type::<PyException>()])?
        } else {
            let base = types[0].bind(py).clone();
            match *name {
                "InvalidArgumentError" | "UnknownDeviceError" | "DeviceMismatchError" => {
                    PyTuple::new(py, [base, py.get_type::<PyValueError>()])?
                }
                "OutOfMemoryError" => PyTuple::new(py, [base, py.get_type::<PyMemoryError>()])?,
                "TimeoutError" => PyTuple::new(py, [base, py.get_type::<PyTimeoutError>()])?,
                "LibraryNotFoundError" => PyTuple::new(py, [types[2].bind(py).clone()])?,
                _ => PyTuple::new(py, [base])?,
            }
        };
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "lava_flow")?;
        namespace.set_item("__doc__", *doc)?;
        let ty = metatype.call1((*name, bases, namespace))?.cast_into::<PyType>()?;
        types.push(ty.unbind());
    }
    Ok(types)
}

/// The class of `error`'s kind.
fn class_of(error: &Error) -> usize {
    match error {
        Error::Ffi { .. } => 1,
        Error::Unsupported { .. }
        | Error::NotExportable { .. }
        | Error::LocationUnavailable { .. }
        | Error::ValidationLayerMissing => 2,
        Error::LibraryNotFound { .. } => 3,
        Error::ZeroSize
        | Error::SizeExceedsHeap { .. }
        | Error::OutOfRange { .. }
        | Error::InvalidArgument(_) => 4,
        Error::UnknownDevice { .. } => 5,
        Error::DeviceMismatch { .. } => 6,
        Error::OutOfMemory { .. } => 7,
        Error::Timeout(..) => 8,
        _ => 0,
    }
}

/// `error` as the Python exception of its kind, with its message.
pub fn to_py(error: Error) -> PyErr {
    Python::attach(|py| match TYPES.get_or_try_init(py, || create(py)) {
        Ok(types) => PyErr::from_type(types[class_of(&error)].bind(py).clone(), error.to_string()),
        Err(e) => e,
    })
}

/// `?` for lava-flow results in Python methods.
pub trait OrRaise<T> {
    /// The value, or the error as its Python exception.
    fn or_raise(self) -> PyResult<T>;
}

impl<T> OrRaise<T> for lava_flow::Result<T> {
    fn or_raise(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
