/* A stand-in for Windows' bcryptprimitives.dll under Debian 12's Wine 8, which has none: Rust's
 * standard library (since 1.78) imports ProcessPrng from it for its random numbers. This one
 * fills the buffer from RtlGenRandom (advapi32's SystemFunction036), which Wine has. Built by
 * scripts/windows-check.sh with mingw and put beside the test binaries; never shipped. */
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk; len -= chunk;
    }
    return TRUE;
}
