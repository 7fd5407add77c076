; The source of `checksum_work` in kernels.ptx (LLVM IR; the PTX there is what
;   llc -O2 -march=nvptx64 -mcpu=sm_50 -mattr=+ptx70 checksum_work.ll
; wrote from it, its header dropped: kernels.ptx has its own).
target datalayout = "e-i64:64-i128:128-v16:16-v32:32-n16:32:64"
target triple = "nvptx64-nvidia-cuda"

declare i32 @llvm.nvvm.read.ptx.sreg.tid.x()
declare i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
declare i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
declare i32 @llvm.nvvm.read.ptx.sreg.nctaid.x()
declare i32 @llvm.nvvm.shfl.sync.bfly.i32(i32, i32, i32, i32)

; *sum += the words, each passed through `rounds` LCG rounds folded in with `mask` (0): the
; checksum with calibrated work per word.
define void @checksum_work(i32* %gwords, i32 %count, i32* %gsum, i32 %rounds, i32 %mask) {
entry:
  %words = addrspacecast i32* %gwords to i32 addrspace(1)*
  %sum = addrspacecast i32* %gsum to i32 addrspace(1)*
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %ctaid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %ntid = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %nctaid = call i32 @llvm.nvvm.read.ptx.sreg.nctaid.x()
  %base = mul i32 %ctaid, %ntid
  %start = add i32 %base, %tid
  %stride = mul i32 %nctaid, %ntid
  br label %outer

outer:
  %i = phi i32 [ %start, %entry ], [ %next, %inner_done ]
  %acc = phi i32 [ 0, %entry ], [ %acc2, %inner_done ]
  %more = icmp ult i32 %i, %count
  br i1 %more, label %load, label %reduce

load:
  %idx = zext i32 %i to i64
  %p = getelementptr i32, i32 addrspace(1)* %words, i64 %idx
  %v = load i32, i32 addrspace(1)* %p, align 4
  br label %inner

inner:
  %r = phi i32 [ 0, %load ], [ %r2, %inner_body ]
  %x = phi i32 [ %v, %load ], [ %x2, %inner_body ]
  %again = icmp ult i32 %r, %rounds
  br i1 %again, label %inner_body, label %inner_done

inner_body:
  %xm = mul i32 %x, 1664525
  %x2 = add i32 %xm, 1013904223
  %r2 = add i32 %r, 1
  br label %inner

inner_done:
  %xmask = and i32 %x, %mask
  %w = xor i32 %v, %xmask
  %acc2 = add i32 %acc, %w
  %next = add i32 %i, %stride
  br label %outer

reduce:
  %s16 = call i32 @llvm.nvvm.shfl.sync.bfly.i32(i32 -1, i32 %acc, i32 16, i32 31)
  %a16 = add i32 %acc, %s16
  %s8 = call i32 @llvm.nvvm.shfl.sync.bfly.i32(i32 -1, i32 %a16, i32 8, i32 31)
  %a8 = add i32 %a16, %s8
  %s4 = call i32 @llvm.nvvm.shfl.sync.bfly.i32(i32 -1, i32 %a8, i32 4, i32 31)
  %a4 = add i32 %a8, %s4
  %s2 = call i32 @llvm.nvvm.shfl.sync.bfly.i32(i32 -1, i32 %a4, i32 2, i32 31)
  %a2 = add i32 %a4, %s2
  %s1 = call i32 @llvm.nvvm.shfl.sync.bfly.i32(i32 -1, i32 %a2, i32 1, i32 31)
  %a1 = add i32 %a2, %s1
  %lane = and i32 %tid, 31
  %first = icmp eq i32 %lane, 0
  br i1 %first, label %add, label %done

add:
  %old = atomicrmw add i32 addrspace(1)* %sum, i32 %a1 monotonic
  br label %done

done:
  ret void
}

!nvvm.annotations = !{!0}
!0 = !{void (i32*, i32, i32*, i32, i32)* @checksum_work, !"kernel", i32 1}
