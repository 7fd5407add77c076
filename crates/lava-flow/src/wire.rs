//! The wire form of the descriptors: what travels next to a file descriptor to another process.
//!
//! Every encoding is an 8-byte header and a body:
//!
//! | bytes | field |
//! |-------|-------|
//! | 4 | magic: `LFMD` (memory), `LFSD` (semaphore), `LFID` (image) |
//! | 2 | version, little-endian |
//! | 2 | body length, little-endian |
//! | ... | body |
//!
//! The version is 1. The body holds the fields in a fixed order, integers little-endian, bools as
//! one byte (0 or 1), enums as codes (listed below, never Rust's discriminants), UUIDs as their
//! 16 bytes and a [`MemoryId`] as a `u64`.
//!
//! - memory (69 bytes): `size` u64, `offset` u64, `allocation_size` u64, `memory_type_index`
//!   u32, `dedicated` bool, `device_uuid`, `driver_uuid`, `memory_id` u64.
//! - semaphore (33 bytes): `kind` u8 (0 timeline, 1 binary), `device_uuid`, `driver_uuid`.
//! - image (83 bytes): the memory body, then `format` u8 (0 to 7 in the order of
//!   [`ImageFormat::ALL`]: R8Unorm, Rg8Unorm, Rgba8Unorm, R16Float, Rgba16Float, R32Float,
//!   Rgba32Float, R32Uint), `width` u32, `height` u32, `mip_levels` u32, `tiling` u8 (0 optimal,
//!   1 linear).
//!
//! Decoding is strict: every byte sequence decodes to at most one descriptor, and a descriptor
//! that decodes re-encodes to exactly the same bytes. Anything else (another magic, a newer
//! version, a short or long input, a bool byte other than 0 or 1, an unknown code, a descriptor
//! that breaks its own rules) is [`Error::Malformed`]. Decoding never panics.

use crate::error::{Error, Result};
use crate::handle::{ImageDescriptor, MemoryDescriptor, MemoryId, SemaphoreDescriptor, SemaphoreKind};
use crate::{ImageDesc, ImageFormat, ImageTiling, Uuid};

/// The version this build writes, and the newest it reads.
const VERSION: u16 = 1;
/// Magic, version and body length.
const HEADER_LEN: usize = 8;

const MEMORY_MAGIC: [u8; 4] = *b"LFMD";
const SEMAPHORE_MAGIC: [u8; 4] = *b"LFSD";
const IMAGE_MAGIC: [u8; 4] = *b"LFID";

const MEMORY_WHAT: &str = "memory descriptor";
const SEMAPHORE_WHAT: &str = "semaphore descriptor";
const IMAGE_WHAT: &str = "image descriptor";

/// Three u64, a u32, a bool, two UUIDs and a u64.
const MEMORY_BODY_LEN: usize = 8 + 8 + 8 + 4 + 1 + 16 + 16 + 8;
/// A kind and two UUIDs.
const SEMAPHORE_BODY_LEN: usize = 1 + 16 + 16;
/// The memory, a format, three u32 and a tiling.
const IMAGE_BODY_LEN: usize = MEMORY_BODY_LEN + 1 + 4 + 4 + 4 + 1;

/// An encoding being written.
struct Writer(Vec<u8>);

