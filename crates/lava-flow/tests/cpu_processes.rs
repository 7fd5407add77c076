//! Memory and semaphores crossing processes (issue 13): two real processes, an fd and its
//! descriptor over a Unix socket (`lava_flow::ipc`), random data both ways, and lifetimes — the
//! producer exits while the consumer holds the memory; the consumer is killed and the producer
//! carries on and frees everything. The other process is this test binary again, running the
//! ignored test `child` with its role in the environment.
//!
//! CPU tier: Vulkan (lavapipe) and OpenGL (llvmpipe) consumers. GPU tier: a consumer process
//! that has only CUDA and never loads libvulkan.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};

use common::{assert_bytes_eq, open_fds, poisoned, random_bytes, Validated};
use lava_flow::{ipc, AllocationOptions, Buffer, MemoryAllocator, MemoryLocation};

const DEV0: MemoryLocation = MemoryLocation::GpuVulkan { device_id: 0 };
const ROLE: &str = "LAVA_FLOW_TEST_CHILD_ROLE";
const SOCKET: &str = "LAVA_FLOW_TEST_CHILD_SOCKET";

/// One test at a time: they count fds and heap use.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This binary again, as the other process with `role`, connected to the returned stream.
fn spawn(role: &str) -> (Child, UnixStream) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("lava-flow-test-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SOCKET, &path)
        .stdin(Stdio::null())
        // Its harness's own summary lines would read like this binary's; its panics go to stderr.
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the other process");
    let (stream, _) = listener.accept().expect("the other process connects");
    let _ = std::fs::remove_file(&path);
    (child, stream)
}

/// Plain length-prefixed bytes beside the ipc messages: test data and replies.
fn send_bytes(stream: &UnixStream, bytes: &[u8]) {
    let mut s = stream;
    s.write_all(&(bytes.len() as u64).to_le_bytes()).expect("send length");
    s.write_all(bytes).expect("send bytes");
}

fn recv_bytes(stream: &UnixStream) -> Vec<u8> {
    let mut s = stream;
    let mut len = [0u8; 8];
    s.read_exact(&mut len).expect("receive length");
    let mut bytes = vec![0u8; u64::from_le_bytes(len) as usize];
    s.read_exact(&mut bytes).expect("receive bytes");
    bytes
}

fn wait_ok(mut child: Child, what: &str) {
    let status = child.wait().expect("wait for the other process");
    assert!(status.success(), "{what}: the other process failed ({status})");
}

/// The other process: runs only when spawned by a test here.
#[test]
#[ignore = "the other process of the tests in this file, spawned by them"]
fn child() {
    let (Ok(role), Ok(path)) = (std::env::var(ROLE), std::env::var(SOCKET)) else {
        println!("child: not spawned by a test here; nothing to do");
        return;
    };
    let stream = UnixStream::connect(path).expect("connect to the test");
    match role.as_str() {
        "vulkan-consumer" => vulkan_consumer(&stream),
        #[cfg(feature = "opengl")]
        "gl-consumer" => gl_consumer(&stream),
        "exiting-producer" => exiting_producer(&stream),
        "held-then-killed" => held_then_killed(&stream),
        #[cfg(feature = "cuda")]
        "cuda-only-consumer" => cuda_only_consumer(&stream),
        other => panic!("unknown role {other}"),
    }
}

/// Receives buffers, sends back what it reads, writes new random bytes and sends those.
fn vulkan_consumer(stream: &UnixStream) {
    let mut allocator = MemoryAllocator::new().expect("Vulkan in the consumer");
    let count = recv_bytes(stream)[0];
    for _ in 0..count {
        let buffer =
            allocator.import_memory(0, ipc::recv_memory(stream).expect("recv_memory")).expect("import");
        let mut seen = poisoned(buffer.size() as usize);
        buffer.read(0, &mut seen).expect("consumer read");
        send_bytes(stream, &seen);
        let mine = random_bytes(buffer.size() as usize);
        buffer.write(0, &mine).expect("consumer write");
        allocator.wait_idle(0).expect("idle");
        send_bytes(stream, &mine);
    }
}

#[cfg(feature = "opengl")]
fn gl_consumer(stream: &UnixStream) {
    let exported = ipc::recv_memory(stream).expect("recv_memory");
    let gl = lava_flow::opengl::GlContext::for_uuid(exported.descriptor().device_uuid).expect("GL by UUID");
    let view = gl.import_memory(exported).expect("GL import");
    let mut seen = poisoned(view.size() as usize);
    view.read(0, &mut seen).expect("GL read");
    send_bytes(stream, &seen);
    let mine = random_bytes(view.size() as usize);
    view.write(0, &mine).expect("GL write");
    send_bytes(stream, &mine);
}

