//! lava-flow's errors as Python exceptions: one class per kind of error, each a subclass of
//! `lava_flow.LavaFlowError` and of the built-in exception a Python user would catch for it
//! (`ValueError` for bad arguments, `MemoryError` for a full heap, `TimeoutError`), carrying the
//! Rust error's message.

use lava_flow::Error;
use pyo3::exceptions::{PyConnectionError, PyException, PyMemoryError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// The built-in exception a class also derives from.
#[derive(Clone, Copy)]
enum Builtin {
    Exception,
    Value,
    Memory,
    Timeout,
    Connection,
}

/// One exception class: its name, its lava_flow parent (`None` for the root), the built-in it
/// also derives from, and its documentation. Parents come before their children.
struct Class {
    name: &'static str,
    parent: Option<&'static str>,
    builtin: Option<Builtin>,
    doc: &'static str,
}

const fn class(
    name: &'static str,
    parent: Option<&'static str>,
    builtin: Option<Builtin>,
    doc: &'static str,
) -> Class {
    Class { name, parent, builtin, doc }
}

const ROOT: Option<&str> = Some("LavaFlowError");

const CLASSES: [Class; 12] = [
    class("LavaFlowError", None, Some(Builtin::Exception), "Base class of every lava_flow error."),
    class(
        "DriverError",
        ROOT,
        None,
        "A Vulkan, CUDA, OpenCL or GL call failed: the message names the call and the error.",
    ),
    class(
        "UnsupportedError",
        ROOT,
        None,
        "The driver or device cannot do this (an export, an import, a location).",
    ),
    class(
        "LibraryNotFoundError",
        Some("UnsupportedError"),
        None,
        "A driver library (libvulkan, libcuda, ...) could not be loaded.",
    ),
    class(
        "InvalidArgumentError",
        ROOT,
        Some(Builtin::Value),
        "A bad argument: a size of 0 or past the heap, a range outside the buffer, ...",
    ),
    class("UnknownDeviceError", ROOT, Some(Builtin::Value), "No Vulkan device has this device_id."),
    class(
        "DeviceMismatchError",
        ROOT,
        Some(Builtin::Value),
        "An object of one GPU was given to another GPU's API object.",
    ),
    class(
        "OutOfMemoryError",
        ROOT,
        Some(Builtin::Memory),
        "The heap (or the allocator's heap budget) is full: the message names the heap.",
    ),
    class("TimeoutError", ROOT, Some(Builtin::Timeout), "A wait ran out of time."),
    class(
        "MalformedError",
        ROOT,
        Some(Builtin::Value),
        "A message or descriptor from elsewhere is not what lava-flow sends: the message says why.",
    ),
    class(
        "DisconnectedError",
        ROOT,
        Some(Builtin::Connection),
        "The other process closed the connection before a whole message was sent or received.",
    ),
    class(
        "ClosedError",
        ROOT,
        Some(Builtin::Value),
        "The object was closed (close() or the end of its with block): it cannot be used any more.",
    ),
];

static TYPES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn index(name: &str) -> usize {
    CLASSES.iter().position(|c| c.name == name).unwrap_or(0)
}

/// Creates the classes (`type(name, bases, namespace)`, since some have two bases) and adds them
/// to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let types = TYPES.get_or_try_init(py, || create(py))?;
    for (class, ty) in CLASSES.iter().zip(types) {
        m.add(class.name, ty.bind(py))?;
    }
    Ok(())
}

fn create(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    let metatype = py.get_type::<PyType>();
    let mut types: Vec<Py<PyType>> = Vec::with_capacity(CLASSES.len());
    for class in &CLASSES {
        let mut bases = Vec::new();
        if let Some(parent) = class.parent {
            bases.push(types[index(parent)].bind(py).clone());
        }
        bases.extend(class.builtin.map(|b| match b {
            Builtin::Exception => py.get_type::<PyException>(),
            Builtin::Value => py.get_type::<PyValueError>(),
            Builtin::Memory => py.get_type::<PyMemoryError>(),
            Builtin::Timeout => py.get_type::<PyTimeoutError>(),
            Builtin::Connection => py.get_type::<PyConnectionError>(),
        }));
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "lava_flow")?;
        namespace.set_item("__doc__", class.doc)?;
        let ty = metatype.call1((class.name, PyTuple::new(py, bases)?, namespace))?.cast_into::<PyType>()?;
        types.push(ty.unbind());
    }
    Ok(types)
}

/// The name of the class of `error`'s kind.
fn class_of(error: &Error) -> &'static str {
    match error {
        Error::Ffi { .. } => "DriverError",
        Error::Unsupported { .. }
        | Error::NotExportable { .. }
        | Error::LocationUnavailable { .. }
        | Error::ValidationLayerMissing => "UnsupportedError",
        Error::LibraryNotFound { .. } => "LibraryNotFoundError",
        Error::ZeroSize
        | Error::SizeExceedsHeap { .. }
        | Error::OutOfRange { .. }
        | Error::InvalidArgument(_)
        | Error::Ring(_) => "InvalidArgumentError",
        Error::UnknownDevice { .. } => "UnknownDeviceError",
        Error::DeviceMismatch { .. } => "DeviceMismatchError",
        Error::OutOfMemory { .. } => "OutOfMemoryError",
        Error::Timeout(..) => "TimeoutError",
        Error::Malformed { .. } => "MalformedError",
        Error::Disconnected { .. } => "DisconnectedError",
        _ => "LavaFlowError",
    }
}

/// `error` as the Python exception of its kind, with its message.
pub fn to_py(error: Error) -> PyErr {
    Python::attach(|py| match TYPES.get_or_try_init(py, || create(py)) {
        Ok(types) => PyErr::from_type(types[index(class_of(&error))].bind(py).clone(), error.to_string()),
        Err(e) => e,
    })
}

/// The class of `ClosedError`.
pub fn closed_type(py: Python<'_>) -> Bound<'_, PyType> {
    match TYPES.get_or_try_init(py, || create(py)) {
        Ok(types) => types[index("ClosedError")].bind(py).clone(),
        // Unreachable once the module is imported (`register` made the classes).
        Err(_) => py.get_type::<PyValueError>(),
    }
}

/// `ClosedError` for a use of `what` after its `close()`.
pub fn closed(what: &str) -> PyErr {
    Python::attach(|py| {
        PyErr::from_type(closed_type(py), format!("{what} is closed (close() or the end of its with block)"))
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
