#version 450
// The demo's producer: frame `frame` into a frame buffer, one word per invocation. With
// `rounds` > 0, each invocation first runs that many rounds of an LCG, folded into the word
// through `mask` (always 0, unknown to the compiler): calibrated GPU work that leaves the frame
// as it is.
layout(local_size_x = 256) in;
layout(std430, set = 0, binding = 0) buffer Frame { uint words[]; };
layout(push_constant) uniform Params { uint frame; uint count; uint rounds; uint mask; } params;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < params.count) {
        uint v = (i * 2654435761u) ^ (params.frame * 40503u + 2654435769u);
        uint x = v;
        for (uint r = 0u; r < params.rounds; r++) { x = x * 1664525u + 1013904223u; }
        words[i] = v ^ (x & params.mask);
    }
}
