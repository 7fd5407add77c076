//! Element types of typed views: parsed from what Python users write (`"float32"`, `"f4"`,
//! `numpy.float32`, `numpy.dtype("<f4")`, `torch.float32`), described to DLPack and to the CUDA
//! array interface.

use dlpark::ffi::{DLDataType, DLDataTypeCode};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// One element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DType {
    /// The canonical (numpy) name.
    pub name: &'static str,
    code: DLDataTypeCode,
    bits: u8,
    /// The CUDA array interface's type string (`None`: it has none, as for bfloat16).
    pub typestr: Option<&'static str>,
}

const fn t(name: &'static str, code: DLDataTypeCode, bits: u8, typestr: Option<&'static str>) -> DType {
    DType { name, code, bits, typestr }
}

/// Every supported type, with the other names it goes by.
const TYPES: [(DType, &[&str]); 14] = [
    (t("bool", DLDataTypeCode::BOOL, 8, Some("|b1")), &["?", "b1", "|b1", "bool_"]),
    (t("int8", DLDataTypeCode::INT, 8, Some("|i1")), &["i1", "|i1", "b"]),
    (t("int16", DLDataTypeCode::INT, 16, Some("<i2")), &["i2", "<i2", "h", "short"]),
    (t("int32", DLDataTypeCode::INT, 32, Some("<i4")), &["i4", "<i4", "i", "int"]),
    (t("int64", DLDataTypeCode::INT, 64, Some("<i8")), &["i8", "<i8", "q", "long"]),
    (t("uint8", DLDataTypeCode::UINT, 8, Some("|u1")), &["u1", "|u1", "B"]),
    (t("uint16", DLDataTypeCode::UINT, 16, Some("<u2")), &["u2", "<u2", "H"]),
    (t("uint32", DLDataTypeCode::UINT, 32, Some("<u4")), &["u4", "<u4", "I"]),
    (t("uint64", DLDataTypeCode::UINT, 64, Some("<u8")), &["u8", "<u8", "Q"]),
    (t("float16", DLDataTypeCode::FLOAT, 16, Some("<f2")), &["f2", "<f2", "e", "half"]),
    (t("bfloat16", DLDataTypeCode::BFLOAT, 16, None), &[]),
    (t("float32", DLDataTypeCode::FLOAT, 32, Some("<f4")), &["f4", "<f4", "f", "float"]),
    (t("float64", DLDataTypeCode::FLOAT, 64, Some("<f8")), &["f8", "<f8", "d", "double"]),
    (t("complex64", DLDataTypeCode::COMPLEX, 64, Some("<c8")), &["c8", "<c8", "F", "cfloat"]),
];

impl DType {
    /// uint8, the type of a whole buffer.
    pub const BYTES: DType = TYPES[5].0;

    /// Bytes per element.
    pub fn itemsize(&self) -> u64 {
        u64::from(self.bits / 8)
    }

    /// The DLPack description.
    pub fn dlpack(&self) -> DLDataType {
        DLDataType::scalar(self.code, self.bits)
    }

    /// The type named by `name` (numpy names and codes; a `torch.` prefix is ignored).
    pub fn from_name(name: &str) -> PyResult<DType> {
        let name = name.strip_prefix("torch.").unwrap_or(name);
        TYPES
            .iter()
            .find(|(d, aliases)| d.name == name || aliases.contains(&name))
            .map(|(d, _)| *d)
            .ok_or_else(|| {
                let known: Vec<&str> = TYPES.iter().map(|(d, _)| d.name).collect();
                PyValueError::new_err(format!(
                    "unsupported dtype {name:?}: lava_flow views support {}",
                    known.join(", ")
                ))
            })
    }

    /// The type `obj` stands for: a string, a numpy dtype (its `name`), a numpy scalar type (its
    /// `__name__`), or a torch dtype (its `str()`, `torch.float32`).
    pub fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<DType> {
        if let Ok(s) = obj.extract::<String>() {
            return DType::from_name(&s);
        }
        for attr in ["name", "__name__"] {
            if let Ok(name) = obj.getattr(attr).and_then(|n| n.extract::<String>()) {
                if let Ok(d) = DType::from_name(&name) {
                    return Ok(d);
                }
            }
        }
        let text = obj.str()?.to_string();
        DType::from_name(&text).map_err(|_| {
            PyTypeError::new_err(format!(
                "dtype must be a name such as \"float32\", a numpy or torch dtype; got {text}"
            ))
        })
    }
}
