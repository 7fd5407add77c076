#version 450
// The OpenGL consumer: sums[frame] += the frame's words (wrapping), one workgroup reduction and
// one atomic add per 256 words. `rounds` and `mask` as in producer.comp.
layout(local_size_x = 256) in;
layout(std430, binding = 0) readonly buffer Frame { uint words[]; };
layout(std430, binding = 1) buffer Sums { uint sums[]; };
uniform uint count;
uniform uint frame;
uniform uint rounds;
uniform uint mask;
shared uint partial[256];
void main() {
    uint i = gl_GlobalInvocationID.x;
    uint l = gl_LocalInvocationID.x;
    uint v = i < count ? words[i] : 0u;
    uint x = v;
    for (uint r = 0u; r < rounds; r++) { x = x * 1664525u + 1013904223u; }
    partial[l] = v ^ (x & mask);
    barrier();
    for (uint s = 128u; s > 0u; s >>= 1) {
        if (l < s) { partial[l] += partial[l + s]; }
        barrier();
    }
    if (l == 0u) { atomicAdd(sums[frame], partial[0]); }
}
