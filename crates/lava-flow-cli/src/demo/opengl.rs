//! The OpenGL consumer: a compute program that checksums frames, the ring imported into GL
//! ([`GlRing`]) with the consumer's own frames and the sums, and plain GL buffers for the staged
//! pipeline.

use glow::HasContext;
use lava_flow::opengl::{GlBuffer, GlContext};

use lava_flow::ring::GlRing;
use lava_flow::FrameStep;

use super::{Consumer, Shared};
use crate::error::{Error, Result};

/// The checksum's compute shader.
const CHECKSUM: &str = include_str!("../shaders/checksum.comp");

/// A GL error for the demo's own calls.
fn gl_check(gl: &glow::Context, call: &'static str) -> Result<()> {
    // SAFETY: the demo's context is current (lava-flow made it so and nothing else runs here).
    let code = unsafe { gl.get_error() };
    if code == glow::NO_ERROR {
        return Ok(());
    }
    Err(Error::Lava(lava_flow::Error::Ffi {
        api: lava_flow::Api::OpenGl,
        call,
        name: format!("GL error {code:#x}"),
        description: "see glGetError".into(),
    }))
}

/// A GL buffer range to bind: (name, offset, size).
type Range = (u32, u64, u64);

/// The OpenGL consumer: a compute program that checksums frames, the shared buffers and
/// timelines imported into GL, and plain GL buffers for the staged pipeline.
pub(super) struct GlSide<'a> {
    ctx: &'a GlContext,
    gl: glow::Context,
    program: glow::Program,
    count: glow::UniformLocation,
    frame: glow::UniformLocation,
    rounds_at: glow::UniformLocation,
    mask_at: glow::UniformLocation,
    /// Work rounds per word ([`Consumer::set_rounds`]).
    rounds: u32,
    ring: GlRing<'a>,
    own: Vec<GlBuffer<'a>>,
    sums: GlBuffer<'a>,
    staged_frame: glow::Buffer,
    staged_sums: glow::Buffer,
    frame_count: u32,
    frame_bytes: u64,
    words: u32,
}

impl<'a> GlSide<'a> {
    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "plain GL set-up, as users write it")]
    pub(super) fn new(
        ctx: &'a GlContext,
        shared: &Shared<'a>,
        frame_count: u32,
        frame_bytes: u64,
    ) -> Result<Self> {
        // SAFETY: the context is current on this thread; the loader is its own.
        let gl = unsafe { glow::Context::from_loader_function(|s| ctx.proc_address(s)) };
        let failed = |what: String| {
            Error::Lava(lava_flow::Error::Unsupported { what: format!("GL consumer: {what}") })
        };
        // SAFETY: plain GL calls on the current context; every object is deleted on drop (or
        // with the context, on an early error).
        let (program, [count, frame, rounds_at, mask_at], staged_frame, staged_sums) = unsafe {
            let shader = gl.create_shader(glow::COMPUTE_SHADER).map_err(failed)?;
            gl.shader_source(shader, CHECKSUM);
            gl.compile_shader(shader);
            if !gl.get_shader_compile_status(shader) {
                return Err(failed(gl.get_shader_info_log(shader)));
            }
            let program = gl.create_program().map_err(failed)?;
            gl.attach_shader(program, shader);
            gl.link_program(program);
            gl.delete_shader(shader);
            if !gl.get_program_link_status(program) {
                return Err(failed(gl.get_program_info_log(program)));
            }
            let mut uniforms = Vec::new();
            for name in ["count", "frame", "rounds", "mask"] {
                let at = gl.get_uniform_location(program, name);
                uniforms.push(at.ok_or_else(|| failed(format!("no uniform {name}")))?);
            }
            let uniforms: [glow::UniformLocation; 4] =
                uniforms.try_into().map_err(|_| failed("four uniforms".into()))?;
            let staged_frame = gl.create_buffer().map_err(failed)?;
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(staged_frame));
            gl.buffer_storage(
                glow::SHADER_STORAGE_BUFFER,
                frame_bytes as i32,
                None,
                glow::DYNAMIC_STORAGE_BIT,
            );
            let staged_sums = gl.create_buffer().map_err(failed)?;
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(staged_sums));
            let zeros = vec![0u8; frame_count as usize * 4];
            gl.buffer_storage(
                glow::SHADER_STORAGE_BUFFER,
                zeros.len() as i32,
                Some(&zeros),
                glow::DYNAMIC_STORAGE_BIT,
            );
            (program, uniforms, staged_frame, staged_sums)
        };
        gl_check(&gl, "glBufferStorage")?;
        Ok(GlSide {
            ctx,
            gl,
            program,
            count,
            frame,
            rounds_at,
            mask_at,
            rounds: 0,
            ring: shared.ring.import_gl(ctx)?,
            own: shared.own.iter().map(|b| ctx.import_buffer(b)).collect::<lava_flow::Result<_>>()?,
            sums: ctx.import_buffer(shared.sums)?,
            staged_frame,
            staged_sums,
            frame_count,
            frame_bytes,
            words: shared.words,
        })
    }

    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one dispatch's GL calls")]
    fn dispatch(&self, f: u32, frame: Range, sums: Range) -> Result<()> {
        let gl = &self.gl;
        let name = |n: u32| std::num::NonZeroU32::new(n).map(glow::NativeBuffer);
        // SAFETY: plain GL calls on the current context; the ranges lie inside their buffers.
        unsafe {
            gl.use_program(Some(self.program));
            gl.uniform_1_u32(Some(&self.count), self.words);
            gl.uniform_1_u32(Some(&self.frame), f);
            gl.uniform_1_u32(Some(&self.rounds_at), self.rounds);
            gl.uniform_1_u32(Some(&self.mask_at), 0);
            gl.bind_buffer_range(
                glow::SHADER_STORAGE_BUFFER,
                0,
                name(frame.0),
                frame.1 as i32,
                frame.2 as i32,
            );
            gl.bind_buffer_range(glow::SHADER_STORAGE_BUFFER, 1, name(sums.0), sums.1 as i32, sums.2 as i32);
            gl.dispatch_compute(self.words.div_ceil(256), 1, 1);
            gl.memory_barrier(glow::ALL_BARRIER_BITS);
        }
        gl_check(gl, "glDispatchCompute")
    }
}