impl Writer {
    fn new(magic: [u8; 4], body_len: usize) -> Self {
        let mut bytes = Vec::with_capacity(HEADER_LEN + body_len);
        bytes.extend_from_slice(&magic);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        // The body lengths are the small constants above.
        let len = u16::try_from(body_len).unwrap_or(u16::MAX);
        bytes.extend_from_slice(&len.to_le_bytes());
        Writer(bytes)
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn uuid(&mut self, v: &Uuid) {
        self.0.extend_from_slice(&v.0);
    }

    fn memory(&mut self, d: &MemoryDescriptor) {
        self.u64(d.size);
        self.u64(d.offset);
        self.u64(d.allocation_size);
        self.u32(d.memory_type_index);
        self.bool(d.dedicated);
        self.uuid(&d.device_uuid);
        self.uuid(&d.driver_uuid);
        self.u64(d.memory_id.0);
    }

    fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// An encoding being read: the header is checked by [`Reader::new`], then the body is read field
/// by field, and [`Reader::finish`] checks that all of it was.
struct Reader<'a> {
    what: &'static str,
    body: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Checks the header (magic, version, body length) and the input's exact length.
    fn new(what: &'static str, magic: [u8; 4], body_len: usize, bytes: &'a [u8]) -> Result<Self> {
        let bad = |reason: String| Err(malformed(what, reason));
        let expected_len = HEADER_LEN + body_len;
        let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return bad(format!("{} bytes, shorter than its {HEADER_LEN}-byte header", bytes.len()));
        };
        let [m0, m1, m2, m3, v0, v1, l0, l1] = *header;
        if [m0, m1, m2, m3] != magic {
            return bad(format!(
                "magic {:?}, expected {:?}",
                String::from_utf8_lossy(&[m0, m1, m2, m3]),
                String::from_utf8_lossy(&magic)
            ));
        }
        let version = u16::from_le_bytes([v0, v1]);
        if version > VERSION {
            return bad(format!(
                "version {version} is newer than version {VERSION}, the newest this lava-flow reads"
            ));
        }
        if version != VERSION {
            return bad(format!("unknown version {version} (this lava-flow reads version {VERSION})"));
        }
        let declared = usize::from(u16::from_le_bytes([l0, l1]));
        if declared != body_len {
            return bad(format!("a body of {declared} bytes, version {VERSION} has {body_len}"));
        }
        if body.len() != body_len {
            let (which, n) = if body.len() < body_len {
                ("short", body_len - body.len())
            } else {
                ("long", body.len() - body_len)
            };
            return bad(format!("{} bytes, {n} bytes too {which} (expected {expected_len})", bytes.len()));
        }
        Ok(Reader { what, body, pos: 0 })
    }

    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let chunk = self
            .pos
            .checked_add(N)
            .and_then(|end| self.body.get(self.pos..end))
            .and_then(|s| <[u8; N]>::try_from(s).ok());
        match chunk {
            Some(chunk) => {
                self.pos += N;
                Ok(chunk)
            }
            None => Err(malformed(self.what, format!("the body ends inside {field}"))),
        }
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        self.take::<1>(field).map(|[b]| b)
    }

    fn bool(&mut self, field: &str) -> Result<bool> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(malformed(self.what, format!("{field} is the byte {b}, a bool is 0 or 1"))),
        }
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        self.take(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        self.take(field).map(u64::from_le_bytes)
    }

    fn uuid(&mut self, field: &str) -> Result<Uuid> {
        self.take(field).map(Uuid)
    }

    fn memory(&mut self) -> Result<MemoryDescriptor> {
        Ok(MemoryDescriptor {
            size: self.u64("size")?,
            offset: self.u64("offset")?,
            allocation_size: self.u64("allocation_size")?,
            memory_type_index: self.u32("memory_type_index")?,
            dedicated: self.bool("dedicated")?,
            device_uuid: self.uuid("device_uuid")?,
            driver_uuid: self.uuid("driver_uuid")?,
            memory_id: MemoryId(self.u64("memory_id")?),
        })
    }

    /// Checks that the whole body was read.
    fn finish(self) -> Result<()> {
        if self.pos == self.body.len() {
            Ok(())
        } else {
            Err(malformed(
                self.what,
                format!("{} bytes left after the last field", self.body.len() - self.pos),
            ))
        }
    }
}

fn malformed(what: &'static str, reason: String) -> Error {
    Error::Malformed { what, reason }
}