/// Allocates, fills, sends the memory and the bytes, and exits without waiting.
fn exiting_producer(stream: &UnixStream) {
    let mut allocator = MemoryAllocator::new().expect("Vulkan in the producer");
    let buffer = allocator
        .allocate_with(1 << 20, DEV0, AllocationOptions::default().dedicated(true))
        .expect("allocate");
    let data = random_bytes(1 << 20);
    buffer.write(0, &data).expect("write");
    ipc::send_memory(stream, &buffer.export().expect("export")).expect("send_memory");
    send_bytes(stream, &data);
    // The process ends here, allocator and all.
}

/// Imports, says so, and waits to be killed.
fn held_then_killed(stream: &UnixStream) {
    let mut allocator = MemoryAllocator::new().expect("Vulkan in the consumer");
    let buffer = allocator.import_memory(0, ipc::recv_memory(stream).expect("recv_memory")).expect("import");
    let mut seen = poisoned(buffer.size() as usize);
    buffer.read(0, &mut seen).expect("read");
    send_bytes(stream, &seen);
    std::thread::sleep(std::time::Duration::from_secs(120));
    panic!("not killed");
}

/// Vulkan in this process writes, a consumer process reads and writes back, every byte both
/// ways: buffers in a shared block (at an offset) and dedicated.
#[test]
fn buffers_cross_to_a_vulkan_consumer_process_both_ways() {
    let _serial = serial();
    let mut v = Validated::new();
    let _pad = v.allocate(4096, DEV0).expect("pad");
    let at_offset = v.allocate(100_000, DEV0).expect("at an offset");
    let dedicated =
        v.allocate_with(3 << 20, DEV0, AllocationOptions::default().dedicated(true)).expect("dedicated");
    assert_ne!(at_offset.offset(), 0);
    let (child, stream) = spawn("vulkan-consumer");
    send_bytes(&stream, &[2]);
    for (buffer, what) in [(&at_offset, "at an offset"), (&dedicated, "dedicated")] {
        check_with_consumer(&v, &stream, buffer, what);
    }
    wait_ok(child, "Vulkan consumer");
}

/// Sends `buffer`'s memory, then checks the consumer's reads and writes.
fn check_with_consumer(v: &Validated, stream: &UnixStream, buffer: &Buffer, what: &str) {
    let data = random_bytes(buffer.size() as usize);
    buffer.write(0, &data).expect("producer write");
    v.wait_idle(0).expect("idle");
    ipc::send_memory(stream, &buffer.export().expect("export")).expect("send_memory");
    assert_bytes_eq(&recv_bytes(stream), &data, &format!("{what}: producer → consumer process"));
    let theirs = recv_bytes(stream);
    let mut out = poisoned(buffer.size() as usize);
    buffer.read(0, &mut out).expect("producer read");
    assert_bytes_eq(&out, &theirs, &format!("{what}: consumer process → producer"));
}

#[cfg(feature = "opengl")]
#[test]
fn buffers_cross_to_an_opengl_consumer_process_both_ways() {
    let _serial = serial();
    let mut v = Validated::new();
    let _pad = v.allocate(4096, DEV0).expect("pad");
    let buffer = v.allocate(200_000, DEV0).expect("buffer");
    let (child, stream) = spawn("gl-consumer");
    check_with_consumer(&v, &stream, &buffer, "OpenGL consumer");
    wait_ok(child, "GL consumer");
}

/// The producer process exits while this process holds its memory: the bytes stay, and this
/// process can still pass them on.
#[test]
fn the_producer_exits_and_the_consumer_keeps_the_memory() {
    let _serial = serial();
    let mut v = Validated::new();
    let (child, stream) = spawn("exiting-producer");
    let exported = ipc::recv_memory(&stream).expect("recv_memory");
    let data = recv_bytes(&stream);
    let buffer = v.import_memory(0, exported).expect("import");
    wait_ok(child, "producer");
    let mut out = poisoned(data.len());
    buffer.read(0, &mut out).expect("read after the producer exited");
    assert_bytes_eq(&out, &data, "the memory outlives its producer process");
    // And it goes on: exported again, imported by another device here.
    let mut other = Validated::new();
    let again = other.import_memory(0, buffer.export().expect("export again")).expect("import again");
    let mut out = poisoned(data.len());
    again.read(0, &mut out).expect("read");
    assert_bytes_eq(&out, &data, "passed on after the producer exited");
}