impl Consumer for GlSide<'_> {
    fn describe(&self) -> String {
        format!("OpenGL compute on {}", self.ctx.info().renderer)
    }

    fn gpu_semaphores(&self) -> bool {
        self.ring.is_gpu_ordered()
    }

    fn set_rounds(&mut self, rounds: u32) -> Result<()> {
        self.rounds = rounds;
        Ok(())
    }

    fn consume(&mut self, f: u32, step: &FrameStep) -> Result<()> {
        let (frame, sums) = (&self.ring.buffers()[step.slot], &self.sums);
        self.ring.wait(step)?;
        self.dispatch(
            f,
            (frame.gl_buffer(), frame.offset(), frame.size()),
            (sums.gl_buffer(), sums.offset(), sums.size()),
        )?;
        Ok(self.ring.signal(step)?)
    }

    fn consume_staged(&mut self, f: u32, host: &[u8]) -> Result<()> {
        // SAFETY: the buffer holds `frame_bytes` = `host.len()` bytes; the context is current.
        unsafe { self.gl.named_buffer_sub_data_u8_slice(self.staged_frame, 0, host) };
        gl_check(&self.gl, "glNamedBufferSubData")?;
        self.dispatch(
            f,
            (self.staged_frame.0.get(), 0, self.frame_bytes),
            (self.staged_sums.0.get(), 0, u64::from(self.frame_count) * 4),
        )
    }

    #[allow(clippy::multiple_unsafe_ops_per_block, reason = "one read-back's GL calls")]
    fn staged_sums(&mut self) -> Result<Vec<u8>> {
        let gl = &self.gl;
        let mut out = vec![0u8; self.frame_count as usize * 4];
        // SAFETY: the buffer holds exactly `out.len()` bytes; the context is current. The read
        // waits for the dispatches.
        unsafe {
            gl.memory_barrier(glow::BUFFER_UPDATE_BARRIER_BIT);
            gl.bind_buffer(glow::SHADER_STORAGE_BUFFER, Some(self.staged_sums));
            gl.get_buffer_sub_data(glow::SHADER_STORAGE_BUFFER, 0, &mut out);
        }
        gl_check(gl, "glGetBufferSubData")?;
        Ok(out)
    }

    fn consume_alone(&mut self, f: u32, own: usize) -> Result<()> {
        let (frame, sums) = (&self.own[own], &self.sums);
        self.dispatch(
            f,
            (frame.gl_buffer(), frame.offset(), frame.size()),
            (sums.gl_buffer(), sums.offset(), sums.size()),
        )
    }

    fn finish(&mut self) -> Result<()> {
        Ok(self.ctx.finish()?)
    }
}

impl Drop for GlSide<'_> {
    fn drop(&mut self) {
        // SAFETY: the program and buffers were made by this context, which is still current.
        unsafe {
            self.gl.delete_program(self.program);
        }
        // SAFETY: as above.
        unsafe { self.gl.delete_buffer(self.staged_frame) };
        // SAFETY: as above.
        unsafe { self.gl.delete_buffer(self.staged_sums) };
    }
}
