import Dispatch
import Kernels

/// Runs `body` over `0..<count` split into contiguous chunks, one per kernel thread (serially when the work
/// is small): the row loops of the elementwise ops (SwiGLU, softmax, cross-entropy, RMSNorm), which run
/// between BLAS calls and so never compete with OpenBLAS's threads.
func parallelChunks(_ count: Int, minimumPerChunk: Int = 1, _ body: (Range<Int>) -> Void) {
    let threads = min(Kernels.threadCount, max(1, count / max(1, minimumPerChunk)))
    guard threads > 1 else {
        body(0..<count)
        return
    }
    // The chunks are disjoint row ranges of the caller's buffers: sharing the closure across threads is safe.
    withoutActuallyEscaping(body) { escapable in
        let work = UncheckedSendable(escapable)
        DispatchQueue.concurrentPerform(iterations: threads) { i in
            work.value((count * i / threads)..<(count * (i + 1) / threads))
        }
    }
}

private struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