/// A descriptor's own check, failed: [`Error::Malformed`] with the check's reason.
fn rule_broken(what: &'static str, e: Error) -> Error {
    let reason = match e {
        Error::InvalidArgument(reason) => reason,
        other => other.to_string(),
    };
    // The image check names itself ("image descriptor: ..."); so does this error.
    let reason = match reason.strip_prefix(what).and_then(|r| r.strip_prefix(": ")) {
        Some(rest) => rest.to_owned(),
        None => reason,
    };
    malformed(what, reason)
}

/// The wire code of a semaphore kind.
fn kind_code(kind: SemaphoreKind) -> u8 {
    match kind {
        SemaphoreKind::Timeline => 0,
        SemaphoreKind::Binary => 1,
    }
}

fn kind_from_code(code: u8) -> Option<SemaphoreKind> {
    match code {
        0 => Some(SemaphoreKind::Timeline),
        1 => Some(SemaphoreKind::Binary),
        _ => None,
    }
}

/// The wire code of an image format: 0 to 7 in the order of [`ImageFormat::ALL`].
fn format_code(format: ImageFormat) -> u8 {
    match format {
        ImageFormat::R8Unorm => 0,
        ImageFormat::Rg8Unorm => 1,
        ImageFormat::Rgba8Unorm => 2,
        ImageFormat::R16Float => 3,
        ImageFormat::Rgba16Float => 4,
        ImageFormat::R32Float => 5,
        ImageFormat::Rgba32Float => 6,
        ImageFormat::R32Uint => 7,
    }
}

fn format_from_code(code: u8) -> Option<ImageFormat> {
    match code {
        0 => Some(ImageFormat::R8Unorm),
        1 => Some(ImageFormat::Rg8Unorm),
        2 => Some(ImageFormat::Rgba8Unorm),
        3 => Some(ImageFormat::R16Float),
        4 => Some(ImageFormat::Rgba16Float),
        5 => Some(ImageFormat::R32Float),
        6 => Some(ImageFormat::Rgba32Float),
        7 => Some(ImageFormat::R32Uint),
        _ => None,
    }
}

/// The wire code of an image tiling.
fn tiling_code(tiling: ImageTiling) -> u8 {
    match tiling {
        ImageTiling::Optimal => 0,
        ImageTiling::Linear => 1,
    }
}

fn tiling_from_code(code: u8) -> Option<ImageTiling> {
    match code {
        0 => Some(ImageTiling::Optimal),
        1 => Some(ImageTiling::Linear),
        _ => None,
    }
}

impl MemoryDescriptor {
    /// The descriptor's wire form (77 bytes): what [`from_bytes`](Self::from_bytes) reads, in this
    /// or another process. The format is versioned; see [`ipc`](crate::ipc) to send it together
    /// with its file descriptor.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(MEMORY_MAGIC, MEMORY_BODY_LEN);
        w.memory(self);
        w.finish()
    }

    /// Decodes what [`to_bytes`](Self::to_bytes) wrote. Every field is checked, and then
    /// [`check_layout`](Self::check_layout): anything else is [`Error::Malformed`] (a newer
    /// version too, named in the error). The device and the memory type are checked later, by the
    /// import.
    pub fn from_bytes(bytes: &[u8]) -> Result<MemoryDescriptor> {
        let mut r = Reader::new(MEMORY_WHAT, MEMORY_MAGIC, MEMORY_BODY_LEN, bytes)?;
        let desc = r.memory()?;
        r.finish()?;
        desc.check_layout().map_err(|e| rule_broken(MEMORY_WHAT, e))?;
        Ok(desc)
    }
}

