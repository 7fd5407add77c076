// A CUDA timeline import is used from one thread at a time.
use lava_flow::cuda::CudaTimeline;

fn sync<T: Sync>() {}

fn main() {
    sync::<CudaTimeline<'static>>();
}