/// The consumer process is killed while it holds an import: this process carries on, and once
/// everything is dropped its fds and heap use are back where they were.
#[test]
fn a_killed_consumer_leaves_the_producer_whole() {
    let _serial = serial();
    let mut v = Validated::new();
    // The staging buffer a 1 MiB write makes stays for the next: make it before counting.
    v.allocate(1 << 20, DEV0).expect("warm-up").write(0, &[0; 1 << 20]).expect("warm-up write");
    v.trim();
    let heap = |v: &Validated| v.heap_usage(0).expect("heap usage").iter().map(|h| h.lava_flow).sum::<u64>();
    let heap_before = heap(&v);
    let fds_before = open_fds();
    {
        let buffer = v.allocate(1 << 20, DEV0).expect("buffer");
        let data = random_bytes(1 << 20);
        buffer.write(0, &data).expect("write");
        v.wait_idle(0).expect("idle");
        let (mut child, stream) = spawn("held-then-killed");
        ipc::send_memory(&stream, &buffer.export().expect("export")).expect("send_memory");
        assert_bytes_eq(&recv_bytes(&stream), &data, "the consumer read it");
        child.kill().expect("kill the consumer");
        child.wait().expect("reap");
        let more = random_bytes(1 << 20);
        buffer.write(0, &more).expect("write after the consumer died");
        let mut out = poisoned(1 << 20);
        buffer.read(0, &mut out).expect("read");
        assert_bytes_eq(&out, &more, "the producer carries on");
    }
    v.trim();
    assert_eq!(heap(&v), heap_before, "everything freed");
    assert_eq!(open_fds(), fds_before, "no fd left behind");
}

/// GPU tier: a consumer process with only CUDA (never loads libvulkan: its /proc/self/maps says
/// so) imports the memory and a timeline by their handles, waits on the GPU for the producer's
/// value 1, fills the buffer and signals 2, which the producer's Vulkan waits for.
#[cfg(feature = "cuda")]
#[test]
fn a_cuda_only_consumer_process_never_loads_vulkan() {
    let _serial = serial();
    let mut v = Validated::new();
    let uuid = v.device(0).expect("device 0").uuid;
    if common::or_skip(lava_flow::cuda::Context::for_uuid(uuid), "CUDA-only consumer", "CUDA").is_none() {
        return;
    }
    let timeline = v.timeline_semaphore(0).expect("timeline");
    let Some(exported) =
        common::or_skip(timeline.export(), "CUDA-only consumer", "exportable timeline semaphores")
    else {
        return;
    };
    let _pad = v.allocate(4096, DEV0).expect("pad");
    let buffer = v.allocate(1 << 20, DEV0).expect("buffer");
    let (child, stream) = spawn("cuda-only-consumer");
    ipc::send_memory(&stream, &buffer.export().expect("export")).expect("send_memory");
    ipc::send_semaphore(&stream, &exported).expect("send_semaphore");
    let data = random_bytes(1 << 20);
    buffer.write(0, &data).expect("write");
    // The consumer's stream is waiting for 1; its reply comes once its work is queued.
    assert_eq!(recv_bytes(&stream), b"queued");
    v.submit(0, &lava_flow::Submission::new().signal(&timeline, 1)).expect("Vulkan signals 1");
    timeline.wait(2, std::time::Duration::from_secs(30)).expect("the consumer signals 2");
    let mut out = poisoned(1 << 20);
    buffer.read(0, &mut out).expect("read");
    let want: Vec<u8> = data.iter().map(|b| b ^ 0xFF).collect();
    assert_bytes_eq(&out, &want, "consumer process: read Vulkan's bytes, wrote them inverted");
    let maps = String::from_utf8(recv_bytes(&stream)).expect("maps");
    assert!(!maps.contains("libvulkan"), "the CUDA-only consumer loaded Vulkan:\n{maps}");
    wait_ok(child, "CUDA-only consumer");
    v.wait_idle(0).expect("idle");
}

#[cfg(feature = "cuda")]
fn cuda_only_consumer(stream: &UnixStream) {
    use lava_flow::cuda::{Context, DeviceMemory};
    let memory = ipc::recv_memory(stream).expect("recv_memory");
    let semaphore = ipc::recv_semaphore(stream).expect("recv_semaphore");
    let ctx = Context::for_uuid(memory.descriptor().device_uuid).expect("CUDA by UUID");
    let size = memory.descriptor().size as usize;
    let view = ctx.import_memory(memory).expect("CUDA import");
    let sync = ctx.import_exported_semaphore(semaphore).expect("CUDA semaphore import");
    let stream_ = ctx.stream().expect("stream");
    sync.wait(1, &stream_).expect("wait for 1");
    // An event after the wait: once it completes, the producer's 1 has arrived.
    let event = ctx.event(false).expect("event");
    event.record(&stream_).expect("record");
    send_bytes(stream, b"queued");
    event.synchronize().expect("the producer's 1 arrived");
    let mut bytes = vec![0u8; size];
    view.copy_to_host(0, &mut bytes).expect("read");
    bytes.iter_mut().for_each(|b| *b ^= 0xFF);
    view.copy_from_host(0, &bytes).expect("write back");
    sync.signal(2, &stream_).expect("signal 2");
    stream_.synchronize().expect("sync");
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    send_bytes(stream, maps.as_bytes());
}