impl SemaphoreDescriptor {
    /// The descriptor's wire form (41 bytes): what [`from_bytes`](Self::from_bytes) reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(SEMAPHORE_MAGIC, SEMAPHORE_BODY_LEN);
        w.u8(kind_code(self.kind));
        w.uuid(&self.device_uuid);
        w.uuid(&self.driver_uuid);
        w.finish()
    }

    /// Decodes what [`to_bytes`](Self::to_bytes) wrote; anything else (an unknown kind, a newer
    /// version, ...) is [`Error::Malformed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SemaphoreDescriptor> {
        let mut r = Reader::new(SEMAPHORE_WHAT, SEMAPHORE_MAGIC, SEMAPHORE_BODY_LEN, bytes)?;
        let code = r.u8("kind")?;
        let kind = kind_from_code(code)
            .ok_or_else(|| malformed(SEMAPHORE_WHAT, format!("unknown semaphore kind {code}")))?;
        let desc = SemaphoreDescriptor {
            kind,
            device_uuid: r.uuid("device_uuid")?,
            driver_uuid: r.uuid("driver_uuid")?,
        };
        r.finish()?;
        Ok(desc)
    }
}

impl ImageDescriptor {
    /// The descriptor's wire form (91 bytes): what [`from_bytes`](Self::from_bytes) reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(IMAGE_MAGIC, IMAGE_BODY_LEN);
        w.memory(&self.memory);
        w.u8(format_code(self.image.format));
        w.u32(self.image.width);
        w.u32(self.image.height);
        w.u32(self.image.mip_levels);
        w.u8(tiling_code(self.image.tiling));
        w.finish()
    }

    /// Decodes what [`to_bytes`](Self::to_bytes) wrote. Every field is checked, and then
    /// [`check`](Self::check): anything else (an unknown format or tiling, a newer version, ...)
    /// is [`Error::Malformed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ImageDescriptor> {
        let mut r = Reader::new(IMAGE_WHAT, IMAGE_MAGIC, IMAGE_BODY_LEN, bytes)?;
        let memory = r.memory()?;
        let code = r.u8("format")?;
        let format = format_from_code(code)
            .ok_or_else(|| malformed(IMAGE_WHAT, format!("unknown image format {code}")))?;
        let width = r.u32("width")?;
        let height = r.u32("height")?;
        let mip_levels = r.u32("mip_levels")?;
        let code = r.u8("tiling")?;
        let tiling = tiling_from_code(code)
            .ok_or_else(|| malformed(IMAGE_WHAT, format!("unknown image tiling {code}")))?;
        r.finish()?;
        let desc = ImageDescriptor { memory, image: ImageDesc { format, width, height, mip_levels, tiling } };
        desc.check().map_err(|e| rule_broken(IMAGE_WHAT, e))?;
        Ok(desc)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// `PROPTEST_CASES` where set (CI's fuzzing step), else `default`.
    fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    use super::*;
    use proptest::prelude::*;

    /// Valid memory descriptors, the extremes included.
    pub(crate) fn memory_descriptor() -> impl Strategy<Value = MemoryDescriptor> {
        let uuid = || any::<[u8; 16]>().prop_map(Uuid);
        (1..=u64::MAX, any::<bool>())
            .prop_flat_map(|(size, dedicated)| {
                let max_offset = if dedicated { 0 } else { u64::MAX - size };
                (Just(size), Just(dedicated), 0..=max_offset)
            })
            .prop_flat_map(move |(size, dedicated, offset)| {
                let end = offset + size;
                (
                    Just(size),
                    Just(dedicated),
                    Just(offset),
                    end..=u64::MAX,
                    any::<u32>(),
                    uuid(),
                    uuid(),
                    any::<u64>(),
                )
            })
            .prop_map(
                |(
                    size,
                    dedicated,
                    offset,
                    allocation_size,
                    memory_type_index,
                    device_uuid,
                    driver_uuid,
                    id,
                )| {
                    MemoryDescriptor {
                        size,
                        offset,
                        allocation_size,
                        memory_type_index,
                        dedicated,
                        device_uuid,
                        driver_uuid,
                        memory_id: MemoryId(id),
                    }
                },
            )
    }

    pub(crate) fn semaphore_descriptor() -> impl Strategy<Value = SemaphoreDescriptor> {
        (
            prop_oneof![Just(SemaphoreKind::Timeline), Just(SemaphoreKind::Binary)],
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
        )
            .prop_map(|(kind, d, v)| SemaphoreDescriptor {
                kind,
                device_uuid: Uuid(d),
                driver_uuid: Uuid(v),
            })
    }

    /// Valid image descriptors: a dedicated allocation, any format, extent, tiling and a valid
    /// number of mip levels.
    pub(crate) fn image_descriptor() -> impl Strategy<Value = ImageDescriptor> {
        let memory = memory_descriptor().prop_map(|m| MemoryDescriptor { dedicated: true, offset: 0, ..m });
        let tiling = prop_oneof![Just(ImageTiling::Optimal), Just(ImageTiling::Linear)];
        (memory, proptest::sample::select(ImageFormat::ALL.to_vec()), 1..=u32::MAX, 1..=u32::MAX, tiling)
            .prop_flat_map(|(memory, format, width, height, tiling)| {
                let image = ImageDesc { format, width, height, mip_levels: 1, tiling };
                let levels = 1..=image.max_mip_levels();
                (Just(memory), Just(image), levels)
            })
            .prop_map(|(memory, image, mip_levels)| ImageDescriptor {
                memory,
                image: image.mip_levels(mip_levels),
            })
    }

    /// The property of every decoder: no panic, and either an error or a descriptor that is
    /// exactly these bytes.
    fn decodes_strictly(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
        match MemoryDescriptor::from_bytes(bytes) {
            Ok(d) => prop_assert_eq!(d.to_bytes(), bytes),
            Err(e) => prop_assert!(matches!(e, Error::Malformed { what: MEMORY_WHAT, .. }), "{e}"),
        }
        match SemaphoreDescriptor::from_bytes(bytes) {
            Ok(d) => prop_assert_eq!(d.to_bytes(), bytes),
            Err(e) => prop_assert!(matches!(e, Error::Malformed { what: SEMAPHORE_WHAT, .. }), "{e}"),
        }
        match ImageDescriptor::from_bytes(bytes) {
            Ok(d) => prop_assert_eq!(d.to_bytes(), bytes),
            Err(e) => prop_assert!(matches!(e, Error::Malformed { what: IMAGE_WHAT, .. }), "{e}"),
        }
        Ok(())
    }

    /// One change to an encoding.
    #[derive(Debug, Clone)]
    enum Mutation {
        Truncate(usize),
        FlipBit(usize, u8),
        SetByte(usize, u8),
        Append(Vec<u8>),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
            proptest::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
        ]
    }

    fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for m in mutations {
            let len = bytes.len().max(1);
            match m {
                Mutation::Truncate(n) => bytes.truncate(n % len),
                Mutation::FlipBit(i, b) => {
                    if let Some(byte) = bytes.get_mut(i % len) {
                        *byte ^= 1 << b;
                    }
                }
                Mutation::SetByte(i, v) => {
                    if let Some(byte) = bytes.get_mut(i % len) {
                        *byte = *v;
                    }
                }
                Mutation::Append(extra) => bytes.extend_from_slice(extra),
            }
        }
        bytes
    }

    /// An encoding of any kind, from valid descriptors.
    fn any_encoding() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            memory_descriptor().prop_map(|d| d.to_bytes()),
            semaphore_descriptor().prop_map(|d| d.to_bytes()),
            image_descriptor().prop_map(|d| d.to_bytes()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(2000)))]

        #[test]
        fn memory_descriptors_round_trip(d in memory_descriptor()) {
            let bytes = d.to_bytes();
            prop_assert_eq!(bytes.len(), HEADER_LEN + MEMORY_BODY_LEN);
            prop_assert_eq!(MemoryDescriptor::from_bytes(&bytes).expect("valid"), d);
        }

        #[test]
        fn semaphore_descriptors_round_trip(d in semaphore_descriptor()) {
            let bytes = d.to_bytes();
            prop_assert_eq!(bytes.len(), HEADER_LEN + SEMAPHORE_BODY_LEN);
            prop_assert_eq!(SemaphoreDescriptor::from_bytes(&bytes).expect("valid"), d);
        }

        #[test]
        fn image_descriptors_round_trip(d in image_descriptor()) {
            let bytes = d.to_bytes();
            prop_assert_eq!(bytes.len(), HEADER_LEN + IMAGE_BODY_LEN);
            prop_assert_eq!(ImageDescriptor::from_bytes(&bytes).expect("valid"), d);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            decodes_strictly(&bytes)?;
        }

        /// Arbitrary bytes behind a valid header, so that the body's checks are reached.
        #[test]
        fn arbitrary_bodies_never_panic(
            magic in proptest::sample::select(vec![MEMORY_MAGIC, SEMAPHORE_MAGIC, IMAGE_MAGIC]),
            body in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut bytes = magic.to_vec();
            bytes.extend_from_slice(&VERSION.to_le_bytes());
            bytes.extend_from_slice(&u16::try_from(body.len()).expect("valid").to_le_bytes());
            bytes.extend_from_slice(&body);
            decodes_strictly(&bytes)?;
        }

        #[test]
        fn mutated_encodings_never_panic(
            bytes in any_encoding(),
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            decodes_strictly(&mutate(bytes, &mutations))?;
        }
    }

    fn a_memory_descriptor() -> MemoryDescriptor {
        MemoryDescriptor {
            size: 256,
            offset: 512,
            allocation_size: 4096,
            memory_type_index: 3,
            dedicated: false,
            device_uuid: Uuid([1; 16]),
            driver_uuid: Uuid([2; 16]),
            memory_id: MemoryId(0x0123_4567_89ab_cdef),
        }
    }

    fn reason(e: Error) -> String {
        match e {
            Error::Malformed { reason, .. } => reason,
            other => panic!("expected Error::Malformed, got {other:?}"),
        }
    }

    /// The layout is the documented one, byte for byte.
    #[test]
    fn memory_layout_is_fixed() {
        let bytes = a_memory_descriptor().to_bytes();
        let mut expected = b"LFMD".to_vec();
        expected.extend_from_slice(&[1, 0, 69, 0]);
        expected.extend_from_slice(&256u64.to_le_bytes());
        expected.extend_from_slice(&512u64.to_le_bytes());
        expected.extend_from_slice(&4096u64.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.push(0);
        expected.extend_from_slice(&[1; 16]);
        expected.extend_from_slice(&[2; 16]);
        expected.extend_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn format_and_tiling_codes_round_trip() {
        for (i, format) in ImageFormat::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(format_code(format)), i);
            assert_eq!(format_from_code(format_code(format)), Some(format));
        }
        assert_eq!(format_from_code(8), None);
        for tiling in [ImageTiling::Optimal, ImageTiling::Linear] {
            assert_eq!(tiling_from_code(tiling_code(tiling)), Some(tiling));
        }
        assert_eq!(tiling_from_code(2), None);
        for kind in [SemaphoreKind::Timeline, SemaphoreKind::Binary] {
            assert_eq!(kind_from_code(kind_code(kind)), Some(kind));
        }
        assert_eq!(kind_from_code(2), None);
    }

    #[test]
    fn each_refusal_is_named() {
        let good = a_memory_descriptor().to_bytes();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };

        let r = reason(MemoryDescriptor::from_bytes(&with(0, b'X')).expect_err("refused"));
        assert!(r.contains("magic"), "{r}");
        // Another kind's encoding is refused by its magic.
        let sem = SemaphoreDescriptor {
            kind: SemaphoreKind::Binary,
            device_uuid: Uuid([1; 16]),
            driver_uuid: Uuid([2; 16]),
        };
        let r = reason(MemoryDescriptor::from_bytes(&sem.to_bytes()).expect_err("refused"));
        assert!(r.contains("LFSD") && r.contains("LFMD"), "{r}");

        let r = reason(MemoryDescriptor::from_bytes(&with(4, 2)).expect_err("refused"));
        assert!(r.contains("version 2") && r.contains("version 1"), "{r}");
        let r = reason(MemoryDescriptor::from_bytes(&with(4, 0)).expect_err("refused"));
        assert!(r.contains("version 0"), "{r}");
        let r = reason(MemoryDescriptor::from_bytes(&with(6, 70)).expect_err("refused"));
        assert!(r.contains("70"), "{r}");

        let r = reason(MemoryDescriptor::from_bytes(&good[..good.len() - 1]).expect_err("refused"));
        assert!(r.contains("too short"), "{r}");
        let r = reason(MemoryDescriptor::from_bytes(&good[..3]).expect_err("refused"));
        assert!(r.contains("header"), "{r}");
        let mut long = good.clone();
        long.push(0);
        let r = reason(MemoryDescriptor::from_bytes(&long).expect_err("refused"));
        assert!(r.contains("too long"), "{r}");

        // `dedicated` is byte 8 + 28.
        let r = reason(MemoryDescriptor::from_bytes(&with(36, 2)).expect_err("refused"));
        assert!(r.contains("dedicated") && r.contains("0 or 1"), "{r}");
        // Dedicated at offset 512: the descriptor's own rule.
        let r = reason(MemoryDescriptor::from_bytes(&with(36, 1)).expect_err("refused"));
        assert!(r.contains("offset 0"), "{r}");
        // offset + size past the allocation.
        let r = reason(MemoryDescriptor::from_bytes(&with(8 + 8 + 7, 0xff)).expect_err("refused"));
        assert!(r.contains("does not describe a buffer"), "{r}");

        let r = reason(
            SemaphoreDescriptor::from_bytes(&{
                let mut b = sem.to_bytes();
                b[8] = 2;
                b
            })
            .expect_err("refused"),
        );
        assert!(r.contains("semaphore kind 2"), "{r}");
    }

    #[test]
    fn image_refusals() {
        let memory = MemoryDescriptor { dedicated: true, offset: 0, ..a_memory_descriptor() };
        let good = ImageDescriptor {
            memory,
            image: ImageDesc::new(ImageFormat::Rgba8Unorm, 16, 4).mip_levels(5).tiling(ImageTiling::Linear),
        };
        let bytes = good.to_bytes();
        assert_eq!(ImageDescriptor::from_bytes(&bytes).expect("valid"), good);
        let at = HEADER_LEN + MEMORY_BODY_LEN;
        let with = |i: usize, v: &[u8]| {
            let mut b = bytes.clone();
            b[i..i + v.len()].copy_from_slice(v);
            b
        };
        let r = reason(ImageDescriptor::from_bytes(&with(at, &[8])).expect_err("refused"));
        assert!(r.contains("image format 8"), "{r}");
        let r = reason(ImageDescriptor::from_bytes(&with(at + 13, &[2])).expect_err("refused"));
        assert!(r.contains("image tiling 2"), "{r}");
        let r = reason(ImageDescriptor::from_bytes(&with(at + 1, &[0, 0, 0, 0])).expect_err("refused"));
        assert!(r.contains("0x4"), "{r}");
        let r = reason(ImageDescriptor::from_bytes(&with(at + 9, &6u32.to_le_bytes())).expect_err("refused"));
        assert!(r.contains("6 mip levels"), "{r}");
        // Images live in dedicated allocations.
        let r = reason(ImageDescriptor::from_bytes(&with(HEADER_LEN + 28, &[0])).expect_err("refused"));
        assert!(r.contains("dedicated"), "{r}");
    }
}
