// The Vulkan consumer's checksum (a second VkDevice), in WGSL: naga's GLSL front end turns
// `barrier()` into a subgroup-scoped barrier (every barrier flag set, which its SPIR-V writer
// maps to the subgroup execution scope), so a GLSL workgroup reduction summed wrong on NVIDIA
// (right on lavapipe); WGSL's `workgroupBarrier()` is workgroup-scoped, and WGSL has `atomicAdd`
// (push constants are naga 30's `var<immediate>`). `rounds` and `mask` as in producer.comp.
struct Params { frame: u32, count: u32, rounds: u32, mask: u32 }
@group(0) @binding(0) var<storage, read> words: array<u32>;
@group(0) @binding(1) var<storage, read_write> sums: array<atomic<u32>>;
var<immediate> params: Params;
var<workgroup> partial: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let l = lid.x;
    var v = 0u;
    if (gid.x < params.count) { v = words[gid.x]; }
    var x = v;
    for (var r = 0u; r < params.rounds; r = r + 1u) { x = x * 1664525u + 1013904223u; }
    partial[l] = v ^ (x & params.mask);
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (l < s) { partial[l] = partial[l] + partial[l + s]; }
        workgroupBarrier();
    }
    if (l == 0u) { atomicAdd(&sums[params.frame], partial[0]); }
}
