// The OpenCL consumer: sums[sums_offset + frame] += the frame's words (wrapping). `rounds` and
// `mask` as in producer.comp.
__kernel void checksum(__global const uint* words, ulong offset, uint count,
                       __global uint* sums, ulong sums_offset, uint frame, uint rounds, uint mask) {
    __local uint partial[256];
    uint i = get_global_id(0);
    uint l = get_local_id(0);
    uint v = i < count ? words[offset + i] : 0u;
    uint x = v;
    for (uint r = 0; r < rounds; r++) { x = x * 1664525u + 1013904223u; }
    partial[l] = v ^ (x & mask);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = 128; s > 0; s >>= 1) {
        if (l < s) { partial[l] += partial[l + s]; }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l == 0) { atomic_add(&sums[sums_offset + frame], partial[0]); }
}
