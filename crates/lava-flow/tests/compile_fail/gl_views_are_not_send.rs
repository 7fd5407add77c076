// GL buffers and timelines belong to their context's thread.
use lava_flow::opengl::{GlBuffer, GlTimeline};

fn send<T: Send>() {}

fn main() {
    send::<GlBuffer<'static>>();
    send::<GlTimeline<'static>>();
}
