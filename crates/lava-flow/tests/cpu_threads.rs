//! `Send` and `Sync` exactly where safe. What must stay on its thread is proven by the
//! compile-fail cases (`tests/compile_fail/*_is_not_send.rs`); this proves the rest can move.

fn send_sync<T: Send + Sync>() {}

#[test]
fn shareable_types_are_send_and_sync() {
    send_sync::<lava_flow::MemoryAllocator>();
    send_sync::<lava_flow::Buffer>();
    send_sync::<lava_flow::Image>();
    send_sync::<lava_flow::TimelineSemaphore>();
    send_sync::<lava_flow::BinarySemaphore>();
    send_sync::<lava_flow::ExportedMemory>();
    send_sync::<lava_flow::ExportedSemaphore>();
    send_sync::<lava_flow::ValidationLog>();
    send_sync::<lava_flow::Error>();
    #[cfg(feature = "cuda")]
    {
        send_sync::<lava_flow::cuda::Context>();
        send_sync::<lava_flow::cuda::Stream>();
        send_sync::<lava_flow::cuda::DeviceBuffer>();
        send_sync::<lava_flow::cuda::CudaBuffer<'static>>();
        send_sync::<lava_flow::cuda::Module>();
        send_sync::<lava_flow::cuda::Event>();
    }
    #[cfg(feature = "opencl")]
    {
        send_sync::<lava_flow::opencl::Context>();
        send_sync::<lava_flow::opencl::Queue<'static>>();
        send_sync::<lava_flow::opencl::ClBuffer<'static>>();
        send_sync::<lava_flow::opencl::ClSemaphore<'static>>();
        send_sync::<lava_flow::opencl::Program<'static>>();
    }
}
