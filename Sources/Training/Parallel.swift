import Dispatch
import Kernels

/// Runs `body` over `0..<count` split into contiguous chunks, one per kernel thread (serially when the work
/// is small): the row loops of the elementwise ops (SwiGLU, softmax, cross-entropy, RMSNorm), which run
/// between BLAS calls and so never compete with OpenBLAS's threads.
func parallelChunks(_ count: Int, minimumPerChunk: Int = 1, _ body: (Range<Int>) -> Void) {
    parallelSlots(count, slots: min(Kernels.threadCount, max(1, count / max(1, minimumPerChunk)))) { _, range in body(range) }
}

/// `count` items in up to `slots` contiguous chunks run at once, each told its slot (0..<chunks) so it can
/// use scratch of its own.
func parallelSlots(_ count: Int, slots: Int, _ body: (_ slot: Int, Range<Int>) -> Void) {
    let chunks = min(max(1, slots), count)
    guard chunks > 1 else {
        if count > 0 { body(0, 0..<count) }
        return
    }
    // The chunks are disjoint row ranges of the caller's buffers: sharing the closure across threads is safe.
    withoutActuallyEscaping(body) { escapable in
        let work = UncheckedSendable(escapable)
        DispatchQueue.concurrentPerform(iterations: chunks) { i in
            work.value(i, (count * i / chunks)..<(count * (i + 1) / chunks))
        }
    }
}

private struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
